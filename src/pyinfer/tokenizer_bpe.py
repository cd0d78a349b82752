"""Byte-level BPE (GGUF `tokenizer.ggml.model == "gpt2"`) on top of Hugging Face `tokenizers`.

llama.cpp splits each text fragment into words with a list of regexes chosen by the
`tokenizer.ggml.pre` name, maps every UTF-8 byte of a word to its GPT-2 "byte-level" character,
then merges symbol pairs by merge rank. Here the regexes run as `tokenizers` Split
pre-tokenizers (each regex re-splits the pieces of the previous one, matches and gaps both kept),
followed by the ByteLevel byte mapping and a BPE model built from the GGUF tokens and merges.

The regex lists below are the ones llama.cpp uses (its `llm_tokenizer_bpe` table), written as
Python raw strings. `\\p{..}` classes are Unicode categories.
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from tokenizers import Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

# --- pre-tokenizer regexes -----------------------------------------------------------------

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
           r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PORO = r" ?[^(\s|.,!?…。，、।۔،)]+"
# "upper* lower+ | upper+ lower*" words, with llama.cpp's lookahead spelling of the classes
_UPPER_LOWER = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
                r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*")
_TEKKEN = (_UPPER_LOWER + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+" + _CONTRACTIONS + "?"
          r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*" + _CONTRACTIONS + "?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# deepseek-llm's letter class (cased letters), as code point ranges: NFC-normalizing editors
# would otherwise fold some of its range ends (e.g. U+1FD3, U+212A) into other characters
_DEEPSEEK_LLM_LETTER_RANGES = """
    0041-005A 0061-007A 00B5 00C0-00D6 00D8-00F6 00F8-01BA 01BC-01BF 01C4-0293 0295-02AF
    0370-0373 0376-0377 037B-037D 037F 0386 0388-038A 038C 038E-03A1 03A3-03F5 03F7-0481
    048A-052F 0531-0556 10A0-10C5 13A0-13F5 13F8-13FD 1C90-1CBA 1CBD-1CBF 1D00-1D2B 1D6B-1D77
    1D79-1D9A 1E00-1F15 1F18-1F1D 1F20-1F45 1F48-1F4D 1F50-1F57 1F59 1F5B 1F5D 1F5F-1F7D
    1F80-1FB4 1FB6-1FBC 1FBE 1FC2-1FC4 1FC6-1FCC 1FD0-1FD3 1FD6-1FDB 1FE0-1FEC 1FF2-1FF4
    1FF6-1FFC 2102 2107 210A-2113 2115 2119-211D 2124 2126 2128 212A-212D 212F-2134 2139
    213C-213F 2145-2149 214E 2183-2184 2C00-2C7B 2C7E-2CE4 2CEB-2CEE 2CF2-2CF3 A640-A66D
    A680-A69B A722-A76F A771-A787 A78B-A78E AB70-ABBF FB00-FB06 FB13-FB17 FF21-FF3A FF41-FF5A
    10400-1044F 104B0-104D3 104D8-104FB 10C80-10CB2 10CC0-10CF2 118A0-118DF 1E900-1E943
