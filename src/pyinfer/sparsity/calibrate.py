"""Calibrating CATS thresholds and writing them into a copy of a GGUF.

The model runs densely, chunk after chunk from an empty KV cache, with an FFN
builder that keeps each layer's ``a = silu(gate . h)`` as a graph output (a tap);
after each run a random sample of every layer's |a| is kept. The threshold of a
layer is the `target` quantile of its sample: neurons with |a| below it are the
ones the sparse FFN drops, so on the calibration text that fraction is dropped.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..config import ContextSettings
from ..engine import Engine
from ..gguf_model import GGUFFile, ModelLoadError
from ..model.llama import ForwardGraph, LayerWeights
from ..model.sparse import CATS_TARGET_KEY, CATS_THRESHOLDS_KEY
from ..progress import bar
from ..tensor import Context, GGMLType, Tensor, Unary, dequantize, quantize

SAMPLES_PER_RUN = 1 << 16   # |a| values kept per layer and chunk (of n_tokens * n_ff)
N_TOKENS_KEY = "pyinfer.sparsity.calibration_tokens"


@dataclass
class CalibrationResult:
    target: float
    thresholds: List[float]        # per layer
    achieved: List[float]          # fraction of the layer's sample below its threshold
    n_tokens: int


def tap_ffn(taps: List[Tensor]):
    """A dense SwiGLU FFN builder that records each layer's silu(gate) in `taps`
    (graph outputs, readable after each run)."""
    def ffn(ctx: Context, layer: LayerWeights, x: Tensor, h: Tensor) -> Tensor:
        a = ctx.unary(ctx.mul_mat(layer.w_gate, h), Unary.SILU).set_output()
        taps.append(a)
        return ctx.mul_mat(layer.w_down, ctx.mul(a, ctx.mul_mat(layer.w_up, h)))
    return ffn


def calibration_tokens(f: GGUFFile, text: str, n_tokens: int, from_end: bool) -> List[int]:
    """`n_tokens` tokens of `text` (its last ones with `from_end`: the default corpus's
    start is what the perplexity command scores first)."""
    from ..tokenizer import Tokenizer
    toks = Tokenizer.from_gguf(f.reader).tokenize(text.encode("utf-8"), add_bos=False)
    if n_tokens > 0 and len(toks) > n_tokens:
        toks = toks[-n_tokens:] if from_end else toks[:n_tokens]
    return toks


def collect_activations(eng: Engine, tokens: Sequence[int], n_ctx: int,
                        samples_per_run: int = SAMPLES_PER_RUN, seed: int = 0,
                        progress: bool = False) -> List[np.ndarray]:
    """Per layer, a random sample (with replacement) of |silu(gate . h)| over `tokens`,
    run in chunks of n_ctx tokens from an empty cache (a tail shorter than 16 tokens
    is dropped). samples_per_run <= 0 keeps every value. `progress`: a bar on stderr
    (tokens run of the total, ETA)."""
    cfg = eng.cfg
    if cfg.ffn_act != "silu" or cfg.ffn_gate_both:
        raise ModelLoadError(f"CATS calibration needs a SwiGLU model (silu(gate)*up); this one's FFN "
                             f"is {'relu(gate)*relu(up)' if cfg.ffn_gate_both else cfg.ffn_act + '(gate)*up'}")
    if any(layer.w_down is None for layer in eng.weights.layers):
        raise ModelLoadError("CATS calibration needs a plain GGUF (ffn_down in every layer)")
    rng = np.random.default_rng(seed)
    samples: List[List[np.ndarray]] = [[] for _ in range(cfg.n_layer)]
    graphs: Dict[int, tuple] = {}
    starts = [s for s in range(0, len(tokens), n_ctx) if len(tokens) - s >= 16]
    if not starts:
        raise ValueError(f"too little calibration text: {len(tokens)} tokens, at least 16 are needed")
    try:
        with bar(sum(len(tokens[s:s + n_ctx]) for s in starts), "calibrating", "tok", progress) as b:
            for start in starts:
                chunk = tokens[start:start + n_ctx]
                if len(chunk) not in graphs:
                    taps: List[Tensor] = []
                    g = ForwardGraph(cfg, eng.weights, eng.kv, len(chunk), len(chunk), eng.n_threads,
                                     ffn=tap_ffn(taps))
                    graphs[len(chunk)] = (g, [t.numpy() for t in taps])
                g, views = graphs[len(chunk)]
                g.tokens[:] = chunk
                g.pos[:] = np.arange(len(chunk), dtype=np.int32)
                g.run(eng.pool)
                for i, v in enumerate(views):
                    flat = np.abs(v.reshape(-1))
                    if 0 < samples_per_run < flat.size:
                        flat = flat[rng.integers(0, flat.size, samples_per_run)]
                    samples[i].append(flat.copy())
                b.update(len(chunk))
    finally:
        for g, _ in graphs.values():
            g.close()
    return [np.concatenate(s) for s in samples]


def thresholds_for(samples: List[np.ndarray], target: float) -> CalibrationResult:
    """Per-layer thresholds dropping `target` of each sample (|a| < threshold)."""
    if not 0.0 <= target < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {target}")
    thr, got = [], []
    for s in samples:
        t = float(np.quantile(s, target, method="inverted_cdf")) if target > 0 else 0.0
        thr.append(t)
        got.append(float(np.mean(s < t)))
    return CalibrationResult(target, thr, got, 0)


def calibrate(model_path: str, text: str, target: float, n_tokens: int = 8192, n_ctx: int = 512,
              n_threads: int = 0, from_end: bool = True, seed: int = 0,
              progress: bool = False) -> CalibrationResult:
    """Thresholds for FFN sparsity `target` from `n_tokens` tokens of `text` (see the module
    docstring); `progress`: a bar on stderr."""
    if not 0.0 <= target < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {target}")
    f = GGUFFile(model_path)
    if f.is_powerinfer:
        raise ModelLoadError(f"{model_path} is a PowerInfer file (it has a predictor already): "
                             "calibrate a plain SwiGLU GGUF")
    toks = calibration_tokens(f, text, n_tokens, from_end)
    eng = Engine(f, ContextSettings(n_ctx=n_ctx, n_batch=n_ctx, n_threads=n_threads))
    try:
        samples = collect_activations(eng, toks, n_ctx, seed=seed, progress=progress)
    finally:
        eng.close()
    res = thresholds_for(samples, target)
    res.n_tokens = len(toks)
    return res


def _transposed_down(info, out_type: GGMLType) -> np.ndarray:
    """ffn_down {n_ff, n_embd} -> ffn_down_t {n_embd, n_ff} rows of `out_type`
    (a re-quantization for quantized types)."""
    n_ff, n_embd = info.ne
    w = dequantize(info.data, info.type, n_ff * n_embd).reshape(n_embd, n_ff)
    wt = np.ascontiguousarray(w.T)
    if out_type == GGMLType.F32:
        return wt
    if out_type == GGMLType.F16:
        return wt.astype(np.float16)
    return quantize(wt, out_type)


def write_calibrated(src_path: str, out_path: str, res: CalibrationResult,
                     down_t: Optional[GGMLType] = None) -> None:
    """Copy `src_path` to `out_path` with the thresholds under pyinfer.sparsity.* keys
    (replacing earlier ones). With `down_t`, every ``blk.N.ffn_down.weight`` is
    replaced by ``blk.N.ffn_down_t.weight`` of that type. Written to a temporary file
    renamed into place when complete."""
    import gguf
    from gguf import GGUFValueType

    f = GGUFFile(src_path)
    if f.is_powerinfer:
        raise ModelLoadError("a PowerInfer file has a predictor already: calibrate a plain GGUF")
    arch = f.metadata["general.architecture"]
    out_path = os.path.abspath(out_path)
    tmp = os.path.join(os.path.dirname(out_path), f".{os.path.basename(out_path)}.part{os.getpid()}")
    w = gguf.GGUFWriter(tmp, arch)
    try:
        for name, field in f.reader.fields.items():
            if name.startswith("GGUF.") or name == "general.architecture" or name.startswith("pyinfer.sparsity."):
                continue
            vtype = GGUFValueType(field.types[0])
            sub = GGUFValueType(field.types[-1]) if vtype == GGUFValueType.ARRAY else None
            w.add_key_value(name, field.contents(), vtype, sub)
        w.add_key_value(CATS_THRESHOLDS_KEY, [float(t) for t in res.thresholds], GGUFValueType.ARRAY,
                        GGUFValueType.FLOAT32)
        w.add_float32(CATS_TARGET_KEY, float(res.target))
        w.add_uint32(N_TOKENS_KEY, int(res.n_tokens))
        plan = []
        for info in f:
            if down_t is not None and info.name.endswith(".ffn_down.weight"):
                name = info.name.replace(".ffn_down.weight", ".ffn_down_t.weight")
                data = _transposed_down(info, down_t)
                ne, ty = (info.ne[1], info.ne[0]), down_t
            else:
                name, data, ne, ty = info.name, info.data, info.ne, info.type
            raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
            w.add_tensor_info(name, tuple(reversed(ne)), np.dtype(np.float32), raw.nbytes,
                              raw_dtype=gguf.GGMLQuantizationType(int(ty)))
            plan.append(raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for raw in plan:
            w.write_tensor_data(raw)
        w.close()
        os.replace(tmp, out_path)
    except BaseException:
        w.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
