"""Hugging Face checkpoint -> GGUF (dense) or PowerInfer GGUF (sparse), streaming.

``convert(model_dir, ConvertOptions(...))`` reads config.json and the
tokenizer files, checks every weight's presence and shape against the
architecture's table (tensor_map.py), declares the output's metadata and
tensors, then reads, transforms (``TRANSFORMS``: q/k RoPE permutation, Gemma's
norm offset, fused-QKV regrouping, ffn_down transpose), quantizes and writes
one tensor at a time into a temporary file that replaces ``outfile`` only when
complete.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import gguf

from pyinfer.progress import bar

from .checkpoint import Checkpoint, load_predictor_dir
from .hf_config import HFParams, llama3_rope_factors, load_params
from .quant_types import encode, outtype, tensor_type
from .tensor_map import PlannedTensor, canonical_name, check_names, plan_rules, source_shape
from .vocab import load_vocab, sampling_defaults
from .writer import OutputFile, type_counts


class ConvertError(ValueError):
    """The checkpoint does not match its architecture (missing tensor, wrong shape, ...)."""


@dataclass
class ConvertOptions:
    outfile: str
    outtype: str = "f16"
    predictor_dir: Optional[str] = None   # PowerInfer predictors (model_{i}.pt ...): PWRI output
    sparse: bool = False                  # PowerInfer layout without predictors
    threads: int = 0                      # quantization threads (0: all cores)
    progress: bool = True                 # a bar on stderr: bytes written of the total, ETA


@dataclass
class ConvertReport:
    path: str
    arch: str
    powerinfer: bool
    n_tensors: int
    nbytes: int
    seconds: float
    vocab_note: str
    types: dict = field(default_factory=dict)     # GGUF type name -> tensor count
    source_bytes: int = 0                         # size of the weights read


def permute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a q/k projection (or bias) from HF's rotate_half layout (per head: first half,
    second half) to the interleaved pairs llama.cpp's normal RoPE rotates."""
    rows = w.shape[0]
    return (w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def falcon_qkv(w: np.ndarray, p: HFParams) -> np.ndarray:
    """Falcon's fused QKV rows, grouped per KV head as [its q heads..., k, v], regrouped as
    [all q heads, all k heads, all v heads] (llama.cpp's "jploski" layout)."""
    g, hd = p.n_head_kv, p.head_dim
    x = w.reshape(g, p.n_head // g + 2, hd, *w.shape[1:])
    q = x[:, :-2].reshape(p.n_head * hd, *w.shape[1:])
    k = x[:, -2].reshape(g * hd, *w.shape[1:])
    v = x[:, -1].reshape(g * hd, *w.shape[1:])
    return np.concatenate([q, k, v])


def neox_qkv(w: np.ndarray, p: HFParams) -> np.ndarray:
    """GPT-NeoX's fused QKV rows, per head [q, k, v], regrouped as [all q, all k, all v]."""
    x = w.reshape(p.n_head, 3, p.head_dim, *w.shape[1:])
    return np.concatenate([x[:, j].reshape(p.n_head * p.head_dim, *w.shape[1:]) for j in range(3)])


# PlannedTensor.op -> (float32 array in HF layout, params) -> array in GGUF layout
TRANSFORMS: Dict[str, Callable[[np.ndarray, HFParams], np.ndarray]] = {
    "": lambda x, p: x,
    "rope_q": lambda x, p: permute_rope(x, p.n_head) if p.arch.permute_qk else x,
    "rope_k": lambda x, p: permute_rope(x, p.n_head_kv) if p.arch.permute_qk else x,
    "norm_shift": lambda x, p: x + np.float32(p.arch.norm_shift),
    "falcon_qkv": falcon_qkv,
    "neox_qkv": neox_qkv,
    "transpose": lambda x, p: np.ascontiguousarray(x.T),
    # stacked experts' gate_up_proj [X, 2G, E]: the gate rows, or the up rows, of each expert
    "gate_half": lambda x, p: np.ascontiguousarray(x[:, :x.shape[1] // 2]),
    "up_half": lambda x, p: np.ascontiguousarray(x[:, x.shape[1] // 2:]),
}


def plan_tensors(p: HFParams, ckpt: Checkpoint, pred: Optional[Checkpoint], sparse: bool) -> List[PlannedTensor]:
    """Every GGUF tensor to write, in file order, after checking the checkpoint against it."""
    names = {canonical_name(p.arch, n): n for n in ckpt.names()}
    why = check_names(p.arch, names, p.n_layer, p.n_expert)
    if why:
        raise ConvertError(f"{why} ({p.hf_arch})")
    hidden = None
    if pred is not None:
        hidden = []
        for i in range(p.n_layer):
            fc1 = pred.entries[f"{i}.fc1.weight"]
            if len(fc1.shape) != 2:
                raise ConvertError(f"predictor {fc1.source}: fc1.weight has shape {list(fc1.shape)}, "
                                   f"expected [H, {p.n_embd}]")
            hidden.append(fc1.shape[0])
    planned, missing = plan_rules(p.arch, p.dims, p.n_layer, names, p.tie_embeddings, sparse, hidden)
    if missing:
        raise ConvertError(f"missing tensor '{missing[0]}' in the checkpoint ({p.hf_arch})")
    # generated tensors (no HF source)
    if p.rope_scaling.get("type") == "llama3":
        planned.insert(1, PlannedTensor("rope_freqs.weight", (p.head_dim // 2,), ""))
    for kind in ("long", "short"):
        if kind in p.rope_factors:
            planned.insert(1, PlannedTensor(f"rope_factors_{kind}.weight", (p.rope_dims // 2,), ""))
    out = []
    for t in planned:
        if t.source and not t.from_predictor:
            t = PlannedTensor(t.name, t.ne, names[t.source], t.from_predictor, t.op,
                              tuple(names[e] for e in t.experts))
        for source in t.experts or ((t.source,) if t.source else ()):
            src = pred if t.from_predictor else ckpt
            if source not in src:
                raise ConvertError(f"missing tensor '{source}' (GGUF '{t.name}') in the checkpoint")
            want, have = source_shape(t), src.shape(source)
            if tuple(have) != want:
                raise ConvertError(f"tensor '{source}' has shape {list(have)}, expected {list(want)} "
                                   f"from config.json (GGUF '{t.name}')")
        out.append(t)
    return out


_VALUE_WRITERS = {bool: "add_bool", str: "add_string", int: "add_uint32", float: "add_float32"}


def _write_metadata(w: gguf.GGUFWriter, p: HFParams, vocab, ot, powerinfer: bool,
                    threshold: Optional[float]) -> None:
    arch = p.arch.gguf_arch
    w.add_name(p.name)
    for key, value in p.gguf_values().items():
        if isinstance(value, list):
            w.add_key_value(f"{arch}.{key}", [int(v) for v in value], gguf.GGUFValueType.ARRAY,
                            sub_type=gguf.GGUFValueType.UINT32)
        else:
            getattr(w, _VALUE_WRITERS[type(value)])(f"{arch}.{key}", value)
    kind = p.rope_scaling.get("type")
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(p.rope_scaling["factor"]))
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(p.rope_scaling["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(p.rope_scaling.get("original_max_position_embeddings", p.n_ctx)))
    w.add_file_type(ot.file_type)
    if ot.base not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                       gguf.GGMLQuantizationType.BF16):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if p.relu:
        w.add_string("pyinfer.ffn_activation", "relu")
    if powerinfer and threshold is not None:
        w.add_float32("powerinfer.sparse_threshold", float(threshold))
    vocab.add_to(w)
    for key, value in sampling_defaults(p.generation).items():
        getattr(w, f"add_sampling_{key}")(value)


def convert(model_dir: str, opts: ConvertOptions) -> ConvertReport:
    t0 = time.perf_counter()
    ot = outtype(opts.outtype)
    p = load_params(model_dir)
    ckpt = Checkpoint.open(model_dir)
    pred, threshold = None, None
    if opts.predictor_dir:
        pred, threshold = load_predictor_dir(opts.predictor_dir, p.n_layer)
    powerinfer = pred is not None or opts.sparse
    if powerinfer and not p.arch.powerinfer:
        raise ConvertError(f"PowerInfer has no layout for {p.arch.gguf_arch} ({p.hf_arch}); write it densely, "
                           f"without a predictor dir or --sparse")
    if powerinfer and not p.relu:
        raise ConvertError(f"a PowerInfer file needs a ReLU model; config.json has hidden_act "
                           f"{p.hidden_act!r} (write it densely, without a predictor dir or --sparse)")
    planned = plan_tensors(p, ckpt, pred, powerinfer)
    vocab = load_vocab(model_dir, p)
    has_output = any(t.name == "output.weight" for t in planned)
    types = [tensor_type(t.name, t.ne, ot, p.n_layer, has_output, p.arch.gguf_arch, p.n_expert) for t in planned]

    out = OutputFile(opts.outfile, p.arch.gguf_arch, powerinfer)
    with out.writing():
        _write_metadata(out.gguf, p, vocab, ot, powerinfer, threshold)
        for t, ty in zip(planned, types):
            out.add_tensor(t.name, t.ne, ty)
        total = sum(size for *_, size in out.planned)
        with bar(total, "converting", enabled=opts.progress, nbytes=True) as b:
            def produce(i: int, name: str) -> np.ndarray:
                t, ty = planned[i], types[i]
                b.set_postfix_str(f"{name} {ty.name} {'x'.join(map(str, t.ne))}", refresh=False)
                data = encode(_load(t, p, ckpt, pred), ty, opts.threads or None)
                b.update(data.nbytes)
                return data

            out.write(produce)
    return ConvertReport(out.path, p.arch.gguf_arch, powerinfer, len(planned), os.path.getsize(out.path),
                         time.perf_counter() - t0, vocab.note, type_counts(types), ckpt.nbytes)


def _load(t: PlannedTensor, p: HFParams, ckpt: Checkpoint, pred: Optional[Checkpoint]) -> np.ndarray:
    """The float32 data of one planned tensor in GGUF layout (numpy order = reversed ne)."""
    if t.name == "rope_freqs.weight":
        return llama3_rope_factors(p)
    if t.name.startswith("rope_factors_"):
        return np.asarray(p.rope_factors[t.name[len("rope_factors_"):-len(".weight")]], dtype=np.float32)
    if t.experts:       # expert x's matrix at [x] (ne[2] = x), as llama.cpp's converter stacks them
        return np.stack([_load(PlannedTensor(t.name, t.ne[:-1], e, op=t.op), p, ckpt, pred) for e in t.experts])
    x = (pred if t.from_predictor else ckpt).load(t.source)
    if x.dtype != np.float32:
        raise ConvertError(f"tensor '{t.source}' has integer dtype {x.dtype}; expected floating point")
    return TRANSFORMS[t.op](x, p)
