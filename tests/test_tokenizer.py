"""Tokenizer tests: llama.cpp's own test vectors, hand-checked tiny vocabularies (SPM, WordPiece,
Unigram, RWKV, Gemma 4's BPE), llama.cpp's special-token choice order, SmolLM2, the streaming
detokenizer, and (opt-in, --run-llama-cpp) a comparison with llama-cpp-python. Every vocabulary
file of llama.cpp's own tokenizer tests: test_tokenizer_vocabs.py."""
import ctypes
import random
from pathlib import Path

import pytest

from pyinfer.detokenize import StreamingDetokenizer, stream_text
from conftest import real_llama_cpp
from pyinfer.tokenizer import (TYPE_BYTE, TYPE_CONTROL, TYPE_NORMAL, TYPE_UNKNOWN,
                               TYPE_USER_DEFINED, Tokenizer)

VOCAB_DIR = Path(__file__).parent / "data" / "vocab"
VOCABS = ("llama-spm", "llama-bpe", "gpt-2")
SEPARATOR = "\n__ggml_vocab_test__\n"

_loaded = {}


def load_vocab(name):
    """Tokenizer of ggml-vocab-<name>.gguf, built once per session (GGUF parsing is slow)."""
    if name not in _loaded:
        _loaded[name] = Tokenizer.from_gguf(VOCAB_DIR / f"ggml-vocab-{name}.gguf")
    return _loaded[name]


def read_vectors(name):
    """(text, expected ids) pairs. The .inp file holds inputs separated by SEPARATOR (the text
    after the last separator is not an input); the .out file holds one line of ids per input,
    made by llama.cpp's test-tokenizer-0 with add_special=False, parse_special=False."""
    base = VOCAB_DIR / f"ggml-vocab-{name}.gguf"
    inputs = base.with_suffix(".gguf.inp").read_text(encoding="utf-8").split(SEPARATOR)[:-1]
    lines = base.with_suffix(".gguf.out").read_text(encoding="utf-8").split("\n")
    assert len(lines) >= len(inputs)
    return [(t, [int(x) for x in line.split()]) for t, line in zip(inputs, lines)]


VECTORS = [(name, i, text, ids) for name in VOCABS
           for i, (text, ids) in enumerate(read_vectors(name))]


@pytest.mark.parametrize("name,index,text,expected", VECTORS,
                         ids=[f"{v[0]}-{v[1]:02d}" for v in VECTORS])
def test_llama_cpp_vectors(name, index, text, expected):
    tok = load_vocab(name)
    assert tok.tokenize(text.encode("utf-8"), add_bos=False) == expected


@pytest.mark.parametrize("name", VOCABS)
def test_round_trip_vectors(name):
    """Byte-level BPE is lossless; SPM is lossless once the BOS rule drops the prefix space."""
    tok = load_vocab(name)
    add_bos = tok.model == "llama"
    for text, _ in read_vectors(name):
        data = text.encode("utf-8")
        assert tok.detokenize(tok.tokenize(data, add_bos=add_bos)) == data, text


def test_vocab_metadata():
    spm, bpe, gpt2 = (load_vocab(n) for n in VOCABS)
    assert (spm.model, spm.n_vocab, spm.bos_id, spm.eos_id, spm.unk_id) == ("llama", 32000, 1, 2, 0)
    assert spm.add_bos and not spm.add_eos and spm.add_space_prefix
    assert (bpe.model, bpe.pre, bpe.n_vocab, bpe.bos_id, bpe.eos_id) == \
        ("gpt2", "llama-bpe", 128256, 128000, 128001)
    assert bpe.add_bos and not bpe.add_space_prefix
    assert bpe.eot_id == bpe.token_to_id("<|eot_id|>") == 128009
    assert bpe.eog_ids == {128001, 128009}
    assert (gpt2.bos_id, gpt2.eos_id, gpt2.add_bos) == (50256, 50256, False)
    assert spm.nl_id == 13 and bpe.nl_id == 198 and gpt2.nl_id == 198
    assert spm.is_byte(spm.token_to_id("<0x0A>")) and spm.is_control(1) and not spm.is_control(3)


def test_add_bos_follows_vocab():
    spm, _, gpt2 = (load_vocab(n) for n in VOCABS)
    assert spm.tokenize(b"Hello world") == [1, 15043, 3186]
    assert spm.tokenize(b"") == [1] and spm.tokenize(b"", add_bos=False) == []
    assert gpt2.tokenize(b"Hello") == gpt2.tokenize(b"Hello", add_bos=False)  # no add_bos_token


