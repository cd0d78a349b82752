"""The mixture-of-experts ops (gs_moe.h): gs_top_k, gs_mul_mat_id, gs_map_ids,
gs_moe_weights, gs_moe_sum, and the router's sigmoid / softmax.

Oracles:
- top_k: a stable descending sort written here (NaN last), exact;
- mul_mat_id: per (token, slot) the dense gs_mul_mat of the chosen expert's
  {K, M} matrix with the token's one row (its single-token order), bit for
  bit, for every weight type; and numpy (float64) with the weights
  dequantized by gguf.quants, within the activation quantization's rounding
  (half a step of each 32/256-block, summed over |w|);
- map_ids, moe_weights, moe_sum: numpy / Python floats doing the documented
  arithmetic step by step, bit for bit.
Every graph runs on 1, 2 and 3 threads, which must give the same bytes; a
token's expert rows must be the same bytes alone and inside a batch of 7.
"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants as gq

from pyinfer._lib import GSRuntimeError, GSShapeError, GSTypeError, GSValueError
from pyinfer.backend import Backend, place, plan_backends, splits
from pyinfer.tensor import Context, GGMLType, Graph, ThreadPool, Unary, quantize

T = GGMLType
WEIGHT_TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K]
K_TYPES = (T.Q4_K, T.Q5_K, T.Q6_K)


@pytest.fixture(scope="module")
def pools3():
    with ThreadPool(1) as p1, ThreadPool(2) as p2, ThreadPool(3) as p3:
        yield {1: p1, 2: p2, 3: p3}


def run3(pools3, build, mem=32 << 20, threads=(1, 2, 3)):
    """Outputs of the graph `build(ctx)` makes (a tensor or a list), computed on 1, 2 and 3
    threads (or `threads`); asserts they give the same bytes."""
    results = []
    for n in threads:
        with Context(mem) as ctx:
            outs = build(ctx)
            single = not isinstance(outs, (list, tuple))
            outs = [outs] if single else list(outs)
            Graph(ctx).build(*outs).plan(n).compute(pools3[n])
            results.append([o.numpy().copy() for o in outs])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes(), "thread counts disagree"
    return results[0][0] if single else results[0]


def weights3(ctx, t, w):
    """An {K, M, E} tensor of type t from float experts w (E, M, K)."""
    tensor = ctx.new_tensor(t, w.shape[::-1], "experts")
    tensor.raw()[:] = quantize(w.reshape(-1, w.shape[-1]), t).reshape(-1)
    return tensor


def dequantized(t, w):
    raw = quantize(w.reshape(-1, w.shape[-1]), t)
    if t == T.F32:
        out = raw.view(np.float32)
    elif t == T.F16:
        out = raw.view(np.float16)
    elif t == T.BF16:
        out = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        out = gq.dequantize(raw, QT(int(t)))
    return out.astype(np.float64).reshape(w.shape)


# ---- top_k -------------------------------------------------------------------------
def top_k_oracle(x, k):
    """Stable descending order, NaN after every number."""
    return np.array([sorted(range(len(row)), key=lambda j: (bool(np.isnan(row[j])),
                                                            0.0 if np.isnan(row[j]) else -float(row[j]), j))[:k]
                     for row in x], dtype=np.int32)


@pytest.mark.parametrize("n,k", [(64, 8), (8, 2), (60, 1), (16, 16), (128, 6)])
def test_top_k_matches_stable_sort(pools3, rng, n, k):
    x = rng.standard_normal((9, n)).astype(np.float32)
    x[1] = np.round(x[1])                       # many ties
    x[2] = 0.5                                  # all tied: 0, 1, 2, ...
    x[3, ::3] = np.nan                          # NaNs go last
    x[4] = np.nan
    x[5, : n // 2] = -np.inf
    x[6, ::2] = -0.0                            # -0 and +0 tie
    x[6, 1::2] = 0.0
    got = run3(pools3, lambda ctx: ctx.top_k(ctx.from_numpy(x), k))
    np.testing.assert_array_equal(got, top_k_oracle(x, k))
    np.testing.assert_array_equal(got[2], np.arange(k))
    assert got.dtype == np.int32 and got.shape == (9, k)


def test_top_k_nan_ranks_below_minus_infinity(pools3):
    x = np.array([[np.nan, -np.inf, 1.0, np.nan, 2.0, 2.0]], dtype=np.float32)
    got = run3(pools3, lambda ctx: ctx.top_k(ctx.from_numpy(x), 6))
    np.testing.assert_array_equal(got, [[4, 5, 2, 1, 0, 3]])


# ---- sigmoid and the router's softmax ------------------------------------------------
def test_sigmoid_and_softmax_over_experts(pools3, rng):
    x = (rng.standard_normal((5, 64)) * 6).astype(np.float32)
    x[0, :4] = [0.0, -100.0, 100.0, -0.0]
    sig, sm = run3(pools3, lambda ctx: [ctx.unary(ctx.from_numpy(x), Unary.SIGMOID),
                                        ctx.soft_max(ctx.from_numpy(x))])
    xd = x.astype(np.float64)
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-xd)), rtol=3e-7, atol=1e-30)
    assert sig[0, 0] == 0.5 and sig[0, 1] == 0.0 and sig[0, 2] == 1.0
    e = np.exp(xd - xd.max(axis=1, keepdims=True))
    np.testing.assert_allclose(sm, e / e.sum(axis=1, keepdims=True), rtol=2e-6, atol=1e-9)


# ---- mul_mat_id ------------------------------------------------------------------------
def mixed_ids(rng, n_tokens, n_used, n_expert, minus_one=True):
    """Distinct experts per token, overlapping between tokens; a few -1 slots."""
    ids = np.stack([rng.permutation(n_expert)[:n_used] for _ in range(n_tokens)]).astype(np.int32)
    ids[0] = np.arange(n_used)[::-1]                # tokens 0 and 1 share experts
    if n_tokens > 1:
        ids[1] = np.arange(n_used)
    if minus_one and n_tokens > 2:
        ids[2, 0] = -1
        ids[n_tokens - 1, n_used - 1] = -1
    return ids


def mul_mat_id(pools3, t, w, x, ids, threads=(1, 2, 3)):
    return run3(pools3, lambda ctx: ctx.mul_mat_id(weights3(ctx, t, w), ctx.from_numpy(x), ctx.from_numpy(ids)),
                threads=threads)


def dense_rows(pools, t, w, x, ids):
    """Per (token, slot): gs_mul_mat of the chosen expert with that one row (zeros for -1)."""
    n_tok, n_used = ids.shape
    out = np.zeros((n_tok, n_used, w.shape[1]), dtype=np.float32)
    with Context(32 << 20) as ctx:
        mats = [ctx.from_numpy(w[e]) if t == T.F32 else ctx.from_numpy(w[e], t=t) for e in range(w.shape[0])]
        rows, where = [], []
        for i in range(n_tok):
            for u in range(n_used):
                if ids[i, u] >= 0:
                    xr = x[i, 0 if x.shape[1] == 1 else u][None, :]
                    rows.append(ctx.mul_mat(mats[ids[i, u]], ctx.from_numpy(xr)).set_output())
                    where.append((i, u))
        Graph(ctx, 1024).build(*rows).plan(2).compute(pools[2])
        for (i, u), r in zip(where, rows):
            out[i, u] = r.numpy()[0]
    return out


def activation_budget(t, wd, x, ids):
    """|error| bound of the activation quantization: half a step (amax / 127) of each
    block times the block's sum |w|; float types: 2^-8 relative (bf16) of sum |w x|."""
    n_tok, n_used = ids.shape
    blk = 256 if t in K_TYPES else 32
    out = np.zeros((n_tok, n_used, wd.shape[1]))
    for i in range(n_tok):
        for u in range(n_used):
            if ids[i, u] < 0:
                continue
            xr = x[i, 0 if x.shape[1] == 1 else u].astype(np.float64)
            w = np.abs(wd[ids[i, u]])
            if t in (T.F32, T.F16, T.BF16):
                out[i, u] = w @ np.abs(xr) * 2.0 ** -8 + 1e-6
            else:
                amax = np.abs(xr).reshape(-1, blk).max(axis=1)
                out[i, u] = (w.reshape(w.shape[0], -1, blk).sum(axis=2) * (amax / 127 / 2 * 1.01)).sum(axis=1) + 1e-5
    return out


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_b", ["broadcast", "per-slot"])
def test_mul_mat_id_every_type(pools3, pools, rng, t, n_b):
    K, M, E, n_used, n_tok = 256, 40, 6, 3, 7
    w = rng.standard_normal((E, M, K)).astype(np.float32)
    x = rng.standard_normal((n_tok, 1 if n_b == "broadcast" else n_used, K)).astype(np.float32)
    ids = mixed_ids(rng, n_tok, n_used, E)
    got = mul_mat_id(pools3, t, w, x, ids)
    assert got.shape == (n_tok, n_used, M) and got.dtype == np.float32
    assert np.all(got[ids < 0] == 0)
    # exact: the dense product of the chosen expert, token by token
    assert got.tobytes() == dense_rows(pools, t, w, x, ids).tobytes()
    # values: numpy with the stored weights
    wd = dequantized(t, w)
    for i in range(n_tok):
        for u in range(n_used):
            if ids[i, u] >= 0:
                want = wd[ids[i, u]] @ x[i, 0 if n_b == "broadcast" else u].astype(np.float64)
                err = np.abs(got[i, u] - want)
                assert np.all(err <= activation_budget(t, wd, x, ids)[i, u]), (i, u, err.max())


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
def test_mul_mat_id_token_alone_equals_token_in_batch(pools3, rng, level, t):
    """Bit-identical rows whatever the batch: 7 tokens with mixed (shared, distinct, -1)
    experts, 40 of them sharing expert 2 (so experts get column tiles of 16 and a rest),
    against each token computed alone."""
    K, M, E, n_used = 256, 36, 5, 2
    n_tok = 7
    w = rng.standard_normal((E, M, K)).astype(np.float32)
    x = rng.standard_normal((n_tok + 40, 1, K)).astype(np.float32)
    ids = np.concatenate([mixed_ids(rng, n_tok, n_used, E), np.tile([[2, 4]], (40, 1)).astype(np.int32)])
    batch = mul_mat_id(pools3, t, w, x, ids)
    for i in list(range(n_tok)) + [n_tok + 17]:
        alone = mul_mat_id(pools3, t, w, x[i:i + 1], ids[i:i + 1], threads=(2,))
        assert alone.tobytes() == batch[i:i + 1].tobytes(), i


