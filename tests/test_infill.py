"""Fill-in-the-middle (create_completion(prompt, suffix=...), pyinfer/infill.py): the FIM token
ids from the metadata or the token texts, the exact prompt ids evaluated (written out by hand
from the byte-level vocabulary: byte b is token b), the SPM suffix without its space prefix,
and the error on a model without FIM tokens."""
from types import SimpleNamespace

from pathlib import Path

import gguf
import numpy as np
import pytest

from pyinfer import Llama
from pyinfer.gguf_model import GGUFFile
from pyinfer.infill import FimTokens, infill_tokens
from pyinfer.tokenizer import Tokenizer
from reference.tiny_model import write_tiny_llama
from tiny_chat_model import BOS_ID, MERGES, TOKENS

QWEN_FIM = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]
PRE, SUF, MID = len(TOKENS), len(TOKENS) + 1, len(TOKENS) + 2    # their ids in write_fim_model


def write_fim_model(path, fim_texts=QWEN_FIM, keys=None, add_bos=False):
    """tests/tiny_chat_model.py's vocabulary plus three control tokens `fim_texts` (ids PRE,
    SUF, MID), with `keys` (metadata key -> id) written as uint32, on tiny random weights."""
    tokens = TOKENS + list(fim_texts)
    src = GGUFFile(str(write_tiny_llama(str(path) + ".weights", n_vocab=len(tokens)))).reader
    w = gguf.GGUFWriter(str(path), "llama")
    for name, f in src.fields.items():
        if not name.startswith(("GGUF.", "tokenizer.")) and name != "general.architecture":
            sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(name, f.contents(), f.types[0], sub)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * (len(TOKENS) - 2) + [gguf.TokenType.CONTROL] * 5)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(BOS_ID + 1)
    w.add_add_bos_token(add_bos)
    for key, value in (keys or {}).items():
        w.add_uint32(key, value)
    for t in src.tensors:
        w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.fixture(scope="module")
def fim(tmp_path_factory):
    m = Llama(write_fim_model(tmp_path_factory.mktemp("fim") / "fim.gguf"), n_ctx=128, verbose=False)
    yield m
    m.close()


def _evaluated(llm, n):
    return llm.input_ids[:n].tolist()


def test_prompt_ids_prefix_suffix_middle(fim):
    """PSM order: FIM_PRE prompt FIM_SUF suffix FIM_MID, and these are the ids evaluated."""
    r = fim("ab", suffix="xy", max_tokens=1, temperature=0.0)
    want = [PRE, 97, 98, SUF, 120, 121, MID]
    assert r["usage"]["prompt_tokens"] == len(want)
    assert _evaluated(fim, len(want)) == want
    # a token list is the prefix; an empty suffix keeps FIM_SUF; special texts are not parsed
    fim([97, 98], suffix="", max_tokens=1, temperature=0.0)
    assert _evaluated(fim, 5) == [PRE, 97, 98, SUF, MID]
    fim("<|im_start|>", suffix="<|fim_middle|>", max_tokens=1, temperature=0.0)
    n = 1 + len(b"<|im_start|>") + 1 + len(b"<|fim_middle|>") + 1
    got = _evaluated(fim, n)
    assert got[0] == PRE and got[-1] == MID and got.count(MID) == 1 and BOS_ID not in got
    assert fim.detokenize(got) == b"<|im_start|><|fim_middle|>"


def test_spm_infill_puts_the_suffix_first(tmp_path):
    with Llama(write_fim_model(tmp_path / "m.gguf", add_bos=True), spm_infill=True, verbose=False) as m:
        m("ab", suffix="xy", max_tokens=1, temperature=0.0)
        assert _evaluated(m, 8) == [BOS_ID, SUF, 120, 121, PRE, 97, 98, MID]   # BOS: add_bos_token
        m([97], suffix="x", max_tokens=1, temperature=0.0)                    # BOS for a token list too
        assert _evaluated(m, 6) == [BOS_ID, SUF, 120, PRE, 97, MID]


