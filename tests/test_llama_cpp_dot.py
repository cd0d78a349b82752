"""Our dot products and activation conversions against llama.cpp's own
(opt in: --run-llama-cpp; skipped when llama-cpp-python is not installed).

The oracle is ggml's CPU backend as llama-cpp-python ships it, called
through ctypes (tests/ggml_oracle.py): its `from_float` and `vec_dot` for
each type are what its matmul runs for a single activation row (decode).
Required: exact equality, bit for bit, at the scalar level and at every
SIMD level this CPU has, for every weight type, on

* random data: rows quantized from normal values of random scale (with and
  without an offset), random block bytes (every code and scale pattern),
  row lengths around the kernels' step sizes;
* real data: SmolLM2's weight rows (dequantized from the GGUF and quantized
  to each type; Q4_1 and Q8_0 also as stored), against real activations
  (normalized token embeddings for K = 576, the FFN's silu(gate) * up for
  K = 1536).

The activation conversions (Q8_0, Q8_1, Q8_K, F16, BF16) must give
llama.cpp's bytes, and whole matrix products through our graph must equal
ggml_mul_mat's for N = 1 (decode) and batches (where llama.cpp uses other
kernels for some types: tinyBLAS for F32/F16/BF16, its tiled GEMM for the
K types at N >= 8; ours follow them, see matmul.c). These tests pin the accumulation order of llama.cpp's
build on the machine that runs them (x86 with AVX-512 here); on a machine
whose llama.cpp build takes other SIMD paths they can fail, which is the
point: the engines would then not agree bit for bit.
"""
import gguf
import numpy as np
import pytest

import ggml_oracle
from pyinfer.tensor import (Context, GGMLType, Graph, ThreadPool, cpu_info, quantize, quantize_activations,
                            row_size, set_simd_level, type_info, vec_dot)

pytestmark = pytest.mark.llama_cpp

T = GGMLType
FLOAT_TYPES = (T.F32, T.F16, T.BF16)
K_TYPES = (T.Q4_K, T.Q5_K, T.Q6_K)
WEIGHT_TYPES = FLOAT_TYPES + (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0) + K_TYPES
ACT_TYPES = (T.Q8_0, T.Q8_1, T.Q8_K, T.F16, T.BF16)
# f16 scale fields (byte offset, count) inside each weight block
SCALE_FIELDS = {
    T.Q4_0: (0, 1), T.Q5_0: (0, 1), T.Q8_0: (0, 1), T.Q4_1: (0, 2), T.Q5_1: (0, 2),
    T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208, 1),
}


@pytest.fixture(scope="module")
def ggml():
    oracle = ggml_oracle.load()
    if oracle is None:
        pytest.skip("llama-cpp-python (ggml's CPU library) is not installed")
    return oracle


def levels() -> list:
    info = cpu_info()
    out = ["scalar"]
    if info["avx2"] and info["fma"] and info["f16c"]:
        out.append("avx2")
    if all(info[f] for f in ("avx512f", "avx512bw", "avx512vl", "avx512vnni")):
        out.append("avx512")
    return out


@pytest.fixture(params=levels())
def level(request):
    set_simd_level(request.param)
    yield request.param
    set_simd_level("auto")


def row_lengths(t) -> list:
    if t in FLOAT_TYPES:
        return [1, 7, 8, 16, 63, 64, 100, 576, 1536, 4099, 4159]
    if t in K_TYPES:
        return [256, 768, 1536, 4096]
    return [32, 96, 576, 1536, 4096]


def random_block_bytes(t, n: int, rng) -> np.ndarray:
    """A row of random bytes with small finite f16 scales."""
    raw = rng.integers(0, 256, size=row_size(t, n), dtype=np.uint8)
    blocks = raw.reshape(-1, type_info(t).type_size)
    off, count = SCALE_FIELDS[t]
    scales = (rng.uniform(-1, 1, size=(blocks.shape[0], count)) * 0.05).astype(np.float16)
    blocks[:, off:off + 2 * count] = scales.view(np.uint8)
    return raw


