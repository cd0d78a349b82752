"""Experts placed on a device (issue 17): n_cpu_moe, experts as units of the VRAM plan, the
hybrid MoE FFN and the LRU expert cache, executed on the stand-in device (pyinfer.backend: a
device made of the CPU with an arena of exactly its budget and counted copies).

Oracles: the same engine on the CPU alone (the stand-in runs the CPU kernels, and the hybrid FFN
adds the device's and the CPU's expert rows before moe_sum, each row being computed on exactly
one side and exactly 0.0 on the other, so the logits must be the same bits: tolerance 0); a
numpy float64 MoE FFN for the hybrid builder; a brute-force LRU (timestamps, written here) for
the cache's hit counts; an independent recomputation of the plan's device bytes.
"""
import os
from types import SimpleNamespace

import numpy as np
import pytest

from pyinfer.backend import Backend, plan_backends, release, tensor_backend
from pyinfer.config import ContextSettings, ModelConfig
from pyinfer.engine import Engine
from pyinfer.model.moe import build_moe_ffn, routing_ids
from pyinfer.model.moe_hybrid import ExpertSlots
from pyinfer.offload import MIB, format_report, plan_hybrid, plan_layers
from pyinfer.offload.budget import ScratchShape, arena_bytes, part
from pyinfer.offload.experts import (LayerExperts, LRUSlots, counts_from_trace, layer_slot_bytes, load_expert_counts,
                                     lru_hits, make_slots, moe_scratch_bytes, save_expert_counts, static_hits)
from pyinfer.offload.expert_profile import record_routing
from pyinfer.offload.model_spec import ExpertBytes, ModelSpec, SliceRowBytes, TensorSpec
from pyinfer.tensor import Context, GGMLType, Graph, ThreadPool

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "moe")
PROMPT = [1, 17, 42, 5, 99, 23, 64, 8, 31, 77, 12, 50]


def fixture(name):
    return os.path.join(DATA, name, "llama_cpp.f32.gguf")


def _run(path, n_gen=8, **extra):
    """Greedy run: the prompt in batches of 8, then n_gen single tokens; all logits."""
    e = Engine(path, ContextSettings(n_ctx=64, n_batch=8, n_threads=2, extra=extra))
    try:
        logits = [e.decode(PROMPT)]
        for _ in range(n_gen):
            logits.append(e.decode([int(np.argmax(logits[-1]))]))
        return np.array(logits), e
    finally:
        e.close()


_CPU = {}


def cpu_logits(name, n_gen=8):
    if (name, n_gen) not in _CPU:
        _CPU[name, n_gen] = _run(fixture(name), n_gen)[0]
    return _CPU[name, n_gen]


# ---- n_cpu_moe ----

@pytest.mark.parametrize("name", ["olmoe", "qwen2moe", "mixtral"])
def test_n_cpu_moe_with_layer_offload(name):
    """n_gpu_layers=-1, n_cpu_moe=1: everything on the device but layer 0's expert tensors."""
    with Backend.standin(4 * MIB) as dev:
        e = Engine(fixture(name), ContextSettings(n_ctx=64, n_batch=8, n_threads=2,
                                                  extra={"offload_device": dev, "n_gpu_layers": -1, "n_cpu_moe": 1}))
        try:
            w = e.weights
            assert tensor_backend(w.layers[0].ffn_gate_exps) is None
            assert tensor_backend(w.layers[0].ffn_down_exps) is None
            assert tensor_backend(w.layers[0].ffn_gate_inp) == "standin"      # the router follows the layer
            assert tensor_backend(w.layers[1].ffn_up_exps) == "standin"
            report = format_report(e.offload_plan, e.cfg.n_layer, e.cfg.n_ff)
            assert "layer   0: attn GPU, norm GPU, kv GPU, ffn GPU, experts cpu" in report
            assert "layer   1: attn GPU, norm GPU, kv GPU, ffn GPU, experts GPU" in report
            assert f"experts on the GPU: {e.cfg.n_expert} of {2 * e.cfg.n_expert}" in report
            assert "n_cpu_moe=1: layers 0..0 keep their experts on the CPU" in report
        finally:
            e.close()
        logits, _ = _run(fixture(name), offload_device=dev, n_gpu_layers=-1, n_cpu_moe=1)
        assert dev.stats()["arena_used"] == 0
    np.testing.assert_array_equal(logits, cpu_logits(name))


