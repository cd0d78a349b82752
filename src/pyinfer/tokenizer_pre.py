"""llama.cpp's BPE pre-tokenizers: the `tokenizer.ggml.pre` name table and its word-split regexes.

llama.cpp splits each text fragment into words with a list of regexes chosen by the
`tokenizer.ggml.pre` name before byte-level BPE merges inside each word. The lists below are
llama.cpp's (its `llm_tokenizer_bpe` table), written for the `tokenizers` crate's regex engine
(Oniguruma): `\\p{..}` classes are Unicode categories; where llama.cpp's std::regex fallback
behaves differently from the written pattern, the pattern here is the one that reproduces
llama.cpp. Each name also sets llama.cpp's load-time flags (ignore_merges, add_bos, add_sep,
clean_spaces, no BOS token, U+2581 spaces).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

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
_DEEPSEEK3_HEAD = r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
_DEEPSEEK3 = _DEEPSEEK3_HEAD + r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# llama.cpp's collapsed std::regex knows only \p{L} for letters: its \p{Lu}, \p{Ll}, \p{Lt},
# \p{Lm} and \p{Lo} all match any letter (tiny_aya, youtu)
_CASED_WORDS = (r"[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]*[\p{L}\p{M}]+" + _CONTRACTIONS
                + r"?|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+[\p{L}\p{M}]*" + _CONTRACTIONS + "?")

# regex list per pre-tokenizer family (each splits the pieces of the previous one, matches and
# gaps both kept)
REGEXES: Dict[str, Tuple[str, ...]] = {
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
    "jais2": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)"
              r"|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",),
    "spark2_5": (r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+", _DEEPSEEK3_HEAD + r"| ?[\p{P}\p{S}]+|[\r\n]"
                 r"|\s+(?!\S)|\s+", r"\p{N}"),
    "chameleon": ("<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\t\n]|    |  )",
                  r"\p{N}", r"[\p{P}!-/:-@\[-`{-~]", _GPT2),
    "superbpe": (r"\p{N}+", r"(?=(\d{3})+(?!\d))"),
    "minicpm5": (r"\p{N}{1,3}", _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "ufakzeka": (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                 r"|\s+(?!\S)|\s+",),
    "laguna": ("[^\n]+|[\n]+", _QWEN2),
    "exaone-moe": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",),
    # afmoe and tiny_aya first cut digit runs in groups (PreTokenizer.digit_groups)
    "afmoe": ("[一-鿿㐀-䶿豈-﫿぀-ゟ゠-ヿ･-ﾟ⼀-⿟เ-๿຀-໿ក-៿က-႟ꩠ-ꩿꧠ-꧿가-힯ᄀ-ᇿ]+", _DEEPSEEK3),
    "tiny_aya": (_CASED_WORDS + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "granite-emb-multi": (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+"
                          + _CONTRACTIONS + r"?|[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+"
                          r"((?=[\p{L}\p{M}])([^A-Z]))*" + _CONTRACTIONS + r"?|\p{N}{1,3}"
                          r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "youtu": ("[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥぀-ゟ゠-ヿ]+",
              _CASED_WORDS + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    # BPE over raw UTF-8 with U+2581 spaces (SpacePieceBPE splits lines itself)
    "gemma4": (), "sarvam": (),
}


@dataclass(frozen=True)
class PreTokenizer:
    """How llama.cpp treats one `tokenizer.ggml.pre` name."""
    family: str                     # key of REGEXES
    ignore_merges: bool = False     # a word that is itself a token is emitted whole
    add_bos: bool = False           # default for tokenizer.ggml.add_bos_token
    clean_spaces: bool = True       # llama_detokenize's clean-up of " ." " 's" ...
    add_sep: bool = False           # default for tokenizer.ggml.add_sep_token
    no_bos: bool = False            # the vocabulary has no BOS token (ChatGLM)
    escape_whitespaces: bool = False  # spaces become U+2581, no byte-level mapping (Gemma 4)
    digit_groups: bool = False      # first cut digit runs as llama.cpp's afmoe splitter does


def _names(names: str, **kw) -> Dict[str, PreTokenizer]:
    family = kw.pop("family")
    return {n: PreTokenizer(family, **kw) for n in names.split()}


# `tokenizer.ggml.pre` name -> behaviour (llama.cpp's name table; a missing name is an error)
PRE_TOKENIZERS: Dict[str, PreTokenizer] = {
    **_names("default", family="default"),
    **_names("minicpm5", family="minicpm5", ignore_merges=True),
    **_names("llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano",
             family="llama3", ignore_merges=True, add_bos=True),
    **_names("dbrx smaug-bpe", family="llama3"),
    **_names("chatglm-bpe", family="llama3", no_bos=True),
    **_names("glm4 glm5", family="llama3", no_bos=True, ignore_merges=True),
    **_names("deepseek-llm", family="deepseek-llm", clean_spaces=False),
    **_names("deepseek-coder", family="deepseek-coder", clean_spaces=False),
    **_names("deepseek-v3 hunyuan-dense hy_v4 joyai-llm", family="deepseek-v3", clean_spaces=False),
    **_names("spark2_5", family="spark2_5", clean_spaces=False),
    **_names("youtu", family="youtu", clean_spaces=False, ignore_merges=True),
    **_names("falcon", family="falcon"),
    **_names("starcoder refact codeshell exaone minerva-7b mellum2", family="starcoder"),
    **_names("command-r smollm", family="starcoder", clean_spaces=False),
    **_names("gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum "
             "modern-bert mpt olmo jais exaone4", family="gpt2"),
    **_names("jina-v1-en jina-v2-code roberta-bpe", family="gpt2", add_sep=True),
    **_names("trillion granite-docling", family="gpt2", clean_spaces=False),
    **_names("jais-2", family="jais2"),
    **_names("gemma4 granite-embed-multi-311m", family="gemma4", escape_whitespaces=True),
    **_names("sarvam-moe", family="sarvam", escape_whitespaces=True, clean_spaces=False),
    **_names("qwen2 deepseek-r1-qwen kormo f2llmv2 hunyuan solar-open grok-2", family="qwen2",
             clean_spaces=False),
    **_names("stablelm2 megrez", family="qwen2"),
    **_names("qwen35", family="qwen35", clean_spaces=False),
    **_names("poro-chat", family="poro", clean_spaces=False),
    **_names("viking", family="viking", clean_spaces=False),
    **_names("bloom gpt3-finnish", family="poro"),
    **_names("tekken", family="tekken", clean_spaces=False, ignore_merges=True, add_bos=True),
    **_names("exaone-moe", family="exaone-moe"),
    **_names("chameleon", family="chameleon", add_bos=True, clean_spaces=False),
    **_names("gpt-4o llama4 kanana2 talkie minimax-m2", family="gpt4o", clean_spaces=False),
    **_names("granite-embed-multi-97m", family="granite-emb-multi", clean_spaces=False,
             ignore_merges=True),
    **_names("tiny_aya cohere2moe", family="tiny_aya", clean_spaces=False, digit_groups=True),
    **_names("superbpe", family="superbpe", clean_spaces=False),
    **_names("bailingmoe bailingmoe2 llada-moe", family="bailingmoe", clean_spaces=False),
    **_names("seed-coder", family="seed-coder", clean_spaces=False),
    **_names("ufakzeka", family="ufakzeka", clean_spaces=False),
    **_names("afmoe", family="afmoe", clean_spaces=False, digit_groups=True),
    **_names("laguna", family="laguna", clean_spaces=False),
}

# names llama.cpp knows whose splitting pyinfer does not reproduce
UNSUPPORTED = {"kimi-k2": "its hand-written Han/letter splitter",
               "whitespace": "its whitespace tokenizer model"}


def pre_tokenizer_for(name: Optional[str]) -> PreTokenizer:
    """Behaviour for a `tokenizer.ggml.pre` value (missing -> llama.cpp's "default")."""
    if not name:
        return PRE_TOKENIZERS["default"]
    try:
        return PRE_TOKENIZERS[name]
    except KeyError:
        if name in UNSUPPORTED:
            raise ValueError(f"pre-tokenizer type '{name}' is not supported by pyinfer "
                             f"({UNSUPPORTED[name]})") from None
        raise ValueError(f"unknown pre-tokenizer type: '{name}'") from None
