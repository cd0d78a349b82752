#!/usr/bin/env python3
"""Speed of the neuron-sparse FFN on the CPU, and of PowerInfer models end to end.

    python scripts/bench_sparse.py ffn [--type q4_0] [--threads 2]
    python scripts/bench_sparse.py batch [--type q4_0] [--threads 2]
    python scripts/bench_sparse.py decode --model M.powerinfer.gguf [--dense-model M.dense.gguf]

ffn: one FFN layer of Llama-2-7B shape (n_embd 4096, n_ff 11008), predictor
  hidden H (default 768, as scripts/make_synthetic_sparse.py), random weights
  in `--layers` distinct copies (more bytes than the L3 cache; every run reads
  from DRAM). Dense FFN = gate and up products, ReLU-GLU, down product (our
  dense path). Sparse FFN = predictor (fc1, relu, fc2, index) + row-sparse
  gate and up + ReLU-GLU + axpy over ffn_down_t rows. Bundled = the same
  neurons through the fused op over neuron records [gate|up|down_t]
  (gs_sparse_ffn_bundle; `dense` column of it: every neuron). One token (decode). The
  active neurons are drawn per token from power-law frequencies (as the
  synthetic models plant them) at each sparsity; each repetition uses other
  draws. Times per layer: the best of many interleaved repetitions (the
  machine is shared; the best run is the one least disturbed).
batch: prompt processing of n_tokens tokens at 90% sparsity: the sparse ops
  given the whole batch (one op call each; inside, token after token), against
  one op call per token (separate graph nodes), and against the dense GEMMs.
decode: tokens/s of greedy decoding with pyinfer on the PowerInfer file
  (sparse with and without neuron bundles, and dense=True), and with pyinfer
  and llama.cpp (llama-cpp-python) on the dense twin, side by side in one run,
  plus the share of FFN neurons the predictor picked and how much the
  process's resident memory grew from before loading to after decoding.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # idle BLAS threads must not spin beside ours
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gemv import _SCALE_FIELDS, random_weights  # noqa: E402

from pyinfer.tensor import (Context, GGMLType, Graph, ThreadPool, Unary, cpu_info, row_size,  # noqa: E402
                            type_info)

E, F = 4096, 11008


HOT_FIRST = False   # --hot-first: neurons stored hottest first (ranks in id order)


def power_law_draws(rng, n_ff: int, density: float, n_tokens: int, alpha: float = 1.0) -> np.ndarray:
    """Index rows (n_tokens, n_ff + 1) of tokens whose neurons fire with power-law
    frequencies (randomly placed ranks, or hottest first) averaging `density`."""
    from make_synthetic_sparse import power_law
    freq = power_law(n_ff, density, alpha)
    if not HOT_FIRST:
        freq = freq[rng.permutation(n_ff)]
    idx = np.zeros((n_tokens, n_ff + 1), dtype=np.int32)
    for t in range(n_tokens):
        ids = np.flatnonzero(rng.random(n_ff) < freq)
        idx[t, 0] = ids.size
        idx[t, 1:1 + ids.size] = ids
    return idx


class Layers:
    """`n` FFN layers of random weights of one type (dense and sparse layouts, predictor)."""

    def __init__(self, wtype: str, n: int, hidden: int, rng):
        self.ctx = Context(1 << 20, no_alloc=True)
        self.keep = []
        t = GGMLType[wtype.upper()]

        def w(k, m):
            data = random_weights(wtype, k, m, rng)
            self.keep.append(data)
            x = self.ctx.new_tensor(t, (k, m))
            x.set_data(data)
            return x

        self.layers = [dict(gate=w(E, F), up=w(E, F), down=w(F, E), down_t=w(E, F), fc1=w(E, hidden),
                            fc2=w(hidden, F)) for _ in range(n)]
        self.wtype, self.part = wtype, row_size(t, E)
        part = self.part
        for ly in self.layers:    # the neuron records, as pyinfer's NeuronBundles lays them out
            mem = np.empty(F * 3 * part + 64, dtype=np.uint8)
            recs = mem[-mem.ctypes.data % 64:][:F * 3 * part].reshape(F, 3, part)
            for k, name in enumerate(("gate", "up", "down_t")):
                recs[:, k, :] = ly[name].raw().reshape(F, part)
            self.keep.append(recs)
            ly["recs"] = recs
            ly["bundle"] = self.ctx.new_tensor(t, (3 * E, F))
            ly["bundle"].set_data(recs.reshape(-1))
        self.ffn_bytes = 3 * row_size(t, E) * F
        self.pred_bytes = row_size(t, E) * hidden + row_size(t, hidden) * F

    def make_firing(self, ly, g: np.ndarray) -> None:
        """Negate, in the bundle only, the gate rows whose dot g with this x is <= 0,
        so that every neuron fires there (relu(gate) > 0), as for the neurons a good
        predictor picks: the fused op then does the whole work for each (it skips the
        up and down rows of a neuron whose relu(gate) is 0). Random weights fire for
        about half of the neurons; the three-matrix ops do the same work either way."""
        gate = ly["recs"][:, 0, :]
        gate[:] = ly["gate"].raw().reshape(F, self.part)
        neg = np.flatnonzero(g <= 0)
        if self.wtype in ("f32", "f16", "bf16"):
            size = {"f32": 4, "f16": 2, "bf16": 2}[self.wtype]
            gate[neg, size - 1::size] ^= 0x80          # sign bit of every element
            return
        bsize = type_info(GGMLType[self.wtype.upper()]).type_size
        for off, count in _SCALE_FIELDS[self.wtype]:   # negate the scales: -w exactly
            for c in range(count):
                gate[neg[:, None], np.arange(off + 2 * c + 1, self.part, bsize)[None, :]] ^= 0x80


CLOCK = time.perf_counter   # --cpu-time: time.process_time


def timed(graph: Graph, pool: ThreadPool, before=None) -> float:
    if before:
        before()
    t0 = CLOCK()
    graph.compute(pool)
    return CLOCK() - t0


def bench_ffn(args, rng) -> None:
    L = Layers(args.type, args.layers, args.hidden, rng)
    pool = ThreadPool(args.threads)
    print(f"FFN of one layer, n_embd {E}, n_ff {F}, {args.type}, predictor H {args.hidden}; "
          f"{args.threads} thread(s); {len(L.layers)} layers of weights; ms per layer, best of {args.reps}"
          f"{' (CPU time)' if CLOCK is time.process_time else ''}")
    print(f"weights per layer: FFN {L.ffn_bytes / 2**20:.1f} MiB, predictor {L.pred_bytes / 2**20:.1f} MiB; "
          f"bundled: {'every neuron fires' if args.firing == 'all' else 'random gate signs'}")
    print("| sparsity | active neurons | dense FFN ms | bundled, all neurons ms | sparse FFN ms "
          "| bundled sparse FFN ms | speed-up | bundled speed-up | sparse w/o predictor ms "
          "| bundled w/o predictor ms | predictor ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for sparsity in args.sparsity:
        ctx = Context(64 << 20)
        x = ctx.from_numpy(rng.standard_normal((1, E)).astype(np.float32))
        if args.firing == "all":
            gates = [ctx.mul_mat(ly["gate"], x) for ly in L.layers]
            Graph(ctx, 64).build(*gates).plan(args.threads).compute(pool)
            for ly, g in zip(L.layers, gates):
                L.make_firing(ly, g.numpy()[0].copy())
        draws = [[power_law_draws(rng, F, 1 - sparsity, 1) for _ in L.layers] for _ in range(4)]
        idx = [ctx.new_tensor(GGMLType.I32, (F + 1, 1)) for _ in L.layers]
        idx_np = [t.numpy() for t in idx]

        def dense_out(ly):
            a = ctx.glu(ctx.mul_mat(ly["gate"], x), ctx.mul_mat(ly["up"], x), Unary.RELU)
            return ctx.mul_mat(ly["down"], a)

        def sparse_out(ly, i):
            a = ctx.glu(ctx.mul_mat_sparse(ly["gate"], x, i), ctx.mul_mat_sparse(ly["up"], x, i), Unary.RELU)
            return ctx.axpy_sparse(ly["down_t"], a, i)

        def predictor(ly):
            return ctx.sparse_predict(ly["fc1"], ly["fc2"], x, 0.0)

        def bundled_out(ly, i):
            return ctx.sparse_ffn_bundle(ly["bundle"], x, i)

        graphs = {
            "dense": Graph(ctx, 512).build(*[dense_out(ly) for ly in L.layers]),
            "sparse": Graph(ctx, 512).build(*[o for ly, i in zip(L.layers, idx)
                                              for o in (predictor(ly), sparse_out(ly, i))]),
            "no_pred": Graph(ctx, 512).build(*[sparse_out(ly, i) for ly, i in zip(L.layers, idx)]),
            "pred": Graph(ctx, 512).build(*[predictor(ly) for ly in L.layers]),
            "b_dense": Graph(ctx, 512).build(*[bundled_out(ly, None) for ly in L.layers]),
            "b_sparse": Graph(ctx, 512).build(*[o for ly, i in zip(L.layers, idx)
                                                for o in (predictor(ly), bundled_out(ly, i))]),
            "b_no_pred": Graph(ctx, 512).build(*[bundled_out(ly, i) for ly, i in zip(L.layers, idx)]),
        }
        for g in graphs.values():
            g.plan(args.threads)
        times = {k: [] for k in graphs}
        for r in range(args.reps):
            def load(r=r):
                for a, d in zip(idx_np, draws[r % len(draws)]):
                    a[...] = d
            for k, g in graphs.items():
                times[k].append(timed(g, pool, load) / len(L.layers) * 1e3)
        best = {k: min(v) for k, v in times.items()}
        active = np.mean([d[0, 0] for dd in draws for d in dd])
        print(f"| {100 * sparsity:.0f}% | {active:.0f} | {best['dense']:.3f} | {best['b_dense']:.3f} | "
              f"{best['sparse']:.3f} | {best['b_sparse']:.3f} | {best['dense'] / best['sparse']:.2f}x | "
              f"{best['dense'] / best['b_sparse']:.2f}x | {best['no_pred']:.3f} | {best['b_no_pred']:.3f} | "
              f"{best['pred']:.3f} |", flush=True)
        ctx.close()
    pool.close()


def bench_batch(args, rng) -> None:
    L = Layers(args.type, args.layers, args.hidden, rng)
    pool = ThreadPool(args.threads)
    sparsity = 0.9
    print(f"Prompt processing, one FFN layer ({args.type}, 7B shape) at {100 * sparsity:.0f}% sparsity, "
          f"{args.threads} thread(s); ms per layer, best of {max(3, args.reps // 3)}; predictor not included")
    print("| tokens | union of their neurons | dense GEMMs ms | sparse, batch ops ms | sparse, one op per token ms | batch vs dense | batch vs op per token |")
    print("|---|---|---|---|---|---|---|")
    for n in args.tokens:
        ctx = Context(256 << 20)
        xd = rng.standard_normal((n, E)).astype(np.float32)
        x = ctx.from_numpy(xd)
        draws = [power_law_draws(rng, F, 1 - sparsity, n) for _ in L.layers]
        idx = [ctx.from_numpy(d) for d in draws]
        union = np.mean([np.unique(np.concatenate([d[t, 1:1 + d[t, 0]] for t in range(n)])).size for d in draws])

        def sparse_out(ly, i, xx):
            a = ctx.glu(ctx.mul_mat_sparse(ly["gate"], xx, i), ctx.mul_mat_sparse(ly["up"], xx, i), Unary.RELU)
            return ctx.axpy_sparse(ly["down_t"], a, i)

        def dense_out(ly):
            a = ctx.glu(ctx.mul_mat(ly["gate"], x), ctx.mul_mat(ly["up"], x), Unary.RELU)
            return ctx.mul_mat(ly["down"], a)

        def token_by_token(ly, i):
            outs = []
            for t in range(n):
                xt = ctx.view(x, (E, 1), (4, x.nb[1]), t * x.nb[1])
                it = ctx.view(i, (F + 1, 1), (4, i.nb[1]), t * i.nb[1])
                outs.append(sparse_out(ly, it, xt))
            return outs

        graphs = {
            "dense": Graph(ctx, 4096).build(*[dense_out(ly) for ly in L.layers]),
            "batch": Graph(ctx, 4096).build(*[sparse_out(ly, i, x) for ly, i in zip(L.layers, idx)]),
            "single": Graph(ctx, 1 << 16).build(*[o for ly, i in zip(L.layers, idx) for o in token_by_token(ly, i)]),
        }
        for g in graphs.values():
            g.plan(args.threads)
        best = {k: min(timed(g, pool) for _ in range(max(3, args.reps // 3))) / len(L.layers) * 1e3
                for k, g in graphs.items()}
        print(f"| {n} | {union / F:.0%} | {best['dense']:.2f} | {best['batch']:.2f} | {best['single']:.2f} | "
              f"{best['dense'] / best['batch']:.2f}x | {best['single'] / best['batch']:.2f}x |", flush=True)
        ctx.close()
    pool.close()


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def decode_ours(path: str, threads: int, n: int, **kw):
    """(tokens/s, median ms per token, prompt tokens/s, active neuron share or None,
    resident memory growth in MiB from before loading to after decoding)."""
    import gc
    gc.collect()
    rss0 = rss_mib()
    from pyinfer.config import ContextSettings
    from pyinfer.engine import Engine
    from pyinfer.model import sparse as sparse_mod

    eng = Engine(path, ContextSettings(n_ctx=512, n_batch=64, n_threads=threads, **kw))
    counts = []
    if eng.ffn is not None and eng.ffn.func is sparse_mod.sparse_ffn:
        threshold, both = eng.ffn.keywords["threshold"], eng.ffn.keywords["both_relu"]
        bundles = eng.ffn.keywords["bundles"]

        def ffn(ctx, layer, x, h):    # sparse_ffn, keeping each index readable
            idx = ctx.sparse_predict(layer.fc1, layer.fc2, x, threshold).set_output()
            counts.append(idx)
            if bundles is not None:
                return ctx.sparse_ffn_bundle(bundles[layer], h, idx, both_relu=both)
            act = ctx.glu(ctx.mul_mat_sparse(layer.w_gate, h, idx), ctx.mul_mat_sparse(layer.w_up, h, idx),
                          Unary.RELU, gate_b=both)
            return ctx.axpy_sparse(layer.w_down_t, act, idx)
        eng.ffn = ffn
    prompt = list(range(10, 74))
    t0 = CLOCK()
    logits = eng.decode(prompt)
    pp = len(prompt) / (CLOCK() - t0)
    tok, times, active = int(np.argmax(logits)), [], []
    for i in range(n + 3):
        t0 = CLOCK()
        logits = eng.decode([tok])
        if i >= 3:   # warm-up
            times.append(CLOCK() - t0)
            if counts:
                active.append(np.mean([int(t.numpy()[0, 0]) for t in counts[-eng.cfg.n_layer:]]) / eng.cfg.n_ff)
        tok = int(np.argmax(logits))
    rss = rss_mib() - rss0
    eng.close()
    return (len(times) / sum(times), statistics.median(times) * 1e3, pp, (np.mean(active) if active else None),
            rss)


def decode_llama_cpp(path: str, threads: int, n: int):
    import llama_cpp
    llm = llama_cpp.Llama(path, n_ctx=512, n_batch=64, n_threads=threads, n_threads_batch=threads, verbose=False)
    prompt = list(range(10, 74))
    t0 = CLOCK()
    llm.eval(prompt)
    pp = len(prompt) / (CLOCK() - t0)
    times = []
    for i in range(n + 3):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        tok = int(np.argmax(logits))
        t0 = CLOCK()
        llm.eval([tok])
        if i >= 3:
            times.append(CLOCK() - t0)
    llm.close()
    return len(times) / sum(times), statistics.median(times) * 1e3, pp, None, None


def bench_decode(args) -> None:
    runs = [("pyinfer sparse, neuron bundles", args.model, lambda p: decode_ours(p, args.threads, args.n)),
            ("pyinfer sparse, three matrices", args.model,
             lambda p: decode_ours(p, args.threads, args.n, neuron_bundle=False)),
            ("pyinfer dense=True, neuron bundles", args.model,
             lambda p: decode_ours(p, args.threads, args.n, dense=True)),
            ("pyinfer dense=True, three matrices", args.model,
             lambda p: decode_ours(p, args.threads, args.n, dense=True, neuron_bundle=False))]
    if args.dense_model:
        runs += [("pyinfer, dense twin", args.dense_model, lambda p: decode_ours(p, args.threads, args.n)),
                 ("llama.cpp, dense twin", args.dense_model, lambda p: decode_llama_cpp(p, args.threads, args.n))]
    print(f"Decode, {args.threads} thread(s), {args.n} tokens after a 64-token prompt, rounds: {args.rounds} "
          f"(the best round of each engine is shown){'; CPU time' if CLOCK is time.process_time else ''}")
    print(f"model: {args.model}")
    results = {name: [] for name, _, _ in runs}
    for _ in range(args.rounds):      # engines alternate, so a busy spell hits all of them
        for name, path, fn in runs:
            results[name].append(fn(path))
    ref = max(r[0] for r in results.get("llama.cpp, dense twin", [(None,)])) if args.dense_model else None
    print("| engine, file | decode tok/s | ms/token (median) | prompt tok/s | FFN neurons computed | vs llama.cpp "
          "| RSS growth MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, rs in results.items():
        best = max(rs, key=lambda r: r[0])
        share = f"{100 * best[3]:.1f}%" if best[3] is not None else "all"
        vs = f"{best[0] / ref:.2f}x" if ref else ""
        rss = f"{best[4]:.0f}" if best[4] is not None else ""
        print(f"| {name} | {best[0]:.2f} | {best[1]:.1f} | {best[2]:.1f} | {share} | {vs} | {rss} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["ffn", "batch", "decode"])
    ap.add_argument("--type", default="q4_0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=8, help="distinct weight copies (ffn, batch)")
    ap.add_argument("--hidden", type=int, default=768, help="predictor hidden size H")
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--sparsity", type=lambda s: [float(v) for v in s.split(",")],
                    default=[0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99])
    ap.add_argument("--tokens", type=lambda s: [int(v) for v in s.split(",")], default=[8, 32, 128])
    ap.add_argument("--model", help="PowerInfer file (decode)")
    ap.add_argument("--dense-model", help="its dense twin (decode)")
    ap.add_argument("--n", type=int, default=32, help="decoded tokens per round (decode)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of all engines (decode)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="with --threads 1: time by the process's CPU time, not the wall clock (on a "
                         "busy machine, time spent descheduled does not count)")
    ap.add_argument("--firing", choices=["all", "random"], default="all",
                    help="ffn: in the bundles, every neuron fires (gate rows negated where needed; the "
                         "work of a perfect predictor's picks) or about half do (random weights)")
    ap.add_argument("--hot-first", action="store_true",
                    help="ffn, batch: neurons ordered by firing frequency, hottest first (as a "
                         "converter could store them), instead of randomly placed")
    args = ap.parse_args()
    global HOT_FIRST
    HOT_FIRST = args.hot_first
    if args.cpu_time:
        if args.threads != 1:
            ap.error("--cpu-time needs --threads 1 (CPU time adds up the threads)")
        global CLOCK
        CLOCK = time.process_time
    print(f"CPU SIMD level {cpu_info()['level']}")
    rng = np.random.default_rng(0)
    if args.what == "ffn":
        bench_ffn(args, rng)
    elif args.what == "batch":
        bench_batch(args, rng)
    else:
        if not args.model:
            ap.error("decode needs --model")
        bench_decode(args)


if __name__ == "__main__":
    main()
