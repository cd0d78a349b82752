"""scripts/bench_server.py runs end to end against our server only (SmolLM2, tiny sizes): the
JSON report holds every level of every repetition and their medians, the token and request
counts are the ones asked for, and its percentiles agree with numpy's over the per-request
records it keeps. No timing is asserted beyond being positive and ordered."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_server.py"
sys.path.insert(0, str(SCRIPT.parent))
import bench_server  # noqa: E402

FIELDS = {"requests", "errors", "wall_s", "tokens", "not_length", "chunks_per_token",
          "tok_per_s", "req_per_s", "ttft_p50", "ttft_p95", "itl_p50", "itl_p95", "tpot_p50",
          "latency_p50", "latency_p95", "server_cpu_s", "tok_per_cpu_s", "other_cores", "clients"}


def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50):
        v = rng.exponential(size=n).tolist()
        for q in (0, 50, 95, 100):
            assert abs(bench_server.percentile(v, q) - np.percentile(v, q)) < 1e-12
    assert bench_server.percentile([], 50) is None


def test_prompts_are_distinct_from_their_first_word():
    p = bench_server.prompts(200)
    assert len(set(p)) == 200
    first32 = p[:32]
    assert len({x.split()[0] + x.split()[1] for x in first32}) == 32


def test_bench_server_ours_only(smollm2, tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    levels, max_tokens, reps = [1, 3], 4, 2
    cmd = [sys.executable, str(SCRIPT), "--model", str(smollm2), "--ours-only",
           "--levels", *map(str, levels), "--max-tokens", str(max_tokens), "--reps", str(reps),
           "--threads", "2", "--n-ctx", "256", "--json", str(out), "--md", str(md)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["medians"]) == {"ours"} and "ratios" not in report
    assert report["load"]["start"]["cpus"] >= 1 and len(report["load"]["end"]["loadavg"]) == 3
    rows = report["reps"]["ours"]
    assert [(r["clients"], r["rep"]) for r in rows] == [(c, k) for c in levels for k in range(reps)]
    for row in rows:
        c = row["clients"]
        assert FIELDS <= set(row) and row["errors"] == []
        assert row["requests"] == c and row["not_length"] == 0
        assert row["tokens"] == c * max_tokens
        assert abs(row["tok_per_s"] - row["tokens"] / row["wall_s"]) < 1e-9
        assert abs(row["req_per_s"] - c / row["wall_s"]) < 1e-9
        assert 0 < row["chunks_per_token"] <= 1
        assert row["other_cores"] >= 0 and row["server_cpu_s"] > 0
        reqs = row["per_request"]
        assert len(reqs) == c and all(r["tokens"] == max_tokens for r in reqs)
        assert all(r["finish_reason"] == "length" for r in reqs)
        ttft = [r["ttft"] for r in reqs]
        lat = [r["latency"] for r in reqs]
        assert all(0 < t <= l <= row["wall_s"] for t, l in zip(ttft, lat))
        assert abs(row["ttft_p50"] - np.percentile(ttft, 50)) < 1e-9
        assert abs(row["ttft_p95"] - np.percentile(ttft, 95)) < 1e-9
        assert abs(row["latency_p95"] - np.percentile(lat, 95)) < 1e-9
        if row["itl_p50"] is not None:
            assert 0 < row["itl_p50"] <= row["itl_p95"]
    for c in levels:
        med = report["medians"]["ours"][str(c)]
        mine = [r for r in rows if r["clients"] == c]
        assert med["tok_per_s"] == np.median([r["tok_per_s"] for r in mine])
        assert med["tokens"] == c * max_tokens and med["errors"] == []
    text = md.read_text()
    assert "tok/s ours" in text and "theirs" not in text
    assert all(f"| {c} |" in text for c in levels)


def test_bench_server_refuses_a_python_without_llama_cpp_server(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\n"
                    "echo 'ModuleNotFoundError: No module named llama_cpp' >&2\nexit 1\n")
    fake.chmod(0o755)
    cmd = [sys.executable, str(SCRIPT), "--model", str(tmp_path / "unused.gguf"),
           "--theirs-python", str(fake), "--reps", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "cannot import llama_cpp's server" in proc.stderr and "--ours-only" in proc.stderr
