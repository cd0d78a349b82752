#!/usr/bin/env python3
"""Single-token (decode, N = 1) speed of the Q4_K / Q6_K matrix-vector kernels
on MoE-sized weights, 1 thread: GB of weight bytes per CPU-second.

For each shape (K, M) a random Q4_K (or Q6_K) weight matrix is multiplied by
one activation row through a planned one-node mul_mat graph, plain (row-major
kernels: the vec_dot_tile path mul_mat_id also takes) and, for Q4_K,
repacked (gs_tensor_repack: llama.cpp's repacked order, repack_q4k.c).
Each timing is the median over many repetitions of a batch of GEMVs, on the
process's CPU clock (steadier than wall time on a shared machine).

Usage: python scripts/bench_q4k_decode.py [--reps 41] [--batch 20]
       [--shapes 2048x1024,1024x2048,2048x4096] [--types q4_K,q4_Kr,q6_K] [--level auto]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gemv import MatMul, random_weights  # noqa: E402
from pyinfer.tensor import cpu_info, set_simd_level  # noqa: E402


def gbs(name: str, k: int, m: int, reps: int, batch: int, rng) -> float:
    w = random_weights(name.rstrip("r"), k, m, rng)
    mm = MatMul(name, w, k, m, 1, 1, rng)
    try:
        for _ in range(3):
            mm.graph.compute(mm.pool)
        times = []
        for _ in range(reps):
            t0 = time.process_time()
            for _ in range(batch):
                mm.graph.compute(mm.pool)
            times.append((time.process_time() - t0) / batch)
        return w.nbytes / statistics.median(times) / 1e9
    finally:
        mm.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=41)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--shapes", default="2048x1024,1024x2048,2048x4096")
    ap.add_argument("--types", default="q4_K,q4_Kr,q6_K")
    ap.add_argument("--level", default="auto", help="SIMD level: auto, scalar, avx2, avx512")
    args = ap.parse_args()
    set_simd_level(args.level)
    rng = np.random.default_rng(0)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    types = [t.strip() for t in args.types.split(",")]
    print(f"load: {open('/proc/loadavg').read().split()[:3]}; SIMD level {cpu_info()['level']}")
    print(f"{'type':6} " + " ".join(f"{f'{k}x{m}':>10}" for k, m in shapes) + "   (GB/CPU-s, 1 thread)")
    for name in types:
        cells = [gbs(name, k, m, args.reps, args.batch, rng) for k, m in shapes]
        print(f"{name:6} " + " ".join(f"{c:10.2f}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
