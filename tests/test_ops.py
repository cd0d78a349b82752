"""Every CPU op of ggml_sparse against a numpy reference.

Each graph is computed twice, on a 1-thread and a 2-thread pool, and the two
results must be identical byte for byte. Error budgets are stated per test:
"exact" means bit-equal to the reference; float64 references get a tolerance
sized for float32 arithmetic. Shapes are written in ggml order (ne); numpy
arrays have the reversed shape.
"""
import hashlib
from fractions import Fraction

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants as gq

from pyinfer.tensor import Context, GGMLType, Graph, Unary, quantize_activations, type_info
from op_util import i32, permute_np, run


def bf16_bits(x):
    """float32 -> bfloat16 bits, round to nearest even (NaN not needed here)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_to_f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def new_from(ctx, t, arr_bytes_or_values, ne):
    """A tensor of type t and shape ne whose bytes are given."""
    tensor = ctx.new_tensor(t, ne)
    tensor.raw()[:] = np.ascontiguousarray(arr_bytes_or_values).view(np.uint8).reshape(-1)
    return tensor


# ---------------------------------------------------------------------------
# get_rows
# ---------------------------------------------------------------------------
K_TYPES = {GGMLType.Q4_K: (0, 2), GGMLType.Q5_K: (0, 2), GGMLType.Q6_K: (208, None)}


def random_k_rows(t, rows, n, rng):
    """Valid K-quant rows: random bits with sane f16 scales (d, dmin)."""
    ts = type_info(t).type_size
    raw = rng.integers(0, 256, (rows, n // 256, ts), dtype=np.uint8)
    d_off, dmin_off = K_TYPES[t]
    for off in (d_off, dmin_off):
        if off is not None:
            scale = rng.uniform(1e-3, 1e-2, raw.shape[:2]).astype(np.float16)
            raw[..., off:off + 2] = scale.view(np.uint8).reshape(raw.shape[:2] + (2,))
    return raw.reshape(rows, -1)


WEIGHT_TYPES = [GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q4_0, GGMLType.Q4_1,
                GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q5_K,
                GGMLType.Q6_K]


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
def test_get_rows_every_type(pools, rng, t):
    """Budget: F32/F16/BF16 exact; quantized rows equal gguf.quants.dequantize
    up to float32 rounding (1e-6 of the table's largest value)."""
    n, rows = 512, 7
    idx = np.array([3, 0, 6, 3, 1], dtype=np.int32)
    if t in K_TYPES:
        raw = random_k_rows(t, rows, n, rng)
    elif t == GGMLType.F32:
        raw = rng.standard_normal((rows, n)).astype(np.float32)
    elif t == GGMLType.F16:
        raw = rng.standard_normal((rows, n)).astype(np.float16)
    elif t == GGMLType.BF16:
        raw = bf16_bits(rng.standard_normal((rows, n)))
    else:
        raw = gq.quantize(rng.standard_normal((rows, n)).astype(np.float32), QT(int(t)))
    table = gq.dequantize(np.ascontiguousarray(raw).view(np.uint8).reshape(rows, -1), QT(int(t)))
    expected = table.reshape(rows, n)[idx]

    out = run(pools, lambda ctx: ctx.get_rows(new_from(ctx, t, raw, (n, rows)), i32(ctx, idx)))
    assert out.shape == (len(idx), n) and out.dtype == np.float32
    if t in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
        np.testing.assert_array_equal(out, expected)
    else:
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6 * np.abs(table).max())


def test_get_rows_from_strided_view(pools, rng):
    """Rows of a transposed F32 table (element stride > 4 bytes). Exact."""
    base = rng.standard_normal((6, 10)).astype(np.float32)   # ne {10, 6}
    idx = np.array([9, 2, 2], dtype=np.int32)
    out = run(pools, lambda ctx: ctx.get_rows(ctx.transpose(ctx.from_numpy(base)), i32(ctx, idx)))
    np.testing.assert_array_equal(out, base.T[idx])


# ---------------------------------------------------------------------------
# set_rows
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("t", [GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0],
                         ids=lambda t: t.name)
