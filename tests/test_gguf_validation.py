"""GGUF load validation: each malformed case of issue 18 is refused at load, cleanly and by name.

The files are a valid tiny model (tests/reference/tiny_model.py) with one header field changed
through tests/gguf_raw.py, a GGUF codec written from the format description. Where the point
of a case is that arithmetic would wrap or that nothing else notices, the stock `gguf` reader
(its uint64 offsets) is shown to accept the same file: the refusal is pyinfer's check, not a
side effect of something else. Expected sizes in the tensor-table tests are worked out by hand
from ggml's block layouts (Q4_0: 32 elements in 18 bytes).
"""
import math
import os
import threading
import time

import gguf
import numpy as np
import pytest

import gguf_raw as raw
from pyinfer import Llama
from pyinfer.config import ModelConfig, ModelLoadError, UnsupportedModelError
from pyinfer.gguf_model import GGUFFile, RawTensorInfo, check_tensor_table
from pyinfer.tokenizer import Tokenizer
from tiny_chat_model import TOKENS, write_tiny_chat_model


N_VOCAB = len(TOKENS)      # 264: the 256 byte-level characters, 6 merges, 2 specials


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The bytes of a valid tiny llama (F32, byte-level BPE vocabulary, output.weight untied)."""
    path = write_tiny_chat_model(tmp_path_factory.mktemp("valid") / "m.gguf", n_embd=32, n_ff=64, n_head=2,
                                 n_head_kv=1)
    return open(path, "rb").read()


def variant(tmp_path, base_bytes, change, name="m.gguf"):
    g = raw.parse(base_bytes)
    change(g)
    path = tmp_path / name
    path.write_bytes(raw.serialize(g)[0])
    return str(path)


def refused(path, *words):
    with pytest.raises(ModelLoadError) as info:
        GGUFFile(path)
    for w in words:
        assert w in str(info.value), str(info.value)
    return str(info.value)


def test_the_codec_round_trips_and_the_base_loads(tmp_path, base):
    assert raw.serialize(raw.parse(base))[0] == base
    f = GGUFFile(variant(tmp_path, base, lambda g: None))
    assert len(f.tensors) == len(raw.parse(base).tensors)


# ---- paths that are not regular files ----

def _load_in_thread(path):
    """GGUFFile(path) in a thread; (finished within 5 s, the exception or None)."""
    out = {}

    def run():
        try:
            GGUFFile(path)
            out["exc"] = None
        except Exception as e:   # recorded for the assertions
            out["exc"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(5.0)
    return not t.is_alive(), out.get("exc")


def test_named_pipe_is_refused_without_blocking(tmp_path):
    fifo = str(tmp_path / "model.gguf")
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    finished, exc = _load_in_thread(fifo)
    if not finished:   # release the blocked open() so the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert finished, "GGUFFile blocked on a named pipe"
    assert time.perf_counter() - t0 < 1.0
    assert isinstance(exc, ModelLoadError) and "not a regular file: a named pipe" in str(exc)
    with pytest.raises(ModelLoadError, match="named pipe"):
        Llama(fifo, verbose=False)


@pytest.mark.parametrize("kind", ["directory", "device"])
def test_directories_and_devices_are_refused(tmp_path, kind):
    path = str(tmp_path) if kind == "directory" else "/dev/null"
    refused(path, f"not a regular file: a {kind}")


def test_missing_path_and_wrong_magic(tmp_path):
    refused(str(tmp_path / "nope.gguf"), "Model path does not exist")
    (tmp_path / "x.gguf").write_bytes(b"GGML" + b"\0" * 60)
    refused(str(tmp_path / "x.gguf"), "not a GGUF file")


def test_big_endian_and_unknown_versions_are_refused(tmp_path, base):
    refused(variant(tmp_path, base, lambda g: setattr(g, "version", 0x03000000)), "big-endian")
    refused(variant(tmp_path, base, lambda g: setattr(g, "version", 4)), "GGUF version 4 is not supported")


# ---- tensor offsets and sizes ----

def _offset_of(name, plus=0):
    return lambda g: g.tensor(name).offset + plus


def _set_offset(name, offset):
    def change(g):
        g.tensor(name).offset = offset(g) if callable(offset) else offset
    return change


def test_offset_2_64_minus_1_is_refused(tmp_path, base):
    name = "blk.0.attn_q.weight"
    path = variant(tmp_path, base, _set_offset(name, 2**64 - 1))
    refused(path, f"tensor '{name}'", "offset 18446744073709551615", "not a multiple of the alignment 32")


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")   # the stock reader's
def test_aligned_offset_that_wraps_is_refused(tmp_path, base):
    """2**64 - 32 is aligned; added to the data section's start in uint64 it wraps to 32 bytes
    before it, inside the tensor table. The stock gguf reader accepts the file that way."""
    name = "blk.0.attn_q.weight"
    path = variant(tmp_path, base, _set_offset(name, 2**64 - 32))
    r = gguf.GGUFReader(path)
    t = next(t for t in r.tensors if t.name == name)
    assert t.data_offset == r.data_offset - 32       # the wrap, in the package's arithmetic
    refused(path, f"tensor '{name}' data [18446744073709551584,", "not within the file bounds")


def test_overlapping_tensors_are_refused(tmp_path, base):
    """attn_k and attn_v have the same size: pointing v at k's bytes gives a file the stock
    reader loads, with two weights sharing their data."""
    path = variant(tmp_path, base, _set_offset("blk.0.attn_v.weight", _offset_of("blk.0.attn_k.weight")))
    r = gguf.GGUFReader(path)
    offs = {t.name: t.data_offset for t in r.tensors}
    assert offs["blk.0.attn_k.weight"] == offs["blk.0.attn_v.weight"]
    refused(path, "'blk.0.attn_k.weight' and 'blk.0.attn_v.weight' overlap")
    with pytest.raises(ModelLoadError, match="overlap"):
        Llama(path, verbose=False)


def test_partly_overlapping_tensors_are_refused(tmp_path, base):
    path = variant(tmp_path, base, _set_offset("blk.0.attn_v.weight", _offset_of("blk.0.attn_k.weight", 64)))
    refused(path, "overlap")


def test_misaligned_offset_is_refused(tmp_path, base):
    up = "blk.0.ffn_up.weight"
    path = variant(tmp_path, base, _set_offset(up, _offset_of(up, 4)))
    refused(path, "tensor 'blk.0.ffn_up.weight'", "not a multiple of the alignment 32")


def test_general_alignment_applies(tmp_path, base):
    """With general.alignment = 1024 the same offsets (multiples of 32 only) are misaligned."""
    def change(g):
        g.kvs.append(raw.KV(b"general.alignment", raw.U32, 1024))
    msg = refused(variant(tmp_path, base, change), "not a multiple of the alignment 1024")
    assert "tensor '" in msg


def test_tensor_past_the_end_is_refused(tmp_path, base):
    last = raw.parse(base).tensors[-1].name.decode()
    path = variant(tmp_path, base, _set_offset(last, _offset_of(last, 32)))
    refused(path, f"tensor '{last}' data", "not within the file bounds")


def test_truncated_file_is_refused(tmp_path, base):
    path = tmp_path / "cut.gguf"
    path.write_bytes(base[:-10])
    refused(str(path), "not within the file bounds")
    path.write_bytes(base[:200])     # inside the key/values
    refused(str(path), "Failed to load model")


def test_element_count_that_wraps_is_refused(tmp_path, base):
    """dims 2**32 x 2**32: numpy's uint64 product is 0 (the stock reader makes an empty view)."""
    def change(g):
        g.tensor("blk.0.attn_norm.weight").dims = [2**32, 2**32]
    assert int(np.prod(np.array([2**32, 2**32], dtype=np.uint64))) == 0
    refused(variant(tmp_path, base, change), "tensor 'blk.0.attn_norm.weight'", "2**63 elements or more")