def test_mul_mat_id_minus_one_gives_zeros_and_spares_the_rest(pools3, rng):
    K, M, E = 64, 24, 4
    w = rng.standard_normal((E, M, K)).astype(np.float32)
    x = rng.standard_normal((3, 1, K)).astype(np.float32)
    ids = np.array([[1, -1], [-1, -1], [3, 0]], dtype=np.int32)
    got = mul_mat_id(pools3, T.Q8_0, w, x, ids)
    assert np.all(got[0, 1] == 0) and np.all(got[1] == 0)
    full = mul_mat_id(pools3, T.Q8_0, w, x, np.array([[1, 2], [0, 1], [3, 0]], dtype=np.int32))
    assert got[0, 0].tobytes() == full[0, 0].tobytes() and got[2].tobytes() == full[2].tobytes()


def test_mul_mat_id_single_token_equals_mul_mat(pools3, rng):
    """Decode: one token, top-8 of 16 experts, equals gs_mul_mat per expert (Q4_K, GEMV path)."""
    K, M, E = 512, 64, 16
    w = rng.standard_normal((E, M, K)).astype(np.float32)
    x = rng.standard_normal((1, 1, K)).astype(np.float32)
    ids = rng.permutation(E)[:8].astype(np.int32)[None, :]
    got = mul_mat_id(pools3, T.Q4_K, w, x, ids)
    assert got.tobytes() == dense_rows({2: pools3[2]}, T.Q4_K, w, x, ids).tobytes()


