"""scripts/bench.py runs end to end (pyinfer only, tiny sizes): one child
process per run, a JSON report with every run and the medians. No timing
is asserted, only that the numbers exist and the counts are the ones asked
for."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_script_pyinfer_only(smollm2, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--model", str(smollm2),
           "--engines", "pyinfer", "--runs", "2", "--n-prompt", "12", "--n-gen", "3",
           "--n-ctx", "64", "--threads", "2", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "medians" in proc.stdout
    report = json.loads(out.read_text())
    runs = report["runs"]["pyinfer"]
    assert len(runs) == 2
    for r in runs:
        assert r["n_prompt"] == 12 and len(r["prompt_tokens"]) == 12
        assert r["n_gen"] == 3 and len(r["tokens"]) == 3
        assert r["prompt_tps"] > 0 and r["decode_tps"] > 0 and r["rss_mib"] > 0
    assert runs[0]["tokens"] == runs[1]["tokens"]          # greedy: the same every run
    assert set(report["medians"]) == {"pyinfer"}
