#!/usr/bin/env python3
"""Decode-step FFN time of the hybrid GPU/CPU engine against dense layer offload and the CPU.

    python scripts/bench_gpu.py --shape 7b --layers 8 --budgets 0.25,0.5 --threads 8
    python scripts/bench_gpu.py --shape 13b --layers 8 --budgets 0.25,0.5 --threads 8
    python scripts/bench_gpu.py --cpu-only ...     (the CPU columns alone; no GPU needed)

One token through the FFNs of `--layers` layers of a 7B (n_embd 4096, n_ff 11008) or 13B
(5120, 13824) shape with random weights of `--type`; the active neurons of each layer are drawn
per token from power-law frequencies averaging 1 - `--sparsity` (as
scripts/make_synthetic_sparse.py plants them). The predictor is left out of every column (the
same index is given to every engine). Budgets are fractions of the FFN weights' bytes.

  cpu dense   the dense FFN of every layer on the CPU pool (mul_mat, ReLU-GLU, mul_mat)
  cpu sparse  the sparse FFN on the CPU pool (row-sparse gate/up, axpy over ffn_down_t)
  layers      dense layer offload at the budget (n_gpu_layers): as many whole FFNs as fit
              on the GPU (HybridFFN of every neuron, no index), the rest dense on the CPU
  hybrid      each layer's hottest neurons that fit its share of the budget on the GPU,
              computed on a stream while the CPU pool computes the active cold neurons
              (gs_cuda_ffn_hybrid); only x and y cross PCIe

Times are ms per token (all layers), the best of `--reps` repetitions.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gemv import random_weights  # noqa: E402
from make_synthetic_sparse import power_law  # noqa: E402

from pyinfer.offload import cuda_status, ffn_slice_bytes  # noqa: E402
from pyinfer.offload.budget import SliceRowBytes  # noqa: E402
from pyinfer.tensor import Context, GGMLType, Graph, ThreadPool, Unary, row_size  # noqa: E402

SHAPES = {"7b": (4096, 11008), "13b": (5120, 13824)}


def draws(rng, freq, n):
    """n index columns (n, n_ff + 1) drawn with per-neuron frequencies freq."""
    M = freq.size
    idx = np.zeros((n, M + 1), np.int32)
    for t in range(n):
        ids = np.flatnonzero(rng.random(M) < freq)
        idx[t, 0] = ids.size
        idx[t, 1:1 + ids.size] = ids
    return idx


class Model:
    def __init__(self, args, rng):
        self.E, self.F = SHAPES[args.shape]
        t = GGMLType[args.type.upper()]
        self.ctx = Context(1 << 20, no_alloc=True)
        self.keep = []

        def w(k, m):
            data = random_weights(args.type, k, m, rng)
            self.keep.append(data)
            x = self.ctx.new_tensor(t, (k, m))
            x.set_data(data)
            return x

        E, F = self.E, self.F
        self.layers = [dict(gate=w(E, F), up=w(E, F), down_t=w(E, F), down=w(F, E)) for _ in range(args.layers)]
        self.freq = [power_law(F, 1 - args.sparsity, args.alpha)[rng.permutation(F)] for _ in self.layers]
        r = row_size(t, E)
        self.rows = SliceRowBytes(r, r, r)
        self.ffn_bytes = 3 * r * F             # one layer's FFN weights

    def hot(self, layer, budget_layer):
        """The hottest neurons of a layer whose slice fits budget_layer bytes (ascending ids)."""
        order = np.argsort(-self.freq[layer], kind="stable")
        lo, hi = 0, self.F
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if ffn_slice_bytes(self.rows, mid, self.E, self.F) <= budget_layer:
                lo = mid
            else:
                hi = mid - 1
        return np.sort(order[:lo]).astype(np.int32)


def best_of(reps, fn):
    best = float("inf")
    for r in range(reps):
        t0 = time.perf_counter()
        fn(r)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def cpu_graphs(m, ctx, x, idx_t, skips=None, dense_layers=None):
    """One graph per layer: sparse FFN (with skip = gpu_idx when given) or dense."""
    graphs, outs = [], []
    for i, ly in enumerate(m.layers):
        if dense_layers is not None:
            if i not in dense_layers:
                graphs.append(None)
                outs.append(None)
                continue
            a = ctx.glu(ctx.mul_mat(ly["gate"], x), ctx.mul_mat(ly["up"], x), Unary.RELU)
            out = ctx.mul_mat(ly["down"], a)
        else:
            s = skips[i] if skips else None
            a = ctx.glu(ctx.mul_mat_sparse(ly["gate"], x, idx_t[i], s),
                        ctx.mul_mat_sparse(ly["up"], x, idx_t[i], s), Unary.RELU)
            out = ctx.axpy_sparse(ly["down_t"], a, idx_t[i], s)
        out.set_output()
        graphs.append(Graph(ctx, 64).build(out).plan(m.pool.n_threads))
        outs.append(out)
    return graphs, outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="7b")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--type", default="q4_0")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--budgets", type=lambda s: [float(v) for v in s.split(",")], default=[0.25, 0.5])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--cpu-only", action="store_true", help="only the CPU columns")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.cpu_only and not cuda_status()[0]:
        sys.exit(f"bench_gpu: {cuda_status()[1]} (use --cpu-only for the CPU columns)")
    from pyinfer.offload.cuda import HybridFFN

    rng = np.random.default_rng(args.seed)
    m = Model(args, rng)
    m.pool = ThreadPool(args.threads)
    ctx = Context(256 << 20)
    x_np = rng.standard_normal(m.E).astype(np.float32)
    x = ctx.from_numpy(x_np[None])
    idx_t = [ctx.new_tensor(GGMLType.I32, (m.F + 1, 1)) for _ in m.layers]
    tokens = [draws(rng, f, 8) for f in m.freq]            # 8 tokens' draws per layer

    def load(r):
        for i, t in enumerate(idx_t):
            t.numpy()[...] = tokens[i][r % 8][None]

    dense_g, _ = cpu_graphs(m, ctx, x, idx_t, dense_layers=set(range(len(m.layers))))
    sparse_g, _ = cpu_graphs(m, ctx, x, idx_t)
    run_all = lambda gs: [g.compute(m.pool) for g in gs if g is not None]
    cpu_dense = best_of(args.reps, lambda r: run_all(dense_g))
    cpu_sparse = best_of(args.reps, lambda r: (load(r), run_all(sparse_g)))
    total = m.ffn_bytes * len(m.layers)
    print(f"FFN decode step, {args.shape} shape (n_embd {m.E}, n_ff {m.F}), {len(m.layers)} layers of "
          f"{args.type} ({total / 2**20:.0f} MiB), sparsity {args.sparsity:.0%}, {args.threads} threads; "
          f"ms per token, best of {args.reps}")
    print(f"cpu dense {cpu_dense:.2f} ms, cpu sparse {cpu_sparse:.2f} ms")
    if args.cpu_only:
        return
    print("| budget | layers on GPU | layer offload ms | hot neurons on GPU | hybrid ms | "
          "hybrid vs layers | hybrid vs cpu sparse |")
    print("|---|---|---|---|---|---|---|")
    for frac in args.budgets:
        budget = int(total * frac)
        per_layer_full = ffn_slice_bytes(m.rows, m.F, m.E, m.F)
        n_gpu = min(len(m.layers), budget // per_layer_full)
        gpu_layers = list(range(len(m.layers) - n_gpu, len(m.layers)))
        full = [HybridFFN(ly["gate"], ly["up"], ly["down_t"], np.arange(m.F, dtype=np.int32))
                for ly in (m.layers[i] for i in gpu_layers)]
        cpu_dense_g, _ = cpu_graphs(m, ctx, x, idx_t, dense_layers=set(range(len(m.layers) - n_gpu)))

        def layer_offload(r):
            run_all(cpu_dense_g)
            for f in full:
                f.gpu_part(x_np)
        t_layers = best_of(args.reps, layer_offload)
        for f in full:
            f.close()

        hots = [m.hot(i, budget // len(m.layers)) for i in range(len(m.layers))]
        skips = []
        for h in hots:
            s = np.zeros(m.F, np.int32)
            s[h] = 1
            skips.append(ctx.from_numpy(s))
        cold_g, cold_out = cpu_graphs(m, ctx, x, idx_t, skips=skips)
        ffns = [HybridFFN(ly["gate"], ly["up"], ly["down_t"], h) for ly, h in zip(m.layers, hots)]

        def hybrid(r):
            load(r)
            for i, f in enumerate(ffns):
                f.hybrid(x_np, idx_t[i].numpy()[0], cold_g[i], m.pool, cold_out[i])
        t_hybrid = best_of(args.reps, hybrid)
        for f in ffns:
            f.close()
        n_hot = sum(len(h) for h in hots)
        print(f"| {frac:.0%} | {n_gpu}/{len(m.layers)} | {t_layers:.2f} | "
              f"{n_hot / (m.F * len(m.layers)):.1%} | {t_hybrid:.2f} | {t_layers / t_hybrid:.2f}x | "
              f"{cpu_sparse / t_hybrid:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