def test_dims_and_types_are_checked(tmp_path, base):
    def five_dims(g):
        g.tensor("output_norm.weight").dims = [32, 1, 1, 1, 1]
    refused(variant(tmp_path, base, five_dims), "'output_norm.weight' has 5 dimensions")

    def q8_rows_of_33(g):
        t = g.tensor("output_norm.weight")
        t.type, t.dims = 8, [33]
    refused(variant(tmp_path, base, q8_rows_of_33), "rows of 33 elements, not a multiple of its block size 32")

    def unknown_type(g):
        g.tensor("output_norm.weight").type = 99
    refused(variant(tmp_path, base, unknown_type), "'output_norm.weight' has unknown ggml type 99")


def test_tensor_table_sizes_by_hand():
    """check_tensor_table's sizes: F32 [32] = 128 bytes; Q4_0 [64, 2] = 2 rows x 2 blocks x 18;
    an empty tensor (a GPU index's gpu_bucket) is allowed at the end and takes no bytes."""
    infos = [RawTensorInfo("a", (32,), 0, 0), RawTensorInfo("b", (64, 2), 2, 128),
             RawTensorInfo("empty", (0,), 26, 224)]
    assert check_tensor_table(infos, 224, 32) == [128, 72, 0]
    with pytest.raises(ModelLoadError, match="'b' data \\[128, 200\\) is not within"):
        check_tensor_table(infos[:2], 199, 32)
    with pytest.raises(ModelLoadError, match="'a' and 'c' overlap: both hold bytes from 96 to 128"):
        check_tensor_table(infos[:1] + [RawTensorInfo("c", (32,), 0, 96)], 1024, 32)
    with pytest.raises(ModelLoadError, match="has 0 dimensions"):
        check_tensor_table([RawTensorInfo("s", (), 0, 0)], 1024, 32)


