"""Training-free (CATS) sparsity: decode speed and perplexity against the dense model.

    python scripts/bench_cats.py MODEL.gguf [--sparsity 0.3,0.4,0.5,0.7] [--runs 5]
        [--threads 1] [--cpu-time] [--ppl-chunks 8] [--workdir /tmp/cats_bench]
        [--extra NAME=CALIBRATED.gguf ...]

Calibrates a copy of MODEL per sparsity (cached in --workdir; `python -m
pyinfer.sparsity calibrate` with its defaults), then for each run decodes --n
greedy tokens after a fixed prompt with every model, each in a fresh subprocess,
models interleaved run after run; reports tokens/s (median, min..max) and the
ratio to the dense model; with --cpu-time tokens per second of process CPU time
(what the code costs; robust on a shared machine), else by the wall clock. Also
prompt processing (--prompt tokens in one batch). With --ppl-chunks N > 0, the
perplexity of every model on the first N chunks of 512 tokens of the default
corpus (disjoint from the calibration text).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time, resource
from pyinfer.engine import Engine, ContextSettings
path, threads, n, n_prompt, cpu = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
clock = (lambda: time.process_time()) if cpu else time.perf_counter
eng = Engine(path, ContextSettings(n_ctx=max(512, n_prompt + n + 32), n_threads=threads, n_threads_batch=threads))
prompt = [(7 * i + 3) % 4000 + 100 for i in range(n_prompt)]
eng.decode(prompt[:8]); eng.truncate(0)                     # warm the pages and the pool
t0 = clock(); logits = eng.decode(prompt); t_prompt = clock() - t0
tok = int(logits.argmax())
t0 = clock()
for _ in range(n):
    tok = int(eng.decode([tok]).argmax())
t_dec = clock() - t0
print(json.dumps({"prompt": n_prompt / t_prompt, "decode": n / t_dec, "mode": eng.ffn_mode}))
"""


def calibrated(model: str, s: float, workdir: Path) -> str:
    out = workdir / f"{Path(model).stem}.cats{round(s * 100)}.gguf"
    if not out.exists():
        subprocess.run([sys.executable, "-m", "pyinfer.sparsity", "calibrate", model, "--sparsity", str(s),
                        "-o", str(out)], check=True)
    return str(out)


def one_run(path: str, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", CHILD, path, str(args.threads), str(args.n), str(args.prompt),
                        "1" if args.cpu_time else "0"], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def perplexity(path: str, chunks: int, threads: int) -> float:
    r = subprocess.run([sys.executable, "-m", "pyinfer.perplexity", path, "--chunks", str(chunks),
                        "-t", str(threads), "--no-progress"], capture_output=True, text=True, check=True)
    return float(re.search(r"Final estimate: PPL = ([0-9.]+)", r.stdout).group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--sparsity", type=lambda s: [float(v) for v in s.split(",")], default=[0.3, 0.4, 0.5, 0.7])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=48, help="decoded tokens per run")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens (one batch)")
    ap.add_argument("--cpu-time", action="store_true")
    ap.add_argument("--ppl-chunks", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/cats_bench")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=PATH",
                    help="another calibrated file to run (e.g. one written with --down-t q8_0)")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    models = [("dense", args.model)] + [(f"{s:.0%}", calibrated(args.model, s, workdir)) for s in args.sparsity]
    models += [tuple(e.split("=", 1)) for e in args.extra]
    res = {name: [] for name, _ in models}
    modes = {}
    for _ in range(args.runs):
        for name, path in models:
            r = one_run(path, args)
            res[name].append(r)
            modes[name] = r["mode"]
    clock = "tok/s of CPU time" if args.cpu_time else "tok/s wall"
    print(f"\n{Path(args.model).name}: {args.threads} thread(s), {args.runs} runs, {clock}, "
          f"decode {args.n} tokens, prompt {args.prompt} tokens")
    base = {k: statistics.median(r[k] for r in res["dense"]) for k in ("decode", "prompt")}
    ppl = {name: perplexity(path, args.ppl_chunks, max(2, args.threads)) for name, path in models} \
        if args.ppl_chunks > 0 else {}
    print("| model | decode (median; min..max) | vs dense | prompt | vs dense |"
          + (" PPL | vs dense |" if ppl else ""))
    print("|---|---:|---:|---:|---:|" + ("---:|---:|" if ppl else ""))
    for name, _ in models:
        d = [r["decode"] for r in res[name]]
        p = statistics.median(r["prompt"] for r in res[name])
        row = (f"| {name} | {statistics.median(d):.1f} ({min(d):.1f}..{max(d):.1f}) | "
               f"{statistics.median(d) / base['decode']:.2f}x | {p:.0f} | {p / base['prompt']:.2f}x |")
        if ppl:
            row += f" {ppl[name]:.3f} | {ppl[name] / ppl['dense'] - 1:+.1%} |"
        print(row)
    for name, mode in modes.items():
        print(f"  {name}: {mode or 'dense FFN'}")


if __name__ == "__main__":
    main()
