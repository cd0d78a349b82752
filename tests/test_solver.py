"""The hot/cold neuron solver (pyinfer/offload/solver.py) against brute force and PowerInfer's greedy.

Oracle: every combination of per-layer group counts enumerated, each scored by a direct
re-implementation of the cost model written here with plain loops. Budgets: the optimum
equals brute force to 1e-9 relative; against PowerInfer's rule (globally hottest groups)
ours is never worse, on either objective.
"""
import itertools

import numpy as np
import pytest

from pyinfer.offload import solver
from pyinfer.offload.solver import Speeds, layer_neuron_bytes, powerinfer_greedy, solve
from pyinfer.gguf_model import GGUFFile
from reference.tiny_model import write_tiny_llama

SPEEDS = Speeds(cpu_bytes_per_s=2e9, gpu_bytes_per_s=5e10, sync_s=1e-6)


def _layer_cost(freq, k, group, b, speeds):
    """(GPU bytes, mass on the GPU, modelled time) with the k hottest groups on the GPU."""
    f = sorted(freq, reverse=True)
    n = min(k * group, len(f))
    gpu_mass = sum(f[:n])
    cpu_mass = sum(f[n:])
    t = max(gpu_mass * b / speeds.gpu_bytes_per_s, cpu_mass * b / speeds.cpu_bytes_per_s)
    if 0 < n < len(f):
        t += speeds.sync_s
    return n * b, gpu_mass, t


