"""Quantized types against independent oracles.

- dequantization of every type equals `gguf.quants.dequantize` (or a numpy
  decoding of the block layout where gguf has none: Q8_1, Q8_K) on random
  blocks and on the real tensors of the SmolLM2 GGUF;
- quantization equals `gguf.quants.quantize` bit for bit where gguf has a
  quantizer (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0);
- round-trip error of every type stays within a stated budget; the K weight
  quantizers (ours, no gguf oracle) also on edge cases and re-quantization;
- the scalar dot products equal a float64 numpy dot of the dequantized rows;
- bad arguments raise Python exceptions.
The opt-in `llama_cpp` test compares the K quantizers with llama.cpp's.
"""
import ctypes
import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest

from pyinfer import tensor as T
from pyinfer._lib import GGMLSparseError
from pyinfer.tensor import GGMLType as G

GQ = gguf.GGMLQuantizationType
K_WEIGHTS = [G.Q4_K, G.Q5_K, G.Q6_K]
WEIGHT_TYPES = [G.F32, G.F16, G.BF16, G.Q4_0, G.Q4_1, G.Q5_0, G.Q5_1, G.Q8_0] + K_WEIGHTS
ALL_TYPES = WEIGHT_TYPES + [G.Q8_1, G.Q8_K]

# Relative RMSE budgets of quantize -> dequantize on N(0, 1) rows of 4096
# (measured over 5 seeds, budget a little above the largest). For the K
# types llama.cpp's reference quantizers reach Q4_K 0.0715, Q5_K 0.0362,
# Q6_K 0.0178 on such data (see test_k_quantizers_match_llama_cpp).
RT_BUDGET = {
    G.F32: 0.0, G.F16: 2.1e-4, G.BF16: 1.7e-3,
    G.Q4_0: 0.0870, G.Q4_1: 0.0790, G.Q5_0: 0.0435, G.Q5_1: 0.0385,
    G.Q8_0: 0.0055, G.Q8_1: 0.0055, G.Q8_K: 0.0071,
    G.Q4_K: 0.0715, G.Q5_K: 0.0348, G.Q6_K: 0.0169,
}
BITS_PER_WEIGHT = {G.Q4_K: 4.5, G.Q5_K: 5.5, G.Q6_K: 6.5625}


def gq(t):
    return GQ(int(t))


def max_ulp_diff(a, b):
    """Largest distance in float32 ulps between finite arrays a and b."""
    ia = a.astype(np.float32).view(np.int32).astype(np.int64)
    ib = b.astype(np.float32).view(np.int32).astype(np.int64)
    # map the sign-magnitude bit patterns onto a monotonic integer line
    ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return int(np.max(np.abs(ia - ib))) if ia.size else 0


# ---- oracles where gguf has none --------------------------------------------
def dequantize_q8_1_numpy(raw):
    blocks = raw.reshape(-1, 36)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    return (d * blocks[:, 4:].view(np.int8).astype(np.float32)).reshape(-1)


