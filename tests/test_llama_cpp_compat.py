"""pyinfer.Llama side by side with llama_cpp.Llama on SmolLM2 (opt in: --run-llama-cpp).

Greedy completions and chats give the same texts and dicts of the same shape; the sampler,
fed llama.cpp's own logits, picks the tokens llama.cpp picks for the same seed; the public
signatures accept every llama-cpp-python keyword; model_params / context_params hold the
values of llama-cpp-python's structs, field for field.
"""
import dataclasses
import inspect

import numpy as np
import pytest

import pyinfer
from pyinfer.sampling import Sampler, SamplingSettings
from conftest import real_llama_cpp

pytestmark = pytest.mark.llama_cpp

COMPLETIONS = [
    ("Q: Name the planets in the solar system? A: ", dict(max_tokens=32, stop=["Q:", "\n"], echo=True)),
    ("The capital of France is", dict(max_tokens=24)),
    ("In 1969, astronauts", dict(max_tokens=24, stop=". ")),
    ("List three colors: red,", dict(max_tokens=16)),
]
CHATS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Say hello."}],
]
IGNORED_VALUES = {"id", "created", "model"}
NEAR_TIE = 0.05     # logit margin under which two engines may legitimately pick differently


@pytest.fixture(scope="module")
def pair(smollm2):
    llama_cpp = real_llama_cpp("llama_cpp")
    ref = llama_cpp.Llama(str(smollm2), n_ctx=512, n_threads=2, verbose=False, logits_all=True)
    ours = pyinfer.Llama(str(smollm2), n_ctx=512, n_threads=2, verbose=False)
    yield ref, ours
    ref.close()
    ours.close()


def shape(x):
    """Keys and value types, recursively (values of id/created/model left out)."""
    if isinstance(x, dict):
        return {k: (type(v).__name__ if k in IGNORED_VALUES else shape(v)) for k, v in x.items()}
    if isinstance(x, list):
        return [shape(v) for v in x[:1]]
    return type(x).__name__


def same_text_or_near_tie(ref, ours, a, b, n):
    """Equal texts; or greedy paths that split where llama.cpp's own top two logits are
    within NEAR_TIE (then the case is xfailed: numerics, not the API)."""
    if a["choices"][0]["text"] == b["choices"][0]["text"]:
        return
    prompt = ref.input_ids[:a["usage"]["prompt_tokens"]].tolist()
    paths = []
    for llm in (ref, ours):
        llm.reset()
        toks = []
        for t in llm.generate(prompt, temp=0.0):
            toks.append(t)
            if len(toks) == n:
                break
        paths.append(toks)
    j = next(i for i, (x, y) in enumerate(zip(*paths)) if x != y)
    row = np.sort(ref.scores[len(prompt) - 1 + j])[::-1]
    margin = float(row[0] - row[1])
    assert margin < NEAR_TIE, f"greedy paths split after {j} tokens at a logit margin of {margin}"
    pytest.xfail(f"greedy paths split after {j} tokens at a near tie (llama.cpp margin {margin:.4f})")


@pytest.mark.parametrize("prompt,kw", COMPLETIONS)
def test_greedy_completion_same_text_and_shape(pair, prompt, kw):
    ref, ours = pair
    a = ref(prompt, temperature=0.0, **kw)
    b = ours(prompt, temperature=0.0, **kw)
    assert shape(b) == shape(a)
    same_text_or_near_tie(ref, ours, a, b, kw["max_tokens"])
    assert b["choices"][0]["finish_reason"] == a["choices"][0]["finish_reason"]
    assert b["usage"] == a["usage"]
    sa = list(ref(prompt, temperature=0.0, stream=True, **{**kw, "echo": False}))
    sb = list(ours(prompt, temperature=0.0, stream=True, **{**kw, "echo": False}))
    assert "".join(c["choices"][0]["text"] for c in sb) == "".join(c["choices"][0]["text"] for c in sa)
    assert shape(sb[0]) == shape(sa[0]) and shape(sb[-1]) == shape(sa[-1])


@pytest.mark.parametrize("messages", CHATS)
def test_greedy_chat_same_text_and_shape(pair, messages):
    ref, ours = pair
    sa = list(ref.create_chat_completion(messages=messages, temperature=0.0, max_tokens=8, stream=True))
    sb = list(ours.create_chat_completion(messages=messages, temperature=0.0, max_tokens=8, stream=True))
    assert [shape(c) for c in (sb[0], sb[1], sb[-1])] == [shape(c) for c in (sa[0], sa[1], sa[-1])]
    a = ref.create_chat_completion(messages=messages, temperature=0.0, max_tokens=32)
    b = ours.create_chat_completion(messages=messages, temperature=0.0, max_tokens=32)
    assert shape(b) == shape(a)
    assert b["choices"][0]["message"]["role"] == a["choices"][0]["message"]["role"]
    as_text = [{"choices": [{"text": r["choices"][0]["message"]["content"]}], "usage": r["usage"]}
               for r in (a, b)]
    same_text_or_near_tie(ref, ours, *as_text, 32)
    assert b["usage"] == a["usage"]