def _brute(freq, nbytes, budget, group, speeds):
    """(max GPU mass, min time) over every feasible combination."""
    options = [range(-(-len(f) // group) + 1) for f in freq]
    best_mass, best_time = -1.0, np.inf
    for ks in itertools.product(*options):
        costs = [_layer_cost(f, k, group, b, speeds) for f, k, b in zip(freq, ks, nbytes)]
        if sum(c[0] for c in costs) > budget:
            continue
        best_mass = max(best_mass, sum(c[1] for c in costs))
        best_time = min(best_time, sum(c[2] for c in costs))
    return best_mass, best_time


def _random_case(rng, n_layer, n_ff, equal_bytes):
    freq = [np.minimum(1.0, rng.pareto(1.0, n_ff) * rng.uniform(0.01, 0.2)) for _ in range(n_layer)]
    nbytes = [96] * n_layer if equal_bytes else list(rng.integers(40, 200, n_layer))
    return freq, nbytes


@pytest.mark.parametrize("seed", range(8))
def test_coarse_dp_without_scipy_stays_in_budget_and_near_optimal(monkeypatch, seed):
    """Without scipy a DP over a coarse unit (weights rounded up) replaces the MILP: never over
    budget, and at least as good as the true optimum of the budget less one unit per layer."""
    rng = np.random.default_rng(100 + seed)
    monkeypatch.setattr(solver, "DP_MAX_STATES", 12)
    monkeypatch.setattr(solver, "have_milp", lambda: False)
    n_layer, group = int(rng.integers(2, 4)), int(rng.integers(2, 5))
    freq, nbytes = _random_case(rng, n_layer, int(rng.integers(5, 13)), equal_bytes=False)
    total = sum(len(f) * b for f, b in zip(freq, nbytes))
    budget = int(rng.uniform(0.3, 0.9) * total)
    sp = Speeds(SPEEDS.cpu_bytes_per_s, SPEEDS.gpu_bytes_per_s, SPEEDS.sync_s, "mass")
    plan = solve(freq, nbytes, budget, sp, group=group)
    assert plan.method == "dp-coarse" and plan.gpu_bytes <= budget
    unit = -(-min(budget, total) // 11)
    floor_mass, _ = _brute(freq, nbytes, max(0, budget - n_layer * unit), group, SPEEDS)
    assert sum(plan.gpu_mass) >= floor_mass - 1e-9


@pytest.mark.parametrize("method", ["dp", "milp"])
@pytest.mark.parametrize("seed", range(12))
def test_optimum_equals_brute_force(monkeypatch, method, seed):
    rng = np.random.default_rng(seed)
    if method == "milp":
        pytest.importorskip("scipy", reason="the MILP path needs scipy (the test extra declares it)")
        monkeypatch.setattr(solver, "DP_MAX_STATES", 0)
    n_layer, group = int(rng.integers(2, 4)), int(rng.integers(2, 5))
    freq, nbytes = _random_case(rng, n_layer, int(rng.integers(5, 13)), equal_bytes=seed % 2 == 0)
    total = sum(len(f) * b for f, b in zip(freq, nbytes))
    budget = int(rng.uniform(0.1, 0.9) * total)
    want_mass, want_time = _brute(freq, nbytes, budget, group, SPEEDS)
    for obj in ("mass", "time"):
        sp = Speeds(SPEEDS.cpu_bytes_per_s, SPEEDS.gpu_bytes_per_s, SPEEDS.sync_s, obj)
        plan = solve(freq, nbytes, budget, sp, group=group)
        assert plan.method == method
        assert plan.gpu_bytes <= budget
        got = [_layer_cost(f, -(-n // group), group, b, sp) for f, n, b in zip(freq, plan.n_gpu, nbytes)]
        assert [c[0] for c in got] == [n * b for n, b in zip(plan.n_gpu, nbytes)]
        if obj == "mass":
            assert sum(c[1] for c in got) == pytest.approx(want_mass, rel=1e-9)
        else:
            assert sum(c[2] for c in got) == pytest.approx(want_time, rel=1e-9)
            assert plan.time_s == pytest.approx(want_time, rel=1e-9)


@pytest.mark.parametrize("equal_bytes", [True, False])
def test_never_worse_than_powerinfer_greedy(equal_bytes):
    rng = np.random.default_rng(7)
    for trial in range(15):
        freq, nbytes = _random_case(rng, int(rng.integers(2, 9)), 1024, equal_bytes)
        total = sum(len(f) * b for f, b in zip(freq, nbytes))
        budget = int(rng.uniform(0.02, 0.8) * total)
        for obj in ("mass", "time"):
            sp = Speeds(SPEEDS.cpu_bytes_per_s, SPEEDS.gpu_bytes_per_s, SPEEDS.sync_s, obj)
            ours, theirs = solve(freq, nbytes, budget, sp), powerinfer_greedy(freq, nbytes, budget, sp)
            assert theirs.gpu_bytes <= budget and ours.gpu_bytes <= budget
            if obj == "mass":
                assert sum(ours.gpu_mass) >= sum(theirs.gpu_mass) * (1 - 1e-12)
                if equal_bytes:   # PowerInfer's rule is optimal for its own objective then
                    assert sum(ours.gpu_mass) == pytest.approx(sum(theirs.gpu_mass), rel=1e-12)
            else:
                assert ours.time_s <= theirs.time_s * (1 + 1e-12)


def test_time_objective_balances_layers():
    """Where PowerInfer's rule fills the GPU with one layer's hot neurons, the time
    objective keeps the GPU and CPU of each layer busy together."""
    freq = [np.full(512, 0.9), np.full(512, 0.5)]
    nbytes = [100, 100]
    sp = Speeds(1e9, 2e9, 0.0)     # a GPU only twice as fast: filling it with layer 0 idles it
    ours, theirs = solve(freq, nbytes, 512 * 100, sp, group=32), powerinfer_greedy(freq, nbytes, 512 * 100, sp, 32)
    assert theirs.n_gpu[1] == 0 < ours.n_gpu[1]
    assert ours.time_s < 0.8 * theirs.time_s


def test_budget_zero_and_everything_fits():
    freq, nbytes = _random_case(np.random.default_rng(1), 3, 300, True)
    assert solve(freq, nbytes, 0).n_gpu == [0, 0, 0]
    plan = solve(freq, nbytes, 10 ** 12, Speeds(objective="mass"))
    assert plan.n_gpu == [300, 300, 300] and plan.mass_share == pytest.approx(1.0)


def test_layer_neuron_bytes(tmp_path):
    import gguf
    from pyinfer.tensor import row_size
    for wtype, per_row in ((gguf.GGMLQuantizationType.F32, 64 * 4), (gguf.GGMLQuantizationType.Q4_0, 2 * 18),
                           (gguf.GGMLQuantizationType.Q8_0, 2 * 34)):
        path = write_tiny_llama(tmp_path / f"{wtype.name}.gguf", powerinfer=True, weight_type=wtype)
        sizes, n_ff = layer_neuron_bytes(GGUFFile(str(path)))
        assert n_ff == [128, 128]
        assert per_row == row_size(int(wtype), 64)
        assert sizes == [3 * per_row] * 2
