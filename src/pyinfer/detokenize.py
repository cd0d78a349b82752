"""Streaming detokenization: text out as tokens arrive, never half a UTF-8 character.

A token's piece may end in the middle of a multi-byte character (byte-fallback tokens, byte-level
BPE pieces). The pieces are fed through an incremental UTF-8 decoder, which holds back an
incomplete trailing sequence until the bytes that finish it arrive and turns bytes that can
never form a character into U+FFFD. `finalize()` flushes what is left with the same
replacement, so the concatenated segments always equal
`tokenizer.detokenize(tokens, special=...).decode("utf-8", errors="replace")`.

    detok = StreamingDetokenizer(tokenizer)
    for token in generated:
        print(detok.add_token(token), end="")
    print(detok.finalize())
"""
from __future__ import annotations

import codecs
from typing import Iterable, Iterator, List


class StreamingDetokenizer:
    """Incremental `detokenize` for one sequence.

    tokenizer: anything with `token_to_piece(id, special) -> bytes` and `bos_id`;
    special: render control tokens as their text (as `detokenize(..., special=True)`).
    Like `Tokenizer.detokenize`, a sequence that starts with BOS loses one leading space.
    """

    def __init__(self, tokenizer, special: bool = False):
        self._tokenizer = tokenizer
        self._special = special
        self.reset()

    def reset(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.tokens: List[int] = []
        self._segments: List[str] = []
        self.last_segment = ""
        self._strip_space = False   # first token was BOS and no byte has been emitted yet

    def add_token(self, token: int) -> str:
        """Feed one token; returns the text it completes (may be "")."""
        piece = self._tokenizer.token_to_piece(token, self._special)
        if not self.tokens:
            self._strip_space = token == self._tokenizer.bos_id
        self.tokens.append(token)
        if self._strip_space and piece:
            self._strip_space = False
            if piece[:1] == b" ":
                piece = piece[1:]
        return self._emit(self._decoder.decode(piece))

    def finalize(self) -> str:
        """Flush bytes held back for an unfinished character (as U+FFFD)."""
        return self._emit(self._decoder.decode(b"", final=True))

    def _emit(self, text: str) -> str:
        self.last_segment = text
        if text:
            self._segments.append(text)
        return text

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return "".join(self._segments)


def stream_text(tokenizer, tokens: Iterable[int], special: bool = False) -> Iterator[str]:
    """Yield the non-empty text segments of `tokens` as they become complete characters."""
    detok = StreamingDetokenizer(tokenizer, special=special)
    for token in tokens:
        seg = detok.add_token(token)
        if seg:
            yield seg
    tail = detok.finalize()
    if tail:
        yield tail
