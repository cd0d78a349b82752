"""pyinfer.Llama as a drop-in for llama_cpp.Llama: return shapes, streaming, stop strings,
logprobs, errors, state, prefix reuse, embeddings; on SmolLM2 and on a tiny random model.

The oracles: the non-streamed result for streams, a fresh instance for prefix reuse and state
restores, numpy log-softmax of the kept logits for logprobs, numpy pooling of the per-token
states for embeddings, and texts recorded from llama-cpp-python (scripts/record_llama_cpp_api.py).
"""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from pyinfer import Llama, LlamaRAMCache, StoppingCriteriaList
from pyinfer.llama_options import LLAMA_POOLING_TYPE_MEAN, UnsupportedOptionError
from pyinfer.offload import GPUUnavailableError, cuda_status
from tiny_chat_model import EOS_ID

API_DATA = Path(__file__).parent / "data" / "SmolLM2-135M-Instruct.Q4_1.llama_cpp_api.json"
GREEDY = dict(temperature=0.0)


@pytest.fixture(scope="module")
def llm(smollm2):
    m = Llama(str(smollm2), n_ctx=512, n_threads=2, verbose=False)
    yield m
    m.close()


@pytest.fixture(scope="module")
def llm_lp(smollm2):
    m = Llama(str(smollm2), n_ctx=512, n_threads=2, verbose=False, logits_all=True)
    yield m
    m.close()


@pytest.fixture
def tiny(tiny_path):
    m = Llama(tiny_path, n_ctx=0, n_threads=2, verbose=False)
    yield m
    m.close()


def _stream(llm, *args, **kw):
    chunks = list(llm(*args, stream=True, **kw))
    return chunks, "".join(c["choices"][0]["text"] for c in chunks), chunks[-1]["choices"][0]["finish_reason"]


def _assert_completion_shape(r, stream_chunk=False):
    assert set(r) == ({"id", "object", "created", "model", "choices"} |
                      (set() if stream_chunk else {"usage"}))
    assert r["id"].startswith("cmpl-") and r["object"] == "text_completion"
    assert isinstance(r["created"], int) and isinstance(r["model"], str)
    (c,) = r["choices"]
    assert set(c) == {"text", "index", "logprobs", "finish_reason"} and c["index"] == 0
    assert isinstance(c["text"], str)
    assert c["finish_reason"] in ((None, "stop", "length") if stream_chunk else ("stop", "length"))
    if not stream_chunk:
        u = r["usage"]
        assert set(u) == {"prompt_tokens", "completion_tokens", "total_tokens"}
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


# ---- completions on SmolLM2 -------------------------------------------------------------

def test_completion_shape_and_usage(llm):
    r = llm("The capital of France is", max_tokens=8, **GREEDY)
    _assert_completion_shape(r)
    assert r["usage"]["prompt_tokens"] == len(llm.tokenize(b"The capital of France is"))
    assert r["usage"]["completion_tokens"] == 8 and r["choices"][0]["finish_reason"] == "length"
    assert r["choices"][0]["text"].startswith(" Paris")


@pytest.mark.parametrize("prompt,kw", [
    ("The capital of France is", dict(max_tokens=20)),
    ("def fibonacci(n):", dict(max_tokens=24, stop=["return"])),
    ("List three colors: red,", dict(max_tokens=24, stop=[",", "\n\n"])),
    ("Once upon a time", dict(max_tokens=16, temperature=0.9, seed=123)),
])
def test_stream_concatenates_to_the_completion(llm, prompt, kw):
    kw = {**GREEDY, **kw}
    full = llm(prompt, **kw)
    chunks, text, finish = _stream(llm, prompt, **kw)
    assert text == full["choices"][0]["text"]
    assert finish == full["choices"][0]["finish_reason"]
    for c in chunks:
        _assert_completion_shape(c, stream_chunk=True)
    assert chunks[-1]["choices"][0]["text"] == ""
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert len({c["id"] for c in chunks}) == 1


