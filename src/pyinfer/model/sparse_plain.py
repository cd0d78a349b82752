"""The PowerInfer FFN of architectures without a gate ("plain" FFN, model/arch.py):
PowerInfer's ReluFalcon and OPT files.

Per token the predictor picks the neurons as for llama (model/sparse.py: score = fc2 .
relu(fc1 . x) >= threshold, x the FFN's residual input: falcon's layer input, OPT's stream
after attention); only their up rows and ffn_down_t rows are read, h being the FFN's
normed input:

    act[i] = relu(up_i . h + b_up[i])          for the picked neurons i
    out    = sum over them of act[i] * ffn_down_t[i]  (+ b_down)

OPT has the biases (ffn_up.bias, ffn_down_t.bias), ReluFalcon none. A neuron not picked
contributes nothing: its up entry is 0 before the bias, and the axpy never reads it.
With every neuron active (dense=True, or a threshold of -inf) the values are those of the
dense product: gs_mul_mat_sparse equals gs_mul_mat per entry and gs_axpy_sparse sums in
ascending neuron order either way. Neuron bundles need a gate row: these FFNs run the three
ops.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

from ..tensor import Context, Tensor, Unary
from .llama import FFN, LayerWeights, LlamaWeights


def plain_relu_ffn(ctx: Context, layer: LayerWeights, h: Tensor, idx: Optional[Tensor],
                   skip: Optional[Tensor] = None) -> Tensor:
    """relu(up . h + b_up) . ffn_down_t + b_down over the neurons of `idx` (None: all) that
    `skip` does not mark (the hybrid FFN's hot ones)."""
    up = ctx.mul_mat_sparse(layer.w_up, h, idx, skip)
    if layer.b_up is not None:
        up = ctx.add(up, layer.b_up)
    out = ctx.axpy_sparse(layer.w_down_t, ctx.unary(up, Unary.RELU), idx, skip)
    return ctx.add(out, layer.b_down_t) if layer.b_down_t is not None else out


def sparse_plain_ffn(ctx: Context, layer: LayerWeights, x: Tensor, h: Tensor, *, threshold: float,
                     idx: Optional[Tensor] = None, skip: Optional[Tensor] = None) -> Tensor:
    """The FFN output {n_embd, n_tokens} of the neurons the predictor picks (per token)."""
    if idx is None:
        idx = ctx.sparse_predict(layer.fc1, layer.fc2, x, threshold)
    return plain_relu_ffn(ctx, layer, h, idx, skip)


def dense_plain_relu_ffn(ctx: Context, layer: LayerWeights, x: Tensor, h: Tensor) -> Tensor:
    """The same FFN with every neuron computed (no predictor)."""
    return plain_relu_ffn(ctx, layer, h, None)


def make_plain_ffn(w: LlamaWeights, threshold: Optional[float], bundle: bool) -> Tuple[FFN, str]:
    """(FFN builder, description) of a PowerInfer file whose FFN has no gate: the sparse FFN
    at `threshold`, or with None (dense=True) every neuron. The predictors are checked by the
    caller (model/sparse.py's make_ffn)."""
    bias = ", up/down biases" if w.layers[0].b_up is not None else ""
    layout = ", no neuron bundles (no gate)" if bundle else ""
    if threshold is None:
        return dense_plain_relu_ffn, f"dense ReLU FFN relu(up){bias} (dense=True){layout}"
    hidden = sorted({layer.fc1.ne[1] for layer in w.layers})
    desc = (f"sparse FFN relu(up){bias}, predictor hidden {'/'.join(map(str, hidden))}, "
            f"threshold {threshold:g}{layout}")
    return functools.partial(sparse_plain_ffn, threshold=threshold), desc
