"""Unicode facts as llama.cpp's tokenizers see them.

decode_like_llama: bytes -> str the way llama.cpp's `unicode_cpts_from_utf8` decodes input
text. char_class: a character's general-category class from llama.cpp's Unicode tables (15.1):
Python's `unicodedata` gives the same class for every character it knows; the characters
assigned after its Unicode version (14.0 for Python 3.11) that llama.cpp classifies are listed
in _NEWER_FLAGS. simple_lower / nfd_first: the one-character case and decomposition mappings
of those tables.
"""
from __future__ import annotations

import bisect
import codecs
import re
import unicodedata
from typing import Tuple


def _llama_utf8_error(exc: UnicodeDecodeError) -> Tuple[str, int]:
    """Decode error handler mirroring llama.cpp's `unicode_cpts_from_utf8`: it accepts any
    lead byte followed by the right number of continuation bytes (overlong forms and encoded
    surrogates too: a surrogate comes back as a lone surrogate, which the `tokenizers` library
    cannot take; see SURROGATE) and turns each byte it cannot start a character with into
    U+FFFD. Values past U+10FFFF cannot live in a Python str (llama.cpp's BPE aborts on them),
    so they give U+FFFD."""
    data, i = exc.object, exc.start
    lead = data[i]
    if lead & 0xC0 == 0xC0 and lead < 0xF8:
        n = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        tail = data[i + 1:i + n]
        if len(tail) == n - 1 and all(b & 0xC0 == 0x80 for b in tail):
            cpt = lead & (0x7F >> n)
            for b in tail:
                cpt = (cpt << 6) | (b & 0x3F)
            if cpt <= 0x10FFFF:
                return chr(cpt), i + n
    return "\ufffd", i + 1


codecs.register_error("pyinfer-llama-utf8", _llama_utf8_error)


def decode_like_llama(data: bytes) -> str:
    return data.decode("utf-8", errors="pyinfer-llama-utf8")


# a lone surrogate (from an encoded one in the input bytes, invalid UTF-8 llama.cpp accepts)
SURROGATE = re.compile("[\ud800-\udfff]")
# a stand-in for it in regex splitting: private use, like a surrogate in no class llama.cpp's
# or Oniguruma's patterns name (not L, N, P, S, M or space) and in no explicit range they use
SURROGATE_STAND_IN = "\ue000"


# llama.cpp's \s set (Unicode White_Space)
WHITESPACE = frozenset([*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                        0x2028, 0x2029, 0x202F, 0x205F, 0x3000])

# character class of a general category
OTHER, NUMBER, LETTER, SEPARATOR, MARK, PUNCTUATION, SYMBOL, CONTROL = (
    "C", "N", "L", "Z", "M", "P", "S", "Cc")


def _category_class(cat: str) -> str:
    if cat == "Cn":
        return OTHER             # unassigned
    if cat[0] == "C":
        return CONTROL           # Cc, Cf, Co, Cs
    return cat[0]


# Code points unassigned in Unicode 14.0 that llama.cpp's tables (Unicode 15.1) classify, as
# "first[-last] class" items (the difference between the two versions' category data).
_NEWER_FLAGS = """
0CF3 M  0ECE M  2FFC-2FFF S  31EF S  10EFD-10EFF M  1123F-11240 L  11241 M  11B00-11B09 P
11F00-11F01 M  11F02 L  11F03 M  11F04-11F10 L  11F12-11F33 L  11F34-11F3A M  11F3E-11F42 M
11F43-11F4F P  11F50-11F59 N  1342F L  13439-1343F Cc  13440 M  13441-13446 L  13447-13455 M
1B132 L  1B155 L  1D2C0-1D2D3 N  1DF25-1DF2A L  1E030-1E06D L  1E08F M  1E4D0-1E4EB L
1E4EC-1E4EF M  1E4F0-1E4F9 N  1F6DC S  1F774-1F776 S  1F77B-1F77F S  1F7D9 S  1FA75-1FA77 S
1FA87-1FA88 S  1FAAD-1FAAF S  1FABB-1FABD S  1FABF S  1FACE-1FACF S  1FADA-1FADB S  1FAE8 S
1FAF7-1FAF8 S  2B739 L  2EBF0-2EE5D L  31350-323AF L
"""


def _newer_table():
    starts, ends, classes = [], [], []
    items = _NEWER_FLAGS.split()
    for span, cls in zip(items[0::2], items[1::2]):
        first, _, last = span.partition("-")
        starts.append(int(first, 16))
        ends.append(int(last or first, 16))
        classes.append(cls)
    return starts, ends, classes


_NEWER_STARTS, _NEWER_ENDS, _NEWER_CLASSES = _newer_table()


def char_class(c: str) -> str:
    """One of OTHER, NUMBER, LETTER, SEPARATOR, MARK, PUNCTUATION, SYMBOL, CONTROL."""
    cat = unicodedata.category(c)
    if cat != "Cn":
        return _category_class(cat)
    cp = ord(c)
    i = bisect.bisect_right(_NEWER_STARTS, cp) - 1
    if i >= 0 and cp <= _NEWER_ENDS[i]:
        return _NEWER_CLASSES[i]
    return OTHER


def simple_lower(c: str) -> str:
    """UnicodeData's one-character lowercase mapping (str.lower() follows SpecialCasing,
    which turns U+0130 into two characters)."""
    low = c.lower()
    if len(low) == 1:
        return low
    return "i" if c == "\u0130" else c


def nfd_first(c: str) -> str:
    """llama.cpp's NFD: the first character of the canonical decomposition."""
    return unicodedata.normalize("NFD", c)[0] if ord(c) >= 0xC0 else c
