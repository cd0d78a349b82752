#!/usr/bin/env python3
"""CPU speed of pyinfer and llama.cpp on mixture-of-experts GGUF files (issue 17).

Both engines load the same file (from scripts/make_moe_bench_model.py: a real MoE layer
shape, few layers, random weights) with the same thread count, context and batch size,
each run in a fresh subprocess per engine, the engines alternating which goes first.
llama.cpp is llama-cpp-python's ``Llama`` run by --llama-cpp-python PY (its own virtual
environment), with OMP_NUM_THREADS set to --threads as for pyinfer, so neither engine
starts more threads than asked.

The token ids are fixed pseudo-random ids (the files' tokenizers are tiny; ids, not
text, make the two engines evaluate the same tokens). Per run and engine:

  load      seconds to construct Llama(...)
  prompt    --n-prompt tokens / seconds of one llm.eval(prompt), after one untimed
            evaluation of the same prompt (so every expert's weights are paged in;
            ``prompt_cold_tps`` is that first evaluation)
  decode    after a --n-gen-prompt token prompt, --n-gen greedy tokens / seconds of the
            loop ``tok = llm.sample(temp=0.0); llm.eval([tok])``
  eval ms   milliseconds per generated token spent in llm.eval alone (llama.cpp's own
            counter, llama_perf_context's t_eval_ms / n_eval, is kept as own_eval_ms)
  CPU ms    process CPU time (all threads) per generated token; CPU share: that time over
            the decode's wall time and --threads (1.0: every thread always on a core; less:
            threads waited, e.g. for a core on a loaded machine). Spinning counts as CPU.
  rss       peak resident memory of the child (VmHWM), MiB

The machine may be shared: the load average (os.getloadavg, as uptime prints it) is
recorded before and after every model, and medians over --runs runs are reported with
the ratios pyinfer / llama.cpp. Output: a text table, --json OUT (every run, medians,
ratios, loads) and --md OUT (a markdown table). --ours-only measures pyinfer alone.
--op-timing ITERS also times pyinfer's decode-shaped products per kind on the file's
weights (op_timing). The greedy continuations of the two engines are compared but need
not agree: random weights give near-tied logits, and the engines round differently.

Usage: python scripts/bench_moe.py --model A.gguf[,B.gguf] [--threads 2] [--runs 5]
       [--n-prompt 128] [--n-gen-prompt 16] [--n-gen 64] [--n-ctx 512] [--op-timing 30]
       [--llama-cpp-python /tmp/clients-real-noamx/bin/python] [--llama-cpp-env K=V]
       [--ours-only] [--json OUT] [--md OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "src"))   # last: an installed pyinfer wins

ENGINES = ("pyinfer", "llama.cpp")
METRICS = (("prompt_tps", "prompt tok/s", "{:.1f}"), ("decode_tps", "decode tok/s", "{:.2f}"),
           ("eval_ms", "eval ms/tok", "{:.1f}"), ("load_s", "load s", "{:.2f}"),
           ("cpu_ms", "CPU ms/tok", "{:.1f}"), ("cpu_share", "CPU share", "{:.2f}"),
           ("prompt_cold_tps", "cold prompt tok/s", "{:.1f}"), ("rss_mib", "peak RSS MiB", "{:.0f}"))
FIRST_ID = 3          # the tiny tokenizers' specials are ids 0..2


def token_ids(n: int, n_vocab: int, seed: int) -> list:
    rng = random.Random(seed)
    return [rng.randrange(FIRST_ID, n_vocab) for _ in range(n)]


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


# ---- child: one engine, one run ---------------------------------------------------------

def child(args: argparse.Namespace) -> dict:
    if args.child == "pyinfer":
        from pyinfer import Llama
    else:
        from llama_cpp import Llama
    t0 = time.perf_counter()
    llm = Llama(model_path=args.model, n_ctx=args.n_ctx, n_batch=args.n_batch,
                n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    load_s = time.perf_counter() - t0
    n_vocab = llm.n_vocab()
    res = {"engine": args.child, "load_s": load_s, "n_vocab": n_vocab}

    if args.n_prompt:
        prompt = token_ids(args.n_prompt, n_vocab, seed=1)
        times = []
        for _ in range(2):                    # the first pages the weights in
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(prompt)
            times.append(time.perf_counter() - t0)
        res.update(n_prompt=len(prompt), prompt_cold_tps=len(prompt) / times[0],
                   prompt_tps=len(prompt) / times[1])

    gen_prompt = token_ids(args.n_gen_prompt, n_vocab, seed=2)
    llm.reset()
    llm.eval(gen_prompt)
    own = own_counters(llm) if args.child == "llama.cpp" else None
    generated, eval_s = [], 0.0
    flt0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(args.n_gen):
        tok = llm.sample(temp=0.0)
        generated.append(int(tok))
        t1 = time.perf_counter()
        llm.eval([tok])
        eval_s += time.perf_counter() - t1
    decode_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    res.update(n_gen=args.n_gen, decode_tps=args.n_gen / decode_s, eval_ms=1000.0 * eval_s / args.n_gen,
               cpu_ms=1000.0 * cpu_s / args.n_gen, cpu_share=cpu_s / decode_s / args.threads,
               minor_faults_per_tok=(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - flt0) / args.n_gen,
               rss_mib=peak_rss_mib(), gen_prompt_tokens=gen_prompt, tokens=generated)
    if own is not None:
        after = own_counters(llm)
        if after and own and after[1] > own[1]:
            res["own_eval_ms"] = (after[0] - own[0]) / (after[1] - own[1])
    return res


def own_counters(llm):
    """llama.cpp's own decode counters (llama_perf_context: t_eval_ms, n_eval), or None."""
    try:
        import llama_cpp
        d = llama_cpp.llama_perf_context(llm.ctx)
        return float(d.t_eval_ms), int(d.n_eval)
    except Exception:           # an older or newer llama-cpp-python without them
        return None


