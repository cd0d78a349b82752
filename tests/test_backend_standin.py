"""The backend seam on the stand-in device (gs_backend.h): graphs split across the CPU and a
device made of the CPU give the CPU-only bytes, the splits and copies the assignment rules
say, exact arena accounting, errors as exceptions, no leaks, and device work that overlaps
CPU work in time.

Oracles: the same graph planned with gs_graph_plan (CPU only) for bit equality, numpy
(float64) for the values, and the counts derived by hand from the rules in gs_backend.h.
"""
import os
import time

import numpy as np
import pytest

from pyinfer._lib import GSMemoryError, GSRuntimeError, GSStateError, GSValueError
from pyinfer.backend import (Backend, backend_mem, copy_bytes, place, plan_backends, read, release, splits,
                             tensor_backend, unplace, write)
from pyinfer.tensor import Context, GGMLType, Graph, Unary, dequantize, quantize

K, M, N, P = 256, 128, 3, 64          # mixed graph: x {K, N}, W1 {K, M}, h {M, N}, W2 {M, P}
ALIGN = 64


def aligned(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


def weight(ctx, arr, wtype):
    if wtype == GGMLType.F32:
        return ctx.from_numpy(arr.astype(np.float32))
    if wtype == GGMLType.F16:
        return ctx.from_numpy(arr.astype(np.float16))
    return ctx.from_numpy(arr, t=wtype)


def mixed_inputs(seed):
    r = np.random.default_rng(seed)
    return {"x": r.standard_normal((N, K)).astype(np.float32), "W1": (r.standard_normal((M, K)) * 0.1),
            "h": r.standard_normal((N, M)).astype(np.float32), "W2": (r.standard_normal((P, M)) * 0.1)}


def mixed_graph(ctx, arrays, wtype):
    """rms_norm -> mul_mat(W1) -> add(h) -> mul_mat(W2) -> soft_max."""
    t = {"x": ctx.from_numpy(arrays["x"], "x"), "W1": weight(ctx, arrays["W1"], wtype),
         "h": ctx.from_numpy(arrays["h"], "h"), "W2": ctx.from_numpy(arrays["W2"].astype(np.float32), "W2")}
    t["W1"].name = "W1"
    t["n"] = ctx.rms_norm(t["x"], 1e-5)
    t["mm"] = ctx.mul_mat(t["W1"], t["n"])
    t["s"] = ctx.add(t["mm"], t["h"])
    t["mm2"] = ctx.mul_mat(t["W2"], t["s"])
    t["out"] = ctx.soft_max(t["mm2"])
    return t


def cpu_reference(arrays, wtype, pool):
    with Context(8 << 20) as ctx:
        t = mixed_graph(ctx, arrays, wtype)
        Graph(ctx).build(t["out"]).plan(2).compute(pool)
        return t["out"].numpy().copy(), t["W1"].raw().copy()


def numpy_oracle(arrays, w1):
    x = arrays["x"].astype(np.float64)
    n = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-5)
    s = n @ w1.T + arrays["h"]
    z = s @ arrays["W2"].astype(np.float32).astype(np.float64).T
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def delta(after, before):
    return {k: after[k] - before[k] for k in ("h2d_bytes", "h2d_copies", "d2h_bytes", "d2h_copies", "splits",
                                              "syncs")}


