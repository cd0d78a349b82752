"""Experts as units of the VRAM plan, their profile, and the slot policies (issue 17).

A MoE layer's experts are stacked tensors ({K, M, n_expert} for gate, up and down). The
hybrid plan (`planner.plan_hybrid`) places whole experts: expert e of layer l is a unit of
`ExpertBytes.total` bytes (its three planes, the file's types) worth its activation
frequency (a routing profile, `expert_profile.py`; uniform without one). A layer with S
placed experts gets device tensors of S slots ({K, M, S} each), an I32 map {n_expert} ->
slot or -1, and its share of the MoE scratch (`moe_scratch_bytes`), all counted like every
other part of the arena (`layer_slot_bytes`). `n_cpu_moe` (llama.cpp's --n-cpu-moe) keeps
the experts of layers 0..N-1 off the device in both plans.

`LRUSlots` is the slot policy of the expert cache (offload/expert_cache.py runs it between
forwards; scripts/bench_expert_cache.py replays routing traces through it), `PinnedLRUSlots`
an LRU over half the slots with the other half pinned to a profile's hottest experts,
`static_hits` the baseline of a fixed hot set.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .budget import F32, I32, arena_bytes, part
from .model_spec import ExpertBytes, ModelSpec


@dataclass
class LayerExperts:
    """A layer's expert slots on the device: `experts[s]` is the expert the plan puts in slot s
    (the highest-valued ones, in order of value), `nbytes` the layer's device bytes."""
    layer: int
    n_expert: int
    experts: np.ndarray
    nbytes: int

    @property
    def n_slots(self) -> int:
        return len(self.experts)


def layer_slot_bytes(eb: ExpertBytes, n_slots: int, n_expert: int) -> int:
    """Device bytes of a layer with n_slots expert slots: the three {K, M, n_slots} tensors and
    the I32 id -> slot map (0 without slots)."""
    if n_slots == 0:
        return 0
    return part(n_slots * eb.gate) + part(n_slots * eb.up) + part(n_slots * eb.down) + part(I32 * n_expert)


def moe_scratch_bytes(spec: ModelSpec) -> int:
    """The device's share of one MoE FFN's intermediates for n_batch tokens (reserved once when
    any expert is placed; the scheduler reuses them from layer to layer): the token rows and
    ids copied in, the slot ids, gate/up/activation {n_ff_exp, k, T}, the experts' outputs, the
    CPU part's outputs copied in and their sum {n_embd, k, T}, the routing weights and the
    weighted sum, and the residual rows that follow it on the device."""
    T, k, E, F = spec.scratch.n_batch, spec.n_expert_used, spec.n_embd, spec.n_ff_exp
    return 2 * part(I32 * k * T) + part(F32 * k * T) + 3 * part(F32 * F * k * T) \
        + 3 * part(F32 * E * k * T) + 8 * part(F32 * E * T)


def expert_values(spec: ModelSpec, counts: Optional[Sequence[np.ndarray]]) -> List[np.ndarray]:
    """Per layer the value of each expert: its routing frequency from `counts` (per layer
    n_expert counts), uniform without a profile."""
    if counts is None:
        return [np.ones(spec.n_expert) for _ in range(spec.n_layer)]
    if len(counts) != spec.n_layer:
        raise ValueError(f"expert counts given for {len(counts)} layers, the model has {spec.n_layer}")
    out = []
    for i, c in enumerate(counts):
        c = np.asarray(c, dtype=np.float64).reshape(-1)
        if c.size != spec.n_expert or (c < 0).any():
            raise ValueError(f"layer {i}: expert counts must be {spec.n_expert} non-negative numbers")
        out.append(c / max(c.sum(), 1.0))
    return out


def fill_experts(spec: ModelSpec, budget: int, used: int, values: List[np.ndarray],
                 n_cpu_moe: int = 0, max_slots: Optional[int] = None) -> Tuple[List[LayerExperts], int]:
    """Whole experts by value (highest first; equal values round-robin over the layers) while
    the arena still fits `budget` after `used` bytes; layers < n_cpu_moe get none, no layer
    more than `max_slots` (None: n_expert). Returns the layers with slots and the MoE scratch
    reserved (0 when no expert fits)."""
    cap = spec.n_expert if max_slots is None else int(max_slots)
    if cap < 0:
        raise ValueError(f"the expert slots per layer must be >= 0, got {max_slots!r}")
    layers = [i for i in range(max(0, n_cpu_moe), spec.n_layer) if spec.expert_bytes[i].total > 0]
    if not layers or spec.n_expert == 0:
        return [], 0
    scratch = moe_scratch_bytes(spec)
    units = []
    for i in layers:
        order = sorted(range(spec.n_expert), key=lambda e: (-values[i][e], e))
        units += [(-values[i][e], rank, i, e) for rank, e in enumerate(order)]
    units.sort()
    chosen: Dict[int, List[int]] = {i: [] for i in layers}
    total = used + scratch
    for _, _, i, e in units:
        n = len(chosen[i])
        if n >= cap:
            continue
        grow = layer_slot_bytes(spec.expert_bytes[i], n + 1, spec.n_expert) - \
            layer_slot_bytes(spec.expert_bytes[i], n, spec.n_expert)
        if arena_bytes(total + grow) <= budget:
            chosen[i].append(e)
            total += grow
    out = [LayerExperts(i, spec.n_expert, np.asarray(chosen[i], dtype=np.int32),
                        layer_slot_bytes(spec.expert_bytes[i], len(chosen[i]), spec.n_expert))
           for i in layers if chosen[i]]
    return out, (scratch if out else 0)


