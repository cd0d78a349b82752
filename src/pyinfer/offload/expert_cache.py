"""A device-resident expert cache: each layer's S expert slots run as an LRU cache.

The slots (model/moe_hybrid.py's ExpertSlots) start with the plan's experts (the most
frequent in a profile, else the first ones). After every forward the engine calls
`ExpertCache.after_forward` (Engine.forward_hooks): it reads the routing of the forward
(`moe_ids.<layer>`), counts per layer the choices that found their expert in a slot (hits:
computed on the device) and the others (computed on the CPU), updates the layer's LRU state
(offload/experts.py's LRUSlots) token by token, and copies the experts that became resident
into their slots (a counted host -> device write of their three planes), then rewrites the two
maps. The next forward uses the new maps. Whatever the cache holds, each choice is computed on
exactly one side, so the logits are those of the CPU-only run.

A prompt batch of T tokens is counted against the slots as they were when it ran; its LRU
updates are replayed in token order and only the final state is copied (an expert loaded and
evicted again within the batch costs nothing).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

import numpy as np

from .experts import make_slots


@dataclass
class CacheStats:
    hits: int = 0                   # expert choices computed in a device slot
    misses: int = 0                 # choices computed on the CPU
    loads: int = 0                  # experts copied into slots
    bytes_loaded: int = 0           # host -> device bytes of those copies (and the maps)
    tokens: int = 0
    per_layer: Dict[int, list] = field(default_factory=dict)    # layer -> [hits, misses]

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0


class ExpertCache:
    """A slot policy (offload/experts.py's make_slots: "lru", or "pinned": half the slots keep
    the plan's hottest experts, half run as an LRU) over the slots of `slots` (ExpertSlots)."""

    def __init__(self, weights, slots, policy: str = "lru"):
        self.weights, self.slots, self.policy = weights, slots, policy
        self.lru = {}
        for layer, ls in slots.layers.items():
            # the plan's experts in their slots (slot s holds slot_expert[s]; no slot is empty)
            self.lru[layer] = make_slots(policy, ls.n_slots, ls.slot_expert.tolist())
        self.stats = CacheStats()

    def after_forward(self, routing: Dict[int, np.ndarray]) -> None:
        """Count the forward's hits and move experts (routing: layer -> ids (T, k))."""
        for layer, ids in routing.items():
            lru = self.lru.get(layer)
            if lru is None:
                continue
            before = dict(lru.slot_of)
            hits = sum(int(e) in before for e in ids.reshape(-1))
            pl = self.stats.per_layer.setdefault(layer, [0, 0])
            pl[0] += hits
            pl[1] += ids.size - hits
            self.stats.hits += hits
            self.stats.misses += ids.size - hits
            for row in ids:
                lru.access(row)
            loads = [(s, e) for e, s in lru.slot_of.items() if before.get(e) != s]
            self.stats.loads += len(loads)
            self.stats.bytes_loaded += self.slots.set_slots(self.weights, layer, loads)
        if routing:
            self.stats.tokens += max(len(ids) for ids in routing.values())