@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize("wtype", [GGMLType.F32, GGMLType.F16, GGMLType.Q4_0, GGMLType.Q4_K, GGMLType.Q8_0])
def test_mixed_graph_equals_cpu_with_the_copies_the_rules_say(pools, wtype, nt):
    arrays = mixed_inputs(int(wtype) * 10 + nt)
    want, w1_raw = cpu_reference(arrays, wtype, pools[2])
    w1 = dequantize(w1_raw, wtype, M * K).reshape(M, K).astype(np.float64)
    np.testing.assert_allclose(want, numpy_oracle(arrays, w1), rtol=0.05, atol=2e-4)
    with Backend.standin(4 << 20, n_threads=nt) as dev, Context(8 << 20) as ctx:
        t = mixed_graph(ctx, arrays, wtype)
        before = dev.stats()
        place(t["W1"], dev)
        assert tensor_backend(t["W1"]) == "standin" and tensor_backend(t["W2"]) is None
        assert dev.stats()["h2d_bytes"] - before["h2d_bytes"] == t["W1"].nbytes
        assert read(t["W1"]).tobytes() == w1_raw.tobytes()            # a counted copy back
        g = plan_backends(Graph(ctx).build(t["out"]), [Backend.cpu(), dev], nt)
        # nodes: rms_norm | mul_mat(W1), add | mul_mat(W2), soft_max
        sp = splits(g)
        assert [(s.backend, s.first_node, s.n_nodes) for s in sp] == [("cpu", 0, 1), ("standin", 1, 2),
                                                                       ("cpu", 3, 2)]
        assert (sp[1].copies_in, sp[1].bytes_in) == (2, (K + M) * N * 4)     # rms_norm's result and h
        assert (sp[1].copies_out, sp[1].bytes_out) == (1, M * N * 4)         # the sum, read by mul_mat(W2)
        assert sum(s.copies_in + s.copies_out for s in (sp[0], sp[2])) == 0
        assert copy_bytes(g) == (K + 2 * M) * N * 4
        start = dev.stats()
        for _ in range(3):
            g.compute(pools[nt])
            assert t["out"].numpy().tobytes() == want.tobytes()
        assert delta(dev.stats(), start) == {"h2d_bytes": 3 * (K + M) * N * 4, "h2d_copies": 6,
                                             "d2h_bytes": 3 * M * N * 4, "d2h_copies": 3, "splits": 3, "syncs": 3}
        # new inputs go through the copies on every compute
        arrays2 = dict(arrays, x=arrays["x"][::-1].copy(), h=-arrays["h"])
        want2, _ = cpu_reference(arrays2, wtype, pools[2])
        t["x"].numpy()[...] = arrays2["x"]
        t["h"].numpy()[...] = arrays2["h"]
        g.compute(pools[nt])
        assert t["out"].numpy().tobytes() == want2.tobytes()
        with pytest.raises(GSStateError):
            t["mm"].numpy()        # a device result the host does not need has no host memory


def test_arena_accounting_is_exact(pools):
    """The plan's device bytes (intermediates, copies, scratch) are one block of the arena:
    an arena of exactly weight + plan works, 64 bytes less fails at planning (naming the
    backend and the bytes), and the peak never exceeds the arena."""
    arrays = mixed_inputs(7)
    want, _ = cpu_reference(arrays, GGMLType.Q8_0, pools[2])
    with Backend.standin(4 << 20) as probe, Context(8 << 20) as ctx:
        t = mixed_graph(ctx, arrays, GGMLType.Q8_0)
        place(t["W1"], probe)
        g = plan_backends(Graph(ctx).build(t["out"]), [Backend.cpu(), probe], 1)
        dev_compute, dev_work = backend_mem(g, probe)
        w1_bytes = aligned(t["W1"].nbytes)
        assert probe.stats()["arena_used"] == w1_bytes + dev_compute + dev_work
        # device: copies of n (K*N floats) and h, the product and the sum reusing ... at least those
        assert dev_compute >= aligned(K * N * 4) + aligned(M * N * 4)
        assert dev_work > 0                                       # the matmul quantizes its activations
        assert backend_mem(g, Backend.cpu())[0] > 0
    exact = w1_bytes + dev_compute + dev_work
    for arena, fits in ((exact, True), (exact - ALIGN, False)):
        with Backend.standin(arena) as dev, Context(8 << 20) as ctx:
            t = mixed_graph(ctx, arrays, GGMLType.Q8_0)
            place(t["W1"], dev)
            g = Graph(ctx).build(t["out"])
            if not fits:
                with pytest.raises(GSMemoryError, match=r"backend 'standin' cannot hold the graph's "
                                                        rf"{dev_compute + dev_work} bytes"):
                    plan_backends(g, [Backend.cpu(), dev], 1)
                with pytest.raises(GSStateError):
                    g.compute(pools[1])                           # left unplanned
                assert dev.stats()["arena_used"] == w1_bytes
                continue
            plan_backends(g, [Backend.cpu(), dev], 1)
            g.compute(pools[1])
            assert t["out"].numpy().tobytes() == want.tobytes()
            s = dev.stats()
            assert s["arena_used"] == s["arena_peak"] == s["arena_bytes"] == arena


