"""The CUDA backend: per-op results against float64 oracles and the CPU, the hybrid FFN
against CPU sparse and masked dense, exact device memory of the offload plan, and no leaks.

Every test but the first needs a GPU (`--run-gpu`). On a machine without one, run with
`--run-gpu` they fail at the device fixture, saying why; they never skip silently.

Budgets (normalised: |gpu - oracle| <= tol * sum_k |w_k x_k| per output, the scale of the
rounding of a float32 dot): products on the GPU keep activations in float32, so against a
float64 oracle of the dequantized weights (gguf.quants) tol = 1e-5 for every type (a wrong
weight anywhere costs ~1/K = 2e-3); the CPU quantizes activations to the type's
vec_dot_type, so GPU against CPU gets the activation-quantization budget, tol = 2e-2 (F32:
2e-5). Element-wise ops, norms, softmax and rope: 1e-5 relative to the CPU (expf, tanhf,
sin/cos differ in the last bits); attention 1e-5 against a float64 oracle and against the CPU
with F32 caches, 3e-3 against the CPU with F16 caches (which rounds q and the probabilities to
F16, as llama.cpp does). Gathers and copies: exactly gguf.quants'
dequantization (1 ulp from the CPU, test_quants.py's budget); scatters, the sparse index: exact.
The hybrid FFN (GPU float32 hot rows + CPU cold rows with quantized activations) against
masked dense float64 and against the CPU's all-rows sparse FFN: 2e-2 of the largest
sum |h_m d_m|.
"""
import numpy as np
import pytest

from pyinfer._lib import GSRuntimeError, GSUnsupportedError
from pyinfer.offload import cuda_status, ffn_slice_bytes, mem_info, plan_hybrid
from pyinfer.offload.budget import SliceRowBytes
from pyinfer.offload.cuda import DeviceBuffer, HybridFFN, compute_node
from pyinfer.tensor import Context, GGMLType, Graph, RopeMode, ThreadPool, Unary, quantize
from test_sparse_ops import K_TYPES, WEIGHT_TYPES, dequantized, index_array, random_active

T = GGMLType
gpu = pytest.mark.gpu


@pytest.fixture(scope="module")
def device():
    ok, reason = cuda_status()
    if not ok:
        pytest.fail(f"--run-gpu was given but CUDA cannot run here: {reason}")
    return 0


@pytest.fixture(scope="module")
def pool():
    with ThreadPool(2) as p:
        yield p


def cpu_and_gpu(pool, device, build, mem=64 << 20):
    """Build one op with build(ctx) on leaf inputs, compute it on the device, then on the
    CPU (a graph; an op that writes into an input, set_rows, must not see the CPU's
    result)."""
    with Context(mem) as ctx:
        out = build(ctx)
        got = compute_node(out, device)
        Graph(ctx).build(out).plan(2).compute(pool)
        return out.numpy().copy(), got


def weights(ctx, t, w):
    tensor = ctx.new_tensor(t, w.shape[::-1], "w")
    tensor.raw()[:] = quantize(w, t).reshape(-1)
    return tensor


@pytest.mark.skipif(cuda_status()[0], reason="this machine has a usable CUDA device")
def test_cuda_api_reports_why_it_is_unavailable():
    reason = cuda_status()[1]
    assert reason.startswith("CUDA not built") or reason.startswith("no CUDA device")
    with pytest.raises(GSUnsupportedError, match="CUDA"):
        mem_info(0)
    with pytest.raises(GSUnsupportedError, match="CUDA"):
        DeviceBuffer(1024)
    with Context(1 << 20) as ctx:
        a = ctx.from_numpy(np.ones((2, 32), np.float32))
        with pytest.raises(GSUnsupportedError, match="CUDA"):
            compute_node(ctx.scale(a, 2.0))
        with pytest.raises(GSUnsupportedError, match="CUDA"):
            HybridFFN(None, a, a, np.array([0], np.int32))


def norm_budget(w64, x64):
    """sum_k |w_k x_k| for every output (tokens, rows)."""
    return np.abs(x64) @ np.abs(w64).T


@gpu
@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tokens", [1, 7, 40])
def test_mul_mat(pool, device, rng, t, n_tokens):
    K, M = (512 if t in K_TYPES else 320), 97
    w = rng.standard_normal((M, K)).astype(np.float32)
    x = rng.standard_normal((n_tokens, K)).astype(np.float32)
    cpu, got = cpu_and_gpu(pool, device, lambda ctx: ctx.mul_mat(weights(ctx, t, w), ctx.from_numpy(x)))
    w64 = dequantized(t, w)
    want = x.astype(np.float64) @ w64.T
    scale = norm_budget(w64, x.astype(np.float64))
    assert np.all(np.abs(got - want) <= 1e-5 * scale)
    tol_cpu = 2e-5 if t == T.F32 else 2e-2     # F32: the two float32 roundings
    assert np.all(np.abs(got - cpu) <= tol_cpu * scale)


