"""The FFNs of PowerInfer (ReLU-family) models as ggml_sparse graphs.

A PowerInfer file (PWRI magic) stores per layer the gate and up weights, the
down projection transposed (``ffn_down_t``: row i holds neuron i's output
weights) and an activation predictor ``fc1``/``fc2``. Per token the predictor
scores every neuron from the FFN's input x (the residual stream *before*
ffn_norm), and neuron i fires iff its score reaches the threshold; only the
firing neurons are computed, h being ffn_norm(x):

    score = fc2 . relu(fc1 . x)          fires(i) = score[i] >= threshold
    llama:  act[i] = relu(gate_i . h) * (up_i . h)
    bamboo: act[i] = relu(gate_i . h) * relu(up_i . h)
    out    = sum over firing i of act[i] * ffn_down_t[i]

``sparse_ffn`` builds that graph; ``dense_relu_ffn`` computes every neuron (the
same file run densely, to compare speed and output); ``make_ffn`` picks the
builder for a loaded model.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Dict, Optional, Tuple

from ..config import ModelConfig
from ..gguf_model import ModelLoadError
from ..tensor import Context, Tensor, Unary
from .llama import FFN, LayerWeights, LlamaWeights

THRESHOLD_KEY = "powerinfer.sparse_threshold"


def sparse_ffn(ctx: Context, layer: LayerWeights, x: Tensor, h: Tensor, *, threshold: float,
               both_relu: bool) -> Tensor:
    """FFN output {n_embd, n_tokens} computing only the neurons the predictor picks
    (per token: a batch keeps each token's own neurons)."""
    idx = ctx.sparse_predict(layer.fc1, layer.fc2, x, threshold)
    gate = ctx.mul_mat_sparse(layer.w_gate, h, idx)
    up = ctx.mul_mat_sparse(layer.w_up, h, idx)
    act = ctx.glu(gate, up, Unary.RELU, gate_b=both_relu)
    return ctx.axpy_sparse(layer.w_down_t, act, idx)


def dense_relu_ffn(ctx: Context, layer: LayerWeights, x: Tensor, h: Tensor, *,
                   both_relu: bool) -> Tensor:
    """The same FFN with every neuron computed (no predictor)."""
    act = ctx.glu(ctx.mul_mat(layer.w_gate, h), ctx.mul_mat(layer.w_up, h), Unary.RELU, gate_b=both_relu)
    return ctx.axpy_sparse(layer.w_down_t, act)


def file_threshold(md: Dict[str, Any]) -> float:
    return float(md.get(THRESHOLD_KEY, 0.0))


def make_ffn(cfg: ModelConfig, w: LlamaWeights, md: Dict[str, Any],
             sparse_threshold: Optional[float] = None, dense: bool = False) -> Tuple[Optional[FFN], str]:
    """(FFN builder, one-line description) for a loaded model.

    Models in PowerInfer's layout (ffn_down_t in every layer) get the sparse
    FFN with the threshold `sparse_threshold`, or the file's
    ``powerinfer.sparse_threshold`` (default 0.0) when it is None; with
    `dense` every neuron is computed. Other models get None (the dense FFN of
    model/llama.py, whose activation follows the config: SwiGLU, ReLU-llama
    or bamboo's relu on both)."""
    powerinfer = [layer.w_down_t is not None for layer in w.layers]
    if not any(powerinfer):
        if sparse_threshold is not None or dense:
            warnings.warn("sparse_threshold and dense only apply to PowerInfer models "
                          "(ffn_down_t + predictor); this model runs its dense FFN", RuntimeWarning)
        return None, ""
    if not all(powerinfer):
        raise ModelLoadError("ffn_down_t is missing in some layers: a PowerInfer model needs it in all")
    both_relu = cfg.arch == "bamboo"
    act = "relu(gate)*relu(up)" if both_relu else "relu(gate)*up"
    if dense:
        return functools.partial(dense_relu_ffn, both_relu=both_relu), f"dense ReLU FFN {act} (dense=True)"
    for i, layer in enumerate(w.layers):
        check_predictor(cfg, i, layer)
    threshold = file_threshold(md) if sparse_threshold is None else float(sparse_threshold)
    if math.isnan(threshold):
        raise ValueError("sparse_threshold must be a number, got NaN")
    hidden = sorted({layer.fc1.ne[1] for layer in w.layers})
    desc = (f"sparse FFN {act}, predictor hidden {'/'.join(map(str, hidden))}, "
            f"threshold {threshold:g}")
    return functools.partial(sparse_ffn, threshold=threshold, both_relu=both_relu), desc


def check_predictor(cfg: ModelConfig, i: int, layer: LayerWeights) -> None:
    if layer.fc1 is None or layer.fc2 is None:
        raise ModelLoadError(f"layer {i} has no activation predictor (blk.{i}.fc1/fc2): "
                             "run it with dense=True")
    e, f = cfg.n_embd, cfg.n_ff
    fc1, fc2 = layer.fc1.ne, layer.fc2.ne
    if len(fc1) != 2 or fc1[0] != e or len(fc2) != 2 or fc2 != (fc1[1], f):
        raise ModelLoadError(f"blk.{i}: predictor shapes fc1 {list(fc1)}, fc2 {list(fc2)} do not fit "
                             f"n_embd {e}, n_ff {f} (want fc1 [{e}, H], fc2 [H, {f}])")