@pytest.mark.parametrize("cfg", [
    dict(temp=0.8), dict(temp=1.3, top_k=0, top_p=1.0, min_p=0.0), dict(temp=-1.0),
    dict(temp=1.0, top_k=100, top_p=0.9, min_p=0.02, typical_p=0.9),
    dict(temp=1.0, repeat_penalty=1.5, frequency_penalty=0.3, presence_penalty=0.2),
    dict(temp=1.0, mirostat_mode=1), dict(temp=1.0, mirostat_mode=2)])
def test_sampler_on_llama_cpp_logits_picks_its_tokens(smollm2, cfg):
    llama_cpp = real_llama_cpp("llama_cpp")
    ref = llama_cpp.Llama(str(smollm2), n_ctx=256, n_threads=2, verbose=False, logits_all=True)
    prompt = ref.tokenize(b"Once upon a time, in a small village,")
    for seed in (1, 2, 3):
        ref.set_seed(seed)
        want = []
        for t in ref.generate(prompt, **cfg):
            want.append(t)
            if len(want) == 12:
                break
        rows = ref.scores[len(prompt) - 1:len(prompt) - 1 + len(want)]
        settings = SamplingSettings(
            temperature=cfg["temp"], top_k=cfg.get("top_k", 40), top_p=cfg.get("top_p", 0.95),
            min_p=cfg.get("min_p", 0.05), typical_p=cfg.get("typical_p", 1.0),
            repeat_penalty=cfg.get("repeat_penalty", 1.0),
            frequency_penalty=cfg.get("frequency_penalty", 0.0),
            presence_penalty=cfg.get("presence_penalty", 0.0),
            mirostat_mode=cfg.get("mirostat_mode", 0), seed=seed)
        s = Sampler(settings)
        got = []
        for row in rows:
            got.append(s.sample(np.array(row)))
            s.accept(got[-1])
        assert got == want, (cfg, seed)
    ref.close()


def test_signatures_accept_llama_cpp_keywords():
    llama_cpp = real_llama_cpp("llama_cpp")
    for name in ("__init__", "__call__", "create_completion", "create_chat_completion",
                 "generate", "sample", "tokenize", "detokenize", "embed", "create_embedding",
                 "eval", "save_state", "load_state", "reset", "set_seed", "set_cache",
                 "from_pretrained"):
        ref = inspect.signature(getattr(llama_cpp.Llama, name)).parameters
        ours = inspect.signature(getattr(pyinfer.Llama, name)).parameters
        missing = [p for p in ref if p not in ours and ref[p].kind != inspect.Parameter.VAR_KEYWORD]
        assert not missing, (name, missing)
        for p in ref:
            if p in ours and ref[p].default is not inspect.Parameter.empty and p != "stop":
                assert ours[p].default == ref[p].default, (name, p)


def test_metadata_and_embeddings_agree(smollm2):
    llama_cpp = real_llama_cpp("llama_cpp")
    ref = llama_cpp.Llama(str(smollm2), n_ctx=256, verbose=False, embedding=True)
    ours = pyinfer.Llama(str(smollm2), n_ctx=256, verbose=False, embedding=True)
    assert ours.metadata == ref.metadata
    a = np.array(ref.embed("Hello world, how are you?"))
    b = np.array(ours.embed("Hello world, how are you?"))
    assert a.shape == b.shape
    cos = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99        # different kernels (quantized activations): close, not equal
    ref.close()
    ours.close()


@pytest.mark.parametrize("kw", [dict(), dict(n_ctx=1000, n_batch=256, n_ubatch=64, n_threads=3,
                                         n_gpu_layers=-1, flash_attn=True, rope_freq_base=20000.0,
                                         pooling_type=1, no_perf=True, op_offload=False)])
def test_params_structs_match(smollm2, kw):
    """Every field ours has, with llama-cpp-python's value (its ctypes pointers left out)."""
    llama_cpp = real_llama_cpp("llama_cpp")
    ref = llama_cpp.Llama(str(smollm2), verbose=False, **kw)
    ours = pyinfer.Llama(str(smollm2), verbose=False, **kw)
    for name in ("model_params", "context_params"):
        for f in dataclasses.fields(getattr(ours, name)):
            if f.name in ("tensor_split", "kv_overrides"):
                continue
            want, got = getattr(getattr(ref, name), f.name), getattr(getattr(ours, name), f.name)
            assert got == want and type(got) is type(want), (name, f.name, got, want)
    assert ours.n_ctx() == ref.n_ctx() and ours._is_recurrent is ref._is_recurrent
    ref.close()
    ours.close()
