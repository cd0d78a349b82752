"""The SIMD kernels of the F16-cache attention (vec_avx2_attn.c,
vec_avx512_attn.c) equal the scalar kernel (ops_attention_f16.c, which
reproduces llama.cpp's arithmetic) bit for bit.

Shapes cover head sizes that are a multiple of 64 (full chunks), 80 (a tail
added in double), 40 (no full chunk), 8, and caches whose slot count is not
a multiple of 16 or 64 (the softmax and V-sum tails); query positions sit on
both sides of the 64-lane and 256-slot padding boundaries. Several query
tokens whose padded slot count is a multiple of 16 (D too) take llama.cpp's
batched order, which has its own AVX-512 kernel. The scalar
result is also checked against a float64 numpy attention (budget 2e-5
absolute on O(1) values), so a kernel that is wrong everywhere still fails.
"""
import numpy as np
import pytest

from pyinfer.tensor import Context, Graph, ThreadPool, cpu_info, set_simd_level


def _levels():
    info = cpu_info()
    out = []
    if info["avx2"] and info["fma"] and info["f16c"]:
        out.append("avx2")
    if all(info[f] for f in ("avx512f", "avx512bw", "avx512vl", "avx512vnni")):
        out.append("avx512")
    return out


def attention_f16(q, k, v, pos, scale, level, n_threads=2):
    set_simd_level(level)
    try:
        with Context(64 << 20) as ctx, ThreadPool(n_threads) as pool:
            n_ctx, hkv, d = k.shape
            kt = ctx.from_numpy(k.reshape(n_ctx, hkv * d))
            vt = ctx.from_numpy(v.reshape(n_ctx, hkv * d))
            kv_view = lambda t: ctx.view(t, (d, hkv, n_ctx), (2, 2 * d, t.nb[1]))
            out = ctx.attention(ctx.from_numpy(q), kv_view(kt), kv_view(vt),
                                ctx.from_numpy(np.asarray(pos, dtype=np.int32)), scale)
            Graph(ctx).build(out).plan(n_threads).compute(pool)
            return out.numpy().copy()
    finally:
        set_simd_level("auto")


def reference(q, k, v, pos, scale):
    t_, h_, d = q.shape
    group = h_ // k.shape[1]
    out = np.zeros(q.shape)
    for t in range(t_):
        for h in range(h_):
            kk = k[: pos[t] + 1, h // group].astype(np.float64)
            vv = v[: pos[t] + 1, h // group].astype(np.float64)
            s = kk @ q[t, h].astype(np.float16).astype(np.float64) * scale
            w = np.exp(s - s.max())
            w = (w / w.sum()).astype(np.float32).astype(np.float16).astype(np.float64)
            out[t, h] = w @ vv
    return out


@pytest.mark.parametrize("level", _levels())
@pytest.mark.parametrize("H,Hkv,D,n_ctx", [(9, 3, 64, 600), (4, 2, 128, 300), (4, 4, 80, 300),
                                           (8, 2, 40, 100), (2, 1, 8, 70),
                                           # slot counts that are multiples of 16 with D % 16 == 0:
                                           # the batched (prompt) product order
                                           (9, 3, 64, 512), (4, 2, 128, 256), (4, 1, 32, 48)])
def test_simd_attention_bit_identical(level, H, Hkv, D, n_ctx):
    rng = np.random.default_rng(D * 1000 + n_ctx)
    pos = [p for p in (0, 5, 63, 64, 65, 255, 256, 299, 599) if p < n_ctx] + [n_ctx - 1]
    T = len(pos)
    q = (2.0 * rng.standard_normal((T, H, D))).astype(np.float32)
    k = rng.standard_normal((n_ctx, Hkv, D)).astype(np.float16)
    v = rng.standard_normal((n_ctx, Hkv, D)).astype(np.float16)
    scale = D ** -0.5
    want = attention_f16(q, k, v, pos, scale, "scalar")
    np.testing.assert_allclose(want, reference(q, k, v, pos, scale), rtol=0, atol=2e-5)
    got = attention_f16(q, k, v, pos, scale, level)
    bad = np.argwhere(got.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, f"{level}: {len(bad)} values differ from the scalar kernel, first at {bad[0]}"


@pytest.mark.parametrize("level", _levels())
def test_simd_attention_extreme_scores(level):
    """Large score ranges: exp takes its flush-to-0 branch (|n| > 192) and
    underflows to subnormals (those vanish when the weights round to F16)."""
    rng = np.random.default_rng(5)
    H, Hkv, D, n_ctx = 2, 1, 64, 130
    q = (30.0 * rng.standard_normal((1, H, D))).astype(np.float32)
    k = (8.0 * rng.standard_normal((n_ctx, Hkv, D))).astype(np.float16)
    v = rng.standard_normal((n_ctx, Hkv, D)).astype(np.float16)
    # scale 0.03: score gaps spread over about -300..0 (11-14 slots per head
    # in the subnormal band of exp, about half below its flush-to-0 cut)
    want = attention_f16(q, k, v, [n_ctx - 1], 0.03, "scalar")
    got = attention_f16(q, k, v, [n_ctx - 1], 0.03, level)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
