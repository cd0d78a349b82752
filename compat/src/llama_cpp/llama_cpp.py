"""The part of llama-cpp-python's low-level API (`llama_cpp.llama_cpp`) that clients use for
vocabularies, tokens, model facts and plain decoding, served by pyinfer.

Signatures and return contracts are llama.cpp's C API as llama-cpp-python binds it: pointers
are ints (`llama_model_get_vocab(llm.model)`), buffers are ctypes char / int32 arrays the
call writes into, a buffer too small gives minus the size needed. What backs them:

    model pointer   Llama.model   -> the compat Llama (its GGUF tokenizer and metadata)
    vocab pointer   llama_model_get_vocab(model) -> pyinfer's Tokenizer of that model
    context pointer Llama.ctx     -> the Llama's one sequence (_context.Decoder)
    memory pointer  llama_get_memory(ctx) -> the same sequence's KV cache

`_lib` holds real C function pointers for the calls that C code makes itself: llguidance
hands `llama_cpp.llama_cpp._lib.llama_tokenize` to its Rust tokenizer with the vocab
pointer, and the call comes back here.

Functions of llama.cpp that have no meaning on pyinfer (model loading by pointer, samplers,
LoRA adapters, state files, multi-sequence KV editing) are not defined: a client that needs
one gets an AttributeError naming it, not a stub.
"""
from __future__ import annotations

import ctypes
import sys
import time
import traceback
import types
import warnings
from typing import Any, NewType, Optional

from . import _handles
from ._constants import *  # noqa: F401,F403 (llama-cpp-python exports them from here)
from ._constants import LLAMA_MAX_DEVICES, LLAMA_POOLING_TYPE_NONE
from ._context import (  # noqa: F401 (re-exported)
    Decoder,
    batch_free,
    batch_get_one,
    batch_init,
    llama_batch,
    llama_pos,
    llama_seq_id,
    llama_token,
)
from ._vocab import detokenize, metadata_value, snprintf, token_to_piece, tokenize
from ._vocab import vocab_address, vocab_of

# ---- pointer types (ints, as llama-cpp-python's) -------------------------------------------
llama_model_p = NewType("llama_model_p", int)
llama_model_p_ctypes = ctypes.c_void_p
llama_vocab_p = NewType("llama_vocab_p", int)
llama_vocab_p_ctypes = ctypes.c_void_p
llama_context_p = NewType("llama_context_p", int)
llama_context_p_ctypes = ctypes.c_void_p
llama_memory_t = NewType("llama_memory_t", int)
llama_memory_t_ctypes = ctypes.c_void_p
llama_token_p = ctypes.POINTER(llama_token)

# typedef void (*ggml_log_callback)(enum ggml_log_level level, const char * text, void * user_data)
llama_log_callback = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated; use {new} instead", DeprecationWarning, stacklevel=3)


# ---- what the pointers stand for -------------------------------------------------------------

class _ModelFacts:
    """A model as the model functions see it: its tokenizer and GGUF metadata (strings)."""

    def __init__(self, tokenizer, metadata, llama=None):
        self.tok, self.metadata, self.llama = tokenizer, metadata, llama
        self.arch = metadata.get("general.architecture", "")

    def number(self, suffix: str, default: int = 0) -> int:
        value = self.metadata.get(f"{self.arch}.{suffix}")
        try:
            return int(float(value)) if value is not None else default
        except ValueError:
            return default


def _model(model: Any) -> _ModelFacts:
    """A model pointer (Llama.model), or a pyinfer Llama, or an object with a pyinfer
    Tokenizer `.vocab` and `.metadata()` (pyinfer's own Llama._model)."""
    from pyinfer.llama import Llama as PyinferLlama
    if isinstance(model, PyinferLlama):
        return _ModelFacts(model._vocab, model.metadata, model)                 # noqa: SLF001
    if not isinstance(model, (int, ctypes.c_void_p)) and model is not None \
            and hasattr(model, "vocab") and callable(getattr(model, "metadata", None)):
        return _ModelFacts(model.vocab, model.metadata())
    llama = _handles.resolve(model, _handles.MODEL)
    return _ModelFacts(llama.vocab, llama.metadata, llama)                     # noqa: SLF001


