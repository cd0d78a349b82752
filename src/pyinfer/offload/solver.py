"""The hot/cold neuron solver: which FFN neurons of which layers live on the GPU.

Inputs, per layer l: the firing frequency f_l[i] of each neuron (expected activations per
token, from profiling), the exact bytes b_l one neuron costs on the GPU (its gate row, up
row and ffn_down_t row in their GGUF types; ``layer_neuron_bytes``), and overall the VRAM
budget B left for neurons after the dense tensors, KV cache and scratch.

Units. Neurons are placed in groups of ``group`` (256, as PowerInfer does), and a layer's
GPU set is always a prefix of its neurons sorted hottest first: for a fixed number of GPU
neurons in a layer every cost below depends only on the firing mass they carry, which the
hottest prefix maximises. So the decision is one k_l per layer (groups on the GPU), with
weight w_l(k) = b_l * neurons(k) bytes.

Objectives.
  mass  PowerInfer's: maximise the activation mass on the GPU, sum_l M_l(k_l), where
        M_l(k) is the summed frequency of layer l's k hottest groups.
  time  ours (default): minimise the modelled decode time of the FFNs per token,
        sum_l T_l(k_l), T_l(k) = max(gpu_l, cpu_l) + (sync_s if the layer is split),
        gpu_l = M_l(k) b_l / gpu_bytes_per_s, cpu_l = (F_l - M_l(k)) b_l / cpu_bytes_per_s
        (F_l: the layer's whole mass): the GPU and the CPU compute their neurons of a layer
        at the same time, each reading the rows of the neurons that fire, and a split layer
        pays one hidden-vector round trip. Per-token costs that do not depend on the
        placement (attention, the predictor) are left out.

Method: both are a multiple-choice knapsack (one k per layer, total weight <= B), solved
exactly. When the budget in units of the gcd of all choice weights is small (always the
case when layers share a neuron size: the unit is then one group), by dynamic programming
over that capacity: exhaustive over every feasible combination, hence optimal, in
O(L * K * C) vector work. Otherwise with ``scipy.optimize.milp`` (HiGHS branch and bound,
zero gap) on binaries y[l,k], sum_k y[l,k] = 1, sum w y <= B; without scipy (an optional
dependency: ``pip install scipy``) by the same DP over a coarser unit with every weight rounded
up, which never exceeds the budget and loses at most one coarse unit per layer. A greedy is not used for
the time objective because T_l is not convex in k (max of a convex decreasing and a
concave increasing function): marginal gains do not decrease, so greedy choices can be
wrong. PowerInfer's own rule (the globally hottest groups; ``powerinfer_greedy``) is
kept as the baseline the tests compare against: it is optimal for the mass objective only
when every layer has the same neuron size.
"""
from __future__ import annotations

import heapq
import importlib.util
import math
from dataclasses import dataclass, field
from functools import reduce
from typing import List, Sequence, Tuple

import numpy as np

DP_MAX_STATES = 4_000_000     # DP capacity cells (per layer) before the MILP is used instead


@dataclass
class Speeds:
    """Throughputs of the cost model (bytes of firing neuron rows read per second) and the
    cost of one CPU/GPU round trip of a split layer. Defaults: a CPU sparse FFN at ~20 GB/s
    (a third of this machine's 58 GB/s read bandwidth), a consumer GPU at ~1 TB/s, 20 us."""
    cpu_bytes_per_s: float = 20e9
    gpu_bytes_per_s: float = 1e12
    sync_s: float = 20e-6
    objective: str = "time"      # "time" or "mass" (PowerInfer's)

    def __post_init__(self):
        if self.objective not in ("time", "mass"):
            raise ValueError(f"objective must be 'time' or 'mass', got {self.objective!r}")
        if self.cpu_bytes_per_s <= 0 or self.gpu_bytes_per_s <= 0 or self.sync_s < 0:
            raise ValueError("speeds must be positive and sync_s >= 0")


@dataclass
class Plan:
    """A placement: n_gpu[l] hottest neurons of layer l on the GPU."""
    n_gpu: List[int]
    gpu_mass: List[float]        # expected firing neurons per token on the GPU, per layer
    total_mass: List[float]      # the same over all of the layer's neurons
    gpu_bytes: int               # bytes of the GPU neurons
    budget: int
    time_s: float                # modelled FFN time per token (Speeds)
    cpu_only_s: float            # the same with every neuron on the CPU
    method: str                  # "dp", "milp", "dp-coarse" (no scipy) or "greedy"
    layer_time_s: List[float] = field(default_factory=list)

    @property
    def mass_share(self) -> float:
        total = sum(self.total_mass)
        return sum(self.gpu_mass) / total if total > 0 else 0.0

    def summary(self) -> str:
        n = sum(self.n_gpu)
        return (f"{n} neurons on the GPU ({self.gpu_bytes / 2**20:.1f} MiB of {self.budget / 2**20:.1f} MiB), "
                f"{100 * self.mass_share:.1f}% of the activation mass; modelled FFN time "
                f"{self.time_s * 1e3:.3f} ms/token (CPU only {self.cpu_only_s * 1e3:.3f} ms) [{self.method}]")


