"""The CUDA device behind the backend seam (gs_backend_cuda_new, Backend.cuda).

Without a usable GPU (CI, this project's dev machines) only the error paths run: the
backend is refused with the same reason the CUDA API gives ("CUDA not built" /
"no CUDA device: ..."), and bad arguments are refused before the device is asked.

Everything else needs a GPU (`--run-gpu`; scripts/gpu_check.sh runs it) and fails at the
device fixture, saying why, where there is none. It re-runs the stand-in's graph tests
(test_backend_standin.py) and offload tests (test_offload_standin.py) with Backend.cuda:
the CUDA kernels are not bit-identical to the CPU's, so values are compared within the
tolerances test_cuda.py uses and the models' greedy tokens must be the CPU's. Oracles:
the CPU graph of the same nodes, numpy in float64, and the copy counts the assignment
rules of gs_backend.h give (the same as the stand-in's).
"""
import numpy as np
import pytest

from pyinfer._lib import GSMemoryError, GSUnsupportedError, GSValueError, ffi
from pyinfer.backend import Backend, place, plan_backends, read, splits, tensor_backend
from pyinfer.offload import MIB, cuda_status
from pyinfer.tensor import Context, GGMLType, Graph, dequantize

gpu = pytest.mark.gpu


@pytest.mark.skipif(cuda_status()[0], reason="this machine has a usable CUDA device")
def test_cuda_backend_reports_why_it_is_unavailable():
    reason = cuda_status()[1]
    with pytest.raises(GSUnsupportedError) as info:
        Backend.cuda(0, 1 << 20)
    assert str(info.value).startswith(("CUDA not built", "no CUDA device: "))
    assert reason in str(info.value)            # the reason the rest of the CUDA API gives
    with pytest.raises(GSUnsupportedError):
        Backend.cuda(3, 64 * MIB)


def test_bad_arguments_are_refused_before_the_device_is_asked():
    if cuda_status()[1].startswith("CUDA not built"):
        pytest.skip("a build without CUDA refuses every call the same way")
    for size in (0, (1 << 64) - 1):
        with pytest.raises(GSValueError, match="bad arena size"):
            Backend.cuda(0, size)


# ---- on a GPU -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def device():
    ok, reason = cuda_status()
    if not ok:
        pytest.fail(f"--run-gpu was given but CUDA cannot run here: {reason}")
    return 0


@gpu
def test_arena_is_one_budget_carved_first_fit(device):
    with Backend.cuda(device, 1 * MIB) as dev:
        s = dev.stats()
        assert (s["arena_bytes"], s["arena_used"], dev.name, dev.is_host) == (MIB, 0, "cuda", False)
        a = dev.alloc(600 << 10)
        with pytest.raises(GSMemoryError, match=r"backend 'cuda': cannot allocate .* 1048576 bytes"):
            dev.alloc(600 << 10)
        b = dev.alloc(100)                                   # rounded to 64-byte blocks
        assert dev.stats()["arena_used"] == (600 << 10) + 128
        dev.release(a)
        c = dev.alloc(500 << 10)                             # first fit: a's old place
        assert int(ffi.cast("uintptr_t", c)) == int(ffi.cast("uintptr_t", a))
        dev.release(b)
        dev.release(c)
        assert dev.stats()["arena_used"] == 0 and dev.stats()["arena_peak"] == (600 << 10) + 128


@gpu
@pytest.mark.parametrize("wtype", [GGMLType.F32, GGMLType.F16, GGMLType.Q4_0, GGMLType.Q4_K, GGMLType.Q8_0])
def test_mixed_graph_on_the_device(pools, device, wtype):
    from test_backend_standin import K, M, N, cpu_reference, delta, mixed_graph, mixed_inputs, numpy_oracle
    arrays = mixed_inputs(int(wtype) * 10 + 1)
    want, w1_raw = cpu_reference(arrays, wtype, pools[2])
    w1 = dequantize(w1_raw, wtype, M * K).reshape(M, K).astype(np.float64)
    with Backend.cuda(device, 4 * MIB) as dev, Context(8 << 20) as ctx:
        t = mixed_graph(ctx, arrays, wtype)
        place(t["W1"], dev)
        assert tensor_backend(t["W1"]) == "cuda"
        assert read(t["W1"]).tobytes() == w1_raw.tobytes()
        g = plan_backends(Graph(ctx).build(t["out"]), [Backend.cpu(), dev], 2)
        assert [(s.backend, s.first_node, s.n_nodes) for s in splits(g)] == [("cpu", 0, 1), ("cuda", 1, 2),
                                                                             ("cpu", 3, 2)]
        start = dev.stats()
        for _ in range(3):
            g.compute(pools[2])
            got = t["out"].numpy().copy()
            np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-5)
            np.testing.assert_allclose(got, numpy_oracle(arrays, w1), rtol=0.05, atol=2e-4)
        assert delta(dev.stats(), start) == {"h2d_bytes": 3 * (K + M) * N * 4, "h2d_copies": 6,
                                             "d2h_bytes": 3 * M * N * 4, "d2h_copies": 3, "splits": 3, "syncs": 3}
        assert dev.stats()["arena_peak"] <= dev.stats()["arena_bytes"]