def test_placing_more_than_fits_raises_and_first_fit(pools):
    with Backend.standin(1 << 20) as dev, Context(8 << 20) as ctx:
        big = ctx.from_numpy(np.ones((512, 1024), dtype=np.float32), "big")      # 2 MiB
        with pytest.raises(GSMemoryError, match=r"cannot place tensor 'big' \(2097152 bytes\).*1048576 of "
                                                r"1048576 bytes free"):
            place(big, dev)
        assert tensor_backend(big) is None and big.numpy().sum() == 512 * 1024
        a, b, c = dev.alloc(1000), dev.alloc(64), dev.alloc(64)
        addr = [int(ffi_addr) for ffi_addr in map(_address, (a, b, c))]
        assert addr[1] - addr[0] == 1024 and addr[2] - addr[1] == 64      # aligned blocks, in order
        dev.release(a)
        again = dev.alloc(100)
        assert _address(again) == addr[0]                                 # first fit: the lowest hole
        with pytest.raises(GSValueError):
            dev.release(_offset(again, 64))                               # not a block
        for blk in (again, b, c):
            dev.release(blk)
        assert dev.stats()["arena_used"] == 0 and dev.stats()["arena_peak"] == 1024 + 128


def test_unplace_drops_device_bytes_and_place_none_copies_them_back():
    with Backend.standin(1 << 20) as dev, Context(1 << 20) as ctx:
        host = np.arange(64, dtype=np.float32)
        a, b = ctx.from_numpy(host, "a"), ctx.from_numpy(host, "b")
        for t in (a, b):
            place(t, dev)
            write(t, -host)                                    # changed on the device only
            np.testing.assert_array_equal(read(t), -host)
        s0 = dev.stats()
        unplace(a)                                             # block back, nothing copied
        place(b, None)                                         # block back, bytes copied back
        s1 = dev.stats()
        assert s1["d2h_copies"] - s0["d2h_copies"] == 1 and s1["d2h_bytes"] - s0["d2h_bytes"] == 256
        assert tensor_backend(a) is None and tensor_backend(b) is None and s1["arena_used"] == 0
        np.testing.assert_array_equal(a.numpy(), host)
        np.testing.assert_array_equal(b.numpy(), -host)
        unplace(a)                                             # no-op on the host


def _address(p):
    from pyinfer._lib import ffi
    return int(ffi.cast("uintptr_t", p))


def _offset(p, n):
    from pyinfer._lib import ffi
    return ffi.cast("char *", p) + n


def kv_step_graph(ctx, w, caches, E, HD, NH, NKV):
    """One decode step of attention over caches: q, k, v projections, the cache writes,
    attention and the output projection; x and pos are the per-step inputs."""
    x = ctx.new_tensor(GGMLType.F32, (E, 1), "x")
    pos = ctx.new_tensor(GGMLType.I32, (1,), "pos")
    q = ctx.reshape(ctx.mul_mat(w["q"], x), (HD, NH, 1))
    views = []
    for name in ("k", "v"):
        cache = caches[name]
        written = ctx.set_rows(cache, ctx.mul_mat(w[name], x), pos)
        views.append(ctx.view(written, (HD, NKV, cache.ne[1]), (2, HD * 2, cache.nb[1]), 0))
    att = ctx.attention(q, views[0], views[1], pos, 1.0 / np.sqrt(HD))
    out = ctx.mul_mat(w["o"], ctx.reshape(att, (E, 1)))
    return x, pos, out


