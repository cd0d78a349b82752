"""Every vocabulary llama.cpp ships for its tokenizer tests (`models/ggml-vocab-*.gguf` of
llama-cpp-python 0.3.36's sdist), token-exact.

Oracles, all produced by llama.cpp:
  * the `.inp`/`.out` test vectors next to each vocabulary (llama.cpp's test-tokenizer-0:
    add_special=False, parse_special=False), for the 15 vocabularies that have them;
  * tests/data/vocab/llama_cpp_vocabs.json, recorded from llama-cpp-python 0.3.36 by
    `python tests/test_tokenizer_vocabs.py --record DIR` for every vocabulary: token ids of more
    texts under all four add_special/parse_special combinations, the detokenized text of each
    test input, the special ids, the end-of-generation set, and digests of every token's
    attributes and pieces. With --run-llama-cpp, test_recording_matches_llama_cpp re-records
    and compares, so the file cannot drift from llama.cpp.

Where the vocabularies come from: tests/data/vocab holds the small ones as they are and most
others xz-compressed (decompressed once per session); LLAMA_CPP_VOCAB_DIR may name llama.cpp's
models/ directory, which then provides every vocabulary (and the ones not committed, such as
aquila). A vocabulary found nowhere is skipped.
"""
import ctypes
import hashlib
import json
import lzma
import os
import random
import sys
from pathlib import Path

import pytest

from conftest import real_llama_cpp
from pyinfer.tokenizer import VOCAB_TYPES, Tokenizer

DATA = Path(__file__).parent / "data" / "vocab"
RECORDING = DATA / "llama_cpp_vocabs.json"
SEPARATOR = "\n__ggml_vocab_test__\n"
FLAGS = ((False, False), (True, True), (False, True), (True, False))
ENV = "LLAMA_CPP_VOCAB_DIR"


def _recording():
    return json.loads(RECORDING.read_text(encoding="utf-8")) if RECORDING.is_file() else {}


RECORDED = _recording()
NAMES = sorted(RECORDED)


def locate(name, tmp_root):
    """Path of ggml-vocab-<name>.gguf (and its directory for .inp/.out), or None."""
    fname = f"ggml-vocab-{name}.gguf"
    env = os.environ.get(ENV)
    if env and (Path(env) / fname).is_file():
        return Path(env) / fname
    if (DATA / fname).is_file():
        return DATA / fname
    packed = DATA / (fname + ".xz")
    if packed.is_file():
        out = tmp_root / fname
        if not out.is_file():
            out.write_bytes(lzma.decompress(packed.read_bytes()))
        return out
    return None


def read_vectors(path, name):
    """(text, ids) pairs of the .inp/.out files next to `path` (else in tests/data/vocab), as
    llama.cpp's test-tokenizer-0 reads them: inputs are separated by SEPARATOR, a separator at
    the very end closes the last input; the .out file has one line of ids per input."""
    for d in (path.parent, DATA):
        inp = d / f"ggml-vocab-{name}.gguf.inp"
        if inp.is_file():
            raw = inp.read_text(encoding="utf-8")
            texts = raw.split(SEPARATOR)
            if raw.endswith(SEPARATOR):
                texts.pop()
            lines = inp.with_suffix(".out").read_text(encoding="utf-8").splitlines()
            assert len(lines) == len(texts), f"{inp}: {len(texts)} inputs, {len(lines)} outputs"
            return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]
    return []


@pytest.fixture(scope="session")
def vocab_root(tmp_path_factory):
    return tmp_path_factory.mktemp("vocab")


@pytest.fixture(scope="module", params=NAMES)
def vocab(request, vocab_root):
    """(name, path, Tokenizer) per vocabulary; one loaded at a time (tests group by it)."""
    name = request.param
    path = locate(name, vocab_root)
    if path is None:
        pytest.skip(f"ggml-vocab-{name}.gguf is not committed; set {ENV} to llama.cpp's models/")
    yield name, path, Tokenizer.from_gguf(path)


def _case_bytes(case):
    return bytes.fromhex(case["hex"]) if "hex" in case else case["text"].encode("utf-8")


# --- llama.cpp's own test vectors ---------------------------------------------------------