@pytest.mark.parametrize("bad", [5, -2, 1 << 30])
def test_mul_mat_id_bad_id_is_a_runtime_error(pools3, rng, bad):
    w = rng.standard_normal((5, 8, 32)).astype(np.float32)
    ids = np.array([[0, 1], [2, bad]], dtype=np.int32)
    for n in (1, 3):
        with Context(4 << 20) as ctx:
            out = ctx.mul_mat_id(weights3(ctx, T.Q8_0, w), ctx.from_numpy(np.ones((2, 1, 32), np.float32)),
                                 ctx.from_numpy(ids))
            g = Graph(ctx).build(out).plan(n)
            with pytest.raises(GSRuntimeError, match=rf"expert id {bad} \(slot 1 of token 1\).*outside 0\.\.4"):
                g.compute(pools3[n])


def test_moe_ops_run_on_the_standin_device(pools, rng):
    """Experts placed on the stand-in device: mul_mat_id runs there (where its weights
    live), the ops reading its result follow it, and the bytes are the CPU's."""
    K, M, E = 64, 32, 4
    w = rng.standard_normal((E, M, K)).astype(np.float32)
    x = rng.standard_normal((3, 1, K)).astype(np.float32)
    probs = rng.random((3, E)).astype(np.float32)
    ids = np.array([[0, 3], [2, -1], [3, 1]], dtype=np.int32)
    mp = np.array([1, 0, 3, 2], dtype=np.int32)

    def build(ctx, dev=None):
        a = weights3(ctx, T.Q4_0, w)
        if dev is not None:
            place(a, dev)
        i = ctx.map_ids(ctx.from_numpy(ids), ctx.from_numpy(mp))
        mm = ctx.mul_mat_id(a, ctx.from_numpy(x), i)
        top = ctx.top_k(ctx.reshape(mm, (M, 6)), 3)
        wts = ctx.moe_weights(ctx.from_numpy(probs), ctx.from_numpy(np.abs(ids)), True, 1.0)
        return [ctx.moe_sum(mm, wts).set_output(), top.set_output(), mm.set_output()]

    with Context(8 << 20) as ctx:
        outs = build(ctx)
        Graph(ctx).build(*outs).plan(2).compute(pools[2])
        want = [o.numpy().copy() for o in outs]
    with Backend.standin(4 << 20, n_threads=2) as dev, Context(8 << 20) as ctx:
        outs = build(ctx, dev)
        g = plan_backends(Graph(ctx).build(*outs), [Backend.cpu(), dev], 2)
        assert "standin" in [s.backend for s in splits(g)]
        g.compute(pools[2])
        for o, ww in zip(outs, want):
            assert o.numpy().tobytes() == ww.tobytes()