# ---- op timing: pyinfer's decode-shaped products on the file's own weights ----------------

def op_timing(model: str, threads: int, iters: int) -> dict:
    """Seconds per compute of graphs holding one kind of product for every layer at decode
    shape (one token), on the file's weights: the experts' gate / up / down through
    gs_mul_mat_id (k fixed experts per layer), the same bytes as one dense matrix through
    gs_mul_mat (the k experts' rows side by side; repacked where pyinfer's loader repacks,
    and plain), and the attention projections as the engine runs them. Every compute reads
    the same experts, so the weights stay in the caches (a comparison of kernels, not of
    memory traffic: a real decode reads other experts every token). Reports microseconds
    per layer (wall: median; process CPU time of all threads: mean; with one thread the CPU
time is the work alone, whatever else runs on the machine) and the weight bytes read per wall second."""
    import gguf
    import numpy as np
    from pyinfer.tensor import Context, Graph, ThreadPool

    r = gguf.GGUFReader(model)
    tensors = {t.name: t for t in r.tensors}
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    n_layer = int(r.fields[f"{arch}.block_count"].parts[-1][0])
    k = int(r.fields[f"{arch}.expert_used_count"].parts[-1][0])
    rng = np.random.default_rng(0)
    wctx = Context(mem_size=(8 * n_layer * 8 + 64) * 512, no_alloc=True)

    def weight(name: str, data: np.ndarray, ttype: int, ne, repack: bool):
        t = wctx.new_tensor(ttype, ne, name)
        t.set_data(np.ascontiguousarray(data))
        if repack and t.can_repack:
            t.repack()
        return t

    def stacked(name):
        t = tensors[name]
        return t, [int(x) for x in t.shape]        # ne {K, M, n_expert}

    cases = {}          # case -> (builder of one layer's node(s) in a ctx, weight bytes per layer)
    for kind in ("gate", "up", "down"):
        for layer in range(n_layer):
            t, ne = stacked(f"blk.{layer}.ffn_{kind}_exps.weight")
            ids = np.sort(rng.choice(ne[2], size=k, replace=False)).astype(np.int32)
            raw = t.data.view(np.uint8)                 # (n_expert, M, row bytes) whatever the type
            per_layer = k * ne[1] * raw.shape[-1]
            w_id = weight(f"{kind}{layer}", raw, int(t.tensor_type), ne, False)
            dense = raw[ids].reshape(k * ne[1], raw.shape[-1])
            w_rep = weight(f"{kind}{layer}r", dense, int(t.tensor_type), (ne[0], k * ne[1]), True)
            w_plain = weight(f"{kind}{layer}p", dense, int(t.tensor_type), (ne[0], k * ne[1]), False)
            tname = t.tensor_type.name
            n_b = k if kind == "down" else 1
            cases.setdefault(f"mul_mat_id ffn_{kind}_exps ({tname})", []).append(
                (lambda ctx, w=w_id, ids=ids, ne=ne, n_b=n_b: ctx.mul_mat_id(
                    w, ctx.from_numpy(rng.standard_normal((1, n_b, ne[0]), dtype=np.float32)),
                    ctx.from_numpy(ids.reshape(1, k))), per_layer))
            for label, w in (("repacked" if w_rep.is_repacked else "not repackable", w_rep), ("plain", w_plain)):
                cases.setdefault(f"mul_mat same bytes as ffn_{kind} ({tname}, {label})", []).append(
                    (lambda ctx, w=w, ne=ne: ctx.mul_mat(
                        w, ctx.from_numpy(rng.standard_normal((1, ne[0]), dtype=np.float32))), per_layer))
    for proj in ("attn_q", "attn_k", "attn_v", "attn_output"):
        for layer in range(n_layer):
            t = tensors.get(f"blk.{layer}.{proj}.weight")
            if t is None:
                continue
            ne = [int(x) for x in t.shape]
            w = weight(f"{proj}{layer}", t.data.view(np.uint8), int(t.tensor_type), ne, True)
            cases.setdefault("mul_mat attention projections (as loaded)", []).append(
                (lambda ctx, w=w, ne=ne: ctx.mul_mat(
                    w, ctx.from_numpy(rng.standard_normal((1, ne[0]), dtype=np.float32))), t.data.nbytes))

    out = {}
    with ThreadPool(threads) as pool:
        for case, nodes in cases.items():
            with Context(64 << 20) as ctx:
                graph = Graph(ctx).build(*[build(ctx) for build, _ in nodes]).plan(threads)
                graph.compute(pool)                       # pages in, warms caches
                times, c0 = [], time.process_time()
                for _ in range(iters):
                    t0 = time.perf_counter()
                    graph.compute(pool)
                    times.append(time.perf_counter() - t0)
                c = (time.process_time() - c0) / iters     # the mean: other threads' time is added lazily
            s = statistics.median(times)
            nbytes = sum(b for _, b in nodes)
            out[case] = {"us_per_layer": 1e6 * s / n_layer, "cpu_us_per_layer": 1e6 * c / n_layer,
                         "weight_mib_per_layer": nbytes / n_layer / 2**20, "gb_per_s": nbytes / s / 1e9,
                         "gb_per_cpu_s": nbytes / c / 1e9 if c else None}
            print(f"  {case:<58} {1e6 * s / n_layer:9.1f} us/layer (CPU {1e6 * c / n_layer:9.1f})  "
                  f"{nbytes / n_layer / 2**20:6.2f} MiB/layer  {nbytes / s / 1e9:6.2f} GB/s", flush=True)
    return out


