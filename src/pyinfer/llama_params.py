"""What `Llama` shows of llama.cpp's model and context objects, for code written against
llama-cpp-python.

`Llama.model_params` / `Llama.context_params` hold the fields of llama.cpp's
`llama_model_params` / `llama_context_params` structs that have a meaning in pyinfer, under
the same names and with the same Python types (int, float, bool), filled as llama-cpp-python
fills them from the same keywords: the resolved request (`n_ctx` 0 becomes the trained
context, `n_batch` is capped by it, thread counts get their defaults, `n_gpu_layers=-1`
becomes INT32_MAX). They are the parameters, not the outcome: `Llama.n_ctx()` is the
context size in effect (llama.cpp rounds `n_ctx` up to a multiple of 256), and options
pyinfer accepts without effect (flash_attn, offload_kqv, n_gpu_layers on a machine without
CUDA) keep the value asked for. Where pyinfer has one setting only, the field holds it:
weights are always memory-mapped (load_mode MMAP), the KV cache is F16, one sequence.
Left out, as llama.cpp's C internals: device lists, buffer-type overrides, callbacks,
sampler chains, `defrag_thold`, `n_rs_seq`, `n_outputs_max*`, `ctx_other`.

`Llama._model` / `Llama._ctx` stand where llama-cpp-python keeps its `_internals.LlamaModel`
/ `LlamaContext`: pyinfer has no C model or context object, so `Llama.model` and
`Llama.ctx` (llama.cpp's `llama_model *` / `llama_context *`) are these handles
themselves, and `_model.vocab` (a `llama_vocab *` there) is pyinfer's Tokenizer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

# llama.cpp enum values
LLAMA_LOAD_MODE_MMAP = 1
LLAMA_FLASH_ATTN_TYPE_DISABLED = 0
LLAMA_FLASH_ATTN_TYPE_ENABLED = 1
INT32_MAX = 0x7FFFFFFF      # llama-cpp-python's n_gpu_layers for -1 ("all layers")

# llama.cpp's llm_arch_is_recurrent / llm_arch_is_hybrid, by general.architecture
RECURRENT_ARCHS = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})
HYBRID_ARCHS = frozenset({
    "jamba", "falcon-h1", "plamo2", "granitehybrid", "lfm2", "lfm2moe", "nemotron_h",
    "nemotron_h_moe", "qwen3next", "kimi-linear", "bailingmoe3", "kimi-k3", "glm5-next",
    "qwen35", "qwen35moe", "qwen4exp", "deepseek4", "minimax-01"})


@dataclass
class LlamaModelParams:
    """llama_model_params, the fields pyinfer has."""
    n_gpu_layers: int
    split_mode: int
    load_mode: int
    main_gpu: int
    tensor_split: Optional[List[float]]
    kv_overrides: Optional[Dict[str, Any]]
    vocab_only: bool
    check_tensors: bool
    use_extra_bufts: bool


@dataclass
class LlamaContextParams:
    """llama_context_params, the fields pyinfer has."""
    n_ctx: int
    n_batch: int
    n_ubatch: int
    n_seq_max: int
    n_threads: int
    n_threads_batch: int
    rope_scaling_type: int
    pooling_type: int
    attention_type: int
    flash_attn_type: int
    rope_freq_base: float
    rope_freq_scale: float
    yarn_ext_factor: float
    yarn_attn_factor: float
    yarn_beta_fast: float
    yarn_beta_slow: float
    yarn_orig_ctx: int
    type_k: int
    type_v: int
    embeddings: bool
    offload_kqv: bool
    no_perf: bool
    op_offload: bool
    swa_full: bool


class LlamaModelHandle:
    """`Llama._model`: the loaded model's facts and vocabulary, with the methods of
    llama-cpp-python's `_internals.LlamaModel` that have a meaning here."""

    def __init__(self, vocab, file, metadata: Dict[str, str], params: LlamaModelParams,
                 n_ctx_train: int, n_embd: int, fim):
        self.vocab = vocab          # pyinfer.tokenizer.Tokenizer
        self.params = params
        self._file, self._metadata = file, metadata
        self._n_ctx_train, self._n_embd, self._fim = n_ctx_train, n_embd, fim
        arch = metadata.get("general.architecture", "")
        self.is_recurrent, self.is_hybrid = arch in RECURRENT_ARCHS, arch in HYBRID_ARCHS

    @property
    def model(self) -> "LlamaModelHandle":
        return self

    def n_vocab(self) -> int:
        return self.vocab.n_vocab

    def n_ctx_train(self) -> int:
        return self._n_ctx_train

    def n_embd(self) -> int:
        return self._n_embd

    def size(self) -> int:
        """Bytes of all weight tensors."""
        return self._file.nbytes

    def n_params(self) -> int:
        return sum(math.prod(t.ne) for t in self._file)

    def metadata(self) -> Dict[str, str]:
        return dict(self._metadata)

    # ---- vocabulary ----
    def token_get_text(self, token: int) -> str:
        return self.vocab.token_text(token)

    def token_get_score(self, token: int) -> float:
        return self.vocab.score(token)

    def token_get_attr(self, token: int) -> int:
        return self.vocab.token_attr(token)

    def token_bos(self) -> int:
        return self.vocab.bos_id

    def token_eos(self) -> int:
        return self.vocab.eos_id

    def token_cls(self) -> int:     # llama.cpp: an alias of BOS
        return self.vocab.bos_id

    def token_sep(self) -> int:
        return self.vocab.sep_id

    def token_nl(self) -> int:
        return self.vocab.nl_id

    def token_eot(self) -> int:
        return self.vocab.eot_id

    def token_prefix(self) -> int:
        return self._fim.prefix

    def token_middle(self) -> int:
        return self._fim.middle

    def token_suffix(self) -> int:
        return self._fim.suffix

    def add_bos_token(self) -> bool:
        return self.vocab.add_bos

    def add_eos_token(self) -> bool:
        return self.vocab.add_eos

    def tokenize(self, text: bytes, add_bos: bool, special: bool) -> List[int]:
        return self.vocab.tokenize(text, add_bos=add_bos, special=special)

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        return self.vocab.token_to_piece(token, special=special)

    def detokenize(self, tokens: List[int], special: bool = False) -> bytes:
        return self.vocab.detokenize(tokens, special=special)


class LlamaContextHandle:
    """`Llama._ctx`: the context's parameters and sizes (llama-cpp-python's
    `_internals.LlamaContext`, less its C calls: decoding, logits, the KV cache and the
    state are Llama's methods)."""

    def __init__(self, model: LlamaModelHandle, params: LlamaContextParams, n_ctx: int,
                 pooling_type: int):
        self.model, self.params = model, params
        self._n_ctx, self._pooling_type = n_ctx, pooling_type

    @property
    def ctx(self) -> "LlamaContextHandle":
        return self

    def n_ctx(self) -> int:
        return self._n_ctx

    def pooling_type(self) -> int:
        return self._pooling_type