def test_stop_string_split_across_tokens(llm):
    prompt = "The capital of France is"
    toks = llm.tokenize(prompt.encode())
    base = llm(prompt, max_tokens=20, **GREEDY)["choices"][0]["text"]
    gen = []
    for t in llm.generate(toks, temp=0.0):
        gen.append(t)
        if len(gen) == 20:
            break
    pieces = [llm.detokenize([t]).decode() for t in gen]
    assert "".join(pieces) == base
    # a stop string made of the end of one multi-character piece and the start of the next
    i = next(i for i in range(1, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[i][-2:] + pieces[i + 1][:2]
    want = base[:base.index(stop)]
    r = llm(prompt, max_tokens=20, stop=[stop], **GREEDY)
    assert r["choices"][0]["text"] == want and r["choices"][0]["finish_reason"] == "stop"
    chunks, text, finish = _stream(llm, prompt, max_tokens=20, stop=stop, **GREEDY)
    assert text == want and finish == "stop"
    assert not any(stop[:2] in c["choices"][0]["text"] and stop not in want
                   for c in chunks if c["choices"][0]["text"].endswith(stop[:2]))


def test_readme_examples_run_unchanged(smollm2):
    # llama-cpp-python's README, high-level API section, with only the import changed
    llm = Llama(model_path=str(smollm2), verbose=False)
    output = llm("Q: Name the planets in the solar system? A: ", max_tokens=32,
                 stop=["Q:", "\n"], echo=True)
    assert output["choices"][0]["text"].startswith("Q: Name the planets in the solar system? A: ")
    assert "\n" not in output["choices"][0]["text"]
    chat = llm.create_chat_completion(messages=[
        {"role": "system", "content": "You are an assistant who perfectly describes images."},
        {"role": "user", "content": "Describe this image in detail please."}], max_tokens=24)
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(chat["choices"][0]["message"]["content"], str)
    pieces = [c["choices"][0]["text"] for c in llm("Tell me a joke:", max_tokens=8, stream=True)]
    assert len(pieces) >= 2
    llm.close()


def test_echo_and_logprobs(llm_lp):
    prompt = "The capital of France is"
    r = llm_lp(prompt, max_tokens=6, logprobs=3, **GREEDY)
    lp = r["choices"][0]["logprobs"]
    assert set(lp) == {"tokens", "text_offset", "token_logprobs", "top_logprobs"}
    assert len(lp["tokens"]) == 6 and "".join(lp["tokens"]) == r["choices"][0]["text"]
    assert lp["text_offset"][0] == len(prompt)
    # oracle: float64 log-softmax of the kept logits rows
    n_prompt = r["usage"]["prompt_tokens"]
    ids = llm_lp.input_ids[n_prompt:n_prompt + 5].tolist()
    for j, tok in enumerate(ids):
        row = llm_lp.scores[n_prompt - 1 + j].astype(np.float64)
        want = row[tok] - row.max() - np.log(np.exp(row - row.max()).sum())
        assert lp["token_logprobs"][j] == pytest.approx(want, abs=1e-4)
        assert max(lp["top_logprobs"][j].values()) == pytest.approx(lp["token_logprobs"][j], abs=1e-6)
        assert 1 <= len(lp["top_logprobs"][j]) <= 4
    e = llm_lp(prompt, max_tokens=3, logprobs=1, echo=True, **GREEDY)
    text, elp = e["choices"][0]["text"], e["choices"][0]["logprobs"]
    assert text.startswith(prompt)
    assert elp["token_logprobs"][0] is None and elp["top_logprobs"][0] is None
    assert len(elp["tokens"]) == n_prompt + 3
    assert all(v <= 0 for v in elp["token_logprobs"][1:])
    # streamed logprobs: one entry per streamed token, same values
    chunks = list(llm_lp(prompt, max_tokens=6, logprobs=3, stream=True, **GREEDY))
    streamed = [v for c in chunks[:-1] for v in c["choices"][0]["logprobs"]["token_logprobs"]]
    np.testing.assert_allclose(streamed, lp["token_logprobs"], atol=1e-6)


def test_logprobs_need_logits_all(llm):
    with pytest.raises(ValueError, match="^logprobs is not supported for models created with "
                                         "logits_all=False$"):
        llm("Hello", max_tokens=2, logprobs=2)


def test_context_overflow_error_text(tiny):
    n_ctx = tiny.n_ctx()
    with pytest.raises(ValueError, match=rf"^Requested tokens \({n_ctx + 4}\) exceed context window of {n_ctx}$"):
        tiny([7] * (n_ctx + 4), max_tokens=4)
    with pytest.raises(ValueError, match=rf"^Requested tokens \({n_ctx}\) exceed context window of {n_ctx}$"):
        tiny([7] * n_ctx, max_tokens=4)


def test_max_tokens_none_runs_to_the_end_of_the_context(tiny):
    no_eos = {EOS_ID: -1e9}
    for max_tokens in (None, 0, -1, 10 ** 6):
        r = tiny([5, 6, 7], max_tokens=max_tokens, logit_bias=no_eos, **GREEDY)
        assert r["usage"]["total_tokens"] == tiny.n_ctx()
        assert r["choices"][0]["finish_reason"] == "length"


def test_tiny_stream_with_broken_utf8_matches(tiny):
    for seed in range(4):
        kw = dict(max_tokens=60, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed,
                  stop=["\xff", "ab"])
        full = tiny("the in", **kw)["choices"][0]
        chunks, text, finish = _stream(tiny, "the in", **kw)
        assert (text, finish) == (full["text"], full["finish_reason"])


def test_eos_ends_with_stop(tiny):
    r = tiny([5, 6], max_tokens=5, logit_bias={EOS_ID: 1e9}, **GREEDY)
    assert r["choices"][0]["text"] == "" and r["choices"][0]["finish_reason"] == "stop"
    assert r["usage"]["completion_tokens"] == 0


def test_logit_bias_processor_and_stopping_criteria(tiny):
    r = tiny([5], max_tokens=4, logit_bias={"104": 1e9}, **GREEDY)     # str keys as from JSON
    assert r["choices"][0]["text"] == "hhhh"

    def ban_h(input_ids, scores):
        scores = scores.copy()
        scores[104] = -np.inf
        return scores
    r = tiny([5], max_tokens=4, logit_bias={"104": 1e9}, logits_processor=[ban_h], **GREEDY)
    assert "h" not in r["choices"][0]["text"]
    seen = []

    def after_three(input_ids, logits):
        seen.append((len(input_ids), logits.shape))
        return len(input_ids) >= 4
    r = tiny([5], max_tokens=20, stopping_criteria=StoppingCriteriaList([after_three]), **GREEDY)
    assert r["choices"][0]["finish_reason"] == "stop" and r["usage"]["completion_tokens"] == 3
    assert seen[0] == (1, (tiny.n_vocab(),))


def test_seed_reproducible_and_chained(tiny):
    kw = dict(max_tokens=12, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = tiny([5, 6], seed=99, **kw)["choices"][0]["text"]
    b = tiny([5, 6], seed=99, **kw)["choices"][0]["text"]
    assert a == b
    # without a seed the next seed derives from the last one (as llama-cpp-python)
    t1 = Llama(tiny.model_path, verbose=False, seed=5)
    t2 = Llama(tiny.model_path, verbose=False, seed=5)
    assert [t1([5], **kw)["choices"][0]["text"] for _ in range(2)] == \
           [t2([5], **kw)["choices"][0]["text"] for _ in range(2)]


def test_unsupported_arguments_are_clear(tiny):
    with pytest.raises(ValueError, match="Infill is not supported by this model"):
        tiny("a", suffix="b")       # no FIM tokens (tests/test_infill.py has a model with them)
    with pytest.raises(TypeError, match="LlamaGrammar"):
        tiny("a", grammar=object())


# ---- state, prefix reuse, cache ---------------------------------------------------------

def test_save_load_state_gives_identical_next_logits(llm, smollm2):
    prompt = llm.tokenize(b"Save and restore the state of a language model")
    llm.reset()
    llm.eval(prompt)
    state = llm.save_state()
    assert state.n_tokens == len(prompt) and state.llama_state_size == len(state.llama_state)
    llm.eval([11, 22])
    want = llm._logits.copy()
    llm.eval([33, 44, 55])                  # move on, then come back
    llm.load_state(state)
    assert llm.n_tokens == len(prompt) and llm._input_ids.tolist() == prompt
    llm.eval([11, 22])
    np.testing.assert_array_equal(llm._logits, want)
    other = Llama(str(smollm2), n_ctx=512, n_threads=2, verbose=False)
    other.load_state(state)
    other.eval([11, 22])
    np.testing.assert_array_equal(other._logits, want)
    other.close()


def test_prefix_reuse_equals_fresh_run(llm, smollm2):
    llm("The history of the city of Paris begins", max_tokens=4, **GREEDY)
    evaluated = []
    real_eval = llm.eval
    llm.eval = lambda tokens: (evaluated.append(len(tokens)), real_eval(tokens))[1]
    try:
        reused = llm("The history of the city of Rome", max_tokens=12, **GREEDY)
    finally:
        del llm.eval
    n_prompt = reused["usage"]["prompt_tokens"]
    assert evaluated[0] < n_prompt          # only the differing suffix was evaluated
    fresh_llm = Llama(str(smollm2), n_ctx=512, n_threads=2, verbose=False)
    fresh = fresh_llm("The history of the city of Rome", max_tokens=12, **GREEDY)
    assert reused["choices"][0]["text"] == fresh["choices"][0]["text"]
    fresh_llm.close()


def test_exact_prompt_cached_resamples(tiny):
    toks = [5, 6, 7]
    first = tiny(toks, max_tokens=5, **GREEDY)["choices"][0]["text"]
    assert tiny(toks, max_tokens=5, **GREEDY)["choices"][0]["text"] == first


def test_ram_cache_restores_longest_prefix(tiny):
    cache = LlamaRAMCache(capacity_bytes=1 << 30)
    tiny.set_cache(cache)
    a = tiny([5, 6, 7], max_tokens=4, **GREEDY)
    assert len(cache.cache_state) == 1 and [5, 6, 7] in cache
    tiny.reset()
    b = tiny([5, 6, 7], max_tokens=4, **GREEDY)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    tiny.set_cache(None)


# ---- embeddings -------------------------------------------------------------------------

def test_embeddings_pooling_and_normalization(tiny_path):
    with pytest.raises(RuntimeError, match="must be created with embedding=True"):
        Llama(tiny_path, verbose=False).embed("x")
    none = Llama(tiny_path, verbose=False, embedding=True)
    mean = Llama(tiny_path, verbose=False, embedding=True, pooling_type=LLAMA_POOLING_TYPE_MEAN)
    rows = np.array(none.embed("the cat"))
    assert rows.shape == (len(none.tokenize(b"the cat")), none.n_embd())
    v = np.array(mean.embed("the cat"))
    np.testing.assert_allclose(v, rows.mean(axis=0), rtol=1e-5, atol=1e-6)
    u = np.array(mean.embed("the cat", normalize=True))
    assert np.linalg.norm(u) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(u, v / np.linalg.norm(v), rtol=1e-5)
    r = mean.create_embedding(["the cat", "in"])
    assert r["object"] == "list" and [d["index"] for d in r["data"]] == [0, 1]
    assert r["usage"]["prompt_tokens"] == len(mean.tokenize(b"the cat")) + len(mean.tokenize(b"in"))
    assert len(r["data"][1]["embedding"]) == mean.n_embd()


# ---- construction, options, model facts --------------------------------------------------

def test_model_facts_match_llama_cpp_record(llm, smollm2):
    rec = json.loads(API_DATA.read_text())
    assert llm.metadata == rec["metadata"]
    assert (llm.token_bos(), llm.token_eos(), llm.token_nl()) == \
           (rec["token_bos"], rec["token_eos"], rec["token_nl"])
    assert (llm.n_vocab(), llm.n_embd(), llm.chat_format) == \
           (rec["n_vocab"], rec["n_embd"], rec["chat_format"])
    for requested, got in rec["n_ctx"].items():
        m = Llama(str(smollm2), n_ctx=int(requested), verbose=False)
        assert m.n_ctx() == got and m.input_ids.shape == (got,)
        m.close()


def test_options_that_cannot_be_honoured(tiny_path, tmp_path):
    with pytest.raises(ValueError, match="^Model path does not exist"):
        Llama(str(tmp_path / "missing.gguf"))
    with pytest.raises(UnsupportedOptionError, match="LoRA"):
        Llama(tiny_path, lora_path="adapter.gguf", verbose=False)
    with pytest.raises(UnsupportedOptionError, match="F16"):
        Llama(tiny_path, type_k=8, verbose=False)
    with pytest.raises(UnsupportedOptionError, match="LongRoPE"):
        Llama(tiny_path, rope_scaling_type=3, verbose=False)
    if not cuda_status()[0]:   # vram_budget without CUDA: an error naming what is missing
        with pytest.raises(GPUUnavailableError, match="vram_budget=1.0 needs a CUDA GPU"):
            Llama(tiny_path, vram_budget=1.0, verbose=False)
        with warnings.catch_warnings():     # n_gpu_layers: the CPU, as llama-cpp-python's CPU build
            warnings.simplefilter("error")
            Llama(tiny_path, n_gpu_layers=-1, verbose=False).close()
    with pytest.warns(RuntimeWarning, match="unknown keyword"):
        Llama(tiny_path, verbose=False, n_gqa=8).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Llama(tiny_path, verbose=False, use_mmap=False, flash_attn=True, offload_kqv=False,
              numa=True).close()


def test_verbose_load_report(tiny_path, capsys):
    Llama(tiny_path, verbose=True, n_threads=2).close()
    err = capsys.readouterr().err
    for word in ("tiny.gguf", "arch llama", "2 layers", "F32", "MiB", "threads 2", "load time"):
        assert word in err


def test_vocab_only_and_overrides(tiny_path):
    v = Llama(tiny_path, vocab_only=True, verbose=False)
    assert v.tokenize(b"the") == [116, 257] and v.detokenize([116, 257]) == b"the"
    with pytest.raises(RuntimeError, match="vocab_only"):
        v.eval([1])
    o = Llama(tiny_path, verbose=False, kv_overrides={"tokenizer.ggml.add_bos_token": True})
    assert o.tokenize(b"the")[0] == o.token_bos()
    with pytest.raises(UnsupportedOptionError, match="tokenizer.ggml.eos_token_id"):
        Llama(tiny_path, verbose=False, kv_overrides={"tokenizer.ggml.eos_token_id": 5})
    with pytest.raises(ValueError, match="Unknown value type"):
        Llama(tiny_path, verbose=False, kv_overrides={"llama.block_count": [1]})


def test_rope_freq_base_override_changes_logits(tiny_path):
    def logits(**kw):
        m = Llama(tiny_path, verbose=False, **kw)
        m.eval([5, 6, 7, 8])
        return m._logits.copy()
    base = logits()
    np.testing.assert_array_equal(logits(rope_freq_base=10000.0), base)   # the model's value
    assert not np.allclose(logits(rope_freq_base=500.0), base)
    np.testing.assert_array_equal(logits(kv_overrides={"llama.rope.freq_base": 500.0}),
                                  logits(rope_freq_base=500.0))


def test_context_manager_and_close(tiny_path):
    with Llama(tiny_path, verbose=False) as m:
        assert m([5], max_tokens=2, **GREEDY)["usage"]["completion_tokens"] == 2
    m.close()
    with pytest.raises(RuntimeError):
        m.eval([5])


def test_logits_to_logprobs_and_prefix_helpers():
    x = np.array([[1.0, 2.0, 3.0], [-np.inf, 0.0, 0.0]], dtype=np.float32)
    lp = Llama.logits_to_logprobs(x)
    np.testing.assert_allclose(np.exp(lp).sum(axis=-1), 1.0, rtol=1e-6)
    assert lp.dtype == np.float32 and lp[1, 0] == -np.inf
    assert Llama.longest_token_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert Llama.longest_token_prefix([], [1]) == 0
