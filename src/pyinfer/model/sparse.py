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
builder for a loaded model. The architectures whose FFN has no gate (model/arch.py's
"plain" FFN: ReluFalcon, OPT) have their own pair, ``sparse_plain_ffn`` and
``dense_plain_relu_ffn`` (model/sparse_plain.py), with the up and down biases OPT has:

    act[i] = relu(up_i . h + b_up[i])     out = sum over firing i of act[i] * ffn_down_t[i] + b_down

Neuron bundles (``NeuronBundles``, on by default): at load time each layer's
gate, up and ffn_down_t rows are repacked into one record per neuron, [gate
row | up row | down row], and the mapped pages of the three matrices are
released; both builders then run the fused op ``sparse_ffn_bundle`` (one
contiguous fetch per active neuron instead of three scattered rows).

SwiGLU models without a predictor get training-free sparsity (CATS): a file
calibrated by ``python -m pyinfer.sparsity calibrate`` holds one magnitude
threshold per layer (``pyinfer.sparsity.thresholds``), and the gate is
computed densely to decide which neurons to keep:

    a = silu(gate . h)                   kept(i) = |a[i]| >= threshold[layer]
    act[i] = a[i] * (up_i . h)   for kept i, 0 otherwise
    out = ffn_down . act                 (or sum over kept i of act[i] * ffn_down_t[i])

