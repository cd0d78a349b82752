"""BPE tokenizers (GGUF `tokenizer.ggml.model` "gpt2" and "gemma4") on Hugging Face `tokenizers`.

Byte-level BPE (gpt2): llama.cpp splits each text fragment into words with a list of regexes
chosen by the `tokenizer.ggml.pre` name (see tokenizer_pre), maps every UTF-8 byte of a word to
its GPT-2 "byte-level" character, then merges symbol pairs by merge rank. Here the regexes run
as `tokenizers` Split pre-tokenizers (each regex re-splits the pieces of the previous one,
matches and gaps both kept), followed by the ByteLevel byte mapping and a BPE model built from
the GGUF tokens and merges.

SentencePiece-style BPE (gemma4): see SpacePieceBPE.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

from tokenizers import Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from .tokenizer_pre import PRE_TOKENIZERS, REGEXES, PreTokenizer, pre_tokenizer_for  # noqa: F401
from .tokenizer_unicode import (NUMBER, SURROGATE, SURROGATE_STAND_IN, char_class,
                                decode_like_llama)

_GIL_FREE_CHARS = 4096    # texts at least this long are encoded with the GIL released


# --- GPT-2 byte <-> character map --------------------------------------------------------

def _byte_to_char() -> List[str]:
    """Printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100.. in byte order."""
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, extra = [], 0
    for b in range(256):
        if b in keep:
            table.append(chr(b))
        else:
            table.append(chr(256 + extra))
            extra += 1
    return table


BYTE_TO_CHAR: List[str] = _byte_to_char()
CHAR_TO_BYTE: Dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_CHAR)}


def decode_byte_level(text: str) -> bytes:
    """Bytes of a byte-level token text; a character outside the map becomes llama.cpp's
    `[UNK_BYTE_0x<utf8 hex><token text>]` marker."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in text)
    except KeyError:
        pass
    out = bytearray()
    for c in text:
        b = CHAR_TO_BYTE.get(c)
        if b is not None:
            out.append(b)
        else:
            out += b"[UNK_BYTE_0x" + c.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
    return bytes(out)


# --- the BPE tokenizer --------------------------------------------------------------------

def _split_merge(s: str) -> Optional[Tuple[str, str]]:
    cut = s.find(" ", 1)
    return (s[:cut], s[cut + 1:]) if cut > 0 else None


class ByteLevelBPE:
    """Word splitting + byte-level BPE over the GGUF vocabulary.

    tokens: token texts by id (byte-level alphabet, e.g. "Ġthe"); merges: GGUF merge strings
    "left right" in rank order.
    """

    def __init__(self, tokens: Sequence[bytes], merges: Sequence[bytes], pre: PreTokenizer):
        vocab: Dict[str, int] = {}
        for i, t in enumerate(tokens):
            try:
                vocab[t.decode("utf-8")] = i
            except UnicodeDecodeError:
                continue  # cannot come out of byte-level merges
        # llama.cpp splits a merge at the first space after position 0; duplicates keep
        # their first (best) rank
        texts = dict.fromkeys([m.decode("utf-8", errors="replace") for m in merges])
        pairs = [_split_merge(s) for s in texts]
        pairs = [p for p in pairs if p is not None]
        try:    # `tokenizers` checks that both halves and their join are tokens
            model = models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre.ignore_merges)
        except Exception:
            # llama.cpp would merge anyway and then fall back to single bytes, which a sane
            # vocabulary never needs: drop such merges
            pairs = [(a, b) for a, b in pairs if a in vocab and b in vocab and a + b in vocab]
            model = models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre.ignore_merges)
        tk = HFTokenizer(model)
        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated")
                  for r in REGEXES[pre.family]]
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        self._tk = tk
        self._splits = pre_tokenizers.Sequence(splits)
        self._digit_runs = (pre_tokenizers.Split(Regex(r"\p{N}+"), behavior="isolated")
                            if pre.digit_groups else None)

    def encode(self, fragments: Sequence[bytes]) -> List[List[int]]:
        """Token ids for each raw text fragment (no special-token handling here)."""
        texts = [decode_like_llama(f) for f in fragments]
        if self._digit_runs is not None:
            chunks = [self._digit_groups(t) for t in texts]
            ids = self._encode([c for cs in chunks for c in cs])
            out, k = [], 0
            for cs in chunks:
                out.append([i for e in ids[k:k + len(cs)] for i in e])
                k += len(cs)
            return out
        return self._encode(texts)

    def _encode(self, texts: List[str]) -> List[List[int]]:
        odd = [k for k, t in enumerate(texts) if SURROGATE.search(t)]
        if odd:
            rest = [t for t in texts if not SURROGATE.search(t)]
            out = self._encode(rest) if rest else []
            for k in odd:
                out.insert(k, self._encode_surrogates(texts[k]))
            return out
        if len(texts) == 1 and len(texts[0]) < _GIL_FREE_CHARS:
            return [self._tk.encode(texts[0], add_special_tokens=False).ids]
        # encode_batch releases the GIL (encode holds it: 6 s of a 3 MB text stalled a server's
        # event loop); the same ids
        return [e.ids for e in self._tk.encode_batch(texts, add_special_tokens=False)]

    def _encode_surrogates(self, text: str) -> List[int]:
        """A text with lone surrogates: split with a stand-in for them, then each word's bytes
        (a surrogate as its three UTF-8 bytes, as llama.cpp writes it) through the BPE model."""
        ids: List[int] = []
        masked = SURROGATE.sub(SURROGATE_STAND_IN, text)
        for _, (start, end) in self._splits.pre_tokenize_str(masked):
            word = text[start:end].encode("utf-8", "surrogatepass")
            ids += [t.id for t in self._tk.model.tokenize("".join(BYTE_TO_CHAR[b] for b in word))]
        return ids

    def _digit_groups(self, text: str) -> List[str]:
        """llama.cpp's afmoe digit splitter: each run of digits is cut into its first
        len % 3 digits and then groups of three; the text before a run stays with the run's
        first group, the text after the last run is a piece of its own."""
        out: List[str] = []
        pending = ""
        masked = SURROGATE.sub(SURROGATE_STAND_IN, text)
        for _, (start, end) in self._digit_runs.pre_tokenize_str(masked):
            piece = text[start:end]
            if char_class(piece[0]) != NUMBER:
                pending += piece
                continue
            rest = len(piece) % 3
            groups = ([piece[:rest]] if rest else []) + [piece[i:i + 3]
                                                         for i in range(rest, len(piece), 3)]
            groups[0] = pending + groups[0]
            pending = ""
            out.extend(groups)
        if pending or not out:
            out.append(pending)
        return out

    def split_words(self, text: bytes) -> List[str]:
        """The byte-level words llama.cpp would merge inside (for tests and debugging)."""
        pieces = self._tk.pre_tokenizer.pre_tokenize_str(decode_like_llama(text))
        return [p for p, _ in pieces]