# ---- map_ids, moe_weights, moe_sum ---------------------------------------------------
def test_map_ids(pools3, rng):
    E = 10
    mp = np.array([3, -1, 0, 7, -1, 1, 2, -1, 4, 5], dtype=np.int32)
    ids = rng.integers(-1, E, size=(6, 4)).astype(np.int32)
    got = run3(pools3, lambda ctx: ctx.map_ids(ctx.from_numpy(ids), ctx.from_numpy(mp)))
    np.testing.assert_array_equal(got, np.where(ids < 0, -1, mp[np.maximum(ids, 0)]))
    assert got.dtype == np.int32


@pytest.mark.parametrize("bad", [10, -2])
def test_map_ids_bad_id(pools3, bad):
    with Context(1 << 20) as ctx:
        out = ctx.map_ids(ctx.from_numpy(np.array([[1, bad]], np.int32)), ctx.from_numpy(np.arange(10, dtype=np.int32)))
        with pytest.raises(GSRuntimeError, match=rf"id {bad} at 1 .*outside -1\.\.9"):
            Graph(ctx).build(out).plan(2).compute(pools3[2])


def moe_weights_oracle(probs, ids, norm, scale):
    f = np.float32
    out = np.zeros(ids.shape, dtype=np.float32)
    for t in range(ids.shape[0]):
        w = [f(probs[t, e]) for e in ids[t]]
        if norm:
            s = 0.0                                   # a Python float: double
            for v in w:
                s += float(v)
            s = max(f(s), f(6.103515625e-5))
            w = [f(v / s) for v in w]
        if scale != 1.0:
            w = [f(v * f(scale)) for v in w]
        out[t] = w
    return out


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_moe_weights(pools3, rng, norm, scale):
    E, k, n = 16, 4, 9
    probs = rng.random((n, E)).astype(np.float32) ** 3
    probs[3] = 0.0                                  # the clamp: 0 / 6.1e-5
    probs[4] = 1e-9
    ids = np.stack([rng.permutation(E)[:k] for _ in range(n)]).astype(np.int32)
    got = run3(pools3, lambda ctx: ctx.moe_weights(ctx.from_numpy(probs), ctx.from_numpy(ids), norm, scale))
    want = moe_weights_oracle(probs, ids, norm, scale)
    assert got.tobytes() == want.tobytes()
    if norm:
        np.testing.assert_allclose(got[np.array([0, 1, 2, 5])].sum(axis=1), scale, rtol=1e-6)


