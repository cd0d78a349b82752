"""RWKV "world" tokenization (GGUF `tokenizer.ggml.model == "rwkv"`), as llama.cpp does it.

RWKV vocabularies hold arbitrary byte strings, stored in GGUF as escaped text: `\\t`, `\\n`,
`\\r`, `\\xHH` (two lowercase hex digits) and `\\<c>` for any other character c. Tokenization is
greedy: from the current byte, the longest vocabulary entry that the input starts with is
emitted; a byte no entry starts with becomes the unknown token.
"""
from __future__ import annotations

from typing import Dict, List, Sequence


def unescape_rwkv(text: bytes) -> bytes:
    """The bytes an escaped RWKV token text stands for (llama.cpp's parser: a hex digit
    above 'a' counts as a letter digit, anything else as a decimal one)."""
    out = bytearray()
    escaping = False
    hex_left = acc = 0
    for c in text:
        if hex_left:
            acc = ((acc << 4) + (c - 0x61 + 10 if c >= 0x61 else c - 0x30)) & 0xFF
            hex_left -= 1
            if hex_left == 0:
                out.append(acc)
                acc = 0
        elif escaping:
            escaping = False
            if c == 0x74:          # t
                out.append(0x09)
            elif c == 0x6E:        # n
                out.append(0x0A)
            elif c == 0x72:        # r
                out.append(0x0D)
            elif c == 0x78:        # x
                hex_left = 2
            else:
                out.append(c)
        elif c == 0x5C:            # backslash
            escaping = True
        else:
            out.append(c)
    return bytes(out)


class RwkvGreedy:
    """Longest-match tokenization over unescaped RWKV token bytes.

    tokens: GGUF token texts by id (escaped); unk_id: emitted for a byte no token starts with
    (-1 when the vocabulary names none, as llama.cpp's LLAMA_TOKEN_NULL).
    """

    def __init__(self, tokens: Sequence[bytes], unk_id: int):
        self._ids: Dict[bytes, int] = {}
        for i, t in enumerate(tokens):
            self._ids[unescape_rwkv(t)] = i      # a later duplicate wins, as in llama.cpp's trie
        self._first = {k[:1] for k in self._ids}
        self._max_len = max((len(k) for k in self._ids), default=0)
        self.unk_id = unk_id
        self.pieces: List[bytes] = [unescape_rwkv(t) for t in tokens]

    def encode(self, fragment: bytes) -> List[int]:
        out: List[int] = []
        n, i = len(fragment), 0
        get = self._ids.get
        while i < n:
            if fragment[i:i + 1] not in self._first:
                out.append(self.unk_id)
                i += 1
                continue
            for j in range(min(n, i + self._max_len), i, -1):
                tok = get(fragment[i:j])
                if tok is not None:
                    out.append(tok)
                    i = j
                    break
            else:
                # a byte only longer entries start with: llama.cpp emits token 0 and rescans
                # from the start of the text (it cannot happen with a vocabulary of all bytes)
                raise ValueError("RWKV vocabulary has no single-byte token for byte "
                                 f"0x{fragment[i]:02x}")
        return out