# --- BPE over raw UTF-8 with U+2581 spaces (GGUF model "gemma4") --------------------------

_LINES = re.compile(r"[^\n]+|\n+")
_SURROGATE_SPLIT = re.compile("([\ud800-\udfff])")


class SpacePieceBPE:
    """Gemma 4's BPE: SentencePiece-style pieces ("▁" for a space, raw UTF-8 characters, byte
    tokens "<0xXX>" for what no piece covers) merged by rank, as llama.cpp runs it.

    The text (spaces already replaced by U+2581) is cut into lines and runs of newlines; with
    newline_runs (Gemma 4, not Sarvam) a run of newlines that is itself a token is emitted
    whole; every other piece is merged from its characters, and a final symbol that is not a
    token becomes its byte tokens.
    """

    def __init__(self, tokens: Sequence[bytes], merges: Sequence[bytes], newline_runs: bool = True):
        vocab: Dict[str, int] = {}
        for i, t in enumerate(tokens):
            try:
                vocab[t.decode("utf-8")] = i
            except UnicodeDecodeError:
                continue
        self._vocab = vocab
        self._newline_runs = newline_runs   # Gemma 4: a run of newlines that is a token is one
        texts = dict.fromkeys([m.decode("utf-8", errors="replace") for m in merges])
        pairs = [p for p in map(_split_merge, texts) if p is not None]
        pairs = [(a, b) for a, b in pairs if a in vocab and b in vocab and a + b in vocab]
        self._tk = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, byte_fallback=True))

    def _byte_tokens(self, data: bytes) -> List[int]:
        ids = [self._vocab.get("<0x%02X>" % b) for b in data]
        return [i for i in ids if i is not None]

    def encode(self, fragments: Sequence[bytes]) -> List[List[int]]:
        """Token ids for each raw text fragment, spaces already escaped to U+2581."""
        out: List[List[int]] = []
        words: List[str] = []
        slots: List[Tuple[int, int]] = []       # (fragment index, position) of each BPE word
        for k, fragment in enumerate(fragments):
            ids: List[int] = []
            for line in _LINES.findall(decode_like_llama(fragment)):
                tok = self._vocab.get(line) if self._newline_runs and line[0] == "\n" else None
                if tok is not None:
                    ids.append(tok)
                    continue
                # a lone surrogate merges with nothing: its bytes become byte tokens
                for word in _SURROGATE_SPLIT.split(line) if SURROGATE.search(line) else (line,):
                    if SURROGATE.fullmatch(word):
                        ids += self._byte_tokens(word.encode("utf-8", "surrogatepass"))
                    elif word:
                        slots.append((k, len(ids)))
                        words.append(word)
                        ids.append(-1)
            out.append(ids)
        if words:
            encoded = (self._tk.encode_batch(words, add_special_tokens=False)
                       if len(words) > 1 or len(words[0]) >= _GIL_FREE_CHARS
                       else [self._tk.encode(words[0], add_special_tokens=False)])
            for (k, pos), enc in zip(reversed(slots), reversed(encoded)):
                out[k][pos:pos + 1] = enc.ids
        return out