def test_infill_generates_what_the_same_ids_give(fim):
    kw = dict(max_tokens=12, temperature=0.0)
    filled = fim("ab", suffix="xy", **kw)
    plain = fim([PRE, 97, 98, SUF, 120, 121, MID], **kw)
    assert filled["choices"][0]["text"] == plain["choices"][0]["text"]
    chunks = list(fim("ab", suffix="xy", stream=True, **kw))
    assert "".join(c["choices"][0]["text"] for c in chunks) == filled["choices"][0]["text"]
    echoed = fim("ab", suffix="xy", echo=True, **kw)["choices"][0]["text"]
    assert echoed == "ab" + filled["choices"][0]["text"]


def test_fim_ids_from_metadata_keys(tmp_path):
    """Names llama.cpp does not know, given by the keys; the older prefix/suffix/middle keys
    win over the fim_* ones (llama.cpp reads them last); ids out of range are ignored."""
    keys = {"tokenizer.ggml.fim_pre_token_id": PRE, "tokenizer.ggml.fim_suf_token_id": MID,
            "tokenizer.ggml.suffix_token_id": SUF, "tokenizer.ggml.fim_mid_token_id": MID,
            "tokenizer.ggml.middle_token_id": 10 ** 6}
    path = write_fim_model(tmp_path / "k.gguf", fim_texts=["<p>", "<s>", "<m>"], keys=keys)
    with Llama(path, verbose=False) as m:
        assert m._fim == FimTokens(PRE, SUF, MID)
        assert (m._model.token_prefix(), m._model.token_suffix(), m._model.token_middle()) == (PRE, SUF, MID)
        m("a", suffix="b", max_tokens=1, temperature=0.0)
        assert _evaluated(m, 5) == [PRE, 97, SUF, 98, MID]


@pytest.mark.parametrize("texts", [["<fim_prefix>", "<fim_suffix>", "<fim_middle>"],      # StarCoder
                                   ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"],  # DeepSeek
                                   ["▁<PRE>", "▁<SUF>", "▁<MID>"]])                         # CodeLlama
def test_fim_ids_from_token_texts(texts):
    tokens = ["a", "b"] + texts + ["<PRE>"]
    tok = Tokenizer("gpt2", [t.encode() for t in tokens], [1, 1, 3, 3, 3, 3], pre="gpt-2")
    # "<PRE>" (id 5) matches too: which one wins is llama.cpp's map order, which the tokenizer
    # reproduces (tests/test_tokenizer_vocabs.py checks it against llama.cpp)
    assert FimTokens.from_vocab(tok) == FimTokens(tok.fim_pre_id, 3, 4) and tok.fim_pre_id in (2, 5)
    keyed = Tokenizer("gpt2", [t.encode() for t in tokens], [1, 1, 3, 3, 3, 3], pre="gpt-2",
                      special={"fim_pre": 5})
    assert FimTokens.from_vocab(keyed).prefix == 5


def test_model_without_fim_tokens_refuses(tiny):
    with pytest.raises(ValueError, match="^Infill is not supported by this model: it has no "
                                         "fim_pre, fim_suf, fim_mid token"):
        tiny("a", suffix="b")
    with pytest.raises(TypeError, match="suffix must be a str"):
        tiny("a", suffix=3)
    assert tiny("a", suffix=None, max_tokens=1)["usage"]["prompt_tokens"] == 1


def test_spm_suffix_has_no_space_prefix():
    """On an SPM vocabulary (llama-spm, add_space_prefix) the prompt starts with the space
    SentencePiece adds, the suffix does not (it continues the middle)."""
    spm = Tokenizer.from_gguf(Path(__file__).parent / "data" / "vocab" / "ggml-vocab-llama-spm.gguf")
    world, sp_world, sp_hello = (spm.token_to_id(t) for t in ("world", "▁world", "▁Hello"))
    assert -1 not in (world, sp_world, sp_hello) and spm.tokenize(b"world", add_bos=False) == [sp_world]
    fake = SimpleNamespace(fim=FimTokens(3, 4, 5), vocab=spm, tokenize=spm.tokenize,
                           spm_infill=False, has_custom_tokenizer=False)
    assert infill_tokens(fake, "Hello", "world") == [spm.bos_id, 3, sp_hello, 4, world, 5]
    assert infill_tokens(fake, "Hello", " world") == [spm.bos_id, 3, sp_hello, 4, sp_world, 5]
    assert spm.add_space_prefix      # the shared vocabulary is left as it was
