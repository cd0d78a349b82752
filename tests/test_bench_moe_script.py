"""scripts/make_moe_bench_model.py and scripts/bench_moe.py run end to end at tiny sizes
(the fixtures' shapes, pyinfer's own converter and quantizer, pyinfer alone): no torch,
no llama.cpp, no timing asserted, only that the files and the reports are what was asked
for."""
import json
import subprocess
import sys
from pathlib import Path

import gguf

from pyinfer.convert.checkpoint import read_safetensors_header

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def build(tmp_path, *extra):
    cmd = [sys.executable, str(SCRIPTS / "make_moe_bench_model.py"), "--shape", "tiny-olmoe,tiny-qwen3moe",
           "--layers", "3", "--out", str(tmp_path), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return {s: json.loads((tmp_path / s / "manifest.json").read_text()) for s in ("tiny-olmoe", "tiny-qwen3moe")}


def test_builder_writes_checkpoint_and_quantized_gguf(tmp_path):
    manifests = build(tmp_path, "--keep-hf", "--keep-f16")
    for shape, m in manifests.items():
        d = tmp_path / shape
        assert m["n_layer"] == 3 and m["n_expert"] == 8 and m["n_expert_used"] == 2
        assert m["converter"].startswith("pyinfer") and m["quantizer"].startswith("pyinfer")
        # the checkpoint: one F16 tensor per expert and projection, as real checkpoints have them
        _, header = read_safetensors_header(str(d / "hf" / "model.safetensors"))
        experts = [k for k in header if ".mlp.experts." in k]
        assert len(experts) == 3 * 8 * 3
        assert all(v["dtype"] == "F16" for k, v in header.items() if k != "__metadata__")
        cfg = json.loads((d / "hf" / "config.json").read_text())
        assert cfg["num_hidden_layers"] == 3
        # the GGUFs: experts stacked into 3-D tensors, the quantized one with quantized experts
        for path, float_only in ((d / f"{shape}.f16.gguf", True), (Path(m["file"]), False)):
            r = gguf.GGUFReader(str(path))
            arch = "olmoe" if "olmoe" in shape else "qwen3moe"
            assert bytes(r.fields["general.architecture"].parts[-1]).decode() == arch
            assert int(r.fields[f"{arch}.block_count"].parts[-1][0]) == 3
            exps = {t.name: t for t in r.tensors if "_exps" in t.name}
            assert len(exps) == 3 * 3
            assert all(list(t.shape)[-1] == 8 for t in exps.values())      # {K, M, n_expert}
            gate_up = {t.tensor_type.name for n, t in exps.items() if "down" not in n}
            if float_only:
                assert {t.tensor_type.name for t in exps.values()} == {"F16"}
            else:       # K = 32 quantizes (ffn_down's K = 16 stays F16 as in llama.cpp's own file)
                assert not gate_up & {"F16", "F32"}, gate_up


def test_builder_removes_intermediates_by_default(tmp_path):
    build(tmp_path)
    for shape in ("tiny-olmoe", "tiny-qwen3moe"):
        names = sorted(p.name for p in (tmp_path / shape).iterdir())
        assert names == sorted(["manifest.json", f"{shape}.q4_k_m.gguf"])


def test_bench_moe_ours_only(tmp_path):
    manifests = build(tmp_path)
    files = ",".join(m["file"] for m in manifests.values())
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    cmd = [sys.executable, str(SCRIPTS / "bench_moe.py"), "--model", files, "--ours-only", "--runs", "2",
           "--n-prompt", "12", "--n-gen-prompt", "4", "--n-gen", "3", "--n-ctx", "64",
           "--op-timing", "2", "--json", str(out), "--md", str(md)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert len(report["results"]) == 2
    for res in report["results"]:
        runs = res["runs"]["pyinfer"]
        assert len(runs) == 2 and set(res["medians"]) == {"pyinfer"}
        for r in runs:
            assert r["n_prompt"] == 12 and r["n_gen"] == 3 and len(r["tokens"]) == 3
            assert r["prompt_tps"] > 0 and r["decode_tps"] > 0 and r["rss_mib"] > 0
        assert runs[0]["tokens"] == runs[1]["tokens"]          # greedy: the same every run
        assert len(res["loadavg_before"]) == 3 and res["manifest"]["n_expert"] == 8
        ops = res["op_timing"]          # every kind of product timed, on the file's own weights
        for kind in ("gate", "up", "down"):
            assert any(c.startswith(f"mul_mat_id ffn_{kind}_exps") for c in ops)
            assert any(c.startswith(f"mul_mat same bytes as ffn_{kind}") for c in ops)
        assert "mul_mat attention projections (as loaded)" in ops
        assert all(v["us_per_layer"] > 0 and v["weight_mib_per_layer"] > 0 for v in ops.values())
    table = md.read_text()
    assert "tiny-olmoe x3 layers, 8 experts top-2 | pyinfer |" in table
    assert "tiny-qwen3moe x3 layers" in table
