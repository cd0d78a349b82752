"""Concurrent device splits (gs_backend.h, Concurrency) and device memory owned by contexts.

The hybrid FFN as the graph builder lays it out (model/sparse_hybrid.py): per layer, the hot
neurons' rows on the device - remap(idx) -> idx_hot, the two sparse products, relu, mul, the
axpy - then the cold rows on the CPU (skip = gpu_idx), then their sum. gs_graph_compute queues
the hot split on the stand-in device and runs the cold split on the CPU pool meanwhile.

Oracles: the same nodes planned on the CPU alone (the stand-in runs the CPU kernels, so the
bits must be equal), numpy in float64 for the values, CLOCK_MONOTONIC intervals of the splits
for the overlap (no sleeping), and the arena's own counters for the memory given back.
"""
import numpy as np
import pytest

from pyinfer._lib import GSRuntimeError, ffi, lib
from pyinfer.backend import Backend, place, plan_backends, read, splits, write
from pyinfer.tensor import Context, GGMLType, Graph, Unary, dequantize, quantize, quantize_activations, type_info

E, M = 256, 1024           # n_embd, n_ff
ATTEMPTS = 50          # a loaded machine may schedule the host late in some runs; overlap must show in one


def raw_rows(w, t):
    """Rows (M, E) float -> their bytes in type t, (M, row bytes)."""
    return w.astype(np.float32).view(np.uint8) if t == GGMLType.F32 else quantize(w, t)


def problem(seed, n_tokens, hot_share=0.3, active_share=0.5):
    r = np.random.default_rng(seed)
    w = {k: (r.standard_normal((M, E)) / 8).astype(np.float32) for k in ("gate", "up", "down_t")}
    hot = np.flatnonzero(r.random(M) < hot_share)
    idx = np.zeros((n_tokens, M + 1), dtype=np.int32)
    for t in range(n_tokens):
        ids = np.flatnonzero(r.random(M) < active_share)
        idx[t, 0] = len(ids)
        idx[t, 1:1 + len(ids)] = ids
    return {"w": w, "hot": hot, "idx": idx, "h": r.standard_normal((n_tokens, E)).astype(np.float32)}


def hybrid_graph(ctx, P, t, cold_form="bundle", cold_idx=None, h_of=None):
    """The hybrid FFN's nodes; returns (out, the tensors the device holds, named tensors).
    cold_idx: the cold part reads its own copy of the index (leaf 'idx_cold'); h_of(ctx):
    the FFN's input is computed (else the leaf 'h')."""
    rows = {k: raw_rows(v, t) for k, v in P["w"].items()}
    hot, n_hot = P["hot"], len(P["hot"])
    T = {}
    for k in ("gate", "up", "down_t"):
        T[k + "_hot"] = ctx.new_tensor(t, (E, n_hot), k + "_hot")
        T[k + "_hot"].raw().reshape(n_hot, -1)[...] = rows[k][hot]
    mapping = np.full(M, -1, dtype=np.int32)
    mapping[hot] = np.arange(n_hot, dtype=np.int32)
    gpu_idx = np.zeros(M, dtype=np.int32)
    gpu_idx[hot] = 1
    T["map"], T["skip"] = ctx.from_numpy(mapping, "map"), ctx.from_numpy(gpu_idx, "gpu_idx")
    T["h"] = ctx.from_numpy(P["h"], "h") if h_of is None else h_of(ctx)
    T["idx"] = ctx.from_numpy(P["idx"], "idx")
    cidx = T["idx"] if cold_idx is None else ctx.from_numpy(cold_idx, "idx_cold")
    T["idx_cold"] = cidx
    idx_hot = ctx.sparse_index_remap(T["idx"], T["map"], n_hot)
    idx_hot.name = "idx_hot"
    g = ctx.mul_mat_sparse(T["gate_hot"], T["h"], idx_hot)
    u = ctx.mul_mat_sparse(T["up_hot"], T["h"], idx_hot)
    y_hot = ctx.axpy_sparse(T["down_t_hot"], ctx.mul(ctx.unary(g, Unary.RELU), u), idx_hot)
    if cold_form == "bundle":
        bundle = ctx.new_tensor(t, (3 * E, M), "bundle")
        bundle.raw().reshape(M, -1)[...] = np.concatenate([rows[k] for k in ("gate", "up", "down_t")], axis=1)
        y_cold = ctx.sparse_ffn_bundle(bundle, T["h"], cidx, T["skip"])
    else:
        full = {k: ctx.from_numpy(v, t=t) if t != GGMLType.F32 else ctx.from_numpy(v) for k, v in P["w"].items()}
        gc = ctx.mul_mat_sparse(full["gate"], T["h"], cidx, T["skip"])
        uc = ctx.mul_mat_sparse(full["up"], T["h"], cidx, T["skip"])
        y_cold = ctx.axpy_sparse(full["down_t"], ctx.mul(ctx.unary(gc, Unary.RELU), uc), cidx, T["skip"])
    y_cold.name = "y_cold"
    T["y_hot"], T["y_cold"] = y_hot, y_cold
    out = ctx.add(y_hot, y_cold)
    return out, [T[k] for k in ("gate_hot", "up_hot", "down_t_hot", "map")], T


