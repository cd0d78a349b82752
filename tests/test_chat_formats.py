"""llama-cpp-python's chat formats by name (pyinfer.chat_formats): for every format and a set
of conversations, the prompt text, the BOS flag and the stop strings our chat handler hands
to create_completion equal what llama-cpp-python 0.3.36's own handler hands it
(tests/data/chat_formats.json, recorded by running its llama_chat_format module: see
`record` below); the same for chatml-function-calling's prompts, grammars and replies; the
handler registry's semantics; and the formats end to end on the tiny model.

Re-record (llama-cpp-python's sdist unpacked; its C library is not needed):
    python tests/test_chat_formats.py --record /tmp/lcp/llama_cpp_python-0.3.36
"""
import copy
import json
import sys
from pathlib import Path

import pytest

from pyinfer.chat_formats import (FORMATTER_NAMES, FORMATTERS, UNSUPPORTED_HANDLERS,
                                  ChatHandlerRegistry,
                                  LlamaChatCompletionHandlerNotFoundException,
                                  LlamaChatCompletionHandlerRegistry, function_calling_prompt,
                                  get_chat_completion_handler,
                                  hf_tokenizer_config_to_chat_completion_handler,
                                  hf_tokenizer_config_to_chat_formatter,
                                  register_chat_format)
from pyinfer.chat import ChatFormatterResponse
from pyinfer.grammar import LlamaGrammar
from pyinfer.grammar.matcher import REJECT
from conftest import real_llama_cpp

DATA = Path(__file__).parent / "data" / "chat_formats.json"
API_DATA = Path(__file__).parent / "data" / "SmolLM2-135M-Instruct.Q4_1.llama_cpp_api.json"


def smollm2_tokenizer_config():
    """A tokenizer_config.json dict with SmolLM2's chat template (from the recorded GGUF
    metadata)."""
    template = json.loads(API_DATA.read_text())["metadata"]["tokenizer.chat_template"]
    return {"chat_template": template, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "Answer briefly."},
     {"role": "user", "content": "Name a color."},
     {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another one?"}],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": "Hi!"},
     {"role": "user", "content": "  spaced  \n"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": None, "tool_calls": [
         {"id": "c1", "type": "function",
          "function": {"name": "add", "arguments": '{"x": 1}'}}]},
     {"role": "tool", "tool_call_id": "c1", "content": "2"},
     {"role": "user", "content": "b"}],
    [{"role": "system", "content": "first {system} {system_message} {0}"},
     {"role": "system", "content": "second"},
     {"role": "user", "content": "Ünïcödé 🙂 <|im_end|> {braces}"},
     {"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}],
    [{"role": "user", "content": [{"type": "text", "text": "parts"}]},
     {"role": "user", "content": "ok"}],
    [{"role": "system", "content": "Sys only."}],
]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"unit": {"enum": ["C", "F"]},
                                                    "city": {"type": "string"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {
        "tz": {"type": "string", "description": "<IANA> & 'name'"}}}}}
