"""convert: tokenizer metadata tokenizes like the source tokenizer.

Oracles: the `tokenizers` library on the tokenizer.json that was converted,
`sentencepiece` on the tokenizer.model, and the real SmolLM2 GGUF's own
tokenizer metadata (written by llama.cpp's converter) for a tokenizer.json
rebuilt from it.
"""
import json

import pytest

from pyinfer.convert.hf_config import load_params
from pyinfer.convert.vocab import load_vocab
from pyinfer.gguf_model import GGUFFile
from pyinfer.tokenizer import Tokenizer
from reference.tiny_hf import TEXT, make_tiny_hf, tiny_config

SAMPLES = [
    "Hello world! The quick brown fox.",
    "I've been told it's there, we'll see... 'RE you sure?",
    "numbers 1 12 123 1234 12345 and 3.14159",
    "tabs\tand\n\nnew lines  with   spaces\n",
    "Ünïcödé and emoji 🦙 mixed with 中文 text",
    "<|im_start|>user\nhi<|im_end|>",
]


def gguf_tokenizer(model_dir, tmp_path):
    """Convert the vocabulary only: write the metadata into a GGUF and read it back."""
    import gguf
    p = load_params(str(model_dir))
    v = load_vocab(str(model_dir), p)
    path = str(tmp_path / "vocab.gguf")
    w = gguf.GGUFWriter(path, "llama")
    v.add_to(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return v, Tokenizer.from_gguf(path)


@pytest.mark.parametrize("style,pre", [("gpt2", "gpt-2"), ("llama3", "llama-bpe")])
def test_byte_level_bpe_matches_tokenizers(tmp_path, style, pre):
    from tokenizers import Tokenizer as HFTokenizer
    d = tmp_path / "hf"
    make_tiny_hf(d, "llama", tokenizer_style=style, config_over=dict(vocab_size=400))
    v, tok = gguf_tokenizer(d, tmp_path)
    assert v.model == "gpt2" and v.pre == pre
    hf = HFTokenizer.from_file(str(d / "tokenizer.json"))
    for text in SAMPLES + [TEXT]:
        want = hf.encode(text, add_special_tokens=False).ids
        assert tok.tokenize(text.encode(), add_bos=False, special=True) == want, text
        assert tok.detokenize(want, special=True).decode() == text


def test_smollm2_tokenizer_json_roundtrip(tmp_path, smollm2):
    """A tokenizer.json rebuilt from the real SmolLM2 GGUF converts back to the same metadata,
    its pre-tokenizer recognised by llama.cpp's probe hash as 'smollm'."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, processors
    md = GGUFFile(str(smollm2)).metadata
    toks, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ")) for m in md["tokenizer.ggml.merges"]]
    hf = HFTokenizer(models.BPE({t: i for i, t in enumerate(toks)}, merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False)])
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(toks, types) if ty == 3])
    d = tmp_path / "hf"
    d.mkdir()
    hf.save(str(d / "tokenizer.json"))
    (d / "config.json").write_text(json.dumps(dict(tiny_config("llama"), vocab_size=len(toks))))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|im_end|>", "chat_template": md["tokenizer.chat_template"]}))
    v, tok = gguf_tokenizer(d, tmp_path)
    assert v.pre == "smollm" and "probe hash" in v.note
    assert v.tokens == toks and v.types == list(types)
    assert v.special.merges == md["tokenizer.ggml.merges"]
    assert v.special.special_token_ids == {"bos": 1, "eos": 2, "unk": 0, "pad": 2}
    assert v.special.add_special_token.get("bos") is False       # llama.cpp's rule for 49152 vocabs
    assert v.special.chat_template == md["tokenizer.chat_template"]
    ref = Tokenizer.from_gguf(str(smollm2))
    for text in SAMPLES + [TEXT]:
        assert tok.tokenize(text.encode(), add_bos=False) == ref.tokenize(text.encode(), add_bos=False)


def test_sentencepiece_model(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    d = tmp_path / "hf"
    d.mkdir()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join([TEXT] * 20 + SAMPLES[:4] * 10))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(d / "tokenizer"), vocab_size=400,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   bos_id=1, eos_id=2, unk_id=0, minloglevel=2,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False)  # as Llama
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    (d / "config.json").write_text(json.dumps(dict(tiny_config("llama"), vocab_size=404)))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True,
        "added_tokens_decoder": {"400": {"content": "<|im_start|>", "special": True}}}))
    v, tok = gguf_tokenizer(d, tmp_path)
    assert v.model == "llama" and v.pre == "default" and len(v.tokens) == 404
    assert v.tokens[400] == "<|im_start|>" and v.types[400] == 3 and v.tokens[403] == "[PAD403]"
    assert v.special.special_token_ids["bos"] == 1 and v.special.add_special_token["bos"] is True
    for text in [TEXT] + SAMPLES[:4]:
        assert tok.tokenize(text.encode(), add_bos=False) == sp.encode(text), text
    assert tok.tokenize(b"Hello", add_bos=True)[0] == 1


def test_unknown_pre_tokenizer_falls_back_with_warning(tmp_path, caplog):
    from tokenizers import Tokenizer as HFTokenizer, pre_tokenizers
    d = tmp_path / "hf"
    make_tiny_hf(d, "llama")
    tj = HFTokenizer.from_file(str(d / "tokenizer.json"))
    tj.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.ByteLevel()])
    tj.save(str(d / "tokenizer.json"))
    with caplog.at_level("WARNING", logger="convert"):
        v, _ = gguf_tokenizer(d, tmp_path)
    assert v.pre == "default" and "not recognised" in caplog.text


def _spm_as_tokenizer_json(sp, path):
    """A Llama-style tokenizer.json (byte-fallback BPE, U+2581 spaces) made from a SentencePiece
    BPE model the way HF's converter does it: merges are the piece splits, ranked by piece id."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, normalizers
    vocab = {sp.IdToPiece(i): i for i in range(sp.vocab_size())}
    merges = []
    for piece, pid in sorted(vocab.items(), key=lambda kv: kv[1]):
        if sp.IsByte(pid) or sp.IsControl(pid) or sp.IsUnknown(pid):
            continue
        for k in range(1, len(piece)):
            if piece[:k] in vocab and piece[k:] in vocab:
                merges.append((pid, vocab[piece[:k]], vocab[piece[k:]], (piece[:k], piece[k:])))
    merges.sort(key=lambda m: (m[0], m[1], m[2]))
    tk = HFTokenizer(models.BPE(vocab, [m[3] for m in merges], unk_token="<unk>", fuse_unk=True,
                                byte_fallback=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tk.save(str(path))
    return tk


def test_sentencepiece_style_tokenizer_json_without_model_file(tmp_path):
    """Only tokenizer.json (byte-fallback BPE): written as a 'llama' vocabulary whose scores
    (-id) make llama.cpp's SentencePiece merging reproduce the source tokenization."""
    spm = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join([TEXT] * 20 + SAMPLES[:4] * 10))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=400,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   bos_id=1, eos_id=2, unk_id=0, minloglevel=2,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    d = tmp_path / "hf"
    d.mkdir()
    hf = _spm_as_tokenizer_json(sp, d / "tokenizer.json")
    (d / "config.json").write_text(json.dumps(dict(tiny_config("llama"), vocab_size=400)))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    v, tok = gguf_tokenizer(d, tmp_path)
    assert v.model == "llama" and "SentencePiece-style" in v.note
    assert v.types[1] == 3 and v.types[3] == 6          # <s> control, <0x00> byte
    for text in [TEXT] + SAMPLES[:4]:
        want = sp.encode(text)
        assert hf.encode(text, add_special_tokens=False).ids == want     # the rebuilt json is faithful
        assert tok.tokenize(text.encode(), add_bos=False) == want, text