def test_vectors(vocab):
    name, path, tok = vocab
    vectors = read_vectors(path, name)
    if not vectors:
        pytest.skip(f"llama.cpp has no test vectors for {name}")
    assert len(vectors) == RECORDED[name]["n_vectors"]
    bad = [(i, text) for i, (text, ids) in enumerate(vectors)
           if tok.tokenize(text.encode("utf-8"), add_bos=False, special=False) != ids]
    assert bad == [], f"{len(bad)} of {len(vectors)} vectors differ"


def test_round_trip(vocab):
    """detokenize(tokenize(x)) is x wherever llama.cpp round-trips (byte-level BPE always;
    SPM once the BOS rule drops the prefix space), and llama.cpp's text everywhere else (a
    lowercasing, accent-stripping WordPiece loses information)."""
    name, _, tok = vocab
    rec = RECORDED[name]
    assert rec["detokenized"], "the recording has no detokenized texts"
    for (text, add_special, want) in rec["detokenized"]:
        data = text.encode("utf-8")
        got = tok.detokenize(tok.tokenize(data, add_bos=add_special))
        assert got == want.encode("utf-8", "surrogateescape"), (text, add_special)
        if want == text:
            assert got == data


# --- the recording ------------------------------------------------------------------------

def test_recorded_tokenizations(vocab):
    name, _, tok = vocab
    bad = []
    for case in RECORDED[name]["cases"]:
        data = _case_bytes(case)
        for flags, want in zip(FLAGS, case["ids"]):
            if want is not None and tok.tokenize(data, *flags) != want:
                bad.append((case.get("text", case.get("hex")), flags))
    assert bad == []


def test_vocab_facts(vocab):
    """Type, special ids, flags, end-of-generation set, attributes and pieces of every token."""
    name, _, tok = vocab
    rec = RECORDED[name]
    assert VOCAB_TYPES[tok.model] == tok.vocab_type == rec["type"]
    got = {k: getattr(tok, k + "_id") for k in rec["ids"]}
    assert got == rec["ids"]
    assert (tok.n_vocab, tok.add_bos, tok.add_eos) == (rec["n_vocab"], rec["add_bos"], rec["add_eos"])
    assert sorted(tok.eog_ids) == rec["eog"]
    assert digest_attrs([tok.token_attr(t) for t in range(tok.n_vocab)]) == rec["attrs_sha256"]
    for special, want in zip((False, True), rec["pieces_sha256"]):
        assert digest_pieces(tok.token_to_piece(t, special) for t in range(tok.n_vocab)) == want


def test_recording_covers_every_tokenizer_model():
    """The committed vocabularies exercise every tokenizer type llama.cpp's files use, and
    each test input of every vocabulary with vectors is in the recording."""
    committed = {n for n in NAMES if (DATA / f"ggml-vocab-{n}.gguf").is_file()
                 or (DATA / f"ggml-vocab-{n}.gguf.xz").is_file()}
    assert {RECORDED[n]["type"] for n in committed} == {"SPM", "BPE", "WPM", "UGM"}
    assert {RECORDED[n]["model"] for n in committed} == {"llama", "gpt2", "gemma4", "bert", "t5"}
    for n in NAMES:
        assert len(RECORDED[n]["detokenized"]) >= 2 * RECORDED[n]["n_vectors"]


def digest_attrs(attrs):
    return hashlib.sha256(b"".join(int(a).to_bytes(4, "little") for a in attrs)).hexdigest()


def digest_pieces(pieces):
    h = hashlib.sha256()
    for p in pieces:
        h.update(len(p).to_bytes(4, "little") + p)
    return h.hexdigest()


# --- recording from llama.cpp (opt-in) ----------------------------------------------------

