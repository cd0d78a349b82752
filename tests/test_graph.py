"""Graph building, the memory planner, re-running graphs and the thread pool."""
import threading

import numpy as np
import pytest

from pyinfer._lib import GSMemoryError, GSRuntimeError, GSStateError, GSValueError, lib
from pyinfer.tensor import Context, GGMLType, Graph, ThreadPool, Unary

N = 4096                 # floats per tensor in the chains below (16 KiB)
BLOCK = N * 4


@pytest.fixture(scope="module")
def pool2():
    with ThreadPool(2) as pool:
        yield pool


def chain(ctx, x, n):
    """n element-wise nodes, each reading only the previous one."""
    y = x
    for i in range(n):
        y = ctx.scale(y, 1.0) if i % 2 else ctx.unary(y, Unary.RELU)
    return y


def test_planner_reuses_memory_in_a_chain(pool2):
    """A chain of 50 element-wise ops needs two live buffers at a time, so
    the plan takes two blocks, not fifty."""
    with Context(4 << 20) as ctx:
        x = ctx.from_numpy(np.arange(N, dtype=np.float32) - N / 2)
        y = chain(ctx, x, 50)
        g = Graph(ctx).build(y).plan(2)
        compute_bytes, work_bytes = g.mem()
        assert compute_bytes <= 2 * BLOCK
        assert work_bytes == 0
        g.compute(pool2)
        np.testing.assert_array_equal(y.numpy(), np.maximum(np.arange(N) - N / 2, 0))


