"""Op error paths: constructors reject bad shapes, types and parameters with
the matching exception; kernels report bad indices and positions as
GSRuntimeError from Graph.compute without writing; a graph cannot run before
it is planned or after its context is closed."""
import numpy as np
import pytest

from pyinfer._lib import GSRuntimeError, GSShapeError, GSStateError, GSTypeError, GSValueError
from pyinfer.tensor import Context, GGMLType, Graph
from op_util import i32


def test_constructor_errors():
    with Context(1 << 20) as ctx:
        a = ctx.new_tensor(GGMLType.F32, (8, 4))
        with pytest.raises(GSShapeError):
            ctx.add(a, ctx.new_tensor(GGMLType.F32, (3, 4)))
        with pytest.raises(ValueError):                                  # GSShapeError is a ValueError
            ctx.mul(a, ctx.new_tensor(GGMLType.F32, (8, 3)))
        with pytest.raises(GSTypeError):
            ctx.add(ctx.new_tensor(GGMLType.F16, (8, 4)), a)
        with pytest.raises(TypeError):
            ctx.get_rows(a, ctx.new_tensor(GGMLType.F32, (2,)))
        with pytest.raises(GSShapeError):
            ctx.mul_mat(a, ctx.new_tensor(GGMLType.F32, (6, 4)))
        with pytest.raises(GSShapeError, match="contiguous"):
            ctx.mul_mat(ctx.new_tensor(GGMLType.F32, (4, 8)), ctx.transpose(a))
        with pytest.raises(GSShapeError):
            ctx.soft_max(a, ctx.new_tensor(GGMLType.F32, (8, 2)))
        with pytest.raises(GSShapeError):
            ctx.set_rows(a, ctx.new_tensor(GGMLType.F32, (7, 2)), ctx.new_tensor(GGMLType.I32, (2,)))
        with pytest.raises(GSShapeError):
            ctx.cpy(a, ctx.new_tensor(GGMLType.F32, (8, 5)))


def test_rope_errors():
    with Context(1 << 20) as ctx:
        x = ctx.new_tensor(GGMLType.F32, (16, 2, 3))
        pos = ctx.new_tensor(GGMLType.I32, (3,))
        for n_dims in (0, 7, 18):
            with pytest.raises(GSValueError, match="n_dims"):
                ctx.rope(x, pos, n_dims)
        with pytest.raises(GSValueError):
            ctx.rope(x, pos, 16, mode=1)
        with pytest.raises(GSTypeError):
            ctx.rope(x, ctx.new_tensor(GGMLType.F32, (3,)), 16)
        with pytest.raises(GSShapeError):
            ctx.rope(x, ctx.new_tensor(GGMLType.I32, (2,)), 16)
        with pytest.raises(GSTypeError):
            ctx.rope(ctx.new_tensor(GGMLType.F16, (16, 2, 3)), pos, 16)


def test_attention_constructor_errors():
    with Context(1 << 20) as ctx:
        q = ctx.new_tensor(GGMLType.F32, (16, 6, 1))
        kv = ctx.new_tensor(GGMLType.F16, (16, 4, 8))
        pos = ctx.new_tensor(GGMLType.I32, (1,))
        with pytest.raises(GSShapeError, match="multiple"):
            ctx.attention(q, kv, kv, pos, 1.0)
        with pytest.raises(GSTypeError):
            ctx.attention(q, ctx.new_tensor(GGMLType.Q8_0, (32, 2, 8)), kv, pos, 1.0)
        with pytest.raises(GSShapeError):
            ctx.attention(q, ctx.new_tensor(GGMLType.F16, (8, 2, 8)), kv, pos, 1.0)


def _compute(ctx, out, pool):
    Graph(ctx).build(out).plan(pool.n_threads).compute(pool)


