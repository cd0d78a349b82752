"""Unigram tokenization (GGUF `tokenizer.ggml.model == "t5"`), as llama.cpp does it.

Text is first normalized with SentencePiece's precompiled character map (the GGUF key
`tokenizer.ggml.precompiled_charsmap`): at each position the longest input prefix the map knows
is replaced by its replacement string; a prefix of a user-defined token is kept as it is; other
characters pass unchanged, and a byte that starts no valid UTF-8 character becomes U+FFFD.
Spaces then become U+2581, runs of them collapse to one when remove_extra_whitespaces is set
(trailing ones vanish), and one is prepended when add_space_prefix is set.

The normalized bytes are segmented by Viterbi search: every vocabulary piece (normal,
user-defined and unused tokens) that starts at a character boundary competes with its score
(user-defined pieces score 0), a character no piece covers costs the lowest normal score minus
10 as an unknown token, the highest total wins (ties: the first found), and consecutive
unknown tokens are merged into one.

The character map is a SentencePiece "XOR-compressed compact double array": a uint32 byte
length, that many bytes of uint32 trie nodes, then NUL-terminated replacement strings. A node
packs BASE (bits 10-30, shifted left by 8 when bit 9 is set), LCHECK (bits 0-7 and 31) and
LEAF (bit 8); a leaf's BASE leads to the node whose low 31 bits index the replacement string.
"""
from __future__ import annotations

import struct
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

_ESCAPED_SPACE = "\u2581".encode("utf-8")
_REPLACEMENT = "\ufffd".encode("utf-8")
_UNKNOWN_PENALTY = np.float32(10.0)
_REACH_PREFIX = 4


