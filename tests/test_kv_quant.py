"""Quantized KV caches (llama.cpp's type_k/type_v q8_0 and q4_0).

Oracles:
- gs_set_rows into a Q8_0/Q4_0 cache writes exactly the bytes of gguf.quants.quantize (the
  file format's reference quantizers: round half away from zero, Q4_0's signed maximum).
- gs_attention over quantized caches against a float64 numpy attention whose K and V are
  gguf.quants.dequantize of the cache bytes. The op quantizes each query row to Q8_0 (as
  llama.cpp's flash attention does for a quantized K, see ops_attention_quant.c), so two
  references: (a) with the query quantized by gguf's Q8_0 and dequantized, what the op
  computes: only float32 rounding separates them (measured <= 3.5e-7 of the largest output
  over the shapes below; budget 2e-6); (b) with the exact query: the query's quantization
  error (up to 1/254 of its block's largest value per element) moves the scores, measured
  2e-3 .. 1.4e-2 of the largest output (largest with D = 32 and a window: few slots, sharp
  softmax); budget 2.5e-2. Results are bit-identical across thread counts and SIMD levels.
- SmolLM2 through the Llama API: cache bytes exactly 34/64 (q8_0) and 18/64 (q4_0) of F16's,
  greedy tokens equal to F16's over the first 8 tokens of prompts whose F16 top-2 margins
  exceed the q8_0 logit deviation (measured 0.6 .. 1.1 logits for this small model, as
  llama.cpp's own q8_0 cache deviates from its F16 one; on a near-tie such as
  "def fibonacci(n):\\n" (margin 0.28) both engines may pick the other token); q4_0's
  agreement is printed, not asserted. Saved states round-trip through load_state.
- The short sliding-window cache (swa_full=False) with a q8_0 cache gives bit-identical
  logits to the full q8_0 cache (the kernel sums the visible slots in order, wherever they
  sit), on the mistral and gemma2 (soft-capped) fixtures read with head_dim 32.
- --run-llama-cpp: the real llama.cpp with type_k = type_v = q8_0 / q4_0 (flash_attn=True,
  which llama.cpp requires for a quantized V) on the same prompts. llama.cpp rotates Q, K
  and V by a Walsh-Hadamard matrix for quantized caches (attn_rot_k/v, off with
  LLAMA_ATTN_ROT_DISABLE=1); pyinfer does when its forward builds kv_rotations. Without
  the rotation on both sides q4_0 logits are bit-identical and q8_0 differs only where
  llama.cpp's x86 cache quantizer (127/amax, half to even) rounds a value differently.
"""
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize, quantize  # noqa: E402

from pyinfer import Llama  # noqa: E402
from pyinfer._lib import GSShapeError, GSTypeError  # noqa: E402
from pyinfer.config import ContextSettings  # noqa: E402
from pyinfer.engine import Engine  # noqa: E402
from pyinfer.llama_cache import kv_state_bytes, restore_kv_state  # noqa: E402
from pyinfer.llama_options import UnsupportedOptionError  # noqa: E402
from pyinfer.tensor import Context, GGMLType, Graph, ThreadPool  # noqa: E402

QTYPES = {GGMLType.Q8_0: gguf.GGMLQuantizationType.Q8_0, GGMLType.Q4_0: gguf.GGMLQuantizationType.Q4_0}
GGML_ID = {"f16": 1, "q8_0": 8, "q4_0": 2}
PROMPTS = ["The capital of France is", "Once upon a time, in a small village,",
           "Water boils at a temperature of"]


def _dq(raw, t):
    return dequantize(raw, QTYPES[t]).astype(np.float64)


# ---- set_rows -----------------------------------------------------------------------------

def _special_rows(n):
    """Rows of n values that probe the quantizers' rules."""
    r = np.zeros((6, n), np.float32)
    r[1] = 0.75                                               # constant
    r[2, ::2], r[2, 1::2] = 127.0, 2.5                        # x/d = 2.5 exactly: half away from 0
    r[2, 3::32] = -2.5
    r[3] = np.linspace(-1e-3, 1e-3, n)                        # small scales
    r[4] = np.where(np.arange(n) % 32 == 5, -9.0, 1.0)        # Q4_0: a negative maximum
    r[5] = np.where(np.arange(n) % 7 == 0, 1e4, 1e-2)         # wide range within a block
    return r