def numpy_ffn(P, t):
    """float64: sum over the active neurons of relu(g) * u * down_t row, g and u the dots of the
    weight rows as stored (dequantized) with h as the kernels see it (quantized to the
    vec_dot type)."""
    deq = {k: dequantize(raw_rows(v, t), t).reshape(M, E).astype(np.float64) for k, v in P["w"].items()}
    vt = type_info(t).vec_dot_type
    out = []
    for tok, h in enumerate(P["h"]):
        hq = h.astype(np.float64) if t == GGMLType.F32 else dequantize(quantize_activations(h, t), vt).astype(
            np.float64)
        ids = P["idx"][tok, 1:1 + P["idx"][tok, 0]]
        act = np.maximum(deq["gate"][ids] @ hq, 0) * (deq["up"][ids] @ hq)
        out.append(act @ deq["down_t"][ids])
    return np.array(out)


def cpu_only(P, t, cold_form, pool, n_threads=2):
    with Context(16 << 20) as ctx:
        out, _, _ = hybrid_graph(ctx, P, t, cold_form)
        Graph(ctx).build(out).plan(n_threads).compute(pool)
        return out.numpy().copy()


def overlap(a, b):
    return a.start_ns < b.end_ns and b.start_ns < a.end_ns


@pytest.mark.parametrize("cold_form", ["bundle", "three_ops"])
@pytest.mark.parametrize("wtype", [GGMLType.F32, GGMLType.Q4_0])
def test_hybrid_ffn_equals_cpu_and_the_splits_overlap(pools, wtype, cold_form):
    for n_tokens in (1, 16):
        P = problem(int(wtype) * 100 + n_tokens, n_tokens)
        want = cpu_only(P, wtype, cold_form, pools[2])
        oracle = numpy_ffn(P, wtype)
        np.testing.assert_allclose(want, oracle, rtol=0, atol=1e-4 * np.abs(oracle).max())
        with Backend.standin(8 << 20, n_threads=1) as dev, Context(16 << 20) as ctx:
            out, on_device, T = hybrid_graph(ctx, P, wtype, cold_form)
            for x in on_device:
                place(x, dev)
            g = plan_backends(Graph(ctx).build(out), [Backend.cpu(), dev], 2)
            sp = splits(g)
            n_cold = 1 if cold_form == "bundle" else 5
            assert [(s.backend, s.first_node, s.n_nodes) for s in sp] == [
                ("standin", 0, 6), ("cpu", 6, n_cold), ("standin", 6 + n_cold, 1)]
            # into the hot split: h and idx; into the add: the cold sum; out: the sum
            assert (sp[0].bytes_in, sp[0].bytes_out) == (4 * n_tokens * (E + M + 1), 0)
            assert (sp[2].bytes_in, sp[2].bytes_out) == (4 * n_tokens * E, 4 * n_tokens * E)
            s0 = dev.stats()
            overlapped = False
            for attempt in range(ATTEMPTS):
                g.compute(pools[2])
                assert out.numpy().tobytes() == want.tobytes()
                sp = splits(g)
                assert all(s.start_ns <= s.end_ns for s in sp)
                assert sp[0].end_ns <= sp[2].start_ns       # the device runs its splits in order
                overlapped = overlapped or overlap(sp[0], sp[1])
                if overlapped or n_tokens == 1:
                    break
            s1 = dev.stats()
            assert (s1["splits"] - s0["splits"], s1["syncs"] - s0["syncs"]) == (2 * (attempt + 1),) * 2
            if n_tokens > 1:
                assert overlapped, f"device {sp[0]} and cpu {sp[1]} never overlapped in {ATTEMPTS} runs"