# ---- profiles ----

def save_expert_counts(path: str, counts: Sequence[np.ndarray], n_tokens: int) -> None:
    """Write per-layer expert routing counts (n_layer x n_expert) and the tokens counted."""
    np.savez(path, expert_counts=np.asarray(counts, dtype=np.int64), n_tokens=np.int64(n_tokens))


def load_expert_counts(path: str) -> Tuple[List[np.ndarray], int]:
    """(per-layer counts, tokens counted) from `save_expert_counts`'s file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"expert profile {path!r} does not exist (make one with "
                                "python -m pyinfer.offload.expert_profile)")
    with np.load(path) as z:
        if "expert_counts" not in z:
            raise ValueError(f"{path}: not an expert profile (no expert_counts array)")
        return list(z["expert_counts"]), int(z["n_tokens"])


def counts_from_trace(trace: np.ndarray, n_expert: int) -> List[np.ndarray]:
    """Per-layer counts of a routing trace (tokens, layers, k)."""
    return [np.bincount(trace[:, i].reshape(-1), minlength=n_expert) for i in range(trace.shape[1])]


# ---- slot policies ----

class LRUSlots:
    """One layer's S device slots run as an LRU cache of experts.

    `initial`: the experts first in the slots, slot by slot, in priority order (a profile's
    most frequent first): the first is the most recent, the last the first evicted.
    `access(experts)` is one token: its experts found in the slots are hits (counted against
    the slots as they were when the token ran), they become the most recent; each missing one
    is then loaded into a free slot, else into the slot of the least recently used expert.
    Returns the hits and the loads [(slot, expert)]."""

    def __init__(self, n_slots: int, initial: Iterable[int] = ()):
        if n_slots < 0:
            raise ValueError("n_slots must be >= 0")
        self.n_slots = n_slots
        self.slot_of: Dict[int, int] = {}
        self.order: "OrderedDict[int, None]" = OrderedDict()     # least recent first
        initial = [int(e) for e in initial][:n_slots]   # slot s: initial[s]; the first the most recent
        for s, e in enumerate(initial):
            self.slot_of[e] = s
        for e in reversed(initial):
            self.order[e] = None
        self.free = [s for s in range(n_slots) if s >= len(self.slot_of)]

    def access(self, experts: Iterable[int]) -> Tuple[int, List[Tuple[int, int]]]:
        experts = [int(e) for e in experts]
        present = [e for e in experts if e in self.slot_of]
        for e in present:
            self.order.move_to_end(e)
        loads = []
        if self.n_slots == 0:
            return len(present), loads
        for e in [e for e in experts if e not in set(present)]:
            if self.free:
                s = self.free.pop(0)
            else:
                victim, _ = self.order.popitem(last=False)
                s = self.slot_of.pop(victim)
            self.slot_of[e] = s
            self.order[e] = None
            loads.append((s, e))
        return len(present), loads

    def slots(self) -> np.ndarray:
        """slot -> expert (-1: empty)."""
        out = np.full(self.n_slots, -1, dtype=np.int32)
        for e, s in self.slot_of.items():
            out[s] = e
        return out


class PinnedLRUSlots(LRUSlots):
    """LRUSlots whose first `n_pinned` initial experts (a profile's most frequent) are never
    evicted: the other slots run as an LRU (a static hot set plus a cache for the rest)."""

    def __init__(self, n_slots: int, initial: Iterable[int] = (), n_pinned: int = 0):
        initial = list(initial)[:n_slots]
        super().__init__(n_slots, initial)
        self.pinned = {int(e) for e in initial[:n_pinned]}
        for e in self.pinned:
            del self.order[e]               # never a victim

    def access(self, experts: Iterable[int]) -> Tuple[int, List[Tuple[int, int]]]:
        experts = [int(e) for e in experts]
        present = [e for e in experts if e in self.slot_of]
        for e in present:
            if e not in self.pinned:
                self.order.move_to_end(e)
        loads = []
        for e in [e for e in experts if e not in set(present)]:
            if self.free:
                s = self.free.pop(0)
            elif self.order:
                victim, _ = self.order.popitem(last=False)
                s = self.slot_of.pop(victim)
            else:
                break                       # every slot pinned: the misses stay on the CPU
            self.slot_of[e] = s
            self.order[e] = None
            loads.append((s, e))
        return len(present), loads


def make_slots(policy: str, n_slots: int, initial: Iterable[int] = ()) -> LRUSlots:
    """The slot policy by name: "lru", or "pinned" (half the slots pinned to the first half of
    `initial`, the profile's most frequent experts; the other half an LRU)."""
    if policy == "lru":
        return LRUSlots(n_slots, initial)
    if policy == "pinned":
        return PinnedLRUSlots(n_slots, initial, n_slots // 2)
    raise ValueError(f"unknown expert cache policy {policy!r} (lru, pinned)")


def lru_hits(trace: np.ndarray, n_slots: int, initial: Iterable[int] = (), policy: str = "lru") -> Tuple[int, int]:
    """(hits, loads) of a slot policy (default an LRU) of n_slots over one layer's trace (tokens, k)."""
    lru, hits, loads = make_slots(policy, n_slots, initial), 0, 0
    for row in trace:
        h, ld = lru.access(row)
        hits += h
        loads += len(ld)
    return hits, loads


def static_hits(trace: np.ndarray, hot: Iterable[int]) -> int:
    """Hits of a fixed hot set over one layer's trace (tokens, k)."""
    return int(np.isin(trace, np.asarray(list(hot), dtype=np.int64)).sum())