def random_texts(seed, n):
    rng = random.Random(seed)
    atoms = list("abcXYZ 0123456789'\"\t\n\r.,!?-_()[]{}<>|/\\@#$%^&*~`") + [
        "  ", "   ", "\n\n", " \n", "'s", "'LL", "'Re", "é", "ß", "Ä", "你好", "世界", "🦙", "😶‍🌫️",
        "\u00a0", "\u2009", "\u3000", "\u200b", "\u0085", "\x1c", "\x0b", "١٢٣", "Ⅻ", "½", "²",
        "\u0301", "ก", "ា", "\ue000", "\ufffd", "\u2581", "<s>", "</s>", "<unk>", "<0x41>",
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>",
        "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<mask>", "[CLS]", "[SEP]",
        "[MASK]", "[UNK]", "<pad>", "<|turn>", "<turn|>", "\t\t", "    ", "\n\n\n\n", "ﬁ", "①",
        "Ａ", "ｶ", "Ǆ", "İ", "ΐ", "\x7f", "\u00ad", "\u2028", "\ufeff", "a\u0308", "HELLO",
        "naïve", "über", "def f(x):\n    return x", "1234567"]
    return ["".join(rng.choice(atoms) for _ in range(rng.randint(0, 30))) for _ in range(n)]


# invalid UTF-8: stray bytes, cut characters, an overlong form, encoded surrogates
INVALID_UTF8 = (b"\xff", b"a\xe2\x82", b"\xe2\x82a", b"\x80\x80b", b"\xc0\x80", b"\xf0\x9f\x98",
                b"a\xed\xa0\x80b", b"12\xed\xbf\xbf34 !\xed\xa0\x80\xed\xb0\x80?\n\n")


def _piece(llama_cpp, vocab, token, special):
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
    return buf.raw[:n]


def record(llama_cpp, path, name):
    """What llama.cpp (llama-cpp-python) says about one vocabulary, as stored in RECORDING."""
    import gguf
    ref = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    vocab = ref._model.vocab
    fields = gguf.GGUFReader(path).fields
    meta = lambda key: bytes(fields[key].parts[-1]).decode() if key in fields else None  # noqa: E731
    model = meta("tokenizer.ggml.model")
    vectors = read_vectors(path, name)
    inputs = [t for t, _ in vectors or read_vectors(DATA / "ggml-vocab-llama-bpe.gguf", "llama-bpe")]
    n = ref.n_vocab()
    specials = [_piece(llama_cpp, vocab, t, True).decode("utf-8", "replace")
                for t in range(n) if llama_cpp.llama_vocab_is_control(vocab, t)][:40]
    rng = random.Random(len(name))
    with_specials = ["".join(rng.choice(specials + [" ", "x", "Hi ", "\n", " y "])
                             for _ in range(rng.randint(1, 8))) for _ in range(20)] if specials else []
    cases = []
    for text in inputs:
        ids = [ref.tokenize(text.encode("utf-8"), add_bos=a, special=s) for a, s in FLAGS[:2]]
        cases.append({"text": text, "ids": ids + [None, None]})
    for text in random_texts(len(name), 40) + with_specials:
        cases.append({"text": text, "ids": [ref.tokenize(text.encode("utf-8"), add_bos=a, special=s)
                                             for a, s in FLAGS]})
    for data in INVALID_UTF8:
        cases.append({"hex": data.hex(), "ids": [ref.tokenize(data, add_bos=a, special=s)
                                                 for a, s in FLAGS]})
    detok = []
    for text in inputs:
        for add in (False, True):
            ids = ref.tokenize(text.encode("utf-8"), add_bos=add, special=False)
            out = b"".join(_piece(llama_cpp, vocab, t, False) for t in ids)
            if ids and ids[0] == llama_cpp.llama_vocab_bos(vocab) and out[:1] == b" ":
                out = out[1:]      # llama-cpp-python's Llama.detokenize drops it
            detok.append([text, add, out.decode("utf-8", "surrogateescape")])
    api = {"bos": "bos", "eos": "eos", "eot": "eot", "sep": "sep", "pad": "pad", "nl": "nl",
           "fim_pre": "fim_pre", "fim_suf": "fim_suf", "fim_mid": "fim_mid",
           "fim_pad": "fim_pad", "fim_rep": "fim_rep", "fim_sep": "fim_sep"}
    return {
        "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "model": model, "pre": meta("tokenizer.ggml.pre"),
        "type": {llama_cpp.LLAMA_VOCAB_TYPE_SPM: "SPM", llama_cpp.LLAMA_VOCAB_TYPE_BPE: "BPE",
                 llama_cpp.LLAMA_VOCAB_TYPE_WPM: "WPM", llama_cpp.LLAMA_VOCAB_TYPE_UGM: "UGM",
                 llama_cpp.LLAMA_VOCAB_TYPE_RWKV: "RWKV"}[llama_cpp.llama_vocab_type(vocab)],
        "n_vocab": n, "n_vectors": len(vectors),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "ids": {k: getattr(llama_cpp, f"llama_vocab_{v}")(vocab) for k, v in api.items()},
        "eog": [t for t in range(n) if llama_cpp.llama_vocab_is_eog(vocab, t)],
        "attrs_sha256": digest_attrs(llama_cpp.llama_vocab_get_attr(vocab, t) for t in range(n)),
        "pieces_sha256": [digest_pieces(_piece(llama_cpp, vocab, t, s) for t in range(n))
                          for s in (False, True)],
        "cases": cases, "detokenized": detok,
    }