def test_the_host_waits_only_before_the_node_that_needs_the_device(pools):
    """A CPU split that starts with the cold part and then reads the hot sum (through a CPU
    product) runs the cold part while the device works and waits just before that node. The
    hot share is large and the inputs change between runs, so a missing wait would read a
    stale or half-written sum."""
    P = problem(77, 16, hot_share=0.7)
    P2 = dict(P, h=-P["h"][::-1].copy())
    r = np.random.default_rng(1)
    w_np = (r.standard_normal((E, E)) / 16).astype(np.float32)

    def build(ctx):
        _, on_device, T = hybrid_graph(ctx, P, GGMLType.Q4_0)
        final = ctx.add(T["y_cold"], ctx.mul_mat(ctx.from_numpy(w_np, "w_host"), T["y_hot"]))
        return Graph(ctx).build(T["y_hot"]).build(final), final, T, on_device

    wants = []
    with Context(16 << 20) as ctx:
        g, final, T, _ = build(ctx)
        g.plan(2)
        for inp in (P, P2):
            T["h"].numpy()[...] = inp["h"]
            g.compute(pools[2])
            wants.append(final.numpy().copy())
    with Backend.standin(8 << 20, n_threads=1) as dev, Context(16 << 20) as ctx:
        g, final, T, on_device = build(ctx)
        for x in on_device:
            place(x, dev)
        plan_backends(g, [Backend.cpu(), dev], 2)
        sp = splits(g)
        assert [(s.backend, s.first_node, s.n_nodes) for s in sp] == [("standin", 0, 6), ("cpu", 6, 3)]
        seen = False
        for attempt in range(ATTEMPTS):
            inp, want = (P, wants[0]) if attempt % 2 == 0 else (P2, wants[1])
            T["h"].numpy()[...] = inp["h"]
            g.compute(pools[2])
            assert final.numpy().tobytes() == want.tobytes()
            sp = splits(g)
            seen = seen or overlap(sp[0], sp[1])
            if seen and attempt >= 5:
                break
        assert seen, f"the hot split {sp[0]} never overlapped the cold CPU work {sp[1]}"


def test_a_result_the_host_needs_leaves_the_device_before_the_rest_of_its_split(pools):
    """The layer as it runs with attention on the device: h (the FFN's input) is computed on
    the device, then the hot part; the cold part on the CPU reads h. The device split is run
    as two jobs, cut after h: the CPU waits for the first only and runs the cold part while
    the device does the hot part."""
    P = problem(21, 16, hot_share=0.5)
    r = np.random.default_rng(2)
    x_np = r.standard_normal((16, E)).astype(np.float32)
    nw_np = (1 + r.standard_normal(E) / 4).astype(np.float32)

    def build(ctx, dev):
        x, nw = ctx.from_numpy(x_np, "x"), ctx.from_numpy(nw_np, "norm_w")
        P2 = dict(P)
        out, on_device, T = hybrid_graph(ctx, P2, GGMLType.Q4_0, h_of=lambda ctx: ctx.mul(ctx.rms_norm(x, 1e-5), nw))
        if dev is not None:
            for t_ in on_device + [nw]:
                place(t_, dev)
        return Graph(ctx).build(out), out

    with Context(16 << 20) as ctx:
        g, out = build(ctx, None)
        g.plan(2).compute(pools[2])
        want = out.numpy().copy()
    with Backend.standin(8 << 20, n_threads=1) as dev, Context(16 << 20) as ctx:
        g, out = build(ctx, dev)
        plan_backends(g, [Backend.cpu(), dev], 2)
        sp = splits(g)
        assert [(s.backend, s.n_nodes) for s in sp] == [("cpu", 1), ("standin", 7), ("cpu", 1), ("standin", 1)]
        assert (sp[1].copies_out, sp[1].bytes_out) == (1, 4 * 16 * E)          # h, for the CPU
        s0 = dev.stats()
        seen = False
        for attempt in range(ATTEMPTS):
            g.compute(pools[2])
            assert out.numpy().tobytes() == want.tobytes()
            sp = splits(g)
            seen = seen or sp[2].start_ns < sp[1].end_ns      # the cold part began before the hot part ended
            if seen:
                break
        s1 = dev.stats()
        # per compute: h, the hot part, the add - three jobs, each waited for once
        assert (s1["splits"] - s0["splits"], s1["syncs"] - s0["syncs"]) == (3 * (attempt + 1),) * 2
        assert seen, f"the cold part {sp[2]} waited for the whole device split {sp[1]}"