def test_set_rows_into_cache(pools, rng, t):
    """Scatter 3 rows into a 16-row cache. Budget: exact (F16/BF16 round to
    nearest even as numpy/gguf do; Q8_0 bytes equal gguf.quants.quantize);
    rows not indexed keep their old bytes."""
    n, rows = 64, 16
    old = rng.standard_normal((rows, n)).astype(np.float32)
    src = rng.standard_normal((3, n)).astype(np.float32)
    idx = np.array([5, 0, 15], dtype=np.int32)
    old_bytes = gq.quantize(old, QT(int(t))).view(np.uint8).reshape(rows, -1)

    def build(ctx):
        cache = new_from(ctx, t, old_bytes, (n, rows))
        return ctx.set_rows(cache, ctx.from_numpy(src), i32(ctx, idx))

    out = run(pools, build)
    got = np.ascontiguousarray(out).view(np.uint8).reshape(rows, -1)
    expected = old_bytes.copy()
    expected[idx] = gq.quantize(src, QT(int(t))).view(np.uint8).reshape(3, -1)
    np.testing.assert_array_equal(got, expected)


def test_set_rows_planes_and_strided_destination(pools, rng):
    """dst {n, R, 2}: src plane p goes to dst plane p; and a transposed F32
    destination (element stride > 4 bytes). Exact."""
    n, rows = 8, 5
    src = rng.standard_normal((2, 2, n)).astype(np.float32)          # ne {n, 2, 2}
    idx = np.array([4, 1, 0, 3], dtype=np.int32)                       # plane 0: 4, 1; plane 1: 0, 3

    def build(ctx):
        cache = ctx.new_tensor(GGMLType.F32, (n, rows, 2))
        return ctx.set_rows(cache, ctx.from_numpy(src), i32(ctx, idx))

    out = run(pools, build)
    expected = np.zeros((2, rows, n), dtype=np.float32)
    expected[0, [4, 1]] = src[0]
    expected[1, [0, 3]] = src[1]
    np.testing.assert_array_equal(out, expected)

    src2 = rng.standard_normal((2, rows)).astype(np.float32)           # ne {rows, 2}
    idx2 = np.array([7, 2], dtype=np.int32)

    def build_t(ctx):
        base = ctx.new_tensor(GGMLType.F32, (8, rows))                 # numpy (rows, 8)
        return ctx.set_rows(ctx.transpose(base), ctx.from_numpy(src2), i32(ctx, idx2))

    out = run(pools, build_t)                                          # view {rows, 8} of base
    expected = np.zeros((8, rows), dtype=np.float32)
    expected[idx2] = src2
    np.testing.assert_array_equal(out, expected)


# ---------------------------------------------------------------------------
# cpy / cast
# ---------------------------------------------------------------------------
FLOATISH = [GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0]


@pytest.mark.parametrize("src_t", FLOATISH, ids=lambda t: t.name)
@pytest.mark.parametrize("dst_t", FLOATISH, ids=lambda t: t.name)
def test_cast_between_types(pools, rng, src_t, dst_t):
    """Every pair: dst bytes equal gguf.quants.quantize(dequantize(src))
    (conversions go through F32 with the reference quantizers). Exact."""
    x = rng.standard_normal((6, 96)).astype(np.float32) * rng.uniform(0.1, 10, (6, 1)).astype(np.float32)
    src_bytes = gq.quantize(x, QT(int(src_t))).view(np.uint8).reshape(6, -1)
    values = gq.dequantize(src_bytes, QT(int(src_t))).reshape(6, 96)
    expected = gq.quantize(values.astype(np.float32), QT(int(dst_t))).view(np.uint8).reshape(6, -1)

    out = run(pools, lambda ctx: ctx.cast(new_from(ctx, src_t, src_bytes, (96, 6)), dst_t))
    np.testing.assert_array_equal(np.ascontiguousarray(out).view(np.uint8).reshape(6, -1), expected)


@pytest.mark.parametrize("t,budget", [(GGMLType.Q8_0, 0.6 / 127), (GGMLType.Q4_0, 1.05 / 8)],
                         ids=["Q8_0", "Q4_0"])