TOOL_MESSAGES = [
    {"role": "system", "content": "You are helpful & \"brief\"."},
    {"role": "user", "content": "Weather in <Paris>?"},
    {"role": "assistant", "content": "Let me check.",
     "tool_calls": [{"id": "c1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "20C"},
    {"role": "user", "content": "And the time?"},
]
# (name, request, the texts the fake model writes, one per completion call)
FUNCTION_CALLING_CASES = [
    ("no tools", dict(messages=TOOL_MESSAGES[:2]), ["Sunny."]),
    ("tool_choice none", dict(messages=TOOL_MESSAGES, tools=[WEATHER, TIME], tool_choice="none",
                              stop="STOP"), ["No."]),
    ("named tool", dict(messages=TOOL_MESSAGES, tools=[WEATHER, TIME],
                        tool_choice={"type": "function", "function": {"name": "get_time"}}),
     ['{"tz": "Europe/Paris"}']),
    ("legacy function_call", dict(messages=TOOL_MESSAGES[:2],
                                  functions=[WEATHER["function"]],
                                  function_call={"name": "get_weather"}),
     ['{"city": "Paris"}']),
    ("auto, a call", dict(messages=TOOL_MESSAGES[:2], tools=[WEATHER, TIME],
                          tool_choice="auto"),
     ["functions.get_weather", '{"city": "Paris"}', ""]),
    ("auto, a message", dict(messages=TOOL_MESSAGES[:2], tools=[WEATHER], tool_choice="auto"),
     ["message", "I cannot tell."]),
    ("named tool, streamed", dict(messages=TOOL_MESSAGES[:2], tools=[WEATHER], stream=True,
                                  tool_choice={"type": "function",
                                               "function": {"name": "get_weather"}}),
     ['{"city": "Paris"}']),
]


class FakeLlama:
    """Stands for a Llama: tokenize returns the text itself, create_completion records its
    arguments and writes the scripted texts (streamed in pieces of 4 characters)."""
    verbose = False

    def __init__(self, texts=("ok",)):
        self.texts = list(texts)
        self.calls = []

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False):
        return {"text": text.decode("utf-8"), "add_bos": add_bos}

    def create_completion(self, prompt, stream=False, stop=None, grammar=None, **kw):
        text = self.texts.pop(0) if self.texts else ""
        self.calls.append({"prompt": prompt, "stop": stop, "stream": stream,
                           "temperature": kw.get("temperature"),
                           "grammar": None if grammar is None else grammar._grammar})
        n = len(self.calls)
        head = {"id": f"cmpl-{n}", "created": 100 + n, "model": "fake"}
        if not stream:
            return {**head, "object": "text_completion",
                    "choices": [{"text": text, "index": 0, "logprobs": None,
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": n,
                              "total_tokens": 7 + n}}
        pieces = [text[i:i + 4] for i in range(0, len(text), 4)]
        return iter([{**head, "object": "text_completion",
                      "choices": [{"text": p, "index": 0, "logprobs": None,
                                   "finish_reason": None}]} for p in pieces]
                    + [{**head, "object": "text_completion",
                        "choices": [{"text": "", "index": 0, "logprobs": None,
                                     "finish_reason": "stop"}]}])


def run_handler(handler, request, texts):
    """What a chat handler asks of the model and what it returns (chunks as a list)."""
    llm = FakeLlama(texts)
    try:
        out = handler(llama=llm, **copy.deepcopy(request))
        if request.get("stream"):
            out = list(out)
    except Exception as e:      # noqa: BLE001 (recorded: the type of the failure)
        out = {"error": type(e).__name__}
    return llm.calls, out


@pytest.fixture(scope="module")
def recorded():
    return json.loads(DATA.read_text())


# ---- the named formats ---------------------------------------------------------------------

def test_every_text_format_is_registered(recorded):
    ours = set(LlamaChatCompletionHandlerRegistry().names())
    theirs = set(recorded["registered"])
    assert theirs - ours == set(recorded["not_provided"]) == {
        n for n in theirs if n in UNSUPPORTED_HANDLERS}
    assert set(recorded["formats"]) <= ours
    assert set(FORMATTER_NAMES.values()) == set(FORMATTERS) == set(recorded["formats"])
    import pyinfer.chat_formats as module
    for attr, name in FORMATTER_NAMES.items():   # module attributes (`format`: vicuna)
        assert getattr(module, attr if attr != "format" else "format_vicuna") is FORMATTERS[name]


def test_prompts_and_stops_equal_llama_cpp_python(recorded):
    """Every format x conversation: prompt text, BOS flag and stop list, as recorded."""
    n = 0
    for name, cases in recorded["formats"].items():
        handler = get_chat_completion_handler(name)
        for case in cases:
            calls, out = run_handler(handler, {"messages": case["messages"], "stop": ["U"]},
                                     ["ok"])
            if "error" in case:         # llama-cpp-python fails on it; ours must not crash
                assert "error" not in out, (name, case["messages"])
                continue
            assert calls[0]["prompt"] == case["prompt"], (name, case["messages"])
            assert calls[0]["stop"] == case["stop"], name
            n += 1
    assert n >= 23 * 6


def test_formatters_by_llama_cpp_python_names(recorded):
    case = recorded["formats"]["vicuna"][1]
    assert FORMATTERS[FORMATTER_NAMES["format"]](messages=case["messages"]).prompt == \
        case["prompt"]["text"]
    r = FORMATTERS["chatml"](messages=CONVERSATIONS[0])
    assert isinstance(r, ChatFormatterResponse) and r.stop == "<|im_end|>"
    assert FORMATTERS["chatml"](CONVERSATIONS[0]) == r          # messages positional too
    case = recorded["formats"]["mistral-instruct"][2]
    assert FORMATTERS["mistral-instruct"](case["messages"]).prompt == case["prompt"]["text"]


def test_hf_tokenizer_config_formatter(recorded):
    handler = hf_tokenizer_config_to_chat_completion_handler(smollm2_tokenizer_config())
    for case in recorded["hf_tokenizer_config"]:
        calls, _ = run_handler(handler, {"messages": case["messages"]}, ["ok"])
        assert calls == case["calls"], case["messages"]
    mistral = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": (
        "{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != "
        "(loop.index0 % 2 == 0) %}{{ raise_exception('roles must alternate') }}{% endif %}"
        "{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")}
    formatter = hf_tokenizer_config_to_chat_formatter(mistral)
    r = formatter([{"role": "user", "content": "Hello"}])         # positional, as there
    assert (r.prompt, r.stop, r.added_special) == ("<s>[INST] Hello [/INST]</s>",
                                                   ["</s>", "<s>"], True)
    with pytest.raises(ValueError, match="roles must alternate"):
        formatter(messages=[{"role": "assistant", "content": "x"}])
    with pytest.raises(ValueError, match="needs a string 'eos_token'"):
        hf_tokenizer_config_to_chat_completion_handler({"chat_template": "x", "bos_token": ""})


# ---- the registry --------------------------------------------------------------------------

def test_registry_semantics():
    assert LlamaChatCompletionHandlerRegistry() is LlamaChatCompletionHandlerRegistry()
    reg = ChatHandlerRegistry()          # a separate, empty one
    assert reg.names() == [] and "chatml" in LlamaChatCompletionHandlerRegistry()

    def handler(**kw):
        return "one"
    reg.register_chat_completion_handler("mine", handler)
    assert reg.get_chat_completion_handler_by_name("mine") is handler
    with pytest.raises(ValueError, match="already registered. Use `overwrite=True`"):
        reg.register_chat_completion_handler("mine", handler)
    reg.register_chat_completion_handler("mine", print, overwrite=True)
    assert reg.get_chat_completion_handler_by_name("mine") is print
    reg.unregister_chat_handler("mine")
    with pytest.raises(ValueError, match="No formatter registered under the name 'mine'"):
        reg.unregister_chat_handler("mine")
    with pytest.raises(LlamaChatCompletionHandlerNotFoundException,
                       match=r"Invalid chat handler: mine \(valid formats: \[\]\)"):
        reg.get_chat_completion_handler_by_name("mine")


def test_unknown_and_unsupported_names():
    with pytest.raises(ValueError, match="Invalid chat handler: nope .*'chatml'"):
        get_chat_completion_handler("nope")
    with pytest.raises(LlamaChatCompletionHandlerNotFoundException,
                       match="'functionary-v2' needs MeetKai's functionary prompt"):
        get_chat_completion_handler("functionary-v2")
    with pytest.raises(LlamaChatCompletionHandlerNotFoundException, match="multimodal"):
        get_chat_completion_handler("llava-1-5")
    from pyinfer.chat_formats import Llava15ChatHandler, MoondreamChatHandler
    with pytest.raises(NotImplementedError, match=r"Llava15ChatHandler \(chat_format "
                       r"'llava-1-5'\) is multimodal"):
        Llava15ChatHandler(clip_model_path="mmproj.bin")
    with pytest.raises(NotImplementedError, match="moondream"):
        MoondreamChatHandler.from_pretrained(repo_id="x", filename="y")


def test_register_chat_format_on_the_process_registry(tiny):
    name = "test-shout"

    @register_chat_format(name)
    def shout(messages, **kwargs):
        return ChatFormatterResponse(prompt="".join(m["content"].upper() for m in messages),
                                     stop="!")
    try:
        assert shout(messages=[{"role": "user", "content": "a"}]).prompt == "A"
        with pytest.raises(ValueError, match="already registered"):
            register_chat_format(name)(shout)
        calls, _ = run_handler(get_chat_completion_handler(name),
                               {"messages": [{"role": "user", "content": "hi"}]}, ["x"])
        assert calls[0]["prompt"] == {"text": "HI", "add_bos": True} and calls[0]["stop"] == ["!"]
        tiny.chat_format = name         # Llama resolves chat_format through the registry
        r = tiny.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=3)
        assert r["object"] == "chat.completion"
    finally:
        LlamaChatCompletionHandlerRegistry().unregister_chat_handler(name)
    with pytest.raises(ValueError, match="Invalid chat handler: test-shout"):
        get_chat_completion_handler(name)