KV_DIMS = (64, 16, 4, 2, 8, 6)            # E, HD, NH, NKV, CTX, STEPS


def kv_problem():
    """The KV-cache decode problem both device tests run: weights (numpy) and one input per step."""
    E, HD, NH, NKV, CTX, STEPS = KV_DIMS
    r = np.random.default_rng(3)
    w_np = {"q": r.standard_normal((E, E)) * 0.2, "k": r.standard_normal((HD * NKV, E)) * 0.2,
            "v": r.standard_normal((HD * NKV, E)), "o": r.standard_normal((E, E)) * 0.2}
    return w_np, r.standard_normal((STEPS, E)).astype(np.float32)


def kv_graphs(dev, cctx, dctx, w_np):
    """The decode step planned on the CPU alone (cctx) and with K/V weights and caches on `dev`
    (dctx): ((x, pos, out, graph, caches) for the CPU, then for the device plan)."""
    E, HD, NH, NKV, CTX, _ = KV_DIMS
    result = []
    for ctx, device in ((cctx, None), (dctx, dev)):
        w = {k: ctx.from_numpy(v, t=GGMLType.Q8_0) for k, v in w_np.items()}
        caches = {k: ctx.from_numpy(np.zeros((CTX, HD * NKV), dtype=np.float16), f"cache_{k}") for k in "kv"}
        if device is not None:
            for name in ("k", "v"):
                place(w[name], device)
                place(caches[name], device)
        x, pos, out = kv_step_graph(ctx, w, caches, E, HD, NH, NKV)
        g = Graph(ctx).build(out)
        g = g.plan(2) if device is None else plan_backends(g, [Backend.cpu(), device], 2)
        result.append((x, pos, out, g, caches))
    return result


def test_kv_cache_on_the_device_decodes_like_the_cpu(pools):
    E, HD, NH, NKV, CTX, STEPS = KV_DIMS
    w_np, xs = kv_problem()
    with Backend.standin(1 << 20) as dev, Context(8 << 20) as cctx, Context(8 << 20) as dctx:
        (cx, cpos, cout, cg, ccache), (dx, dpos, dout, dg, dcache) = kv_graphs(dev, cctx, dctx, w_np)
        sp = splits(dg)
        assert [s.backend for s in sp] == ["cpu", "standin", "cpu"]
        # into the device: q (E floats), x (E floats), pos; out: attention's result
        assert (sp[1].copies_in, sp[1].bytes_in, sp[1].copies_out, sp[1].bytes_out) == (3, 8 * E + 4, 1, 4 * E)
        outs = []
        for step in range(STEPS):
            for x, pos in ((cx, cpos), (dx, dpos)):
                x.numpy()[...] = xs[step][None, :]
                pos.numpy()[...] = step
            cg.compute(pools[2])
            dg.compute(pools[2])
            assert dout.numpy().tobytes() == cout.numpy().tobytes()
            outs.append(cout.numpy().reshape(-1).astype(np.float64))
        for name in "kv":                                     # the caches themselves, read back counted
            assert read(dcache[name]).tobytes() == ccache[name].numpy().tobytes()
    # numpy oracle of the last step (Q8_0 weights dequantized; activations quantized in the kernels)
    deq = {k: dequantize(quantize(v, GGMLType.Q8_0), GGMLType.Q8_0, v.size).reshape(v.shape).astype(np.float64)
           for k, v in w_np.items()}
    ks = (xs.astype(np.float64) @ deq["k"].T).astype(np.float16).astype(np.float64).reshape(STEPS, NKV, HD)
    vs = (xs.astype(np.float64) @ deq["v"].T).astype(np.float16).astype(np.float64).reshape(STEPS, NKV, HD)
    q = (xs[-1].astype(np.float64) @ deq["q"].T).reshape(NH, HD)
    heads = []
    for hh in range(NH):
        kv = hh // (NH // NKV)
        sc = ks[:, kv] @ q[hh] / np.sqrt(HD)
        p = np.exp(sc - sc.max())
        heads.append((p / p.sum()) @ vs[:, kv])
    want = deq["o"] @ np.concatenate(heads)
    np.testing.assert_allclose(outs[-1], want, rtol=0, atol=0.03 * np.abs(want).max())