def test_special_tokens_spm():
    """Control tokens are parsed only with special=True; text after a special token gets the
    SPM space prefix again (llama.cpp's ids)."""
    spm = load_vocab("llama-spm")
    assert spm.tokenize(b"<s>Hello</s> world", special=False) == \
        [1, 529, 29879, 29958, 10994, 829, 29879, 29958, 3186]
    assert spm.tokenize(b"<s>Hello</s> world", special=True) == [1, 1, 15043, 2, 29871, 3186]
    assert spm.tokenize(b"Hello</s>world", special=True) == [1, 15043, 2, 3186]


def test_token_to_piece_spm():
    spm = load_vocab("llama-spm")
    assert spm.token_to_piece(15043) == b" Hello"
    assert spm.token_to_piece(spm.token_to_id("<0xE2>")) == b"\xe2"
    assert spm.token_to_piece(1) == b"" and spm.token_to_piece(1, special=True) == b"<s>"
    assert spm.token_to_piece(0) == b"" and spm.token_to_piece(0, special=True) == b"<unk>"
    # the leading space is dropped only when the sequence starts with BOS
    assert spm.detokenize([15043, 3186]) == b" Hello world"
    assert spm.detokenize([1, 15043, 3186]) == b"Hello world"
    assert spm.detokenize([1, 15043], special=True) == b"<s> Hello"
    with pytest.raises(ValueError):
        spm.token_to_piece(spm.n_vocab)
    with pytest.raises(TypeError):
        spm.tokenize("text")


def test_byte_level_pieces():
    gpt2 = load_vocab("gpt-2")
    ids = gpt2.tokenize("🦙".encode("utf-8"), add_bos=False)
    assert ids == [8582, 99, 247]
    assert [gpt2.token_to_piece(i) for i in ids] == [b"\xf0\x9f", b"\xa6", b"\x99"]
    assert gpt2.detokenize(ids) == "🦙".encode("utf-8")


# --- tiny hand-built vocabularies --------------------------------------------------------