@gpu
@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
def test_get_rows_and_cpy(pool, device, rng, t):
    K = 512 if t in K_TYPES else 64
    w = rng.standard_normal((9, K)).astype(np.float32)
    idx = np.array([3, 0, 8, 3], np.int32)
    cpu, got = cpu_and_gpu(pool, device, lambda ctx: ctx.get_rows(weights(ctx, t, w), ctx.from_numpy(idx)))
    np.testing.assert_array_equal(got, dequantized(t, w)[idx].astype(np.float32))
    np.testing.assert_array_max_ulp(got, cpu, maxulp=1)   # the CPU's own budget against gguf
    cpu, got = cpu_and_gpu(pool, device, lambda ctx: ctx.cast(weights(ctx, t, w), T.F32))
    np.testing.assert_array_equal(got, dequantized(t, w).astype(np.float32))
    np.testing.assert_array_max_ulp(got, cpu, maxulp=1)
    with Context(1 << 20) as ctx:
        with pytest.raises(GSRuntimeError, match="index"):
            compute_node(ctx.get_rows(weights(ctx, t, w), ctx.from_numpy(np.array([9], np.int32))), device)


@gpu
def test_elementwise_and_norms(pool, device, rng):
    a = rng.standard_normal((3, 5, 64)).astype(np.float32)
    b = rng.standard_normal((1, 5, 64)).astype(np.float32)
    cases = {
        "add": lambda ctx: ctx.add(ctx.from_numpy(a), ctx.from_numpy(b)),
        "mul": lambda ctx: ctx.mul(ctx.from_numpy(a), ctx.from_numpy(b[:, :1].copy())),
        "scale": lambda ctx: ctx.scale(ctx.from_numpy(a), 0.37),
        "rms_norm": lambda ctx: ctx.rms_norm(ctx.from_numpy(a), 1e-5),
        "norm": lambda ctx: ctx.norm(ctx.from_numpy(a), 1e-5),
        "soft_max": lambda ctx: ctx.soft_max(ctx.from_numpy(a), ctx.from_numpy(np.triu(np.full(
            (5, 64), -np.inf, np.float32), 30)), 0.5),
    }
    for op in Unary:
        cases[f"unary_{op.name}"] = lambda ctx, op=op: ctx.unary(ctx.from_numpy(a), op)
        cases[f"glu_{op.name}"] = lambda ctx, op=op: ctx.glu(ctx.from_numpy(a), ctx.from_numpy(a[::-1].copy()), op)
    cases["glu_bamboo"] = lambda ctx: ctx.glu(ctx.from_numpy(a), ctx.from_numpy(a[::-1].copy()), Unary.RELU, True)
    for name, build in cases.items():
        cpu, got = cpu_and_gpu(pool, device, build)
        # GELU is rounded to F16 (llama.cpp's table) on both sides, but the GPU's tanhf may land
        # one F16 step away on rare elements: a budget of one F16 step (about 1e-3 relative)
        tol = 1e-3 if "GELU" in name else 1e-5
        np.testing.assert_allclose(got, cpu, rtol=tol, atol=tol * np.abs(cpu).max(), err_msg=name)


@gpu
@pytest.mark.parametrize("mode", [RopeMode.NORMAL, RopeMode.NEOX])
def test_rope(pool, device, rng, mode):
    x = rng.standard_normal((4, 6, 64)).astype(np.float32)     # {head_dim, n_head, n_tokens}
    pos = np.array([0, 7, 300, 4095], np.int32)
    cpu, got = cpu_and_gpu(pool, device, lambda ctx: ctx.rope(ctx.from_numpy(x), ctx.from_numpy(pos), 48, mode))
    np.testing.assert_allclose(got, cpu, rtol=1e-5, atol=1e-5)


