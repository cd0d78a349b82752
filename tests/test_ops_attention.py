"""The position and attention ops of ggml_sparse (RoPE, softmax, fused causal attention)
against numpy references, computed on 1 and 2 threads with identical bytes (op_util.run).
Error budgets are stated per test; shapes are in ggml order (ne), numpy arrays reversed."""
import numpy as np
import pytest

from pyinfer.tensor import Context, GGMLType, Graph, RopeMode
from op_util import i32, permute_np, run


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
# attention
# ---------------------------------------------------------------------------
def attention_ref(q, k, v, pos, scale, window=0, softcap=0.0):
    """q (T, H, D); k, v (n_ctx, Hkv, D); float64. With F16 caches the op
    follows llama.cpp's rounding: q is rounded to F16 before the K dot
    products and the softmax weights are rounded to F16 before the V sum.
    window > 0: token t sees slots pos[t] - window < j <= pos[t]; softcap > 0:
    scores become softcap * tanh(score / softcap)."""
    T, H, D = q.shape
    group = H // k.shape[1]
    out = np.zeros((T, H, D))
    for t in range(T):
        lo = max(0, pos[t] + 1 - window) if window else 0
        for h in range(H):
            kk = k[lo: pos[t] + 1, h // group].astype(np.float64)
            vv = v[lo: pos[t] + 1, h // group].astype(np.float64)
            qq = q[t, h].astype(np.float16) if k.dtype == np.float16 else q[t, h]
            s = kk @ qq.astype(np.float64) * scale
            if softcap:
                s = softcap * np.tanh(s / softcap)
            w = np.exp(s - s.max())
            w = w / w.sum()
            if v.dtype == np.float16:
                w = w.astype(np.float32).astype(np.float16).astype(np.float64)
            out[t, h] = w @ vv
    return out


@pytest.mark.parametrize("cache_t", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("H,Hkv,D", [(9, 3, 64), (8, 2, 40), (4, 4, 80), (8, 1, 128)])
def test_attention_gqa(pools, rng, level, cache_t, H, Hkv, D):
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


# ---------------------------------------------------------------------------
# attention with a sliding window and soft-capped scores (gs_attention_ext)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cache_t", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("window,softcap", [(1, 0.0), (3, 0.0), (16, 0.0), (70, 0.0), (0, 2.5), (20, 4.0)])
def test_attention_window_softcap(pools, rng, level, cache_t, window, softcap):
    """Queries at positions before, at and past the window (so the first visible
    slot moves through 16- and 64-slot groups); GQA 8 over 2 heads, D 64. Each
    SIMD level on 1 and 2 threads (identical bytes); budget 2e-5 absolute against
    float64. Scores are scaled by 3 so that the cap bends them."""
    n_ctx, H, Hkv, D = 150, 8, 2, 64
    pos = np.array([0, 2, 15, 16, 63, 64, 65, 80, 149], dtype=np.int32)
    q = (3.0 * rng.standard_normal((len(pos), H, D))).astype(np.float32)
    k = rng.standard_normal((n_ctx, Hkv, D)).astype(cache_t)
    v = rng.standard_normal((n_ctx, Hkv, D)).astype(cache_t)
    scale = D ** -0.5
    out = run(pools, lambda ctx: ctx.attention(ctx.from_numpy(q), ctx.from_numpy(k), ctx.from_numpy(v),
                                               i32(ctx, pos), scale, window=window, softcap=softcap))
    expected = attention_ref(q, k, v, pos, scale, window, softcap)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)
    if window:   # the window is really applied: without it the result differs
        plain = attention_ref(q, k, v, pos, scale, 0, softcap)
        assert np.abs(plain - expected)[pos >= window].max() > 1e-3


def _attend(q, k, v, pos, scale, window, softcap, level, n_threads):
    from pyinfer.tensor import ThreadPool, set_simd_level
    set_simd_level(level)
    try:
        with Context(64 << 20) as ctx, ThreadPool(n_threads) as pool:
            out = ctx.attention(ctx.from_numpy(q), ctx.from_numpy(k), ctx.from_numpy(v),
                                i32(ctx, pos), scale, window=window, softcap=softcap)
            Graph(ctx).build(out).plan(n_threads).compute(pool)
            return out.numpy().copy()
    finally:
        set_simd_level("auto")


@pytest.mark.parametrize("T", [1, 4], ids=["decode", "batch"])
@pytest.mark.parametrize("window,softcap", [(5, 0.0), (64, 0.0), (100, 0.0), (37, 3.0)])
def test_attention_window_simd_bit_identical(level, T, window, softcap):
    """F16 caches: the SIMD kernels equal the scalar one bit for bit with a
    window (the visible slots keep their lane and tree places), for one query
    token (llama.cpp's decode order) and for batches whose padded slot count is a
    multiple of 16 (its batched order), on 1 and 2 threads."""
    rng = np.random.default_rng(window * 10 + T)
    n_ctx, H, Hkv, D = 320, 4, 1, 64
    # the batch's padded slot count is n_ctx (a multiple of 16): llama.cpp's batched order
    pos = np.array([n_ctx - 1, 300, 257, 130] if T > 1 else [299], dtype=np.int32)
    q = (2.0 * rng.standard_normal((T, H, D))).astype(np.float32)
    k = rng.standard_normal((n_ctx, Hkv, D)).astype(np.float16)
    v = rng.standard_normal((n_ctx, Hkv, D)).astype(np.float16)
    want = _attend(q, k, v, pos, 0.125, window, softcap, "scalar", 1)
    np.testing.assert_allclose(want, attention_ref(q, k, v, pos, 0.125, window, softcap), rtol=0, atol=2e-5)
    for n_threads in (1, 2):
        got = _attend(q, k, v, pos, 0.125, window, softcap, level, n_threads)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_attention_window_wider_than_context_is_plain(pools, rng):
    """A window at least as long as the attended slots changes nothing (same bytes)."""
    n_ctx, H, D = 40, 2, 32
    pos = np.array([0, 20, 39], dtype=np.int32)
    q = rng.standard_normal((3, H, D)).astype(np.float32)
    k = rng.standard_normal((n_ctx, 1, D)).astype(np.float16)
    v = rng.standard_normal((n_ctx, 1, D)).astype(np.float16)

    def build(window):
        return lambda ctx: ctx.attention(ctx.from_numpy(q), ctx.from_numpy(k), ctx.from_numpy(v),
                                         i32(ctx, pos), 0.2, window=window)

    np.testing.assert_array_equal(run(pools, build(40)), run(pools, build(0)))


def test_attention_ext_rejects_bad_params(rng):
    with Context(1 << 20) as ctx:
        q = ctx.from_numpy(rng.standard_normal((1, 2, 8)).astype(np.float32))
        kv = ctx.from_numpy(rng.standard_normal((4, 1, 8)).astype(np.float32))
        pos = i32(ctx, [0])
        with pytest.raises(ValueError, match="n_swa"):
            ctx.attention(q, kv, kv, pos, 1.0, window=-1)
        with pytest.raises(ValueError, match="softcap"):
            ctx.attention(q, kv, kv, pos, 1.0, softcap=-2.0)
        with pytest.raises(ValueError, match="softcap"):
            ctx.attention(q, kv, kv, pos, 1.0, softcap=float("inf"))