def test_device_kernel_error_is_an_exception(pools):
    """An out-of-range get_rows index on the device fails the compute with the node's name
    and the backend (not a crash); fixed, the same plan runs; through submit() the error
    comes from synchronize()."""
    with Backend.standin(1 << 20) as dev, Context(4 << 20) as ctx:
        table = ctx.from_numpy(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
        idx = ctx.from_numpy(np.array([1, 12], dtype=np.int32), "idx")
        place(table, dev)
        rows = ctx.get_rows(table, idx)
        rows.name = "the_rows"
        out = ctx.scale(rows, 2.0)
        g = plan_backends(Graph(ctx).build(out), [Backend.cpu(), dev], 2)
        assert [s.backend for s in splits(g)] == ["standin"]
        with pytest.raises(GSRuntimeError, match=r"node 'the_rows' \(get_rows\) on backend 'standin': .*index 12"):
            g.compute(pools[2])
        idx.numpy()[1] = 9
        g.compute(pools[2])
        np.testing.assert_array_equal(out.numpy(), 2 * np.arange(40, dtype=np.float32).reshape(10, 4)[[1, 9]])
        idx.numpy()[0] = -1
        dev.submit(g)
        with pytest.raises(GSRuntimeError, match="index -1"):
            dev.synchronize()
        dev.synchronize()                                       # reported once


def test_plan_errors_and_cpu_only_plans(pools):
    with Backend.standin(1 << 20) as dev, Backend.standin(1 << 20) as other, Context(4 << 20) as ctx:
        w = ctx.from_numpy(np.eye(8, dtype=np.float32), "w")
        x = ctx.from_numpy(np.arange(8, dtype=np.float32).reshape(1, 8), "x")
        y = ctx.unary(ctx.scale(x, 2.0), Unary.RELU)
        g = Graph(ctx).build(y)
        plan_backends(g, [Backend.cpu(), dev], 2)          # nothing placed: the CPU plan
        assert [(s.backend, s.n_nodes, s.bytes_in) for s in splits(g)] == [("cpu", 2, 0)]
        assert copy_bytes(g) == 0 and backend_mem(g, Backend.cpu()) == g.mem() and backend_mem(g, dev) == (0, 0)
        g.compute(pools[2])
        np.testing.assert_array_equal(y.numpy(), np.maximum(2 * np.arange(8), 0).reshape(1, 8))
        place(w, dev)
        g2 = Graph(ctx).build(ctx.mul_mat(w, x))
        with pytest.raises(GSStateError, match="lives on backend 'standin'.*gs_graph_plan_backends"):
            g2.plan(2)
        with pytest.raises(GSValueError, match="backends\\[0\\] must be the CPU"):
            plan_backends(g2, [dev, Backend.cpu()], 2)
        with pytest.raises(GSValueError, match="'w'.*lives on backend 'standin', which is not in the list"):
            plan_backends(g2, [Backend.cpu(), other], 2)
        with pytest.raises(GSValueError, match="listed twice"):
            plan_backends(g2, [Backend.cpu(), dev, dev], 2)
        with pytest.raises(GSStateError, match="only leaf tensors"):
            place(y, dev)
        host_w = ctx.from_numpy(np.eye(8, dtype=np.float32))
        mixed = Graph(ctx).build(ctx.mul_mat(host_w, ctx.mul_mat(w, x)))
        plan_backends(mixed, [Backend.cpu(), dev], 2)
        assert [s.backend for s in splits(mixed)] == ["standin", "cpu"]
        with pytest.raises(GSValueError, match="does not run entirely on backend 'standin' \\(2 splits\\)"):
            dev.submit(mixed)
        with pytest.raises(GSValueError, match="the CPU runs no jobs"):
            Backend.cpu().submit(mixed)


def test_outputs_views_host_reads_of_placed_leaves_and_two_devices(pools):
    """A device result that is an output (or viewed by one) is copied to the host; a host
    node reading a placed leaf gets a counted copy of it; a result of one device read by
    another goes through a host copy."""
    r = np.random.default_rng(5)
    a_np, b_np = r.standard_normal((16, 32)).astype(np.float32), r.standard_normal((8, 16)).astype(np.float32)
    x_np = r.standard_normal((2, 32)).astype(np.float32)
    table_np = r.standard_normal((6, 8)).astype(np.float32)

    def build(ctx):
        t = {"a": ctx.from_numpy(a_np, "a"), "b": ctx.from_numpy(b_np, "b"), "x": ctx.from_numpy(x_np, "x"),
             "table": ctx.from_numpy(table_np, "table"), "idx": ctx.from_numpy(np.array([4, 0], np.int32), "idx")}
        t["ax"] = ctx.mul_mat(t["a"], t["x"])                       # {16, 2}
        t["flat"] = ctx.reshape(t["ax"], (32,)).set_output()        # an output viewing a result
        t["bax"] = ctx.mul_mat(t["b"], t["ax"])                     # {8, 2}
        t["rows"] = ctx.get_rows(t["table"], t["idx"])              # host table, placed index
        t["out"] = ctx.add(t["rows"], t["bax"])                     # runs where bax runs: a device
        return t

    with Context(4 << 20) as ctx:
        ref = build(ctx)
        g = Graph(ctx).build(ref["flat"]).build(ref["out"]).plan(2)
        want = []
        for idx in ([4, 0], [5, 5]):
            ref["idx"].numpy()[...] = idx
            g.compute(pools[2])
            want.append((ref["flat"].numpy().copy(), ref["out"].numpy().copy()))
    np.testing.assert_allclose(want[0][1], x_np @ a_np.T @ b_np.T + table_np[[4, 0]], rtol=1e-5, atol=1e-5)
    with Backend.standin(1 << 20) as d1, Backend.standin(1 << 20) as d2, Context(4 << 20) as ctx:
        t = build(ctx)
        place(t["a"], d1)
        place(t["b"], d2)
        place(t["idx"], d1)
        g = plan_backends(Graph(ctx).build(t["flat"]).build(t["out"]), [Backend.cpu(), d1, d2], 2)
        sp = splits(g)
        # nodes: ax, flat | rows | bax, out. ax on d1 (x in; ax out: an output, and read by d2)
        # | get_rows on the CPU (its table's home; idx copied from d1) | bax and the add on d2
        # (ax in from its host copy, rows in; out out: the output)
        assert [(s.backend, s.first_node, s.n_nodes) for s in sp] == [
            ("standin", 0, 2), ("cpu", 2, 1), ("standin", 3, 2)]
        assert [(s.copies_in, s.bytes_in, s.copies_out, s.bytes_out) for s in sp] == [
            (1, 2 * 32 * 4, 1, 16 * 2 * 4), (1, 8, 0, 0), (2, 16 * 2 * 4 + 8 * 2 * 4, 1, 8 * 2 * 4)]
        s1, s2 = d1.stats(), d2.stats()
        g.compute(pools[2])
        assert t["flat"].numpy().tobytes() == want[0][0].tobytes()
        assert t["out"].numpy().tobytes() == want[0][1].tobytes()
        assert delta(d1.stats(), s1) == {"h2d_bytes": 2 * 32 * 4, "h2d_copies": 1, "d2h_bytes": 16 * 2 * 4 + 8,
                                         "d2h_copies": 2, "splits": 1, "syncs": 1}
        assert delta(d2.stats(), s2) == {"h2d_bytes": (16 + 8) * 2 * 4, "h2d_copies": 2, "d2h_bytes": 8 * 2 * 4,
                                         "d2h_copies": 1, "splits": 1, "syncs": 1}
        write(t["idx"], np.array([5, 5], np.int32))             # a counted write into the device
        g.compute(pools[2])
        assert t["out"].numpy().tobytes() == want[1][1].tobytes()
        place(t["idx"], None)                                    # back to the host, bytes kept
        assert tensor_backend(t["idx"]) is None and list(t["idx"].numpy()) == [5, 5]


def test_device_result_read_again_after_a_host_split(pools):
    """A device result stays in the device's memory across a host split and is read there
    again without a copy; the host's copy serves only the host."""
    r = np.random.default_rng(8)
    w_np, v_np = r.standard_normal((24, 16)).astype(np.float32), r.standard_normal((24, 24)).astype(np.float32)
    x_np = r.standard_normal((2, 16)).astype(np.float32)

    def build(ctx):
        w, v, x = ctx.from_numpy(w_np, "w"), ctx.from_numpy(v_np, "v"), ctx.from_numpy(x_np, "x")
        a = ctx.mul_mat(w, x)                   # on the device (w placed)
        b = ctx.mul_mat(v, a)                   # on the CPU (v on the host)
        return w, ctx.add(a, b)                 # where a runs: the device, reading a in place

    with Context(1 << 20) as ctx:
        _, out = build(ctx)
        Graph(ctx).build(out).plan(1).compute(pools[1])
        want = out.numpy().copy()
    a_np = x_np.astype(np.float64) @ w_np.T
    np.testing.assert_allclose(want, a_np + a_np @ v_np.T, rtol=1e-4, atol=1e-4)
    with Backend.standin(1 << 20) as dev, Context(1 << 20) as ctx:
        w, out = build(ctx)
        place(w, dev)
        g = plan_backends(Graph(ctx).build(out), [Backend.cpu(), dev], 1)
        assert [(s.backend, s.copies_in, s.bytes_in, s.copies_out, s.bytes_out) for s in splits(g)] == [
            ("standin", 1, 2 * 16 * 4, 1, 2 * 24 * 4), ("cpu", 0, 0, 0, 0), ("standin", 1, 2 * 24 * 4, 1, 2 * 24 * 4)]
        g.compute(pools[1])
        assert out.numpy().tobytes() == want.tobytes()


def test_sparse_ops_with_device_weights(pools):
    """The sparse ops run where their weight rows live, bit-identical to the CPU."""
    r = np.random.default_rng(11)
    E, F = 64, 96
    up_np, down_np = r.standard_normal((F, E)) * 0.2, r.standard_normal((F, E)) * 0.2
    h_np = r.standard_normal((2, E)).astype(np.float32)

    def build(ctx):
        up, down = ctx.from_numpy(up_np, t=GGMLType.Q8_0), ctx.from_numpy(down_np.astype(np.float32))
        h = ctx.from_numpy(h_np)
        act = ctx.mul_mat_sparse(up, h)
        idx = ctx.sparse_index_abs(act, 0.5)
        return up, down, ctx.axpy_sparse(down, ctx.mul_mat_sparse(up, h, idx), idx)

    with Context(4 << 20) as ctx:
        _, _, out = build(ctx)
        Graph(ctx).build(out).plan(2).compute(pools[2])
        want = out.numpy().copy()
    with Backend.standin(1 << 20, n_threads=2) as dev, Context(4 << 20) as ctx:
        up, down, out = build(ctx)
        place(up, dev)
        place(down, dev)
        g = plan_backends(Graph(ctx).build(out), [Backend.cpu(), dev], 2)
        assert [s.backend for s in splits(g)] == ["standin"]
        g.compute(pools[2])
        assert out.numpy().tobytes() == want.tobytes()


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_repeated_rounds_leak_nothing(pools):
    """Create a device, place, plan, compute, free: 200 rounds keep the RSS flat; with one
    device kept, releasing the plan and the placements gives the whole arena back."""
    arrays = mixed_inputs(9)

    def round_trip(dev):
        with Context(2 << 20) as ctx:
            t = mixed_graph(ctx, arrays, GGMLType.Q4_0)
            place(t["W1"], dev)
            g = plan_backends(Graph(ctx).build(t["out"]), [Backend.cpu(), dev], 1)
            g.compute(pools[1])
            assert t["out"].numpy().sum() > 0
            release(g)
            unplace(t["W1"])

    with Backend.standin(1 << 20) as dev:
        for _ in range(50):
            round_trip(dev)
            assert dev.stats()["arena_used"] == 0
    for i in range(220):
        if i == 20:
            rss0 = _rss()
        with Backend.standin(1 << 20) as dev:
            round_trip(dev)
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):     # ASan's quarantine keeps freed memory
        assert _rss() - rss0 < 2 << 20


