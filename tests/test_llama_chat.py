"""Chat completion: prompts rendered from the GGUF template and the named formats (token-equal
with what llama-cpp-python renders, recorded by scripts/record_llama_cpp_api.py), response and
stream shapes, Jinja sandboxing, and what is not supported."""
import json
from pathlib import Path

import pytest

from pyinfer import Llama
from pyinfer.chat import Jinja2ChatFormatter
from pyinfer.chat_formats import FORMATTERS
from tiny_chat_model import BOS_ID, EOS_ID

API_DATA = Path(__file__).parent / "data" / "SmolLM2-135M-Instruct.Q4_1.llama_cpp_api.json"
USER = [{"role": "user", "content": "hi"}]


def capture(llm, messages, chat_format=None, **kw):
    """The prompt tokens, stops and criteria the chat handler passes to create_completion."""
    seen = {}

    def fake(**args):
        seen.update(args)
        return {"id": "cmpl-x", "created": 0, "model": "m", "usage": {},
                "choices": [{"text": "", "logprobs": None, "finish_reason": "stop"}]}
    saved = llm.chat_format
    llm.create_completion = fake
    try:
        if chat_format is not None:
            llm.chat_format = chat_format
        llm.create_chat_completion(messages=messages, **kw)
    finally:
        del llm.create_completion
        llm.chat_format = saved
    return seen


def test_prompts_match_llama_cpp(smollm2):
    rec = json.loads(API_DATA.read_text())
    llm = Llama(str(smollm2), verbose=False)
    assert llm.chat_format == rec["chat_format"] == "chat_template.default"
    for c in rec["chats"]:
        got = capture(llm, c["messages"], c["chat_format"])
        assert got["prompt"] == c["prompt"], (c["chat_format"], c["messages"])
        assert got["stop"] == c["stop"], c["chat_format"]
    llm.close()


def test_chat_completion_shape(smollm2):
    llm = Llama(str(smollm2), n_threads=2, verbose=False)
    r = llm.create_chat_completion(messages=[{"role": "user", "content": "What is 2+2?"}],
                                   max_tokens=16, temperature=0)
    assert set(r) == {"id", "object", "created", "model", "choices", "usage"}
    assert r["id"].startswith("chatcmpl-") and r["object"] == "chat.completion"
    (c,) = r["choices"]
    assert set(c) == {"index", "message", "logprobs", "finish_reason"}
    assert c["message"]["role"] == "assistant" and "4" in c["message"]["content"]
    assert c["finish_reason"] in ("stop", "length") and c["logprobs"] is None
    llm.close()


def test_template_prompt_and_eos_stop(tiny):
    got = capture(tiny, [{"role": "system", "content": "S"}, *USER])
    text = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert got["prompt"] == tiny.tokenize(text.encode(), add_bos=False, special=True)
    assert got["prompt"][0] == BOS_ID and got["stop"] == ["<|im_end|>"]
    crit = got["stopping_criteria"]
    assert crit([1, EOS_ID], None) and not crit([EOS_ID, 1], None)
    r = tiny.create_chat_completion(USER, logit_bias={EOS_ID: 1e9})
    assert r["choices"][0]["message"]["content"] == "" and r["choices"][0]["finish_reason"] == "stop"


def test_stream_deltas(tiny):
    kw = dict(max_tokens=24, temperature=0.9, seed=4)
    full = tiny.create_chat_completion(USER, **kw)
    chunks = list(tiny.create_chat_completion(USER, stream=True, **kw))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert all(c["object"] == "chat.completion.chunk" and c["id"].startswith("chatcmpl-")
               for c in chunks)
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert content == full["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_chat_logprobs(tiny_path):
    llm = Llama(tiny_path, verbose=False, logits_all=True)
    r = llm.create_chat_completion(USER, max_tokens=4, logprobs=True, top_logprobs=2, temperature=0)
    lp = r["choices"][0]["logprobs"]
    assert set(lp) == {"content", "refusal"} and len(lp["content"]) == 4
    entry = lp["content"][0]
    assert set(entry) == {"token", "bytes", "logprob", "top_logprobs"}
    assert all(set(t) == {"token", "logprob", "bytes"} for t in entry["top_logprobs"])
    # llama-cpp-python returns no logprobs unless top_logprobs is given
    assert llm.create_chat_completion(USER, max_tokens=2, logprobs=True)["choices"][0]["logprobs"] is None
    llm.close()


def test_named_formats(tiny):
    """llama-cpp-python's named formats (all of them: tests/test_chat_formats.py) through
    Llama: their prompt tokenized with BOS as the vocabulary wants, their stop added."""
    assert capture(tiny, USER, "chatml")["stop"] == ["<|im_end|>"]
    want = "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert FORMATTERS["chatml"](messages=USER).prompt == want
    assert FORMATTERS["llama-2"](messages=USER).prompt == " <s>[INST]hi  [/INST]"
    assert FORMATTERS["mistral-instruct"](messages=USER).prompt == "[INST] hi [/INST]"
    got = capture(tiny, USER, "vicuna", stop="X")
    text = FORMATTERS["vicuna"](messages=USER).prompt
    assert text.endswith(" USER: hi ASSISTANT:") and got["stop"] == ["X"]
    assert got["prompt"] == tiny.tokenize(text.encode(), add_bos=True, special=True)
    with pytest.raises(ValueError, match="Invalid chat handler: nope"):
        capture(tiny, USER, "nope")


def test_jinja_sandbox_and_raise_exception():
    f = Jinja2ChatFormatter("{{ raise_exception('roles must alternate') }}", "</s>", "<s>")
    with pytest.raises(ValueError, match="roles must alternate"):
        f(messages=USER)
    f = Jinja2ChatFormatter("{{ messages.__class__.__mro__ }}", "</s>", "<s>")
    with pytest.raises(Exception, match="unsafe|not safely"):
        f(messages=USER)
    f = Jinja2ChatFormatter("{% for m in messages %}{{ m | tojson }}{% endfor %}"
                            "{% generation %}{{ bos_token }}{% endgeneration %}", "</s>", "<s>")
    assert f(messages=[{"role": "user", "content": "é"}]).prompt == '{"role": "user", "content": "é"}<s>'
    f = Jinja2ChatFormatter("{% for t in tools %}{{ t.function.name }}{% endfor %}", "</s>", "<s>")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    assert f(messages=USER, tools=tools).prompt == "get_weather"


def test_unsupported_requests_are_clear(tiny):
    with pytest.raises(ValueError, match="response_format"):
        tiny.create_chat_completion(USER, response_format={"type": "yaml"})
    with pytest.raises(ValueError, match="not found in tools"):
        tiny.create_chat_completion(USER, tools=[{"type": "function", "function": {"name": "f"}}],
                                    tool_choice={"type": "function", "function": {"name": "g"}})
    with pytest.raises(TypeError, match="LlamaGrammar"):
        tiny.create_chat_completion(USER, grammar=object())


def test_custom_chat_handler(tiny_path):
    calls = []

    def handler(*, llama, messages, **kw):
        calls.append((llama, messages, kw["temperature"]))
        return {"handled": True}
    llm = Llama(tiny_path, verbose=False, chat_handler=handler)
    assert llm.create_chat_completion(USER, temperature=0.5) == {"handled": True}
    assert calls == [(llm, USER, 0.5)]
    llm.close()
