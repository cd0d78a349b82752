"""`Llama(...)` keywords, resolved once into what the engine and the API layer need.

`LlamaOptions` records the keywords exactly as llama-cpp-python's `Llama` takes them (same
names, same meaning, same enum values). The `resolve_*` methods apply llama-cpp-python's
rules (n_ctx 0 means the trained context, n_batch is capped by n_ctx, thread defaults from
the CPU count); `model_params` / `context_params` fill llama.cpp's parameter structs as it
does (llama_params.py). `check_supported` says what cannot be honoured: options that would
change results raise, options that only change where or how fast things run warn or, where
llama-cpp-python's CPU build accepts them silently (n_gpu_layers), give a note
in verbose mode, and the rest is accepted as it does not matter on this engine.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import warnings
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional

from .config import ContextSettings
from .llama_params import (
    INT32_MAX,
    LLAMA_FLASH_ATTN_TYPE_DISABLED,
    LLAMA_FLASH_ATTN_TYPE_ENABLED,
    LLAMA_LOAD_MODE_MMAP,
    LlamaContextParams,
    LlamaModelParams,
)
from .sampling import LLAMA_DEFAULT_SEED

# llama.cpp enum values, as llama-cpp-python passes them
LLAMA_SPLIT_MODE_NONE, LLAMA_SPLIT_MODE_LAYER, LLAMA_SPLIT_MODE_ROW = 0, 1, 2
LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED = -1
LLAMA_ROPE_SCALING_TYPE_NONE = 0
LLAMA_ROPE_SCALING_TYPE_LINEAR = 1
LLAMA_ROPE_SCALING_TYPE_YARN = 2
LLAMA_ROPE_SCALING_TYPE_LONGROPE = 3
LLAMA_POOLING_TYPE_UNSPECIFIED = -1
LLAMA_POOLING_TYPE_NONE = 0
LLAMA_POOLING_TYPE_MEAN = 1
LLAMA_POOLING_TYPE_CLS = 2
LLAMA_POOLING_TYPE_LAST = 3
LLAMA_POOLING_TYPE_RANK = 4
LLAMA_ATTENTION_TYPE_UNSPECIFIED = -1
LLAMA_ATTENTION_TYPE_CAUSAL = 0
LLAMA_ATTENTION_TYPE_NON_CAUSAL = 1
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
GGML_TYPE_Q4_0 = 2
GGML_TYPE_Q8_0 = 8
# KV cache types pyinfer keeps (type_k == type_v), by GGML type id
KV_CACHE_TYPES = {GGML_TYPE_F32: "f32", GGML_TYPE_F16: "f16", GGML_TYPE_Q8_0: "q8_0", GGML_TYPE_Q4_0: "q4_0"}

N_CTX_PAD = 256             # llama.cpp rounds the context size up to a multiple of this
KV_OVERRIDE_MAX_STR = 128   # llama.cpp's limit for string overrides, in bytes
# tokenizer keys an override may change, and the Tokenizer attribute each one sets
TOKENIZER_OVERRIDES = {"tokenizer.ggml.add_bos_token": "add_bos",
                       "tokenizer.ggml.add_eos_token": "add_eos",
                       "tokenizer.ggml.add_space_prefix": "add_space_prefix"}


# pyinfer keywords Llama(...) receives through **kwargs (GPU index options)
# keywords older llama-cpp-python versions took and clients still pass (LangChain's LlamaCpp
# always sends n_parts and f16_kv, its embeddings `device`): ignored without a warning, as
# llama-cpp-python ignores them
RETIRED = ("n_parts", "f16_kv", "device")
PASSED_THROUGH = ("reset_gpu_index", "disable_gpu_index", "vram_budget", "use_extra_bufts",
                  "chat_template_limits", "offload_device", "n_seq_max", "n_cpu_moe",
                  "expert_cache", "expert_slots", "expert_profile")


class UnsupportedOptionError(NotImplementedError):
    """A Llama(...) option that would change results and that pyinfer cannot honour."""


@dataclass
class LlamaOptions:
    """The constructor keywords of llama_cpp.Llama (0.3.x), one field each."""
    model_path: str
    n_gpu_layers: int
    split_mode: int
    main_gpu: int
    tensor_split: Optional[List[float]]
    vocab_only: bool
    use_mmap: bool
    use_mlock: bool
    kv_overrides: Optional[Dict[str, Any]]
    seed: int
    n_ctx: int
    n_batch: int
    n_ubatch: int
    n_threads: Optional[int]
    n_threads_batch: Optional[int]
    rope_scaling_type: Optional[int]
    pooling_type: int
    attention_type: int
    rope_freq_base: float
    rope_freq_scale: float
    yarn_ext_factor: float
    yarn_attn_factor: float
    yarn_beta_fast: float
    yarn_beta_slow: float
    yarn_orig_ctx: int
    logits_all: bool
    embedding: bool
    offload_kqv: bool
    flash_attn: bool
    op_offload: Optional[bool]
    swa_full: Optional[bool]
    no_perf: bool
    last_n_tokens_size: int
    lora_base: Optional[str]
    lora_scale: float
    lora_path: Optional[str]
    numa: Any
    chat_format: Optional[str]
    chat_handler: Any
    draft_model: Any
    tokenizer: Any
    type_k: Optional[int]
    type_v: Optional[int]
    spm_infill: bool
    verbose: bool
    # pyinfer's own (PowerInfer models): predictor threshold (None: the file's), all neurons
    sparse_threshold: Optional[float] = None
    dense: bool = False
    # PowerInfer's GPU index (<model>.generated.gpuidx, pyinfer/offload/gpu_index.py) for hybrid
    # placement: regenerate it even if a usable one exists / place no neurons by it
    reset_gpu_index: bool = False
    disable_gpu_index: bool = False
    # PowerInfer's --vram-budget (GiB; None: no hybrid placement), see pyinfer/offload
    vram_budget: Optional[float] = None
    # the device backend that vram_budget / n_gpu_layers place on (pyinfer.backend.Backend,
    # e.g. the stand-in device); None: CUDA's device 0 (planned and reported only, for now)
    offload_device: Any = None
    # llama.cpp's --n-cpu-moe: the expert tensors of the first N layers stay on the CPU
    # (MoE models; everything else follows the placement), see pyinfer/offload/experts.py
    n_cpu_moe: int = 0
    # MoE experts on a device: the cache policy between tokens (None/False: the plan's static
    # set; True or "lru": LRU slots; "pinned": half pinned, half LRU), the slots per layer
    # (None: as many as the budget holds), an expert profile (python -m
    # pyinfer.offload.expert_profile) giving the experts' values; see docs/gpu.md
    expert_cache: Any = None
    expert_slots: Optional[int] = None
    expert_profile: Optional[str] = None
    # llama.cpp's context parameter: sequences the KV cache holds at once, each with n_ctx
    # positions of its own (Llama.sequence(i); the server's parallel slots)
    n_seq_max: int = 1
    # llama.cpp's model parameter (not a llama-cpp-python keyword, taken from **kwargs):
    # False keeps Q4_0 weights row-major instead of repacking them at load
    use_extra_bufts: bool = True
    # PowerInfer models: gate/up/down_t rows repacked per neuron at load (False: three matrices)
    neuron_bundle: bool = True
    # bounds on rendering the model's chat template (pyinfer.chat.ChatTemplateLimits; None: defaults)
    chat_template_limits: Any = None

    @classmethod
    def from_keywords(cls, values: Dict[str, Any], extra: Dict[str, Any]) -> "LlamaOptions":
        """`values`: the named keywords; `extra`: what **kwargs caught (warned about: a
        misspelt option must not pass unnoticed, though llama-cpp-python ignores them).
        pyinfer's own fields that `Llama.__init__` does not name (the GPU index switches,
        `vram_budget`, llama.cpp's `use_extra_bufts`) are taken from `extra`."""
        values = {**values, **{k: v for k, v in extra.items() if k in PASSED_THROUGH}}
        extra = {k: v for k, v in extra.items() if k not in PASSED_THROUGH and k not in RETIRED}
        values = {**values, "use_extra_bufts": bool(values.pop("use_extra_bufts", True))}
        if extra:
            warn(f"Llama: ignoring unknown keyword argument(s): {', '.join(sorted(extra))}",
                 verbose=bool(values.get("verbose")))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def check_supported(self) -> None:
        """Raise for options that would change results and cannot be honoured; warn for
        those that change only placement or speed.

        Accepted without effect (they do not change results here): split_mode, main_gpu,
        tensor_split, use_mmap (weights are always memory-mapped), use_mlock, offload_kqv,
        flash_attn, op_offload, no_perf, numa, lora_base/lora_scale without
        lora_path, spm_infill (only with a
        suffix); with a note in verbose mode: n_gpu_layers without usable CUDA (the layers
        stay on the CPU). vram_budget without CUDA raises.
        """
        if not os.path.exists(self.model_path):
            raise ValueError(f"Model path does not exist: {self.model_path}")
        if self.lora_path:
            raise UnsupportedOptionError(
                f"LoRA adapters are not supported by pyinfer: cannot apply lora_path={self.lora_path!r}")
        if self.rope_scaling_type == LLAMA_ROPE_SCALING_TYPE_LONGROPE:
            raise UnsupportedOptionError(
                f"rope_scaling_type={self.rope_scaling_type} (LongRoPE): a LongRoPE model's file says so "
                "itself (Phi-3's rope_factors_long/short); as a context option it is not supported")
        if self.pooling_type == LLAMA_POOLING_TYPE_RANK:
            raise UnsupportedOptionError("pooling_type=RANK (reranking) is not supported by pyinfer")
        if self.attention_type == LLAMA_ATTENTION_TYPE_NON_CAUSAL:
            raise UnsupportedOptionError("attention_type=NON_CAUSAL is not supported by pyinfer")
        for name in ("type_k", "type_v"):
            t = getattr(self, name)
            if t is not None and t not in KV_CACHE_TYPES:
                raise UnsupportedOptionError(
                    f"{name}={t}: pyinfer keeps the KV cache in F16 (GGML type {GGML_TYPE_F16}), Q8_0 "
                    f"({GGML_TYPE_Q8_0}), Q4_0 ({GGML_TYPE_Q4_0}) or F32 ({GGML_TYPE_F32})")
        if self.kv_type_id(self.type_k) != self.kv_type_id(self.type_v):
            raise UnsupportedOptionError(
                f"type_k={self.type_k}, type_v={self.type_v}: pyinfer keeps K and V in one type "
                f"(None means F16, GGML type {GGML_TYPE_F16}); pass the same type for both")
        for k, v in (self.kv_overrides or {}).items():
            if not isinstance(v, (bool, int, float, str)):
                raise ValueError(f"Unknown value type for {k}: {v}")
            if isinstance(v, str) and len(v.encode("utf-8")) > KV_OVERRIDE_MAX_STR:
                raise ValueError(f"Value for {k} is too long: {v}")
            if k.startswith("tokenizer.ggml.") and k not in TOKENIZER_OVERRIDES:
                raise UnsupportedOptionError(
                    f"kv_overrides: pyinfer cannot override '{k}' (tokenizer keys it can "
                    f"override: {', '.join(TOKENIZER_OVERRIDES)})")
        if self.offload_device is not None:
            pass                                # placed on the given device (pyinfer.backend)
        elif self.vram_budget is not None:
            from .offload import require_cuda   # GPUUnavailableError names what is missing
            require_cuda(f"vram_budget={self.vram_budget!r}")
        elif self.n_gpu_layers != 0:
            from .offload import gpu_layers_note
            note(gpu_layers_note(self.n_gpu_layers), self.verbose)
        if self.draft_model is not None:
            if not callable(self.draft_model):
                raise TypeError("draft_model must be a LlamaDraftModel (called as "
                                "draft_model(input_ids) -> draft token ids), not "
                                f"{type(self.draft_model).__name__}")

    # ---- derived values -----------------------------------------------------------

    @property
    def seed_value(self) -> int:
        return self.seed or LLAMA_DEFAULT_SEED

    @staticmethod
    def kv_type_id(t: Optional[int]) -> int:
        """A type_k / type_v value as a GGML type id (None: F16, llama.cpp's default)."""
        return GGML_TYPE_F16 if t is None else int(t)

    def resolve_n_ctx(self, n_ctx_train: int) -> int:
        """The context size llama.cpp would use: the trained one for 0, rounded up to a
        multiple of 256."""
        n = self.n_ctx or n_ctx_train
        return -(-n // N_CTX_PAD) * N_CTX_PAD

    def resolve_n_batch(self, n_ctx_train: int) -> int:
        """llama-cpp-python's logical batch: n_batch capped by the requested n_ctx."""
        return max(1, min(self.n_ctx or n_ctx_train, self.n_batch))

    def resolve_threads(self):
        cpus = multiprocessing.cpu_count()
        return self.n_threads or max(cpus // 2, 1), self.n_threads_batch or cpus

    def rope_overrides(self):
        """(freq_base, freq_scale) with 0.0 meaning the model's value; scaling type none
        forces a scale of 1, as llama.cpp does."""
        scale = self.rope_freq_scale
        if self.rope_scaling_type == LLAMA_ROPE_SCALING_TYPE_NONE:
            scale = 1.0
        return self.rope_freq_base, scale

    def model_overrides(self) -> Dict[str, Any]:
        """kv_overrides that change model metadata (the tokenizer ones are applied apart)."""
        return {k: v for k, v in (self.kv_overrides or {}).items() if k not in TOKENIZER_OVERRIDES}

    def apply_tokenizer_overrides(self, tokenizer) -> None:
        for key, attr in TOKENIZER_OVERRIDES.items():
            if key in (self.kv_overrides or {}):
                setattr(tokenizer, attr, bool(self.kv_overrides[key]))

    def model_params(self) -> LlamaModelParams:
        """llama_model_params as llama-cpp-python fills it from these keywords."""
        return LlamaModelParams(
            n_gpu_layers=INT32_MAX if self.n_gpu_layers == -1 else self.n_gpu_layers,
            split_mode=self.split_mode, load_mode=LLAMA_LOAD_MODE_MMAP, main_gpu=self.main_gpu,
            tensor_split=list(self.tensor_split) if self.tensor_split is not None else None,
            kv_overrides=dict(self.kv_overrides) if self.kv_overrides is not None else None,
            vocab_only=self.vocab_only, check_tensors=False, use_extra_bufts=self.use_extra_bufts)

    def context_params(self, n_ctx_train: int) -> LlamaContextParams:
        """llama_context_params as llama-cpp-python fills it (n_ctx: the one asked for, 0
        replaced by the trained context; llama.cpp pads it to a multiple of 256 after)."""
        n_threads, n_threads_batch = self.resolve_threads()
        n_batch = self.resolve_n_batch(n_ctx_train)
        return LlamaContextParams(
            n_ctx=self.n_ctx or n_ctx_train, n_batch=n_batch, n_ubatch=min(n_batch, self.n_ubatch),
            n_seq_max=1, n_threads=n_threads, n_threads_batch=n_threads_batch,
            rope_scaling_type=(LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED if self.rope_scaling_type is None
                               else self.rope_scaling_type),
            pooling_type=self.pooling_type, attention_type=self.attention_type,
            flash_attn_type=(LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn
                             else LLAMA_FLASH_ATTN_TYPE_DISABLED),
            rope_freq_base=float(self.rope_freq_base), rope_freq_scale=float(self.rope_freq_scale),
            yarn_ext_factor=float(self.yarn_ext_factor), yarn_attn_factor=float(self.yarn_attn_factor),
            yarn_beta_fast=float(self.yarn_beta_fast), yarn_beta_slow=float(self.yarn_beta_slow),
            yarn_orig_ctx=int(self.yarn_orig_ctx), type_k=self.kv_type_id(self.type_k),
            type_v=self.kv_type_id(self.type_v),
            embeddings=bool(self.embedding), offload_kqv=bool(self.offload_kqv),
            no_perf=bool(self.no_perf),
            op_offload=True if self.op_offload is None else bool(self.op_offload),
            swa_full=True if self.swa_full is None else bool(self.swa_full))

    def context_settings(self, n_ctx_train: int) -> ContextSettings:
        n_threads, n_threads_batch = self.resolve_threads()
        base, scale = self.rope_overrides()
        n_batch = self.resolve_n_batch(n_ctx_train)
        scaling = {LLAMA_ROPE_SCALING_TYPE_NONE: "none", LLAMA_ROPE_SCALING_TYPE_LINEAR: "linear",
                   LLAMA_ROPE_SCALING_TYPE_YARN: "yarn"}.get(self.rope_scaling_type)
        return ContextSettings(
            n_ctx=self.resolve_n_ctx(n_ctx_train),
            n_batch=max(1, min(n_batch, self.n_ubatch)),  # the engine's chunk is the physical batch
            n_threads=n_threads, n_threads_batch=n_threads_batch,
            logits_all=self.logits_all or self.draft_model is not None,
            embedding=self.embedding, rope_freq_base=base, rope_freq_scale=scale, rope_scaling=scaling,
            yarn_ext_factor=self.yarn_ext_factor, yarn_attn_factor=self.yarn_attn_factor,
            yarn_beta_fast=self.yarn_beta_fast, yarn_beta_slow=self.yarn_beta_slow,
            yarn_orig_ctx=self.yarn_orig_ctx,
            kv_type=KV_CACHE_TYPES[self.kv_type_id(self.type_k)],
            kv_overrides=self.model_overrides(), sparse_threshold=self.sparse_threshold,
            dense=self.dense, repack_weights=self.use_extra_bufts, neuron_bundle=self.neuron_bundle,
            swa_full=True if self.swa_full is None else bool(self.swa_full), n_seq_max=self.n_seq_max,
            extra={"vram_budget": self.vram_budget, "n_gpu_layers": self.n_gpu_layers,
                   "offload_device": self.offload_device, "n_cpu_moe": self.n_cpu_moe,
                   "expert_cache": self.expert_cache, "expert_slots": self.expert_slots,
                   "expert_profile": self.expert_profile,
                   "reset_gpu_index": self.reset_gpu_index, "disable_gpu_index": self.disable_gpu_index})


def warn(message: str, verbose: bool) -> None:
    """A RuntimeWarning, echoed to stderr when verbose."""
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    if verbose:
        print(f"pyinfer: warning: {message}", file=sys.stderr)


def note(message: Optional[str], verbose: bool) -> None:
    """A remark for the user (no warning: nothing is lost), on stderr when verbose."""
    if message and verbose:
        print(f"pyinfer: note: {message}", file=sys.stderr)


def metadata_strings(md: Dict[str, Any]) -> Dict[str, str]:
    """GGUF metadata as llama.cpp reports it: arrays left out, numbers and booleans as
    C++'s std::to_string writes them (floats with six decimals, "true"/"false")."""
    out = {}
    for k, v in md.items():
        if isinstance(v, (list, tuple)) or hasattr(v, "shape"):
            continue
        if isinstance(v, bool):
            out[k] = "true" if v else "false"
        elif isinstance(v, float):
            out[k] = "%f" % v
        else:
            out[k] = str(v)
    return out


def load_report(path: str, engine, n_batch: int, load_time: float) -> str:
    """The short text `verbose=True` prints after loading (load_time in seconds: file,
    tokenizer and engine)."""
    cfg, f = engine.cfg, engine.file
    types: Dict[str, int] = {}
    for t in f:
        types[t.type.name] = types.get(t.type.name, 0) + 1
    type_text = ", ".join(f"{n} {name}" for name, n in sorted(types.items(), key=lambda x: -x[1]))
    mib = 1024.0 * 1024.0
    lines = [
        f"pyinfer: loaded {path}{' (PowerInfer GGUF)' if f.is_powerinfer else ''}",
        f"pyinfer:   arch {cfg.arch} '{cfg.name}': {cfg.n_layer} layers, n_embd {cfg.n_embd}, "
        f"n_ff {cfg.n_ff}, heads {cfg.n_head}/{cfg.n_head_kv} (q/kv), n_vocab {cfg.n_vocab}",
        f"pyinfer:   tensors: {type_text}; weights {f.nbytes / mib:.1f} MiB (memory-mapped)",
        f"pyinfer:   context {engine.n_ctx} (trained {cfg.n_ctx_train}), batch {n_batch} "
        f"(physical {engine.n_batch}), KV cache {engine.kv.k[0].type.name} {engine.kv.nbytes / mib:.1f} MiB",
        f"pyinfer:   rope base {cfg.rope_freq_base:g} scale {cfg.rope_freq_scale:g}; "
        f"threads {engine.n_threads} (batch {engine.n_threads_batch}); backend CPU"
        + (f" + {engine.placement.device} device" if getattr(engine, "placement", None) else ""),
        f"pyinfer:   load time {load_time * 1000.0:.0f} ms",
    ]
    if engine.ffn_mode:
        lines.insert(-1, f"pyinfer:   {engine.ffn_mode}")
    plan = getattr(engine, "offload_plan", None)
    if plan is not None:
        from .offload import format_report
        placement = getattr(engine, "placement", None)
        lines.append(format_report(plan, cfg.n_layer, cfg.n_ff, placement.device if placement else None,
                                   executed=placement is not None))
        lines += [f"pyinfer:   note: {n}" for n in (placement.notes if placement else [])]
    return "\n".join(lines)
