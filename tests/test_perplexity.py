"""The perplexity command: llama.cpp's chunking and scoring on hand-made logits, our
SmolLM2 numbers against a numpy computation from full logits, and (opt in) against
llama-cpp-python computing the same perplexity from its own logits.

Budgets: hand-made cases exact to 1e-9; the CLI's number against numpy from the
engine's full logits to 1e-6 relative (the same logits, scored twice); against
llama.cpp 1% (two engines' float32 logits, F16 KV caches).
"""
import math

import numpy as np
import pytest

from pyinfer.config import ContextSettings
from pyinfer.engine import Engine
from pyinfer.perplexity import chunks_of, default_corpus, evaluate, main, model_perplexity
from conftest import real_llama_cpp


def test_chunks_are_non_overlapping_and_drop_the_tail():
    toks = list(range(10))
    assert chunks_of(toks, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert chunks_of(toks, 4, n_chunks=1) == [[0, 1, 2, 3]]


def test_uniform_logits_give_the_vocabulary_size():
    res = evaluate(lambda chunk: np.zeros((len(chunk) - len(chunk) // 2, 50), np.float32),
                   list(range(40)), n_ctx=8)
    assert len(res.chunk_nll) == 5 and res.n_scored == 5 * 3   # positions 4..6 predict 5..7
    assert abs(res.ppl - 50.0) < 1e-9


def test_only_the_second_half_is_scored_and_bos_replaces_the_first_token():
    seen = []

    def oracle(chunk):    # certain of the right next token, from chunk position n/2 on
        seen.append(list(chunk))
        n = len(chunk)
        out = np.zeros((n - n // 2, 20), np.float32)
        for r, pos in enumerate(range(n // 2, n - 1)):
            out[r, toks[seen_start[0] + pos + 1]] = 100.0
        seen_start[0] += n
        return out

    toks = [int(t) for t in np.random.default_rng(0).integers(2, 20, 32)]
    seen_start = [0]
    res = evaluate(oracle, toks, n_ctx=16, bos=1)
    assert res.ppl < 1.0 + 1e-9
    assert [c[0] for c in seen] == [1, 1] and seen[1][1:] == toks[17:32]


def test_corpus_is_the_sorted_pydoc_topics():
    from pydoc_data.topics import topics
    text = default_corpus()
    first = sorted(topics)[0]
    assert text.startswith(topics[first]) and len(text) > 400_000


def _numpy_ppl(eng, tokens, n_ctx, n_chunks):
    nll, count = 0.0, 0
    for c in range(n_chunks):
        chunk = tokens[c * n_ctx:(c + 1) * n_ctx]
        eng.truncate(0)
        logits = eng.decode(chunk, logits_all=True).astype(np.float64)
        for pos in range(n_ctx // 2, n_ctx - 1):
            z = logits[pos]
            nll += math.log(np.exp(z - z.max()).sum()) + z.max() - z[chunk[pos + 1]]
            count += 1
    return math.exp(nll / count)


def test_smollm2_perplexity_matches_numpy_from_full_logits(smollm2, capsys):
    from pyinfer.gguf_model import GGUFFile
    from pyinfer.tokenizer import Tokenizer
    text = default_corpus()[:20000]
    res = model_perplexity(str(smollm2), text, n_ctx=128, n_chunks=2, n_threads=2)
    f = GGUFFile(str(smollm2))
    tokens = Tokenizer.from_gguf(f.reader).tokenize(text.encode(), add_bos=False)
    eng = Engine(f, ContextSettings(n_ctx=128, n_batch=128, n_threads=2))
    want = _numpy_ppl(eng, tokens, 128, 2)
    eng.close()
    assert abs(res.ppl - want) / want < 1e-6
    assert 3.0 < res.ppl < 60.0           # an English-reading model, not noise


def test_cli_prints_llama_cpp_style_lines(smollm2, tmp_path, capsys):
    path = tmp_path / "t.txt"
    path.write_text(default_corpus()[:8000])
    assert main([str(smollm2), "--text", str(path), "-c", "64", "--chunks", "2", "-t", "2"]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("[1]") and "[2]" in cap.out and "Final estimate: PPL = " in cap.out
    assert "over 2 of " in cap.out and " chunks of 64 tokens of the text (" in cap.out and "; 62 scored)" in cap.out
    assert "2/2 [" in cap.err                      # the progress bar: chunks done of the total, then the ETA


def test_default_size_is_a_prefix_of_the_corpus(tmp_path, monkeypatch, capsys):
    """Without --chunks the command scores DEFAULT_CHUNKS chunks (about a minute on 2 cores),
    not the whole corpus; --all scores every chunk."""
    import pyinfer.perplexity as ppl
    seen = []

    def fake(model, text, n_ctx, n_chunks, *args, **kw):
        seen.append((len(text), n_ctx, n_chunks))
        return ppl.PerplexityResult(n_ctx, [1.0], 255, 0.1, n_text_tokens=113_000)
    monkeypatch.setattr(ppl, "model_perplexity", fake)
    model = tmp_path / "m.gguf"           # never opened: model_perplexity is the fake
    model.write_bytes(b"GGUF")
    assert main([str(model), "--no-progress"]) == 0
    assert main([str(model), "--all", "--no-progress"]) == 0
    assert seen == [(len(default_corpus()), 512, ppl.DEFAULT_CHUNKS), (len(default_corpus()), 512, -1)]
    assert "over 1 of 220 chunks of 512 tokens of pydoc_data.topics" in capsys.readouterr().out


@pytest.mark.llama_cpp
def test_smollm2_perplexity_matches_llama_cpp(smollm2):
    llama_cpp = real_llama_cpp("llama_cpp")
    text = default_corpus()[:40000]
    n_ctx, n_chunks = 256, 3
    ours = model_perplexity(str(smollm2), text, n_ctx=n_ctx, n_chunks=n_chunks, n_threads=2)
    llm = llama_cpp.Llama(str(smollm2), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                          n_threads=2, verbose=False)
    toks = llm.tokenize(text.encode(), add_bos=False, special=False)

    def logits_of(chunk):
        llm.reset()
        llm.eval(chunk)
        return np.array(llm.scores[len(chunk) // 2:len(chunk)], dtype=np.float32)

    theirs = evaluate(logits_of, toks, n_ctx, n_chunks)
    assert abs(ours.ppl - theirs.ppl) / theirs.ppl < 0.01