@pytest.mark.parametrize("bad", [16, -1])
def test_set_rows_out_of_range(pools, rng, bad):
    """A bad index fails the compute with GSRuntimeError and writes nothing."""
    with Context(1 << 20) as ctx:
        cache = ctx.from_numpy(np.full((16, 8), 7.0, dtype=np.float32))
        idx = i32(ctx, [3, bad])
        out = ctx.set_rows(cache, ctx.from_numpy(np.zeros((2, 8), dtype=np.float32)), idx)
        with pytest.raises(GSRuntimeError, match="set_rows.*out of range"):
            _compute(ctx, out, pools[2])
        assert np.all(cache.numpy() == 7.0)


def test_get_rows_out_of_range(pools):
    with Context(1 << 20) as ctx:
        table = ctx.new_tensor(GGMLType.Q8_0, (32, 4))
        for bad in (4, -2):
            out = ctx.get_rows(table, i32(ctx, [0, bad, 1]))
            with pytest.raises(GSRuntimeError, match="get_rows"):
                _compute(ctx, out, pools[2])


@pytest.mark.parametrize("bad", [8, -1])
def test_attention_position_out_of_range(pools, bad):
    with Context(1 << 20) as ctx:
        q = ctx.new_tensor(GGMLType.F32, (16, 2, 2))
        kv = ctx.new_tensor(GGMLType.F16, (16, 1, 8))
        out = ctx.attention(q, kv, kv, i32(ctx, [0, bad]), 0.25)
        with pytest.raises(GSRuntimeError, match="position"):
            _compute(ctx, out, pools[1])


def test_runtime_error_then_recompute(pools):
    """After a failed compute, fixing the input and computing again works."""
    with Context(1 << 20) as ctx:
        table = ctx.from_numpy(np.arange(12, dtype=np.float32).reshape(3, 4))
        idx = i32(ctx, [2, 9])
        g = Graph(ctx).build(ctx.get_rows(table, idx)).plan(2)
        with pytest.raises(GSRuntimeError):
            g.compute(pools[2])
        idx.numpy()[:] = [2, 0]
        g.compute(pools[2])
        np.testing.assert_array_equal(g.nodes[-1].numpy(), [[8, 9, 10, 11], [0, 1, 2, 3]])


def test_moe_bad_expert_id_writes_nothing_then_recompute(pools):
    """gs_mul_mat_id: an expert id outside -1..n_expert-1 fails the compute before anything
    is written (the output keeps its bytes); with the id fixed the same graph runs."""
    with Context(1 << 20) as ctx:
        w = ctx.from_numpy(np.ones((3, 4, 32), dtype=np.float32))      # 3 experts {32, 4}
        ids = i32(ctx, [[0, 3]])
        out = ctx.mul_mat_id(w, ctx.from_numpy(np.ones((1, 1, 32), dtype=np.float32)), ids).set_output()
        g = Graph(ctx).build(out).plan(2)
        ids.numpy()[:] = [[0, 1]]
        g.compute(pools[2])
        out.numpy()[...] = 5.0
        ids.numpy()[:] = [[0, 3]]
        with pytest.raises(GSRuntimeError, match="expert id 3 .*outside 0..2"):
            g.compute(pools[2])
        assert np.all(out.numpy() == 5.0)
        ids.numpy()[:] = [[2, -1]]
        g.compute(pools[2])
        np.testing.assert_array_equal(out.numpy(), [[[32.0] * 4, [0.0] * 4]])


def test_unknown_unary_op():
    with Context(1 << 20) as ctx:
        a = ctx.new_tensor(GGMLType.F32, (8, 2))
        with pytest.raises(GSValueError, match="unknown unary op 6"):
            ctx.unary(a, 6)
        with pytest.raises(GSValueError, match="unknown unary op 99"):
            ctx.glu(a, a, 99)


def test_compute_before_plan_and_closed_context(pools):
    ctx = Context(1 << 20)
    x = ctx.from_numpy(np.ones((2, 4), dtype=np.float32))
    g = Graph(ctx).build(ctx.scale(x, 2.0))
    with pytest.raises(GSStateError, match="plan"):
        g.compute(pools[1])
    g.plan(1)
    ctx.close()
    with pytest.raises(GSStateError, match="closed"):
        g.compute(pools[1])
    with pytest.raises(GSStateError):
        x.numpy()
