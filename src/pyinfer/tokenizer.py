"""Tokenizers built from GGUF metadata, token-exact with llama.cpp.

`Tokenizer.from_gguf(path_or_reader)` reads the `tokenizer.ggml.*` keys and builds the
tokenizer llama.cpp would for the `tokenizer.ggml.model` value:

    llama   SPM   SentencePiece-style score merges (tokenizer_spm)
    gpt2    BPE   byte-level BPE after the `tokenizer.ggml.pre` word split (tokenizer_bpe)
    gemma4  BPE   BPE over raw UTF-8 with U+2581 spaces (tokenizer_bpe.SpacePieceBPE)
    bert    WPM   BERT word splitting + greedy WordPiece (tokenizer_wpm)
    t5      UGM   precompiled-charsmap normalization + unigram Viterbi (tokenizer_ugm)
    rwkv    RWKV  greedy longest match over byte strings (tokenizer_rwkv)

The public methods follow llama-cpp-python's `Llama`:

    tok = Tokenizer.from_gguf("model.gguf")
    ids = tok.tokenize(b"Hello", add_bos=True, special=False)
    tok.detokenize(ids)  # b"Hello"

Text goes through the same steps as llama.cpp's `llama_tokenize`:
  1. special-token partition: control/unknown tokens (only with special=True) and user-defined
     tokens (always) written literally in the text become single tokens, longest token first;
  2. every remaining raw fragment is tokenized on its own (SPM: with a leading space when it
     starts the text or follows a special token, if add_space_prefix);
  3. with add_bos (llama.cpp's add_special) the vocabulary's own rule adds special tokens:
     BOS/EOS when it asks for them (SPM, BPE, UGM), always [CLS] ... [SEP] (WPM), none (RWKV).
"""
from __future__ import annotations

import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from .config import ModelLoadError
from .tokenizer_bpe import ByteLevelBPE, SpacePieceBPE, decode_byte_level, pre_tokenizer_for
from .tokenizer_rwkv import RwkvGreedy
from .tokenizer_specials import (ATTR_BYTE, ATTR_CONTROL, ATTR_LSTRIP, ATTR_NORMAL,  # noqa: F401
                                 ATTR_RSTRIP, ATTR_UNKNOWN, ATTR_UNUSED, ATTR_USER_DEFINED,
                                 TOKEN_NULL, SpecialRules)
from .tokenizer_spm import spm_encode
from .tokenizer_ugm import Unigram
from .tokenizer_wpm import WordPiece

# GGUF tokenizer.ggml.token_type values
TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = 1, 2, 3, 4, 5, 6

_TYPE_TO_ATTR = {TYPE_NORMAL: ATTR_NORMAL, TYPE_UNKNOWN: ATTR_UNKNOWN, TYPE_CONTROL: ATTR_CONTROL,
                 TYPE_USER_DEFINED: ATTR_USER_DEFINED, TYPE_UNUSED: ATTR_UNUSED,
                 TYPE_BYTE: ATTR_BYTE}

# tokenizer.ggml.model -> llama.cpp vocabulary type
VOCAB_TYPES = {"llama": "SPM", "gpt2": "BPE", "gemma4": "BPE", "bert": "WPM", "t5": "UGM",
               "rwkv": "RWKV"}
# per vocabulary type: llama.cpp's default special ids and add_bos, add_eos, add_sep,
# add_space_prefix, clean_spaces (BPE: the pre-tokenizer decides some of these)
_DEFAULT_IDS = {"SPM": {"bos": 1, "eos": 2, "unk": 0}, "BPE": {"bos": 11, "eos": 11},
                "WPM": {"bos": 101, "unk": 100, "sep": 102, "pad": 0, "mask": 103},
                "UGM": {"eos": 1, "unk": 2, "pad": 0}, "RWKV": {}}
_DEFAULT_FLAGS = {"SPM": (True, False, False, True, False), "WPM": (True, False, True, False, True),
                  "UGM": (False, True, False, False, False), "RWKV": (False, False, False, False, False)}

_SPACE = b" "
_BYTE_TEXT = re.compile(rb"<0x[0-9A-Fa-f]{2}>")
_ESCAPED_SPACE = "\u2581".encode("utf-8")
_C_SPACES = b" \t\n\v\f\r"  # C isspace(), used by the LSTRIP/RSTRIP attributes
_SLOTS = ("bos", "eos", "eot", "eom", "unk", "sep", "pad", "mask", "fim_pre", "fim_suf", "fim_mid",
          "fim_pad", "fim_rep", "fim_sep")