def layer_neuron_bytes(model) -> Tuple[List[int], List[int]]:
    """(bytes per neuron, n_ff) of each layer of a PowerInfer model (a GGUFFile): the gate
    row + up row (+ down_t row) in their stored types, as the GPU would hold them."""
    from pyinfer.tensor import row_size
    arch = model.metadata.get("general.architecture", "llama")
    n_layer = int(model.metadata[f"{arch}.block_count"])
    sizes, n_ff = [], []
    for i in range(n_layer):
        total, ff = 0, None
        for name in ("ffn_gate", "ffn_up", "ffn_down_t"):
            t = model.get(f"blk.{i}.{name}.weight")
            if t is None:
                if name == "ffn_gate":   # falcon-style: no gate
                    continue
                raise ValueError(f"{model.path}: layer {i} has no {name} (not a PowerInfer model)")
            total += row_size(t.type, t.ne[0])
            ff = t.ne[1]
        sizes.append(total)
        n_ff.append(int(ff))
    return sizes, n_ff


def _prefix_masses(freq: np.ndarray, group: int) -> Tuple[np.ndarray, np.ndarray]:
    """(neurons, mass) of the k hottest groups for k = 0..K (arrays of K+1)."""
    f = np.sort(np.asarray(freq, dtype=np.float64))[::-1]
    bounds = np.minimum(np.arange(0, len(f) + group, group), len(f))
    bounds = np.unique(bounds)
    mass = np.concatenate([[0.0], np.cumsum(f)])[bounds]
    return bounds, mass


def _choices(freq, neuron_bytes, speeds: Speeds, group: int):
    """Per layer (weights in bytes, costs to minimise, neurons, masses) of each choice k."""
    out = []
    for f, b in zip(freq, neuron_bytes):
        neurons, mass = _prefix_masses(f, group)
        total = mass[-1]
        if speeds.objective == "mass":
            cost = -mass
        else:
            gpu = mass * b / speeds.gpu_bytes_per_s
            cpu = (total - mass) * b / speeds.cpu_bytes_per_s
            split = (neurons > 0) & (neurons < neurons[-1])
            cost = np.maximum(gpu, cpu) + speeds.sync_s * split
        out.append((neurons.astype(np.int64) * int(b), cost, neurons, mass))
    return out