def test_cast_error_budget(pools, rng, t, budget):
    """Quantized cast of long rows (longer than the kernel's 4096-element
    chunk): per 32-block max |error| <= budget * block max |x|
    (Q8_0: half a step of amax/127 plus f16 scale rounding; Q4_0: one step of
    amax/8 at the clamped end)."""
    n = 4096 + 2 * 256
    x = rng.standard_normal((3, n)).astype(np.float32)
    out = run(pools, lambda ctx: ctx.cast(ctx.from_numpy(x), t))
    back = gq.dequantize(np.ascontiguousarray(out).reshape(3, -1), QT(int(t))).reshape(3, n)
    err = np.abs(back - x).reshape(3, -1, 32).max(axis=2)
    amax = np.abs(x).reshape(3, -1, 32).max(axis=2)
    assert np.all(err <= budget * amax + 1e-7)
    np.testing.assert_array_equal(np.ascontiguousarray(out).reshape(3, -1),
                                  gq.quantize(x, QT(int(t))).reshape(3, -1))


def test_cpy_from_views_and_reshaping(pools, rng):
    """cpy walks the source in logical order whatever its strides, into a
    destination of another shape with the same element count. Exact."""
    x = rng.standard_normal((4, 5, 6)).astype(np.float32)             # ne {6, 5, 4}

    def build(ctx):
        src = ctx.permute(ctx.from_numpy(x), 2, 0, 1, 3)               # ne {5, 4, 6}
        dst = ctx.new_tensor(GGMLType.F16, (10, 12))
        return ctx.cpy(src, dst)

    out = run(pools, build)
    src_np = permute_np(x, (2, 0, 1))                                   # numpy (6, 4, 5) = ne {5, 4, 6}
    np.testing.assert_array_equal(out, src_np.reshape(12, 10).astype(np.float16))

    y = rng.standard_normal((3, 64)).astype(np.float32)

    def build_q(ctx):
        dst = ctx.new_tensor(GGMLType.Q8_0, (32, 6))
        return ctx.cpy(ctx.transpose(ctx.transpose(ctx.from_numpy(y))), dst)

    out = run(pools, build_q)
    np.testing.assert_array_equal(np.ascontiguousarray(out).reshape(6, -1),
                                  gq.quantize(y.reshape(6, 32), QT.Q8_0).reshape(6, -1))


def test_cpy_result_is_dst(pools, rng):
    """The cpy result views dst: reading dst after compute gives the copy."""
    x = rng.standard_normal((3, 8)).astype(np.float32)
    pool = pools[2]
    with Context(1 << 20) as ctx:
        dst = ctx.new_tensor(GGMLType.F16, (8, 3))
        res = ctx.cpy(ctx.from_numpy(x), dst)
        Graph(ctx).build(res).plan(2).compute(pool)
        np.testing.assert_array_equal(dst.numpy(), x.astype(np.float16))
        assert res.ne == dst.ne