@pytest.mark.parametrize("name", ["vicuna", "gemma", "llama-3", "chatml-function-calling"])
def test_formats_end_to_end_on_the_tiny_model(tiny_path, name):
    from pyinfer import Llama
    llm = Llama(tiny_path, n_threads=2, verbose=False, chat_format=name)
    try:
        r = llm.create_chat_completion(CONVERSATIONS[2], max_tokens=4, temperature=0)
        assert r["choices"][0]["message"]["role"] == "assistant"
        assert 1 <= r["usage"]["completion_tokens"] <= 4
        prompt = FORMATTERS[name](messages=CONVERSATIONS[2]).prompt \
            if name in FORMATTERS else function_calling_prompt(CONVERSATIONS[2], None)
        n = len(llm.tokenize(prompt.encode(), add_bos=True, special=True))
        assert r["usage"]["prompt_tokens"] == n
    finally:
        llm.close()


# ---- chatml-function-calling -------------------------------------------------------------

def accepts(gbnf: str, text: str) -> bool:
    a = LlamaGrammar.from_string(gbnf, verbose=False).automaton
    s = a.walk(a.start, text.encode())
    return s != REJECT and a.complete[s]


def _same_shape(ours, theirs, path="reply"):
    """Equal, apart from ids (their suffixes come from different calls) and the documented
    fixes: the legacy function_call names the called function."""
    if isinstance(theirs, dict):
        assert set(ours) == set(theirs), (path, ours, theirs)
        for k in theirs:
            if k != "id":
                _same_shape(ours[k], theirs[k], f"{path}.{k}")
    elif isinstance(theirs, list):
        assert len(ours) == len(theirs), path
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _same_shape(a, b, f"{path}[{i}]")
    else:
        assert ours == theirs, (path, ours, theirs)