def _context(ctx: Any) -> Decoder:
    return _handles.resolve(ctx, _handles.CONTEXT)


def _memory(mem: Any) -> Decoder:
    return _handles.resolve(mem, _handles.MEMORY)


# ---- backend -----------------------------------------------------------------------------------

def llama_backend_init() -> None:
    """Nothing to set up: pyinfer has no process-wide backend state."""


def llama_backend_free() -> None:
    """Nothing to free (see llama_backend_init)."""


def llama_numa_init(numa: int, /) -> None:
    """Accepted; pyinfer places threads without NUMA strategies."""


def llama_time_us() -> int:
    return time.monotonic_ns() // 1000


def llama_max_devices() -> int:
    return LLAMA_MAX_DEVICES


def llama_supports_mmap() -> bool:
    return True                     # weights are always memory-mapped


def llama_supports_mlock() -> bool:
    return False                    # use_mlock is accepted without effect


def llama_supports_gpu_offload() -> bool:
    from pyinfer.offload.device import cuda_status
    return cuda_status()[0]


def llama_supports_rpc() -> bool:
    return False


def llama_print_system_info() -> bytes:
    import pyinfer
    from pyinfer.offload.device import cuda_status
    from pyinfer.tensor import cpu_info
    cpu = cpu_info()
    flags = " | ".join(f"{k.upper()} = {int(v)}" for k, v in cpu.items() if isinstance(v, bool))
    ok, cuda = cuda_status()
    return (f"pyinfer {pyinfer.__version__} | CPU : {flags} | SIMD = {cpu['level']} | "
            f"CUDA : {cuda if ok else 'unavailable (' + cuda + ')'} | ").encode()


def llama_log_set(log_callback: Any, user_data: Any, /) -> None:
    """Accepted: pyinfer writes no llama.cpp log lines to route (its own messages go to
    stderr only with verbose=True), so the callback is never called."""


# ---- model -----------------------------------------------------------------------------------

def llama_model_get_vocab(model: Any, /) -> int:
    return vocab_address(_model(model).tok)


def llama_model_n_ctx_train(model: Any, /) -> int:
    return _model(model).number("context_length")


def llama_model_n_embd(model: Any, /) -> int:
    return _model(model).number("embedding_length")


def llama_model_n_layer(model: Any, /) -> int:
    return _model(model).number("block_count")


def llama_model_n_head(model: Any, /) -> int:
    return _model(model).number("attention.head_count")


def llama_model_n_head_kv(model: Any, /) -> int:
    facts = _model(model)
    return facts.number("attention.head_count_kv", facts.number("attention.head_count"))


def llama_model_rope_freq_scale_train(model: Any, /) -> float:
    facts = _model(model)
    factor = facts.metadata.get(f"{facts.arch}.rope.scaling.factor")
    return 1.0 / float(factor) if factor not in (None, "0", "0.0") else 1.0


def llama_n_ctx_train(model: Any, /) -> int:
    _deprecated("llama_n_ctx_train", "llama_model_n_ctx_train")
    return llama_model_n_ctx_train(model)


def llama_n_embd(model: Any, /) -> int:
    _deprecated("llama_n_embd", "llama_model_n_embd")
    return llama_model_n_embd(model)


def llama_n_layer(model: Any, /) -> int:
    _deprecated("llama_n_layer", "llama_model_n_layer")
    return llama_model_n_layer(model)


def llama_n_head(model: Any, /) -> int:
    _deprecated("llama_n_head", "llama_model_n_head")
    return llama_model_n_head(model)


def llama_model_has_encoder(model: Any, /) -> bool:
    _model(model)
    return False


def llama_model_has_decoder(model: Any, /) -> bool:
    _model(model)
    return True


def llama_model_meta_val_str(model: Any, key: bytes, buf: Any, buf_size: int, /) -> int:
    return metadata_value(_model(model).metadata, key, buf, int(buf_size))


def llama_model_meta_count(model: Any, /) -> int:
    return len(_model(model).metadata)