def tiny_spm(extra=(), user_defined=()):
    """SPM vocab: <unk> <s> </s>, 256 byte tokens, then (text, score) pairs and user tokens."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TYPE_UNKNOWN, TYPE_CONTROL, TYPE_CONTROL] + [TYPE_BYTE] * 256
    scores = [0.0] * len(tokens)
    for text, score in extra:
        tokens.append(text)
        types.append(TYPE_NORMAL)
        scores.append(score)
    for text in user_defined:
        tokens.append(text)
        types.append(TYPE_USER_DEFINED)
        scores.append(0.0)
    tok = Tokenizer("llama", [t.encode("utf-8") for t in tokens], types, scores)
    return tok, {t: i for i, t in enumerate(tokens)}


def test_spm_merges_by_score():
    # "▁abc": pairs ▁a (-3), ab (-2), bc (-1): bc merges first, then ▁a, then ▁a+bc is a token
    tok, ids = tiny_spm([("▁", -9), ("a", -9), ("b", -9), ("c", -9), ("▁a", -3), ("ab", -2),
                         ("bc", -1), ("▁abc", -5)])
    assert tok.tokenize(b"abc", add_bos=False) == [ids["▁abc"]]
    # without the full token the result is ▁a + bc, not ▁ + abc pieces
    tok, ids = tiny_spm([("▁", -9), ("a", -9), ("b", -9), ("c", -9), ("▁a", -3), ("ab", -2),
                         ("bc", -1)])
    assert tok.tokenize(b"abc", add_bos=False) == [ids["▁a"], ids["bc"]]


def test_spm_equal_scores_merge_leftmost_first():
    tok, ids = tiny_spm([("▁", -9), ("a", -9), ("aa", -1)])
    # "▁aaa": pairs (a,a) at 1 and 2 tie; the left one merges -> ▁, aa, a
    assert tok.tokenize(b"aaa", add_bos=False) == [ids["▁"], ids["aa"], ids["a"]]


def test_spm_byte_fallback_and_user_defined():
    tok, ids = tiny_spm([("▁", -9), ("x", -9)], user_defined=["<tool>"])
    assert tok.tokenize("xé".encode("utf-8"), add_bos=False) == \
        [ids["▁"], ids["x"], ids["<0xC3>"], ids["<0xA9>"]]
    # user-defined tokens are matched even with special=False; control ones are not
    assert tok.tokenize(b"x<tool>x", add_bos=False) == \
        [ids["▁"], ids["x"], ids["<tool>"], ids["▁"], ids["x"]]
    assert ids["</s>"] not in tok.tokenize(b"x</s>", add_bos=False)
    assert tok.tokenize(b"x</s>", add_bos=False, special=True)[-1] == ids["</s>"]


def test_special_tokens_longest_first():
    tok, ids = tiny_spm([("▁", -9), ("a", -9)], user_defined=["<a>", "<a><a>"])
    assert tok.tokenize(b"<a><a><a>", add_bos=False) == [ids["<a><a>"], ids["<a>"]]


def _vocab(model, entries, **kw):
    """Tokenizer of `model` over (text, type[, score]) entries; returns it and text -> id."""
    tokens = [e[0].encode("utf-8") if isinstance(e[0], str) else e[0] for e in entries]
    scores = [e[2] if len(e) > 2 else 0.0 for e in entries]
    tok = Tokenizer(model, tokens, [e[1] for e in entries], scores, **kw)
    return tok, {e[0]: i for i, e in enumerate(entries)}


N, C, U = TYPE_NORMAL, TYPE_CONTROL, TYPE_UNKNOWN


def test_wordpiece_split_and_greedy_pieces():
    """BERT: lowercase, accents stripped, punctuation and CJK alone, "▁" on word starts,
    longest pieces from the left; a word with an uncovered position is one [UNK]; add_bos adds
    [CLS] and [SEP]."""
    tok, ids = _vocab("bert", [("[PAD]", C), ("[UNK]", C), ("[CLS]", C), ("[SEP]", C)] + [
        (t, N) for t in ("▁hello", "▁world", "▁un", "aff", "able", "▁,", "▁!", "▁你", "▁好",
                         "▁naive", "▁cafe", "▁u", "n")], special={"unk": 1, "bos": 2, "sep": 3})
    enc = lambda text, **kw: tok.tokenize(text.encode("utf-8"), **kw)  # noqa: E731
    assert enc("Hello,  WORLD!", add_bos=False) == [ids[t] for t in ("▁hello", "▁,", "▁world", "▁!")]
    assert enc("unaffable", add_bos=False) == [ids["▁un"], ids["aff"], ids["able"]]
    assert enc("naïve Café", add_bos=False) == [ids["▁naive"], ids["▁cafe"]]
    assert enc("你好", add_bos=False) == [ids["▁你"], ids["▁好"]]
    assert enc("unaffablex hello", add_bos=False) == [ids["[UNK]"], ids["▁hello"]]
    assert enc("hello\x00\u200b", add_bos=True) == [ids["[CLS]"], ids["▁hello"], ids["[SEP]"]]
    assert tok.detokenize([ids["▁un"], ids["aff"], ids["able"], ids["▁!"]]) == b" unaffable !"
    assert tok.vocab_type == "WPM" and tok.nl_id == 0   # llama.cpp: the pad id


def test_unigram_viterbi_and_unknowns():
    """T5/UGM: the best total score wins; an uncovered character is an unknown scored at the
    lowest normal score minus 10, and consecutive unknowns merge into one."""
    entries = [("<pad>", C), ("</s>", C), ("<unk>", U), ("▁", N, -2.0), ("a", N, -2.0),
               ("b", N, -2.0), ("▁a", N, -1.5), ("ab", N, -1.0), ("▁ab", N, -4.0), ("c", N, -9.0)]
    tok, ids = _vocab("t5", entries, add_space_prefix=True, remove_extra_whitespaces=True)
    enc = lambda text: tok.tokenize(text.encode("utf-8"), add_bos=False)  # noqa: E731
    # "▁ab": ▁a + b = -3.5 and ▁ + ab = -3.0 both beat ▁ab = -4.0
    assert enc("ab") == [ids["▁"], ids["ab"]]
    assert enc("  a   b ") == [ids["▁a"], ids["▁"], ids["b"]]     # spaces collapsed
    assert enc("azzc") == [ids["▁a"], ids["<unk>"], ids["c"]]    # "zz": one unknown
    assert tok.tokenize(b"ab") == [ids["▁"], ids["ab"], ids["</s>"]]  # add_eos by default
    keep = Tokenizer("t5", [e[0].encode() for e in entries], [e[1] for e in entries],
                     [e[2] if len(e) > 2 else 0.0 for e in entries])
    assert keep.tokenize(b"a  b", add_bos=False) == [ids["a"], ids["▁"], ids["▁"], ids["b"]]


def test_rwkv_greedy_longest_match_on_escaped_tokens():
    tokens = [b"<s>", b"a", b"b", b"ab", b"abc", b"\\n", b"\\xff", b"\\\\", b"\\'"]
    tok = Tokenizer("rwkv", tokens, [C] + [N] * 8, special={"unk": 0})
    assert tok.tokenize(b"abcab\n\xffba\\'", add_bos=True) == [4, 3, 5, 6, 2, 1, 7, 8]
    assert tok.tokenize(b"xa", add_bos=False) == [0, 1]      # no token starts with "x"
    assert [tok.token_to_piece(i) for i in (5, 6, 7, 8)] == [b"\n", b"\xff", b"\\", b"'"]
    assert tok.token_to_piece(0) == b"" and tok.token_to_piece(0, special=True) == b"<s>"


def test_gemma4_space_piece_bpe():
    """Gemma 4: spaces become "▁", merges by rank over raw characters, byte tokens for what no
    piece covers, a run of newlines that is a token stays whole; BOS is always added."""
    entries = [("<pad>", C), ("<eos>", C), ("<bos>", C), ("<unk>", U)]
    entries += [(f"<0x{b:02X}>", TYPE_BYTE) for b in range(256)]
    entries += [(t, N) for t in ("▁", "a", "b", "▁a", "ab", "▁ab", "\n", "\n\n", "\n\n\n\n")]
    merges = [m.encode("utf-8") for m in ("▁ a", "a b", "▁a b", "\n \n")]
    tok, ids = _vocab("gemma4", entries, merges=merges, add_bos=False,
                      special={"bos": 2, "eos": 1, "unk": 3})
    assert tok.add_bos and tok.vocab_type == "BPE"
    assert tok.tokenize(b"ab ab", add_bos=False) == [ids["ab"], ids["▁ab"]]
    assert tok.tokenize(b"\n\n\n\n", add_bos=False) == [ids["\n\n\n\n"]]
    assert tok.tokenize(b"a\n\n\n", add_bos=False) == [ids["a"], ids["\n\n"], ids["\n"]]
    assert tok.tokenize("é".encode("utf-8"), add_bos=True) == [2, ids["<0xC3>"], ids["<0xA9>"]]
    assert tok.detokenize([2, ids["ab"], ids["▁ab"], ids["<0xC3>"], ids["<0xA9>"]]) == "ab abé".encode()


def test_std_unordered_map_order():
    """llama.cpp takes the first EOT/FIM candidate its std::unordered_map yields: the hashes
    and iteration order below are libstdc++'s (g++ 12: std::hash<std::string>, and a map of
    "t0", "t7", ... "t273" filled in order)."""
    from pyinfer.tokenizer_specials import map_iteration_order, std_string_hashes
    texts = [b"", b"a", b"abcdefg", b"abcdefgh", b"abcdefghi", b"<|eot_id|>",
             "▁the".encode("utf-8"), b"0123456789abcdef0123"]
    assert ["%016x" % h for h in std_string_hashes(texts)] == [
        "553e93901e462a6e", "454ddee488c1ed6b", "deee6830a3af82af", "783db3e38db898bb",
        "b4ec9257851c8aaf", "de65aa0867862ca2", "e13dd80a2bc57315", "ec4b61c29f6a1075"]
    order = map_iteration_order(std_string_hashes([b"t%d" % (7 * i) for i in range(40)]))
    assert order.tolist() == [38, 37, 35, 32, 31, 30, 39, 10, 6, 9, 13, 11, 8, 20, 5, 4, 12, 15, 36,
                              33, 2, 14, 16, 3, 1, 18, 7, 0, 17, 24, 19, 21, 34, 29, 27, 23, 25,
                              26, 22, 28]
    # Llama 3 has both "<|end_of_text|>" (128001) and "<|eot_id|>" (128009): llama.cpp's EOT
    assert load_vocab("llama-bpe").eot_id == 128009


# --- SmolLM2 (gpt2 model, pre "smollm") ------------------------------------------------

@pytest.fixture(scope="module")
def smol(smollm2):
    import gguf
    return Tokenizer.from_gguf(gguf.GGUFReader(smollm2))


CHAT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n<|im_start|>assistant\n")

# ids from llama.cpp (llama-cpp-python 0.3.36, add_bos=False, special=True)
SMOL_CASES = [
    ("Hello, world!", [19556, 28, 905, 17]),
    (" The capital of France is Paris.", [378, 3575, 282, 4649, 314, 7042, 30]),
    ("def add(a, b):\n    return a + b\n",
     [1604, 803, 24, 81, 28, 278, 727, 472, 1003, 253, 1232, 278, 198]),
    ("2024-01-15: 3.14159 x 1000000",
     [34, 32, 34, 36, 29, 32, 33, 29, 33, 37, 42, 216, 35, 30, 33, 36, 33, 37, 41, 1792, 216, 33,
      32, 32, 32, 32, 32, 32]),
    ("naïve café — 日本語 🦙",
     [3546, 46494, 37366, 1841, 17097, 241, 115, 40993, 179, 120, 248, 15107, 116, 243]),
    (CHAT, [1, 9690, 198, 2683, 359, 253, 5356, 11173, 30, 2, 198, 1, 4093, 198, 1780, 314, 216,
            34, 27, 34, 47, 2, 198, 1, 520, 9531, 198]),
]


@pytest.mark.parametrize("text,expected", SMOL_CASES)
def test_smollm2_tokens(smol, text, expected):
    assert smol.tokenize(text.encode("utf-8"), add_bos=False, special=True) == expected
    assert smol.detokenize(expected, special=True) == text.encode("utf-8")


def test_smollm2_special_handling(smol):
    assert (smol.pre, smol.bos_id, smol.eos_id, smol.add_bos) == ("smollm", 1, 2, False)
    assert smol.n_vocab == 49152
    assert smol.is_eog(2) and smol.is_eog(0) and not smol.is_eog(1)
    assert smol.is_control(1) and not smol.is_control(9690)
    plain = smol.tokenize(CHAT.encode("utf-8"), add_bos=False, special=False)
    assert 1 not in plain and 2 not in plain
    assert smol.detokenize(plain) == CHAT.encode("utf-8")
    assert smol.token_to_piece(1) == b"" and smol.token_to_piece(1, special=True) == b"<|im_start|>"
    assert smol.tokenize(b"Hi") == smol.tokenize(b"Hi", add_bos=False)


# --- streaming detokenizer ---------------------------------------------------------------

def segments(tok, ids, special=False):
    detok = StreamingDetokenizer(tok, special=special)
    out = [detok.add_token(t) for t in ids]
    return out, detok.finalize(), detok


def test_stream_holds_back_split_character_spm():
    spm = load_vocab("llama-spm")
    ids = spm.tokenize(" this is 🦙.cpp".encode("utf-8"), add_bos=False)
    assert ids[:7] == [29871, 445, 338, 29871, 243, 162, 169]  # 🦙 as four byte tokens
    out, tail, detok = segments(spm, ids)
    assert out[4:7] == ["", "", ""]      # first three bytes of the llama: nothing yet
    assert out[7] == "🦙"
    assert "".join(out) + tail == "  this is 🦙.cpp"
    assert detok.text == "  this is 🦙.cpp"


def test_stream_byte_level_and_bos_space():
    gpt2 = load_vocab("gpt-2")
    out, tail, _ = segments(gpt2, [8582, 99, 247])
    assert out == ["", "", "🦙"] and tail == ""
    spm = load_vocab("llama-spm")
    ids = spm.tokenize("Äpfel kosten ½ €".encode("utf-8"))
    out, tail, _ = segments(spm, ids)
    assert "".join(out) + tail == "Äpfel kosten ½ €"


def test_stream_flushes_incomplete_with_replacement():
    spm = load_vocab("llama-spm")
    b = spm.token_to_id
    ids = [b("<0xF0>"), b("<0x9F>"), b("<0xA6>")]  # three of 🦙's four bytes
    out, tail, _ = segments(spm, ids)
    assert out == ["", "", ""] and tail == "\ufffd"
    assert list(stream_text(spm, ids + [b("<0x41>")])) == ["\ufffdA"]


@pytest.mark.parametrize("name", VOCABS)
def test_stream_matches_detokenize(name):
    """Random token sequences (byte tokens included): the segments joined equal the whole
    detokenized bytes decoded with errors='replace'."""
    tok = load_vocab(name)
    rng = random.Random(7)
    pool = list(range(0, 300)) + [rng.randrange(tok.n_vocab) for _ in range(300)]
    for _ in range(200):
        ids = [rng.choice(pool) for _ in range(rng.randint(0, 12))]
        for special in (False, True):
            out, tail, _ = segments(tok, ids, special)
            want = tok.detokenize(ids, special=special).decode("utf-8", errors="replace")
            assert "".join(out) + tail == want


# --- comparison with llama-cpp-python (opt-in) -------------------------------------------

def _compare_strings(seed, n):
    rng = random.Random(seed)
    atoms = list("abcXYZ 0123456789'\"\t\n\r.,!?-_()[]{}<>|/\\@#$%^&*~`") + [
        "  ", "   ", "\n\n", " \n", "'s", "'LL", "'Re", "é", "ß", "Ä", "你好", "世界", "🦙", "😶‍🌫️",
        "\u00a0", "\u2009", "\u3000", "\u200b", "\u0085", "\x1c", "\x0b", "١٢٣", "Ⅻ", "½", "²",
        "\u0301", "ก", "ា", "\ue000", "\ufffd", "\u2581", "<s>", "</s>", "<unk>", "<0x41>",
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>",
        "def f(x):\n    return x", "1234567", "    ", "\t\t"]
    fixed = ["", " ", "Hello world", "I'm you're they'll", "I'M YOU'RE WE'VE", "x" * 300,
             "a  b   c    d     e", "3.14159 1,000,000 0x1F", "\n\n\n  \n\t ", CHAT]
    return fixed + ["".join(rng.choice(atoms) for _ in range(rng.randint(0, 30)))
                    for _ in range(n)]


def _piece_llama_cpp(llama_cpp, vocab, token, special):
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
    return buf.raw[:n]


@pytest.mark.llama_cpp
@pytest.mark.parametrize("name", VOCABS + ("smollm2",))
def test_matches_llama_cpp(name, request):
    llama_cpp = real_llama_cpp("llama_cpp")
    if name == "smollm2":
        path = request.getfixturevalue("smollm2")
        tok = Tokenizer.from_gguf(path)
    else:
        path, tok = VOCAB_DIR / f"ggml-vocab-{name}.gguf", load_vocab(name)
    ref = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    mismatches = []
    for text in _compare_strings(seed=len(name), n=400):
        data = text.encode("utf-8")
        for add_bos in (False, True):
            for special in (False, True):
                want = ref.tokenize(data, add_bos=add_bos, special=special)
                if tok.tokenize(data, add_bos=add_bos, special=special) != want:
                    mismatches.append((text, add_bos, special))
        ids = ref.tokenize(data, add_bos=True, special=True)
        if any(len(tok.token_to_piece(t, True)) >= 32 for t in ids):
            continue  # llama-cpp-python's detokenize truncates pieces of 32 bytes or more
        for special in (False, True):
            if tok.detokenize(ids, special=special) != ref.detokenize(ids, special=special):
                mismatches.append(("detokenize", text, special))
    for data in (b"\xff", b"a\xe2\x82", b"\xe2\x82a", b"\x80\x80b", b"\xc0\x80", b"\xf0\x9f\x98",
                 b"a\xed\xa0\x80b", b"!\xed\xbf\xbf?"):
        if tok.tokenize(data, add_bos=False) != ref.tokenize(data, add_bos=False, special=False):
            mismatches.append(("invalid utf-8", data))
    assert mismatches == []

    vocab = ref._model.vocab
    bad_pieces = [t for t in range(tok.n_vocab) for special in (False, True)
                  if tok.token_to_piece(t, special) != _piece_llama_cpp(llama_cpp, vocab, t, special)]
    assert bad_pieces == []
    assert tok.eog_ids == {t for t in range(tok.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)}
    assert [t for t in range(tok.n_vocab) if tok.is_control(t)] == \
        [t for t in range(tok.n_vocab) if llama_cpp.llama_vocab_is_control(vocab, t)]
    assert (tok.bos_id, tok.eos_id, tok.eot_id, tok.nl_id, tok.n_vocab) == (
        llama_cpp.llama_vocab_bos(vocab), llama_cpp.llama_vocab_eos(vocab),
        llama_cpp.llama_vocab_eot(vocab), llama_cpp.llama_vocab_nl(vocab), ref.n_vocab())


def _write_vocab(path, model, tokens, types, **kv):
    """A vocab-only GGUF (what `llama_cpp.Llama(..., vocab_only=True)` needs)."""
    import gguf
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(path.stem)
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre(kv.pop("pre", "default"))
    w.add_token_list([t.decode("utf-8") for t in tokens])
    w.add_token_types(types)
    if "scores" in kv:
        w.add_token_scores(kv.pop("scores"))
    if "merges" in kv:
        w.add_token_merges([m.decode("utf-8") for m in kv.pop("merges")])
    for key, value in kv.items():
        getattr(w, f"add_{key}")(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _arrays(name, *keys):
    import gguf
    fields = gguf.GGUFReader(VOCAB_DIR / f"ggml-vocab-{name}.gguf").fields
    out = []
    for key in keys:
        f = fields[f"tokenizer.ggml.{key}"]
        out.append([bytes(f.parts[i]) for i in f.data] if key in ("tokens", "merges")
                   else f.contents())
    return out


def _one_name_per_behaviour():
    from pyinfer.tokenizer_pre import PRE_TOKENIZERS
    seen = {}
    for name, pre in sorted(PRE_TOKENIZERS.items()):
        if not pre.escape_whitespaces:      # those need a U+2581 vocabulary (gemma-4's)
            seen.setdefault(pre, name)
    return tuple(sorted(seen.values()))


# one `tokenizer.ggml.pre` name per distinct behaviour of llama.cpp's table, on GPT-2's vocabulary
PRE_NAMES = _one_name_per_behaviour()


@pytest.mark.llama_cpp
def test_pre_tokenizers_match_llama_cpp(tmp_path):
    llama_cpp = real_llama_cpp("llama_cpp")
    tokens, types, merges = _arrays("gpt-2", "tokens", "token_type", "merges")
    mismatches = []
    for pre in PRE_NAMES:
        path = tmp_path / f"vocab-{pre}.gguf"
        _write_vocab(path, "gpt2", tokens, types, pre=pre, merges=merges,
                     bos_token_id=50256, eos_token_id=50256)
        ref = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        tok = Tokenizer("gpt2", tokens, types, merges=merges, pre=pre,
                        special={"bos": 50256, "eos": 50256})
        digits = ["1234567 12345678 x123456789y 9876543210 3.14159", "HTTPServer iPhone ＡＢＣ",
                  "<sentinel:12> IMGIMGABCZ 日本語のテキスト 한국어", "a" + " " * 600 + "b"]
        for text in _compare_strings(seed=3, n=150) + digits:
            for add_bos in (False, True):
                data = text.encode("utf-8")
                if tok.tokenize(data, add_bos) != ref.tokenize(data, add_bos, False):
                    mismatches.append((pre, text, add_bos))
    assert mismatches == []


@pytest.mark.llama_cpp
@pytest.mark.parametrize("variant", [{"add_space_prefix": False},
                                     {"add_bos_token": False, "add_eos_token": True},
                                     {"user_defined": 15043}])
def test_spm_variants_match_llama_cpp(tmp_path, variant):
    """SPM without the space prefix, with EOS instead of BOS, with a user-defined token."""
    llama_cpp = real_llama_cpp("llama_cpp")
    tokens, types, scores = _arrays("llama-spm", "tokens", "token_type", "scores")
    kv = {"scores": scores, "bos_token_id": 1, "eos_token_id": 2, "unk_token_id": 0}
    if "user_defined" in variant:
        types = list(types)
        types[variant["user_defined"]] = TYPE_USER_DEFINED  # "▁Hello"
    else:
        kv.update(variant)  # GGUFWriter.add_<key>(value)
    path = tmp_path / "spm.gguf"
    _write_vocab(path, "llama", tokens, types, **kv)
    ref = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    tok = Tokenizer.from_gguf(path)
    mismatches = []
    for text in _compare_strings(seed=5, n=200) + ["Hello world", "x▁Hello▁y"]:
        data = text.encode("utf-8")
        for add_bos in (False, True):
            for special in (False, True):
                if tok.tokenize(data, add_bos, special) != ref.tokenize(data, add_bos, special):
                    mismatches.append((text, add_bos, special))
    assert mismatches == []
