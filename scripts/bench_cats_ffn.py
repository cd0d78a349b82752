"""Pieces of the training-free (CATS) FFN against the dense FFN, per layer.

    python scripts/bench_cats_ffn.py [--shape smollm2|7b] [--type q4_1] [--down-type q8_0]
        [--layers 120] [--threads 1] [--reps 15] [--sparsity 0,0.3,0.5,0.7,0.9]

Random weights of the shape's FFN in --layers distinct copies (enough copies that
every piece streams from DRAM, as in decoding a model larger than the caches; 1
copy measures from cache), one token. Per sparsity (a random set of kept neurons,
the same for every layer), median microseconds per layer of:
  gate / up / down     the dense products (gate: what CATS always pays)
  up_sparse            gs_mul_mat_sparse of the kept up rows
  axpy                 gs_axpy_sparse of the kept ffn_down_t rows (--down-type)
  up_down              gs_sparse_ffn_up_down: both, fused
and the FFN totals: dense (gate + up + down), CATS with the file's ffn_down (gate +
up_sparse + down) and CATS with ffn_down_t (gate + up_down). --threads 1 uses
process CPU time, more threads the wall clock.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


from pyinfer.tensor import Context, GGMLType, Graph, ThreadPool, quantize, row_size  # noqa: E402

SHAPES = {"smollm2": (576, 1536), "7b": (4096, 11008)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="smollm2")
    ap.add_argument("--type", default="q4_1")
    ap.add_argument("--down-type", default="q8_0")
    ap.add_argument("--layers", type=int, default=0, help="weight copies (default: ~400 MiB of each matrix kind)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--sparsity", type=lambda s: [float(v) for v in s.split(",")], default=[0, 0.3, 0.5, 0.7, 0.9])
    args = ap.parse_args()
    E, F = SHAPES[args.shape]
    wt, dt = GGMLType[args.type.upper()], GGMLType[args.down_type.upper()]
    per_layer = 3 * row_size(wt, E) * F + row_size(dt, E) * F
    L = args.layers or max(2, (400 << 20) // (row_size(wt, E) * F))
    rng = np.random.default_rng(0)
    wctx = Context(L * 4 * 512 + (1 << 20), no_alloc=True)
    keep = []

    def weight(t, ne0, ne1):
        data = quantize(rng.standard_normal((ne1, ne0)).astype(np.float32) * 0.1, t).reshape(-1)
        keep.append(data)
        w = wctx.new_tensor(t, (ne0, ne1))
        w.set_data(data)
        return w

    layers = [dict(gate=weight(wt, E, F), up=weight(wt, E, F), down=weight(wt, F, E), down_t=weight(dt, E, F))
              for _ in range(L)]
    ctx = Context(64 << 20)
    x = ctx.from_numpy(rng.standard_normal((1, E)).astype(np.float32))
    act = ctx.from_numpy(rng.standard_normal((1, F)).astype(np.float32))
    idx = ctx.new_tensor(GGMLType.I32, (F + 1, 1))
    ia = idx.numpy()
    pool = ThreadPool(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter

    def graph(outs):
        g = Graph(ctx, 4 * L + 16).build(*outs)
        g.plan(args.threads)
        return g

    graphs = {
        "gate": graph([ctx.mul_mat(ly["gate"], x) for ly in layers]),
        "up": graph([ctx.mul_mat(ly["up"], x) for ly in layers]),
        "down": graph([ctx.mul_mat(ly["down"], act) for ly in layers]),
        "up_sparse": graph([ctx.mul_mat_sparse(ly["up"], x, idx) for ly in layers]),
        "axpy": graph([ctx.axpy_sparse(ly["down_t"], act, idx) for ly in layers]),
        "up_down": graph([ctx.sparse_ffn_up_down(ly["up"], ly["down_t"], act, x, idx) for ly in layers]),
    }
    print(f"{args.shape} FFN (n_embd {E}, n_ff {F}), {wt.name} weights, ffn_down_t {dt.name}; {L} layer copies "
          f"({L * per_layer / 2**20:.0f} MiB); {args.threads} thread(s), "
          f"{'CPU' if args.threads == 1 else 'wall'} time, us per layer, median of {args.reps}")
    print("| sparsity | gate | up | down | up_sparse | axpy | up_down | dense FFN | CATS, ffn_down | "
          "vs dense | CATS, ffn_down_t fused | vs dense |")
    print("|---|" + "---:|" * 11)
    dense = {}
    for s in args.sparsity:
        kept = np.sort(rng.permutation(F)[:round(F * (1 - s))]).astype(np.int32)
        ia[0, 0] = len(kept)
        ia[0, 1:1 + len(kept)] = kept
        t = {}
        for name, g in graphs.items():
            if name in dense:
                t[name] = dense[name]
                continue
            runs = []
            for _ in range(args.reps):
                t0 = clock()
                g.compute(pool)
                runs.append((clock() - t0) / L * 1e6)
            t[name] = statistics.median(runs)
            if name in ("gate", "up", "down"):
                dense[name] = t[name]
        full = t["gate"] + t["up"] + t["down"]
        three = t["gate"] + t["up_sparse"] + t["down"]
        fused = t["gate"] + t["up_down"]
        print(f"| {s:.0%} | {t['gate']:.1f} | {t['up']:.1f} | {t['down']:.1f} | {t['up_sparse']:.1f} | "
              f"{t['axpy']:.1f} | {t['up_down']:.1f} | {full:.1f} | {three:.1f} | {full / three:.2f}x | "
              f"{fused:.1f} | {full / fused:.2f}x |", flush=True)
    pool.close()
    ctx.close()


if __name__ == "__main__":
    main()
