"""gs_sparse_index_remap: an active-neuron index restricted to a slice of the neurons (a hybrid
FFN's hot bucket), in the slice's compact ids.

Oracle: a numpy reference written from the header's contract (per token, the active ids the
map keeps, looked up, in order); for the use downstream, the full-width sparse product, whose
hot rows the compact product over the remapped index must reproduce bit for bit.
"""
import numpy as np
import pytest

from pyinfer._lib import GSRuntimeError, GSShapeError, GSTypeError, GSValueError
from pyinfer.tensor import Context, GGMLType, Graph


def make_index(rng, M, N, share):
    """idx {M + 1, N} as numpy (N, M + 1): per token a random ascending active list; the
    values after the count are garbage (the format leaves them unspecified)."""
    idx = rng.integers(-9, 2 * M + 9, size=(N, M + 1)).astype(np.int32)
    for t in range(N):
        ids = np.flatnonzero(rng.random(M) < share[t % len(share)]).astype(np.int32)
        idx[t, 0] = len(ids)
        idx[t, 1:1 + len(ids)] = ids
    return idx


def make_map(rng, M, hot_share, n_extra=0):
    """map {M}: the hot neurons numbered 0.. in order, -1 elsewhere; n_out = n_hot + n_extra
    (compact ids past the last hot neuron are allowed, never produced)."""
    hot = rng.random(M) < hot_share
    m = np.full(M, -1, dtype=np.int32)
    m[hot] = np.arange(hot.sum(), dtype=np.int32)
    return m, int(hot.sum()) + n_extra


def reference(idx, mapping, n_out):
    N = idx.shape[0]
    out = np.zeros((N, n_out + 1), dtype=np.int32)
    for t in range(N):
        kept = [mapping[i] for i in idx[t, 1:1 + idx[t, 0]] if mapping[i] >= 0]
        out[t, 0] = len(kept)
        out[t, 1:1 + len(kept)] = kept
    return out


def run_remap(idx, mapping, n_out, pool, n_threads):
    with Context(8 << 20) as ctx:
        out = ctx.sparse_index_remap(ctx.from_numpy(idx, "idx"), ctx.from_numpy(mapping, "map"), n_out)
        assert out.type == GGMLType.I32 and out.ne[:2] == (n_out + 1, idx.shape[0])
        Graph(ctx).build(out).plan(n_threads).compute(pool)
        return out.numpy().reshape(idx.shape[0], n_out + 1).copy()


def assert_lists_equal(got, want):
    """Equal counts and ids (the values after each count are unspecified)."""
    np.testing.assert_array_equal(got[:, 0], want[:, 0])
    for t in range(want.shape[0]):
        c = want[t, 0]
        np.testing.assert_array_equal(got[t, 1:1 + c], want[t, 1:1 + c])


@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize("M,N", [(1, 1), (7, 3), (64, 1), (1000, 5), (1024, 17)])
def test_remap_matches_numpy(pools, M, N, nt):
    rng = np.random.default_rng(M * 31 + N * 7 + nt)
    for hot_share, shares, extra in ((0.3, [0.5], 0), (0.7, [0.0, 1.0, 0.2], 3), (0.0, [0.6], 0),
                                     (1.0, [0.4, 1.0], 0)):
        idx = make_index(rng, M, N, shares)
        mapping, n_out = make_map(rng, M, hot_share, extra)
        want = reference(idx, mapping, n_out)
        got = run_remap(idx, mapping, n_out, pools[nt], nt)
        assert_lists_equal(got, want)
        # the produced lists are valid indices over n_out neurons: ascending, in range
        for t in range(N):
            ids = got[t, 1:1 + got[t, 0]]
            assert np.all(np.diff(ids) > 0) and np.all((ids >= 0) & (ids < max(n_out, 1)))


def test_identity_map_and_empty_slice(pools):
    rng = np.random.default_rng(5)
    idx = make_index(rng, 300, 4, [0.1, 0.9, 0.0, 1.0])
    got = run_remap(idx, np.arange(300, dtype=np.int32), 300, pools[2], 2)
    assert_lists_equal(got, idx)                                  # every neuron hot: the index itself
    got = run_remap(idx, np.full(300, -1, dtype=np.int32), 0, pools[2], 2)
    np.testing.assert_array_equal(got, np.zeros((4, 1), dtype=np.int32))


