"""PowerInfer's hybrid FFN on a device backend: per layer, the hot neurons' rows live on the
device and the cold ones on the CPU; both shares run at the same time and are added.

For a layer with a hot slice (the plan's bucket B: ascending neuron ids, offload/planner.py),
`HotSlices` holds on the device compact copies of the bucket's rows of ffn_gate, ffn_up and
ffn_down_t ({n_embd, n_hot}; ffn_up's bias too for OPT), and the map neuron -> compact id
(-1 off the bucket). Per token, with idx the predictor's active neurons and h = ffn_norm(x):

    hot  (device): idx_hot = remap(idx, map)          the active hot neurons, compact ids
                   y_hot = sum over idx_hot of act_j * down_t_hot[j]
    cold (CPU):    y_cold = the sparse FFN over idx with skip = gpu_idx (the hot neurons)
    out = y_hot + y_cold

The graph lists the hot part first, so the scheduler starts the device's split, runs the
cold part on the CPU pool meanwhile and waits once, at the add (gs_backend.h). The result is
the sparse FFN's up to rounding: the two shares are summed apart, then added.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from .. import backend
from ..tensor import Context, GGMLType, Tensor, Unary
from .llama import FFN, LayerWeights, LlamaWeights


def _rows(t: Tensor, ids: np.ndarray) -> np.ndarray:
    """The raw bytes of rows `ids` of a host matrix t ({n, M}: one row per neuron)."""
    raw = backend.read(t).view(np.uint8).reshape(t.ne[1], -1)
    return np.ascontiguousarray(raw[ids])


class HotSlices:
    """The device-resident hot rows of each layer with a slice."""

    def __init__(self, w: LlamaWeights, slices: list, device: backend.Backend):
        self.layers: Dict[int, dict] = {}
        need = 0
        for s in slices:
            layer = w.layers[s.layer]
            for t in (layer.w_gate, layer.w_up, layer.w_down_t):
                if t is not None:
                    need += len(s.hot) * t.nbytes // t.ne[1] + 256
            need += 8 * layer.w_up.ne[1] + 1024
        self.ctx = Context(mem_size=need + 4096 * (len(slices) + 1))
        self.nbytes = 0
        for s in slices:
            self.layers[s.layer] = self._slice(w.layers[s.layer], np.asarray(s.hot, dtype=np.int64), device)

    def _slice(self, layer: LayerWeights, hot: np.ndarray, device) -> dict:
        ctx, n_ff = self.ctx, layer.w_up.ne[1]
        out = {"n_hot": len(hot)}
        for key, t in (("gate", layer.w_gate), ("up", layer.w_up), ("down_t", layer.w_down_t)):
            if t is None:
                out[key] = None
                continue
            c = ctx.new_tensor(t.type, (t.ne[0], len(hot)), f"{t.name} (hot)")
            backend.write(c, _rows(t, hot))
            out[key] = c
        if layer.b_up is not None:
            out["b_up"] = ctx.from_numpy(backend.read(layer.b_up)[hot].astype(np.float32), "b_up (hot)")
        mapping = np.full(n_ff, -1, dtype=np.int32)
        mapping[hot] = np.arange(len(hot), dtype=np.int32)
        out["map"] = ctx.from_numpy(mapping, f"{layer.w_up.name} hot map")
        gpu_idx = np.zeros(n_ff, dtype=np.int32)
        gpu_idx[hot] = 1
        out["skip"] = ctx.from_numpy(gpu_idx, f"{layer.w_up.name} gpu_idx")   # stays on the host
        for key in ("gate", "up", "down_t", "b_up", "map"):
            if out.get(key) is not None:
                backend.place(out[key], device)
                self.nbytes += out[key].nbytes
        return out

    def release(self) -> None:
        for s in self.layers.values():
            for key in ("gate", "up", "down_t", "b_up", "map"):
                if s.get(key) is not None:
                    backend.unplace(s[key])
        self.ctx.close()


def hybrid_ffn(cold: FFN, slices: HotSlices, layer_index: Dict[int, int], *, threshold: float,
               both_relu: bool = False) -> FFN:
    """The FFN builder: layers with a hot slice run hybrid, the others `cold` (the CPU sparse
    FFN). `cold` must accept skip= (model/sparse.py's sparse FFNs do)."""

    def build(ctx: Context, layer: LayerWeights, x: Tensor, h: Tensor) -> Tensor:
        s = slices.layers.get(layer_index[id(layer)])
        if s is None:
            return cold(ctx, layer, x, h)
        idx = ctx.sparse_predict(layer.fc1, layer.fc2, x, threshold)
        idx_hot = ctx.sparse_index_remap(idx, s["map"], s["n_hot"])
        if s["gate"] is not None:
            act = ctx.glu(ctx.mul_mat_sparse(s["gate"], h, idx_hot), ctx.mul_mat_sparse(s["up"], h, idx_hot),
                          Unary.RELU, gate_b=both_relu)
        else:
            up = ctx.mul_mat_sparse(s["up"], h, idx_hot)
            if s.get("b_up") is not None:
                up = ctx.add(up, s["b_up"])
            act = ctx.unary(up, Unary.RELU)
        y_hot = ctx.axpy_sparse(s["down_t"], act, idx_hot)
        return ctx.add(y_hot, cold(ctx, layer, x, h, idx=idx, skip=s["skip"]))
    return build


def layer_positions(w: LlamaWeights) -> Dict[int, int]:
    """id(LayerWeights) -> its layer number (the FFN builders see the layer object)."""
    return {id(layer): i for i, layer in enumerate(w.layers)}