def _meta_item(model: Any, i: int, which: int) -> Optional[str]:
    items = list(_model(model).metadata.items())
    return items[i][which] if 0 <= i < len(items) else None


def llama_model_meta_key_by_index(model: Any, i: int, buf: Any, buf_size: int, /) -> int:
    return snprintf(_meta_item(model, int(i), 0), buf, int(buf_size))


def llama_model_meta_val_str_by_index(model: Any, i: int, buf: Any, buf_size: int, /) -> int:
    return snprintf(_meta_item(model, int(i), 1), buf, int(buf_size))


def llama_model_chat_template(model: Any, name: Optional[bytes], /) -> Optional[bytes]:
    """The GGUF's tokenizer.chat_template (or tokenizer.chat_template.NAME), or None."""
    key = "tokenizer.chat_template" + (f".{name.decode()}" if name else "")
    value = _model(model).metadata.get(key)
    return value.encode("utf-8") if value is not None else None


# ---- context and memory --------------------------------------------------------------------

def llama_get_model(ctx: Any, /) -> int:
    return _context(ctx).llama.model


def llama_get_memory(ctx: Any, /) -> int:
    return _context(ctx).memory.address


def llama_n_ctx(ctx: Any, /) -> int:
    return _context(ctx).llama.n_ctx()


def llama_n_batch(ctx: Any, /) -> int:
    return _context(ctx).llama.n_batch


def llama_n_seq_max(ctx: Any, /) -> int:
    _context(ctx)
    return 1


def llama_pooling_type(ctx: Any, /) -> int:
    llama = _context(ctx).llama
    return llama.pooling_type() if hasattr(llama, "pooling_type") else LLAMA_POOLING_TYPE_NONE


def llama_batch_init(n_tokens: int, embd: int, n_seq_max: int, /) -> llama_batch:
    return batch_init(n_tokens, embd, n_seq_max)


def llama_batch_free(batch: llama_batch, /) -> None:
    batch_free(batch)


def llama_batch_get_one(tokens: Any, n_tokens: int, /) -> llama_batch:
    return batch_get_one(tokens, n_tokens)


def llama_decode(ctx: Any, batch: llama_batch, /) -> int:
    """0: done; 1: the batch does not fit in the context (nothing evaluated)."""
    return _context(ctx).decode(batch)


def llama_get_logits(ctx: Any, /):
    return _context(ctx).logits()


def llama_get_logits_ith(ctx: Any, i: int, /):
    return _context(ctx).logits_ith(i)


def llama_memory_clear(mem: Any, data: bool, /) -> None:
    _memory(mem).clear()


def llama_memory_seq_rm(mem: Any, seq_id: int, p0: int, p1: int, /) -> bool:
    return _memory(mem).seq_rm(int(seq_id), int(p0), int(p1))


def llama_memory_seq_pos_min(mem: Any, seq_id: int, /) -> int:
    return _memory(mem).seq_pos_min(int(seq_id))


def llama_memory_seq_pos_max(mem: Any, seq_id: int, /) -> int:
    return _memory(mem).seq_pos_max(int(seq_id))


def llama_memory_can_shift(mem: Any, /) -> bool:
    _memory(mem)
    return False


# ---- vocabulary ------------------------------------------------------------------------------

def llama_vocab_type(vocab: Any, /) -> int:
    return vocab_of(vocab).type


def llama_vocab_n_tokens(vocab: Any, /) -> int:
    return vocab_of(vocab).n_tokens


def llama_n_vocab(vocab: Any, /) -> int:
    _deprecated("llama_n_vocab", "llama_vocab_n_tokens")
    return llama_vocab_n_tokens(vocab)


def llama_vocab_get_text(vocab: Any, token: int, /) -> bytes:
    return vocab_of(vocab).text(int(token))


def llama_vocab_get_score(vocab: Any, token: int, /) -> float:
    return vocab_of(vocab).tok.score(int(token))


def llama_vocab_get_attr(vocab: Any, token: int, /) -> int:
    return vocab_of(vocab).tok.token_attr(int(token))