def solve(freq: Sequence[np.ndarray], neuron_bytes: Sequence[int], budget: int,
          speeds: Speeds = Speeds(), group: int = 256) -> Plan:
    """The optimal placement (see the module docstring). `freq[l]`: per-neuron firing
    frequency of layer l (activations per token); `neuron_bytes[l]`: bytes per neuron;
    `budget`: VRAM bytes for neurons; `group`: neurons per placement unit."""
    if len(freq) != len(neuron_bytes):
        raise ValueError(f"{len(freq)} layers of frequencies but {len(neuron_bytes)} neuron sizes")
    if group < 1 or budget < 0:
        raise ValueError("group must be >= 1 and budget >= 0")
    ch = _choices(freq, neuron_bytes, speeds, group)
    unit = reduce(math.gcd, (int(w) for c in ch for w in c[0] if w > 0), 0) or 1
    cap = min(budget, sum(int(c[0][-1]) for c in ch)) // unit
    if cap + 1 <= DP_MAX_STATES:
        picks, method = _solve_dp(ch, unit, cap), "dp"
    elif have_milp():
        picks, method = _solve_milp(ch, budget), "milp"
    else:   # no scipy: the DP over a coarser unit, weights rounded up (never over budget)
        span = min(budget, sum(int(c[0][-1]) for c in ch))
        unit = -(-span // max(DP_MAX_STATES - 1, 1))
        picks, method = _solve_dp(ch, unit, span // unit), "dp-coarse"
    return _plan(ch, picks, freq, neuron_bytes, budget, speeds, method)


def have_milp() -> bool:
    """Whether scipy's MILP solver is importable (scipy is optional)."""
    return importlib.util.find_spec("scipy") is not None


def _solve_dp(ch, unit: int, cap: int) -> List[int]:
    """dp[c]: least cost of the layers so far with total weight <= c units."""
    dp = np.zeros(cap + 1)
    back = []
    for weights, cost, _, _ in ch:
        new = np.full(cap + 1, np.inf)
        arg = np.zeros(cap + 1, dtype=np.int32)
        for k, (w, t) in enumerate(zip(weights, cost)):
            u = -(-int(w) // unit)      # rounded up: exact when unit divides every weight
            if u > cap:
                break
            cand = dp[:cap + 1 - u] + t
            better = cand < new[u:]
            new[u:][better] = cand[better]
            arg[u:][better] = k
        dp = new
        back.append(arg)
    picks, c = [], cap
    for (weights, _, _, _), arg in zip(reversed(ch), reversed(back)):
        k = int(arg[c])
        picks.append(k)
        c -= -(-int(weights[k]) // unit)
    return picks[::-1]


def _solve_milp(ch, budget: int) -> List[int]:
    from scipy.optimize import Bounds, LinearConstraint, milp
    sizes = [len(c[0]) for c in ch]
    n = sum(sizes)
    costs = np.concatenate([c[1] for c in ch])
    scale = 1.0 / max(np.abs(costs).max(), 1e-30)
    weights = np.concatenate([c[0] for c in ch]).astype(np.float64)
    one_per_layer = np.zeros((len(ch), n))
    start = 0
    for l, s in enumerate(sizes):
        one_per_layer[l, start:start + s] = 1.0
        start += s
    cons = [LinearConstraint(one_per_layer, 1, 1),
            LinearConstraint(weights[None, :] / max(budget, 1), -np.inf, budget / max(budget, 1))]
    res = milp(costs * scale, constraints=cons, integrality=np.ones(n), bounds=Bounds(0, 1),
               options={"mip_rel_gap": 0.0})
    if not res.success:
        raise RuntimeError(f"placement MILP failed: {res.message}")
    picks, start = [], 0
    for s in sizes:
        picks.append(int(np.argmax(res.x[start:start + s])))
        start += s
    return picks


def _plan(ch, picks, freq, neuron_bytes, budget, speeds, method) -> Plan:
    n_gpu = [int(c[2][k]) for c, k in zip(ch, picks)]
    gpu_mass = [float(c[3][k]) for c, k in zip(ch, picks)]
    total = [float(c[3][-1]) for c in ch]
    timing = Speeds(speeds.cpu_bytes_per_s, speeds.gpu_bytes_per_s, speeds.sync_s, "time")
    layer_t = [_layer_time(m, t, n, len(f), b, timing)
               for m, t, n, f, b in zip(gpu_mass, total, n_gpu, freq, neuron_bytes)]
    cpu_only = sum(_layer_time(0.0, t, 0, len(f), b, timing) for t, f, b in zip(total, freq, neuron_bytes))
    used = sum(n * int(b) for n, b in zip(n_gpu, neuron_bytes))
    return Plan(n_gpu, gpu_mass, total, used, int(budget), float(sum(layer_t)), float(cpu_only),
                method, layer_t)


def _layer_time(gpu_mass, total, n_gpu, n_ff, b, s: Speeds) -> float:
    gpu = gpu_mass * b / s.gpu_bytes_per_s
    cpu = (total - gpu_mass) * b / s.cpu_bytes_per_s
    return max(gpu, cpu) + (s.sync_s if 0 < n_gpu < n_ff else 0.0)


def powerinfer_greedy(freq: Sequence[np.ndarray], neuron_bytes: Sequence[int], budget: int,
                      speeds: Speeds = Speeds(), group: int = 256) -> Plan:
    """PowerInfer's placement: the globally hottest groups (each layer's neurons sorted
    hottest first and cut into groups), taken in order of mass while they fit the budget
    (a layer whose next group does not fit takes no more)."""
    ch = _choices(freq, neuron_bytes, Speeds(objective="mass"), group)
    picks, used = [0] * len(ch), 0
    heap = [(-(c[3][1] - c[3][0]), l) for l, c in enumerate(ch) if len(c[3]) > 1]
    heapq.heapify(heap)
    while heap:   # each layer's groups in order, the layer with the heaviest next group first
        _, l = heapq.heappop(heap)
        weights, _, _, mass = ch[l]
        k = picks[l] + 1
        if used + int(weights[k] - weights[k - 1]) > budget:
            continue
        picks[l], used = k, used + int(weights[k] - weights[k - 1])
        if k + 1 < len(mass):
            heapq.heappush(heap, (-(mass[k + 1] - mass[k]), l))
    return _plan(ch, picks, freq, neuron_bytes, budget, speeds, "greedy")