def test_n_cpu_moe_through_llama_keyword():
    from pyinfer import Llama
    with Backend.standin(4 * MIB) as dev:
        llm = Llama(fixture("olmoe"), n_ctx=64, n_gpu_layers=-1, n_cpu_moe=2, offload_device=dev, verbose=False)
        try:
            plan = llm._engine.offload_plan
            assert plan.n_cpu_moe == 2
            assert not any(i.on_gpu for i in plan.items if "_exps" in i.name)
            assert all(i.on_gpu for i in plan.items if "attn_q.weight" in i.name)
        finally:
            llm.close()


@pytest.mark.parametrize("name", ["olmoe", "qwen2moe"])
def test_n_cpu_moe_with_the_hybrid_plan(name):
    """vram_budget: the experts of layer 0 stay on the CPU, layer 1's go to device slots."""
    with Backend.standin(2 * MIB) as dev:
        logits, e = _run(fixture(name), offload_device=dev, vram_budget=2 / 1024, n_cpu_moe=1)
        assert [x.layer for x in e.offload_plan.experts] == [1]
        assert e.offload_plan.experts[0].n_slots == e.cfg.n_expert
        assert e.ffn_mode.startswith("hybrid MoE: 8 expert slots")
        report = format_report(e.offload_plan, e.cfg.n_layer, e.cfg.n_ff)
        assert "layer   0: attn GPU, norm GPU, kv GPU, experts 0/8 GPU (n_cpu_moe);" in report
        assert "layer   1: attn GPU, norm GPU, kv GPU, experts 8/8 GPU [0, 1, 2, 3, 4, 5, 6, 7];" in report
        assert "hot neurons" not in report
    np.testing.assert_array_equal(logits, cpu_logits(name))


def test_bad_n_cpu_moe_is_refused():
    with pytest.raises(ValueError, match="n_cpu_moe"):
        plan_layers(random_spec(np.random.default_rng(0)), 64 * MIB, 2, n_cpu_moe=-1)


# ---- the planner ----

