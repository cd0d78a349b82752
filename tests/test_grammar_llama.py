"""Grammar-constrained generation with SmolLM2: completions, chat JSON modes and tool calls
parse (json.loads) and validate (jsonschema); greedy grammar-constrained tokens equal
llama-cpp-python's own LlamaGrammar sampling (opt in: --run-llama-cpp)."""
import json
import re

import jsonschema
import pytest

import pyinfer
from pyinfer.grammar import JSON_GBNF, LlamaGrammar, json_schema_to_gbnf
from conftest import real_llama_cpp

CAT = {"type": "object",
       "properties": {"name": {"type": "string", "maxLength": 12},
                      "age": {"type": "integer"},
                      "color": {"enum": ["black", "white", "orange"]}},
       "required": ["name", "age", "color"], "additionalProperties": False}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                    "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"]}}}
CAT_PROMPT = [{"role": "user", "content": "Describe a cat as JSON with name, age and color."}]
WEATHER_PROMPT = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def llm(smollm2):
    m = pyinfer.Llama(str(smollm2), n_ctx=512, n_threads=2, verbose=False)
    yield m
    m.close()


def test_completion_follows_a_small_grammar(llm):
    g = LlamaGrammar.from_string('root ::= "Answer: " ("yes" | "no") "."')
    out = llm("Is the sky blue?", grammar=g, max_tokens=12, temperature=0)
    assert re.fullmatch(r"Answer: (yes|no)\.", out["choices"][0]["text"])
    assert out["choices"][0]["finish_reason"] == "stop"     # EOS forced once complete


def test_unlikely_grammar_forces_rejections(llm):
    g = LlamaGrammar.from_string('root ::= "ZQ" [0-9]{3} "#"')
    out = llm("The capital of France is", grammar=g, max_tokens=10, temperature=0)
    assert re.fullmatch(r"ZQ[0-9]{3}#", out["choices"][0]["text"])


@pytest.mark.parametrize("seed", [1, 2])
def test_json_gbnf_completion_parses(llm, seed):
    g = LlamaGrammar.from_string(JSON_GBNF)
    out = llm("A JSON object describing a book:", grammar=g, max_tokens=48, temperature=0.9,
              seed=seed)
    choice = out["choices"][0]
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["text"]), dict)
    else:   # cut by max_tokens: still a prefix the grammar accepts
        a = g.automaton
        assert a.walk(a.start, choice["text"].encode()) >= 0


N_SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
N_PROMPT = "The number ten in JSON is "


def test_schema_output_ends_at_its_closing_brace(llm):
    """The issue's case: with a grammar whose whitespace allowed a newline and 20 tabs,
    SmolLM2 wrote '{"n": 10}' and then 21 whitespace characters (28 tokens); with
    llama-cpp-python's rule (at most one space) the document ends right after the brace."""
    out = llm(N_PROMPT, grammar=LlamaGrammar.from_json_schema(N_SCHEMA), max_tokens=30,
              temperature=0)
    choice = out["choices"][0]
    assert re.fullmatch(r'\{ ?"n" ?: ?[0-9]+ ?\} ?', choice["text"]), choice["text"]
    assert choice["finish_reason"] == "stop" and out["usage"]["completion_tokens"] <= 10
    assert json.loads(choice["text"]) == {"n": 10}


def test_chat_json_object(llm):
    r = llm.create_chat_completion(CAT_PROMPT, response_format={"type": "json_object"},
                                   max_tokens=64, temperature=0)
    assert r["object"] == "chat.completion"
    assert r["choices"][0]["finish_reason"] == "stop"
    assert isinstance(json.loads(r["choices"][0]["message"]["content"]), dict)


@pytest.mark.parametrize("fmt", [{"type": "json_object", "schema": CAT},
                                 {"type": "json_schema",
                                  "json_schema": {"name": "cat", "schema": CAT, "strict": True}}])