def llama_vocab_is_eog(vocab: Any, token: int, /) -> bool:
    return vocab_of(vocab).tok.is_eog(int(token))


def llama_vocab_is_control(vocab: Any, token: int, /) -> bool:
    return vocab_of(vocab).tok.is_control(int(token))


def llama_vocab_get_add_bos(vocab: Any, /) -> bool:
    return vocab_of(vocab).tok.add_bos


def llama_vocab_get_add_eos(vocab: Any, /) -> bool:
    return vocab_of(vocab).tok.add_eos


def llama_vocab_get_add_sep(vocab: Any, /) -> bool:
    return vocab_of(vocab).add_sep


def _special_getter(name: str, special: str):
    def get(vocab: Any, /) -> int:
        return vocab_of(vocab).special(special)
    get.__name__ = get.__qualname__ = name
    get.__doc__ = f"The {special.upper()} token id, or LLAMA_TOKEN_NULL (-1)."
    return get


llama_vocab_bos = _special_getter("llama_vocab_bos", "bos")
llama_vocab_eos = _special_getter("llama_vocab_eos", "eos")
llama_vocab_eot = _special_getter("llama_vocab_eot", "eot")
llama_vocab_sep = _special_getter("llama_vocab_sep", "sep")
llama_vocab_nl = _special_getter("llama_vocab_nl", "nl")
llama_vocab_pad = _special_getter("llama_vocab_pad", "pad")
llama_vocab_mask = _special_getter("llama_vocab_mask", "mask")
llama_vocab_fim_pre = _special_getter("llama_vocab_fim_pre", "fim_pre")
llama_vocab_fim_suf = _special_getter("llama_vocab_fim_suf", "fim_suf")
llama_vocab_fim_mid = _special_getter("llama_vocab_fim_mid", "fim_mid")
llama_vocab_fim_pad = _special_getter("llama_vocab_fim_pad", "fim_pad")
llama_vocab_fim_rep = _special_getter("llama_vocab_fim_rep", "fim_rep")
llama_vocab_fim_sep = _special_getter("llama_vocab_fim_sep", "fim_sep")


def _deprecated_alias(old: str, new_fn):
    def alias(*args):
        _deprecated(old, new_fn.__name__)
        return new_fn(*args)
    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = f"Deprecated in llama.cpp: {new_fn.__name__}."
    return alias


# llama.cpp's deprecated llama_token_* names, which clients still call (llguidance uses
# llama_token_get_attr); llama_vocab_cls is BOS, as in llama.cpp
llama_token_get_text = _deprecated_alias("llama_token_get_text", llama_vocab_get_text)
llama_token_get_score = _deprecated_alias("llama_token_get_score", llama_vocab_get_score)
llama_token_get_attr = _deprecated_alias("llama_token_get_attr", llama_vocab_get_attr)
llama_token_is_eog = _deprecated_alias("llama_token_is_eog", llama_vocab_is_eog)
llama_token_is_control = _deprecated_alias("llama_token_is_control", llama_vocab_is_control)
llama_token_bos = _deprecated_alias("llama_token_bos", llama_vocab_bos)
llama_token_eos = _deprecated_alias("llama_token_eos", llama_vocab_eos)
llama_token_eot = _deprecated_alias("llama_token_eot", llama_vocab_eot)
llama_token_cls = _deprecated_alias("llama_token_cls", llama_vocab_bos)
llama_vocab_cls = _deprecated_alias("llama_vocab_cls", llama_vocab_bos)
llama_token_sep = _deprecated_alias("llama_token_sep", llama_vocab_sep)
llama_token_nl = _deprecated_alias("llama_token_nl", llama_vocab_nl)
llama_token_pad = _deprecated_alias("llama_token_pad", llama_vocab_pad)
llama_add_bos_token = _deprecated_alias("llama_add_bos_token", llama_vocab_get_add_bos)
llama_add_eos_token = _deprecated_alias("llama_add_eos_token", llama_vocab_get_add_eos)
llama_token_fim_pre = _deprecated_alias("llama_token_fim_pre", llama_vocab_fim_pre)
llama_token_fim_suf = _deprecated_alias("llama_token_fim_suf", llama_vocab_fim_suf)
llama_token_fim_mid = _deprecated_alias("llama_token_fim_mid", llama_vocab_fim_mid)
llama_token_fim_pad = _deprecated_alias("llama_token_fim_pad", llama_vocab_fim_pad)
llama_token_fim_rep = _deprecated_alias("llama_token_fim_rep", llama_vocab_fim_rep)
llama_token_fim_sep = _deprecated_alias("llama_token_fim_sep", llama_vocab_fim_sep)