def random_rows(t, n: int, rng) -> list:
    scale = 10.0 ** rng.uniform(-3, 2)
    rows = [quantize((rng.standard_normal(n) * scale).astype(np.float32), t),
            quantize((rng.standard_normal(n) * scale + scale).astype(np.float32), t)]
    if t not in FLOAT_TYPES:
        rows.append(random_block_bytes(t, n, rng))
    return rows


def random_activations(n: int, rng) -> list:
    x = rng.standard_normal(n) * 10.0 ** rng.uniform(-2, 2)
    outliers = np.where(rng.random(n) < 0.02, rng.standard_normal(n) * 50, rng.standard_normal(n))
    return [x.astype(np.float32), (x + 2 * np.abs(x).mean()).astype(np.float32), outliers.astype(np.float32)]


def assert_dots_equal(ggml, t, w_rows, acts, n: int, level: str, what: str) -> None:
    vt = type_info(t).vec_dot_type
    assert ggml.vec_dot_type(t) == vt, f"{t.name}: llama.cpp's vec_dot_type is {ggml.vec_dot_type(t)}"
    for a in acts:
        y = ggml.from_float(vt, a)
        for i, w in enumerate(w_rows):
            want = ggml.vec_dot(t, w, y, n)
            got = np.float32(vec_dot(t, w, y, n, impl=level))
            assert got.tobytes() == want.tobytes(), \
                f"{t.name} {what} n={n} row {i} {level}: {got!r} != llama.cpp {want!r}"


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
def test_vec_dot_random(ggml, t, level):
    rng = np.random.default_rng(int(t) + 100)
    for n in row_lengths(t):
        assert_dots_equal(ggml, t, random_rows(t, n, rng), random_activations(n, rng), n, level, "random")


# ---- real data: SmolLM2 ----------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_rows(smollm2):
    """Weight rows and matching activations from layer 3 of SmolLM2:
    {K: (float32 weight rows, float32 activation rows, stored rows by type)}."""
    reader = gguf.GGUFReader(str(smollm2))
    tensors = {t.name: t for t in reader.tensors}

    def weights(name):
        t = tensors[name]
        return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32), t

    emb, _ = weights("token_embd.weight")
    norm = tensors["blk.3.attn_norm.weight"].data.astype(np.float32)
    e = emb[[1, 504, 2817, 13587, 30000]]
    x = e / np.sqrt(np.mean(e * e, axis=1, keepdims=True) + 1e-5) * norm
    gate, _ = weights("blk.3.ffn_gate.weight")
    up, up_t = weights("blk.3.ffn_up.weight")
    down, down_t = weights("blk.3.ffn_down.weight")
    g = x @ gate.T
    h = (g / (1 + np.exp(-g)) * (x @ up.T)).astype(np.float32)
    sel = np.random.default_rng(0).choice(up.shape[0], 12, replace=False)
    sel_d = np.random.default_rng(1).choice(down.shape[0], 12, replace=False)
    return {576: (up[sel], x, {up_t.tensor_type.value: up_t.data[sel]}),
            1536: (down[sel_d], h, {down_t.tensor_type.value: down_t.data[sel_d]})}


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
def test_vec_dot_real(ggml, t, level, smollm2_rows):
    for k, (w, acts, stored) in smollm2_rows.items():
        if t in K_TYPES and k % 256:
            continue
        rows = [quantize(row, t) for row in w]
        if int(t) in stored:
            rows += [np.ascontiguousarray(r) for r in stored[int(t)]]
        assert_dots_equal(ggml, t, rows, list(acts), k, level, "SmolLM2")


