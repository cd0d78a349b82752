"""What the planner needs to know about a model, read from a GGUF file.

`ModelSpec` lists the file's tensors with the role that decides their GPU priority
(`kind`) and their layer, the KV cache per layer, the scratch shape and, per layer, the bytes
of one FFN neuron's rows (for hot-neuron slices). The planner works on this alone, so tests can
make random ones without files.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from .budget import ScratchShape, SliceRowBytes, kv_layer_bytes

# Roles in the order the planner places them (FFN weights go last, as hot slices or, with
# n_gpu_layers, whole layers). "embedding" stays on the CPU: a lookup of one row per token.
KINDS = ("attention", "predictor", "norm", "output", "ffn", "embedding")

_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")
_ROLE = {
    "attn_q": "attention", "attn_k": "attention", "attn_v": "attention", "attn_output": "attention",
    "attn_qkv": "attention", "fc1": "predictor", "fc2": "predictor",
    "ffn_gate": "ffn", "ffn_up": "ffn", "ffn_down": "ffn", "ffn_down_t": "ffn",
}
# the stacked expert tensors of a MoE layer ({K, M, n_expert}: expert e is plane e); their role
# stays "ffn" (n_gpu_layers places them with their layer), the hybrid plan places them per expert
EXPERT_TENSORS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")


def is_expert_tensor(name: str) -> bool:
    """Whether a GGUF tensor name is one of a layer's stacked expert tensors."""
    m = _LAYER.match(name)
    return bool(m) and m.group(2).rsplit(".", 1)[0] in EXPERT_TENSORS


@dataclass(frozen=True)
class ExpertBytes:
    """Bytes of one expert's share (one plane) of a layer's gate, up and down expert tensors
    (the file's types; 0 for a layer without experts)."""
    gate: int
    up: int
    down: int

    @property
    def total(self) -> int:
        return self.gate + self.up + self.down


# every per-layer norm, weight or bias: attn_norm, attn_norm_2 (falcon-40b), ffn_norm, attn_q_norm
# and attn_k_norm (per-head Q/K norms), post_attention_norm and post_ffw_norm (gemma)
_NORM = re.compile(r"(^|_)norm(_\d+)?$")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    kind: str                 # one of KINDS
    layer: Optional[int]      # None for the model's global tensors
    nbytes: int


def classify(name: str) -> TensorSpec:
    """The role and layer of a GGUF tensor name (nbytes left 0)."""
    m = _LAYER.match(name)
    if m:
        base = m.group(2).rsplit(".", 1)[0]     # drop .weight / .bias
        kind = _ROLE.get(base) or ("norm" if _NORM.search(base) else
                                   "attention" if base.startswith("attn") else "ffn")
        return TensorSpec(name, kind, int(m.group(1)), 0)
    if name.startswith("output_norm"):
        return TensorSpec(name, "norm", None, 0)
    if name.startswith("output"):
        return TensorSpec(name, "output", None, 0)
    return TensorSpec(name, "embedding", None, 0)   # token_embd, position_embd (OPT): lookups


@dataclass
class ModelSpec:
    n_layer: int
    n_embd: int
    n_ff: int
    tensors: List[TensorSpec]
    kv_bytes: List[int]                 # per layer: K and V caches
    scratch: ScratchShape
    ffn_rows: List[SliceRowBytes]       # per layer: one neuron's gate/up/down_t rows
    sparse: bool = False                # PowerInfer layout (ffn_down_t + predictor)
    notes: List[str] = field(default_factory=list)
    # mixture of experts (0 / empty for dense models): experts per layer, experts per token,
    # an expert's FFN width, and per layer the bytes of one expert's planes
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    expert_bytes: List[ExpertBytes] = field(default_factory=list)

    def layer_tensors(self, layer: int) -> List[TensorSpec]:
        return [t for t in self.tensors if t.layer == layer]


