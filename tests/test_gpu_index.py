"""PowerInfer's GPU index file (pyinfer/offload/gpu_index.py): round trip, the exact bytes (checked
by a small GGUF parser written here, independent of the gguf package), files written the
way PowerInfer's exporter writes them, and ensure_gpu_index's reuse/regenerate rules."""
import os
import struct
import warnings

import gguf
import numpy as np
import pytest

from pyinfer.convert.profile import ProfileResult
from pyinfer.gguf_model import ModelLoadError
from pyinfer.offload.gpu_index import (GpuIndex, ensure_gpu_index, gpu_index_path, read_gpu_index,
                               write_gpu_index)
from pyinfer.llama_options import LlamaOptions
from reference.tiny_model import write_tiny_llama


def _random_index(rng, n_layer=3, n_ff=100, capacity=(1 << 40) + 12345):
    return GpuIndex(capacity, [(rng.random(n_ff) < p).astype(np.int32)
                               for p in np.linspace(0.0, 1.0, n_layer)])


def _parse(path):
    """Minimal GGUF v3 parser: (magic, version, kvs {key: (type, value)} in order, tensors
    [(name, dims, type, offset)], data start)."""
    b = open(path, "rb").read()
    magic, version, n_t, n_kv = struct.unpack_from("<4sIQQ", b, 0)
    off = 24

    def string(o):
        n = struct.unpack_from("<Q", b, o)[0]
        return b[o + 8:o + 8 + n].decode(), o + 8 + n

    kvs = {}
    for _ in range(n_kv):
        key, off = string(off)
        vt = struct.unpack_from("<I", b, off)[0]
        off += 4
        if vt == 8:
            val, off = string(off)
        elif vt == 4:
            val, off = struct.unpack_from("<I", b, off)[0], off + 4
        elif vt == 10:
            val, off = struct.unpack_from("<Q", b, off)[0], off + 8
        else:
            raise AssertionError(f"unexpected value type {vt} for {key}")
        kvs[key] = (vt, val)
    tensors = []
    for _ in range(n_t):
        name, off = string(off)
        nd = struct.unpack_from("<I", b, off)[0]
        dims = struct.unpack_from(f"<{nd}Q", b, off + 4)
        off += 4 + 8 * nd
        ttype, toff = struct.unpack_from("<IQ", b, off)
        off += 12
        tensors.append((name, dims, ttype, toff))
    data = -(-off // 32) * 32
    return magic, version, kvs, tensors, data, b


def test_round_trip(tmp_path):
    idx = _random_index(np.random.default_rng(0))
    path = str(tmp_path / "m.gguf.generated.gpuidx")
    write_gpu_index(path, idx)
    back = read_gpu_index(path)
    assert back.vram_capacity == idx.vram_capacity
    assert len(back.gpu_idx) == 3
    for a, b in zip(idx.gpu_idx, back.gpu_idx):
        np.testing.assert_array_equal(a, b)
    assert back.n_gpu[0] == 0 and back.n_gpu[-1] == 100


def test_bytes_match_powerinfer_format(tmp_path):
    idx = _random_index(np.random.default_rng(1), n_layer=2, n_ff=64)
    path = str(tmp_path / "x.gpuidx")
    write_gpu_index(path, idx)
    magic, version, kvs, tensors, data, raw = _parse(path)
    assert magic == b"PWRI" and version == 3
    assert list(kvs) == ["general.architecture", "generic.gpu_index.block_count", "split.vram_capacity"]
    assert kvs["general.architecture"] == (8, "generic.gpu_index")
    assert kvs["generic.gpu_index.block_count"] == (4, 2)                 # u32
    assert kvs["split.vram_capacity"] == (10, idx.vram_capacity)          # u64
    assert [t[0] for t in tensors] == ["blk.0.gpu_idx", "blk.0.gpu_bucket", "blk.1.gpu_idx", "blk.1.gpu_bucket"]
    for name, dims, ttype, off in tensors:
        assert ttype == 26                                                 # GGML_TYPE_I32
        layer = int(name.split(".")[1])
        want = idx.gpu_idx[layer] if name.endswith("gpu_idx") else np.flatnonzero(idx.gpu_idx[layer])
        assert dims == (len(want),)
        got = np.frombuffer(raw, dtype="<i4", count=len(want), offset=data + off)
        np.testing.assert_array_equal(got, want)
    buckets = [np.frombuffer(raw, "<i4", t[1][0], data + t[3]) for t in tensors if t[0].endswith("bucket")]
    assert all(np.all(np.diff(bk) > 0) for bk in buckets)                  # ascending ids


def _write_like_powerinfer(path, masks, capacity, with_bucket=True):
    """The way PowerInfer's exporter writes the file: tensors added with raw I32 dtype, then
    the block count and capacity keys; the magic and version patched afterwards."""
    w = gguf.GGUFWriter(str(path), "generic.gpu_index")
    for i, m in enumerate(masks):
        m = m.astype(np.int32)
        w.add_tensor(f"blk.{i}.gpu_idx", m, raw_shape=m.shape[::-1], raw_dtype=gguf.GGMLQuantizationType.I32)
        if with_bucket:
            bk = np.sort(np.flatnonzero(m)).astype(np.int32)
            w.add_tensor(f"blk.{i}.gpu_bucket", bk, raw_shape=bk.shape[::-1],
                         raw_dtype=gguf.GGMLQuantizationType.I32)
    w.add_block_count(len(masks))
    w.add_uint64("split.vram_capacity", capacity)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(path, "r+b") as f:
        f.write(struct.pack("<I", int.from_bytes(b"PWRI", "little")))
        f.write(struct.pack("<I", 3))


@pytest.mark.parametrize("with_bucket", [True, False])
def test_reads_files_powerinfer_wrote(tmp_path, with_bucket):
    rng = np.random.default_rng(2)
    masks = [(rng.random(256) < 0.3).astype(np.int32) for _ in range(4)]
    path = tmp_path / "p.gpuidx"
    _write_like_powerinfer(path, masks, 5 << 30, with_bucket)
    idx = read_gpu_index(str(path))
    assert idx.vram_capacity == 5 << 30
    for a, b in zip(masks, idx.gpu_idx):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(idx.bucket(2), np.flatnonzero(masks[2]))
    # and ours equals theirs byte for byte when both write buckets
    if with_bucket:
        ours = tmp_path / "o.gpuidx"
        write_gpu_index(str(ours), GpuIndex(5 << 30, masks))
        assert ours.read_bytes() == path.read_bytes()


def test_rejects_inconsistent_files(tmp_path):
    path = tmp_path / "bad.gpuidx"
    masks = [np.array([1, 0, 1, 1], dtype=np.int32)]
    w = gguf.GGUFWriter(str(path), "generic.gpu_index")
    w.add_tensor("blk.0.gpu_idx", masks[0], raw_dtype=gguf.GGMLQuantizationType.I32)
    w.add_tensor("blk.0.gpu_bucket", np.array([0, 3], dtype=np.int32), raw_dtype=gguf.GGMLQuantizationType.I32)
    w.add_block_count(1)
    w.add_uint64("split.vram_capacity", 1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match="gpu_bucket disagrees"):
        read_gpu_index(str(path))
    model = write_tiny_llama(tmp_path / "m.gguf", powerinfer=True)
    with pytest.raises(ModelLoadError, match="not a GPU index"):
        read_gpu_index(str(model))


@pytest.fixture
def profiled_model(tmp_path):
    """A tiny PowerInfer model (2 layers x 128 neurons, F32: 768 bytes per neuron) with a
    planted profile in activation/ beside it: layer 0 hotter than layer 1."""
    path = str(write_tiny_llama(tmp_path / "m.gguf", powerinfer=True))
    rng = np.random.default_rng(0)
    counts = np.stack([rng.integers(0, 1000, 128), rng.integers(0, 300, 128)]).astype(np.int64)
    ProfileResult(counts, 1000).save(str(tmp_path / "activation"))
    return path, counts


def test_ensure_writes_reuses_and_regenerates(profiled_model):
    """(PowerInfer's mass objective: with the default speeds a layer this small is not worth
    a CPU/GPU round trip, and the time objective rightly places nothing.)"""
    from pyinfer.offload.solver import Speeds
    path, counts = profiled_model
    sp = Speeds(objective="mass")
    idx_path = gpu_index_path(path)
    assert idx_path == path + ".generated.gpuidx"
    budget = 64 * 768
    idx = ensure_gpu_index(path, budget, group=16, speeds=sp)
    assert os.path.exists(idx_path) and idx.vram_capacity == budget
    assert sum(idx.n_gpu) * 768 <= budget and sum(idx.n_gpu) > 0
    for layer in range(2):     # each layer's GPU neurons are its hottest
        on = counts[layer][idx.gpu_idx[layer] == 1]
        off = counts[layer][idx.gpu_idx[layer] == 0]
        assert on.size == 0 or off.size == 0 or on.min() >= off.max()
    stamp = os.stat(idx_path).st_mtime_ns
    again = ensure_gpu_index(path, 2 * budget, group=16, speeds=sp)          # made for less: reused
    assert os.stat(idx_path).st_mtime_ns == stamp and again.vram_capacity == budget
    smaller = ensure_gpu_index(path, budget // 2, group=16, speeds=sp)       # made for more: regenerated
    assert smaller.vram_capacity == budget // 2 and sum(smaller.n_gpu) * 768 <= budget // 2
    assert read_gpu_index(idx_path).vram_capacity == budget // 2
    reset = ensure_gpu_index(path, 4 * budget, reset=True, group=16, speeds=sp)
    assert read_gpu_index(idx_path).vram_capacity == 4 * budget and sum(reset.n_gpu) > sum(smaller.n_gpu)


def test_ensure_disable_and_uniform_fallback(tmp_path):
    path = str(write_tiny_llama(tmp_path / "m.gguf", powerinfer=True))
    assert ensure_gpu_index(path, 1 << 20, disable=True) is None
    assert not os.path.exists(gpu_index_path(path))
    from pyinfer.offload.solver import Speeds
    idx = ensure_gpu_index(path, 100 * 768, group=16, speeds=Speeds(objective="mass"))
    assert sum(idx.n_gpu) == 96     # 6 groups of 16 fit, spread over equally hot layers
    with pytest.raises(ValueError):
        ensure_gpu_index(path, -1)


def test_gpu_index_command_calibrates_without_a_profile(tmp_path):
    """The runtime never profiles; `python convert.py gpu-index` hands ensure_gpu_index a dense
    calibration run, whose hottest neurons are the ones placed."""
    from tiny_chat_model import write_tiny_chat_model
    from pyinfer.convert.plan_cli import _calibration
    from pyinfer.offload.solver import Speeds
    path = str(write_tiny_chat_model(tmp_path / "chat.gguf", powerinfer=True))
    calibrate = _calibration(64, 1)
    freq, source = calibrate(path)
    assert "64-token dense calibration" in source and len(freq) == 2
    assert _calibration(0, 1) is None
    idx = ensure_gpu_index(path, 64 * 2 * _neuron_bytes(path), calibrate=calibrate, group=32,
                           speeds=Speeds(objective="mass"))
    assert sum(idx.n_gpu) == 128
    for f, m in zip(freq, idx.gpu_idx):
        on = np.flatnonzero(m)
        assert f[on].min() >= np.sort(f)[::-1][len(on) - 1] - 1e-12   # the hottest neurons of the layer


def _neuron_bytes(path):
    from pyinfer.gguf_model import GGUFFile
    from pyinfer.offload.solver import layer_neuron_bytes
    sizes, _ = layer_neuron_bytes(GGUFFile(path))
    assert len(set(sizes)) == 1
    return sizes[0]


def test_llama_options_take_the_gpu_index_keywords(tmp_path):
    from pyinfer import Llama
    from tiny_chat_model import write_tiny_chat_model
    path = str(write_tiny_chat_model(tmp_path / "m.gguf", powerinfer=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        llm = Llama(path, n_ctx=64, n_threads=2, reset_gpu_index=True, disable_gpu_index=True, verbose=False)
    assert llm._opts.reset_gpu_index and llm._opts.disable_gpu_index
    llm.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opts = LlamaOptions.from_keywords({"model_path": "m", **_required()},
                                          {"reset_gpu_index": True, "disable_gpu_index": True})
    assert opts.reset_gpu_index and opts.disable_gpu_index
    with pytest.warns(RuntimeWarning, match="reset_gpu_idx"):
        LlamaOptions.from_keywords({"model_path": "m", **_required()}, {"reset_gpu_idx": True})


def _required():
    from dataclasses import MISSING, fields
    return {f.name: None for f in fields(LlamaOptions) if f.default is MISSING and f.name != "model_path"}