@pytest.mark.parametrize("qtype", list(QTYPES))
def test_set_rows_writes_gguf_quantizer_bytes(qtype, rng):
    kv_dim, n_ctx = 192, 40
    rows = np.concatenate([(3.0 * rng.standard_normal((18, kv_dim))).astype(np.float32),
                           _special_rows(kv_dim)])
    idx = rng.permutation(n_ctx)[:len(rows)].astype(np.int32)
    got = {}
    for n_threads in (1, 2):
        with Context(4 << 20) as ctx, ThreadPool(n_threads) as pool:
            cache = ctx.new_tensor(qtype, (kv_dim, n_ctx))
            cache.numpy()[...] = 0
            out = ctx.set_rows(cache, ctx.from_numpy(rows), ctx.from_numpy(idx))
            Graph(ctx).build(out).plan(n_threads).compute(pool)
            got[n_threads] = cache.numpy().reshape(n_ctx, -1).copy()
    np.testing.assert_array_equal(got[1], got[2])
    want = quantize(rows, QTYPES[qtype])
    np.testing.assert_array_equal(got[1][idx], want)
    untouched = np.setdiff1d(np.arange(n_ctx), idx)
    assert not got[1][untouched].any()


# ---- the attention op ---------------------------------------------------------------------

def attention(q, kb, vb, k_type, v_type, hkv, pos, scale, window=0, softcap=0.0, n_threads=2):
    """gs_attention_ext over caches holding the quantized rows kb, vb (n_ctx, row bytes)."""
    n_ctx = kb.shape[0]
    d = q.shape[2]
    with Context(16 << 20) as ctx, ThreadPool(n_threads) as pool:
        def cache(raw, t):
            c = ctx.new_tensor(t, (hkv * d, n_ctx))
            c.numpy().reshape(n_ctx, -1)[...] = raw
            return ctx.view(c, (d, hkv, n_ctx), (c.nb[0], c.nb[1] // hkv, c.nb[1]))
        out = ctx.attention(ctx.from_numpy(q), cache(kb, k_type), cache(vb, v_type),
                            ctx.from_numpy(np.asarray(pos, np.int32)), scale, window=window, softcap=softcap)
        Graph(ctx).build(out).plan(n_threads).compute(pool)
        return out.numpy().copy()


def reference(q, k, v, pos, scale, window=0, softcap=0.0):
    """float64 attention; k, v (n_ctx, Hkv, D)."""
    t_, h_, _ = q.shape
    group = h_ // k.shape[1]
    out = np.zeros(q.shape)
    for t in range(t_):
        lo = max(0, pos[t] + 1 - window) if window else 0
        for h in range(h_):
            s = k[lo:pos[t] + 1, h // group] @ q[t, h].astype(np.float64) * scale
            if softcap:
                s = softcap * np.tanh(s / softcap)
            w = np.exp(s - s.max())
            out[t, h] = (w / w.sum()) @ v[lo:pos[t] + 1, h // group]
    return out


def _case(seed, H, Hkv, D, n_ctx, k_type, v_type):
    rng = np.random.default_rng(seed)
    pos = [p for p in (0, 1, 31, 63, 150, 299) if p < n_ctx] + [n_ctx - 1]
    q = (2.0 * rng.standard_normal((len(pos), H, D))).astype(np.float32)
    kb = quantize(rng.standard_normal((n_ctx, Hkv * D)).astype(np.float32), QTYPES[k_type])
    vb = quantize(rng.standard_normal((n_ctx, Hkv * D)).astype(np.float32), QTYPES[v_type])
    return q, kb, vb, pos


@pytest.mark.parametrize("window,softcap", [(0, 0.0), (17, 0.0), (0, 3.0)])
@pytest.mark.parametrize("H,Hkv,D,n_ctx", [(9, 3, 64, 300), (4, 2, 128, 200), (8, 1, 32, 100), (4, 4, 256, 80)])
@pytest.mark.parametrize("k_type,v_type", [(GGMLType.Q8_0, GGMLType.Q8_0), (GGMLType.Q4_0, GGMLType.Q4_0),
                                           (GGMLType.Q8_0, GGMLType.Q4_0)])
def test_attention_matches_float64_reference(k_type, v_type, H, Hkv, D, n_ctx, window, softcap):
    q, kb, vb, pos = _case(D + n_ctx, H, Hkv, D, n_ctx, k_type, v_type)
    scale = D ** -0.5
    got = attention(q, kb, vb, k_type, v_type, Hkv, pos, scale, window, softcap)
    k = _dq(kb, k_type).reshape(n_ctx, Hkv, D)
    v = _dq(vb, v_type).reshape(n_ctx, Hkv, D)
    q8 = _dq(quantize(q.reshape(-1, D), QTYPES[GGMLType.Q8_0]), GGMLType.Q8_0).reshape(q.shape)
    want = reference(q8, k, v, pos, scale, window, softcap)
    assert np.abs(got - want).max() / np.abs(want).max() < 2e-6
    exact_q = reference(q, k, v, pos, scale, window, softcap)
    assert np.abs(got - exact_q).max() / np.abs(exact_q).max() < 2.5e-2
    np.testing.assert_array_equal(got, attention(q, kb, vb, k_type, v_type, Hkv, pos, scale, window,
                                                 softcap, n_threads=1))
    if (H, D) == (9, 64):
        got3 = attention(q, kb, vb, k_type, v_type, Hkv, pos, scale, window, softcap, n_threads=3)
        np.testing.assert_array_equal(got, got3)


@pytest.mark.parametrize("qtype", list(QTYPES))
def test_attention_same_bits_at_every_simd_level(qtype, level):
    q, kb, vb, pos = _case(7, 9, 3, 64, 300, qtype, qtype)
    got = attention(q, kb, vb, qtype, qtype, 3, pos, 0.125, 0, 0.0)
    from pyinfer.tensor import set_simd_level
    set_simd_level("scalar")
    try:
        want = attention(q, kb, vb, qtype, qtype, 3, pos, 0.125, 0, 0.0)
    finally:
        set_simd_level(level)
    np.testing.assert_array_equal(got, want)


def test_attention_refuses_what_it_cannot_read():
    with Context(1 << 20) as ctx:
        pos = ctx.new_tensor(GGMLType.I32, (1,))
        # head_dim 48: no Q8_0 cache (nor a view of one) can hold such rows
        c96 = ctx.new_tensor(GGMLType.Q8_0, (96, 8))
        with pytest.raises(GSShapeError, match="ne.0. = 48 is not a multiple of the q8_0 block size 32"):
            ctx.view(c96, (48, 2, 8), (c96.nb[0], c96.nb[1] // 2, c96.nb[1]))
        with pytest.raises(GSShapeError, match="ne.0. = 48 is not a multiple of the q4_0 block size 32"):
            ctx.new_tensor(GGMLType.Q4_0, (48, 2, 8))
        q = ctx.new_tensor(GGMLType.F32, (64, 2, 1))
        kq = ctx.new_tensor(GGMLType.Q8_0, (64, 1, 8))
        with pytest.raises(GSTypeError, match="both quantized"):
            ctx.attention(q, kq, ctx.new_tensor(GGMLType.F16, (64, 1, 8)), pos, 1.0)
        with pytest.raises(GSTypeError, match="q8_0 or q4_0"):
            ctx.attention(q, ctx.new_tensor(GGMLType.Q4_1, (64, 1, 8)), kq, pos, 1.0)


# ---- the engine: SmolLM2 through the Llama API ----------------------------------------------

@pytest.fixture(scope="module")
def smol(smollm2):
    """Llamas over SmolLM2 with each cache type."""
    ms = {t: Llama(str(smollm2), n_ctx=512, n_threads=2, type_k=GGML_ID[t], type_v=GGML_ID[t],
                   verbose=False) for t in GGML_ID}
    yield ms
    for m in ms.values():
        m.close()


def _greedy(m, prompt: str, n: int):
    m.reset()
    m.eval(m.tokenize(prompt.encode(), add_bos=False))
    return _continue(m, n)


def test_cache_bytes(smol, smollm2):
    f16 = smol["f16"]._engine.kv
    assert smol["q8_0"]._engine.kv.nbytes * 64 == f16.nbytes * 34
    assert smol["q4_0"]._engine.kv.nbytes * 64 == f16.nbytes * 18
    with Llama(str(smollm2), n_ctx=512, n_threads=2, type_k=0, type_v=0, verbose=False) as f32:
        assert f32._engine.kv.nbytes == 2 * f16.nbytes
        assert _greedy(f32, PROMPTS[0], 4) == _greedy(smol["f16"], PROMPTS[0], 4)
    assert [t.type for t in smol["q8_0"]._engine.kv.k + smol["q8_0"]._engine.kv.v] == [GGMLType.Q8_0] * 60
    assert smol["q4_0"].context_params.type_k == 2 and smol["q4_0"].context_params.type_v == 2


def test_greedy_tokens_follow_f16(smol):
    agree = {}
    for p in PROMPTS:
        want = _greedy(smol["f16"], p, 8)
        assert _greedy(smol["q8_0"], p, 8) == want, p
        got = _greedy(smol["q4_0"], p, 8)
        agree[p] = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(want))
    print(f"q4_0 cache: greedy tokens equal to F16's before the first difference: {agree}")


@pytest.mark.parametrize("kv", ["q8_0", "q4_0"])
def test_state_round_trip(smol, smollm2, kv):
    m = smol[kv]
    m.reset()
    m.eval(m.tokenize(b"Save and restore the state of a quantized cache"))
    state = m.save_state()
    want = _continue(m, 6)
    m.eval([11, 22, 33])
    m.load_state(state)
    assert _continue(m, 6) == want
    other = Llama(str(smollm2), n_ctx=512, n_threads=2, type_k=GGML_ID[kv], type_v=GGML_ID[kv], verbose=False)
    try:
        other.load_state(state)
        assert _continue(other, 6) == want
    finally:
        other.close()
    with pytest.raises(RuntimeError, match="different model or context"):
        smol["f16"].load_state(state)


def _continue(m, n):
    out = []
    for _ in range(n):
        tok = int(np.argmax(m._logits))
        out.append(tok)
        m.eval([tok])
    return out


def test_type_options(smollm2, tiny_path):
    with pytest.raises(UnsupportedOptionError, match="one type"):
        Llama(str(smollm2), type_k=8, type_v=2, verbose=False)
    with pytest.raises(UnsupportedOptionError, match="one type"):
        Llama(str(smollm2), type_k=8, verbose=False)             # type_v: F16
    with pytest.raises(UnsupportedOptionError, match="Q8_0"):
        Llama(str(smollm2), type_k=3, type_v=3, verbose=False)   # Q4_1
    with pytest.raises(ValueError, match="multiple of its block size 32; this model's is 16"):
        Llama(tiny_path, type_k=8, type_v=8, verbose=False)


# ---- the short sliding-window cache ----------------------------------------------------------

@pytest.fixture(scope="module")
def windowed(tmp_path_factory):
    """The mistral and gemma2 fixtures (tests/data/arch, window 8) read with head_dim 32 (half
    the heads, twice as wide: the same weights), converted to F32 GGUFs."""
    import json
    import shutil
    from pyinfer.convert.hf_to_gguf import ConvertOptions, convert
    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "arch")
    out = {}
    for name in ("mistral", "gemma2"):
        d = tmp_path_factory.mktemp(name)
        hf = d / "hf"
        shutil.copytree(os.path.join(data, name, "hf"), hf)
        cfg = json.loads((hf / "config.json").read_text())
        cfg.update(head_dim=32, num_attention_heads=2, num_key_value_heads=1)
        if "query_pre_attn_scalar" in cfg:
            cfg["query_pre_attn_scalar"] = 32
        (hf / "config.json").write_text(json.dumps(cfg))
        out[name] = str(d / f"{name}.gguf")
        convert(str(hf), ConvertOptions(out[name], "f32", progress=False))
    return out


@pytest.mark.parametrize("name", ["mistral", "gemma2"])
def test_short_window_cache_quantized(windowed, name):
    tokens = [int(t) for t in np.random.default_rng(3).integers(3, 300, 24)]
    runs = {}
    for kv, swa_full in (("q8_0", True), ("q8_0", False), ("f16", True)):
        e = Engine(windowed[name], ContextSettings(n_ctx=64, n_batch=4, swa_full=swa_full, kv_type=kv))
        try:
            runs[kv, swa_full] = e.decode(tokens, logits_all=True), e.kv.swa_base, e.kv.nbytes
            if not swa_full:   # a state of the short cache restores into a fresh engine
                state = kv_state_bytes(e, len(tokens))
                e2 = Engine(windowed[name], ContextSettings(n_ctx=64, n_batch=4, swa_full=False, kv_type=kv))
                try:
                    restore_kv_state(e2, state)
                    np.testing.assert_array_equal(e2.forward([5], 1), e.forward([5], 1))
                finally:
                    e2.close()
        finally:
            e.close()
    (full, _, full_bytes), (short, base, short_bytes) = runs["q8_0", True], runs["q8_0", False]
    assert base > 0 and short_bytes < full_bytes           # the short cache shifted
    np.testing.assert_array_equal(short, full)
    f16 = runs["f16", True][0]
    assert np.abs(full - f16).max() / np.abs(f16).max() < 5e-2


# ---- llama.cpp (opt-in) ----------------------------------------------------------------------

@pytest.mark.llama_cpp
@pytest.mark.parametrize("kv", ["q8_0", "q4_0"])
def test_logits_against_llama_cpp(smol, smollm2, kv, monkeypatch):
    from conftest import real_llama_cpp
    llama_cpp = real_llama_cpp()
    from pyinfer.model import forward
    rotates = hasattr(forward, "kv_rotations")
    if not rotates:
        monkeypatch.setenv("LLAMA_ATTN_ROT_DISABLE", "1")
    theirs = llama_cpp.Llama(str(smollm2), n_ctx=512, n_threads=2, type_k=GGML_ID[kv], type_v=GGML_ID[kv],
                             flash_attn=True, logits_all=True, verbose=False)
    ours = smol[kv]
    diffs = []
    try:
        for p in PROMPTS + ["def fibonacci(n):\n", "The three primary colors are"]:
            toks = ours.tokenize(p.encode(), add_bos=False)
            theirs.reset()
            theirs.eval(toks)
            want = np.array(theirs.scores[len(toks) - 1], dtype=np.float32)
            ours.reset()
            ours.eval(toks)
            got = ours._logits.astype(np.float32)
            diffs.append(float(np.abs(got - want).max()))
            assert got.argmax() == want.argmax(), p
    finally:
        theirs.close()
    print(f"{kv} (rotation: {rotates}): max |logit difference| per prompt vs llama.cpp: {diffs}")
    if kv == "q4_0" and not rotates:
        assert max(diffs) == 0.0                 # the same quantizer, products and online softmax
    assert max(diffs) < 2.0


def test_perplexity_cli_cache_types(smollm2, capsys):
    """python -m pyinfer.perplexity -ctk/-ctv (llama-perplexity's flags): a q8_0 cache scores
    within 3% of F16 on the first chunk (256 scored tokens: noisier than the 0.1% over 16
    chunks the benchmark measures); K and V of different types are refused (exit 2)."""
    from pyinfer import perplexity

    def ppl(kind):
        assert perplexity.main([str(smollm2), "--chunks", "1", "-t", "2", "--no-progress", "-ctk", kind, "-ctv", kind]) == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        return float(line.split("PPL = ")[1].split()[0])
    f16, q8 = ppl("f16"), ppl("q8_0")
    assert f16 != q8 and abs(q8 - f16) / f16 < 0.03
    assert perplexity.main([str(smollm2), "--chunks", "1", "-ctk", "q8_0"]) == 2
    assert "differ" in capsys.readouterr().err


@pytest.mark.parametrize("kv", ["q8_0", "q4_0"])
def test_offload_plan_sizes_the_cache_as_allocated(smollm2, kv):
    """The VRAM plan counts a quantized cache at its real size (not as F16): its per-layer KV
    items equal the allocated K and V bytes (smaller than F16's), and they are placed."""
    from pyinfer.backend import Backend
    from pyinfer.offload.budget import part
    probe = Engine(smollm2, ContextSettings(n_ctx=256, n_threads=2, kv_type=kv))
    want = [part(k.nbytes) + part(v.nbytes) for k, v in zip(probe.kv.k, probe.kv.v)]
    probe.close()
    f16 = Engine(smollm2, ContextSettings(n_ctx=256, n_threads=2))
    f16_bytes = part(f16.kv.k[0].nbytes) + part(f16.kv.v[0].nbytes)
    f16.close()
    assert want[0] < f16_bytes
    with Backend.standin(512 << 20) as dev:
        e = Engine(smollm2, ContextSettings(n_ctx=256, n_threads=2, kv_type=kv,
                                            extra={"offload_device": dev, "n_gpu_layers": -1}))
        try:
            got = [i.nbytes for i in e.offload_plan.items if i.kind == "kv"]
            assert got == want
            assert all(i.on_gpu for i in e.offload_plan.items if i.kind == "kv")
        finally:
            e.close()