``cats_ffn`` builds it. The down projection of a plain GGUF ({n_ff, n_embd},
quant blocks along n_ff) runs as the dense product of the zeroed activation:
skipping inactive neurons there means skipping columns, and whole 32-wide
blocks are almost never all inactive (docs/sparse_cpu.md, "Training-free
sparsity"). A file written with ``--down-t TYPE`` stores ``ffn_down_t``
instead, and the up and down rows of the kept neurons then run in one fused
op (``sparse_ffn_up_down``); that pays from about 70% sparsity on 7B shapes
(docs/sparse_cpu.md).
"""
from __future__ import annotations

import functools
import math
import mmap
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..config import ModelConfig
from ..gguf_model import GGUFFile, ModelLoadError
from ..tensor import Context, Tensor, Unary, row_size
from .arch import get_arch
from .llama import CATS_THRESHOLDS_KEY, FFN, LayerWeights, LlamaWeights
from .sparse_plain import make_plain_ffn

THRESHOLD_KEY = "powerinfer.sparse_threshold"
# CATS_THRESHOLDS_KEY (model/llama.py): f32 [n_layer], the |silu(gate)| cut per layer
CATS_TARGET_KEY = "pyinfer.sparsity.target"           # f32: fraction of neurons calibrated to drop


def sparse_ffn(ctx: Context, layer: LayerWeights, x: Tensor, h: Tensor, *, threshold: float,
               both_relu: bool, bundles: Optional["NeuronBundles"] = None,
               idx: Optional[Tensor] = None, skip: Optional[Tensor] = None) -> Tensor:
    """FFN output {n_embd, n_tokens} computing only the neurons the predictor picks
    (per token: a batch keeps each token's own neurons). `idx`: the predictor's index when
    already computed; `skip`: neurons computed elsewhere (the hybrid FFN's hot ones)."""
    if idx is None:
        idx = ctx.sparse_predict(layer.fc1, layer.fc2, x, threshold)
    if bundles is not None:
        return ctx.sparse_ffn_bundle(bundles[layer], h, idx, skip, both_relu=both_relu)
    gate = ctx.mul_mat_sparse(layer.w_gate, h, idx, skip)
    up = ctx.mul_mat_sparse(layer.w_up, h, idx, skip)
    act = ctx.glu(gate, up, Unary.RELU, gate_b=both_relu)
    return ctx.axpy_sparse(layer.w_down_t, act, idx, skip)


def dense_relu_ffn(ctx: Context, layer: LayerWeights, x: Tensor, h: Tensor, *,
                   both_relu: bool, bundles: Optional["NeuronBundles"] = None) -> Tensor:
    """The same FFN with every neuron computed (no predictor)."""
    if bundles is not None:
        return ctx.sparse_ffn_bundle(bundles[layer], h, both_relu=both_relu)
    act = ctx.glu(ctx.mul_mat(layer.w_gate, h), ctx.mul_mat(layer.w_up, h), Unary.RELU, gate_b=both_relu)
    return ctx.axpy_sparse(layer.w_down_t, act)


class NeuronBundles:
    """Per layer, the bundle tensor {3 n_embd, n_ff} (type of the FFN weights): row i is
    neuron i's record [ffn_gate row i | ffn_up row i | ffn_down_t row i], in memory
    owned here (64-byte aligned).

    `release`: the GGUFFile the weights are mapped from; the pages wholly inside the
    three source matrices are dropped from the process (madvise MADV_DONTNEED on the
    file's mapping) once copied, so the repack replaces the mapped copy instead of
    doubling resident memory. (Read again, they would fault in from the file.)"""

    def __init__(self, w: LlamaWeights, release: Optional[GGUFFile] = None):
        self._tensors: Dict[int, Tensor] = {}
        self._ctx = Context(mem_size=(len(w.layers) + 4) * 512, no_alloc=True)
        for i, layer in enumerate(w.layers):
            parts = (layer.w_gate, layer.w_up, layer.w_down_t)
            e, f = parts[0].ne
            part = row_size(parts[0].type, e)
            mem = np.empty(f * 3 * part + 64, dtype=np.uint8)
            start = -mem.ctypes.data % 64
            recs = mem[start:start + f * 3 * part].reshape(f, 3, part)
            for k, t in enumerate(parts):
                recs[:, k, :] = t.raw().reshape(f, part)
                if release is not None:
                    _release_pages(release, t.raw())
            bundle = self._ctx.new_tensor(parts[0].type, (3 * e, f), f"blk.{i}.ffn_bundle")
            bundle.set_data(recs.reshape(-1))
            self._tensors[id(layer)] = bundle

    @staticmethod
    def unsupported(w: LlamaWeights) -> Optional[str]:
        """Why the layers cannot be bundled (None: they can)."""
        for i, layer in enumerate(w.layers):
            types = {layer.w_gate.type, layer.w_up.type, layer.w_down_t.type}
            if len(types) != 1:
                return f"blk.{i}: gate/up/down_t types differ ({', '.join(sorted(t.name for t in types))})"
        return None

    def __getitem__(self, layer: LayerWeights) -> Tensor:
        return self._tensors[id(layer)]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self._tensors.values())


def _release_pages(f: GGUFFile, data: np.ndarray) -> None:
    """Drop the resident pages of the file mapping that lie wholly inside `data`."""
    mapped = f.reader.data                    # np.memmap of the whole file (offset 0)
    base = mapped.ctypes.data
    lo = data.ctypes.data - base
    hi = lo + data.nbytes
    if lo < 0 or hi > mapped.nbytes:
        return
    page = mmap.PAGESIZE
    lo = (lo + page - 1) // page * page
    hi = hi // page * page
    if hi > lo:
        mapped._mmap.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def cats_ffn(ctx: Context, layer: LayerWeights, x: Tensor, h: Tensor, *,
             thresholds: Dict[int, float]) -> Tensor:
    """SwiGLU FFN output {n_embd, n_tokens} computing up only for the neurons whose
    |silu(gate)| reaches the layer's threshold (thresholds: id(layer) -> value; per
    token in a batch), and down as the dense product of the zeroed activation or, when
    the file stores ffn_down_t, only for those neurons (one fused op for up and down)."""
    a = ctx.unary(ctx.mul_mat(layer.w_gate, h), Unary.SILU)
    idx = ctx.sparse_index_abs(a, thresholds[id(layer)])
    if layer.w_down_t is not None:
        return ctx.sparse_ffn_up_down(layer.w_up, layer.w_down_t, a, h, idx)
    return ctx.mul_mat(layer.w_down, ctx.mul(a, ctx.mul_mat_sparse(layer.w_up, h, idx)))


def dense_swiglu_ffn(ctx: Context, layer: LayerWeights, x: Tensor, h: Tensor) -> Tensor:
    """A calibrated file run densely: silu(gate)*up, down from ffn_down or ffn_down_t."""
    act = ctx.glu(ctx.mul_mat(layer.w_gate, h), ctx.mul_mat(layer.w_up, h), Unary.SILU)
    if layer.w_down_t is not None:
        return ctx.axpy_sparse(layer.w_down_t, act)
    return ctx.mul_mat(layer.w_down, act)


def cats_thresholds(cfg: ModelConfig, md: Dict[str, Any]) -> Optional[List[float]]:
    """The file's per-layer CATS thresholds, or None when it has none."""
    raw = md.get(CATS_THRESHOLDS_KEY)
    if raw is None:
        return None
    try:
        values = [float(v) for v in raw]
    except (TypeError, ValueError):
        raise ModelLoadError(f"{CATS_THRESHOLDS_KEY} must be an array of numbers") from None
    if len(values) != cfg.n_layer:
        raise ModelLoadError(f"{CATS_THRESHOLDS_KEY} has {len(values)} values for {cfg.n_layer} layers")
    if any(math.isnan(v) or v < 0 for v in values):
        raise ModelLoadError(f"{CATS_THRESHOLDS_KEY} holds a negative or NaN threshold")
    return values


def make_cats_ffn(cfg: ModelConfig, w: LlamaWeights, md: Dict[str, Any], thresholds: List[float],
                  sparse_threshold: Optional[float], dense: bool) -> Tuple[FFN, str]:
    if cfg.ffn_act != "silu" or cfg.ffn_gate_both:
        raise ModelLoadError(f"{CATS_THRESHOLDS_KEY} needs a SwiGLU FFN (silu(gate)*up), "
                             f"this model's is {cfg.ffn_act}")
    if any(layer.fc1 is not None for layer in w.layers):
        raise ModelLoadError(f"{CATS_THRESHOLDS_KEY} and a predictor (fc1/fc2) in one file: "
                             "pick one kind of sparsity")
    if sparse_threshold is not None:
        warnings.warn("sparse_threshold is the PowerInfer predictor's threshold; this model's "
                      f"per-layer thresholds come from {CATS_THRESHOLDS_KEY}", RuntimeWarning)
    down_t = w.layers[0].w_down_t
    if dense:
        down = "ffn_down_t axpy" if down_t is not None else "dense down"
        return dense_swiglu_ffn, f"dense SwiGLU FFN ({down}; calibrated file, dense=True)"
    down = f"up and ffn_down_t {down_t.type.name} fused" if down_t is not None else "dense down"
    target = md.get(CATS_TARGET_KEY)
    desc = (f"CATS sparse FFN |silu(gate)| >= per-layer threshold "
            f"({min(thresholds):.3g}..{max(thresholds):.3g}"
            + (f", calibrated for {float(target):.0%} sparsity" if target is not None else "")
            + f"), {down}")
    by_layer = {id(layer): t for layer, t in zip(w.layers, thresholds)}
    return functools.partial(cats_ffn, thresholds=by_layer), desc


def file_threshold(md: Dict[str, Any]) -> float:
    return float(md.get(THRESHOLD_KEY, 0.0))


def predictor_threshold(md: Dict[str, Any], sparse_threshold: Optional[float]) -> float:
    """The predictor's threshold: `sparse_threshold`, or the file's when it is None."""
    threshold = file_threshold(md) if sparse_threshold is None else float(sparse_threshold)
    if math.isnan(threshold):
        raise ValueError("sparse_threshold must be a number, got NaN")
    return threshold


def make_ffn(cfg: ModelConfig, w: LlamaWeights, md: Dict[str, Any],
             sparse_threshold: Optional[float] = None, dense: bool = False,
             bundle: bool = False, release: Optional[GGUFFile] = None) -> Tuple[Optional[FFN], str]:
    """(FFN builder, one-line description) for a loaded model.

    Models in PowerInfer's layout (ffn_down_t in every layer) get the sparse
    FFN with the threshold `sparse_threshold`, or the file's
    ``powerinfer.sparse_threshold`` (default 0.0) when it is None; with
    `dense` every neuron is computed. Other models get None (the dense FFN of
    model/llama.py, whose activation follows the config: SwiGLU, ReLU-llama
    or bamboo's relu on both).

    With `bundle`, the FFN weights are repacked into ``NeuronBundles`` (the pages of
    `release`'s mapping that held them are released) and the fused op runs; models
    whose gate/up/down_t types differ keep the three matrices (the description says
    so).

    A file with per-layer CATS thresholds (``pyinfer.sparsity.thresholds``) gets
    ``cats_ffn``, or with `dense` the dense SwiGLU FFN."""
    powerinfer = [layer.w_down_t is not None for layer in w.layers]
    cats = cats_thresholds(cfg, md)
    if cats is not None:
        if any(powerinfer) and not all(powerinfer):
            raise ModelLoadError("ffn_down_t is missing in some layers: a calibrated file stores it in all or none")
        return make_cats_ffn(cfg, w, md, cats, sparse_threshold, dense)
    if not any(powerinfer):
        if sparse_threshold is not None or dense:
            warnings.warn("sparse_threshold and dense only apply to PowerInfer models "
                          "(ffn_down_t + predictor) and calibrated files (pyinfer.sparsity.thresholds); "
                          "this model runs its dense FFN", RuntimeWarning)
        return None, ""
    if not all(powerinfer):
        raise ModelLoadError("ffn_down_t is missing in some layers: a PowerInfer model needs it in all")
    for i, layer in enumerate(w.layers):
        if not dense:
            check_predictor(cfg, i, layer)
    if get_arch(cfg.arch).ffn == "plain":
        return make_plain_ffn(w, None if dense else predictor_threshold(md, sparse_threshold), bundle)
    both_relu = cfg.arch == "bamboo"
    act = "relu(gate)*relu(up)" if both_relu else "relu(gate)*up"
    bundles, layout = None, ""
    if bundle:
        why = NeuronBundles.unsupported(w)
        bundles = NeuronBundles(w, release) if why is None else None
        layout = ", neuron bundles" if why is None else f", no neuron bundles ({why})"
    if dense:
        return (functools.partial(dense_relu_ffn, both_relu=both_relu, bundles=bundles),
                f"dense ReLU FFN {act} (dense=True){layout}")
    threshold = predictor_threshold(md, sparse_threshold)
    hidden = sorted({layer.fc1.ne[1] for layer in w.layers})
    desc = (f"sparse FFN {act}, predictor hidden {'/'.join(map(str, hidden))}, "
            f"threshold {threshold:g}{layout}")
    return functools.partial(sparse_ffn, threshold=threshold, both_relu=both_relu, bundles=bundles), desc


def check_predictor(cfg: ModelConfig, i: int, layer: LayerWeights) -> None:
    if layer.fc1 is None or layer.fc2 is None:
        raise ModelLoadError(f"layer {i} has no activation predictor (blk.{i}.fc1/fc2): "
                             "run it with dense=True")
    e, f = cfg.n_embd, cfg.n_ff
    fc1, fc2 = layer.fc1.ne, layer.fc2.ne
    if len(fc1) != 2 or fc1[0] != e or len(fc2) != 2 or fc2 != (fc1[1], f):
        raise ModelLoadError(f"blk.{i}: predictor shapes fc1 {list(fc1)}, fc2 {list(fc2)} do not fit "
                             f"n_embd {e}, n_ff {f} (want fc1 [{e}, H], fc2 [H, {f}])")
