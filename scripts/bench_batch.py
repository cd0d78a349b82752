"""Batched decoding of several sequences: throughput and the cost of batch invariance.

For each model: decode tokens/s of N sequences decoding together (one Engine.decode_batch per
step) for N = 1, 2, 4, 8, 16, in the invariant mode (the default: every token computed
exactly as when decoded alone — rowwise products, rowwise attention) and in llama.cpp's
batched order (the prompt kernels: GEMM orders for F16/F32/BF16 and the K-quants, but a
token's logits then depend on the batch); and single-sequence decode in a one-sequence engine
and in a 16-sequence one (the streams must cost nothing).

    python scripts/bench_batch.py [--model M ...] [--threads 2] [--steps 32] [--reps 3]

Medians of --reps runs; prints a markdown table and writes --json. Run it on a quiet machine
(the load average is printed with the results).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent / "src"))   # a source checkout

from pyinfer.config import ContextSettings  # noqa: E402
from pyinfer.default_model import require_default_model  # noqa: E402
from pyinfer.engine import Engine  # noqa: E402


def batch_rate(eng: Engine, n: int, steps: int, rowwise: bool) -> float:
    """Tokens/s of n sequences decoding `steps` tokens each, one forward per step."""
    for s in range(n):
        eng.truncate(0, seq=s)
        eng.decode([1 + s, 2, 3, 4], seq=s)
    t = time.perf_counter()
    for i in range(steps):
        items = [(s, [10 + (i + s) % 50]) for s in range(n)]
        with eng._lock:               # the benchmark's one reach inside: choose the order
            eng._run(items, n, False, rowwise=rowwise)
    return n * steps / (time.perf_counter() - t)


def single_rate(path: str, threads: int, n_seq: int, steps: int) -> float:
    eng = Engine(path, ContextSettings(n_ctx=256, n_threads=threads, n_seq_max=n_seq))
    try:
        eng.decode([1, 2, 3, 4])
        t = time.perf_counter()
        for i in range(steps):
            eng.decode([10 + i % 50])
        return steps / (time.perf_counter() - t)
    finally:
        eng.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="GGUF file (repeatable; default: SmolLM2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sizes", default="1,2,4,8,16")
    ap.add_argument("--json", default="bench_batch.json")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    results = {"load_before": os.getloadavg(), "threads": args.threads, "models": {}}
    for path in args.model or [str(require_default_model())]:
        name = Path(path).name
        eng = Engine(path, ContextSettings(n_ctx=256, n_threads=args.threads, n_seq_max=max(sizes)))
        rows = {}
        try:
            for n in sizes:
                r = {mode: statistics.median(batch_rate(eng, n, args.steps, mode == "invariant")
                                             for _ in range(args.reps))
                     for mode in ("invariant", "llama.cpp order")}
                rows[n] = r
                print(f"{name} N={n}: invariant {r['invariant']:.1f} tok/s, llama.cpp order "
                      f"{r['llama.cpp order']:.1f} tok/s", flush=True)
        finally:
            eng.close()
        one = {k: statistics.median(single_rate(path, args.threads, s, args.steps) for _ in range(args.reps))
               for k, s in (("n_seq_max=1", 1), ("n_seq_max=16", 16))}
        print(f"{name} single sequence: {one}", flush=True)
        results["models"][name] = {"batched": rows, "single": one}
    results["load_after"] = os.getloadavg()
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"\nload average before {results['load_before']}, after {results['load_after']}; "
          f"{args.threads} threads\n")
    for name, m in results["models"].items():
        print(f"### {name}\n\n| sequences | invariant tok/s | llama.cpp order tok/s | cost | vs N=1 |")
        print("|---|---|---|---|---|")
        base = m["batched"][sizes[0]]["invariant"]
        for n, r in m["batched"].items():
            inv, fast = r["invariant"], r["llama.cpp order"]
            print(f"| {n} | {inv:.1f} | {fast:.1f} | {inv / fast - 1:+.0%} | {inv / base:.2f}x |")
        print("\n" + "; ".join(f"{k}: {v:.1f} tok/s" for k, v in m["single"].items()) + "\n")


if __name__ == "__main__":
    main()