@gpu
@pytest.mark.parametrize("kv_type", [np.float32, np.float16])
def test_attention_and_set_rows(pool, device, rng, kv_type):
    D, H, Hkv, n_ctx, n = 64, 8, 2, 96, 5
    q = rng.standard_normal((n, H, D)).astype(np.float32)
    k = rng.standard_normal((n_ctx, Hkv, D)).astype(kv_type)
    v = rng.standard_normal((n_ctx, Hkv, D)).astype(kv_type)
    pos = np.array([10, 11, 12, 60, 95], np.int32)
    cpu, got = cpu_and_gpu(pool, device, lambda ctx: ctx.attention(
        ctx.from_numpy(q), ctx.from_numpy(k), ctx.from_numpy(v), ctx.from_numpy(pos), 0.125))
    want = np.empty((n, H, D))
    for t in range(n):
        for h in range(H):
            kk = k[:pos[t] + 1, h // (H // Hkv)].astype(np.float64)
            vv = v[:pos[t] + 1, h // (H // Hkv)].astype(np.float64)
            sc = kk @ q[t, h].astype(np.float64) * 0.125
            pr = np.exp(sc - sc.max())
            want[t, h] = pr / pr.sum() @ vv
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the CPU's F16 path rounds q and the probabilities to F16, as llama.cpp does
    tol = 1e-5 if kv_type == np.float32 else 3e-3
    np.testing.assert_allclose(got, cpu, rtol=tol, atol=tol)
    src = rng.standard_normal((3, Hkv * D)).astype(np.float32)
    cache = np.zeros((n_ctx, Hkv * D), kv_type)
    cpu, got = cpu_and_gpu(pool, device, lambda ctx: ctx.set_rows(
        ctx.from_numpy(cache), ctx.from_numpy(src), ctx.from_numpy(np.array([4, 90, 0], np.int32))))
    np.testing.assert_array_equal(got, cpu)


@gpu
@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tokens", [1, 3])
def test_sparse_ops(pool, device, rng, t, n_tokens):
    K, M = (256 if t in K_TYPES else 128), 300
    w = rng.standard_normal((M, K)).astype(np.float32)
    x = rng.standard_normal((n_tokens, K)).astype(np.float32)
    active = random_active(rng, n_tokens, M, 0.3)
    idx = index_array(active)
    skip = (rng.random(M) < 0.2).astype(np.int32)
    _, got = cpu_and_gpu(pool, device, lambda ctx: ctx.mul_mat_sparse(
        weights(ctx, t, w), ctx.from_numpy(x), ctx.from_numpy(idx), ctx.from_numpy(skip)))
    w64 = dequantized(t, w)
    live = active & (skip == 0)[None, :]
    want = np.where(live, x.astype(np.float64) @ w64.T, 0.0)
    assert np.all(got[~live] == 0.0)
    assert np.all(np.abs(got - want) <= 1e-5 * norm_budget(w64, x.astype(np.float64)))
    # axpy over rows of ffn_down_t: a {E, M} = w rows per neuron (E = K)
    act = rng.standard_normal((n_tokens, M)).astype(np.float32)
    _, got = cpu_and_gpu(pool, device, lambda ctx: ctx.axpy_sparse(
        weights(ctx, t, w), ctx.from_numpy(act), ctx.from_numpy(idx), ctx.from_numpy(skip)))
    a64 = np.where(live, act.astype(np.float64), 0.0)
    want = a64 @ w64
    assert np.all(np.abs(got - want) <= 1e-5 * (np.abs(a64) @ np.abs(w64)))
    score = rng.standard_normal((n_tokens, M)).astype(np.float32)
    cpu, got = cpu_and_gpu(pool, device, lambda ctx: ctx.sparse_index(ctx.from_numpy(score), 0.2))
    for c, g in zip(cpu, got):
        np.testing.assert_array_equal(g[:1 + c[0]], c[:1 + c[0]])
    bad = idx.copy()
    bad[0, 1:3] = [5, 5]
    with Context(1 << 22) as ctx:
        node = ctx.mul_mat_sparse(weights(ctx, t, w), ctx.from_numpy(x), ctx.from_numpy(bad))
        with pytest.raises(GSRuntimeError, match="ascending"):
            compute_node(node, device)


def ffn_setup(ctx, rng, t, E, M, gated=True):
    gate = rng.standard_normal((M, E)).astype(np.float32) / 4
    up = rng.standard_normal((M, E)).astype(np.float32) / 4
    down = rng.standard_normal((M, E)).astype(np.float32) / 4
    tensors = (weights(ctx, t, gate) if gated else None, weights(ctx, t, up), weights(ctx, t, down))
    return tensors, (dequantized(t, gate), dequantized(t, up), dequantized(t, down))


@gpu
@pytest.mark.parametrize("t", [T.F16, T.Q4_0, T.Q8_0, T.Q4_K, T.Q6_K], ids=lambda t: t.name)
@pytest.mark.parametrize("arch", ["llama", "bamboo", "falcon"])
def test_hybrid_ffn_equals_cpu_sparse_and_masked_dense(pool, device, rng, t, arch):
    E, M = 256, 512
    with Context(64 << 20) as ctx:
        (g, u, d), (g64, u64, d64) = ffn_setup(ctx, rng, t, E, M, gated=arch != "falcon")
        bucket = np.sort(rng.choice(M, 200, replace=False)).astype(np.int32)
        gpu_idx = np.zeros(M, np.int32)
        gpu_idx[bucket] = 1
        x = rng.standard_normal(E).astype(np.float32)
        active = random_active(rng, 1, M, 0.4)
        idx = index_array(active)
        # the CPU's cold rows: the sparse FFN with skip = gpu_idx
        xt, it, st = ctx.from_numpy(x[None]), ctx.from_numpy(idx), ctx.from_numpy(gpu_idx)
        hu = ctx.mul_mat_sparse(u, xt, it, st)
        h = ctx.unary(hu, Unary.RELU) if g is None else \
            ctx.glu(ctx.mul_mat_sparse(g, xt, it, st), hu, Unary.RELU, arch == "bamboo")
        cold = ctx.axpy_sparse(d, h, it, st)
        cold.set_output()
        graph = Graph(ctx).build(cold).plan(2)
        with HybridFFN(g, u, d, bucket, Unary.RELU, arch == "bamboo", device) as ffn:
            y = ffn.hybrid(x, idx[0], graph, pool, cold)
        # masked dense oracle (float64)
        relu = lambda v: np.maximum(v, 0.0)
        pu = u64 @ x.astype(np.float64)
        hd = relu(pu) if g is None else relu(g64 @ x) * (relu(pu) if arch == "bamboo" else pu)
        hd = np.where(active[0], hd, 0.0)
        want = hd @ d64
        scale = np.abs(hd) @ np.abs(d64) + 1e-30
        assert np.all(np.abs(y - want) <= 2e-2 * scale.max())
        # CPU sparse over every neuron (no skip) gives the same sum
        hu_all = ctx.mul_mat_sparse(u, xt, it)
        h_all = ctx.unary(hu_all, Unary.RELU) if g is None else \
            ctx.glu(ctx.mul_mat_sparse(g, xt, it), hu_all, Unary.RELU, arch == "bamboo")
        full = ctx.axpy_sparse(d, h_all, it)
        full.set_output()
        Graph(ctx).build(full).plan(2).compute(pool)
        assert np.all(np.abs(y - full.numpy()[0]) <= 2e-2 * scale.max())


@gpu
def test_slice_memory_matches_the_planner_and_the_device(device, rng):
    E, M = 1024, 4096
    for t in (T.Q4_0, T.Q6_K, T.F16):
        with Context(256 << 20) as ctx:
            (g, u, d), _ = ffn_setup(ctx, rng, t, E, M)
            bucket = np.sort(rng.choice(M, 1500, replace=False)).astype(np.int32)
            free0, _ = mem_info(device)
            with HybridFFN(g, u, d, bucket, device=device) as ffn:
                w, s = ffn.mem()
                rows = SliceRowBytes(g.nbytes // M, u.nbytes // M, d.nbytes // M)
                assert w + s == ffn_slice_bytes(rows, len(bucket), E, M)
                used = free0 - mem_info(device)[0]
                assert 0 <= used - (w + s) < 2 << 20       # cudaMalloc rounds to its granule
            assert mem_info(device)[0] == free0


@gpu
@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5])
def test_plan_arena_stays_within_the_budget(device, fraction):
    from test_offload import random_spec, random_hot
    rng = np.random.default_rng(11)
    spec = random_spec(rng)
    hot = random_hot(rng, spec)
    free0, total = mem_info(device)
    budget = int(min(free0 // 2, total * fraction))
    plan = plan_hybrid(spec, budget, hot)
    if plan.device_bytes == 0:
        pytest.fail("the test's budget should place something")
    with DeviceBuffer(plan.device_bytes, device):
        used = free0 - mem_info(device)[0]
        assert used <= budget
    assert mem_info(device)[0] == free0


@gpu
def test_no_leaks_over_repeated_load_and_unload(pool, device, rng):
    with Context(64 << 20) as ctx:
        (g, u, d), _ = ffn_setup(ctx, rng, T.Q4_0, 256, 512)
        bucket = np.arange(0, 512, 3, dtype=np.int32)
        a = ctx.from_numpy(rng.standard_normal((64, 64)).astype(np.float32))
        node = ctx.mul_mat(a, a)
        Graph(ctx).build(node).plan(2).compute(pool)
        compute_node(node, device)                   # warm-up: the runtime's own allocations
        with HybridFFN(g, u, d, bucket, device=device) as f:
            f.gpu_part(np.ones(256, np.float32))
        free0, _ = mem_info(device)
        for _ in range(20):
            with HybridFFN(g, u, d, bucket, device=device) as f:
                f.gpu_part(np.ones(256, np.float32))
            with DeviceBuffer(3 << 20, device):
                pass
            compute_node(node, device)
        assert mem_info(device)[0] == free0