class CharsMap:
    """SentencePiece's precompiled normalization map (longest-prefix replacement)."""

    def __init__(self, blob: bytes):
        if len(blob) < 4:
            raise ValueError("precompiled_charsmap is too small for its header")
        size, = struct.unpack_from("<I", blob, 0)
        if size + 4 >= len(blob):
            raise ValueError("precompiled_charsmap: the node array runs past the end of the map")
        self._nodes: List[int] = np.frombuffer(blob, "<u4", size // 4, 4).tolist()
        self._strings = blob[4 + size:]

    def _node(self, index: int) -> int:
        if index >= len(self._nodes):
            raise ValueError("precompiled_charsmap: node index out of range")
        return self._nodes[index]

    @staticmethod
    def _base(node: int) -> int:
        return (node >> 10) << ((node & (1 << 9)) >> 6)

    def longest(self, data: bytes, start: int) -> Optional[Tuple[bytes, int]]:
        """(replacement, input length) of the longest prefix of data[start:] the map replaces."""
        node = self._base(self._node(0))
        found = None
        for pos in range(start, len(data)):
            c = data[pos]
            if c == 0:
                break
            node ^= c
            packed = self._node(node)
            if packed & ((1 << 31) | 0xFF) != c:
                break
            leaf = (packed >> 8) & 1
            node ^= self._base(packed)
            if leaf:
                found = (pos - start + 1, self._node(node) & ((1 << 31) - 1))
        if found is None:
            return None
        length, offset = found
        if offset >= len(self._strings):
            raise ValueError("precompiled_charsmap: replacement index out of range")
        end = self._strings.find(b"\0", offset)
        if end < 0:
            raise ValueError("precompiled_charsmap: unterminated replacement string")
        return self._strings[offset:end], length


def _utf8_char_len(data: bytes, i: int) -> int:
    """Length of the valid UTF-8 character at data[i], or 0 (llama.cpp's checks: lead byte
    pattern and continuation bytes only; overlong forms pass)."""
    b = data[i]
    n = 1 if b < 0x80 else 0 if b < 0xC0 else 2 if b < 0xE0 else 3 if b < 0xF0 else 4 if b < 0xF8 else 0
    if n == 0 or i + n > len(data):
        return 0
    for k in range(1, n):
        if data[i + k] & 0xC0 != 0x80:
            return 0
    return n


def _lead_len(b: int) -> int:
    """llama.cpp's unicode_len_utf8: the length a lead byte announces."""
    return (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)[b >> 4]


class Unigram:
    """Unigram-LM tokenization over a GGUF T5-style vocabulary.

    tokens: token texts by id; scores: log probabilities by id; attrs: llama.cpp attribute
    bits per id as loaded from the token types (normal 4, user-defined 16, unused 2);
    unk_id: the unknown token; charsmap: the precompiled map (b"" for none).
    """

    def __init__(self, tokens: Sequence[bytes], scores: Sequence[float], attrs: Sequence[int],
                 unk_id: int, charsmap: bytes = b"", add_space_prefix: bool = False,
                 remove_extra_whitespaces: bool = False, escape_whitespaces: bool = True):
        normal, user, unused = 1 << 2, 1 << 4, 1 << 1
        self._pieces: Dict[bytes, Tuple[int, float]] = {}
        user_defined: List[bytes] = []
        min_score = np.finfo(np.float32).max      # (FLT_MAX, as llama.cpp starts)
        for i, (text, score, attr) in enumerate(zip(tokens, scores, attrs)):
            if attr & normal:
                min_score = min(min_score, np.float32(score))
            if attr & (normal | user | unused):
                self._pieces[text] = (i, 0.0 if attr & user else float(np.float32(score)))
            if attr & user:
                user_defined.append(text)
        # longest piece starting with each 1..4-byte prefix: bounds the lengths tried
        self._reach: Dict[bytes, int] = {}
        for text in self._pieces:
            for k in range(1, min(len(text), _REACH_PREFIX) + 1):
                if self._reach.get(text[:k], 0) < len(text):
                    self._reach[text[:k]] = len(text)
        # the unknown score is computed in float, as llama.cpp does
        self._unknown_score = float(np.float32(min_score - _UNKNOWN_PENALTY))
        # every prefix of a user-defined token: llama.cpp keeps the longest such prefix of the
        # input unnormalized (whether or not it is a whole token)
        self._user_prefixes: Set[bytes] = {t[:k] for t in user_defined for k in range(1, len(t) + 1)}
        self._charsmap = CharsMap(charsmap) if charsmap else None
        self.unk_id = unk_id
        self.add_space_prefix = add_space_prefix
        self.remove_extra_whitespaces = remove_extra_whitespaces
        self.escape_whitespaces = escape_whitespaces

    # --- normalization --------------------------------------------------------------------

    def _normalize_prefix(self, data: bytes, i: int) -> Tuple[bytes, int]:
        n = 0
        while i + n < len(data) and data[i:i + n + 1] in self._user_prefixes:
            n += 1
        if n:
            return data[i:i + n], n
        if self._charsmap is not None:
            found = self._charsmap.longest(data, i)
            if found is not None:
                return found
        n = _utf8_char_len(data, i)
        if n:
            return data[i:i + n], n
        return _REPLACEMENT, 1

    def normalize(self, data: bytes) -> bytes:
        space = _ESCAPED_SPACE if self.escape_whitespaces else b" "
        prepend = self.add_space_prefix
        merge = self.remove_extra_whitespaces
        out = bytearray()
        prepended = in_word = False
        i = 0
        while i < len(data):
            piece, used = self._normalize_prefix(data, i)
            for c in piece:
                if c != 0x20:
                    if not in_word:
                        in_word = True
                        if (prepend and not prepended) or merge:
                            out += space
                            prepended = True
                    out.append(c)
                else:
                    in_word = False
                    if not merge:
                        out += space
            i += used
        return bytes(out)

    # --- segmentation ---------------------------------------------------------------------

    def encode(self, fragment: bytes) -> List[int]:
        """Token ids of one raw text fragment (no special-token handling here)."""
        text = self.normalize(fragment)
        n = len(text)
        if n == 0:
            return []
        unk = self.unk_id
        # best[end] = (score, token, start) of the best segmentation of text[:end]
        best: List[Tuple[float, int, int]] = [(-float("inf"), unk, 0)] * (n + 1)
        best[0] = (0.0, unk, 0)
        get, reach = self._pieces.get, self._reach.get
        start = 0
        while start < n:
            char_len = min(_lead_len(text[start]), n - start)
            base = best[start][0]
            whole_char = False
            longest = 0
            for k in range(1, min(_REACH_PREFIX, n - start) + 1):
                r = reach(text[start:start + k])
                if r is None:
                    longest = k - 1
                    break
                longest = r
            for end in range(start + 1, min(n, start + longest) + 1):
                hit = get(text[start:end])
                if hit is None:
                    continue
                if end - start == char_len:
                    whole_char = True
                score = base + hit[1]
                if score > best[end][0]:
                    best[end] = (score, hit[0], start)
            if not whole_char:
                end = start + char_len
                score = base + self._unknown_score
                if score > best[end][0]:
                    best[end] = (score, unk, start)
            start += char_len
        out: List[int] = []
        prev_unknown = False
        end = n
        while True:
            _, tok, start = best[end]
            is_unknown = tok == unk
            if not (prev_unknown and is_unknown):
                out.append(tok)
            if start == 0:
                break
            prev_unknown = is_unknown
            end = start
        out.reverse()
        return out