def random_spec(rng, n_layer=None):
    L = int(n_layer or rng.integers(2, 7))
    X = int(rng.choice([4, 8, 16, 64]))
    E, F, k = int(rng.choice([64, 256, 2048])), int(rng.choice([32, 128, 1024])), int(rng.integers(1, 5))
    eb = [ExpertBytes(*(int(v) for v in rng.integers(1, 4, 3) * E * F // 2)) for _ in range(L)]
    tensors = []
    for i in range(L):
        tensors += [TensorSpec(f"blk.{i}.attn_q.weight", "attention", i, E * E * 2),
                    TensorSpec(f"blk.{i}.attn_norm.weight", "norm", i, E * 4),
                    TensorSpec(f"blk.{i}.ffn_gate_inp.weight", "ffn", i, E * X * 4)]
        tensors += [TensorSpec(f"blk.{i}.{n}.weight", "ffn", i, X * b) for n, b in
                    (("ffn_gate_exps", eb[i].gate), ("ffn_up_exps", eb[i].up), ("ffn_down_exps", eb[i].down))]
    tensors += [TensorSpec("output.weight", "output", None, 1000 * E * 2),
                TensorSpec("token_embd.weight", "embedding", None, 1)]
    shape = ScratchShape(n_batch=int(rng.integers(1, 64)), n_ctx=256, n_embd=E, n_ff=F, n_head=4, q_dim=E,
                         kv_dim=E // 2, n_vocab=1000)
    return ModelSpec(L, E, F, tensors, [2 * part(E * 256)] * L, shape, [SliceRowBytes(0, 0, 0)] * L,
                     n_expert=X, n_expert_used=min(k, X), n_ff_exp=F, expert_bytes=eb)


def test_plans_with_experts_fit_and_are_full():
    """40 random MoE specs x budgets: the device bytes recomputed here equal the plan's and fit
    the budget; n_cpu_moe and the slot cap hold; the most valued experts are placed first; and
    no layer could take one more expert."""
    rng = np.random.default_rng(1)
    for trial in range(40):
        spec = random_spec(rng)
        counts = [rng.zipf(1.5, spec.n_expert).astype(np.int64) for _ in range(spec.n_layer)] if trial % 2 else None
        n_cpu = int(rng.integers(0, spec.n_layer + 1))
        cap = None if trial % 3 else int(rng.integers(1, spec.n_expert + 1))
        full = sum(t.nbytes for t in spec.tensors) * 2
        for budget in (0, 2 * MIB, int(rng.integers(2, 64)) * MIB, full):
            plan = plan_hybrid(spec, budget, expert_counts=counts, n_cpu_moe=n_cpu, expert_slots=cap)
            dense = sum(i.nbytes for i in plan.items if i.on_gpu)
            slots = sum(layer_slot_bytes(spec.expert_bytes[x.layer], x.n_slots, spec.n_expert) for x in plan.experts)
            assert plan.parts_total == plan.scratch + dense + slots
            assert plan.device_bytes <= budget
            for x in plan.experts:
                assert x.layer >= n_cpu and 0 < x.n_slots <= (cap or spec.n_expert)
                assert len(set(x.experts.tolist())) == x.n_slots
                if counts is not None:        # the placed experts are the layer's most frequent
                    c = np.asarray(counts[x.layer])
                    assert c[x.experts].min() >= np.delete(c, x.experts).max(initial=-1)
            if plan.experts:
                assert plan.scratch >= moe_scratch_bytes(spec)
                placed = {x.layer: x.n_slots for x in plan.experts}
                for i in range(n_cpu, spec.n_layer):
                    n = placed.get(i, 0)
                    if n < (cap or spec.n_expert):
                        grow = layer_slot_bytes(spec.expert_bytes[i], n + 1, spec.n_expert) - \
                            layer_slot_bytes(spec.expert_bytes[i], n, spec.n_expert)
                        assert arena_bytes(plan.parts_total + grow) > budget


def test_layers_plan_keeps_first_experts_on_the_cpu():
    spec = random_spec(np.random.default_rng(2), n_layer=4)
    plan = plan_layers(spec, 1 << 40, -1, n_cpu_moe=3)
    for it in plan.items:
        if "_exps" in it.name:
            assert it.on_gpu == (it.layer >= 3)
        elif it.layer is not None:
            assert it.on_gpu
    less = plan_layers(spec, 1 << 40, -1)
    assert less.device_bytes >= plan.device_bytes


# ---- the hybrid MoE FFN ----

E, F, X, T, K = 64, 32, 8, 5, 3


def _silu(x):
    return x / (1 + np.exp(-x))


def numpy_moe(h, w):
    """float64 MoE FFN: softmax router, top-K (stable), normalised weights."""
    h = h.astype(np.float64)
    logits = h @ w["router"].T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    out = np.zeros_like(h)
    for t in range(len(h)):
        ids = np.argsort(-p[t], kind="stable")[:K]
        wt = p[t, ids] / p[t, ids].sum()
        for u, x in enumerate(ids):
            a = _silu(w["gate"][x] @ h[t]) * (w["up"][x] @ h[t])
            out[t] += wt[u] * (w["down"][x] @ a)
    return out


@pytest.mark.parametrize("wtype", [GGMLType.F32, GGMLType.Q8_0, GGMLType.Q4_0])
def test_hybrid_moe_ffn_equals_the_cpu_ffn(wtype):
    """Random expert maps (1..X experts in device slots, in random slot order), then experts
    moved between slots with set_slots: the split FFN is bit-identical to the CPU-only graph,
    which is close to numpy (F32)."""
    rng = np.random.default_rng(int(wtype))
    w = {"router": rng.standard_normal((X, E)) / np.sqrt(E), "gate": rng.standard_normal((X, F, E)) / np.sqrt(E),
         "up": rng.standard_normal((X, F, E)) / np.sqrt(E), "down": rng.standard_normal((X, E, F)) / np.sqrt(F)}
    w = {n: a.astype(np.float32) for n, a in w.items()}
    h = rng.standard_normal((T, E)).astype(np.float32)
    cfg = ModelConfig(arch="qwen2moe", n_vocab=16, n_ctx_train=64, n_embd=E, n_layer=1, n_ff=F, n_head=4,
                      n_expert=X, n_expert_used=K, n_ff_exp=F, expert_weights_norm=True)
    with Context(32 << 20) as ctx, ThreadPool(2) as pool, Backend.standin(8 * MIB) as dev:
        t = {n: ctx.from_numpy(a, t=None if n == "router" else wtype) for n, a in w.items()}
        layer = SimpleNamespace(index=0, ffn_gate_inp=t["router"], ffn_gate_exps=t["gate"], ffn_up_exps=t["up"],
                                ffn_down_exps=t["down"], ffn_gate_inp_shexp=None)
        hin = ctx.from_numpy(h)
        ref_out = build_moe_ffn(ctx, cfg, layer, hin)
        g = Graph(ctx).build(ref_out).plan(2)
        g.compute(pool)
        ref = ref_out.numpy().copy()
        if wtype == GGMLType.F32:
            np.testing.assert_allclose(ref, numpy_moe(h, w), rtol=1e-4, atol=1e-5)
        weights = SimpleNamespace(layers=[layer])
        for trial in range(6):
            n = int(rng.integers(1, X + 1))
            placed = rng.permutation(X)[:n].astype(np.int32)
            slots = ExpertSlots(weights, [LayerExperts(0, X, placed, 0)], dev)
            try:
                out = build_moe_ffn(ctx, cfg, layer, hin, slots.get(0))
                hg = Graph(ctx).build(out)
                plan_backends(hg, [Backend.cpu(), dev], 2)
                hg.compute(pool)
                np.testing.assert_array_equal(out.numpy(), ref)
                ids = routing_ids(hg)[0]
                # move experts: the routed ones in and out of the slots
                loads = [(s, int(e)) for s, e in zip(rng.permutation(n)[:2], rng.permutation(X)[:2])
                         if int(e) not in slots.get(0).slot_expert]
                moved = slots.set_slots(weights, 0, loads)
                assert moved == (len(loads) * (t["gate"].nbytes + t["up"].nbytes + t["down"].nbytes) // X
                                 + (4 * X if loads else 0))
                hg.compute(pool)
                np.testing.assert_array_equal(out.numpy(), ref)
                assert ids.shape == (T, K)
            finally:
                if hg is not None:
                    release(hg)
                slots.release()
        assert dev.stats()["arena_used"] == 0


# ---- the LRU cache ----

def brute_lru(trace, n_slots, initial=()):
    """Hits of an LRU of n_slots over trace (tokens, k), starting with `initial` (priority
    order: the first the most recent): a token's experts present when it runs are hits and
    become the most recent; each missing one then replaces the least recently used (by
    timestamp) or fills a free slot."""
    last = {int(v): -1 - i for i, v in enumerate(initial)}
    clock, hits = 0.0, 0
    for row in trace:
        clock += 1
        present = [int(v) for v in row if int(v) in last]
        hits += len(present)
        for v in present:                # in the token's order: the last one is the most recent
            clock += 1e-6
            last[v] = clock
        for v in row:
            v = int(v)
            if v in present or n_slots == 0:
                continue
            if len(last) >= n_slots:
                del last[min(last, key=last.get)]
            clock += 1e-6
            last[v] = clock
    return hits


def test_lru_hits_equal_a_brute_force_simulation():
    rng = np.random.default_rng(3)
    for _ in range(30):
        X = int(rng.choice([8, 16, 64]))
        k = int(rng.integers(1, 9))
        k = min(k, X)
        p = 1.0 / np.arange(1, X + 1) ** rng.uniform(0, 1.5)
        p /= p.sum()
        trace = np.array([rng.choice(X, size=k, replace=False, p=p) for _ in range(200)])
        for S in (0, 1, k, 2 * k, X):
            hits, loads = lru_hits(trace, S)
            assert hits == brute_lru(trace, S)
            init = rng.permutation(X)[:S].tolist()
            assert lru_hits(trace, S, init)[0] == brute_lru(trace, S, init)
            assert loads == (trace.size - hits if S else 0)
    # pinned: half the slots keep the first half of the initial experts, the rest is an LRU
    for _ in range(10):
        X, k, S = 64, 8, int(rng.choice([4, 8, 16, 32]))
        zipf = 1.0 / np.arange(1, X + 1)
        trace = np.array([rng.choice(X, size=k, replace=False, p=zipf / zipf.sum()) for _ in range(150)])
        init = rng.permutation(X)[:S].tolist()
        pinned = set(init[:S // 2])
        want = sum(len(pinned.intersection(row.tolist())) for row in trace) + \
            brute_lru([[v for v in row if v not in pinned] for row in trace], S - S // 2, init[S // 2:])
        assert lru_hits(trace, S, init, policy="pinned")[0] == want
    with pytest.raises(ValueError, match="policy"):
        make_slots("fifo", 4)
    lru = LRUSlots(3, [5, 6, 7])
    assert lru.access([5, 1]) == (1, [(2, 1)])          # 7, the last of the initial order, goes first
    assert list(lru.slots()) == [5, 6, 1]
    assert static_hits(np.array([[1, 2], [3, 1]]), [1, 3]) == 3


@pytest.mark.parametrize("policy", ["lru", "pinned"])
def test_engine_with_the_expert_cache_equals_the_cpu_over_20_tokens(policy):
    """3 slots per layer of 8 experts, LRU: the logits of 20 generated tokens equal the CPU-only
    run's; the cache's hits equal a brute-force replay of the engine's own routing; every load
    is a counted host -> device copy; the arena (exactly the budget) is never exceeded."""
    name = "olmoe"
    budget = 2 * MIB
    routing = []
    with Backend.standin(budget) as dev:
        e = Engine(fixture(name), ContextSettings(n_ctx=64, n_batch=8, n_threads=2, extra={
            "offload_device": dev, "vram_budget": budget / 2**30, "expert_cache": policy, "expert_slots": 3}))
        try:
            e.forward_hooks.append(lambda g: routing.append({i: a.copy() for i, a in routing_ids(g.graph).items()}))
            assert [x.n_slots for x in e.offload_plan.experts] == [3, 3]
            logits = [e.decode(PROMPT)]
            for _ in range(20):
                h2d = dev.stats()["h2d_bytes"]
                loaded = e.expert_cache.stats.bytes_loaded
                logits.append(e.decode([int(np.argmax(logits[-1]))]))
                # what moved host -> device this token: the hidden state etc. plus the cache's loads
                assert dev.stats()["h2d_bytes"] - h2d >= e.expert_cache.stats.bytes_loaded - loaded
            st = e.expert_cache.stats
            assert st.loads > 0 and st.hits > 0 and st.misses > 0 and e.expert_cache.policy == policy
            plane = sum(getattr(e.weights.layers[0], n).nbytes for n in
                        ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")) // e.cfg.n_expert
            assert st.bytes_loaded >= st.loads * plane
            assert dev.stats()["arena_peak"] <= budget
            for layer in (0, 1):         # replay: decode tokens one by one, batches as one step
                slots = e.offload_plan.experts[layer].experts.tolist()
                lru = make_slots(policy, 3, slots)
                hits = 0
                for r in routing:
                    ids = r[layer]
                    before = set(lru.slot_of)
                    hits += int(np.isin(ids, list(before)).sum())
                    for row in ids:
                        lru.access(row)
                assert hits == st.per_layer[layer][0]
                decode_rows = np.concatenate([r[layer] for r in routing[2:]])     # after the prompt's 2 batches
                assert 0 < st.per_layer[layer][0]
                assert decode_rows.shape == (20, e.cfg.n_expert_used)
        finally:
            e.close()
        assert dev.stats()["arena_used"] == 0
    ref = _run(fixture(name), n_gen=20)[0]
    np.testing.assert_array_equal(np.array(logits), ref)


def test_cache_decode_hits_equal_brute_force_on_the_decode_trace():
    """Token by token (no batches), the engine's per-layer hits are the brute-force LRU's on
    the same trace started from the plan's slots."""
    budget = 2 * MIB
    routing = []
    with Backend.standin(budget) as dev:
        e = Engine(fixture("qwen3moe"), ContextSettings(n_ctx=64, n_batch=1, n_threads=2, extra={
            "offload_device": dev, "vram_budget": budget / 2**30, "expert_cache": True, "expert_slots": 4}))
        try:
            e.forward_hooks.append(lambda g: routing.append({i: a.copy() for i, a in routing_ids(g.graph).items()}))
            for tok in PROMPT:
                e.decode([tok])
            for layer, x in enumerate(e.offload_plan.experts):
                trace = np.concatenate([r[layer] for r in routing])
                assert trace.shape == (len(PROMPT), e.cfg.n_expert_used)
                assert e.expert_cache.stats.per_layer[layer][0] == brute_lru(trace, 4, x.experts.tolist())
        finally:
            e.close()


# ---- profiles ----

def test_routing_profile_values_the_plan(tmp_path):
    """record_routing keeps every token's routing; its counts, saved and loaded, make the plan
    place each layer's most frequent experts."""
    e = Engine(fixture("olmoe"), ContextSettings(n_ctx=64, n_batch=8, n_threads=2))
    try:
        trace = record_routing(e, PROMPT * 3, n_ctx=20)
        assert trace.shape == (36, 2, e.cfg.n_expert_used)
        e.truncate(0)
        e.forward(PROMPT[:8], n_outputs=8)
        np.testing.assert_array_equal(trace[:8, 1], e.routing()[1])
    finally:
        e.close()
    counts = counts_from_trace(trace, 8)
    assert all(c.sum() == 36 * 2 for c in counts)
    path = str(tmp_path / "p.npz")
    save_expert_counts(path, counts, len(trace))
    loaded, n = load_expert_counts(path)
    assert n == 36 and all(np.array_equal(a, b) for a, b in zip(loaded, counts))
    with Backend.standin(2 * MIB) as dev:
        logits, e = _run(fixture("olmoe"), offload_device=dev, vram_budget=2 / 1024, expert_profile=path,
                         expert_slots=2)
        for x in e.offload_plan.experts:
            c = counts[x.layer]
            assert c[x.experts].min() >= np.delete(c, x.experts).max()
    np.testing.assert_array_equal(logits, cpu_logits("olmoe"))


def test_expert_profile_command(tmp_path):
    from pyinfer.offload.expert_profile import main
    text = tmp_path / "calib.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 4)
    out = str(tmp_path / "counts.npz")
    assert main([fixture("qwen3moe"), str(text), "-o", out, "-c", "32", "-b", "8", "-t", "2"]) == 0
    counts, n = load_expert_counts(out)
    assert len(counts) == 2 and n > 10
    assert all(int(c.sum()) == n * 2 for c in counts)        # top-2: every token counted in every layer


def test_expert_cache_keywords_and_hit_rate_report(capsys):
    """Llama(expert_cache=..., expert_slots=...) with a budget on the stand-in device: the
    completion's timings line (verbose) reports the cache's hit rate and bytes loaded."""
    from pyinfer import Llama
    budget = 2 * MIB
    with Backend.standin(budget) as dev:
        llm = Llama(fixture("olmoe"), n_ctx=64, n_batch=8, vram_budget=budget / 2**30, offload_device=dev,
                    expert_cache="lru", expert_slots=3, verbose=True)
        try:
            capsys.readouterr()
            llm.create_completion([1, 5, 9, 13], max_tokens=8, temperature=0)
            err = capsys.readouterr().err
            st = llm.engine.expert_cache.stats
            assert st.hits + st.misses > 0
            assert f"expert cache: {st.hit_rate:.1%} hits" in err, err
        finally:
            llm.close()