@pytest.mark.parametrize("case", FUNCTION_CALLING_CASES,
                         ids=[c[0] for c in FUNCTION_CALLING_CASES])
def test_function_calling_equals_llama_cpp_python(recorded, case):
    name, request, texts = case
    rec = recorded["chatml-function-calling"][name]
    calls, out = run_handler(get_chat_completion_handler("chatml-function-calling"),
                             request, texts)
    # llama-cpp-python's extra completion after a call (whose answer it never uses) aside,
    # the same prompts, stops, temperatures and grammars' languages
    theirs = [c for c in rec["calls"] if not c.get("follow_up")]
    assert len(calls) == len(theirs)
    for a, b in zip(calls, theirs):
        assert a["prompt"] == b["prompt"]
        assert a["stop"] == b["stop"] and a["stream"] == b["stream"]
        if b["temperature"] == 0:
            assert a["temperature"] == 0
        if not b.get("message_grammar"):    # theirs constrains a message to a call name
            assert (a["grammar"] is None) == (b["grammar"] is None)
        if b.get("choices"):            # the choice grammar: the same finite language
            for text in b["choices"] + ["functions.x:", "message", "functions.get_weather"]:
                assert accepts(a["grammar"], text) == (text in b["choices"]), text
    want = rec["reply"]
    if request.get("stream"):           # theirs repeats the call's name, id and type
        for chunk in want[2:-1]:
            delta = chunk["choices"][0]["delta"]
            del delta["function_call"]["name"]
            call = delta["tool_calls"][0]
            del call["function"]["name"], call["id"], call["type"]
    if name == "auto, a call":          # theirs names the follow-up's text there, not the call
        assert want["choices"][0]["message"]["function_call"]["name"] == ""
        want["choices"][0]["message"]["function_call"]["name"] = "get_weather"
    _same_shape(out, want)