@gpu
def test_kv_cache_on_the_device(pools, device):
    from test_backend_standin import KV_DIMS, kv_graphs, kv_problem
    STEPS = KV_DIMS[-1]
    w_np, xs = kv_problem()
    with Backend.cuda(device, 1 * MIB) as dev, Context(8 << 20) as cctx, Context(8 << 20) as dctx:
        (cx, cpos, cout, cg, ccache), (dx, dpos, dout, dg, dcache) = kv_graphs(dev, cctx, dctx, w_np)
        assert [s.backend for s in splits(dg)] == ["cpu", "cuda", "cpu"]
        for step in range(STEPS):
            for x, pos in ((cx, cpos), (dx, dpos)):
                x.numpy()[...] = xs[step][None, :]
                pos.numpy()[...] = step
            cg.compute(pools[2])
            dg.compute(pools[2])
            want = cout.numpy()
            np.testing.assert_allclose(dout.numpy(), want, rtol=0, atol=2e-2 * np.abs(want).max())
        for name in "kv":
            np.testing.assert_allclose(read(dcache[name]).astype(np.float32),
                                       ccache[name].numpy().astype(np.float32), rtol=3e-3, atol=3e-3)


@gpu
def test_a_node_the_kernels_cannot_read_is_refused_at_planning(device):
    with Backend.cuda(device, 1 * MIB) as dev, Context(4 << 20) as ctx:
        w = ctx.from_numpy(np.ones((8, 32), np.float32), "w")
        w2 = ctx.from_numpy(np.ones((16, 4), np.float32), "w2")
        x = ctx.from_numpy(np.ones((4, 32), np.float32), "x")
        place(w, dev)
        place(w2, dev)
        scaled = ctx.scale(ctx.transpose(ctx.mul_mat(w, x)), 1.0)   # reads a transposed view
        scaled.name = "scaled_t"
        out = ctx.mul_mat(w2, scaled)
        placed = dev.stats()["arena_used"]
        with pytest.raises(GSUnsupportedError, match=r"node 'scaled_t' \(scale\) cannot run on backend 'cuda': "
                                                     r"source 0 .* is not contiguous"):
            plan_backends(Graph(ctx).build(out), [Backend.cpu(), dev], 2)
        assert dev.stats()["arena_used"] == placed             # the failed plan gave its blocks back


@gpu
def test_index_remap_kernel_matches_the_cpu(device, pools):
    from pyinfer.offload.cuda import compute_node
    M, T, n_out = 96, 5, 40
    r = np.random.default_rng(7)
    bucket = np.sort(r.choice(M, n_out, replace=False))
    mp = np.full(M, -1, np.int32)
    mp[bucket] = np.arange(n_out, dtype=np.int32)
    idx = np.zeros((T, M + 1), np.int32)
    for t in range(T):
        act = np.sort(r.choice(M, r.integers(0, M), replace=False))
        idx[t, 0] = len(act)
        idx[t, 1:1 + len(act)] = act
    with Context(1 << 20) as ctx:
        out = ctx.sparse_index_remap(ctx.from_numpy(idx), ctx.from_numpy(mp), n_out)
        got = compute_node(out, device)
        Graph(ctx).build(out).plan(2).compute(pools[2])
        cpu = out.numpy().copy()
    np.testing.assert_array_equal(got, cpu)
    for t in range(T):                                          # numpy oracle
        keep = [mp[m] for m in idx[t, 1:1 + idx[t, 0]] if mp[m] >= 0]
        assert list(cpu[t, 1:1 + cpu[t, 0]]) == keep


@gpu
@pytest.mark.parametrize("n_gpu_layers", [8, -1])
def test_smollm2_layer_offload_gives_the_cpu_tokens(smollm2, device, n_gpu_layers):
    from test_offload_standin import _run
    ref_tokens, ref_logits, _ = _run(smollm2)
    with Backend.cuda(device, 256 * MIB) as dev:
        tokens, logits, e = _run(smollm2, offload_device=dev, n_gpu_layers=n_gpu_layers)
        stats = dev.stats()
    assert tokens == ref_tokens
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=5e-2 * np.abs(ref_logits).max())
    n = 30 if n_gpu_layers < 0 else n_gpu_layers
    assert e.offload_plan.gpu_layers == list(range(30 - n, 30))
    assert stats["splits"] > 0 and stats["arena_peak"] <= stats["arena_bytes"] and stats["arena_used"] == 0


@gpu
def test_hybrid_ffn_on_the_device(tmp_path, device):
    from reference.tiny_model import write_tiny_llama
    from test_offload_standin import _run
    from pyinfer.offload.gpu_index import GpuIndex, gpu_index_path, write_gpu_index
    path = str(write_tiny_llama(tmp_path / "m.gguf", powerinfer=True, seed=3))
    rng = np.random.default_rng(0)
    masks = [(rng.random(128) < 0.4).astype(np.int32) for _ in range(2)]
    write_gpu_index(gpu_index_path(path), GpuIndex(0, masks))
    prompt = [1, 5, 9, 17, 33, 60, 2, 7]
    ref_tokens, ref_logits, _ = _run(path, prompt=prompt)
    with Backend.cuda(device, 16 * MIB) as dev:
        tokens, logits, e = _run(path, prompt=prompt, offload_device=dev, vram_budget=12 / 1024)
        assert "hybrid" in e.ffn_mode
        assert dev.stats()["arena_used"] == 0
    assert tokens == ref_tokens
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=2e-2 * np.abs(ref_logits).max())


@gpu
def test_repeated_load_and_close_leak_nothing(smollm2, device):
    from pyinfer.config import ContextSettings
    from pyinfer.engine import Engine
    from pyinfer.offload import mem_info
    with Backend.cuda(device, 256 * MIB) as dev:
        free_before = mem_info(device)[0]
        for _ in range(3):
            e = Engine(smollm2, ContextSettings(n_ctx=128, extra={"offload_device": dev, "n_gpu_layers": 8}))
            e.decode([1, 2, 3, 4])
            assert 0 < dev.stats()["arena_used"] <= dev.stats()["arena_bytes"]
            e.close()
            assert dev.stats()["arena_used"] == 0
        assert abs(mem_info(device)[0] - free_before) < 16 * MIB   # nothing allocated outside the arena
