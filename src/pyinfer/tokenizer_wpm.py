"""WordPiece tokenization (GGUF `tokenizer.ggml.model == "bert"`), as llama.cpp does it.

A BERT vocabulary in GGUF spells word-initial pieces with a leading U+2581 ("▁the") and
continuation pieces bare ("ing", where Hugging Face writes "##ing"). Text is first split into
words the way BERT's basic tokenizer does: white space separates words and disappears; NUL,
U+FFFD and other control characters disappear; with strip_accents every character is replaced by
the first character of its NFD decomposition and combining marks are dropped; with lowercase
characters take their simple lowercase mapping; punctuation, ASCII symbols and CJK ideographs
are words of their own. Each word gets the "▁" prefix and is cut greedily into the longest
vocabulary pieces from the left; a word with a position no piece starts at becomes one unknown
token.

Character classes follow llama.cpp's Unicode tables (see tokenizer_unicode).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from .tokenizer_unicode import (CONTROL, MARK, PUNCTUATION, SYMBOL, WHITESPACE, char_class,
                                decode_like_llama, nfd_first, simple_lower)

ESCAPED_SPACE = "\u2581"


def is_chinese_char(cp: int) -> bool:
    """The CJK ranges of BERT's basic tokenizer (as llama.cpp spells them)."""
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B920 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def split_words(text: str, lowercase: bool = True, strip_accents: bool = True) -> List[str]:
    """BERT's basic tokenization as llama.cpp does it (`llm_tokenizer_wpm_session::preprocess`)."""
    words: List[str] = []
    cur: List[str] = []
    for c in text:
        if strip_accents:
            c = nfd_first(c)
        cp = ord(c)
        if cp in WHITESPACE:
            if cur:
                words.append("".join(cur))
                cur = []
            continue
        cls = char_class(c)
        if cp == 0 or cp == 0xFFFD or cls == CONTROL:
            continue
        if strip_accents and cls == MARK:
            continue
        if lowercase:
            c = simple_lower(c)
        if cls == PUNCTUATION or (cp < 0x7F and cls == SYMBOL) or is_chinese_char(cp):
            if cur:
                words.append("".join(cur))
                cur = []
            words.append(c)
        else:
            cur.append(c)
    if cur:
        words.append("".join(cur))
    return words


class WordPiece:
    """Greedy longest-match WordPiece over a GGUF BERT vocabulary.

    tokens: token texts by id (bytes); unk_id: the id a word without a segmentation becomes;
    lowercase / strip_accents: llama.cpp's BertNormalizer options.
    """

    def __init__(self, tokens: Sequence[bytes], unk_id: int, lowercase: bool = True,
                 strip_accents: bool = True):
        self._ids: Dict[bytes, int] = {t: i for i, t in enumerate(tokens)}
        self._max_len = max((len(t) for t in tokens), default=0)
        self.unk_id = unk_id
        self.lowercase = lowercase
        self.strip_accents = strip_accents

    def encode(self, fragment: bytes) -> List[int]:
        """Token ids of one raw text fragment (no special-token handling here)."""
        out: List[int] = []
        text = decode_like_llama(fragment)
        for word in split_words(text, self.lowercase, self.strip_accents):
            pieces = self._segment((ESCAPED_SPACE + word).encode("utf-8"))
            if pieces is None:
                out.append(self.unk_id)
            else:
                out.extend(pieces)
        return out

    def _segment(self, word: bytes) -> Optional[List[int]]:
        ids, n, i = [], len(word), 0
        get = self._ids.get
        while i < n:
            for j in range(min(n, i + self._max_len + 1), i, -1):
                tok = get(word[i:j])
                if tok is not None:
                    ids.append(tok)
                    i = j
                    break
            else:
                return None
        return ids
