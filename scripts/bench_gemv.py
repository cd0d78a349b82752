#!/usr/bin/env python3
"""Matrix-vector (decode) and matrix-matrix (prompt) speed of the CPU kernels.

For each weight type a random weight matrix is wrapped in a ggml_sparse
tensor and multiplied through a planned graph, as the model does:

* GEMV, N = 1: ne = (K, M) with K = 4096 and M a multiple of 11008 chosen so
  the weights are at least 3x the L3 cache (every run streams them from
  DRAM). Reported: ms per GEMV and GB/s of weight bytes read, beside the
  machine's memory read bandwidth measured here with numpy just before.
* GEMM, N = 32 and 128 activation rows on ne = (4096, 11008): GFLOP/s
  (2 * K * M * N flops; the activation quantization is included).

`q4_0r` is Q4_0 repacked at load into 8 interleaved rows (gs_tensor_repack,
as the engine does by default; kernels in llama.cpp's repacked order), beside
`q4_0`, the row-major kernels.

Times are the median of several runs after a warm-up run. The memory read
bandwidth is measured with numpy alone: a 512 MiB array (written before, so
its pages exist) is reduced by np.max on uint8, np.bitwise_or on uint64 and
np.sum on float64, on 1 thread and split over 2 Python threads (numpy
releases the GIL inside reductions); the best of these and of several runs
is reported. It is a lower bound on the machine's read bandwidth (a reduction
has its own cost), so a kernel can come out above 100%.

The machine is shared: when other processes run, 2-thread times are
stretched by the scheduler (one thread waits for the other's time slice).

With --cpu-time the times are CPU seconds of the process (every thread's),
which other processes on a shared machine do not stretch; only the 1-thread
numbers are then comparable with wall-clock ones.

Usage: python scripts/bench_gemv.py [--quick] [--types q4_0,q8_0] [--threads 1,2]
       [--levels avx2,avx512] [--cpu-time]
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np


from pyinfer.tensor import (Context, GGMLType, Graph, ThreadPool, cpu_info, row_size,  # noqa: E402
                            set_simd_level, type_info)

ALL_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_0r", "q4_1", "q5_0", "q5_1", "q4_K", "q5_K", "q6_K"]
L3_BYTES = 32 << 20
K = 4096
M_BASE = 11008

# Byte offset and count of the f16 scale fields inside each block: random bytes
# there could be inf/NaN, so they are overwritten with small finite values.
_SCALE_FIELDS = {
    "q4_0": [(0, 1)], "q4_0r": [(0, 1)], "q5_0": [(0, 1)], "q8_0": [(0, 1)], "q4_1": [(0, 2)], "q5_1": [(0, 2)],
    "q4_K": [(0, 2)], "q5_K": [(0, 2)], "q6_K": [(208, 1)],
}


def gtype(name: str) -> GGMLType:
    """The weight type of a type name ("q4_0r": Q4_0, repacked)."""
    return GGMLType[name.upper().rstrip("R")]


def random_weights(name: str, k: int, m: int, rng) -> np.ndarray:
    """Random rows of type `name` (m rows of k elements) as a flat byte array."""
    t = gtype(name)
    if name == "f32":
        return rng.standard_normal((m, k), dtype=np.float32).view(np.uint8).reshape(-1)
    if name in ("f16", "bf16"):
        bits = rng.integers(0x3000, 0x3C00, size=(m, k), dtype=np.uint16)  # small finite values
        if name == "bf16":
            bits = (rng.standard_normal((m, k), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
        return bits.view(np.uint8).reshape(-1)
    info = type_info(t)
    raw = rng.integers(0, 256, size=row_size(t, k) * m, dtype=np.uint8)
    blocks = raw.reshape(-1, info.type_size)
    for off, count in _SCALE_FIELDS[name]:
        halves = (rng.random((blocks.shape[0], count)) * 0.01).astype(np.float16)
        blocks[:, off:off + 2 * count] = halves.view(np.uint8)
    return raw


class MatMul:
    """out = W x through a planned one-node graph, W wrapping a numpy buffer."""

    def __init__(self, name: str, w: np.ndarray, k: int, m: int, n: int, n_threads: int, rng):
        self.ctx = Context(mem_size=1 << 20, no_alloc=True)
        self.w = self.ctx.new_tensor(gtype(name), (k, m), "w")
        self.w.set_data(w)
        if name.endswith("r"):
            self.w.repack()
        self.x_data = rng.standard_normal((n, k), dtype=np.float32)
        self.x = self.ctx.new_tensor(GGMLType.F32, (k, n), "x")
        self.x.set_data(self.x_data)
        self.out = self.ctx.mul_mat(self.w, self.x).set_output()
        self.graph = Graph(self.ctx, 8).build(self.out).plan(n_threads)
        self.pool = ThreadPool(n_threads)

    def time(self, reps: int, clock=time.perf_counter) -> float:
        """Median seconds per run (after one warm-up run) on `clock`."""
        self.graph.compute(self.pool)
        times = []
        for _ in range(reps):
            t0 = clock()
            self.graph.compute(self.pool)
            times.append(clock() - t0)
        return statistics.median(times)

    def close(self) -> None:
        self.pool.close()
        self.ctx.close()


_REDUCERS = (
    lambda b: np.max(b),
    lambda b: np.bitwise_or.reduce(b.view(np.uint64)),
    lambda b: np.sum(b.view(np.float64)),
)


def read_bandwidth(a: np.ndarray, n_threads: int, reps: int) -> float:
    """Best GB/s of numpy reductions over `a` split across n_threads threads."""
    parts = np.array_split(a, n_threads)
    best = float("inf")
    for reduce in _REDUCERS:
        for _ in range(reps):
            threads = [threading.Thread(target=reduce, args=(p,)) for p in parts]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


def gemv_rows(name: str) -> int:
    """A multiple of M_BASE rows whose weights are at least 3x the L3 cache."""
    per = row_size(gtype(name), K) * M_BASE
    return M_BASE * max(1, -(-3 * L3_BYTES // per))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (< 30 s): fewer repetitions, N = 32 GEMM only")
    ap.add_argument("--types", default=",".join(ALL_TYPES), help="comma-separated weight types")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--levels", default="auto", help="SIMD levels to compare: auto, scalar, avx2, avx512")
    ap.add_argument("--no-gemm", action="store_true", help="skip the GEMM lines")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time on the process's CPU clock (all threads' CPU seconds; steadier than "
                         "wall clock when the machine is shared, 1 thread only is comparable)")
    args = ap.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter

    types = [t.strip() for t in args.types.split(",") if t.strip()]
    threads = [int(t) for t in args.threads.split(",")]
    levels = [lv.strip() for lv in args.levels.split(",")]
    reps = 5 if args.quick else 15
    gemm_ns = [32] if args.quick else [32, 128]
    rng = np.random.default_rng(0)

    info = cpu_info()
    print(f"CPU SIMD: best level {info['level']}; "
          f"{', '.join(k for k, v in info.items() if v is True)}")
    buf = np.ones(512 << 20, dtype=np.uint8)
    read_bandwidth(buf, max(threads), 1)   # warm-up: first passes read slower
    print("memory read bandwidth ('bw'): best numpy reduction over 512 MiB, measured right "
          "before each row\n(the host's bandwidth drifts over minutes on this shared machine)")

    print(f"\nGEMV (N = 1), K = {K}, weights >= 3x L3; median of {reps} runs")
    print(f"{'type':6} {'level':7} {'M':>6} {'MB':>7} " + " ".join(
        f"{f'ms/{nt}T':>8} {f'GB/s {nt}T':>9} {'bw':>5} {'%bw':>4}" for nt in threads))
    for level in levels:
        set_simd_level(level)
        lvl = cpu_info()["level"]
        for name in types:
            m = gemv_rows(name)
            w = random_weights(name, K, m, rng)
            cells = []
            for nt in threads:
                bw = read_bandwidth(buf, nt, 2)
                mm = MatMul(name, w, K, m, 1, nt, rng)
                t = mm.time(reps, clock)
                mm.close()
                gbs = w.nbytes / t / 1e9
                cells.append(f"{t * 1e3:8.2f} {gbs:9.1f} {bw:5.1f} {100 * gbs / bw:3.0f}%")
            print(f"{name:6} {lvl:7} {m:6d} {w.nbytes / 1e6:7.1f} " + " ".join(cells), flush=True)
            del w
    del buf
    if not args.no_gemm:
        print(f"\nGEMM, ne = ({K}, {M_BASE}), GFLOP/s (2*K*M*N / time); median of {max(3, reps // 3)} runs")
        print(f"{'type':6} {'level':7} " + " ".join(f"{f'N={n} {nt}T':>10}" for n in gemm_ns for nt in threads))
        for level in levels:
            set_simd_level(level)
            lvl = cpu_info()["level"]
            for name in types:
                w = random_weights(name, K, M_BASE, rng)
                cells = []
                for n in gemm_ns:
                    for nt in threads:
                        mm = MatMul(name, w, K, M_BASE, n, nt, rng)
                        t = mm.time(max(3, reps // 3), clock)
                        mm.close()
                        cells.append(f"{2 * K * M_BASE * n / t / 1e9:10.1f}")
                print(f"{name:6} {lvl:7} " + " ".join(cells), flush=True)
    set_simd_level("auto")


if __name__ == "__main__":
    main()
