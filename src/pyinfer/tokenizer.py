"""Tokenizers built from GGUF metadata, token-exact with llama.cpp.

`Tokenizer.from_gguf(path_or_reader)` reads the `tokenizer.ggml.*` keys and builds either a
SentencePiece-style tokenizer (`model == "llama"`, see tokenizer_spm) or a byte-level BPE one
(`model == "gpt2"`, see tokenizer_bpe). The public methods follow llama-cpp-python's `Llama`:

    tok = Tokenizer.from_gguf("model.gguf")
    ids = tok.tokenize(b"Hello", add_bos=True, special=False)
    tok.detokenize(ids)  # b"Hello"

Text goes through the same steps as llama.cpp's `llama_tokenize`:
  1. special-token partition: control/unknown tokens (only with special=True) and user-defined
     tokens (always) written literally in the text become single tokens, longest token first;
  2. every remaining raw fragment is tokenized on its own (SPM: with a leading space when it
     starts the text or follows a special token, if add_space_prefix);
  3. with add_bos (llama.cpp's add_special), BOS/EOS are added when the vocab asks for them.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from .config import ModelLoadError
from .tokenizer_bpe import ByteLevelBPE, PreTokenizer, decode_byte_level, pre_tokenizer_for
from .tokenizer_spm import spm_encode

TOKEN_NULL = -1

# GGUF tokenizer.ggml.token_type values
TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp token attribute bits (llama_token_attr)
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8

_TYPE_TO_ATTR = {TYPE_NORMAL: ATTR_NORMAL, TYPE_UNKNOWN: ATTR_UNKNOWN, TYPE_CONTROL: ATTR_CONTROL,
                 TYPE_USER_DEFINED: ATTR_USER_DEFINED, TYPE_UNUSED: ATTR_UNUSED,
                 TYPE_BYTE: ATTR_BYTE}

_SPACE = b" "
_BYTE_TEXT = re.compile(rb"<0x[0-9A-Fa-f]{2}>")
_ESCAPED_SPACE = "\u2581".encode("utf-8")
_C_SPACES = b" \t\n\v\f\r"  # C isspace(), used by the LSTRIP/RSTRIP attributes

# Token texts llama.cpp recognizes when the metadata does not name the token. When several
# are present llama.cpp takes whichever its hash map yields first; the lowest id is taken here,
# which agrees with it on the Llama-3 and SmolLM2 vocabularies. Recognized tokens are forced
# to be control tokens.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
              "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_PAD_TEXTS = ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")
_FIM_REP_TEXTS = ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")
_FIM_SEP_TEXTS = ("<|file_sep|>",)
# texts that end generation
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
              "<|calls|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>",
              "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>",
              "<｜end▁of▁sentence｜>")
# gpt-oss channel markers are always rendered
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")

# metadata key suffix -> attribute holding the id
_SPECIAL_ID_KEYS = (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("eot_token_id", "eot"),
                    ("eom_token_id", "eom"), ("unknown_token_id", "unk"),
                    ("seperator_token_id", "sep"), ("padding_token_id", "pad"),
                    ("mask_token_id", "mask"), ("fim_pad_token_id", "fim_pad"),
                    ("fim_rep_token_id", "fim_rep"), ("fim_sep_token_id", "fim_sep"))


def _field(reader, key: str):
    return reader.fields.get(key)


def _kind_name(kind) -> str:
    return {str: "a string", bool: "a bool", int: "an integer", float: "a number"}[kind]


def _scalar(reader, key: str, default=None, kind=None):
    """A single metadata value: str, bool, int or float, checked against `kind` when given
    (a malformed file gets a ModelLoadError naming the key, not a TypeError later)."""
    from gguf import GGUFValueType as T
    f = _field(reader, key)
    if f is None:
        return default
    if len(f.types) != 1 or f.types[0] == T.ARRAY:
        raise ModelLoadError(f"metadata key '{key}' must be {_kind_name(kind or str)}, found an array")
    t = f.types[0]
    if t == T.STRING:
        v = bytes(f.parts[-1]).decode("utf-8", errors="replace")
    else:
        v = f.parts[-1].tolist()[0]
    ok = {None: True, str: t == T.STRING, bool: t == T.BOOL,
          int: isinstance(v, int) and t != T.BOOL, float: isinstance(v, (int, float)) and t != T.BOOL}[kind]
    if not ok:
        raise ModelLoadError(f"metadata key '{key}' must be {_kind_name(kind)}, found {t.name} {v!r:.40}")
    return v


def _array(reader, key: str, strings: bool):
    """The field of an array metadata value, checked to hold strings or numbers."""
    from gguf import GGUFValueType as T
    f = _field(reader, key)
    if f is None:
        return None
    item = f.types[-1] if len(f.types) == 2 and f.types[0] == T.ARRAY else None
    if item is None or (item == T.STRING) != strings or item == T.BOOL:
        found = ("a single value" if f.types and f.types[0] != T.ARRAY
                 else f"an array of {item.name if item else '?'}")
        raise ModelLoadError(f"metadata key '{key}' must be an array of {'strings' if strings else 'numbers'}, "
                             f"found {found}")
    return f


def _str_array(reader, key: str) -> Optional[List[bytes]]:
    f = _array(reader, key, strings=True)
    if f is None:
        return None
    return [bytes(f.parts[i]) for i in f.data]


def _num_array(reader, key: str) -> Optional[np.ndarray]:
    f = _array(reader, key, strings=False)
    if f is None:
        return None
    return np.concatenate([f.parts[i] for i in f.data]) if len(f.data) else np.zeros(0)


class Tokenizer:
    """A GGUF vocabulary with llama.cpp's tokenize / token_to_piece semantics.

    tokens: token texts by id (raw GGUF bytes); token_types: GGUF token_type per id (1 normal,
    2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte); scores: SPM merge scores per id;
    merges: BPE merge strings "left right" in rank order (gpt2 model only); special: ids from
    the metadata by name (bos, eos, eot, eom, unk, sep, pad, mask, fim_pad, fim_rep, fim_sep).
    """

    def __init__(self, model: str, tokens: Sequence[bytes], token_types: Optional[Sequence[int]],
                 scores: Optional[Sequence[float]] = None, merges: Sequence[bytes] = (),
                 pre: Optional[str] = None, special: Optional[Dict[str, int]] = None,
                 add_bos: Optional[bool] = None, add_eos: Optional[bool] = None,
                 add_space_prefix: Optional[bool] = None, model_name: str = ""):
        n = len(tokens)
        if n == 0:
            raise ValueError("the vocabulary is empty")
        self.model = model
        self.pre = pre
        # empty texts get a unique placeholder, as in llama.cpp
        self._texts: List[bytes] = [t if t else b"[EMPTY_%d]" % i for i, t in enumerate(tokens)]
        self._ids: Dict[bytes, int] = {}
        for i, t in enumerate(self._texts):
            if t in self._ids:
                raise ValueError(f"duplicate token in vocabulary: {t!r} has ids "
                                 f"{self._ids[t]} and {i}")
            self._ids[t] = i
        self._types = list(token_types)[:n] if token_types is not None else [TYPE_NORMAL] * n
        self._attrs = [_TYPE_TO_ATTR.get(t, 0) for t in self._types]
        self._scores: List[float] = (list(map(float, scores))[:n] if scores is not None
                                     else [0.0] * n)
        if len(self._types) < n or len(self._scores) < n:
            raise ModelLoadError(f"token_types ({len(self._types)}) and scores ({len(self._scores)}) need "
                                 f"one entry per token ({n})")
        has_bytes = TYPE_BYTE in self._types     # (a C-speed scan: most BPE vocabularies have none)
        for i in [i for i, t in enumerate(self._types) if t == TYPE_BYTE] if has_bytes else []:
            if not _BYTE_TEXT.fullmatch(self._texts[i]):   # token_to_piece reads the byte from it
                raise ModelLoadError(f"token {i} has type BYTE, but its text {self._texts[i][:40]!r} "
                                     "is not <0xXX>")

        ids = {"bos": TOKEN_NULL, "eos": TOKEN_NULL, "unk": TOKEN_NULL}
        self._bpe: Optional[ByteLevelBPE] = None
        if model == "llama":
            ids.update(bos=1, eos=2, unk=0)
            add_bos_default, add_eos_default, space_default = True, False, True
        elif model == "gpt2":
            bpe_pre: PreTokenizer = pre_tokenizer_for(pre)
            ids.update(bos=11, eos=11)
            add_bos_default, add_eos_default, space_default = bpe_pre.add_bos, False, False
            self._bpe = ByteLevelBPE(self._texts, merges, bpe_pre)
        else:
            raise ValueError(f"unsupported tokenizer model: '{model}'")
        ids = {k: (v if v < n else TOKEN_NULL) for k, v in ids.items()}
        for k, v in (special or {}).items():
            if v is not None and 0 <= v < n:
                ids[k] = v
        self.add_bos = add_bos_default if add_bos is None else bool(add_bos)
        self.add_eos = add_eos_default if add_eos is None else bool(add_eos)
        self.add_space_prefix = space_default if add_space_prefix is None else bool(add_space_prefix)
        self._special_ids = ids
        self._eog = self._detect_specials(ids, model_name)

        # special-token partition order: longest text first, ties by id
        cands = [i for i, a in enumerate(self._attrs)
                 if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)]
        self._special_order = sorted(cands, key=lambda i: (-len(self._texts[i]), i))
        self._pieces: List[Optional[bytes]] = [None] * n  # token_to_piece(special=True) cache
        self.nl_id = self._newline_id()

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, reader_or_path) -> "Tokenizer":
        """Build from a `gguf.GGUFReader` or the path of a GGUF file."""
        if isinstance(reader_or_path, (str, bytes, os.PathLike)):
            import gguf
            reader = gguf.GGUFReader(reader_or_path)
        else:
            reader = reader_or_path
        kp = "tokenizer.ggml."
        model = _scalar(reader, kp + "model", kind=str)
        if model is None:
            raise ValueError("GGUF file has no tokenizer.ggml.model")
        tokens = _str_array(reader, kp + "tokens")
        if tokens is None:
            raise ValueError("cannot find tokenizer vocab in model file")
        types = _num_array(reader, kp + "token_type")
        if types is not None and types.dtype.kind == "f":
            raise ModelLoadError(f"metadata key '{kp}token_type' must be an array of integers, "
                                 f"found {types.dtype}")
        scores = _num_array(reader, kp + "scores")
        merges = _str_array(reader, kp + "merges")
        if model == "gpt2" and merges is None:
            raise ValueError("cannot find tokenizer merges in model file")
        special = {}
        for key, name in _SPECIAL_ID_KEYS:
            v = _scalar(reader, kp + key, kind=int)
            if v is not None:
                special[name] = v
        return cls(model, tokens,
                   types.tolist() if types is not None else None,
                   scores.tolist() if scores is not None else None,
                   merges or (), pre=_scalar(reader, kp + "pre", kind=str), special=special,
                   add_bos=_scalar(reader, kp + "add_bos_token", kind=bool),
                   add_eos=_scalar(reader, kp + "add_eos_token", kind=bool),
                   add_space_prefix=_scalar(reader, kp + "add_space_prefix", kind=bool),
                   model_name=_scalar(reader, "general.name", "", kind=str))

    def _first_id(self, texts: Iterable[str]) -> int:
        found = [self._ids[t.encode()] for t in texts if t.encode() in self._ids]
        return min(found) if found else TOKEN_NULL

    def _make_control(self, i: int) -> None:
        self._attrs[i] |= ATTR_CONTROL

    def _detect_specials(self, ids: Dict[str, int], model_name: str) -> frozenset:
        """llama.cpp's text-based detection of EOT/EOM/FIM tokens and the end-of-generation set;
        also applies its per-token attribute fixes. Returns the EOG ids."""
        for name, texts in (("eot", _EOT_TEXTS), ("eom", _EOM_TEXTS), ("fim_pad", _FIM_PAD_TEXTS),
                            ("fim_rep", _FIM_REP_TEXTS), ("fim_sep", _FIM_SEP_TEXTS)):
            if ids.get(name, TOKEN_NULL) == TOKEN_NULL:
                ids[name] = self._first_id(texts)
                if ids[name] != TOKEN_NULL:
                    self._make_control(ids[name])
        for i, t in enumerate(self._texts):  # control tokens named "unused" are unused
            if self._attrs[i] & ATTR_CONTROL and b"unused" in t:
                self._attrs[i] |= ATTR_UNUSED
        eog = {ids[k] for k in ("fim_pad", "fim_rep", "fim_sep") if ids[k] != TOKEN_NULL}
        for t in _EOG_TEXTS:
            i = self._ids.get(t.encode())
            if i is not None:
                eog.add(i)
                self._make_control(i)
        for t in _ALWAYS_RENDERED:
            i = self._ids.get(t.encode())
            if i is not None:
                self._attrs[i] = ATTR_USER_DEFINED
        eog |= {ids[k] for k in ("eos", "eot", "eom") if ids[k] != TOKEN_NULL}
        texts = {self._texts[i] for i in eog}
        end = self._ids.get(b"<|end|>")
        has_call = b"<|call|>" in texts or b"<|calls|>" in texts
        if end in eog and has_call and (b"<|return|>" in texts or b"<|flush|>" in texts):
            eog.discard(end)  # harmony-style vocabularies: <|end|> ends a message only
            self._attrs[end] = ATTR_USER_DEFINED
        name = model_name.lower()
        if "phi-3" in name or "phi3" in name:  # Phi-3 special tokens eat following spaces
            for i, a in enumerate(self._attrs):
                if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN):
                    self._attrs[i] |= ATTR_RSTRIP
            for t, on in ((b"</s>", True), (b"<unk>", False), (b"<s>", False),
                          (b"<|endoftext|>", False)):
                i = self._ids.get(t)
                if i is not None:
                    self._attrs[i] = (self._attrs[i] | ATTR_RSTRIP if on
                                      else self._attrs[i] & ~ATTR_RSTRIP)
        return frozenset(eog)

    def _newline_id(self) -> int:
        if self.model == "llama":
            return self._byte_token(0x0A)
        ids = self.tokenize(b"\n", add_bos=False)
        return ids[0] if ids else self._special_ids.get("pad", TOKEN_NULL)

    # --- properties -----------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return len(self._texts)

    bos_id = property(lambda self: self._special_ids["bos"])
    eos_id = property(lambda self: self._special_ids["eos"])
    eot_id = property(lambda self: self._special_ids["eot"])
    eom_id = property(lambda self: self._special_ids["eom"])
    unk_id = property(lambda self: self._special_ids["unk"])
    pad_id = property(lambda self: self._special_ids.get("pad", TOKEN_NULL))
    sep_id = property(lambda self: self._special_ids.get("sep", TOKEN_NULL))

    @property
    def eog_ids(self) -> frozenset:
        """Ids that end generation (EOS, EOT, EOM and the known end-of-turn texts)."""
        return self._eog

    @property
    def vocab(self) -> List[str]:
        """Token texts by id, as stored in the GGUF (SPM spaces as U+2581, BPE byte-level)."""
        return [t.decode("utf-8", errors="replace") for t in self._texts]

    def get_vocab(self) -> Dict[str, int]:
        """Token text -> id."""
        return {t.decode("utf-8", errors="replace"): i for t, i in self._ids.items()}

    def token_text(self, token: int) -> str:
        return self._texts[self._check(token)].decode("utf-8", errors="replace")

    def token_to_id(self, text: Union[str, bytes]) -> int:
        """Id of the token whose GGUF text is `text`, or -1."""
        key = text.encode("utf-8") if isinstance(text, str) else text
        return self._ids.get(key, TOKEN_NULL)

    def score(self, token: int) -> float:
        return self._scores[self._check(token)]

    def token_type(self, token: int) -> int:
        """The GGUF token_type value (1 normal ... 6 byte)."""
        return self._types[self._check(token)]

    def token_attr(self, token: int) -> int:
        """llama.cpp attribute bits (ATTR_*), after its text-based fixes."""
        return self._attrs[self._check(token)]

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    def is_control(self, token: int) -> bool:
        return bool(self.token_attr(token) & ATTR_CONTROL)

    def is_byte(self, token: int) -> bool:
        return bool(self.token_attr(token) & ATTR_BYTE)

    def is_user_defined(self, token: int) -> bool:
        return bool(self.token_attr(token) & ATTR_USER_DEFINED)

    def is_unused(self, token: int) -> bool:
        return bool(self.token_attr(token) & ATTR_UNUSED)

    def _check(self, token: int) -> int:
        if not 0 <= token < len(self._texts):
            raise ValueError(f"token id {token} out of range [0, {len(self._texts)})")
        return token

    # --- tokenize -------------------------------------------------------------------------

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> List[int]:
        """Token ids of UTF-8 `text` (llama_tokenize semantics).

        add_bos: add the special tokens the vocab asks for (BOS if add_bos_token, EOS if
        add_eos_token); special: also match control tokens written in the text.
        """
        if isinstance(text, str):
            raise TypeError("tokenize() takes bytes; encode the text as UTF-8 first")
        frags = self._partition(bytes(text), special) if text else []
        out: List[int] = []
        if add_bos and self.add_bos:
            if self.bos_id == TOKEN_NULL:
                raise ValueError("add_bos_token is set but the vocab has no BOS token")
            out.append(self.bos_id)
        if self._bpe is not None:
            raw = [f for f in frags if isinstance(f, bytes)]
            encoded = iter(self._bpe.encode(raw) if raw else [])
            for f in frags:
                if isinstance(f, bytes):
                    out.extend(next(encoded))
                else:
                    out.append(f)
        else:
            prev_special = True
            for f in frags:
                if isinstance(f, bytes):
                    if self.add_space_prefix and prev_special:
                        f = _SPACE + f
                    spm_encode(f.replace(_SPACE, _ESCAPED_SPACE), self._ids, self._scores,
                               self._byte_token, out)
                    prev_special = False
                else:
                    out.append(f)
                    prev_special = True
        if add_bos and self.add_eos:
            if self.eos_id == TOKEN_NULL:
                raise ValueError("add_eos_token is set but the vocab has no EOS token")
            out.append(self.eos_id)
        return out

    def _partition(self, text: bytes, parse_special: bool) -> List[Union[bytes, int]]:
        """Split `text` into raw fragments (bytes) and special tokens (int ids): each special
        token, longest first, is cut out of every raw fragment that contains it."""
        frags: List[Union[bytes, int]] = [text]
        for tid in self._special_order:
            attr = self._attrs[tid]
            if not parse_special and attr & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            piece = self._texts[tid]
            if piece not in text:
                continue
            new: List[Union[bytes, int]] = []
            for f in frags:
                if isinstance(f, int) or piece not in f:
                    new.append(f)
                    continue
                parts = f.split(piece)
                last = len(parts) - 1
                for k, p in enumerate(parts):
                    if k:
                        new.append(tid)
                    if k and attr & ATTR_RSTRIP:
                        p = p.lstrip(_C_SPACES)
                    if k < last and attr & ATTR_LSTRIP:
                        p = p.rstrip(_C_SPACES)
                    if p:
                        new.append(p)
            frags = new
        return frags

    def _byte_token(self, byte: int) -> int:
        """SPM byte-fallback token of a byte value (`<0xXX>`, else the byte itself, else unk)."""
        tok = self._ids.get(b"<0x%02X>" % byte)
        if tok is None:
            tok = self._ids.get(bytes((byte,)), self.unk_id)
        return tok

    # --- detokenize -----------------------------------------------------------------------

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        """The bytes one token stands for (llama_token_to_piece). Control and unknown tokens
        give b"" unless `special`; byte tokens give their single (maybe non-UTF-8) byte."""
        attr = self._attrs[self._check(token)]
        if not special and attr & (ATTR_CONTROL | ATTR_UNKNOWN):
            return b""
        piece = self._pieces[token]
        if piece is None:
            piece = self._pieces[token] = self._make_piece(token, attr)
        return piece

    def _make_piece(self, token: int, attr: int) -> bytes:
        text = self._texts[token]
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED):
            return text
        if attr & ATTR_NORMAL:
            if self.model == "llama":
                return text.replace(_ESCAPED_SPACE, _SPACE)
            return decode_byte_level(text.decode("utf-8", errors="replace"))
        if attr & ATTR_BYTE:
            return bytes((int(text[3:5], 16),))
        return b""

    def detokenize(self, tokens: Iterable[int], prev_tokens: Optional[Sequence[int]] = None,
                   special: bool = False) -> bytes:
        """Concatenated pieces of `tokens`, like llama-cpp-python's `Llama.detokenize`: when the
        first token is BOS, one leading space (the SPM space prefix) is dropped.

        prev_tokens is accepted for API compatibility; the pieces do not depend on context, so
        it does not change the result (a continuation never starts with BOS).
        """
        tokens = list(tokens)
        out = b"".join([self.token_to_piece(t, special) for t in tokens])
        if tokens and tokens[0] == self.bos_id and out[:1] == _SPACE:
            return out[1:]
        return out

    def __repr__(self) -> str:
        return (f"Tokenizer(model={self.model!r}, pre={self.pre!r}, n_vocab={self.n_vocab}, "
                f"bos={self.bos_id}, eos={self.eos_id}, add_bos={self.add_bos})")