# ---- activation conversions -------------------------------------------------------
def conversion_rows(rng) -> list:
    n = 1024
    ties = (np.arange(n) % 255 - 127 + 0.5).astype(np.float32)
    ties[::32] = 127.0
    specials = np.resize(np.array([0.0, -0.0, 65504.0, 65520.0, -65520.0, 6e-8, 2.98e-8, 1e-40, 3.4e38,
                                   np.inf, -np.inf], np.float32), n)
    return [rng.standard_normal(n).astype(np.float32), np.zeros(n, np.float32), ties, -ties,
            (rng.standard_normal(n) * 1e-38).astype(np.float32), specials,
            np.where(rng.random(n) < 0.05, rng.standard_normal(n) * 1e4, rng.standard_normal(n) * 1e-3).astype(np.float32)]


def zero_scale_blocks_cleared(vt, raw: np.ndarray) -> np.ndarray:
    """Q8_0/Q8_1 bytes with the quants of blocks whose f16 scale d is 0 set to
    0. Such blocks (amax < ~4e-37, where 127 / amax overflows) carry no value:
    llama.cpp's x86 quantizer writes -128 there (saturated conversions of
    inf), ours 0 (the int8 wrap of the reference quantizer); every dot
    product multiplies them by d = 0 either way."""
    if vt not in (T.Q8_0, T.Q8_1):
        return raw
    size = type_info(vt).type_size
    blocks = raw.reshape(-1, size).copy()
    head = 2 if vt == T.Q8_0 else 4
    blocks[blocks[:, :2].copy().view(np.float16)[:, 0] == 0, head:] = 0
    return blocks.reshape(-1)


@pytest.mark.parametrize("vt", ACT_TYPES, ids=lambda t: t.name)
def test_activation_conversion(ggml, vt, level):
    rng = np.random.default_rng(7)
    for i, x in enumerate(conversion_rows(rng)):
        if vt not in (T.F16, T.BF16) and not np.isfinite(x).all():
            continue    # infinities make the Q8 scales infinite (undefined bytes in both engines)
        want = zero_scale_blocks_cleared(vt, ggml.from_float(vt, x))
        got = zero_scale_blocks_cleared(vt, quantize_activations(x, vt))
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, f"{vt.name} row {i} {level}: bytes differ from llama.cpp's at {bad[:8]}"


# ---- whole matrix products ----------------------------------------------------------
def our_mul_mat(t, w_raw: np.ndarray, x: np.ndarray, n_threads: int = 2) -> np.ndarray:
    (n, k), m = x.shape, w_raw.shape[0]
    with Context(1 << 20, no_alloc=True) as ctx:
        w = ctx.new_tensor(t, (k, m), "w")
        w.set_data(w_raw)
        xt = ctx.new_tensor(T.F32, (k, n), "x")
        xt.set_data(x)
        out = ctx.mul_mat(w, xt).set_output()
        graph = Graph(ctx, 8).build(out).plan(n_threads)
        with ThreadPool(n_threads) as pool:
            graph.compute(pool)
        return out.numpy().copy()


def mul_mat_shapes(t) -> list:
    """(K, M) pairs: M % 4 == 0 and not (tinyBLAS needs it), K multiples of
    the block size, and for the float types K not a multiple of 16."""
    if t in K_TYPES:
        return [(1536, 64), (256, 36), (768, 17)]
    if t in FLOAT_TYPES:
        return [(576, 64), (1536, 36), (576, 38), (100, 64)]
    return [(576, 64), (1536, 36), (576, 38)]


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
def test_mul_mat_matches_llama_cpp(ggml, t, level):
    rng = np.random.default_rng(int(t) + 200)
    for k, m in mul_mat_shapes(t):
        w = quantize((rng.standard_normal((m, k)) * 0.1).astype(np.float32), t).reshape(m, -1)
        for n in (1, 2, 7, 8, 13, 32):
            x = (rng.standard_normal((n, k)) * 10.0 ** rng.uniform(-1, 1)).astype(np.float32)
            want, got = ggml.mul_mat(t, w, x), our_mul_mat(t, w, x)
            bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
            assert bad.size == 0, f"{t.name} K={k} M={m} N={n} {level}: {bad.size} of {got.size} outputs differ"