"""
_DEEPSEEK_LLM_LETTERS = "".join(
    "-".join(chr(int(h, 16)) for h in r.split("-")) for r in _DEEPSEEK_LLM_LETTER_RANGES.split())
# llama.cpp runs these through std::regex after replacing every non-ASCII white-space character
# by U+000B, so such characters never match an explicit range; hence the "&&\S" and the
# punctuation class below starting at U+3001 where the original has U+3000.
_CJK = "[[一-龥ࠀ-一가-퟿]&&\\S]+"
_DEEPSEEK3 = (r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
              r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# regex list per pre-tokenizer family
_REGEXES: Dict[str, Tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"),
    "llama3": (_LLAMA3,),
    "deepseek-llm": ("[\r\n]", "\\s?[" + _DEEPSEEK_LLM_LETTERS + "]+",
                     r"\s?[!-/:-~！-／：-～‘-‟、-。]+", r"\s+\z", _CJK, r"\p{N}+"),
    "deepseek-coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"),
    "deepseek-v3": (r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+", _DEEPSEEK3),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"),
    "starcoder": (r"\p{N}", _GPT2),
    "gpt2": (_GPT2,),
    "qwen2": (_QWEN2,),
    "qwen35": (_QWEN35,),
    "poro": (_PORO,),
    "viking": (_PORO, r"\p{N}"),
    "tekken": (_TEKKEN,),
    "gpt4o": (_GPT4O,),
    "bailingmoe": (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",),
    "seed-coder": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}"
                   r"| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",),
}


_GIL_FREE_CHARS = 4096    # texts at least this long are encoded with the GIL released


@dataclass(frozen=True)
class PreTokenizer:
    """How llama.cpp treats one `tokenizer.ggml.pre` name."""
    family: str                  # key of _REGEXES
    ignore_merges: bool = False  # a word that is itself a token is emitted whole
    add_bos: bool = False        # default for tokenizer.ggml.add_bos_token


_LLAMA3_PRE = PreTokenizer("llama3", ignore_merges=True, add_bos=True)

# `tokenizer.ggml.pre` name -> behaviour (llama.cpp's name table; a missing name is an error)
PRE_TOKENIZERS: Dict[str, PreTokenizer] = {
    "default": PreTokenizer("default"),
    **{n: _LLAMA3_PRE for n in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1",
                                "pixtral", "midm-2.0", "lfm2")},
    "dbrx": PreTokenizer("llama3"),
    "smaug-bpe": PreTokenizer("llama3"),
    "glm4": PreTokenizer("llama3"),
    "chatglm-bpe": PreTokenizer("llama3"),
    "deepseek-llm": PreTokenizer("deepseek-llm"),
    "deepseek-coder": PreTokenizer("deepseek-coder"),
    "deepseek-v3": PreTokenizer("deepseek-v3"),
    "hunyuan-dense": PreTokenizer("deepseek-v3"),
    "falcon": PreTokenizer("falcon"),
    **{n: PreTokenizer("starcoder") for n in ("starcoder", "refact", "command-r", "smollm",
                                              "codeshell", "exaone", "minerva-7b")},
    **{n: PreTokenizer("gpt2") for n in ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat",
                                         "jina-v2-es", "jina-v2-de", "jina-v1-en", "jina-v2-code",
                                         "roberta-bpe", "a.x-4.0", "mellum", "modern-bert",
                                         "exaone4", "mpt", "olmo", "jais", "trillion",
                                         "granite-docling")},
    **{n: PreTokenizer("qwen2") for n in ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2",
                                          "megrez", "stablelm2", "hunyuan")},
    "qwen35": PreTokenizer("qwen35"),
    **{n: PreTokenizer("poro") for n in ("poro-chat", "bloom", "gpt3-finnish")},
    "viking": PreTokenizer("viking"),
    "tekken": PreTokenizer("tekken", ignore_merges=True, add_bos=True),
    "gpt-4o": PreTokenizer("gpt4o"),
    "llama4": PreTokenizer("gpt4o"),
    "bailingmoe": PreTokenizer("bailingmoe"),
    "bailingmoe2": PreTokenizer("bailingmoe"),
    "llada-moe": PreTokenizer("bailingmoe"),
    "seed-coder": PreTokenizer("seed-coder"),
    "grok-2": PreTokenizer("qwen2"),
}


def pre_tokenizer_for(name: Optional[str]) -> PreTokenizer:
    """Behaviour for a `tokenizer.ggml.pre` value (missing -> llama.cpp's "default")."""
    if not name:
        return PRE_TOKENIZERS["default"]
    try:
        return PRE_TOKENIZERS[name]
    except KeyError:
        raise ValueError(f"unknown pre-tokenizer type: '{name}'") from None


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


# --- llama.cpp's UTF-8 decoding of input text ---------------------------------------------

def _llama_utf8_error(exc: UnicodeDecodeError) -> Tuple[str, int]:
    """Decode error handler mirroring llama.cpp's `unicode_cpts_from_utf8`: it accepts any
    lead byte followed by the right number of continuation bytes (overlong forms too) and
    turns each byte it cannot start a character with into U+FFFD. Surrogates and values past
    U+10FFFF cannot live in a Python str (nor in llama.cpp's output), so they give U+FFFD."""
    data, i = exc.object, exc.start
    lead = data[i]
    if lead & 0xC0 == 0xC0 and lead < 0xF8:
        n = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        tail = data[i + 1:i + n]
        if len(tail) == n - 1 and all(b & 0xC0 == 0x80 for b in tail):
            cpt = lead & (0x7F >> n)
            for b in tail:
                cpt = (cpt << 6) | (b & 0x3F)
            if not (0xD800 <= cpt <= 0xDFFF or cpt > 0x10FFFF):
                return chr(cpt), i + n
    return "\ufffd", i + 1


codecs.register_error("pyinfer-llama-utf8", _llama_utf8_error)


def decode_like_llama(data: bytes) -> str:
    return data.decode("utf-8", errors="pyinfer-llama-utf8")


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
                  for r in _REGEXES[pre.family]]
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        self._tk = tk

    def encode(self, fragments: Sequence[bytes]) -> List[List[int]]:
        """Token ids for each raw text fragment (no special-token handling here)."""
        texts = [decode_like_llama(f) for f in fragments]
        if len(texts) == 1 and len(texts[0]) < _GIL_FREE_CHARS:
            return [self._tk.encode(texts[0], add_special_tokens=False).ids]
        # encode_batch releases the GIL (encode holds it: 6 s of a 3 MB text stalled a server's
        # event loop); the same ids
        return [e.ids for e in self._tk.encode_batch(texts, add_special_tokens=False)]

    def split_words(self, text: bytes) -> List[str]:
        """The byte-level words llama.cpp would merge inside (for tests and debugging)."""
        pieces = self._tk.pre_tokenizer.pre_tokenize_str(decode_like_llama(text))
        return [p for p, _ in pieces]
