"""Model hyper-parameters read from GGUF metadata.

``ModelConfig.from_metadata`` takes the plain ``{key: value}`` dict of a GGUF
file and ignores keys it does not know, deriving what the file leaves out
(head_dim, n_head_kv, rope dims) in ``__post_init__``, which also refuses
values no model can have (non-positive sizes, head counts that do not divide,
a RoPE base <= 0, ...) with an ``UnsupportedModelError`` naming the value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from .model.arch import ARCHS, swa_layers

SUPPORTED_ARCHS = tuple(ARCHS)   # model/arch.py describes each (bamboo: PowerInfer's ReLU Mistral)


class ModelLoadError(ValueError):
    """A model file that cannot be read, or whose parts disagree (raised by
    gguf_model's checks; defined here so that this module stays free of the C
    library)."""


class UnsupportedModelError(ModelLoadError):
    """The GGUF describes a model this engine cannot run."""


# the GGUF key (after "{arch}.") each checked field comes from, for messages
_KEYS = {"n_vocab": "vocab_size", "n_ctx_train": "context_length", "n_embd": "embedding_length",
         "n_layer": "block_count", "n_ff": "feed_forward_length", "n_head": "attention.head_count",
         "n_head_kv": "attention.head_count_kv", "head_dim": "attention.key_length",
         "rms_eps": "attention.layer_norm_rms_epsilon", "rope_freq_base": "rope.freq_base",
         "rope_freq_scale": "rope.scaling.factor", "rope_dims": "rope.dimension_count",
         "n_swa": "attention.sliding_window", "rope_freq_base_swa": "rope.freq_base_swa",
         "final_logit_softcap": "final_logit_softcapping", "attn_logit_softcap": "attn_logit_softcapping",
         "norm_eps": "attention.layer_norm_epsilon", "rope_attn_factor": "rope.scaling.attn_factor",
         "n_ctx_orig": "rope.scaling.original_context_length", "rope_ext_factor": "rope.scaling.type",
         "rope_beta_fast": "rope.scaling.yarn_beta_fast", "rope_beta_slow": "rope.scaling.yarn_beta_slow",
         "n_expert": "expert_count", "n_expert_used": "expert_used_count", "n_ff_exp": "expert_feed_forward_length",
         "n_ff_shexp": "expert_shared_feed_forward_length", "expert_weights_scale": "expert_weights_scale",
         "expert_gating_func": "expert_gating_func"}
# expert_gating_func values (llama.cpp's llama_expert_gating_func_type) -> the router's function
GATING_FUNCS = {0: "softmax", 1: "softmax", 2: "sigmoid"}


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
    ffn_act: str = "silu"           # "silu": silu(gate)*up; "relu": relu(gate)*up (ReLU-llama);
                                    # "gelu": gelu(gate)*up (GeGLU, gemma)
    ffn_gate_both: bool = False     # bamboo: act(gate)*act(up)
    name: str = ""
    attn_scale: float = 0.0         # scores = attn_scale * q.k; 0: 1/sqrt(head_dim)
    n_swa: int = 0                  # sliding window: a local layer's query at position p sees
                                    # positions p0 with p - p0 < n_swa; 0: no window
    swa_layers: Tuple[bool, ...] = ()   # per layer: local (windowed)? () with n_swa: all
    rope_freq_base_swa: Optional[float] = None  # RoPE of the local layers (None: the global one,
                                    # rope_freq_*; gemma3: 10000 unless the file says)
    rope_freq_scale_swa: float = 1.0
    final_logit_softcap: float = 0.0     # logits = c * tanh(logits / c); 0: none
    attn_logit_softcap: float = 0.0      # scores = c * tanh(scores / c) before the softmax; 0: none
    rope_attn_factor: float = 1.0   # cos and sin times it (rope.scaling.attn_factor: LongRoPE)
    rope_ext_factor: float = 0.0    # YaRN's blend weight (rope.scaling.type yarn: 1; 0: no YaRN)
    rope_beta_fast: float = 32.0    # YaRN's correction range (llama.cpp's defaults)
    rope_beta_slow: float = 1.0
    n_ctx_orig: int = 0             # the training context RoPE scaling refers to
                                    # (rope.scaling.original_context_length; 0: n_ctx_train)
    norm_eps: float = 1e-5          # LayerNorm's epsilon (architectures with norm "layer")
    parallel_residual: bool = True  # gpt-neox: x + attn(ln1(x)) + mlp(ln2(x)) (else sequential)
    # mixture of experts (model/moe.py); n_expert 0: a dense FFN
    n_expert: int = 0               # experts per layer (expert_count)
    n_expert_used: int = 0          # experts each token runs (expert_used_count)
    n_ff_exp: int = 0               # an expert's FFN size (0: llama.cpp's default, see __post_init__)
    n_ff_shexp: int = 0             # the shared expert's (0: n_ff)
    expert_weights_norm: bool = False    # the chosen experts' weights divided by their sum
    expert_weights_scale: float = 0.0    # ... then times it (0: not scaled)
    expert_gating_func: int = 0     # router probabilities: 0/1 softmax, 2 sigmoid (GATING_FUNCS)

    def __post_init__(self):
        if self.n_head <= 0:
            raise UnsupportedModelError(f"{self.arch}: n_head is {self.n_head} "
                                        f"(key '{self.arch}.attention.head_count'), must be > 0")
        if self.n_head_kv == 0:
            self.n_head_kv = self.n_head
        if self.head_dim == 0:
            self.head_dim = self.n_embd // self.n_head
        if self.rope_dims == 0:
            self.rope_dims = self.head_dim
        if self.rope_freq_base_swa is None:   # the local layers' RoPE is the global one (gemma2)
            self.rope_freq_base_swa, self.rope_freq_scale_swa = self.rope_freq_base, self.rope_freq_scale
        if self.n_ctx_orig == 0:
            self.n_ctx_orig = self.n_ctx_train
        if self.n_swa and not self.swa_layers:
            self.swa_layers = (True,) * self.n_layer
        if self.n_expert and self.n_ff_exp == 0:
            # llama.cpp: llama and olmoe experts have n_ff rows; qwen2moe/qwen3moe without the
            # key n_ff / n_expert_used
            qwen = self.arch in ("qwen2moe", "qwen3moe") and self.n_expert_used > 0
            self.n_ff_exp = self.n_ff // self.n_expert_used if qwen else self.n_ff
        if self.n_expert and self.n_ff_shexp == 0:
            self.n_ff_shexp = self.n_ff
        self._check()

    def apply_rope_settings(self, s: "ContextSettings") -> None:
        """The RoPE keywords of a context over the file's values, as llama.cpp's context
        applies them (rope_scaling "none" forces scale 1; YaRN's ext_factor is 1 with YaRN
        scaling unless given; its attention factor is then derived, else the given one
        multiplies the file's)."""
        if s.rope_freq_base:
            self.rope_freq_base = s.rope_freq_base
        if s.rope_freq_scale:
            self.rope_freq_scale = s.rope_freq_scale
        if s.rope_scaling == "none":
            self.rope_freq_scale = 1.0
        if s.yarn_ext_factor >= 0:
            self.rope_ext_factor = s.yarn_ext_factor
        elif s.rope_scaling is not None:
            self.rope_ext_factor = 1.0 if s.rope_scaling == "yarn" else 0.0
        if not self.rope_ext_factor:
            self.rope_attn_factor *= s.yarn_attn_factor
        if s.yarn_orig_ctx:
            self.n_ctx_orig = s.yarn_orig_ctx
        self.rope_beta_fast, self.rope_beta_slow = s.yarn_beta_fast, s.yarn_beta_slow
        self._check()

    def is_swa(self, layer: int) -> bool:
        """Whether `layer` attends through the sliding window."""
        return bool(self.n_swa) and self.swa_layers[layer]

    def window(self, layer: int) -> int:
        """The attention window of `layer` (0: every earlier position)."""
        return self.n_swa if self.is_swa(layer) else 0

    def rope(self, layer: int) -> Tuple[float, float]:
        """(freq_base, freq_scale) of `layer`'s RoPE: local layers have their own (llama.cpp's
        get_rope_freq_base/scale)."""
        if self.is_swa(layer):
            return self.rope_freq_base_swa, self.rope_freq_scale_swa
        return self.rope_freq_base, self.rope_freq_scale

    def _check(self) -> None:
        """Refuse hyper-parameters no model can have (llama.cpp fails on them later,
        at graph building or with NaN logits)."""
        def bad(name: str, must: str):
            return UnsupportedModelError(f"{self.arch}: {name} is {getattr(self, name)} "
                                         f"(key '{self.arch}.{_KEYS[name]}'), must be {must}")
        for name in ("n_embd", "n_layer", "n_ff", "n_head", "n_head_kv", "head_dim", "n_ctx_train",
                     "rope_dims", "n_ctx_orig"):
            if getattr(self, name) <= 0:
                raise bad(name, "> 0")
        if self.n_vocab < 0:
            raise bad("n_vocab", ">= 0")
        if self.n_head % self.n_head_kv:
            raise UnsupportedModelError(
                f"n_head ({self.n_head}) is not a multiple of n_head_kv ({self.n_head_kv})")
        if self.rope_dims > self.head_dim or self.rope_dims % 2:
            raise UnsupportedModelError(f"{self.arch}: RoPE dimension count {self.rope_dims} must be even "
                                        f"and at most the head size {self.head_dim}")
        for name in ("rope_freq_base", "rope_freq_scale", "rope_freq_base_swa", "rope_attn_factor",
                     "rope_beta_fast", "rope_beta_slow"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise bad(name, "a finite number > 0")
        for name in ("rms_eps", "norm_eps"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise bad(name, "a finite number >= 0")
        for name in ("final_logit_softcap", "attn_logit_softcap", "rope_ext_factor"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise bad(name, "a finite number >= 0")
        if self.n_swa < 0:
            raise bad("n_swa", ">= 0")
        if self.n_swa and len(self.swa_layers) != self.n_layer:
            raise UnsupportedModelError(f"{self.arch}: the sliding-window pattern has {len(self.swa_layers)} "
                                        f"entries for {self.n_layer} layers")
        if not (math.isfinite(self.attn_scale) and self.attn_scale >= 0):
            raise UnsupportedModelError(f"{self.arch}: attention scale {self.attn_scale} must be a finite number >= 0")
        self._check_experts(bad)

    def _check_experts(self, bad) -> None:
        if self.n_expert < 0:
            raise bad("n_expert", ">= 0")
        if not self.n_expert:
            if self.n_expert_used:
                raise bad("n_expert_used", "0 without experts (expert_count 0)")
            return
        if not 1 <= self.n_expert_used <= self.n_expert:
            raise bad("n_expert_used", f"between 1 and expert_count ({self.n_expert})")
        for name in ("n_ff_exp", "n_ff_shexp"):
            if getattr(self, name) <= 0:
                raise bad(name, "> 0")
        if not (math.isfinite(self.expert_weights_scale) and self.expert_weights_scale >= 0):
            raise bad("expert_weights_scale", "a finite number >= 0")
        if self.expert_gating_func not in GATING_FUNCS:
            raise bad("expert_gating_func", "0, 1 (softmax) or 2 (sigmoid)")

    @classmethod
    def from_metadata(cls, md: Dict[str, Any], n_vocab: Optional[int] = None) -> "ModelConfig":
        arch = md.get("general.architecture")
        if arch not in ARCHS:
            raise UnsupportedModelError(
                f"unsupported model architecture {_short(arch)} (supported: {', '.join(SUPPORTED_ARCHS)})")

        def key(k, default=None, required=False, kind=None):
            """The value of `{arch}.k`, checked to be an integer (kind int) or a
            number (kind float): a malformed file must not fail with a TypeError."""
            full = f"{arch}.{k}"
            if full not in md:
                if required:
                    raise UnsupportedModelError(f"GGUF metadata lacks the required key '{full}'")
                return default
            v = md[full]
            if kind is None:
                return v
            if kind is bool:
                if not isinstance(v, bool):
                    raise UnsupportedModelError(f"GGUF metadata key '{full}' must be a boolean, "
                                                f"found {type(v).__name__} {_short(v)}")
                return v
            ok = isinstance(v, int) if kind is int else isinstance(v, (int, float))
            if not ok or isinstance(v, bool):
                raise UnsupportedModelError(f"GGUF metadata key '{full}' must be "
                                            f"{'an integer' if kind is int else 'a number'}, "
                                            f"found {type(v).__name__} {_short(v)}")
            return kind(v)

        n_head = key("attention.head_count", required=True, kind=int)
        head_dim = key("attention.key_length", 0, kind=int)
        # llama.cpp: no type means linear (with the factor when there is one); "none" ignores the factor
        rope_scale, ext_factor = 1.0, 0.0
        scaling = key("rope.scaling.type", "linear")
        if scaling in ("linear", "yarn"):
            factor = key("rope.scaling.factor", None, kind=float)    # None: no scaling
            if factor is not None and not (math.isfinite(factor) and factor > 0):
                raise UnsupportedModelError(f"GGUF metadata key '{arch}.rope.scaling.factor' is {factor}, "
                                            "must be a finite number > 0")
            rope_scale = 1.0 / factor if factor else 1.0
            if scaling == "yarn":
                # llama.cpp (with llama-cpp-python's defaults): ext_factor 1, beta_fast 32,
                # beta_slow 1 whatever the file says; the magnitude from the factor (tensor.py's
                # yarn_attn_factor); DeepSeek's log multiplier is another formula
                ext_factor = 1.0
                if key("rope.scaling.yarn_log_multiplier", 0.0, kind=float):
                    raise UnsupportedModelError("YaRN with rope.scaling.yarn_log_multiplier is not supported")
        elif scaling != "none":
            raise UnsupportedModelError(f"RoPE scaling type {_short(scaling)} is not supported")
        if n_vocab is None:
            tokens = md.get("tokenizer.ggml.tokens", ())
            n_vocab = key("vocab_size", 0, kind=int) or (len(tokens) if isinstance(tokens, list) else 0)
        spec = ARCHS[arch]
        extra = {h.field: key(h.key, h.default, kind=h.kind) for h in spec.hparams}
        cfg = cls(
            arch=arch,
            n_vocab=int(n_vocab),
            n_ctx_train=key("context_length", 2048, kind=int),
            n_embd=key("embedding_length", required=True, kind=int),
            n_layer=key("block_count", required=True, kind=int),
            n_ff=key("feed_forward_length", required=True, kind=int),
            n_head=n_head,
            n_head_kv=key("attention.head_count_kv", n_head, kind=int),
            head_dim=head_dim,
            rms_eps=key("attention.layer_norm_rms_epsilon", spec.rms_eps, kind=float),
            norm_eps=key("attention.layer_norm_epsilon", 1e-5, kind=float),
            rope_freq_base=key("rope.freq_base", 10000.0, kind=float),
            rope_freq_scale=rope_scale,
            rope_dims=key("rope.dimension_count", 0, kind=int),
            rope_attn_factor=key("rope.scaling.attn_factor", 1.0, kind=float),
            rope_ext_factor=ext_factor,
            n_ctx_orig=key("rope.scaling.original_context_length", 0, kind=int),
            rope_neox=spec.rope_neox,
            ffn_act=_ffn_activation(md, spec.ffn_act) if spec.ffn_act in ("silu", "gelu") else spec.ffn_act,
            ffn_gate_both=spec.ffn_gate_both,
            name=str(md.get("general.name", "")),
            n_expert=key("expert_count", 0, kind=int),
            n_expert_used=key("expert_used_count", 0, kind=int),
            **extra,
        )
        if cfg.n_expert and not spec.moe_tensors:
            raise UnsupportedModelError(f"{arch}: a mixture of experts (expert_count {cfg.n_expert}) is not "
                                        "supported for this architecture")
        if spec.moe_only and not cfg.n_expert:
            raise UnsupportedModelError(f"{arch}: GGUF metadata lacks '{arch}.expert_count' (or it is 0); "
                                        "this architecture needs experts")
        if cfg.n_swa > 0:
            cfg.swa_layers = _swa_pattern(md, arch, cfg.n_layer, spec.swa_period)
        if spec.attn_scale is not None:
            cfg.attn_scale = spec.attn_scale(cfg)
        if spec.pos_offset:
            # the learned position table has context_length rows, the first pos_offset of which
            # no position reads (OPT: PowerInfer's context_length 2050 for 2048 positions)
            cfg.n_ctx_train -= spec.pos_offset
        cfg._check()
        return cfg


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _swa_pattern(md: Dict[str, Any], arch: str, n_layer: int, period: int) -> Tuple[bool, ...]:
    """Which layers are local: `{arch}.attention.sliding_window_pattern` as one flag per
    layer, or as the period n (layer i local iff i % n < n - 1; 0: all), else the
    architecture's period (llama.cpp's load_swa_pattern)."""
    full = f"{arch}.attention.sliding_window_pattern"
    pattern = md.get(full, period)
    if isinstance(pattern, (list, tuple)):
        if len(pattern) != n_layer or not all(isinstance(v, (bool, int)) for v in pattern):
            raise UnsupportedModelError(f"GGUF metadata key '{full}' must hold one flag per layer "
                                        f"({n_layer}), found {_short(pattern)}")
        return tuple(bool(v) for v in pattern)
    if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 0:
        raise UnsupportedModelError(f"GGUF metadata key '{full}' must be an integer >= 0 or an "
                                    f"array of flags, found {_short(pattern)}")
    return swa_layers(n_layer, pattern)


def _ffn_activation(md: Dict[str, Any], default: str = "silu") -> str:
    """FFN activation: `pyinfer.ffn_activation` (written by convert.py for
    ReLU models: ReLU-llama, ReluFalcon), else the architecture's as llama.cpp
    assumes (SiLU for llama/qwen2 files, GELU for falcon)."""
    act = str(md.get("pyinfer.ffn_activation", default))
    if act == default:
        return act
    if act not in ("silu", "relu"):
        raise UnsupportedModelError(f"FFN activation {_short(act)} is not supported (silu, relu)")
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
    rope_scaling: Optional[str] = None   # None: the model's; "none", "linear" or "yarn"
    yarn_ext_factor: float = -1.0   # < 0: 1 with YaRN scaling, else 0 (llama.cpp's rule)
    yarn_attn_factor: float = 1.0   # cos/sin times it without YaRN (with YaRN: derived)
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    yarn_orig_ctx: int = 0          # 0: the model's rope.scaling.original_context_length
    kv_overrides: Dict[str, Any] = field(default_factory=dict)  # GGUF metadata replacements
    sparse_threshold: Optional[float] = None  # PowerInfer models: None = the file's threshold
    dense: bool = False             # PowerInfer models: compute every FFN neuron
    repack_weights: bool = True     # Q4_0 matrices in the interleaved layout (llama.cpp's use_extra_bufts)
    neuron_bundle: bool = True      # PowerInfer models: repack gate/up/down_t rows per neuron
    swa_full: bool = True           # sliding-window layers cache every position (llama.cpp's
                                    # default); False: only the window plus a batch (model/kv_cache.py)
    n_seq_max: int = 1              # sequences the KV cache holds at once (one stream of n_ctx
                                    # positions each: the cache is n_seq_max * n_ctx rows)
    extra: Dict[str, Any] = field(default_factory=dict)
