"""python -m pyinfer.quantize (GGUF -> GGUF), the command lines, and the converter's memory use.

Oracles: gguf.quants for the quantized blocks; the converter's own direct
output for the equivalence of both paths; /proc/self/status VmHWM for memory.
"""
import json
import os
import subprocess
import sys
import textwrap

import gguf
import numpy as np
import pytest
from gguf.quants import quantize as gguf_quantize

from pyinfer.convert.hf_to_gguf import ConvertOptions, convert
from pyinfer.convert.quantize import quantize_file
from pyinfer.gguf_model import GGUFFile
from reference.tiny_hf import make_tiny_hf, random_weights, tiny_config, write_safetensors, write_tokenizer

import pyinfer

# the subprocesses import the same package as this test (source tree or installed)
PKG_PATHS = os.path.dirname(os.path.dirname(os.path.abspath(pyinfer.__file__)))
T = gguf.GGMLQuantizationType


def _f32_file(tmp_path):
    make_tiny_hf(tmp_path / "hf", "llama", seed=12)
    out = tmp_path / "f32.gguf"
    convert(str(tmp_path / "hf"), ConvertOptions(str(out), "f32", progress=False))
    return out


@pytest.mark.parametrize("qtype", ["q4_0", "q5_1", "q8_0"])
def test_quantize_matches_gguf_quants_and_direct_conversion(tmp_path, qtype):
    f32 = _f32_file(tmp_path)
    out = tmp_path / f"{qtype}.gguf"
    r = quantize_file(str(f32), str(out), qtype, progress=False)
    src, dst = gguf.GGUFReader(str(f32)), gguf.GGUFReader(str(out))
    want_type = T[qtype.upper()]
    assert [t.name for t in dst.tensors] == [t.name for t in src.tensors]
    for s, d in zip(src.tensors, dst.tensors):
        if s.data.ndim == 1:
            assert d.tensor_type == T.F32
            np.testing.assert_array_equal(d.data, s.data)
            continue
        expect = T.Q8_0 if s.name == "output.weight" else want_type   # llama.cpp's output rule, rows of 64
        assert d.tensor_type == expect, s.name
        np.testing.assert_array_equal(np.asarray(d.data).reshape(-1),
                                      gguf_quantize(np.asarray(s.data), expect).reshape(-1), err_msg=s.name)
    md = {k: f.contents() for k, f in dst.fields.items() if not k.startswith("GGUF.")}
    assert md["general.file_type"] == {"q4_0": 2, "q5_1": 9, "q8_0": 7}[qtype]
    assert md["tokenizer.ggml.tokens"] == src.fields["tokenizer.ggml.tokens"].contents()
    assert md["tokenizer.chat_template"] == src.fields["tokenizer.chat_template"].contents()
    assert r.types["F32"] == sum(1 for t in src.tensors if t.data.ndim == 1)
    direct = tmp_path / "direct.gguf"
    convert(str(tmp_path / "hf"), ConvertOptions(str(direct), qtype, progress=False))
    for a, b in zip(gguf.GGUFReader(str(direct)).tensors, dst.tensors):
        assert a.name == b.name and a.tensor_type == b.tensor_type
        np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))


def test_quantize_keeps_powerinfer_layout(tmp_path):
    make_tiny_hf(tmp_path / "hf", "bamboo", seed=13)
    src = tmp_path / "m.powerinfer.gguf"
    convert(str(tmp_path / "hf"), ConvertOptions(str(src), "f16", sparse=True, progress=False))
    out = tmp_path / "q.powerinfer.gguf"
    quantize_file(str(src), str(out), "q8_0", progress=False)
    with open(out, "rb") as f:
        assert f.read(4) == b"PWRI"
    a, b = GGUFFile(str(src)), GGUFFile(str(out))
    assert b.is_powerinfer and list(a.tensors) == list(b.tensors)
    assert b.metadata["general.architecture"] == "bamboo"
    t = b.tensors["blk.0.ffn_down_t.weight"]
    assert t.type == T.Q8_0 and t.ne == (64, 96)
    ref = gguf_quantize(np.asarray(a.tensors["blk.0.ffn_down_t.weight"].data).astype(np.float32), T.Q8_0)
    np.testing.assert_array_equal(np.asarray(t.data).reshape(-1), ref.reshape(-1))


def test_quantize_refuses_same_file_and_leaves_nothing(tmp_path):
    f32 = _f32_file(tmp_path)
    with pytest.raises(ValueError, match="same file"):
        quantize_file(str(f32), str(f32), "q8_0", progress=False)
    with pytest.raises(ValueError, match="unknown output type"):
        quantize_file(str(f32), str(tmp_path / "x.gguf"), "q3_k", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["f32.gguf", "hf"]


def _run(args, cwd):
    env = dict(os.environ, PYTHONPATH=PKG_PATHS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_command_lines(tmp_path):
    make_tiny_hf(tmp_path / "hf", "qwen2", seed=14)
    out = tmp_path / "m.gguf"
    r = _run(["-m", "pyinfer.convert", str(tmp_path / "hf"), "--outfile", str(out), "--outtype", "f16",
              "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and out.exists()
    q = tmp_path / "m.q4_1.gguf"
    r = _run(["-m", "pyinfer.quantize", str(out), str(q), "q4_1", "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert GGUFFile(str(q)).tensors["blk.0.attn_q.weight"].type == T.Q4_1
    r = _run(["-m", "pyinfer.convert", str(tmp_path / "nowhere"), "--outfile", str(tmp_path / "x.gguf")], tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("python -m pyinfer.convert: error: ")
    assert "nowhere" in r.stderr and len(r.stderr.splitlines()) == 1


_MEASURE = textwrap.dedent("""
    import json, sys
    from pyinfer.convert.hf_to_gguf import ConvertOptions, convert
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    base = status("VmRSS")
    r = convert(sys.argv[1], ConvertOptions(sys.argv[2], sys.argv[3], progress=False))
    print(json.dumps({"base": base, "hwm": status("VmHWM"), "seconds": r.seconds}))
""")


def test_conversion_memory_stays_near_one_tensor(tmp_path):
    """A ~230 MB BF16 checkpoint (460 MB as f32) converts to q8_0 with a peak RSS a small multiple
    of its largest tensor above the interpreter's baseline, far below the checkpoint size."""
    cfg = tiny_config("llama", vocab_size=8192, hidden_size=1024, intermediate_size=4096,
                      num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=8)
    d = tmp_path / "hf"
    d.mkdir()
    w = random_weights(cfg, seed=1)
    names = list(w)
    index = {}
    for s in range(2):
        fn = f"model-{s + 1:05d}-of-00002.safetensors"
        write_safetensors(str(d / fn), {k: w[k] for k in names[s::2]}, "BF16")
        index.update({k: fn for k in names[s::2]})
    del w
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    (d / "config.json").write_text(json.dumps(cfg))
    write_tokenizer(str(d), cfg["vocab_size"])
    ckpt_bytes = sum(os.path.getsize(d / f) for f in set(index.values()))
    largest_f32 = cfg["vocab_size"] * cfg["hidden_size"] * 4
    r = _run(["-c", _MEASURE, str(d), str(tmp_path / "m.gguf"), "q8_0"], cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    extra = m["hwm"] - m["base"]
    print(f"checkpoint {ckpt_bytes / 2**20:.0f} MiB, peak RSS above baseline {extra / 2**20:.0f} MiB, "
          f"largest tensor (f32) {largest_f32 / 2**20:.0f} MiB, {m['seconds']:.1f} s")
    assert extra < 3 * largest_f32 + (64 << 20)
    assert extra < ckpt_bytes / 2
