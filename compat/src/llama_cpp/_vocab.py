"""llama.cpp's vocabulary calls (`llama_tokenize`, `llama_token_to_piece`, `llama_detokenize`,
the token facts) on pyinfer's tokenizer, with the C API's buffer and return-code contract:

- a call that writes into a caller's buffer returns the number of bytes (tokens) written, or,
  when the buffer is too small, minus the number it needs, and writes nothing;
- `llama_token_to_piece` skips up to `lstrip` leading spaces and renders control / unknown
  tokens only when `special`;
- `llama_detokenize` drops a leading BOS / trailing EOS with `remove_special` (when the
  vocabulary adds them), strips the SPM space prefix from the first piece (unless a BOS was
  dropped), and applies llama.cpp's `clean_spaces` rules where the vocabulary has them.

A `Vocab` wraps one pyinfer `Tokenizer`; its address (`vocab_address`) is what
`llama_model_get_vocab` returns and what clients pass back (see _handles.py).
"""
from __future__ import annotations

import ctypes
from typing import Any, Dict, List, Optional, Sequence

from pyinfer.tokenizer import Tokenizer

from . import _handles
from ._constants import (LLAMA_TOKEN_NULL, LLAMA_VOCAB_TYPE_BPE, LLAMA_VOCAB_TYPE_RWKV,
                         LLAMA_VOCAB_TYPE_SPM, LLAMA_VOCAB_TYPE_UGM, LLAMA_VOCAB_TYPE_WPM)

_VOCAB_TYPES = {"SPM": LLAMA_VOCAB_TYPE_SPM, "BPE": LLAMA_VOCAB_TYPE_BPE, "WPM": LLAMA_VOCAB_TYPE_WPM,
                "UGM": LLAMA_VOCAB_TYPE_UGM, "RWKV": LLAMA_VOCAB_TYPE_RWKV}

_HANDLE_ATTR = "_llama_cpp_vocab_handle"    # where a Tokenizer keeps its pointer's record


class Vocab:
    """One vocabulary as llama.cpp's C API sees it."""

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self.type = _VOCAB_TYPES[tokenizer.vocab_type]
        self.clean_spaces = tokenizer.clean_spaces       # llama.cpp's rule, kept by the tokenizer

    @property
    def n_tokens(self) -> int:
        return self.tok.n_vocab

    def special(self, name: str) -> int:
        """The id of a special token by llama.cpp's name (bos, eos, eot, eom, sep, nl, pad,
        unk, mask, fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep), or -1."""
        if name == "nl":
            return self.tok.nl_id
        public = getattr(self.tok, f"{name}_id", None)
        if isinstance(public, int):
            return public
        return int(self.tok._special_ids.get(name, LLAMA_TOKEN_NULL))    # noqa: SLF001

    def text(self, token: int) -> bytes:
        """The token's text as stored in the GGUF (llama_vocab_get_text)."""
        return self.tok.token_text(token).encode("utf-8")

    def piece(self, token: int, lstrip: int = 0, special: bool = False) -> bytes:
        """llama_token_to_piece's bytes, `lstrip` leading spaces skipped."""
        piece = self.tok.token_to_piece(token, special=special)
        n = 0
        while n < lstrip and piece[n:n + 1] == b" ":
            n += 1
        return piece[n:]

    def tokenize(self, text: bytes, add_special: bool, parse_special: bool) -> List[int]:
        # llama_tokenize adds BOS/EOS as the vocabulary asks; never SEP (only llama.cpp's server
        # reads add_sep)
        return self.tok.tokenize(text, add_bos=add_special, special=parse_special)

    def detokenize(self, tokens: Sequence[int], remove_special: bool,
                   unparse_special: bool) -> bytes:
        tokens = list(tokens)
        remove_space = self.tok.add_space_prefix
        if remove_special and self.tok.add_bos and tokens[:1] == [self.tok.bos_id]:
            remove_space = False
            tokens = tokens[1:]
        if remove_special and self.tok.add_eos and tokens[-1:] == [self.tok.eos_id]:
            tokens = tokens[:-1]
        parts = []
        for i, t in enumerate(tokens):
            parts.append(self.piece(t, lstrip=1 if (i == 0 and remove_space) else 0,
                                    special=unparse_special))
        text = b"".join(parts)
        return clean_spaces(text) if self.clean_spaces else text


def clean_spaces(text: bytes) -> bytes:
    """llama.cpp's clean-up of detokenized BPE text (Hugging Face's
    clean_up_tokenization_spaces): no space before ? ! . , ; " ' " loses both spaces; no space
    before 's 'm 're 've."""
    out = bytearray()
    for i, c in enumerate(text):            # 1: " ?", " !", " .", " ,"
        if i and text[i - 1] == 0x20 and c in b"?!.," and out:
            out.pop()
        out.append(c)
    seen, out = bytearray(out), bytearray()
    i = 0
    while i < len(seen):                    # 2: " ' " -> "'" (the space eaten is seen no more)
        c = seen[i]
        out.append(c)
        if c == 0x27 and 0 < i < len(seen) - 1 and seen[i - 1] == 0x20 and seen[i + 1] == 0x20:
            del out[-2]
            seen[i + 1] = 0
            i += 1
        i += 1
    text, out = bytes(out), bytearray()
    for i, c in enumerate(text):            # 3: " 's", " 'm", " 're", " 've"
        if i and c == 0x27 and text[i - 1] == 0x20 and out and _contraction(text[i + 1:i + 3]):
            out.pop()
        out.append(c)
    return bytes(out)


def _contraction(after: bytes) -> bool:
    return after[:1] in (b"s", b"m") or after in (b"re", b"ve")