@pytest.mark.parametrize("bad", [-1, 16])
def test_moe_weights_bad_id(pools3, bad):
    with Context(1 << 20) as ctx:
        out = ctx.moe_weights(ctx.from_numpy(np.ones((2, 16), np.float32)),
                              ctx.from_numpy(np.array([[0, 1], [bad, 2]], np.int32)), True, 1.0)
        with pytest.raises(GSRuntimeError, match=rf"expert id {bad} \(slot 0 of token 1\)"):
            Graph(ctx).build(out).plan(3).compute(pools3[3])


@pytest.mark.parametrize("k", [1, 2, 8])
def test_moe_sum(pools3, rng, k):
    E, n = 96, 5
    ex = rng.standard_normal((n, k, E)).astype(np.float32)
    w = rng.random((n, k)).astype(np.float32)
    got = run3(pools3, lambda ctx: ctx.moe_sum(ctx.from_numpy(ex), ctx.from_numpy(w)))
    want = ex[:, 0] * w[:, :1]
    for u in range(1, k):
        want = want + ex[:, u] * w[:, u:u + 1]      # float32: one rounding per product and sum
    assert got.tobytes() == want.astype(np.float32).tobytes()


def test_moe_ffn_composition_matches_numpy(pools3, rng):
    """softmax -> top_k -> weights -> gate/up/down mul_mat_id -> swiglu -> moe_sum (F32
    experts) against float64 numpy."""
    n_embd, n_ff, E, k, n = 64, 96, 8, 2, 4
    h = rng.standard_normal((n, n_embd)).astype(np.float32)
    router = (rng.standard_normal((E, n_embd)) * 0.3).astype(np.float32)
    gate = (rng.standard_normal((E, n_ff, n_embd)) * 0.1).astype(np.float32)
    up = (rng.standard_normal((E, n_ff, n_embd)) * 0.1).astype(np.float32)
    down = (rng.standard_normal((E, n_embd, n_ff)) * 0.1).astype(np.float32)

    def build(ctx):
        x = ctx.from_numpy(h)
        probs = ctx.soft_max(ctx.mul_mat(ctx.from_numpy(router), x))
        ids = ctx.top_k(probs, k)
        wts = ctx.moe_weights(probs, ids, True, 1.0)
        xb = ctx.reshape(x, (n_embd, 1, n))
        g = ctx.mul_mat_id(ctx.from_numpy(gate), xb, ids)
        u = ctx.mul_mat_id(ctx.from_numpy(up), xb, ids)
        d = ctx.mul_mat_id(ctx.from_numpy(down), ctx.glu(g, u, Unary.SILU), ids)
        return [ctx.moe_sum(d, wts).set_output(), ids.set_output()]

    got, ids = run3(pools3, build)
    hd = h.astype(np.float64)
    z = hd @ router.astype(np.float64).T
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    want = np.zeros((n, n_embd))
    for t in range(n):
        sel = np.argsort(-p[t], kind="stable")[:k]
        np.testing.assert_array_equal(ids[t], sel)
        ws = p[t, sel] / p[t, sel].sum()
        for e, wt in zip(sel, ws):
            a = gate[e] @ hd[t]
            a = a / (1 + np.exp(-a)) * (up[e] @ hd[t])
            want[t] += wt * (down[e] @ a)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ---- argument errors ---------------------------------------------------------------------