def test_chat_json_schema_validates(llm, fmt):
    r = llm.create_chat_completion(CAT_PROMPT, response_format=fmt, max_tokens=64,
                                   temperature=0.7, seed=3)
    assert r["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(r["choices"][0]["message"]["content"]), CAT)


def test_chat_json_schema_streams(llm):
    chunks = list(llm.create_chat_completion(
        CAT_PROMPT, response_format={"type": "json_object", "schema": CAT}, max_tokens=64,
        temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    jsonschema.validate(json.loads(text), CAT)


def test_tool_call(llm):
    r = llm.create_chat_completion(
        WEATHER_PROMPT, tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=40, temperature=0)
    choice = r["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    msg = choice["message"]
    assert msg["role"] == "assistant" and msg["content"] is None
    (call,) = msg["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call__0_get_weather_cmpl-")
    assert call["function"]["name"] == "get_weather"
    assert msg["function_call"] == call["function"]
    jsonschema.validate(json.loads(call["function"]["arguments"]),
                        WEATHER_TOOL["function"]["parameters"])


def openai_accumulate(chunks):
    """The message the openai SDK's stream helper builds from chat chunks (its own
    accumulation: strings of a tool call's deltas are concatenated by index)."""
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk
    state = ChatCompletionStreamState()
    for c in chunks:
        state.handle_chunk(ChatCompletionChunk(**c))
    return state.get_final_completion().choices[0]


@pytest.mark.parametrize("legacy", [False, True])
def test_tool_call_stream(llm, legacy):
    """The call's id, type and name come in its first delta only (as OpenAI streams them),
    so accumulating the deltas as the openai SDK does gives the name once and the
    arguments as one JSON text."""
    forced = (dict(functions=[WEATHER_TOOL["function"]], function_call={"name": "get_weather"})
              if legacy else dict(tools=[WEATHER_TOOL], tool_choice={
                  "type": "function", "function": {"name": "get_weather"}}))
    chunks = list(llm.create_chat_completion(WEATHER_PROMPT, max_tokens=40, temperature=0,
                                             stream=True, **forced))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    deltas = [c["choices"][0]["delta"] for c in chunks[1:-1]]
    assert len(deltas) > 3
    assert [d["tool_calls"][0]["function"].get("name") for d in deltas] == \
        ["get_weather"] + [None] * (len(deltas) - 1)
    assert all(set(d["tool_calls"][0]) == {"index", "function"} for d in deltas[1:])
    assert all("name" not in d["function_call"] for d in deltas[1:])
    choice = openai_accumulate(chunks)
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.type == "function"
    assert call.id == deltas[0]["tool_calls"][0]["id"]
    assert call.function.arguments == "".join(
        d["tool_calls"][0]["function"]["arguments"] for d in deltas)
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])
    assert choice.message.function_call.name == "get_weather"
    assert choice.message.function_call.arguments == call.function.arguments
    full = llm.create_chat_completion(WEATHER_PROMPT, max_tokens=40, temperature=0, **forced)
    assert full["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == \
        call.function.arguments


def test_bad_grammar_argument_raises_before_streaming(llm):
    with pytest.raises(TypeError, match="LlamaGrammar"):
        llm("x", grammar=42, stream=True)


def test_tool_choice_errors_and_auto(llm):
    with pytest.raises(ValueError, match="not found in tools"):
        llm.create_chat_completion(WEATHER_PROMPT, tools=[WEATHER_TOOL],
                                   tool_choice={"type": "function", "function": {"name": "x"}})
    r = llm.create_chat_completion(WEATHER_PROMPT, tools=[WEATHER_TOOL], tool_choice="auto",
                                   max_tokens=4, temperature=0)
    assert "tool_calls" not in r["choices"][0]["message"]     # text reply, as llama-cpp-python


def test_generate_and_sample_take_a_grammar(llm):
    g = LlamaGrammar.from_string('root ::= [0-9]+ " apples"')
    prompt = llm.tokenize(b"How many apples? ")
    toks = []
    for tok in llm.generate(prompt, temp=0.0, grammar=g):
        if tok == llm.token_eos() or len(toks) == 12:
            break
        toks.append(tok)
    assert re.fullmatch(r"[0-9]+ apples", llm.detokenize(toks).decode())
    llm.reset()
    llm.eval(prompt)
    tok = llm.sample(temp=0.0, grammar=LlamaGrammar.from_string('root ::= "Z"'))
    assert llm.detokenize([tok]) == b"Z"


# ---- llama-cpp-python's LlamaGrammar as the oracle (opt in) -----------------------------

ORACLE_CASES = [
    ("A JSON object describing a book:", JSON_GBNF, 40),
    ("<|im_start|>user\nDescribe a cat as JSON.<|im_end|>\n<|im_start|>assistant\n",
     json_schema_to_gbnf(CAT), 40),
    ("The answer to 2+2 is", 'root ::= " " [0-9]+ ("." [0-9]+)?', 8),
    ("Write a list of fruits:", 'root ::= ("- " [a-zA-Z ]{1,20} "\\n"){2,3}', 30),
    ("Un café à Paris coûte",
     'root ::= " " [0-9]{1,2} ("," [0-9]{2})? " " ("€" | "euros")', 10),
    ("Say hello in Japanese:", 'root ::= " " [^\\x00-\\x7F]{1,6}', 8),
]


def greedy_tokens(llm, prompt: str, grammar, n: int, eog):
    llm.reset()
    out = []
    for tok in llm.generate(llm.tokenize(prompt.encode(), special=True), temp=0.0,
                            grammar=grammar):
        out.append(int(tok))
        if tok in eog or len(out) == n:
            break
    return out


@pytest.mark.llama_cpp
def test_greedy_tokens_equal_llama_cpp_grammar(llm, smollm2):
    llama_cpp = real_llama_cpp("llama_cpp")
    ref = llama_cpp.Llama(str(smollm2), n_ctx=512, n_threads=2, verbose=False)
    try:
        results = []
        eog = {t for t in range(llm.n_vocab()) if llm._vocab.is_eog(t)}
        for prompt, gbnf, n in ORACLE_CASES:
            theirs = greedy_tokens(ref, prompt, llama_cpp.LlamaGrammar.from_string(gbnf), n, eog)
            ours = greedy_tokens(llm, prompt, LlamaGrammar.from_string(gbnf), n, eog)
            same = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b),
                        min(len(theirs), len(ours)))
            results.append((same, len(theirs), ours == theirs))
        print("matching tokens per case (matched, llama.cpp's length, identical):", results)
        assert all(r[2] for r in results), results
    finally:
        ref.close()


@pytest.mark.llama_cpp
def test_schema_grammar_output_equals_llama_cpp(llm, smollm2):
    """Each side with its own schema converter: the same greedy text (the whitespace rule)."""
    llama_cpp = real_llama_cpp("llama_cpp")
    ref = llama_cpp.Llama(str(smollm2), n_ctx=512, n_threads=2, verbose=False)
    try:
        for prompt, schema in ((N_PROMPT, N_SCHEMA), (CAT_PROMPT[0]["content"], CAT)):
            theirs = ref(prompt, grammar=llama_cpp.LlamaGrammar.from_json_schema(
                json.dumps(schema)), max_tokens=48, temperature=0)
            ours = llm(prompt, grammar=LlamaGrammar.from_json_schema(schema), max_tokens=48,
                       temperature=0)
            assert ours["choices"][0]["text"] == theirs["choices"][0]["text"], prompt
    finally:
        ref.close()


def shape(x):
    """Keys and value types, recursively (lists by their first item)."""
    if isinstance(x, dict):
        return {k: shape(v) for k, v in x.items()}
    if isinstance(x, list):
        return [shape(v) for v in x[:1]]
    return type(x).__name__


@pytest.mark.llama_cpp
@pytest.mark.parametrize("stream", [False, True])
def test_json_and_tool_call_shapes_equal_llama_cpp(llm, smollm2, stream):
    """The same requests through llama-cpp-python: replies of the same shape (the texts may
    differ: each side uses its own JSON grammar and schema converter), all parsing."""
    llama_cpp = real_llama_cpp("llama_cpp")
    ref = llama_cpp.Llama(str(smollm2), n_ctx=512, n_threads=2, verbose=False)
    requests = [dict(messages=CAT_PROMPT, response_format={"type": "json_object"}),
                dict(messages=WEATHER_PROMPT, tools=[WEATHER_TOOL],
                     tool_choice={"type": "function", "function": {"name": "get_weather"}})]
    try:
        for req in requests:
            a, b = (m.create_chat_completion(**req, max_tokens=48, temperature=0, stream=stream)
                    for m in (ref, llm))
            if stream:
                a, b = list(a), list(b)
                assert [shape(c) for c in a[:2]] == [shape(c) for c in b[:2]]
                assert shape(a[-1]) == shape(b[-1])
                a, b = a[1], b[1]
            assert shape(a) == shape(b), (a, b)
            ca, cb = a["choices"][0], b["choices"][0]
            assert ca["finish_reason"] == cb["finish_reason"]
    finally:
        ref.close()