def quantize_activations_numpy(x, vt):
    """The matmul's activation rule for Q8_0/Q8_1 (llama.cpp's x86 run-time
    rule): q = round_half_even(x * (127 / amax)), d = f16(amax / 127);
    Q8_1 adds s = f16(d * sum(q))."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1)
    with np.errstate(divide="ignore"):
        iscale = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(blocks * iscale[:, None]).astype(np.int8)
    d = (amax / np.float32(127)).astype(np.float32)
    head = [d.astype(np.float16).view(np.uint8).reshape(-1, 2)]
    if vt == G.Q8_1:
        s = (d * q.astype(np.int32).sum(axis=1).astype(np.float32)).astype(np.float32)
        head.append(s.astype(np.float16).view(np.uint8).reshape(-1, 2))
    rows = np.concatenate(head + [q.view(np.uint8)], axis=1)
    return rows.reshape(x.shape[:-1] + (-1,))


def dequantize_q8_k_numpy(raw):
    blocks = raw.reshape(-1, 292)
    d = blocks[:, 0:4].copy().view(np.float32)
    return (d * blocks[:, 4:260].view(np.int8).astype(np.float32)).reshape(-1)


def oracle_dequantize(raw, t):
    if t == G.Q8_1:
        return dequantize_q8_1_numpy(raw)
    if t == G.Q8_K:
        return dequantize_q8_k_numpy(raw)
    return np.asarray(gguf.quants.dequantize(raw.view(np.uint8), gq(t)), dtype=np.float32).reshape(-1)


# ---- random blocks -----------------------------------------------------------
# Byte offsets of each block's scale fields: ("f16" | "f32", offset).
SCALE_FIELDS = {
    G.Q4_0: [("f16", 0)], G.Q4_1: [("f16", 0), ("f16", 2)], G.Q5_0: [("f16", 0)],
    G.Q5_1: [("f16", 0), ("f16", 2)], G.Q8_0: [("f16", 0)], G.Q8_1: [("f16", 0), ("f16", 2)],
    G.Q4_K: [("f16", 0), ("f16", 2)], G.Q5_K: [("f16", 0), ("f16", 2)], G.Q6_K: [("f16", 208)],
    G.Q8_K: [("f32", 0)],
}


def random_blocks(rng, t, n_blocks):
    """Random bytes for n_blocks blocks of t, with finite scales of random
    sign and magnitude 2^-20 .. 2^6 (f16 subnormals included)."""
    info = T.type_info(t)
    raw = rng.integers(0, 256, (n_blocks, info.type_size), dtype=np.uint8)
    for kind, off in SCALE_FIELDS[t]:
        mag = np.exp2(rng.uniform(-20, 6, n_blocks)) * rng.choice([-1, 1], n_blocks)
        dtype = np.float16 if kind == "f16" else np.float32
        vals = mag.astype(dtype)
        raw[:, off:off + vals.itemsize] = vals.reshape(-1, 1).view(np.uint8).reshape(n_blocks, -1)
    return raw.reshape(-1)


@pytest.mark.parametrize("t", [t for t in ALL_TYPES if t in SCALE_FIELDS], ids=lambda t: t.name)
def test_dequantize_random_blocks(rng, t):
    # allowed: 1 ulp (a compiler may contract a*b-c into an FMA); measured: 0
    raw = random_blocks(rng, t, 512)
    ours = T.dequantize(raw, t)
    ref = oracle_dequantize(raw, t)
    assert ours.shape == ref.shape
    assert np.isfinite(ref).all()
    assert max_ulp_diff(ours, ref) <= 1


@pytest.mark.parametrize("t", [G.F16, G.BF16], ids=lambda t: t.name)
def test_dequantize_every_16bit_pattern(t):
    raw = np.arange(1 << 16, dtype=np.uint16)
    ours = T.dequantize(raw, t)
    ref = oracle_dequantize(raw, t)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


def test_dequantize_f32_is_identity(rng):
    raw = rng.integers(0, 1 << 32, 4096, dtype=np.uint32)
    np.testing.assert_array_equal(T.dequantize(raw, G.F32).view(np.uint32), raw)


def test_dequantize_real_tensors(smollm2):
    reader = gguf.GGUFReader(smollm2)
    seen = {}
    for tensor in reader.tensors:
        t = G(int(tensor.tensor_type))
        if seen.get(t, 0) >= 3:
            continue
        seen[t] = seen.get(t, 0) + 1
        data = np.asarray(tensor.data)
        if data.ndim == 2:
            data = data[:128]          # keep the test fast on the embedding
        ours = T.dequantize(np.ascontiguousarray(data), t)
        ref = np.asarray(gguf.quants.dequantize(data, gq(t)), dtype=np.float32).reshape(-1)
        assert max_ulp_diff(ours, ref) <= 1, tensor.name
    assert {G.Q4_1, G.Q8_0, G.F32} <= set(seen)


# ---- quantization against gguf ----------------------------------------------------
def edge_rows(rng, t):
    """Rows of 256 floats meant to catch rounding-rule and range differences."""
    rows = [
        np.zeros(256), np.full(256, 0.3), np.full(256, -2.5),
        rng.standard_normal(256) * 1e-3, rng.standard_normal(256) * 1e3,
        rng.standard_normal(256) * 1e-30, rng.standard_normal(256) * 1e30,
        # scales near the f16 limits: d overflows to inf / falls subnormal
        rng.standard_normal(256) * 6e5, rng.standard_normal(256) * 1e-6,
        np.where(np.arange(256) % 7 == 0, 1e4, rng.standard_normal(256)),
        np.abs(rng.standard_normal(256)), -np.abs(rng.standard_normal(256)),
    ]
    # exact rounding ties: the anchors make each block's scale exactly 1,
    # the other values are k + 0.5
    anchors, lo, hi = {
        G.Q4_0: ([-8.0], -8, 7), G.Q5_0: ([-16.0], -16, 15), G.Q8_0: ([127.0], -127, 127),
        G.Q4_1: ([0.0, 15.0], 0, 15), G.Q5_1: ([0.0, 31.0], 0, 31),
    }.get(t, (None, 0, 0))
    if anchors is not None:
        tie = (rng.integers(lo, hi, 256) + 0.5).reshape(8, 32)
        tie[:, :len(anchors)] = anchors
        rows.append(tie.reshape(-1))
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("t", [G.Q4_0, G.Q4_1, G.Q5_0, G.Q5_1, G.Q8_0], ids=lambda t: t.name)
def test_quantize_matches_gguf(rng, t):
    data = np.concatenate([rng.standard_normal((16, 256)).astype(np.float32), edge_rows(rng, t)])
    with np.errstate(all="ignore"):
        ref = gguf.quants.quantize(data, gq(t))
    ours = T.quantize(data, t)
    for i in range(len(data)):
        np.testing.assert_array_equal(ours[i], ref[i], err_msg=f"row {i}")


def float32_patterns(rng, n):
    """Random float32 bit patterns around the f16/bf16 ranges, plus exact
    rounding ties, infinities, NaNs and the f16 overflow boundary."""
    bits = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    exp = rng.integers(90, 160, n).astype(np.uint32)       # 2^-37 .. 2^32
    bits = (bits & np.uint32(0x807FFFFF)) | (exp << np.uint32(23))
    ties = (bits[: n // 4] & np.uint32(0xFFFFE000)) | np.uint32(0x1000)   # f16 ties
    bties = (bits[: n // 4] & np.uint32(0xFFFF0000)) | np.uint32(0x8000)  # bf16 ties
    special = np.array([0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001,
                        0x477FEFFF, 0x477FF000, 0x477FF001, 0x33000000, 0x33000001,
                        0x387FE000, 0x38800000, 0, 0x80000000, 1], dtype=np.uint32)
    return np.concatenate([bits, ties, bties, special]).view(np.float32)


def test_quantize_f16_matches_numpy(rng):
    x = float32_patterns(rng, 1 << 14)
    ours = T.quantize(x, G.F16).view(np.uint16)
    with np.errstate(all="ignore"):
        ref = gguf.quants.quantize(x, GQ.F16).view(np.uint16)
    nan = np.isnan(x)
    # NaN payloads are not part of the format: any NaN is accepted
    assert np.isnan(ours[nan].view(np.float16)).all()
    np.testing.assert_array_equal(ours[~nan], ref[~nan])


def test_quantize_bf16_matches_gguf(rng):
    x = float32_patterns(rng, 1 << 14)
    ours = T.quantize(x, G.BF16).view(np.uint16)
    ref = gguf.quants.quantize(x, GQ.BF16).view(np.uint16)
    np.testing.assert_array_equal(ours, ref)


# ---- round trips ------------------------------------------------------------------
def relative_rmse(x, y):
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    return float(np.sqrt(np.mean((y - x) ** 2) / np.mean(x ** 2)))


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_round_trip_budget(t):
    x = np.random.default_rng(7).standard_normal((8, 4096)).astype(np.float32)
    y = T.dequantize(T.quantize(x, t).reshape(-1), t)
    err = relative_rmse(x, y)
    assert err <= RT_BUDGET[t], f"{t.name}: relative RMSE {err:.5f} > {RT_BUDGET[t]}"


@pytest.mark.parametrize("t", K_WEIGHTS, ids=lambda t: t.name)
def test_k_bits_per_weight(t):
    info = T.type_info(t)
    assert info.blck_size == 256
    assert info.type_size * 8 / info.blck_size == BITS_PER_WEIGHT[t]


# Relative RMSE of the other 255 values of super-blocks holding one outlier
# of 20 (N(0, 1) data): measured Q4_K 0.151, Q5_K 0.073, Q6_K 0.047
# (llama.cpp: 0.153, 0.076, 0.048); the 6-bit sub-block scales cannot do
# much better.
OUTLIER20_BUDGET = {G.Q4_K: 0.16, G.Q5_K: 0.078, G.Q6_K: 0.05}


@pytest.mark.parametrize("t", K_WEIGHTS, ids=lambda t: t.name)
def test_k_quantize_edge_cases(rng, t):
    g = rng.standard_normal((16, 256)).astype(np.float32)

    def roundtrip(x):
        x = np.asarray(x, dtype=np.float32)
        return T.dequantize(T.quantize(x, t).reshape(-1), t).reshape(x.shape)

    np.testing.assert_array_equal(roundtrip(np.zeros(512)), 0.0)
    for c in (0.7, -3.1, 25.0):
        np.testing.assert_allclose(roundtrip(np.full(512, c)), c, rtol=1e-3)
    # the Gaussian budget wherever the f16 super-block scales are precise
    # (down to weights of std 1e-3, where they are already f16 subnormals)
    for scale in (1e-3, 1.0, 1e4, 1e6):
        assert relative_rmse(g * scale, roundtrip(g * scale)) < 1.03 * RT_BUDGET[t], scale
    # coarser, bounded, as the scales run out of f16 subnormal precision
    np.testing.assert_allclose(roundtrip(np.full(512, 1e-3)), 1e-3, rtol=3e-2)
    for scale in (1e-4, 1e-6):
        assert relative_rmse(g * scale, roundtrip(g * scale)) < 0.1, scale
    # beyond the f16 range: finite, saturated or flushed, never NaN/inf
    for x in (g * 1e9, g * 1e30, np.where(g > 0, 3.4e38, -3.4e38), g * 1e-30, g * 1e-40):
        assert np.isfinite(roundtrip(x)).all()
    # one outlier per super-block
    for mag, budget in ((20.0, OUTLIER20_BUDGET[t]), (1000.0, 0.55)):
        x = g.copy()
        x[:, 5] = mag
        y = roundtrip(x)
        rest = np.delete(np.arange(256), 5)
        assert relative_rmse(x[:, rest], y[:, rest]) < budget, mag
        assert np.abs(y[:, 5] - mag).max() < 0.5, mag


@pytest.mark.parametrize("t", K_WEIGHTS, ids=lambda t: t.name)
def test_k_requantize_dequantized_row(rng, t):
    """A row dequantized from K blocks quantizes back to (nearly) itself."""
    x = rng.standard_normal((8, 4096)).astype(np.float32)
    y = T.dequantize(T.quantize(x, t).reshape(-1), t)
    y2 = T.dequantize(T.quantize(y.reshape(x.shape), t).reshape(-1), t)
    # measured over 12 seeds: >= 99.2% of the values identical (most rows
    # fully), differences <= 2% of the quantization error
    assert np.mean(y2 == y) >= 0.99
    assert np.sqrt(np.mean((y2 - y) ** 2)) <= 0.05 * np.sqrt(np.mean((y - x.reshape(-1)) ** 2))


def test_q8_k_block_sums(rng):
    x = rng.standard_normal((4, 1024)).astype(np.float32) * 3
    blocks = T.quantize(x, G.Q8_K).reshape(-1, 292)
    qs = blocks[:, 4:260].view(np.int8).astype(np.int32)
    bsums = blocks[:, 260:292].copy().view(np.int16)
    np.testing.assert_array_equal(bsums, qs.reshape(-1, 16, 16).sum(axis=2))


# ---- activations and dot products ---------------------------------------------------
@pytest.fixture
def scalar_level():
    T.set_simd_level("scalar")
    yield
    T.set_simd_level("auto")


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
def test_scalar_activation_quantizer_is_reference(rng, scalar_level, t):
    x = rng.standard_normal((2, 1024)).astype(np.float32)
    vt = T.type_info(t).vec_dot_type
    want = quantize_activations_numpy(x, vt) if vt in (G.Q8_0, G.Q8_1) else T.quantize(x, vt)
    np.testing.assert_array_equal(T.quantize_activations(x, t), want)


def test_float_weights_take_activations_of_their_type(rng, scalar_level):
    """F16 and BF16 weights consume activations rounded to f16 / bf16 (to
    nearest even, as gguf / numpy round), as llama.cpp's matmul does; F32
    weights consume the floats unchanged."""
    assert [T.type_info(t).vec_dot_type for t in (G.F32, G.F16, G.BF16)] == [G.F32, G.F16, G.BF16]
    x = (rng.standard_normal(4099) * 10.0 ** rng.uniform(-8, 4, 4099)).astype(np.float32)
    np.testing.assert_array_equal(T.quantize_activations(x, G.F16).view(np.float16), x.astype(np.float16))
    np.testing.assert_array_equal(T.quantize_activations(x, G.BF16), gguf.quants.quantize(x, GQ.BF16).view(np.uint8))
    np.testing.assert_array_equal(T.quantize_activations(x, G.F32).view(np.float32), x)


# |scalar vec_dot - float64 dot| <= DOT_BUDGET * sum |x_i y_i| (measured
# worst case over 40 random rows: 6e-8, from float accumulation per block).
DOT_BUDGET = 1e-6


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
def test_scalar_vec_dot(t):
    vt = T.type_info(t).vec_dot_type
    for seed in range(6):
        rng = np.random.default_rng(seed)
        n = 4096
        x = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 3)).astype(np.float32)
        a = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 3)).astype(np.float32)
        if seed % 2:
            a += np.float32(3) * np.abs(a).mean()   # offset activations stress the min terms
        qx, qy = T.quantize(x, t), T.quantize_activations(a, t)
        dx = T.dequantize(qx, t).astype(np.float64)
        dy = T.dequantize(qy, vt).astype(np.float64)
        got = T.vec_dot(t, qx, qy, n, impl="scalar")
        want = np.dot(dx, dy)
        if vt == G.Q8_1:
            # the min term uses the activation block's stored s = f16(d * sum q),
            # not d * sum q: sum_b m_b * (s_b - d_b * sum q_b) is the difference
            m = qx.reshape(-1, T.type_info(t).type_size)[:, 2:4].copy().view(np.float16).astype(np.float64)
            yb = qy.reshape(-1, 36)
            s_y = yb[:, 2:4].copy().view(np.float16).astype(np.float64)
            d_y = yb[:, 0:2].copy().view(np.float16).astype(np.float64)
            sum_q = yb[:, 4:].view(np.int8).astype(np.float64).sum(axis=1, keepdims=True)
            want += float(np.sum(m * (s_y - d_y * sum_q)))
        assert abs(got - want) <= DOT_BUDGET * np.sum(np.abs(dx * dy)), seed


@pytest.mark.parametrize("t", K_WEIGHTS, ids=lambda t: t.name)
def test_scalar_vec_dot_k_random_blocks(rng, t):
    """Every scale and code value, including blocks no quantizer makes."""
    n = 256 * 16
    qx = random_blocks(rng, t, n // 256)
    qy = T.quantize_activations(rng.standard_normal(n).astype(np.float32), t)
    dx = T.dequantize(qx, t).astype(np.float64)
    dy = T.dequantize(qy, G.Q8_K).astype(np.float64)
    got = T.vec_dot(t, qx, qy, n, impl="scalar")
    assert abs(got - np.dot(dx, dy)) <= DOT_BUDGET * np.sum(np.abs(dx * dy))


# ---- error paths ---------------------------------------------------------------------
def test_errors_bad_n():
    x = np.zeros(100, dtype=np.float32)
    with pytest.raises(ValueError, match="block size"):
        T.quantize(x, G.Q4_0)
    with pytest.raises(ValueError, match="block size"):
        T.quantize(np.zeros(128, dtype=np.float32), G.Q4_K)
    with pytest.raises(ValueError):
        T.dequantize(np.zeros(1000, dtype=np.uint8), G.Q8_0, n=33)
    with pytest.raises(ValueError):
        T.row_size(G.Q6_K, 255)
    with pytest.raises(ValueError):
        T.row_size(G.Q4_0, -32)
    qx = T.quantize(np.ones(512, dtype=np.float32), G.Q4_K)
    qy = T.quantize_activations(np.ones(512, dtype=np.float32), G.Q4_K)
    for n in (0, 128, -256):
        with pytest.raises(ValueError):
            T.vec_dot(G.Q4_K, qx, qy, n, impl="scalar")


@pytest.mark.parametrize("bad", [4, 5, 10, 11, 23, 99, 1 << 20])
def test_errors_unknown_type(bad):
    with pytest.raises(TypeError, match="unknown type"):
        T.type_info(bad)
    with pytest.raises(TypeError):
        T.quantize(np.zeros(256, dtype=np.float32), bad)
    with pytest.raises(TypeError):
        T.dequantize(np.zeros(256, dtype=np.uint8), bad, n=256)


def test_errors_negative_type_id():
    # cffi refuses a negative value for the (unsigned) enum before C sees it
    with pytest.raises((TypeError, OverflowError)):
        T.type_info(-1)


def test_errors_unsupported_type_use():
    with pytest.raises(TypeError, match="cannot quantize"):
        T.quantize(np.zeros(32, dtype=np.float32), G.I32)
    q = np.zeros(T.row_size(G.Q8_K, 256), dtype=np.uint8)
    with pytest.raises(TypeError, match="no dot product"):
        T.vec_dot(G.Q8_K, q, q, 256, impl="scalar")


def test_errors_small_buffers():
    with pytest.raises(ValueError, match="bytes"):
        T.dequantize(np.zeros(143, dtype=np.uint8), G.Q4_K, n=256)
    qx = np.zeros(T.row_size(G.Q6_K, 512), dtype=np.uint8)
    qy = np.zeros(T.row_size(G.Q8_K, 512), dtype=np.uint8)
    with pytest.raises(ValueError, match="smaller"):
        T.vec_dot(G.Q6_K, qx[:-1], qy, 512, impl="scalar")
    with pytest.raises(ValueError, match="smaller"):
        T.vec_dot(G.Q6_K, qx, qy[:-1], 512, impl="scalar")
    assert isinstance(T.vec_dot(G.Q6_K, qx, qy, 512, impl="scalar"), float)


def test_errors_carry_library_message():
    with pytest.raises(GGMLSparseError) as info:
        T.type_info(77)
    assert "77" in str(info.value)


# ---- llama.cpp comparison (opt-in) ------------------------------------------------------
def _llama_cpp_ggml():
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llama-cpp-python is not installed")
    for folder in spec.submodule_search_locations:
        lib = Path(folder) / "lib" / "libggml-base.so"
        if lib.exists():
            return ctypes.CDLL(str(lib))
    pytest.skip("llama-cpp-python has no libggml-base.so")


@pytest.mark.llama_cpp
@pytest.mark.parametrize("t", K_WEIGHTS, ids=lambda t: t.name)
def test_k_quantizers_match_llama_cpp(t):
    """Our K quantizers reconstruct N(0, 1) rows at most 5% worse than
    llama.cpp's reference quantizers (they are better: about 1-6%), and a
    row dequantized from llama.cpp's blocks quantizes back to itself."""
    ggml = _llama_cpp_ggml()
    fn = getattr(ggml, {G.Q4_K: "quantize_row_q4_K_ref", G.Q5_K: "quantize_row_q5_K_ref",
                        G.Q6_K: "quantize_row_q6_K_ref"}[t])
    x = np.random.default_rng(3).standard_normal((16, 4096)).astype(np.float32)
    theirs = np.zeros(T.row_size(t, x.size), dtype=np.uint8)
    fn(ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(theirs.ctypes.data), ctypes.c_int64(x.size))
    y_theirs = T.dequantize(theirs, t)
    y_ours = T.dequantize(T.quantize(x, t).reshape(-1), t)
    assert relative_rmse(x, y_ours) <= 1.05 * relative_rmse(x, y_theirs)
    y2 = T.dequantize(T.quantize(y_theirs.reshape(x.shape), t).reshape(-1), t)
    assert np.mean(y2 == y_theirs) >= 0.999