# ---- the vocabulary against the embedding and the hyper-parameters ----

def _grow_vocab(g, k=1, vocab_size=True):
    """k more tokens in every tokenizer array (and vocab_size): only the tensors disagree."""
    g.kv("tokenizer.ggml.tokens").value += [b"<new%d>" % i for i in range(k)]
    g.kv("tokenizer.ggml.token_type").value += [1] * k
    if vocab_size:
        g.kv("llama.vocab_size").value += k


def test_vocabulary_larger_than_the_embedding_is_refused(tmp_path, base):
    path = variant(tmp_path, base, _grow_vocab)
    refused(path, f"tensor 'token_embd.weight' has shape [32, {N_VOCAB}], expected [n_embd, {N_VOCAB + 1}]")
    # before the check the file loaded and failed only when the new token's id was evaluated
    with pytest.raises(ModelLoadError, match="token_embd.weight"):
        Llama(path, verbose=False)


def test_output_rows_must_match_the_vocabulary(tmp_path, base):
    def change(g):
        g.tensor("output.weight").dims[1] -= 1
    refused(variant(tmp_path, base, change),
            f"tensor 'output.weight' has shape [32, {N_VOCAB - 1}], expected [n_embd, {N_VOCAB}]")


def test_vocab_size_key_must_match_the_tokens(tmp_path, base):
    def change(g):
        g.kv("llama.vocab_size").value = 100
    refused(variant(tmp_path, base, change),
            f"'llama.vocab_size' is 100, but tokenizer.ggml.tokens holds {N_VOCAB}")


def test_vocabulary_arrays_of_the_wrong_type(tmp_path, base):
    def tokens_as_numbers(g):
        kv = g.kv("tokenizer.ggml.tokens")
        kv.item_type, kv.value = raw.U32, list(range(len(kv.value)))
    path = variant(tmp_path, base, tokens_as_numbers)
    with pytest.raises(ModelLoadError, match="tokenizer.ggml.tokens' must be an array of strings"):
        Tokenizer.from_gguf(GGUFFile(path).reader)

    def add_bos_as_string(g):
        kv = g.kv("tokenizer.ggml.add_bos_token")
        kv.type, kv.value = raw.STRING, b"yes"
    path = variant(tmp_path, base, add_bos_as_string)
    with pytest.raises(ModelLoadError, match="'tokenizer.ggml.add_bos_token' must be true or false, found str"):
        Llama(path, verbose=False)
    # the tokenizer checks it too when it reads a file through the stock reader
    with pytest.raises(ModelLoadError, match="'tokenizer.ggml.add_bos_token' must be a bool, found STRING"):
        Tokenizer.from_gguf(path)


@pytest.mark.parametrize("key,kind,value,words", [
    ("llama.context_length", raw.F32, float("inf"),
     "'llama.context_length' must be an integer, found float inf"),
    ("llama.embedding_length", raw.STRING, b"64", "'llama.embedding_length' must be an integer, found str"),
    ("llama.rope.freq_base", raw.STRING, b"1e4", "'llama.rope.freq_base' must be a number, found str"),
    ("tokenizer.chat_template", raw.U32, 7, "'tokenizer.chat_template' must be a string, found int 7"),
    ("general.architecture", raw.U32, 1, "'general.architecture' must be a string"),
])
def test_standard_keys_of_the_wrong_type(tmp_path, base, key, kind, value, words):
    """Keys whose type is fixed (llama.cpp: "key has wrong type") are checked when the file is
    read, before any code converts them with int() or compiles them."""
    def change(g):
        g.kvs = [kv for kv in g.kvs if kv.key != key.encode()] + [raw.KV(key.encode(), kind, value)]
    refused(variant(tmp_path, base, change), words)