@pytest.mark.llama_cpp
def test_recording_matches_llama_cpp(vocab):
    """The committed recording is what llama.cpp says today (about the same file)."""
    llama_cpp = real_llama_cpp("llama_cpp")
    name, path, _ = vocab
    now = record(llama_cpp, path, name)
    assert now == RECORDED[name]


def _dumps(value):
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:    # a lone surrogate (undecodable detokenized bytes)
        return json.dumps(value)


def _arrays(path):
    import gguf
    fields = gguf.GGUFReader(path).fields

    def get(key):
        f = fields.get("tokenizer.ggml." + key)
        if f is None:
            return None
        if key in ("tokens", "merges"):
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return f.contents()
    return get


def _write(path, model, arrays, **kv):
    """A vocab-only GGUF: `arrays` holds tokens/token_type/scores/merges; kv are GGUFWriter
    add_<key> calls or, for a name with dots, raw bool keys."""
    import gguf
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model(model)
    w.add_token_list(arrays["tokens"])
    w.add_token_types(arrays["token_type"])
    if arrays.get("scores") is not None:
        w.add_token_scores(arrays["scores"])
    if arrays.get("merges") is not None:
        w.add_token_merges(arrays["merges"])
    for key, value in kv.items():
        if "." in key:
            w.add_bool(key, value)
        else:
            getattr(w, "add_" + key)(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _variant(name, tmp_path, vocab_root):
    """(path of a synthetic vocabulary, extra texts): llama.cpp options the committed files
    do not exercise, built from their tokens."""
    if name == "rwkv":
        multi = [b"hello", b" world", b"\n\n", "é".encode(), b"\xff\xfe", b"ab", b"abc", b"<|x|>"]
        tokens = ["<s>"] + [repr(bytes([b]))[2:-1] for b in range(256)] + [repr(m)[2:-1] for m in multi]
        path = tmp_path / "rwkv.gguf"
        _write(path, "rwkv", {"tokens": tokens, "token_type": [3] + [1] * (256 + len(multi))},
               bos_token_id=0)
        return path, ["hello world\n\n\nabc", "\xff\xfe<|x|>é"]
    base = {"ugm": "nomic-bert-moe", "wpm": "bert-bge", "sarvam": "gemma-4"}[name.split("-")[0]]
    src = locate(base, vocab_root)
    if src is None:
        pytest.skip(f"ggml-vocab-{base}.gguf is not available")
    get = _arrays(src)
    arrays = {k: get(k) for k in ("tokens", "token_type", "scores", "merges")}
    path = tmp_path / f"{name}.gguf"
    if name.startswith("ugm"):
        kv = {"ugm-plain": dict(add_space_prefix=False),
              "ugm-keep-spaces": dict(add_space_prefix=True, remove_extra_whitespaces=False),
              "ugm-user-defined": dict(add_space_prefix=True, remove_extra_whitespaces=True)}[name]
        if name == "ugm-user-defined":
            arrays["token_type"] = [4 if i in (6, 100, 1000, 35378) else t
                                    for i, t in enumerate(arrays["token_type"])]
        if name != "ugm-plain":
            kv["precompiled_charsmap"] = bytes(get("precompiled_charsmap"))
        _write(path, "t5", arrays, bos_token_id=0, eos_token_id=2, unk_token_id=3, pad_token_id=1,
               **kv)
        return path, ["  Hello   World  ", "ＨＥＬＬＯ ｗｏｒｌｄ ①②", "\u3000\u00a0 a",
                      arrays["tokens"][35378] * 2]
    if name.startswith("wpm"):
        if name == "wpm-user-defined":
            arrays["token_type"] = [4 if i in (2023, 7592) else t for i, t in enumerate(arrays["token_type"])]
        kv = {"wpm-cased": {"tokenizer.ggml.normalizer.lowercase": False},
              "wpm-accents": {"tokenizer.ggml.normalizer.strip_accents": False},
              "wpm-user-defined": {}}[name]
        _write(path, "bert", {k: arrays[k] for k in ("tokens", "token_type")}, unk_token_id=100,
               sep_token_id=102, pad_token_id=0, mask_token_id=103, **kv)
        return path, ["Héllo WÖRLD İstanbul ǅ", "naïve café ΐ", "this is hello"]
    _write(path, "gpt2", arrays, tokenizer_pre="sarvam-moe", bos_token_id=2, eos_token_id=1,
           unk_token_id=3, pad_token_id=0)
    return path, ["a\n\n\nb\n\n", "\n\n\n\n", "x  y"]


@pytest.mark.llama_cpp
@pytest.mark.parametrize("name", ["rwkv", "ugm-plain", "ugm-keep-spaces", "ugm-user-defined",
                                  "wpm-cased", "wpm-accents", "wpm-user-defined", "sarvam"])
def test_variants_match_llama_cpp(name, tmp_path, vocab_root):
    """RWKV (no vocabulary file has it), UGM without the charsmap / keeping spaces / with
    user-defined pieces, WordPiece cased / keeping accents / with user-defined tokens, and
    Gemma 4-style BPE under the sarvam-moe name (no whole newline runs)."""
    llama_cpp = real_llama_cpp("llama_cpp")
    path, extra = _variant(name, tmp_path, vocab_root)
    ref = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    tok = Tokenizer.from_gguf(path)
    bad = []
    for text in random_texts(7, 120) + extra:
        data = text.encode("utf-8")
        for flags in FLAGS:
            if tok.tokenize(data, *flags) != ref.tokenize(data, *flags):
                bad.append((text, flags))
    vocab = ref._model.vocab
    assert bad == []
    assert [t for t in range(tok.n_vocab) for s in (False, True)
            if tok.token_to_piece(t, s) != _piece(llama_cpp, vocab, t, s)] == []
    assert (tok.bos_id, tok.eos_id, tok.nl_id) == (
        llama_cpp.llama_vocab_bos(vocab), llama_cpp.llama_vocab_eos(vocab), llama_cpp.llama_vocab_nl(vocab))


def write_recording(models_dir, names=None):
    """Record every ggml-vocab-*.gguf of llama.cpp's models/ directory into RECORDING."""
    import llama_cpp
    out = dict(_recording()) if RECORDING.is_file() else {}
    for path in sorted(Path(models_dir).glob("ggml-vocab-*.gguf")):
        name = path.name[len("ggml-vocab-"):-len(".gguf")]
        if names and name not in names:
            continue
        out[name] = record(llama_cpp, path, name)
        print(name, out[name]["type"], out[name]["pre"], len(out[name]["cases"]), file=sys.stderr)
    lines = ["{"]
    for k, name in enumerate(sorted(out)):
        rec = dict(out[name])
        cases, detok = rec.pop("cases"), rec.pop("detokenized")
        body = json.dumps(rec, ensure_ascii=False)[:-1]
        lines.append(f"{json.dumps(name)}: {body}, \"cases\": [")
        lines += [_dumps(c) + ("," if i < len(cases) - 1 else "") for i, c in enumerate(cases)]
        lines.append("], \"detokenized\": [")
        lines += [_dumps(d) + ("," if i < len(detok) - 1 else "") for i, d in enumerate(detok)]
        lines.append("]}" + ("," if k < len(out) - 1 else ""))
    lines.append("}")
    RECORDING.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__" and len(sys.argv) >= 3 and sys.argv[1] == "--record":
    write_recording(sys.argv[2], sys.argv[3:])