# metadata key suffix -> special slot (the deprecated FIM keys last: they win, as in llama.cpp)
_SPECIAL_ID_KEYS = (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("eot_token_id", "eot"),
                    ("eom_token_id", "eom"), ("unknown_token_id", "unk"),
                    ("seperator_token_id", "sep"), ("padding_token_id", "pad"),
                    ("mask_token_id", "mask"), ("fim_pre_token_id", "fim_pre"),
                    ("fim_suf_token_id", "fim_suf"), ("fim_mid_token_id", "fim_mid"),
                    ("fim_pad_token_id", "fim_pad"), ("fim_rep_token_id", "fim_rep"),
                    ("fim_sep_token_id", "fim_sep"), ("prefix_token_id", "fim_pre"),
                    ("suffix_token_id", "fim_suf"), ("middle_token_id", "fim_mid"))


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
        what = "strings" if strings else "numbers"
        raise ModelLoadError(f"metadata key '{key}' must be an array of {what}, found {found}")
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


def _read_gguf(path: str):
    """gguf_model's reader (one pass over metadata arrays, each read inside the file), without
    GGUFFile's model checks: the tokenizer checks the keys it reads itself."""
    import struct
    from .gguf_model import POWERINFER_MAGIC, _check_path, _open_reader
    magic = _check_path(path)
    try:
        return _open_reader(path, magic == POWERINFER_MAGIC)
    except (ValueError, IndexError, KeyError, OSError, OverflowError, struct.error) as e:
        raise ModelLoadError(f"Failed to load model from file: {path} ({e})") from e