def test_byte_token_with_another_text_is_refused_at_load(tmp_path, base):
    """token_to_piece reads a BYTE token's value from its <0xXX> text: any other text is
    refused when the vocabulary is built, not when the token is first detokenized."""
    def change(g):
        g.kv("tokenizer.ggml.token_type").value[5] = 6
    path = variant(tmp_path, base, change)
    with pytest.raises(ModelLoadError, match="token 5 has type BYTE, but its text b'.*' is not <0xXX>"):
        Llama(path, verbose=False)


# ---- hyper-parameters (ModelConfig) ----

MD = {"general.architecture": "llama", "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
      "llama.embedding_length": 64, "llama.block_count": 2, "llama.feed_forward_length": 128,
      "llama.context_length": 256, "llama.rope.freq_base": 10000.0}


def test_valid_hyper_parameters():
    cfg = ModelConfig.from_metadata(MD, n_vocab=96)
    assert (cfg.head_dim, cfg.rope_dims, cfg.n_head_kv) == (16, 16, 2)


@pytest.mark.parametrize("key,value,words", [
    ("llama.rope.freq_base", -1.0, "rope_freq_base is -1.0"),
    ("llama.rope.freq_base", 0.0, "rope_freq_base is 0.0"),
    ("llama.rope.freq_base", math.nan, "rope_freq_base is nan"),
    ("llama.attention.head_count", 0, "n_head is 0"),
    ("llama.attention.head_count_kv", 3, "n_head (4) is not a multiple of n_head_kv (3)"),
    ("llama.embedding_length", 0, "n_embd is 0"),
    ("llama.block_count", 0, "n_layer is 0"),
    ("llama.feed_forward_length", 0, "n_ff is 0"),
    ("llama.context_length", 0, "n_ctx_train is 0"),
    ("llama.rope.dimension_count", 15, "RoPE dimension count 15 must be even"),
    ("llama.rope.dimension_count", 32, "at most the head size 16"),
    ("llama.attention.layer_norm_rms_epsilon", -1e-5, "rms_eps is -1e-05"),
    ("llama.block_count", "2", "'llama.block_count' must be an integer, found str"),
    ("llama.attention.head_count", [4, 4], "must be an integer, found list"),
    ("llama.rope.freq_base", "1e4", "'llama.rope.freq_base' must be a number"),
    ("llama.rope.scaling.type", "linear", "'llama.rope.scaling.factor' is 0.0"),
])
def test_hyper_parameters_no_model_can_have(key, value, words):
    md = {**MD, key: value}
    if key == "llama.rope.scaling.type":
        md["llama.rope.scaling.factor"] = 0.0
    with pytest.raises(UnsupportedModelError) as info:
        ModelConfig.from_metadata(md, n_vocab=96)
    assert words in str(info.value)
    assert isinstance(info.value, ModelLoadError)


def test_rope_theta_minus_one_in_a_file_is_refused_at_load(tmp_path, base):
    def change(g):
        g.kv("llama.rope.freq_base").value = -1.0
    with pytest.raises(UnsupportedModelError, match="rope_freq_base is -1.0"):
        Llama(variant(tmp_path, base, change), verbose=False)


# ---- what only the model builder and the chat setup see ----

@pytest.mark.parametrize("ggml_type, name", [(24, "I8"), (9, "Q8_1"), (26, "I32")])
def test_a_weight_of_a_type_without_kernels_is_refused_at_load(tmp_path, base, ggml_type, name):
    """The file itself is valid (the tensor shrinks, in bounds), but no kernel reads that type as a
    weight: Llama() refuses it at load instead of the first forward raising a TypeError."""
    def change(g):
        g.tensor("blk.0.ffn_gate.weight").type = ggml_type
    path = variant(tmp_path, base, change)
    if ggml_type == 9:     # Q8_1 rows of 32 elements: the tensor table must accept the shape first
        try:
            GGUFFile(path)
        except ModelLoadError:
            pytest.skip("this Q8_1 layout is refused by the tensor table already")
    with pytest.raises(ModelLoadError, match=f"'blk.0.ffn_gate.weight' has type {name}, which is not a weight type"):
        Llama(path, n_ctx=32, verbose=False)


def test_a_chat_template_that_does_not_parse_is_a_value_error(tmp_path, base):
    from pyinfer.chat import ChatTemplateError

    def change(g):
        g.kv("tokenizer.chat_template").value = b"{% for %}"
    path = variant(tmp_path, base, change)
    with pytest.raises(ChatTemplateError, match=r"not valid Jinja \(line 1\)") as info:
        Llama(path, n_ctx=32, verbose=False)
    assert isinstance(info.value, ValueError)