# ---------------------------------------------------------------------------
# element-wise
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("b_ne", [(8, 6, 4, 2), (8, 1, 1, 1), (8, 6, 1, 2), (4, 1, 4, 1), (1, 3, 2, 1)])
@pytest.mark.parametrize("op", ["add", "mul"])
def test_binary_broadcast(pools, rng, op, b_ne):
    """a {8, 6, 4, 2} with b repeated over it. Exact (float32 like numpy)."""
    a = rng.standard_normal((2, 4, 6, 8)).astype(np.float32)
    b = rng.standard_normal(b_ne[::-1]).astype(np.float32)
    out = run(pools, lambda ctx: getattr(ctx, op)(ctx.from_numpy(a), ctx.from_numpy(b)))
    reps = tuple(sa // sb for sa, sb in zip(a.shape, b.shape))
    bt = np.tile(b, reps)
    np.testing.assert_array_equal(out, a + bt if op == "add" else a * bt)


def test_binary_on_transposed_view(pools, rng):
    a = rng.standard_normal((5, 7)).astype(np.float32)                 # ne {7, 5}
    b = rng.standard_normal((7, 5)).astype(np.float32)                 # ne {5, 7}
    out = run(pools, lambda ctx: ctx.add(ctx.transpose(ctx.from_numpy(a)), ctx.from_numpy(b)))
    np.testing.assert_array_equal(out, a.T + b)


def test_scale(pools, rng):
    x = rng.standard_normal((3, 33)).astype(np.float32)
    out = run(pools, lambda ctx: ctx.scale(ctx.from_numpy(x), -0.37))
    np.testing.assert_array_equal(out, x * np.float32(-0.37))


def gelu_exact(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def act_ref(op, x):
    x = x.astype(np.float64)
    if op == Unary.RELU:
        return np.maximum(x, 0)
    if op == Unary.SILU:
        return x / (1 + np.exp(-x))
    if op == Unary.GELU:
        # ggml's CPU GELU: 0 at or below -10, x at or above 10, else the F16 table
        # (input and output rounded to F16: error budget `gelu_budget`)
        h = x.astype(np.float16).astype(np.float64)
        return np.where(x <= -10, 0.0, np.where(x >= 10, x, gelu_exact(h)))
    if op == Unary.TANH:
        return np.tanh(x)
    return np.maximum(x, 0) ** 2


def gelu_budget(x):
    """|error| allowed against act_ref's GELU: the table's F16 rounding of the
    result (half an F16 ulp, 2^-11 relative) plus float32 evaluation slack."""
    y = np.abs(act_ref(Unary.GELU, x))
    return 2.0 ** -11 * y + 1e-7


UNARY = [Unary.RELU, Unary.SILU, Unary.GELU, Unary.SQR_RELU, Unary.TANH]


@pytest.mark.parametrize("op", UNARY, ids=lambda o: o.name)
def test_unary(pools, rng, op):
    """Budget: 1e-6 relative + 1e-6 absolute (float32 math functions); GELU as
    ggml computes it (gelu_budget)."""
    x = np.concatenate([rng.standard_normal(60) * 4, [-100.0, -30.0, 0.0, 30.0]]).astype(np.float32)
    x = x.reshape(2, 32)
    out = run(pools, lambda ctx: ctx.unary(ctx.from_numpy(x), op))
    if op == Unary.GELU:
        assert np.all(np.abs(out - act_ref(op, x)) <= gelu_budget(x))
    else:
        np.testing.assert_allclose(out, act_ref(op, x), rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("gate_b", [False, True])
@pytest.mark.parametrize("op", UNARY, ids=lambda o: o.name)
def test_glu(pools, rng, op, gate_b):
    """out = f(a) * b, or f(a) * f(b) with gate_b. Budget as test_unary."""
    a = (rng.standard_normal((3, 40)) * 3).astype(np.float32)
    b = (rng.standard_normal((3, 40)) * 3).astype(np.float32)
    out = run(pools, lambda ctx: ctx.glu(ctx.from_numpy(a), ctx.from_numpy(b), op, gate_b))
    expected = act_ref(op, a) * (act_ref(op, b) if gate_b else b)
    if op == Unary.GELU:
        fb = np.abs(act_ref(op, b)) if gate_b else np.abs(b)
        fa = np.abs(act_ref(op, a))
        budget = gelu_budget(a) * fb + (gelu_budget(b) * fa if gate_b else 0) + 1e-6 * np.abs(expected)
        assert np.all(np.abs(out - expected) <= budget)
    else:
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# sha256 of llama.cpp's ggml_table_gelu_f16 (the F16 results, uint16) over the half
# inputs h with -10 < h < 10 (37376 entries, in index order), read from
# libggml-cpu.so of llama-cpp-python 0.3.36 built natively on x86-64 (AVX-512)
LLAMA_CPP_GELU_TABLE_SHA256 = "941d5b3ccda9cd5ca0a10eb534559bb12b9a4512387d4ba59e4532bb9644d812"


def test_gelu_is_llama_cpps_table(pools):
    """Every half input in (-10, 10) maps to the F16 value of llama.cpp's GELU
    table (bit for bit, through the recorded hash); outside, 0 and x."""
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    inside = h[np.isfinite(h) & (h > -10) & (h < 10)]
    pad = -len(inside) % 64
    x = np.concatenate([inside, np.zeros(pad, np.float32)]).reshape(-1, 64)
    out = run(pools, lambda ctx: ctx.unary(ctx.from_numpy(x), Unary.GELU)).reshape(-1)[:len(inside)]
    assert np.array_equal(out.astype(np.float16).astype(np.float32), out)     # F16 values
    digest = hashlib.sha256(out.astype(np.float16).view(np.uint16).tobytes()).hexdigest()
    assert digest == LLAMA_CPP_GELU_TABLE_SHA256
    edge = np.array([[-1e30, -10.0, -10.5, 10.0, 11.25, 1e30] + [0.0] * 10], np.float32)
    out = run(pools, lambda ctx: ctx.unary(ctx.from_numpy(edge), Unary.GELU))
    np.testing.assert_array_equal(out[0, :6], np.array([0, 0, 0, 10.0, 11.25, 1e30], np.float32))


def test_geglu_below_minus_ten_is_plus_zero(pools):
    """ggml's GeGLU writes +0 for a gate at or below -10, whatever the value
    (not 0 * b: no -0, no NaN from an infinite b)."""
    a = np.array([[-10.0, -50.0, -11.0, 10.0] + [1.0] * 12], np.float32)
    b = np.array([[-3.0, np.inf, -np.inf, -2.0] + [1.0] * 12], np.float32)
    out = run(pools, lambda ctx: ctx.glu(ctx.from_numpy(a), ctx.from_numpy(b), Unary.GELU))
    assert out[0, :3].tolist() == [0.0, 0.0, 0.0] and not np.signbit(out[0, :3]).any()
    assert out[0, 3] == -20.0


def test_rms_norm_and_norm(pools, rng):
    """Budget: 1e-5 relative against float64."""
    x = (rng.standard_normal((2, 3, 100)) * 5 + 1).astype(np.float32)
    eps = 1e-5
    rms, ln = run(pools, lambda ctx: [ctx.rms_norm(ctx.from_numpy(x), eps), ctx.norm(ctx.from_numpy(x), eps)])
    xd = x.astype(np.float64)
    np.testing.assert_allclose(rms, xd / np.sqrt((xd ** 2).mean(-1, keepdims=True) + eps), rtol=1e-5, atol=1e-6)
    c = xd - xd.mean(-1, keepdims=True)
    np.testing.assert_allclose(ln, c / np.sqrt((c ** 2).mean(-1, keepdims=True) + eps), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# views feeding ops
# ---------------------------------------------------------------------------
def test_views_feed_ops(pools, rng):
    """view with offset -> unary; reshape of a computed node -> mul_mat;
    permute -> cast (makes it contiguous). Exact / 1e-5 for the matmul."""
    x = rng.standard_normal((6, 16)).astype(np.float32)                 # ne {16, 6}
    w = rng.standard_normal((5, 32)).astype(np.float32)                 # ne {32, 5}

    def build(ctx):
        xt = ctx.from_numpy(x)
        rows = ctx.view(xt, (16, 3), (4, 64), offset=2 * 64)            # rows 2..4
        relu = ctx.unary(rows, Unary.RELU)
        sq = ctx.mul(xt, xt)
        flat = ctx.reshape(sq, (32, 3))                                  # pairs of rows
        mm = ctx.mul_mat(ctx.from_numpy(w), flat)
        perm = ctx.cast(ctx.permute(ctx.reshape(xt, (4, 4, 6)), 1, 0, 2, 3), GGMLType.F32)
        return [relu, mm, perm]

    relu, mm, perm = run(pools, build)
    np.testing.assert_array_equal(relu, np.maximum(x[2:5], 0))
    np.testing.assert_allclose(mm, (x * x).reshape(3, 32).astype(np.float64) @ w.T.astype(np.float64), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(perm, permute_np(x.reshape(6, 4, 4), (1, 0, 2)))


# ---------------------------------------------------------------------------
# mul_mat (F32 weights)
# ---------------------------------------------------------------------------
def test_mul_mat_f32_broadcast(pools, rng):
    """a {K, M, 2, 1} over b {K, N, 4, 3}: b plane i2 uses a plane
    i2 // 2 (ggml's rule), a's single dim-3 plane serves all. Budget: 1e-5
    relative against float64 (the F32 dot accumulates in double)."""
    K, M, N = 48, 5, 3
    a = rng.standard_normal((1, 2, M, K)).astype(np.float32)
    b = rng.standard_normal((3, 4, N, K)).astype(np.float32)
    out = run(pools, lambda ctx: ctx.mul_mat(ctx.from_numpy(a), ctx.from_numpy(b)))
    assert out.shape == (3, 4, N, M)
    ab = np.repeat(np.repeat(a, 2, axis=1), 3, axis=0).astype(np.float64)
    expected = np.einsum("pqmk,pqnk->pqnm", ab, b.astype(np.float64))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# repacked Q4_K: llama.cpp's repacked order (ggml_sparse.h, gs_tensor_repack)
# ---------------------------------------------------------------------------
def _round_f32(exact: Fraction) -> np.float32:
    """The float32 nearest to an exact rational (ties to even)."""
    x = np.float32(float(exact))
    cands = [np.nextafter(x, np.float32(-np.inf)), x, np.nextafter(x, np.float32(np.inf))]
    return min(cands, key=lambda y: (abs(Fraction(float(y)) - exact), int(np.float32(y).view(np.uint32)) & 1))


def _fmaf(a, b, c) -> np.float32:
    return _round_f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


def _q4k_blocks(raw: np.ndarray):
    """(d, dmin, sc[8], m[8], q[8][32]) of each 144-byte Q4_K block (ggml's layout)."""
    for blk in raw.reshape(-1, 144):
        d, dmin = blk[0:4].view(np.float16).astype(np.float32)
        s = blk[4:16].astype(int)
        sc = [s[j] & 63 if j < 4 else (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4) for j in range(8)]
        m = [s[j + 4] & 63 if j < 4 else (s[j + 4] >> 4) | ((s[j] >> 6) << 4) for j in range(8)]
        qs = blk[16:].astype(int)
        q = [(qs[32 * (j // 2): 32 * (j // 2) + 32] >> (4 * (j % 2))) & 15 for j in range(8)]
        yield d, dmin, sc, m, q


def q4k_repacked_ref(w_raw: np.ndarray, y_raw: np.ndarray, pairs: bool) -> np.float32:
    """One output in llama.cpp's repacked Q4_K order, from the weight row's and the
    Q8_K activation row's bytes, with exact integer sums and exactly rounded fmaf."""
    acc = accm = np.float32(0)
    for (d, dmin, sc, m, q), yb in zip(_q4k_blocks(w_raw), y_raw.reshape(-1, 292)):
        dy = yb[0:4].view(np.float32)[0]
        yq = yb[4:260].view(np.int8).astype(int)
        bs = yb[260:292].view(np.int16).astype(int)
        s1 = [sc[j] * int(q[j] @ yq[32 * j: 32 * j + 32]) for j in range(8)]
        s2 = [m[j] * int(bs[2 * j] + bs[2 * j + 1]) for j in range(8)]
        steps = [(s1[2 * k] + s1[2 * k + 1], s2[2 * k] + s2[2 * k + 1]) for k in range(4)] if pairs \
            else [(sum(s1), sum(s2))]
        for i1, i2 in steps:
            acc = _fmaf(np.float32(i1), np.float32(d) * dy, acc)
            accm = _fmaf(np.float32(i2), np.float32(dmin) * dy, accm)
    return np.float32(acc - accm)


@pytest.mark.parametrize("N", [1, 3, 4, 6])
def test_repacked_q4_k_follows_llama_cpps_order(pools, rng, level, N):
    """A repacked Q4_K weight {512, 16} times N activation rows: each output equals,
    bit for bit, the order stated in ggml_sparse.h (per super-block for rows taken
    one at a time, per 64 weights for rows n < N - N % 4 when N >= 4), computed here
    with exact integers and exactly rounded fmaf; at each SIMD level, 1 and 2 threads.
    The row-major product (another order) differs, within rounding."""
    K, M = 512, 16
    w = random_k_rows(GGMLType.Q4_K, M, K, rng)
    x = rng.standard_normal((N, K)).astype(np.float32)

    def build(repacked):
        def f(ctx):
            a = new_from(ctx, GGMLType.Q4_K, w, (K, M))
            if repacked:
                assert a.can_repack
                a.repack()
                assert a.is_repacked
            return ctx.mul_mat(a, ctx.from_numpy(x))
        return f

    out = run(pools, build(True))
    y = quantize_activations(x, GGMLType.Q4_K)
    n_pairs = N - N % 4 if N >= 4 else 0
    expected = np.array([[q4k_repacked_ref(w[m], y[n], n < n_pairs) for m in range(M)] for n in range(N)])
    np.testing.assert_array_equal(out.view(np.uint32), expected.astype(np.float32).view(np.uint32))
    plain = run(pools, build(False))
    assert not np.array_equal(plain, out)
    np.testing.assert_allclose(out, plain, rtol=1e-4, atol=1e-4 * np.abs(plain).max())