def llama_tokenize(vocab: Any, text: bytes, text_len: int, tokens: Any, n_tokens_max: int,
                   add_special: bool, parse_special: bool, /) -> int:
    """Token ids of text[:text_len] into tokens[:n_tokens_max]: their number, or minus the
    number needed (nothing written) when n_tokens_max is too small."""
    return tokenize(vocab_of(vocab), text, text_len, tokens, int(n_tokens_max), add_special,
                    parse_special)


def llama_token_to_piece(vocab: Any, token: int, buf: Any, length: int, lstrip: int,
                         special: bool, /) -> int:
    """The token's bytes into buf[:length] (no terminator): their number, or minus the
    number needed when length is too small. lstrip: leading spaces to skip; special:
    render control tokens (else they give 0 bytes)."""
    return token_to_piece(vocab_of(vocab), token, buf, length, lstrip, special)


def llama_detokenize(vocab: Any, tokens: Any, n_tokens: int, text: Any, text_len_max: int,
                     remove_special: bool, unparse_special: bool, /) -> int:
    """The text of tokens[:n_tokens] into text[:text_len_max]: its length in bytes, or minus
    the length needed."""
    return detokenize(vocab_of(vocab), tokens, n_tokens, text, text_len_max, remove_special,
                      unparse_special)


# ---- C-callable entry points ----------------------------------------------------------------

_TOKENIZE_FN = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32,
                                ctypes.POINTER(ctypes.c_int32), ctypes.c_int32, ctypes.c_bool,
                                ctypes.c_bool)
_PIECE_FN = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p,
                             ctypes.c_int32, ctypes.c_int32, ctypes.c_bool)
_DETOKENIZE_FN = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32),
                                  ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32, ctypes.c_bool,
                                  ctypes.c_bool)


def _c_entry(fn_type, name: str, body):
    """A C function pointer of `fn_type` running body(*args); an exception cannot cross into
    C, so it is printed (with the function's name) and the call returns INT32_MIN, which
    llama.cpp's callers read as a failure."""
    def entry(*args):
        try:
            return body(*args)
        except Exception:       # noqa: BLE001 (reported, then turned into the C error code)
            print(f"llama_cpp ({name}, called from C):\n{traceback.format_exc()}",
                  file=sys.stderr)
            return -(1 << 31)
    return fn_type(entry)


class _CallbackLibrary(types.SimpleNamespace):
    """`llama_cpp.llama_cpp._lib`: the entry points C code may call, as real function
    pointers with llama.h's signatures (ctypes.cast(_lib.llama_tokenize, c_void_p))."""


_lib = _CallbackLibrary(
    llama_tokenize=_c_entry(_TOKENIZE_FN, "llama_tokenize", lambda v, text, n, out, n_max, a, p:
                            tokenize(vocab_of(v), text, n, out, n_max, a, p)),
    llama_token_to_piece=_c_entry(_PIECE_FN, "llama_token_to_piece", lambda v, t, buf, n, ls, sp:
                                  token_to_piece(vocab_of(v), t, buf, n, ls, sp)),
    llama_detokenize=_c_entry(_DETOKENIZE_FN, "llama_detokenize",
                              lambda v, toks, n, buf, n_max, rm, sp:
                              detokenize(vocab_of(v), toks, n, buf, n_max, rm, sp)),
)

# what `from llama_cpp.llama_cpp import *` gives: the C API's names, not this module's helpers
__all__ = sorted(
    n for n, v in list(globals().items())
    if n.startswith(("llama_", "LLAMA_", "GGML_")) and not isinstance(v, types.ModuleType))