def test_argument_errors():
    with Context(4 << 20) as ctx:
        a = ctx.new_tensor(T.F32, (16, 3))
        with pytest.raises(GSValueError, match="k = 0 must be in 1..16"):
            ctx.top_k(a, 0)
        with pytest.raises(GSValueError, match="k = 17"):
            ctx.top_k(a, 17)
        with pytest.raises(GSTypeError, match="expected f32"):
            ctx.top_k(ctx.new_tensor(T.F16, (16, 3)), 2)
        with pytest.raises(GSShapeError, match="2-D"):
            ctx.top_k(ctx.new_tensor(T.F32, (16, 3, 2)), 2)

        w = ctx.new_tensor(T.Q4_0, (64, 32, 4))
        ids = ctx.new_tensor(T.I32, (2, 5))
        with pytest.raises(GSShapeError, match="ne0 differs"):
            ctx.mul_mat_id(w, ctx.new_tensor(T.F32, (32, 1, 5)), ids)
        with pytest.raises(GSShapeError, match="token count"):
            ctx.mul_mat_id(w, ctx.new_tensor(T.F32, (64, 1, 4)), ids)
        with pytest.raises(GSShapeError, match="1 \\(broadcast\\) or n_used"):
            ctx.mul_mat_id(w, ctx.new_tensor(T.F32, (64, 3, 5)), ids)
        with pytest.raises(GSTypeError, match="expected i32"):
            ctx.mul_mat_id(w, ctx.new_tensor(T.F32, (64, 1, 5)), ctx.new_tensor(T.F32, (2, 5)))
        with pytest.raises(GSTypeError, match="expected f32"):
            ctx.mul_mat_id(w, ctx.new_tensor(T.F16, (64, 1, 5)), ids)
        with pytest.raises(GSTypeError, match="weight type"):
            ctx.mul_mat_id(ctx.new_tensor(T.I32, (64, 32, 4)), ctx.new_tensor(T.F32, (64, 1, 5)), ids)
        with pytest.raises(GSShapeError, match="3-D"):
            ctx.mul_mat_id(ctx.new_tensor(T.Q4_0, (64, 32, 2, 2)), ctx.new_tensor(T.F32, (64, 1, 5)), ids)

        with pytest.raises(GSTypeError, match="expected i32"):
            ctx.map_ids(ids, ctx.new_tensor(T.F32, (4,)))
        with pytest.raises(GSShapeError, match="map must be contiguous"):
            ctx.map_ids(ids, ctx.new_tensor(T.I32, (4, 2)))

        probs = ctx.new_tensor(T.F32, (8, 5))
        with pytest.raises(GSShapeError, match="token count"):
            ctx.moe_weights(probs, ctx.new_tensor(T.I32, (2, 4)), True, 1.0)
        with pytest.raises(GSValueError, match="scale must be finite"):
            ctx.moe_weights(probs, ids, True, float("nan"))
        with pytest.raises(GSTypeError, match="expected f32"):
            ctx.moe_weights(ctx.new_tensor(T.F16, (8, 5)), ids, True, 1.0)

        ex = ctx.new_tensor(T.F32, (16, 2, 5))
        with pytest.raises(GSShapeError, match="weights must be contiguous"):
            ctx.moe_sum(ex, ctx.new_tensor(T.F32, (3, 5)))
        with pytest.raises(GSShapeError, match="weights must be contiguous"):
            ctx.moe_sum(ex, ctx.new_tensor(T.F32, (2, 4)))
        with pytest.raises(GSTypeError, match="expected f32"):
            ctx.moe_sum(ex, ctx.new_tensor(T.I32, (2, 5)))


def test_repacked_experts_are_refused(rng):
    with Context(4 << 20) as ctx:
        w = ctx.from_numpy(rng.standard_normal((32, 64)).astype(np.float32), t=T.Q4_0)
        if not w.can_repack:
            pytest.skip("no repacking on this CPU")
        w.repack()
        with pytest.raises(GSTypeError, match="repacked"):
            ctx.mul_mat_id(w, ctx.new_tensor(T.F32, (64, 1, 1)), ctx.new_tensor(T.I32, (1, 1)))
