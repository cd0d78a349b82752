#!/usr/bin/env python3
"""Offload on a device backend, measured: per placement (CPU only, n_gpu_layers N, vram_budget
G GiB), decode tokens/s, the bytes copied host <-> device per decoded token, device splits per
token, the device memory used against the budget, and whether the greedy tokens equal the CPU's.

On a machine without a GPU the device is the stand-in (pyinfer.backend: CPU memory and kernels
behind the device seam), so its tokens/s measure the seam's overhead, not a GPU; the copies,
splits and memory are what a GPU backend would do. --device cuda uses the CUDA backend
(Backend.cuda, device 0, the same arena) instead. Medians of --runs runs.

Usage: python scripts/bench_offload.py [--model M.gguf] [--layers 0,8,16,-1] [--budgets 0.05]
       [--arena-mib 512] [--n-gen 32] [--threads 2] [--runs 3] [--device standin|cuda]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "src"))

PROMPT = "The lighthouse keeper kept a notebook of every ship that passed the point."


def run(model, n_gen, threads, device=None, **extra):
    from pyinfer.config import ContextSettings
    from pyinfer.engine import Engine
    e = Engine(model, ContextSettings(n_ctx=512, n_batch=64, n_threads=threads,
                                      extra={"offload_device": device, **extra}))
    try:
        prompt = list(range(1, 33))
        logits = e.decode(prompt)
        before = device.stats() if device else None
        tokens, t0 = [], time.perf_counter()
        for _ in range(n_gen):
            tokens.append(int(logits.argmax()))
            logits = e.decode([tokens[-1]])
        dt = time.perf_counter() - t0
        out = {"tps": n_gen / dt, "tokens": tokens}
        if device:
            after = device.stats()
            out["copy_per_tok"] = ((after["h2d_bytes"] - before["h2d_bytes"]) +
                                   (after["d2h_bytes"] - before["d2h_bytes"])) / n_gen
            out["splits_per_tok"] = (after["splits"] - before["splits"]) / n_gen
            out["device_mib"] = after["arena_peak"] / 2 ** 20
        return out
    finally:
        e.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--layers", default="0,8,16,-1")
    ap.add_argument("--budgets", default="")
    ap.add_argument("--arena-mib", type=int, default=512)
    ap.add_argument("--n-gen", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", choices=("standin", "cuda"), default="standin")
    args = ap.parse_args()
    from pyinfer.backend import Backend
    from pyinfer.default_model import require_default_model
    model = args.model or require_default_model()
    cases = [("CPU only", {})]
    cases += [(f"n_gpu_layers {n}", {"n_gpu_layers": int(n)}) for n in args.layers.split(",") if n and int(n)]
    cases += [(f"vram_budget {b} GiB", {"vram_budget": float(b)}) for b in args.budgets.split(",") if b]
    ref = None
    label = "stand-in" if args.device == "standin" else "CUDA device 0"

    def device():
        if args.device == "cuda":
            return Backend.cuda(0, args.arena_mib << 20)
        return Backend.standin(args.arena_mib << 20, n_threads=1)

    print(f"model {Path(model).name}, {args.threads} threads, {args.n_gen} tokens, device: {label} "
          f"({args.arena_mib} MiB arena), medians of {args.runs}")
    print(f"{'placement':22s} {'tok/s':>8s} {'copy B/tok':>11s} {'splits/tok':>11s} {'device MiB':>11s}  same tokens")
    for name, extra in cases:
        results = []
        for _ in range(args.runs):
            if extra:
                with device() as dev:
                    results.append(run(model, args.n_gen, args.threads, dev, **extra))
            else:
                results.append(run(model, args.n_gen, args.threads))
        med = {k: statistics.median(r[k] for r in results) for k in results[0] if k != "tokens"}
        ref = ref or results[0]["tokens"]
        same = all(r["tokens"] == ref for r in results)
        print(f"{name:22s} {med['tps']:8.1f} {med.get('copy_per_tok', 0):11.0f} "
              f"{med.get('splits_per_tok', 0):11.1f} {med.get('device_mib', 0):11.1f}  {same}")


if __name__ == "__main__":
    main()
