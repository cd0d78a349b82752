"""SentencePiece-style tokenization (GGUF `tokenizer.ggml.model == "llama"`), as llama.cpp does it.

The text (spaces already escaped to U+2581) is cut into UTF-8 characters. Adjacent symbol pairs
whose concatenation is a vocabulary token are queued by that token's score; the best pair
(highest score, then leftmost) is merged repeatedly, re-queuing the new neighbour pairs, until no
pair forms a token. Each final symbol is emitted as its token; a symbol that is not a token is
emitted as one byte token (`<0xXX>`) per byte.
"""
from __future__ import annotations

import heapq
import re
from typing import Callable, Dict, List, Sequence

# one "character" as llama.cpp cuts it: the length comes from the lead byte's high nibble
# (0x0-0xB -> 1, 0xC-0xD -> 2, 0xE -> 3, 0xF -> 4), clipped at the end of the text; the bytes
# after the lead are taken whatever they are.
_CHARS = re.compile(rb"[\x00-\xbf]|[\xc0-\xdf].?|[\xe0-\xef].{0,2}|[\xf0-\xff].{0,3}", re.DOTALL)


def spm_encode(text: bytes, piece_to_id: Dict[bytes, int], scores: Sequence[float],
               byte_token: Callable[[int], int], out: List[int]) -> None:
    """Append the token ids of `text` (UTF-8, spaces already replaced by U+2581) to `out`.

    piece_to_id: token text bytes -> id; scores[id]: merge priority of a token;
    byte_token(b): id of the byte-fallback token for byte value b.
    """
    sym = _CHARS.findall(text)          # symbol texts; a merged-away symbol becomes b""
    n = len(sym)
    if n == 0:
        return
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    heap: list = []                     # (-score, left, right, merged byte length)
    rev_merge: Dict[bytes, tuple] = {}  # merged text -> (left, right) that last produced it

    def try_add(left: int, right: int) -> None:
        if left < 0 or right < 0:
            return
        joined = sym[left] + sym[right]
        tok = piece_to_id.get(joined)
        if tok is None:
            return
        heapq.heappush(heap, (-scores[tok], left, right, len(joined)))
        rev_merge[joined] = (left, right)

    for i in range(1, n):
        try_add(i - 1, i)

    while heap:
        _, left, right, size = heapq.heappop(heap)
        a, b = sym[left], sym[right]
        if not a or not b or len(a) + len(b) != size:
            continue  # stale: one side was merged since this pair was queued
        sym[left] = a + b
        sym[right] = b""
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prv[nxt[right]] = left
        try_add(prv[left], left)
        try_add(left, nxt[left])

    def resegment(i: int) -> None:
        s = sym[i]
        tok = piece_to_id.get(s)
        if tok is not None:
            out.append(tok)
            return
        pair = rev_merge.get(s)
        if pair is None:
            out.extend(byte_token(c) for c in s)
            return
        resegment(pair[0])
        resegment(pair[1])

    i = 0
    while i != -1:
        resegment(i)
        i = nxt[i]
