"""Hugging Face checkpoint -> GGUF (dense) or PowerInfer GGUF (sparse), streaming.

``convert(model_dir, ConvertOptions(...))`` reads config.json and the
tokenizer files, checks every weight's presence and shape against the
architecture, declares the output's metadata and tensors, then reads,
transforms (q/k RoPE permutation, ffn_down transpose), quantizes and writes one
tensor at a time into a temporary file that replaces ``outfile`` only when
complete.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import gguf

from pyinfer.progress import bar

from .checkpoint import Checkpoint, load_predictor_dir
from .hf_config import HFParams, llama3_rope_factors, load_params
from .quant_types import encode, outtype, tensor_type
from .tensor_map import PlannedTensor, gguf_name, layer_tensors, source_shape
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


def plan_tensors(p: HFParams, ckpt: Checkpoint, pred: Optional[Checkpoint], sparse: bool) -> List[PlannedTensor]:
    """Every GGUF tensor to write, in file order, after checking the checkpoint against it."""
    for name in ckpt.names():
        mapped = gguf_name(name)
        if mapped is None:
            raise ConvertError(f"unexpected tensor '{name}' in the checkpoint: no GGUF name for it in "
                               f"architecture {p.arch.gguf_arch} ({p.hf_arch})")
        if mapped.startswith("blk.") and int(mapped.split(".")[1]) >= p.n_layer:
            raise ConvertError(f"tensor '{name}' belongs to layer {mapped.split('.')[1]}, "
                               f"but config.json has num_hidden_layers = {p.n_layer}")
    E, V = p.n_embd, p.n_vocab
    planned = [PlannedTensor("token_embd.weight", (E, V), "model.embed_tokens.weight")]
    if p.rope_scaling.get("type") == "llama3":
        planned.append(PlannedTensor("rope_freqs.weight", (p.head_dim // 2,), ""))
    for i in range(p.n_layer):
        hidden = None
        if pred is not None:
            fc1 = pred.entries[f"{i}.fc1.weight"]
            if len(fc1.shape) != 2:
                raise ConvertError(f"predictor {fc1.source}: fc1.weight has shape {list(fc1.shape)}, "
                                   f"expected [H, {E}]")
            hidden = fc1.shape[0]
        planned += layer_tensors(p, i, sparse, hidden)
    planned.append(PlannedTensor("output_norm.weight", (E,), "model.norm.weight"))
    if "lm_head.weight" in ckpt or p.tie_embeddings is False:
        planned.append(PlannedTensor("output.weight", (E, V), "lm_head.weight"))
    for t in planned:
        if not t.source:
            continue
        src = pred if t.from_predictor else ckpt
        if t.source not in src:
            raise ConvertError(f"missing tensor '{t.source}' (GGUF '{t.name}') in the checkpoint")
        want, have = source_shape(t), src.shape(t.source)
        if tuple(have) != want:
            raise ConvertError(f"tensor '{t.source}' has shape {list(have)}, expected {list(want)} "
                               f"from config.json (GGUF '{t.name}')")
    return planned


def _write_metadata(w: gguf.GGUFWriter, p: HFParams, vocab, ot, powerinfer: bool,
                    threshold: Optional[float]) -> None:
    w.add_name(p.name)
    w.add_vocab_size(p.n_vocab)
    w.add_context_length(p.n_ctx)
    w.add_embedding_length(p.n_embd)
    w.add_feed_forward_length(p.n_ff)
    w.add_block_count(p.n_layer)
    w.add_head_count(p.n_head)
    w.add_head_count_kv(p.n_head_kv)
    w.add_rope_freq_base(p.rope_theta)
    w.add_layer_norm_rms_eps(p.rms_eps)
    if p.arch.permute_qk:
        w.add_rope_dimension_count(p.head_dim)
    if p.head_dim_explicit:
        w.add_key_length(p.head_dim)
        w.add_value_length(p.head_dim)
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
    if powerinfer and not p.relu:
        raise ConvertError(f"a PowerInfer file needs a ReLU model; config.json has hidden_act "
                           f"{p.hidden_act!r} (write it densely, without a predictor dir or --sparse)")
    planned = plan_tensors(p, ckpt, pred, powerinfer)
    vocab = load_vocab(model_dir, p)
    has_output = any(t.name == "output.weight" for t in planned)
    types = [tensor_type(t.name, t.ne, ot, p.n_layer, has_output, p.arch.gguf_arch) for t in planned]

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
    x = (pred if t.from_predictor else ckpt).load(t.source)
    if x.dtype != np.float32:
        raise ConvertError(f"tensor '{t.source}' has integer dtype {x.dtype}; expected floating point")
    if t.op == "permute_q":
        x = permute_rope(x, p.n_head)
    elif t.op == "permute_k":
        x = permute_rope(x, p.n_head_kv)
    elif t.op == "transpose":
        x = np.ascontiguousarray(x.T)
    return x

