"""The hybrid MoE FFN: per layer, some experts on a device (in S slots), the rest on the CPU.

For a layer with slots (the plan's `LayerExperts`, offload/experts.py), `ExpertSlots` holds on
the device three tensors of S slots, `gate`/`up` {n_embd, n_ff_exp, S} and `down`
{n_ff_exp, n_embd, S} (slot s: the planes of the expert in it, the file's types), and the map
`device_map` I32 {n_expert}: expert -> slot, -1 where the expert is not on the device; on the
host `cpu_map`: expert -> itself, -1 where it is on the device. Per token (model/moe.py's
build_moe_ffn with `expert_map`):

    ids               = top_k(router)                      (CPU, as before)
    slot_ids          = map_ids(ids, device_map)            (device)
    d_dev             = the experts' FFN over slot_ids      (device: mul_mat_id on the slots)
    d_cpu             = the experts' FFN over map_ids(ids, cpu_map)   (CPU: the file's tensors)
    out               = moe_sum(d_dev + d_cpu, weights)

mul_mat_id gives zero rows for ids of -1, so each row (token t, choice u) is computed on
exactly one side and is 0.0 on the other: d_dev + d_cpu is the CPU-only graph's down
{n_embd, k, T} exactly (x + 0 = x), mul_mat_id's rows do not depend on which other rows or
which tensor they come from (gs_moe.h), and moe_sum then adds the same numbers in the same
order: the result is bit-identical to the CPU-only FFN. (Summing each side with moe_sum and
adding the two sums would reorder the float additions: not exact.)

The slots' contents can change between forwards (`set_slot`: the expert cache,
offload/expert_cache.py); the graphs read the tensors and maps at each compute.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from .. import backend
from .._lib import check, ffi, lib
from ..tensor import Context, Tensor


@dataclass
class LayerSlots:
    """One layer's device slots (what build_moe_ffn's expert_map is)."""
    layer: int
    gate: Tensor
    up: Tensor
    down: Tensor
    device_map: Tensor          # I32 {n_expert} on the device: expert -> slot, -1
    cpu_map: Tensor             # I32 {n_expert} on the host: expert -> expert, -1 on the device
    slot_expert: np.ndarray     # slot -> expert (-1: empty)

    @property
    def n_slots(self) -> int:
        return len(self.slot_expert)


def _planes(t: Tensor, n_expert: int) -> np.ndarray:
    """A host expert tensor's bytes as (n_expert, plane bytes), zero-copy."""
    return t.raw().reshape(n_expert, -1)


class ExpertSlots:
    """The device-resident expert slots of every layer of a plan (`plan.experts`)."""

    def __init__(self, weights, layers: list, device: backend.Backend):
        self.device = device
        self.layers: Dict[int, LayerSlots] = {}
        self.n_expert = 0
        need = 0
        for le in layers:
            lw = weights.layers[le.layer]
            for t in (lw.ffn_gate_exps, lw.ffn_up_exps, lw.ffn_down_exps):
                need += le.n_slots * t.nbytes // t.ne[2] + 512
            need += 8 * le.n_expert + 1024
        self.ctx = Context(mem_size=need + 4096 * (len(layers) + 1))
        self.nbytes = 0
        self.bytes_loaded = 0           # host -> device bytes of set_slot (the cache's traffic)
        try:
            for le in layers:
                self.layers[le.layer] = self._layer(weights.layers[le.layer], le)
        except BaseException:
            self.release()
            raise

    def _layer(self, lw, le) -> LayerSlots:
        ctx, n_expert, S = self.ctx, le.n_expert, le.n_slots
        self.n_expert = n_expert
        experts = np.asarray(le.experts, dtype=np.int64)
        out = {}
        for key, t in (("gate", lw.ffn_gate_exps), ("up", lw.ffn_up_exps), ("down", lw.ffn_down_exps)):
            if t.ne[2] != n_expert:
                raise ValueError(f"{t.name}: {t.ne[2]} experts, the plan says {n_expert}")
            c = ctx.new_tensor(t.type, (t.ne[0], t.ne[1], S), f"{t.name} (slots)")
            c.raw()[:] = _planes(t, n_expert)[experts].reshape(-1)
            out[key] = c
        slot_expert = experts.astype(np.int32)
        dmap, cmap = _maps(slot_expert, n_expert)
        out["device_map"] = ctx.from_numpy(dmap, f"blk.{le.layer}.expert_slot_map")
        out["cpu_map"] = ctx.from_numpy(cmap, f"blk.{le.layer}.expert_cpu_map")
        for key in ("gate", "up", "down", "device_map"):
            backend.place(out[key], self.device)
            self.nbytes += out[key].nbytes
        return LayerSlots(le.layer, slot_expert=slot_expert, **out)

    def get(self, layer: int) -> Optional[LayerSlots]:
        return self.layers.get(layer)

    def set_slots(self, weights, layer: int, loads: List[tuple]) -> int:
        """Put expert e into slot s for each (s, e) of `loads` (a counted host -> device copy of
        its three planes), then rewrite both maps. Returns the bytes copied."""
        ls = self.layers[layer]
        lw = weights.layers[layer]
        moved = 0
        for s, e in loads:
            for dst, src in ((ls.gate, lw.ffn_gate_exps), (ls.up, lw.ffn_up_exps), (ls.down, lw.ffn_down_exps)):
                plane = np.ascontiguousarray(_planes(src, self.n_expert)[e])
                check(lib.gs_tensor_write(dst.ptr, s * dst.nb[2], ffi.from_buffer(plane), plane.nbytes))
                moved += plane.nbytes
            ls.slot_expert[s] = e
        if loads:
            dmap, cmap = _maps(ls.slot_expert, self.n_expert)
            backend.write(ls.device_map, dmap)
            ls.cpu_map.numpy()[:] = cmap
            moved += dmap.nbytes
        self.bytes_loaded += moved
        return moved

    def release(self) -> None:
        for ls in self.layers.values():
            for t in (ls.gate, ls.up, ls.down, ls.device_map):
                backend.unplace(t)
        self.layers = {}
        self.ctx.close()


def _maps(slot_expert: np.ndarray, n_expert: int):
    dmap = np.full(n_expert, -1, dtype=np.int32)
    cmap = np.arange(n_expert, dtype=np.int32)
    for s, e in enumerate(slot_expert):
        if e >= 0:
            dmap[e] = s
            cmap[e] = -1
    return dmap, cmap


def hybrid_moe_ffn(cfg, slots: ExpertSlots):
    """build_moe_ffn as an FFN builder with each layer's slots as its expert_map (layers
    without slots: the CPU-only FFN)."""
    from .moe import build_moe_ffn
    return lambda ctx, layer, x, h: build_moe_ffn(ctx, cfg, layer, h, slots.get(layer.index))
