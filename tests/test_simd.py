"""SIMD kernels (AVX2, AVX-512) against independent oracles.

* Dot products: every weight type at every SIMD level the CPU has, against
  a float64 numpy dot of the dequantized weight row (``gguf.quants``) and
  the dequantized activation row (decoded here from its block layout), and
  against the scalar kernel. Error budgets are relative to sum_i |w_i * y_i|
  (the scale of the rounding errors of any summation order), one per type.
  Every type must moreover equal the scalar kernel bit for bit: the order of
  float operations is llama.cpp's (see vec_generic.c; the opt-in
  test_llama_cpp_dot.py compares with llama.cpp itself).
* Activation conversions (Q8_0, Q8_1, Q8_K, F16, BF16): bit-identical to the
  scalar ones, including rounding ties, zeros, extremes, subnormals,
  equal-magnitude maxima of opposite sign, and (F16, BF16) infinities and
  NaNs.
* BF16 dots on subnormal inputs and sums (flushed to zero as the AVX-512
  BF16 instruction does): bit-identical to the scalar kernel.
* mul_mat through a planned graph (GEMV and GEMM tile paths, and for the
  float types the batched order llama.cpp uses when M % 4 == 0 and K % 32
  == 0, see matmul.c): 1 and 2 threads give identical results, both match
  numpy, and every type equals the scalar level's mul_mat bit for bit.

Random weight blocks are random bytes with sane scale fields, so every bit
pattern of the quantized values (nibbles, high bits, 6-bit scales) occurs.
"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

from pyinfer.tensor import (Context, GGMLType, Graph, ThreadPool, cpu_info, quantize,
                            quantize_activations, row_size, set_simd_level, type_info, vec_dot)

T = GGMLType

# Relative error budget per weight type: |simd - oracle| <= budget * sum|w y|.
# The quantized dots are exact integer sums per block; the budget covers the
# float accumulation over blocks (and F32/F16/BF16 float accumulation).
BUDGET = {
    T.F32: 2e-6, T.F16: 2e-6, T.BF16: 2e-6,
    T.Q4_0: 2e-6, T.Q4_1: 2e-6, T.Q5_0: 2e-6, T.Q5_1: 2e-6, T.Q8_0: 2e-6,
    T.Q4_K: 2e-6, T.Q5_K: 2e-6, T.Q6_K: 2e-6,
}
WEIGHT_TYPES = list(BUDGET)
FLOAT_TYPES = (T.F32, T.F16, T.BF16)
K_TYPES = (T.Q4_K, T.Q5_K, T.Q6_K)
ACT_TYPES = (T.Q8_0, T.Q8_1, T.Q8_K, T.F16, T.BF16)   # activation formats with a conversion

# f16 scale fields (byte offset, count) inside each weight block
SCALE_FIELDS = {
    T.Q4_0: (0, 1), T.Q5_0: (0, 1), T.Q8_0: (0, 1), T.Q4_1: (0, 2), T.Q5_1: (0, 2),
    T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208, 1),
}

# Activation block layouts (the decoder of the oracle).
ACT_DTYPE = {
    T.Q8_0: np.dtype([("d", "<f2"), ("qs", "i1", 32)]),
    T.Q8_1: np.dtype([("d", "<f2"), ("s", "<f2"), ("qs", "i1", 32)]),
    T.Q8_K: np.dtype([("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)]),
}


def _level_available(level: str) -> bool:
    info = cpu_info()
    if level == "avx2":
        return info["avx2"] and info["fma"] and info["f16c"]
    return all(info[f] for f in ("avx512f", "avx512bw", "avx512vl", "avx512vnni"))


@pytest.fixture(params=["avx2", "avx512"])
def level(request):
    if not _level_available(request.param):
        needs = "AVX2+FMA+F16C" if request.param == "avx2" else "AVX-512 F/BW/VL/VNNI"
        pytest.skip(f"this CPU lacks {needs}: {request.param} kernels cannot run here")
    return request.param


@pytest.fixture(autouse=True)
def restore_auto_level():
    yield
    set_simd_level("auto")


def row_lengths(t: GGMLType) -> list:
    """One block, several blocks, 4096 and 11008 (and odd sizes for float
    types: below, at and past multiples of 64 and 8, the float kernels' steps)."""
    if t in FLOAT_TYPES:
        return [1, 7, 32, 63, 64, 100, 127, 4096, 4099, 11008]
    if t in K_TYPES:
        return [256, 768, 4096, 11008]
    return [32, 96, 608, 4096, 11008]


def vec_dot_type(t: GGMLType) -> GGMLType:
    return GGMLType(type_info(t).vec_dot_type)


# ---- data ---------------------------------------------------------------------
def random_weights(t: GGMLType, n: int, rng, rows: int = 1) -> np.ndarray:
    """`rows` rows of n weights of type t as bytes (rows, row_size)."""
    if t == T.F32:
        return rng.standard_normal((rows, n), dtype=np.float32).view(np.uint8)
    if t == T.F16:
        return rng.standard_normal((rows, n)).astype(np.float16).view(np.uint8)
    if t == T.BF16:
        bits = (rng.standard_normal((rows, n), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
        return bits.view(np.uint8)
    info = type_info(t)
    raw = rng.integers(0, 256, size=(rows, row_size(t, n)), dtype=np.uint8)
    blocks = raw.reshape(-1, info.type_size)
    off, count = SCALE_FIELDS[t]
    scales = (rng.uniform(-1, 1, size=(blocks.shape[0], count)) * 0.05).astype(np.float16)
    blocks[:, off:off + 2 * count] = scales.view(np.uint8)
    return raw


def dequantize_weights(t: GGMLType, raw: np.ndarray, n: int) -> np.ndarray:
    raw = raw.reshape(-1, raw.shape[-1])
    if t == T.F32:
        return raw.view(np.float32).astype(np.float64)
    if t == T.F16:
        return raw.view(np.float16).astype(np.float64)
    if t == T.BF16:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return quants.dequantize(raw, GGMLQuantizationType(int(t))).astype(np.float64).reshape(raw.shape[0], n)


def decode_activations(vt: GGMLType, raw: np.ndarray, n: int) -> np.ndarray:
    """Activation bytes -> float64 values (and a check of the layout's sums)."""
    if vt in FLOAT_TYPES:
        return dequantize_weights(vt, raw.reshape(1, -1), n).reshape(-1)[:n]
    blocks = raw.reshape(-1).view(ACT_DTYPE[vt])
    qs = blocks["qs"].astype(np.int64)
    d = blocks["d"].astype(np.float64)[:, None]
    if vt == T.Q8_1:   # s = f16(d * sum(q)) with d before its f16 rounding
        s_want = blocks["d"].astype(np.float64) * qs.sum(1)
        np.testing.assert_allclose(blocks["s"].astype(np.float64), s_want, rtol=2e-3, atol=1e-7)
    if vt == T.Q8_K:
        np.testing.assert_array_equal(blocks["bsums"], qs.reshape(-1, 16, 16).sum(2))
    return (qs * d).reshape(-1)[:n]


def q8_1_s_correction(t: GGMLType, w_raw: np.ndarray, y_raw: np.ndarray) -> float:
    """Q4_1/Q5_1 dots use the stored s = f16(d * sum(q)) for the min term:
    sum over blocks of m * (s - d16 * sum(q)), what dot(w, y) lacks."""
    m = w_raw.reshape(-1, type_info(t).type_size)[:, 2:4].copy().view("<f2")[:, 0].astype(np.float64)
    blocks = y_raw.reshape(-1).view(ACT_DTYPE[T.Q8_1])
    qsum = blocks["qs"].astype(np.int64).sum(1)
    return float(np.dot(m, blocks["s"].astype(np.float64) - blocks["d"].astype(np.float64) * qsum))


def activations(vt: GGMLType, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if vt == T.F32:
        return x.view(np.uint8)
    return quantize_activations(x, vt)


def check_dot(t: GGMLType, w_raw: np.ndarray, y_raw: np.ndarray, n: int, level: str) -> None:
    vt = vec_dot_type(t)
    w = dequantize_weights(t, w_raw, n).reshape(-1)
    y = decode_activations(vt, y_raw, n)
    oracle = float(np.dot(w, y))
    if vt == T.Q8_1:
        oracle += q8_1_s_correction(t, w_raw, y_raw)
    scale = float(np.abs(w * y).sum()) + 1e-30
    got = vec_dot(t, w_raw, y_raw, n, impl=level)
    err = abs(got - oracle) / scale
    assert err <= BUDGET[t], f"{t.name} n={n} {level}: {got} vs {oracle} (rel. error {err:.2e})"
    assert_same_as_scalar(t, w_raw, y_raw, n, level, got)


def assert_same_as_scalar(t: GGMLType, w_raw, y_raw, n: int, level: str, got: float) -> None:
    ref = vec_dot(t, w_raw, y_raw, n, impl="scalar")
    assert np.float32(got).tobytes() == np.float32(ref).tobytes(), \
        f"{t.name} n={n}: {level} {got!r} is not bit-identical to scalar {ref!r}"


# ---- dot products ---------------------------------------------------------------
@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
def test_vec_dot_random(t, level, rng):
    vt = vec_dot_type(t)
    for n in row_lengths(t):
        w = random_weights(t, n, rng)
        y = activations(vt, rng.standard_normal(n) * rng.uniform(0.1, 10))
        check_dot(t, w, y, n, level)


@pytest.mark.parametrize("t", [t for t in WEIGHT_TYPES if t not in FLOAT_TYPES], ids=lambda t: t.name)
def test_vec_dot_reference_quantized(t, level, rng):
    """Weights from the reference quantizer (realistic value distributions)."""
    if t in K_TYPES and not quantize(np.ones(256, np.float32), t).any():
        pytest.skip(f"the reference {t.name} quantizer is not implemented yet")
    vt = vec_dot_type(t)
    n = 4096
    w = quantize(rng.standard_normal(n).astype(np.float32), t)
    check_dot(t, w, activations(vt, rng.standard_normal(n)), n, level)


# Largest float weights of each plain type used by the adversarial test, and
# activation magnitudes (representable in the activation type) that keep n
# products of them within float range.
FLOAT_EXTREMES = {T.F32: (1e19, 1e15), T.F16: (65504.0, 60000.0), T.BF16: (3.3e38, 1e-5)}


def extreme_weights(t: GGMLType, n: int, byte: int) -> np.ndarray:
    """Every quantized byte set to `byte` (all nibbles / bits at one extreme),
    scales 2.0; float types at their largest magnitude (byte != 0) or 0."""
    if t in FLOAT_EXTREMES:
        w = np.full(n, FLOAT_EXTREMES[t][0] if byte else 0.0, np.float32)
        w[1::2] *= -1 if byte == 0x80 else 1
        if t == T.F32:
            return w.view(np.uint8)
        if t == T.F16:
            return w.astype(np.float16).view(np.uint8)
        return (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    raw = np.full(row_size(t, n), byte, np.uint8)
    blocks = raw.reshape(-1, type_info(t).type_size)
    off, count = SCALE_FIELDS[t]
    blocks[:, off:off + 2 * count] = np.array([2.0] * count, np.float16).view(np.uint8)
    return raw


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
def test_vec_dot_adversarial(t, level):
    """Extreme bytes (0x00, 0xFF, 0x80, 0x7F) against activations at +-127,
    all zero, and alternating signs: the saturating / offset paths."""
    vt = vec_dot_type(t)
    n = 4096 if t not in FLOAT_TYPES else 4099
    big = FLOAT_EXTREMES[t][1] if t in FLOAT_EXTREMES else 1.0
    acts = [np.full(n, big), np.zeros(n), np.resize([big, -big], n), np.resize([-big, big, big], n)]
    for byte in (0x00, 0xFF, 0x80, 0x7F, 0x88):
        w = extreme_weights(t, n, byte)
        for x in acts:
            check_dot(t, w, activations(vt, x), n, level)


def bf16_bits(x) -> np.ndarray:
    """float32 values truncated to bf16 bit patterns (as bytes)."""
    return (np.asarray(x, np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)


def test_vec_dot_bf16_subnormals(level, rng):
    """BF16 dots where inputs are subnormal (counted as zeros), products
    underflow, and partial sums fall into the subnormal range (flushed to
    zero): bit-identical to the scalar kernel, signs of zeros included."""
    n = 4096 + 37
    tiny = np.float32(2.0 ** -126)
    cases = [
        (rng.standard_normal(n) * 1e-39, rng.standard_normal(n)),                 # subnormal weights
        (rng.standard_normal(n) * 1e-20, rng.standard_normal(n) * 3e-20),         # products ~1e-40
        (np.resize([tiny * 1.5, 1e-20], n), np.resize([1.0, -3e-20], n)),         # sums near 2^-126
        (np.resize([tiny, -tiny], n), np.ones(n)),                                # cancelling to 0
        (-np.abs(rng.standard_normal(n)) * 1e-38, np.abs(rng.standard_normal(n))),
        (rng.standard_normal(n) * 10.0 ** rng.uniform(-45, 5, n), rng.standard_normal(n)),
    ]
    for w, y in cases:
        w_raw, y_raw = bf16_bits(w), bf16_bits(y)
        got = vec_dot(T.BF16, w_raw, y_raw, n, impl=level)
        assert_same_as_scalar(T.BF16, w_raw, y_raw, n, level, got)


# ---- activation quantizers -------------------------------------------------------
def adversarial_rows(block: int, rng) -> list:
    n = 8 * block
    ties = (np.arange(n) % 255 - 127 + 0.5).astype(np.float32)   # x * id lands on .5
    ties[::block] = 127.0                                          # amax = 127 -> d = 1
    opposite = np.zeros(n, np.float32)
    opposite[1::block], opposite[5::block] = 3.0, -3.0             # equal |max|, + first
    opposite[block // 2::block] = -7.0                             # ... and - first
    opposite[block // 2 + 3::block] = 7.0
    return [
        rng.standard_normal(n).astype(np.float32),
        np.zeros(n, np.float32),
        np.full(n, np.finfo(np.float32).max, np.float32),
        np.resize(np.array([np.finfo(np.float32).max, -np.finfo(np.float32).max], np.float32), n),
        np.full(n, 1e-40, np.float32),                             # subnormal
        (rng.standard_normal(n) * 1e-38).astype(np.float32),
        ties, -ties, opposite,
        np.where(rng.random(n) < 0.05, rng.standard_normal(n) * 1e4, rng.standard_normal(n) * 1e-3).astype(np.float32),
    ]


def float_special_rows(rng) -> list:
    """Rows for the F16 / BF16 conversions: infinities, NaNs with payloads,
    values at and next to the f16 / bf16 rounding midpoints and overflow
    thresholds, f16 subnormals, random bit patterns; odd lengths."""
    specials = np.array([np.inf, -np.inf, np.nan, -np.nan, 65504.0, 65519.99, 65520.0, -65520.0,
                         6e-8, 5.96e-8, 2.98e-8, 1e-45, -1e-40, 3.4e38, -0.0], np.float32)
    payload_nans = np.array([0x7F800001, 0xFF8CFC76, 0x7FC02904, 0xFFBB9945], np.uint32).view(np.float32)
    halves = np.arange(0, 0x7C00, 37, dtype=np.uint16).view(np.float16).astype(np.float64)
    f16_mids = ((halves[:-1] + halves[1:]) / 2).astype(np.float32)
    finite_bf16 = rng.integers(0, 0x7F80, 999).astype(np.uint32) | (rng.integers(0, 2, 999).astype(np.uint32) << 15)
    bf16_mids = ((finite_bf16 << 16) | 0x8000).view(np.float32)
    bits = rng.integers(0, 1 << 32, 1001, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return [specials, payload_nans, f16_mids, -f16_mids, np.nextafter(f16_mids, np.float32(np.inf)),
            bf16_mids, np.nextafter(bf16_mids, np.float32(0)), bits]


@pytest.mark.parametrize("vt", ACT_TYPES, ids=lambda t: t.name)
def test_activation_quantizers_bit_identical(vt, level, rng):
    block = type_info(vt).blck_size
    rows = adversarial_rows(block, rng) + [rng.standard_normal(11008 // block * block).astype(np.float32)]
    if vt in FLOAT_TYPES:
        rows += float_special_rows(rng)
    for x in rows:
        set_simd_level("scalar")
        ref = quantize_activations(x, vt)
        set_simd_level(level)
        got = quantize_activations(x, vt)
        bad = np.flatnonzero(ref != got)
        assert bad.size == 0, f"{vt.name} {level}: bytes differ from the reference at {bad[:8]}"


# ---- mul_mat through the graph ------------------------------------------------------
def mul_mat(t: GGMLType, w_raw: np.ndarray, x: np.ndarray, k: int, m: int, n_threads: int) -> np.ndarray:
    with Context(1 << 20, no_alloc=True) as ctx:
        w = ctx.new_tensor(t, (k, m), "w")
        w.set_data(w_raw)
        xt = ctx.new_tensor(T.F32, (k, x.shape[0]), "x")
        xt.set_data(x)
        out = ctx.mul_mat(w, xt).set_output()
        graph = Graph(ctx, 8).build(out).plan(n_threads)
        with ThreadPool(n_threads) as pool:
            graph.compute(pool)
        return out.numpy().copy()


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("k,m,n", [(608, 37, 1), (4096, 9, 1), (608, 37, 6), (256 * 3, 13, 4), (1100, 5, 9),
                                   (576, 36, 7)],
                         ids=["gemv", "gemv-4096", "gemm", "gemm-small", "gemm-k1100", "gemm-m36"])
def test_mul_mat_threads_identical(t, k, m, n, level, rng):
    if t in K_TYPES and k % 256:
        k = 256 * (k // 256 + 1)
    elif t not in FLOAT_TYPES and k % 32:
        k = 32 * (k // 32 + 1)
    w_raw = random_weights(t, k, rng, rows=m)
    x = rng.standard_normal((n, k)).astype(np.float32)
    set_simd_level(level)
    one = mul_mat(t, w_raw, x, k, m, 1)
    two = mul_mat(t, w_raw, x, k, m, 2)
    np.testing.assert_array_equal(one, two)
    set_simd_level("scalar")
    np.testing.assert_array_equal(one.view(np.uint32), mul_mat(t, w_raw, x, k, m, 1).view(np.uint32))

    w = dequantize_weights(t, w_raw, k)
    vt = vec_dot_type(t)
    x_raw = [activations(vt, row) for row in x]
    xq = np.stack([decode_activations(vt, raw, k) for raw in x_raw])
    oracle = xq @ w.T                      # (n, m)
    if vt == T.Q8_1:
        oracle += np.array([[q8_1_s_correction(t, w_raw[i], raw) for i in range(m)] for raw in x_raw])
    scale = np.abs(xq) @ np.abs(w).T + 1e-30
    err = np.abs(one - oracle) / scale
    assert err.max() <= BUDGET[t], f"{t.name} {level} mul_mat: rel. error {err.max():.2e}"


# ---- the real model -----------------------------------------------------------------
def test_smollm2_logits_identical_across_levels(smollm2):
    """SmolLM2 (Q4_1 + Q8_0 weights): prompt (GEMM tiles) and decode (GEMV)
    logits at every SIMD level equal the scalar level's bit for bit."""
    from pyinfer.config import ContextSettings
    from pyinfer.engine import Engine

    def run(level):
        set_simd_level(level)
        eng = Engine(str(smollm2), ContextSettings(n_ctx=64, n_batch=32, n_threads=2))
        try:
            logits = [eng.decode(list(range(200, 224)))]
            for _ in range(3):
                logits.append(eng.decode([int(np.argmax(logits[-1]))]))
            return np.stack(logits)
        finally:
            eng.close()

    want = run("scalar")
    for level in ("avx2", "avx512"):
        if _level_available(level):
            np.testing.assert_array_equal(run(level).view(np.uint32), want.view(np.uint32), err_msg=level)