def slow_chain(ctx, dev, n=16, d=1024, ncol=64):
    """A device result that takes a while: n products with a placed {d, d} weight."""
    r = np.random.default_rng(9)
    w = ctx.from_numpy((r.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32), "w_slow")
    y = ctx.from_numpy(r.standard_normal((ncol, d)).astype(np.float32), "x_slow")
    if dev is not None:
        place(w, dev)
    for _ in range(n):
        y = ctx.mul_mat(w, y)
    return y


def test_host_memory_a_queued_split_copies_in_is_not_reused_meanwhile(pools):
    """slow (device) | A = 2a (CPU) | A + bias (device, behind slow: copies A in late) |
    B = 3b (CPU, A's size). Planned for one split at a time, B would take A's block and the
    device would copy B's bytes; held until the device split's wait point, it cannot."""
    S = 4096
    r = np.random.default_rng(4)
    a_np, b_np, bias_np = (r.standard_normal(S).astype(np.float32) for _ in range(3))

    def build(ctx, dev):
        slow = slow_chain(ctx, dev)
        bias = ctx.from_numpy(bias_np, "bias")
        if dev is not None:
            place(bias, dev)
        A = ctx.scale(ctx.from_numpy(a_np, "a"), 2.0)
        d1 = ctx.add(A, bias)
        B = ctx.scale(ctx.from_numpy(b_np, "b"), 3.0)
        out = ctx.add(d1, B)
        return Graph(ctx).build(slow).build(out), slow, out

    with Context(16 << 20) as ctx:
        g, slow, out = build(ctx, None)
        g.plan(2).compute(pools[2])
        want = (slow.numpy().copy(), out.numpy().copy())
    np.testing.assert_allclose(want[1], 2 * a_np + bias_np + 3 * b_np, rtol=1e-6)
    with Backend.standin(16 << 20, n_threads=1) as dev, Context(16 << 20) as ctx:
        g, slow, out = build(ctx, dev)
        plan_backends(g, [Backend.cpu(), dev], 2)
        assert [s.backend for s in splits(g)] == ["standin", "cpu", "standin", "cpu", "standin"]
        live = 0
        for attempt in range(10):
            g.compute(pools[2])
            assert slow.numpy().tobytes() == want[0].tobytes()
            assert out.numpy().tobytes() == want[1].tobytes()
            sp = splits(g)
            live += sp[3].end_ns < sp[2].start_ns      # B was done before the device copied A in
            if live and attempt >= 2:
                break
        assert live > 0


def test_a_host_write_into_a_tensor_a_queued_split_copies_in_waits(pools):
    """slow (device) | y = cache + bias (device: copies the host cache in) | set_rows into the
    cache (CPU). The write must wait for the device split to have read the cache: y is
    computed from the cache as it was."""
    R, W = 8, 64
    r = np.random.default_rng(6)
    cache0 = r.standard_normal((R, W)).astype(np.float32)
    rows_np, bias_np = r.standard_normal((2, W)).astype(np.float32), r.standard_normal((R, W)).astype(np.float32)

    def build(ctx, dev):
        slow = slow_chain(ctx, dev)
        cache, bias = ctx.from_numpy(cache0, "cache"), ctx.from_numpy(bias_np, "bias")
        if dev is not None:
            place(bias, dev)
        y = ctx.add(cache, bias)
        written = ctx.set_rows(cache, ctx.from_numpy(rows_np, "rows"), ctx.from_numpy(np.array([1, 6], np.int32)))
        return Graph(ctx).build(slow).build(y).build(written), cache, y

    with Backend.standin(16 << 20, n_threads=1) as dev, Context(16 << 20) as ctx:
        g, cache, y = build(ctx, dev)
        plan_backends(g, [Backend.cpu(), dev], 2)
        assert [s.backend for s in splits(g)] == ["standin", "cpu"]      # slow and y | set_rows
        for _ in range(3):
            cache.numpy()[...] = cache0
            g.compute(pools[2])
            np.testing.assert_array_equal(y.numpy(), cache0 + bias_np)
            assert cache.numpy()[[1, 6]].tobytes() == rows_np.tobytes()