class Tokenizer:
    """A GGUF vocabulary with llama.cpp's tokenize / token_to_piece semantics.

    tokens: token texts by id (raw GGUF bytes); token_types: GGUF token_type per id (1 normal,
    2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte); scores: SPM/UGM scores per id;
    merges: BPE merge strings "left right" in rank order; special: ids from the metadata by
    slot (bos, eos, eot, eom, unk, sep, pad, mask, fim_pre, fim_suf, fim_mid, fim_pad, fim_rep,
    fim_sep); add_bos / add_eos / add_sep / add_space_prefix / remove_extra_whitespaces: the
    metadata flags (None: the vocabulary type's default); charsmap: UGM's precompiled
    normalization map; lowercase / strip_accents: WPM's normalizer options; model_name, arch:
    general.name and general.architecture (a few per-model rules read them).
    """

    def __init__(self, model: str, tokens: Sequence[bytes], token_types: Optional[Sequence[int]],
                 scores: Optional[Sequence[float]] = None, merges: Sequence[bytes] = (),
                 pre: Optional[str] = None, special: Optional[Dict[str, int]] = None,
                 add_bos: Optional[bool] = None, add_eos: Optional[bool] = None,
                 add_space_prefix: Optional[bool] = None, model_name: str = "",
                 add_sep: Optional[bool] = None, remove_extra_whitespaces: Optional[bool] = None,
                 charsmap: bytes = b"", lowercase: Optional[bool] = None,
                 strip_accents: Optional[bool] = None, arch: str = ""):
        n = len(tokens)
        if n == 0:
            raise ValueError("the vocabulary is empty")
        vtype = VOCAB_TYPES.get(model)
        if vtype is None:
            raise ValueError(f"unsupported tokenizer model: '{model}'")
        self.model, self.vocab_type = model, vtype
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
        ids = dict.fromkeys(_SLOTS, TOKEN_NULL)
        ids.update(_DEFAULT_IDS[vtype])
        bpe_pre = None
        if vtype == "BPE":
            if model == "gemma4":
                self.pre = "gemma4"       # llama.cpp: the gemma4 model implies its pre-tokenizer
            bpe_pre = pre_tokenizer_for(self.pre)
            flags = (bpe_pre.add_bos, False, bpe_pre.add_sep, False, bpe_pre.clean_spaces)
            if bpe_pre.no_bos:
                ids["bos"] = TOKEN_NULL
        else:
            flags = _DEFAULT_FLAGS[vtype]
        add_bos_default, add_eos_default, add_sep_default, space_default, self.clean_spaces = flags
        self.add_space_prefix = space_default if add_space_prefix is None else bool(add_space_prefix)
        self.remove_extra_whitespaces = bool(remove_extra_whitespaces)
        # spaces are U+2581 in the token texts of every type but byte-level BPE
        self.escape_whitespaces = bpe_pre.escape_whitespaces if bpe_pre else True
        self._encoder = self._make_encoder(bpe_pre, merges, charsmap, lowercase, strip_accents)
        ids = {k: (v if v < n else TOKEN_NULL) for k, v in ids.items()}
        self.nl_id = self._newline_id(ids)      # (before the metadata's ids, as in llama.cpp)
        for k, v in (special or {}).items():
            if v is not None and 0 <= v < n:
                ids[k] = v
        self.add_bos = add_bos_default if add_bos is None else bool(add_bos)
        self.add_eos = add_eos_default if add_eos is None else bool(add_eos)
        self.add_sep = add_sep_default if add_sep is None else bool(add_sep)
        if bpe_pre is not None and bpe_pre.family == "gemma4":
            self.add_bos = True     # llama.cpp's Gemma 4 override
        if isinstance(self._encoder, (WordPiece, Unigram, RwkvGreedy)):
            self._encoder.unk_id = ids["unk"]
        self._special_ids = ids
        rules = SpecialRules(self._texts, self._ids, self._attrs, ids)
        self._eog = rules.apply()
        # special-token partition order: longest text first, ties by id
        cands = [i for i, a in enumerate(self._attrs)
                 if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)]
        self._special_order = sorted(cands, key=lambda i: (-len(self._texts[i]), i))
        rules.fix_attributes(self.pre or "", arch, model_name)
        self._pieces: List[Optional[bytes]] = [None] * n  # token_to_piece(special=True) cache

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, reader_or_path) -> "Tokenizer":
        """Build from a `gguf.GGUFReader` or the path of a GGUF file."""
        if isinstance(reader_or_path, (str, bytes, os.PathLike)):
            reader = _read_gguf(os.fsdecode(reader_or_path))
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
        pre = _scalar(reader, kp + "pre", kind=str)
        if model in ("gpt2", "gemma4") and merges is None:
            raise ValueError("cannot find tokenizer merges in model file")
        charsmap = _num_array(reader, kp + "precompiled_charsmap")
        special = {}
        for key, name in _SPECIAL_ID_KEYS:
            v = _scalar(reader, kp + key, kind=int)
            if v is not None and 0 <= v < len(tokens):   # llama.cpp skips a bad id (keeps the earlier)
                special[name] = v
        flag = lambda key: _scalar(reader, kp + key, kind=bool)  # noqa: E731
        return cls(model, tokens,
                   types.tolist() if types is not None else None,
                   scores.tolist() if scores is not None else None,
                   merges or (), pre=pre, special=special,
                   add_bos=flag("add_bos_token"), add_eos=flag("add_eos_token"),
                   add_space_prefix=flag("add_space_prefix"),
                   model_name=_scalar(reader, "general.name", "", kind=str),
                   add_sep=flag("add_sep_token"),
                   remove_extra_whitespaces=flag("remove_extra_whitespaces"),
                   charsmap=charsmap.astype(np.uint8).tobytes() if charsmap is not None else b"",
                   lowercase=flag("normalizer.lowercase"),
                   strip_accents=flag("normalizer.strip_accents"),
                   arch=_scalar(reader, "general.architecture", "", kind=str))

    def _make_encoder(self, bpe_pre, merges, charsmap, lowercase, strip_accents):
        """The tokenizer of raw text fragments for this vocabulary type (SPM: None, its merge
        function needs no state)."""
        vtype = self.vocab_type
        if vtype == "BPE":
            if bpe_pre.escape_whitespaces:
                return SpacePieceBPE(self._texts, merges, newline_runs=bpe_pre.family == "gemma4")
            return ByteLevelBPE(self._texts, merges, bpe_pre)
        if vtype == "WPM":
            lower = True if lowercase is None else bool(lowercase)
            strip = lower if strip_accents is None else bool(strip_accents)
            return WordPiece(self._texts, TOKEN_NULL, lower, strip)
        if vtype == "UGM":
            return Unigram(self._texts, self._scores, self._attrs, TOKEN_NULL, charsmap,
                           self.add_space_prefix, self.remove_extra_whitespaces)
        if vtype == "RWKV":
            return RwkvGreedy(self._texts, TOKEN_NULL)
        return None

    def _newline_id(self, defaults: Dict[str, int]) -> int:
        """llama.cpp's linefeed token, found before the metadata's special ids are read."""
        if self.vocab_type == "SPM":
            tok = self._ids.get(b"<0x0A>", self._ids.get(b"\n"))
            return defaults["pad"] if tok is None else tok
        if self.vocab_type == "WPM":
            return defaults["pad"]
        if isinstance(self._encoder, Unigram):
            self._encoder.unk_id = defaults["unk"]
        ids = self._encode_raw([b"\n"])[0]
        return ids[0] if ids else defaults["pad"]

    # --- properties -----------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return len(self._texts)

    bos_id = property(lambda self: self._special_ids["bos"])
    eos_id = property(lambda self: self._special_ids["eos"])
    eot_id = property(lambda self: self._special_ids["eot"])
    eom_id = property(lambda self: self._special_ids["eom"])
    unk_id = property(lambda self: self._special_ids["unk"])
    pad_id = property(lambda self: self._special_ids["pad"])
    sep_id = property(lambda self: self._special_ids["sep"])
    mask_id = property(lambda self: self._special_ids["mask"])
    fim_pre_id = property(lambda self: self._special_ids["fim_pre"])
    fim_suf_id = property(lambda self: self._special_ids["fim_suf"])
    fim_mid_id = property(lambda self: self._special_ids["fim_mid"])
    fim_pad_id = property(lambda self: self._special_ids["fim_pad"])
    fim_rep_id = property(lambda self: self._special_ids["fim_rep"])
    fim_sep_id = property(lambda self: self._special_ids["fim_sep"])

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

        add_bos: add the special tokens the vocabulary asks for (llama.cpp's add_special: BOS
        if add_bos_token and EOS if add_eos_token; BERT vocabularies always [CLS] and [SEP]);
        special: also match control tokens written in the text.
        """
        if isinstance(text, str):
            raise TypeError("tokenize() takes bytes; encode the text as UTF-8 first")
        frags = self._partition(bytes(text), special) if text else []
        vtype = self.vocab_type
        bos = vtype == "WPM" or (self.add_bos and vtype != "RWKV")
        eos = self.add_eos and vtype in ("SPM", "BPE", "UGM")
        out: List[int] = []
        if add_bos and bos:
            out.append(self._required("bos"))
        if vtype == "SPM":
            self._encode_spm(frags, out)
        else:
            raw = [f for f in frags if isinstance(f, bytes)]
            encoded = iter(self._encode_raw(raw) if raw else [])
            for f in frags:
                if isinstance(f, bytes):
                    out.extend(next(encoded))
                else:
                    out.append(f)
        if add_bos and eos:
            out.append(self._required("eos"))
        if add_bos and vtype == "WPM":
            out.append(self._required("sep"))
        return out

    def _required(self, slot: str) -> int:
        tok = self._special_ids[slot]
        if tok == TOKEN_NULL:
            raise ValueError(f"tokenizing with add_bos (llama.cpp's add_special) needs a "
                             f"{slot.upper()} token here, but the vocab has none")
        return tok

    def _encode_raw(self, fragments: List[bytes]) -> List[List[int]]:
        """Token ids of raw text fragments, for every type but SPM."""
        enc = self._encoder
        if isinstance(enc, Unigram):      # (kv_overrides may change the flags after loading)
            enc.add_space_prefix = self.add_space_prefix
            enc.remove_extra_whitespaces = self.remove_extra_whitespaces
        if isinstance(enc, (ByteLevelBPE, SpacePieceBPE)):
            if self.escape_whitespaces:
                fragments = [f.replace(_SPACE, _ESCAPED_SPACE) for f in fragments]
            return enc.encode(fragments)
        return [enc.encode(f) for f in fragments]

    def _encode_spm(self, frags: List[Union[bytes, int]], out: List[int]) -> None:
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
        if isinstance(self._encoder, RwkvGreedy):
            return self._encoder.pieces[token]
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED):
            return text
        if attr & ATTR_NORMAL:
            if self.escape_whitespaces:
                return text.replace(_ESCAPED_SPACE, _SPACE)
            return decode_byte_level(text.decode("utf-8", errors="replace"))
        if attr & ATTR_BYTE and self.vocab_type != "WPM":
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