def matmul_chain(ctx, w, x, n):
    y = x
    for _ in range(n):
        y = ctx.mul_mat(w, y)
    return y


def test_device_and_cpu_work_overlap_in_time(pools):
    """A graph submitted to the device runs on its worker while an independent graph
    computes on the CPU pool: their [start, end] intervals (CLOCK_MONOTONIC) overlap."""
    r = np.random.default_rng(2)
    D, NCOL = 1024, 16
    w_np = (r.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32)
    x_np = r.standard_normal((NCOL, D)).astype(np.float32)
    with Backend.standin(16 << 20) as dev, Context(16 << 20) as dctx, Context(16 << 20) as cctx:
        dw, cw = dctx.from_numpy(w_np), cctx.from_numpy(w_np)
        place(dw, dev)
        n_mm = 1
        while True:                                      # size the chains to >= 20 ms of work
            dout = matmul_chain(dctx, dw, dctx.from_numpy(x_np), n_mm)
            dg = plan_backends(Graph(dctx, 4096).build(dout), [Backend.cpu(), dev], 1)
            dev.submit(dg)
            dev.synchronize()
            st = dev.stats()
            t_dev = (st["last_job_end_ns"] - st["last_job_start_ns"]) / 1e9
            if t_dev >= 0.02 or n_mm >= 1024:
                break
            release(dg)
            n_mm *= 2
        cout = matmul_chain(cctx, cw, cctx.from_numpy(x_np), n_mm)
        cg = Graph(cctx, 4096).build(cout).plan(1)
        t0 = time.perf_counter()
        cg.compute(pools[1])
        t_cpu = time.perf_counter() - t0
        want = cout.numpy().copy()
        assert splits(dg)[0].backend == "standin" and len(splits(dg)) == 1
        for attempt in range(3):
            wall0 = time.perf_counter()
            dev.submit(dg)
            c0 = time.monotonic_ns()
            cg.compute(pools[1])
            c1 = time.monotonic_ns()
            dev.synchronize()
            wall = time.perf_counter() - wall0
            st = dev.stats()
            d0, d1 = st["last_job_start_ns"], st["last_job_end_ns"]
            assert d0 < c1 and c0 < d1, f"no overlap: device [{d0}, {d1}], cpu [{c0}, {c1}]"
            if wall < t_dev + t_cpu:
                break
        assert wall < 1.25 * (t_dev + t_cpu)                   # sanity only; the intervals are the proof
        assert dout.numpy().tobytes() == want.tobytes()