def spec_from_file(f, cfg, n_ctx: int, n_batch: int, kv_bytes: Optional[List[int]] = None) -> ModelSpec:
    """A ModelSpec of a GGUFFile `f` with its ModelConfig `cfg` for a context of n_ctx and
    batches of n_batch tokens. A tied output (no output.weight) counts the token embedding
    a second time as the output matrix: the GPU copy is separate from the CPU lookup table.
    `kv_bytes`: per layer, the bytes of its K and V caches as allocated (their type, rows and
    sequences); default: F16 caches of n_ctx rows."""
    tensors = []
    for t in f:
        c = classify(t.name)
        tensors.append(TensorSpec(t.name, c.kind, c.layer, t.nbytes))
    if f.get("output.weight") is None and f.get("token_embd.weight") is not None:
        tensors.append(TensorSpec("token_embd.weight (as output)", "output", None,
                                  f.get("token_embd.weight").nbytes))
    kv_dim = cfg.n_head_kv * cfg.head_dim
    rows = []
    for i in range(cfg.n_layer):
        def per_neuron(name, neuron_dim):   # bytes of one neuron's share of the tensor
            t = f.get(f"blk.{i}.{name}.weight")
            return 0 if t is None else t.nbytes // t.ne[neuron_dim]
        # gate/up/ffn_down_t: {n_embd, n_ff}, one row per neuron; dense ffn_down {n_ff, n_embd}
        down = per_neuron("ffn_down_t", 1) or per_neuron("ffn_down", 0)
        rows.append(SliceRowBytes(gate=per_neuron("ffn_gate", 1), up=per_neuron("ffn_up", 1), down=down))
    sparse = all(f.get(f"blk.{i}.ffn_down_t.weight") is not None for i in range(cfg.n_layer))
    shape = ScratchShape(n_batch=n_batch, n_ctx=n_ctx, n_embd=cfg.n_embd, n_ff=cfg.n_ff,
                         n_head=cfg.n_head, q_dim=cfg.n_head * cfg.head_dim, kv_dim=kv_dim,
                         n_vocab=cfg.n_vocab)
    experts = []
    for i in range(cfg.n_layer if cfg.n_expert else 0):
        def plane(name):                    # bytes of one expert's plane of a stacked tensor
            t = f.get(f"blk.{i}.{name}.weight")
            return 0 if t is None else t.nbytes // t.ne[2]
        experts.append(ExpertBytes(*(plane(n) for n in EXPERT_TENSORS)))
    return ModelSpec(cfg.n_layer, cfg.n_embd, cfg.n_ff, tensors,
                     kv_bytes or [kv_layer_bytes(kv_dim, n_ctx)] * cfg.n_layer, shape, rows, sparse,
                     n_expert=cfg.n_expert, n_expert_used=cfg.n_expert_used,
                     n_ff_exp=cfg.n_ff_exp if cfg.n_expert else 0, expert_bytes=experts)


def read_gpu_buckets(path: str, n_layer: int) -> List[np.ndarray]:
    """Per-layer hot-neuron ids (`blk.N.gpu_bucket`, ascending I32) of a GPU index file
    (`<model>.generated.gpuidx`, DESIGN.md)."""
    from ..gguf_model import GGUFFile, ModelLoadError
    idx = GGUFFile(path, load_tokenizer_arrays=False)
    out = []
    for i in range(n_layer):
        t = idx.get(f"blk.{i}.gpu_bucket")
        if t is None:
            raise ModelLoadError(f"{path}: GPU index lacks blk.{i}.gpu_bucket")
        out.append(np.asarray(t.data, dtype=np.int32).reshape(-1).copy())
    return out


def check_hot_neurons(hot: Sequence[np.ndarray], n_layer: int, n_ff: int) -> List[np.ndarray]:
    """Validate per-layer neuron id arrays (priority order, distinct, in [0, n_ff))."""
    if len(hot) != n_layer:
        raise ValueError(f"hot neurons given for {len(hot)} layers, the model has {n_layer}")
    out = []
    for i, ids in enumerate(hot):
        a = np.asarray(ids, dtype=np.int64).reshape(-1)
        if a.size and (a.min() < 0 or a.max() >= n_ff):
            raise ValueError(f"layer {i}: hot neuron ids must be in [0, {n_ff})")
        if np.unique(a).size != a.size:
            raise ValueError(f"layer {i}: hot neuron ids repeat")
        out.append(a)
    return out