@pytest.mark.parametrize("wtype", [GGMLType.F32, GGMLType.Q4_0])
def test_compact_product_equals_the_full_products_hot_rows(pools, wtype):
    """mul_mat_sparse over the hot rows stored compactly, with the remapped index, gives the
    full-width sparse product's entries of the active hot neurons bit for bit (one token at a
    time: each computed entry is the dense dot), and 0 for the inactive ones."""
    rng = np.random.default_rng(int(wtype) + 1)
    E, M = 256, 512
    w = (rng.standard_normal((M, E)) * 0.1).astype(np.float32)
    mapping, n_hot = make_map(rng, M, 0.3)
    hot = np.flatnonzero(mapping >= 0)
    for t in range(3):
        h = rng.standard_normal((1, E)).astype(np.float32)
        idx = make_index(rng, M, 1, [0.4])
        with Context(16 << 20) as ctx:
            full_w = ctx.from_numpy(w, t=wtype)
            hot_w = ctx.new_tensor(wtype, (E, n_hot))
            hot_w.raw().reshape(n_hot, -1)[...] = full_w.raw().reshape(M, -1)[hot]
            x, ix = ctx.from_numpy(h), ctx.from_numpy(idx)
            full = ctx.mul_mat_sparse(full_w, x, ix)
            part = ctx.mul_mat_sparse(hot_w, x, ctx.sparse_index_remap(ix, ctx.from_numpy(mapping), n_hot))
            Graph(ctx).build(full).build(part).plan(2).compute(pools[2])
            f, p = full.numpy().reshape(-1), part.numpy().reshape(-1)
            active = np.zeros(M, dtype=bool)
            active[idx[0, 1:1 + idx[0, 0]]] = True
            np.testing.assert_array_equal(p, np.where(active[hot], f[hot], 0.0).astype(np.float32))
            assert p.tobytes() == np.where(active[hot], f[hot], 0.0).astype(np.float32).tobytes()


def test_build_errors():
    with Context(1 << 20) as ctx:
        idx = ctx.from_numpy(np.zeros((2, 9), dtype=np.int32), "idx")        # M = 8, 2 tokens
        mapping = ctx.from_numpy(np.full(8, -1, dtype=np.int32), "map")
        with pytest.raises(GSTypeError, match="'idx_f'.*expected i32"):
            f = ctx.from_numpy(np.zeros((2, 9), dtype=np.float32), "idx_f")
            ctx.sparse_index_remap(f, mapping, 4)
        with pytest.raises(GSTypeError, match="'map_f'.*expected i32"):
            ctx.sparse_index_remap(idx, ctx.from_numpy(np.zeros(8, dtype=np.float32), "map_f"), 4)
        with pytest.raises(GSShapeError, match="'map7'.*one value per neuron"):
            ctx.sparse_index_remap(idx, ctx.from_numpy(np.full(7, -1, dtype=np.int32), "map7"), 4)
        with pytest.raises(GSShapeError, match="index must be contiguous"):
            ctx.sparse_index_remap(ctx.transpose(idx), mapping, 4)
        with pytest.raises(GSShapeError, match="index must be contiguous"):
            ctx.sparse_index_remap(ctx.from_numpy(np.zeros((2, 2, 9), dtype=np.int32)), mapping, 4)
        with pytest.raises(GSShapeError, match="M >= 1"):
            ctx.sparse_index_remap(ctx.from_numpy(np.zeros((2, 1), dtype=np.int32)),
                                   ctx.from_numpy(np.zeros(1, dtype=np.int32)), 1)
        with pytest.raises(GSValueError, match="n_out is -1"):
            ctx.sparse_index_remap(idx, mapping, -1)
        with pytest.raises(GSValueError, match="n_out is 2147483647"):
            ctx.sparse_index_remap(idx, mapping, 2 ** 31 - 1)


@pytest.mark.parametrize("case,msg", [
    ("map_below", r"map 'map': entry 3 is -2"),
    ("map_at_n_out", r"map 'map': entry 5 is 4; .*\[0, 4\)"),
    ("map_repeat", r"map 'map': entry 5 is 1;.*increasing"),
    ("map_down", r"map 'map': entry 6 is 0;.*increasing"),
    ("idx_count", r"sparse index 'idx', token 1"),
    ("idx_range", r"sparse index 'idx', token 0"),
    ("idx_order", r"sparse index 'idx', token 1"),
])
def test_run_errors(pools, case, msg):
    M, n_out = 8, 4
    mapping = np.array([-1, 0, -1, -1, 1, 2, -1, 3], dtype=np.int32)
    idx = np.zeros((2, M + 1), dtype=np.int32)
    idx[0, :4] = [3, 1, 4, 7]
    idx[1, :3] = [2, 0, 5]
    if case == "map_below":
        mapping[3] = -2
    elif case == "map_at_n_out":
        mapping[5] = 4
    elif case == "map_repeat":
        mapping[5] = 1
    elif case == "map_down":
        mapping[6] = 0
    elif case == "idx_count":
        idx[1, 0] = M + 1
    elif case == "idx_range":
        idx[0, 3] = M
    elif case == "idx_order":
        idx[1, 1:3] = [5, 5]
    for nt in (1, 2):
        with Context(1 << 20) as ctx:
            out = ctx.sparse_index_remap(ctx.from_numpy(idx, "idx"), ctx.from_numpy(mapping, "map"), n_out)
            g = Graph(ctx).build(out).plan(nt)
            with pytest.raises(GSRuntimeError, match=msg):
                g.compute(pools[nt])
    # the same inputs but the fault: fine
    good_map = np.array([-1, 0, -1, -1, 1, 2, -1, 3], dtype=np.int32)
    good_idx = np.zeros((2, M + 1), dtype=np.int32)
    good_idx[0, :4] = [3, 1, 4, 7]
    good_idx[1, :3] = [2, 0, 5]
    got = run_remap(good_idx, good_map, n_out, pools[2], 2)
    assert got[0, :4].tolist() == [3, 0, 1, 3] and got[1, :2].tolist() == [1, 2]