def test_outputs_keep_their_values(pool2):
    """Nodes marked with set_output (and the built tensor) survive the rest
    of the graph; so does an intermediate that an output views."""
    with Context(4 << 20) as ctx:
        base = np.linspace(-3, 3, N, dtype=np.float32)
        x = ctx.from_numpy(base)
        first = ctx.scale(x, 2.0).set_output()
        middle = chain(ctx, first, 5)
        shaped = ctx.reshape(ctx.scale(middle, 3.0), (64, N // 64))   # output view of an intermediate
        last = chain(ctx, ctx.scale(middle, -1.0), 20)
        g = Graph(ctx).build(shaped).build(last).plan(2)
        assert g.mem()[0] >= 3 * BLOCK
        g.compute(pool2)
        np.testing.assert_array_equal(first.numpy(), 2 * base)
        np.testing.assert_array_equal(shaped.numpy().reshape(-1), 3 * np.maximum(2 * base, 0))
        np.testing.assert_array_equal(last.numpy(), np.zeros(N, dtype=np.float32))


def test_rerun_with_new_inputs_without_replanning(pool2):
    with Context(1 << 20) as ctx:
        x = ctx.from_numpy(np.zeros(8, dtype=np.float32))
        b = ctx.from_numpy(np.full(8, 0.5, dtype=np.float32))
        y = ctx.mul(ctx.add(x, b), b)
        g = Graph(ctx).build(y).plan(2)
        for v in (1.0, -2.0, 7.5):
            x.numpy()[:] = v
            g.compute(pool2)
            np.testing.assert_array_equal(y.numpy(), np.full(8, (v + 0.5) * 0.5, dtype=np.float32))


def test_graph_of_2000_nodes(pool2):
    with Context(8 << 20) as ctx:
        x = ctx.from_numpy(np.arange(16, dtype=np.float32))
        one = ctx.from_numpy(np.ones(16, dtype=np.float32))
        y = x
        for _ in range(2000):
            y = ctx.add(y, one)
        g = Graph(ctx, max_nodes=2000).build(y).plan(2)
        assert len(g.nodes) == 2000
        g.compute(pool2)
        np.testing.assert_array_equal(y.numpy(), np.arange(16) + 2000.0)
        assert g.mem()[0] <= 2 * 128


def test_graph_full():
    with Context(1 << 20) as ctx:
        x = ctx.from_numpy(np.ones(4, dtype=np.float32))
        with pytest.raises(GSMemoryError, match="full"):
            Graph(ctx, max_nodes=5).build(chain(ctx, x, 6))


def test_many_small_computes_back_to_back(pool2):
    """1000 computes in a row on a 2-thread pool, each with new input."""
    with Context(1 << 20) as ctx:
        x = ctx.from_numpy(np.zeros(64, dtype=np.float32))
        y = ctx.scale(ctx.unary(x, Unary.RELU), 0.5)
        g = Graph(ctx).build(y).plan(2)
        xs, ys = x.numpy(), y.numpy()
        for i in range(1000):
            xs[:] = i
            g.compute(pool2)
            assert ys[0] == i * 0.5 and ys[63] == i * 0.5


def test_thread_counts_against_the_plan():
    """A graph runs on min(planned, pool) threads: a bigger pool leaves threads idle
    (decode on n_threads beside prompts on n_threads_batch), a smaller one is fine.
    Rows are split by the active count, so results are identical."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 37)).astype(np.float32)
    b = rng.standard_normal((3, 37)).astype(np.float32)
    outs = []
    with Context(1 << 22) as ctx, ThreadPool(1) as pool1, ThreadPool(3) as pool3:
        y = ctx.mul_mat(ctx.from_numpy(a), ctx.from_numpy(b))
        g = Graph(ctx).build(y)
        for planned, pool in [(2, pool3), (2, pool1), (1, pool3), (3, pool3), (3, pool1)]:
            g.plan(planned)
            for _ in range(3):     # pools reused across plans of other sizes
                g.compute(pool)
                outs.append(y.numpy().copy())
    np.testing.assert_allclose(outs[0], b @ a.T, rtol=1e-5, atol=1e-5)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_state_errors():
    with pytest.raises(GSValueError):
        ThreadPool(0)
    with Context(1 << 20) as ctx:
        x = ctx.from_numpy(np.ones(4, dtype=np.float32))
        g = Graph(ctx).build(ctx.scale(x, 2.0))
        with pytest.raises(GSStateError):
            g.mem()
        g.plan(1)
        g.build(ctx.scale(x, 3.0))            # new nodes: plan again before computing
        with ThreadPool(1) as pool, pytest.raises(GSStateError, match="plan"):
            g.compute(pool)
    with Context(1 << 20, no_alloc=True) as ctx:
        x = ctx.new_tensor(GGMLType.F32, (4,))
        x.name = "no_data"
        with pytest.raises(GSStateError, match="no_data"):
            Graph(ctx).build(ctx.scale(x, 2.0)).plan(1)


def test_pool_survives_failed_compute(pool2):
    """A kernel error stops the graph on every thread; the pool stays usable."""
    with Context(1 << 20) as ctx:
        table = ctx.from_numpy(np.eye(4, dtype=np.float32))
        idx = ctx.from_numpy(np.array([1, 4], dtype=np.int32))
        rows = ctx.get_rows(table, idx)
        y = chain(ctx, rows, 4)
        g = Graph(ctx).build(y).plan(2)
        for _ in range(20):
            with pytest.raises(GSRuntimeError):
                g.compute(pool2)
        idx.numpy()[1] = 3
        g.compute(pool2)
        np.testing.assert_array_equal(y.numpy(), np.eye(4, dtype=np.float32)[[1, 3]])



def test_deep_graph_builds_on_a_small_stack():
    """Building walks the graph without recursion: a 30000-node chain builds
    and plans (into two buffers) on a thread with a 256 KiB stack."""
    result = {}

    def work():
        with Context(16 << 20) as ctx:
            y = ctx.from_numpy(np.ones(4, dtype=np.float32))
            for _ in range(30000):
                y = ctx.scale(y, 1.0)
            g = Graph(ctx, max_nodes=30000).build(y).plan(1)
            result["n"], result["mem"] = lib.gs_graph_n_nodes(g.ptr), g.mem()[0]

    old = threading.stack_size(256 << 10)
    try:
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
    finally:
        threading.stack_size(old)
    assert result == {"n": 30000, "mem": 2 * 64}