def test_errors_surface_in_split_order_with_the_node(pools):
    P = problem(5, 4)
    want = cpu_only(P, GGMLType.Q4_0, "bundle", pools[2])
    with Backend.standin(8 << 20, n_threads=1) as dev, Context(16 << 20) as ctx:
        out, on_device, T = hybrid_graph(ctx, P, GGMLType.Q4_0, cold_idx=P["idx"])
        for x in on_device:
            place(x, dev)
        g = plan_backends(Graph(ctx).build(out), [Backend.cpu(), dev], 2)
        good_idx, good_map = P["idx"].copy(), read(T["map"]).copy()
        bad = good_idx.copy()
        bad[2, 0] = M + 5
        # both parts read a bad index: the device split comes first, and the add after it is skipped
        T["idx"].numpy()[...] = bad
        T["idx_cold"].numpy()[...] = bad
        s0 = dev.stats()
        with pytest.raises(GSRuntimeError, match=r"node 'idx_hot' \(sparse_index_remap\) on backend 'standin': "
                                                 r"sparse index 'idx', token 2"):
            g.compute(pools[2])
        assert dev.stats()["splits"] - s0["splits"] == 1
        # only the CPU's index is bad: its error, after the device split finished
        T["idx"].numpy()[...] = good_idx
        with pytest.raises(GSRuntimeError, match=r"sparse index 'idx_cold', token 2"):
            g.compute(pools[2])
        # a bad map entry on the device
        T["idx_cold"].numpy()[...] = good_idx
        bad_map = good_map.copy()
        bad_map[np.flatnonzero(good_map >= 0)[3]] = 0
        write(T["map"], bad_map)
        with pytest.raises(GSRuntimeError, match=r"node 'idx_hot' .* map 'map': entry \d+ is 0"):
            g.compute(pools[2])
        write(T["map"], good_map)
        g.compute(pools[2])
        assert out.numpy().tobytes() == want.tobytes()


# ---- device memory owned by contexts ----------------------------------------------------------
def _placed_and_planned(ctx, dev, P):
    out, on_device, _ = hybrid_graph(ctx, P, GGMLType.Q4_0)
    for x in on_device:
        place(x, dev)
    g = plan_backends(Graph(ctx).build(out), [Backend.cpu(), dev], 2)
    return g, out


def test_closing_a_context_gives_its_device_memory_back(pools):
    """No unplace, no release: closing the context gives back the placed tensors' blocks and
    the plans' blocks (a re-planned graph's old plan went back at the re-plan)."""
    P = problem(3, 2)
    want = cpu_only(P, GGMLType.Q4_0, "bundle", pools[2])
    with Backend.standin(8 << 20, n_threads=1) as dev:
        keep = Context(1 << 20)
        keeper = keep.from_numpy(np.ones(1000, dtype=np.float32), "keeper")
        place(keeper, dev)                                  # another context's block stays
        base = dev.stats()["arena_used"]
        assert base > 0
        for round_ in range(20):
            with Context(16 << 20) as ctx:
                g, out = _placed_and_planned(ctx, dev, P)
                if round_ % 2:
                    plan_backends(g, [Backend.cpu(), dev], 1)    # re-planned: the first plan's block back
                g.compute(pools[2])
                assert out.numpy().tobytes() == want.tobytes()
                assert dev.stats()["arena_used"] > base
            assert dev.stats()["arena_used"] == base
        keep.close()
        assert dev.stats()["arena_used"] == 0


def test_closing_a_context_waits_for_its_queued_graph(pools):
    """A graph queued on the device (gs_backend_submit) whose context is freed: the context
    waits for the job before giving the memory back and freeing the graph."""
    with Backend.standin(16 << 20, n_threads=1) as dev:
        for _ in range(3):
            ctx = Context(16 << 20)
            slow = slow_chain(ctx, dev, n=32)
            g = plan_backends(Graph(ctx).build(ctx.scale(slow, 0.5)), [Backend.cpu(), dev], 1)
            assert [s.backend for s in splits(g)] == ["standin"]
            lib_status = lib.gs_backend_submit(dev.ptr, g.ptr)       # the raw call: no Python lock held
            assert lib_status == 0
            ctx.close()
            assert dev.stats()["arena_used"] == 0
            dev.synchronize()


def test_a_backend_closed_before_its_contexts_lives_until_they_close(pools):
    P = problem(8, 1)
    want = cpu_only(P, GGMLType.Q4_0, "bundle", pools[2])
    dev = Backend.standin(8 << 20, n_threads=1)
    ctx = Context(16 << 20)
    g, out = _placed_and_planned(ctx, dev, P)
    dev.close()                           # the handle is closed; the device serves ctx on
    g.compute(pools[2])
    assert out.numpy().tobytes() == want.tobytes()
    ctx.close()                           # gives the blocks back, then the device is freed