def test_function_calling_extensions():
    """What llama-cpp-python 0.3.36 refuses: a streamed automatic call, tool_choice
    "required"; and a message reply that is not constrained to a function name."""
    handler = get_chat_completion_handler("chatml-function-calling")
    calls, chunks = run_handler(handler, dict(messages=TOOL_MESSAGES[:2], tools=[WEATHER],
                                              tool_choice="auto", stream=True),
                                ["functions.get_weather", '{"city": "Paris"}'])
    args = "".join(c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                   for c in chunks[1:-1])
    assert args == '{"city": "Paris"}' and chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    calls, out = run_handler(handler, dict(messages=TOOL_MESSAGES[:2], tools=[WEATHER, TIME],
                                           tool_choice="required"),
                             ["functions.get_time", "{}"])
    assert not accepts(calls[0]["grammar"], "message:")
    assert accepts(calls[0]["grammar"], "functions.get_time:")
    assert out["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_time"
    calls, out = run_handler(handler, dict(messages=TOOL_MESSAGES[:2], tools=[WEATHER],
                                           tool_choice="auto"), ["message", "Free text."])
    assert calls[1]["grammar"] is None and out["choices"][0]["message"]["content"] == "Free text."


def test_function_calling_on_smollm2(smollm2):
    """SmolLM2 (a chatml model), greedy: a forced, a required and an automatic tool choice
    call get_weather with arguments naming Paris; a greeting with tool_choice "auto" gets a
    text reply."""
    from pyinfer import Llama
    llm = Llama(str(smollm2), n_ctx=1024, n_threads=2, verbose=False,
                chat_format="chatml-function-calling")
    try:
        msgs = [{"role": "system", "content": "You call functions."},
                {"role": "user", "content": "What is the weather in Paris?"}]
        for choice in ({"type": "function", "function": {"name": "get_weather"}}, "required",
                       "auto"):
            r = llm.create_chat_completion(msgs, tools=[WEATHER, TIME], tool_choice=choice,
                                           max_tokens=40, temperature=0)
            msg = r["choices"][0]["message"]
            assert msg["content"] is None and r["choices"][0]["finish_reason"] == "tool_calls"
            (call,) = msg["tool_calls"]
            assert call["function"]["name"] == msg["function_call"]["name"] == "get_weather"
            assert "Paris" in json.loads(call["function"]["arguments"])["city"]
        r = llm.create_chat_completion([{"role": "user", "content": "Hi there! How are you?"}],
                                       tools=[WEATHER, TIME], tool_choice="auto",
                                       max_tokens=8, temperature=0)
        assert isinstance(r["choices"][0]["message"]["content"], str)
        assert "tool_calls" not in r["choices"][0]["message"]
    finally:
        llm.close()


# ---- against the installed llama-cpp-python (opt in) ----------------------------------------

@pytest.mark.llama_cpp
def test_prompts_equal_installed_llama_cpp_python():
    theirs = real_llama_cpp("llama_cpp.llama_chat_format")
    for name in FORMATTERS:
        for messages in CONVERSATIONS:
            request = {"messages": messages}
            a = run_handler(theirs.get_chat_completion_handler(name), request, [""])
            b = run_handler(get_chat_completion_handler(name), request, [""])
            if "error" not in a[1]:
                assert a[0] == b[0], (name, messages)


# ---- recording ----------------------------------------------------------------------------

def load_llama_chat_format(sdist: Path):
    """llama-cpp-python's llama_chat_format, imported from its sdist without its C library:
    its pure-Python modules (llama_chat_format, llama_types, llama_grammar, _utils) in a
    temporary `llama_cpp` package whose C binding, `llama` and `_logger` modules are stubs
    (the formatters and the function-calling handler do not reach them)."""
    import shutil
    import tempfile
    root = Path(tempfile.mkdtemp()) / "llama_cpp"
    root.mkdir()
    for f in ("llama_chat_format.py", "llama_types.py", "llama_grammar.py", "_utils.py"):
        shutil.copy(sdist / "llama_cpp" / f, root / f)
    (root / "__init__.py").write_text("")
    (root / "llama_cpp.py").write_text("")
    (root / "llama.py").write_text("class Llama: pass\nclass LogitsProcessorList(list): pass\n"
                                   "class StoppingCriteriaList(list): pass\n")
    (root / "_logger.py").write_text("import logging\n"
                                     "logger = logging.getLogger('llama-cpp-python')\n")
    sys.path.insert(0, str(root.parent))
    import llama_cpp.llama_chat_format as module
    return module


def record(sdist: Path) -> dict:
    lcf = load_llama_chat_format(sdist)
    registered = list(lcf.LlamaChatCompletionHandlerRegistry()._chat_handlers)
    handlers = {"chatml-function-calling", "functionary", "functionary-v1", "functionary-v2"}
    formats = {}
    for name in registered:
        if name in handlers:
            continue
        cases = []
        for messages in CONVERSATIONS:
            calls, out = run_handler(lcf.get_chat_completion_handler(name),
                                     {"messages": messages, "stop": ["U"]}, ["ok"])
            if "error" in out:
                cases.append({"messages": messages, "error": out["error"]})
            else:
                cases.append({"messages": messages, "prompt": calls[0]["prompt"],
                              "stop": calls[0]["stop"]})
        formats[name] = cases
    function_calling = {}
    for name, request, texts in FUNCTION_CALLING_CASES:
        calls, out = run_handler(lcf.get_chat_completion_handler("chatml-function-calling"),
                                 request, texts)
        for i, c in enumerate(calls):
            g = c["grammar"]
            if g is not None and c["stop"] == [":"]:        # the choice grammar
                c["choices"] = sorted(s.strip('"') for s in g.replace("\n", " ").split(" ")
                                      if len(s) > 1 and s[0] == s[-1] == '"')
            elif g is not None and '"<|im_end|>"' in g:     # its "functions.X: or end" one
                c["follow_up"] = calls[i - 1]["stop"] != [":"]     # after a call
                c["message_grammar"] = not c["follow_up"]          # for the message
        function_calling[name] = {"request": request, "texts": texts, "calls": calls,
                                  "reply": out}
    config_handler = lcf.hf_tokenizer_config_to_chat_completion_handler(
        smollm2_tokenizer_config())
    tokenizer_config = [{"messages": m, "calls": run_handler(config_handler, {"messages": m},
                                                             ["ok"])[0]}
                        for m in CONVERSATIONS[:4]]
    return {
        "note": ("Recorded by `python tests/test_chat_formats.py --record SDIST` from "
                 "llama-cpp-python 0.3.36's sdist: its llama_chat_format module, imported "
                 "with stubs for its C binding, ran each registered handler against a fake "
                 "model that records what create_completion is given (the prompt text and "
                 "BOS flag passed to tokenize, the stop strings, grammars) and returns "
                 "scripted texts. Nothing of its code is in pyinfer."),
        "llama_cpp_python": "0.3.36",
        "registered": registered,
        "not_provided": sorted(handlers - {"chatml-function-calling"}),
        "formats": formats,
        "chatml-function-calling": function_calling,
        "hf_tokenizer_config": tokenizer_config,
    }


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--record":
        sys.exit(__doc__)
    data = record(Path(sys.argv[2]))
    DATA.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {DATA}: {len(data['formats'])} formats, "
          f"{len(data['chatml-function-calling'])} function-calling cases")