# ---- parent ------------------------------------------------------------------------------

def run_child(engine: str, model: str, args: argparse.Namespace) -> dict:
    python = args.llama_cpp_python if engine == "llama.cpp" else sys.executable
    cmd = [python, str(Path(__file__).resolve()), "--child", engine, "--model", model,
           "--threads", str(args.threads), "--n-prompt", str(args.n_prompt),
           "--n-gen-prompt", str(args.n_gen_prompt), "--n-gen", str(args.n_gen),
           "--n-ctx", str(args.n_ctx), "--n-batch", str(args.n_batch)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if engine == "llama.cpp":
        env.update(kv.split("=", 1) for kv in args.llama_cpp_env)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{engine} run on {model} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def loadavg() -> list:
    return [round(x, 2) for x in os.getloadavg()]


def metrics(args) -> list:
    return [m for m in METRICS if args.n_prompt or not m[0].startswith("prompt")]


def fmt_row(label: str, r: dict, ms) -> str:
    return f"{label:<24}" + "".join(f"{fmt.format(r[k]):>18}" for k, _, fmt in ms)


def bench_model(model: str, engines: list, args) -> dict:
    ms = metrics(args)
    print(f"\n== {model}  ({args.threads} threads, n_ctx {args.n_ctx}, prompt {args.n_prompt}, "
          f"decode {args.n_gen} after {args.n_gen_prompt}, {args.runs} runs)")
    print(f"{'':<24}" + "".join(f"{name:>18}" for _, name, _ in ms))
    load_before = loadavg()
    runs = {e: [] for e in engines}
    for i in range(args.runs):
        for e in (engines if i % 2 == 0 else engines[::-1]):
            r = run_child(e, model, args)
            runs[e].append(r)
            print(fmt_row(f"run {i + 1} {e}", r, ms), flush=True)
    load_after = loadavg()
    medians = {e: {k: statistics.median(r[k] for r in runs[e]) for k, _, _ in ms} for e in engines}
    print("medians")
    for e in engines:
        print(fmt_row(e, medians[e], ms))
    out = {"model": model, "runs": runs, "medians": medians,
           "loadavg_before": load_before, "loadavg_after": load_after}
    manifest = Path(model).parent / "manifest.json"
    if manifest.exists():
        out["manifest"] = json.loads(manifest.read_text())
    if len(engines) == 2:
        a, b = medians["pyinfer"], medians["llama.cpp"]
        out["ratios"] = {k: a[k] / b[k] for k, _, _ in ms if b[k]}
        print(f"{'pyinfer / llama.cpp':<24}" + "".join(f"{out['ratios'][k]:>17.2f}x" for k, _, _ in ms))
        out["same_greedy_tokens"] = runs["pyinfer"][0]["tokens"] == runs["llama.cpp"][0]["tokens"]
        print(f"same greedy tokens: {out['same_greedy_tokens']}")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    return out


def markdown(results: list, args) -> str:
    ms = metrics(args)
    env = f" (llama.cpp with {' '.join(args.llama_cpp_env)})" if args.llama_cpp_env else ""
    lines = [f"{args.threads} threads{env}, n_ctx {args.n_ctx}, n_batch {args.n_batch}; prompt {args.n_prompt} "
             f"tokens; decode {args.n_gen} tokens after {args.n_gen_prompt}; medians of {args.runs} runs", "",
             "| model | engine | " + " | ".join(name for _, name, _ in ms) + " |",
             "|---|---|" + "---:|" * len(ms)]
    for res in results:
        m = res.get("manifest", {})
        label = (f"{m['shape']} x{m['n_layer']} layers, {m['n_expert']} experts top-{m['n_expert_used']}"
                 if m else os.path.basename(res["model"]))
        for e, med in res["medians"].items():
            lines.append(f"| {label} | {e} | " + " | ".join(fmt.format(med[k]) for k, _, fmt in ms) + " |")
        if "ratios" in res:
            lines.append(f"| {label} | **pyinfer / llama.cpp** | "
                         + " | ".join(f"**{res['ratios'][k]:.2f}x**" for k, _, _ in ms) + " |")
    lines.append("")
    lines += [f"load average {os.path.basename(r['model'])}: before {r['loadavg_before']}, "
              f"after {r['loadavg_after']}" for r in results]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="comma-separated GGUF files")
    ap.add_argument("--threads", "-t", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--n-prompt", type=int, default=128, help="prompt-speed tokens (0: skip)")
    ap.add_argument("--n-gen-prompt", type=int, default=16)
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--llama-cpp-python", default=os.environ.get("PYINFER_BENCH_LLAMA_CPP_PYTHON", ""),
                    metavar="PY", help="interpreter with the real llama-cpp-python "
                                       "(env PYINFER_BENCH_LLAMA_CPP_PYTHON)")
    ap.add_argument("--llama-cpp-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment of the llama.cpp children (repeatable), e.g. OMP_WAIT_POLICY=passive: "
                         "its OpenMP threads then sleep instead of spinning at barriers")
    ap.add_argument("--ours-only", action="store_true", help="measure pyinfer alone")
    ap.add_argument("--op-timing", type=int, default=0, metavar="ITERS",
                    help="also time pyinfer's decode-shaped products per kind (ITERS computes each)")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--md", metavar="OUT")
    ap.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.n_gen < 1 or args.n_gen_prompt < 1 or args.runs < 1:
        ap.error("--n-gen, --n-gen-prompt and --runs must be at least 1")
    if args.child:
        print(json.dumps(child(args)))
        return 0
    engines = ["pyinfer"] if args.ours_only else list(ENGINES)
    if "llama.cpp" in engines and not args.llama_cpp_python:
        ap.error("--llama-cpp-python PY is needed to run llama.cpp (or --ours-only)")
    models = [m for m in args.model.split(",") if m]
    for kv in args.llama_cpp_env:
        if "=" not in kv:
            ap.error(f"--llama-cpp-env takes KEY=VALUE, got {kv!r}")
    for m in models:
        if not os.path.isfile(m):
            ap.error(f"no such file: {m}")
    results = [bench_model(m, engines, args) for m in models]
    for m, res in zip(models, results):
        if args.op_timing:
            print(f"\npyinfer decode-shaped products on {os.path.basename(m)}, {args.threads} threads "
                  f"(medians of {args.op_timing} computes)")
            res["op_timing"] = op_timing(m, args.threads, args.op_timing)
    md = markdown(results, args)
    print("\n" + md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "llama_cpp_env": args.llama_cpp_env, "n_ctx": args.n_ctx, "n_batch": args.n_batch,
                       "n_prompt": args.n_prompt, "n_gen_prompt": args.n_gen_prompt, "n_gen": args.n_gen,
                       "results": results}, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
