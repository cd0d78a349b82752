"""Every CPU op of ggml_sparse against a numpy reference.

Each graph is computed twice, on a 1-thread and a 2-thread pool, and the two
results must be identical byte for byte. Error budgets are stated per test:
"exact" means bit-equal to the reference; float64 references get a tolerance
sized for float32 arithmetic. Shapes are written in ggml order (ne); numpy
arrays have the reversed shape.
"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants as gq

from pyinfer.tensor import (Context, GGMLType, Graph, RopeMode, ThreadPool, Unary, cpu_info,
                            set_simd_level, type_info)


@pytest.fixture(scope="module")
def pools():
    with ThreadPool(1) as p1, ThreadPool(2) as p2:
        yield {1: p1, 2: p2}


def run(pools, build, mem=32 << 20):
    """Build a graph with `build(ctx)` (returns one output tensor or a list)
    in a fresh context, compute it with 1 and 2 threads, check that both give
    the same bytes and return the output(s) as numpy copies."""
    results = []
    for n_threads in (1, 2):
        with Context(mem) as ctx:
            outs = build(ctx)
            single = not isinstance(outs, (list, tuple))
            outs = [outs] if single else list(outs)
            Graph(ctx).build(*outs).plan(n_threads).compute(pools[n_threads])
            results.append([o.numpy().copy() for o in outs])
    for one, two in zip(*results):
        assert one.tobytes() == two.tobytes(), "1 and 2 threads disagree"
    return results[0][0] if single else results[0]


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


def i32(ctx, values):
    return ctx.from_numpy(np.asarray(values, dtype=np.int32))


def permute_np(x, axes):
    """numpy equivalent of gs_permute(a, *axes): ggml dim i goes to dim
    axes[i]; numpy axis k of an n-d array is ggml dim n-1-k."""
    n = x.ndim
    perm = [0] * n
    for i, ax in enumerate(axes):
        perm[n - 1 - ax] = n - 1 - i
    return np.transpose(x, perm)


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


def act_ref(op, x):
    x = x.astype(np.float64)
    if op == Unary.RELU:
        return np.maximum(x, 0)
    if op == Unary.SILU:
        return x / (1 + np.exp(-x))
    if op == Unary.GELU:
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    return np.maximum(x, 0) ** 2


UNARY = [Unary.RELU, Unary.SILU, Unary.GELU, Unary.SQR_RELU]


@pytest.mark.parametrize("op", UNARY, ids=lambda o: o.name)
def test_unary(pools, rng, op):
    """Budget: 1e-6 relative + 1e-6 absolute (float32 math functions)."""
    x = np.concatenate([rng.standard_normal(60) * 4, [-100.0, -30.0, 0.0, 30.0]]).astype(np.float32)
    x = x.reshape(2, 32)
    out = run(pools, lambda ctx: ctx.unary(ctx.from_numpy(x), op))
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
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


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
# rope
# ---------------------------------------------------------------------------
def rope_ref(x, pos, n_dims, mode, base, scale, ff=None):
    """x numpy (T, H, D) float64 reference. The angles follow llama.cpp's
    float recipe, as the op does (theta_0 = pos, theta_{i+1} = theta_i *
    base^(-2/n_dims) in float32, angle = freq_scale * theta_i / ff[i])."""
    out = x.astype(np.float64).copy()
    half = n_dims // 2
    theta_scale = np.float32(np.float64(base) ** (-2.0 / n_dims))
    th = pos.astype(np.float32)
    cols = []
    for i in range(half):
        t = th if ff is None else (th / np.float32(ff[i])).astype(np.float32)
        cols.append(np.float32(scale) * t)
        th = (th * theta_scale).astype(np.float32)
    theta = np.stack(cols, axis=1).astype(np.float64)                          # (T, half)
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    if mode == RopeMode.NORMAL:
        i0, i1 = np.arange(0, n_dims, 2), np.arange(1, n_dims, 2)
    else:
        i0, i1 = np.arange(half), np.arange(half, n_dims)
    x0, x1 = x[..., i0].astype(np.float64), x[..., i1].astype(np.float64)
    out[..., i0] = x0 * cos - x1 * sin
    out[..., i1] = x0 * sin + x1 * cos
    return out


@pytest.mark.parametrize("mode", [RopeMode.NORMAL, RopeMode.NEOX], ids=lambda m: m.name)
@pytest.mark.parametrize("D,n_dims,freq_scale", [(64, 64, 1.0), (64, 32, 0.25), (64, 48, 1.0), (256, 160, 0.5)])
def test_rope(pools, rng, mode, D, n_dims, freq_scale):
    """5 heads, positions up to 100000; elements past n_dims are copied.
    Budget: 2e-5 absolute on O(1) inputs (float32 products of cos/sin
    rounded to float)."""
    T, H = 6, 5
    x = rng.standard_normal((T, H, D)).astype(np.float32)
    pos = np.array([0, 1, 7, 511, 4096, 100000], dtype=np.int32)
    out = run(pools, lambda ctx: ctx.rope(ctx.from_numpy(x), i32(ctx, pos), n_dims, mode, 10000.0, freq_scale))
    expected = rope_ref(x, pos, n_dims, mode, 10000.0, freq_scale)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(out[..., n_dims:], x[..., n_dims:])


@pytest.mark.parametrize("mode", [RopeMode.NORMAL, RopeMode.NEOX], ids=lambda m: m.name)
def test_rope_freq_factors(pools, rng, mode):
    """Llama 3.1 style: per-pair factors divide the angle (1 for high frequencies,
    up to 8 for low ones); budget as test_rope."""
    T, H, D = 5, 3, 64
    x = rng.standard_normal((T, H, D)).astype(np.float32)
    pos = np.array([0, 3, 100, 8191, 70000], dtype=np.int32)
    ff = np.concatenate([np.ones(12), np.linspace(1, 8, 10), np.full(10, 8.0)]).astype(np.float32)
    out = run(pools, lambda ctx: ctx.rope(ctx.from_numpy(x), i32(ctx, pos), D, mode, 500000.0, 1.0,
                                          freq_factors=ctx.from_numpy(ff)))
    expected = rope_ref(x, pos, D, mode, 500000.0, 1.0, ff)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)
    plain = rope_ref(x, pos, D, mode, 500000.0, 1.0)
    assert np.abs(out - plain).max() > 0.1            # the factors do change the low frequencies


def test_rope_freq_factors_shape_error(rng):
    ctx = Context(1 << 20)
    x = ctx.from_numpy(rng.standard_normal((2, 2, 8)).astype(np.float32))
    pos = i32(ctx, np.array([0, 1], dtype=np.int32))
    with pytest.raises(ValueError, match="freq_factors"):
        ctx.rope(x, pos, 8, freq_factors=ctx.from_numpy(np.ones(3, np.float32)))
    ctx.close()


def test_rope_on_permuted_view(pools, rng):
    """q stored token-major per head ({D, T, H}) and permuted to {D, H, T}."""
    T, H, D = 4, 3, 16
    x = rng.standard_normal((H, T, D)).astype(np.float32)              # ne {D, T, H}
    pos = np.array([3, 0, 9, 2], dtype=np.int32)
    out = run(pools, lambda ctx: ctx.rope(ctx.permute(ctx.from_numpy(x), 0, 2, 1, 3), i32(ctx, pos), D,
                                          RopeMode.NEOX, 500.0, 1.0))
    expected = rope_ref(permute_np(x, (0, 2, 1)), pos, D, RopeMode.NEOX, 500.0, 1.0)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)


# ---------------------------------------------------------------------------
# soft_max
# ---------------------------------------------------------------------------
def softmax_ref(x, mask, scale):
    z = x.astype(np.float64) * scale
    if mask is not None:
        z = z + mask[: x.shape[-2]].astype(np.float64)
    out = np.zeros_like(z)
    m = z.max(-1, keepdims=True)
    ok = np.isfinite(m[..., 0])
    e = np.exp(z[ok] - m[ok])
    out[ok] = e / e.sum(-1, keepdims=True)
    return out


@pytest.mark.parametrize("with_mask", [False, True])
def test_soft_max(pools, rng, with_mask):
    """a {10, 5, 3}, scale 0.7, mask {10, 7} causal with row 2 fully masked
    (that row becomes zeros in every plane). Budget: 1e-6 relative."""
    x = (rng.standard_normal((3, 5, 10)) * 4).astype(np.float32)
    mask = np.where(np.arange(10)[None, :] <= np.arange(7)[:, None] + 3, 0.0, -np.inf).astype(np.float32)
    mask[2] = -np.inf

    def build(ctx):
        m = ctx.from_numpy(mask) if with_mask else None
        return ctx.soft_max(ctx.from_numpy(x), m, 0.7)

    out = run(pools, build)
    expected = softmax_ref(x, mask if with_mask else None, 0.7)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    if with_mask:
        assert np.all(out[:, 2] == 0.0)
    else:
        np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)


def test_soft_max_large_values_stable(pools):
    x = np.array([[1000.0, 999.0, -1000.0, 1000.0]], dtype=np.float32)
    out = run(pools, lambda ctx: ctx.soft_max(ctx.from_numpy(x)))
    np.testing.assert_allclose(out, softmax_ref(x, None, 1.0), rtol=1e-6)


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
# attention
# ---------------------------------------------------------------------------
def attention_ref(q, k, v, pos, scale):
    """q (T, H, D); k, v (n_ctx, Hkv, D); float64. With F16 caches the op
    follows llama.cpp's rounding: q is rounded to F16 before the K dot
    products and the softmax weights are rounded to F16 before the V sum."""
    T, H, D = q.shape
    group = H // k.shape[1]
    out = np.zeros((T, H, D))
    for t in range(T):
        for h in range(H):
            kk = k[: pos[t] + 1, h // group].astype(np.float64)
            vv = v[: pos[t] + 1, h // group].astype(np.float64)
            qq = q[t, h].astype(np.float16) if k.dtype == np.float16 else q[t, h]
            s = kk @ qq.astype(np.float64) * scale
            w = np.exp(s - s.max())
            w = w / w.sum()
            if v.dtype == np.float16:
                w = w.astype(np.float32).astype(np.float16).astype(np.float64)
            out[t, h] = w @ vv
    return out


def simd_levels():
    info = cpu_info()
    return ["scalar"] + [lvl for lvl in ("avx2", "avx512") if
                         {"avx2": info["avx2"] and info["fma"] and info["f16c"],
                          "avx512": info["avx512f"] and info["avx512bw"] and info["avx512vl"]
                          and info["avx512vnni"]}[lvl]]


@pytest.fixture
def simd_level(request):
    set_simd_level(request.param)
    yield request.param
    set_simd_level("auto")


@pytest.mark.parametrize("simd_level", simd_levels(), indirect=True)
@pytest.mark.parametrize("cache_t", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("H,Hkv,D", [(9, 3, 64), (8, 2, 40), (4, 4, 80), (8, 1, 128)])
def test_attention_gqa(pools, rng, simd_level, cache_t, H, Hkv, D):
    """Several query tokens at different positions (first slot, middle, last
    slot) over padded caches (row stride > head_dim). Budget: 2e-5 absolute
    on O(1) values against float64 with the same (f16-rounded) cache values."""
    n_ctx, T = 40, 4
    pos = np.array([0, 17, 39, 5], dtype=np.int32)
    q = rng.standard_normal((T, H, D)).astype(np.float32)
    k = rng.standard_normal((n_ctx, Hkv, D + 8)).astype(cache_t)       # padded rows
    v = rng.standard_normal((n_ctx, Hkv, D + 8)).astype(cache_t)
    scale = D ** -0.5

    def build(ctx):
        def padded(arr):
            base = ctx.from_numpy(arr)
            nb = base.nb
            return ctx.view(base, (D, Hkv, n_ctx), (nb[0], nb[1], nb[2]))
        return ctx.attention(ctx.from_numpy(q), padded(k), padded(v), i32(ctx, pos), scale)

    out = run(pools, build)
    expected = attention_ref(q, k[..., :D], v[..., :D], pos, scale)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)


def test_attention_long_context_f16(pools, rng):
    """Decode-shaped: one token at the last of 3000 slots, 8 heads over 2 kv
    heads, head_dim 64, query given as a view of a fused QKV-like buffer."""
    n_ctx, H, Hkv, D = 3000, 8, 2, 64
    qkv = rng.standard_normal((1, (H + 2 * Hkv) * D)).astype(np.float32)
    k = rng.standard_normal((n_ctx, Hkv, D)).astype(np.float16)
    v = rng.standard_normal((n_ctx, Hkv, D)).astype(np.float16)
    pos = np.array([n_ctx - 1], dtype=np.int32)

    def build(ctx):
        fused = ctx.from_numpy(qkv)
        q = ctx.view(fused, (D, H, 1), (4, 4 * D, qkv.nbytes))
        return ctx.attention(q, ctx.from_numpy(k), ctx.from_numpy(v), i32(ctx, pos), 0.125)

    out = run(pools, build)
    expected = attention_ref(qkv[:, : H * D].reshape(1, H, D), k, v, pos, 0.125)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)


def test_decode_steps_append_then_attend(pools, rng):
    """Decode as a model runs it: set_rows appends this token's k and v at
    slot `pos` of F16 caches, attention reads the caches through a reshape of
    the set_rows results (which orders it after the writes), and the same
    planned graph runs for 6 steps with new inputs. Budget as above."""
    n_ctx, H, Hkv, D = 16, 4, 2, 32
    scale = D ** -0.5
    with Context(4 << 20) as ctx:
        k_cache = ctx.new_tensor(GGMLType.F16, (D * Hkv, n_ctx))
        v_cache = ctx.new_tensor(GGMLType.F16, (D * Hkv, n_ctx))
        q = ctx.new_tensor(GGMLType.F32, (D, H, 1))
        k_new = ctx.new_tensor(GGMLType.F32, (D * Hkv, 1))
        v_new = ctx.new_tensor(GGMLType.F32, (D * Hkv, 1))
        pos = ctx.new_tensor(GGMLType.I32, (1,))
        k_all = ctx.reshape(ctx.set_rows(k_cache, k_new, pos), (D, Hkv, n_ctx))
        v_all = ctx.reshape(ctx.set_rows(v_cache, v_new, pos), (D, Hkv, n_ctx))
        out = ctx.attention(q, k_all, v_all, pos, scale)
        g = Graph(ctx).build(out).plan(2)
        keys, values = [], []
        for step in range(6):
            qv = rng.standard_normal((1, H, D)).astype(np.float32)
            kv = rng.standard_normal((1, D * Hkv)).astype(np.float32)
            vv = rng.standard_normal((1, D * Hkv)).astype(np.float32)
            q.numpy()[...] = qv
            k_new.numpy()[...] = kv
            v_new.numpy()[...] = vv
            pos.numpy()[0] = step
            g.compute(pools[2 if step % 2 else 1])
            keys.append(kv.astype(np.float16).reshape(Hkv, D))
            values.append(vv.astype(np.float16).reshape(Hkv, D))
            expected = attention_ref(qv, np.stack(keys), np.stack(values), [step], scale)
            np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=2e-5)