# ---- pointers --------------------------------------------------------------------------

def vocab_address(tokenizer: Tokenizer) -> int:
    """The llama_vocab pointer of `tokenizer`, made on first use and kept on the tokenizer
    (so it lives exactly as long as the vocabulary it stands for)."""
    handle = tokenizer.__dict__.get(_HANDLE_ATTR)
    if handle is None:
        vocab = Vocab(tokenizer)
        handle = _handles.Handle(_handles.VOCAB, vocab)
        handle.vocab = vocab            # the record holds it weakly
        tokenizer.__dict__[_HANDLE_ATTR] = handle
    return handle.address


def vocab_of(pointer: Any) -> Vocab:
    """The Vocab a client passed: a llama_vocab pointer, or a pyinfer Tokenizer."""
    if isinstance(pointer, Tokenizer):
        return _handles.resolve(vocab_address(pointer), _handles.VOCAB)
    return _handles.resolve(pointer, _handles.VOCAB)


# ---- C buffers -------------------------------------------------------------------------

def char_buffer_address(buf: Any, length: int) -> int:
    """The address of a writable char buffer a client passed (a ctypes char array, a
    c_char_p, a bytearray, or an int address)."""
    if isinstance(buf, bytearray):
        if len(buf) < length:
            raise ValueError(f"buffer of {len(buf)} bytes is shorter than length {length}")
        return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    if isinstance(buf, bytes):
        raise TypeError("cannot write into a bytes object: pass ctypes.create_string_buffer(n)")
    if isinstance(buf, ctypes.Array) and ctypes.sizeof(buf) < length:
        raise ValueError(f"buffer of {ctypes.sizeof(buf)} bytes is shorter than length {length}")
    addr = _handles.address_of(buf) if not isinstance(buf, ctypes.c_char_p) else \
        ctypes.cast(buf, ctypes.c_void_p).value
    if not addr:
        raise ValueError("buffer pointer is NULL")
    return addr


def write_bytes(data: bytes, buf: Any, length: int) -> int:
    """Copy `data` into buf[:length] without a terminator: len(data), or -len(data) (nothing
    written) when it does not fit."""
    if len(data) > length:
        return -len(data)
    if data:
        ctypes.memmove(char_buffer_address(buf, length), data, len(data))
    return len(data)


def read_bytes(text: Any, text_len: int) -> bytes:
    """`text_len` bytes of a text a client passed (bytes, bytearray, a ctypes char array or
    c_char_p, or an int address)."""
    if isinstance(text, (bytes, bytearray)):
        return bytes(text[:text_len])
    if isinstance(text, str):
        raise TypeError("text must be bytes (UTF-8), not str")
    if text_len == 0:
        return b""
    addr = (ctypes.cast(text, ctypes.c_void_p).value if isinstance(text, ctypes.c_char_p)
            else _handles.address_of(text))
    if not addr:
        raise ValueError("text pointer is NULL")
    return ctypes.string_at(addr, text_len)


def token_array(tokens: Any, n: int) -> Any:
    """Something indexable as int32 tokens[0:n] that writes through to what the client
    passed (a ctypes int32 array or pointer, a numpy int32 array, or an int address)."""
    if isinstance(tokens, int):
        return ctypes.cast(tokens, ctypes.POINTER(ctypes.c_int32))
    if hasattr(tokens, "__array_interface__"):
        import numpy as np
        arr = np.asarray(tokens)
        if arr.dtype != np.int32 or len(arr) < n:
            raise ValueError("a numpy token array must be int32 and hold n_tokens_max tokens")
        return arr
    if isinstance(tokens, ctypes.Array) and len(tokens) < n:
        raise ValueError(f"token array of {len(tokens)} is shorter than {n}")
    return tokens


def token_to_piece(vocab: Vocab, token: int, buf: Any, length: int, lstrip: int,
                   special: bool) -> int:
    return write_bytes(vocab.piece(int(token), int(lstrip), bool(special)), buf, int(length))


def tokenize(vocab: Vocab, text: Any, text_len: int, tokens: Any, n_tokens_max: int,
             add_special: bool, parse_special: bool) -> int:
    ids = vocab.tokenize(read_bytes(text, int(text_len)), bool(add_special), bool(parse_special))
    if len(ids) > n_tokens_max:
        return -len(ids)
    out = token_array(tokens, len(ids))
    for i, t in enumerate(ids):
        out[i] = t
    return len(ids)


def detokenize(vocab: Vocab, tokens: Any, n_tokens: int, text: Any, text_len_max: int,
               remove_special: bool, unparse_special: bool) -> int:
    ids = [int(t) for t in token_array(tokens, int(n_tokens))[:int(n_tokens)]]
    data = vocab.detokenize(ids, bool(remove_special), bool(unparse_special))
    return write_bytes(data, text, int(text_len_max))


def metadata_value(metadata: Dict[str, str], key: bytes, buf: Any, buf_size: int,
                   ) -> int:
    """llama_model_meta_val_str: snprintf into buf (NUL-terminated, truncated to fit);
    the full length, or -1 for a missing key."""
    value = metadata.get(key.decode("utf-8") if isinstance(key, bytes) else str(key))
    return snprintf(value, buf, buf_size)


def snprintf(value: Optional[str], buf: Any, buf_size: int) -> int:
    if value is None:
        return -1
    data = value.encode("utf-8")
    if buf_size > 0 and buf is not None:
        n = min(len(data), buf_size - 1)
        addr = char_buffer_address(buf, buf_size)
        ctypes.memmove(addr, data[:n] + b"\0", n + 1)
    return len(data)
