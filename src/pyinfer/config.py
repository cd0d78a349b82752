"""Model hyper-parameters read from GGUF metadata.

``ModelConfig.from_metadata`` takes the plain ``{key: value}`` dict of a GGUF
file and ignores keys it does not know, deriving what the file leaves out
(head_dim, n_head_kv, rope dims) in ``__post_init__``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

SUPPORTED_ARCHS = ("llama", "qwen2", "bamboo")   # bamboo: PowerInfer's ReLU Mistral


class UnsupportedModelError(ValueError):
    """The GGUF describes a model this engine cannot run."""


@dataclass
class ModelConfig:
    arch: str
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int = 0              # 0: same as n_head
    head_dim: int = 0               # 0: n_embd // n_head
    rms_eps: float = 1e-5
    rope_freq_base: float = 10000.0
    rope_freq_scale: float = 1.0    # positions are multiplied by this
    rope_dims: int = 0              # 0: head_dim
    rope_neox: bool = False         # NEOX pair layout (qwen2) vs normal (llama)
    ffn_act: str = "silu"           # "silu": silu(gate)*up; "relu": relu(gate)*up (ReLU-llama)
    ffn_gate_both: bool = False     # bamboo: act(gate)*act(up)
    name: str = ""

    def __post_init__(self):
        if self.n_head_kv == 0:
            self.n_head_kv = self.n_head
        if self.head_dim == 0:
            self.head_dim = self.n_embd // self.n_head
        if self.rope_dims == 0:
            self.rope_dims = self.head_dim
        if self.n_head % self.n_head_kv:
            raise UnsupportedModelError(
                f"n_head ({self.n_head}) is not a multiple of n_head_kv ({self.n_head_kv})")

    @classmethod
    def from_metadata(cls, md: Dict[str, Any], n_vocab: Optional[int] = None) -> "ModelConfig":
        arch = md.get("general.architecture")
        if arch not in SUPPORTED_ARCHS:
            raise UnsupportedModelError(
                f"unsupported model architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHS)})")

        def key(k, default=None, required=False):
            full = f"{arch}.{k}"
            if full not in md:
                if required:
                    raise UnsupportedModelError(f"GGUF metadata lacks the required key '{full}'")
                return default
            return md[full]

        n_head = int(key("attention.head_count", required=True))
        head_dim = int(key("attention.key_length", 0))
        rope_scale = 1.0
        scaling = key("rope.scaling.type", "none")
        if scaling == "linear":
            rope_scale = 1.0 / float(key("rope.scaling.factor", 1.0))
        elif scaling not in ("none", None):
            raise UnsupportedModelError(f"RoPE scaling type {scaling!r} is not supported")
        if n_vocab is None:
            n_vocab = int(key("vocab_size", 0)) or len(md.get("tokenizer.ggml.tokens", ()))
        return cls(
            arch=arch,
            n_vocab=int(n_vocab),
            n_ctx_train=int(key("context_length", 2048)),
            n_embd=int(key("embedding_length", required=True)),
            n_layer=int(key("block_count", required=True)),
            n_ff=int(key("feed_forward_length", required=True)),
            n_head=n_head,
            n_head_kv=int(key("attention.head_count_kv", n_head)),
            head_dim=head_dim,
            rms_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_freq_base=float(key("rope.freq_base", 10000.0)),
            rope_freq_scale=rope_scale,
            rope_dims=int(key("rope.dimension_count", 0)),
            rope_neox=arch in ("qwen2",),
            ffn_act="relu" if arch == "bamboo" else _ffn_activation(md),
            ffn_gate_both=arch == "bamboo",
            name=str(md.get("general.name", "")),
        )


def _ffn_activation(md: Dict[str, Any]) -> str:
    """FFN activation: `pyinfer.ffn_activation` (written by convert.py for
    ReLU models), else SiLU as llama.cpp assumes for llama/qwen2 files."""
    act = str(md.get("pyinfer.ffn_activation", "silu"))
    if act not in ("silu", "relu"):
        raise UnsupportedModelError(f"FFN activation {act!r} is not supported (silu, relu)")
    return act


@dataclass
class ContextSettings:
    """Run-time settings of a loaded model (what ``Llama(...)`` keywords set)."""
    n_ctx: int = 512
    n_batch: int = 512
    n_threads: int = 0              # 0: one per physical core
    n_threads_batch: int = 0        # 0: same as n_threads
    logits_all: bool = False
    embedding: bool = False
    kv_type: str = "f16"
    rope_freq_base: float = 0.0     # 0: the model's
    rope_freq_scale: float = 0.0    # 0: the model's (positions are multiplied by it)
    kv_overrides: Dict[str, Any] = field(default_factory=dict)  # GGUF metadata replacements
    sparse_threshold: Optional[float] = None  # PowerInfer models: None = the file's threshold
    dense: bool = False             # PowerInfer models: compute every FFN neuron
    repack_weights: bool = True     # Q4_0 matrices in the interleaved layout (llama.cpp's use_extra_bufts)
    neuron_bundle: bool = True      # PowerInfer models: repack gate/up/down_t rows per neuron
    extra: Dict[str, Any] = field(default_factory=dict)
