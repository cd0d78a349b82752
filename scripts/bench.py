#!/usr/bin/env python3
"""Side-by-side speed and memory of pyinfer and llama.cpp (llama-cpp-python).

Both engines load the same GGUF with the same thread count, context size and
batch size, evaluate the same prompt (a fixed English text cut to --n-prompt
tokens) and then decode --n-gen tokens greedily through their Python API, the
loop a user writes:

    tok = llm.sample(temp=0.0); llm.eval([tok])      # --n-gen times

Each run starts every engine in a fresh subprocess (so peak RSS is that
engine's alone); the engines alternate which goes first from run to run, and
the medians over --runs runs are reported with the ratios pyinfer/llama.cpp.

Measured per engine and run:
  load      seconds to construct Llama(...) (open, map weights, tokenizer)
  prompt    prompt tokens / seconds of llm.eval(prompt)
  decode    generated tokens / seconds of the sample+eval loop
  eval ms   milliseconds per token spent in llm.eval alone during decoding
  rss       peak resident memory of the process (VmHWM), MiB

llama-cpp-python is optional: without it only pyinfer is measured. It may live in
another virtual environment: --llama-cpp-python PY (or $PYINFER_BENCH_LLAMA_CPP_PYTHON)
runs the llama.cpp children with that interpreter. --model gemma3 is the Gemma 3 270M
file (pyinfer.default_model.gemma3_path). The machine may be shared; use medians of
several interleaved runs.

Usage: python scripts/bench.py [--model M.gguf | --model gemma3] [--threads 2] [--runs 5]
       [--n-prompt 128] [--n-gen 128] [--n-ctx 2048] [--json OUT] [--llama-cpp-python PY]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "src"))   # last: an installed pyinfer wins; a llama.cpp child may run in a venv without it

# Prompt text (written for this benchmark); repeated when --n-prompt needs more.
PROMPT_TEXT = (
    "The lighthouse keeper kept a notebook of every ship that passed the point. In spring the "
    "fishing boats went out before dawn and came back heavy in the afternoon, and he wrote down "
    "their names, the weather and the colour of the sea. In summer the ferries ran twice a day, "
    "loud with children who waved at the tower as if it could wave back. Autumn brought storms: "
    "once a cargo ship lost power near the rocks, and he spent the whole night on the radio, "
    "guiding the tug that finally pulled it clear. Winter was quiet. He repaired the lamp, "
    "painted the railings, read old almanacs and counted the days until the first boat returned. "
    "Years later, when the light was automated and he moved to the town, he gave the notebooks "
    "to the library, where students still read them to learn how the coast has changed."
)

ENGINES = ("pyinfer", "llama.cpp")
METRICS = (("load_s", "load s", "{:.3f}"), ("prompt_tps", "prompt tok/s", "{:.1f}"),
           ("decode_tps", "decode tok/s", "{:.1f}"), ("eval_ms", "eval ms/tok", "{:.2f}"),
           ("rss_mib", "peak RSS MiB", "{:.1f}"))


def default_model() -> str:
    from pyinfer.default_model import require_default_model
    return require_default_model()


def resolve_model(name) -> str:
    if name == "gemma3":
        from pyinfer.default_model import require_gemma3
        return require_gemma3()
    return name or default_model()


def llama_cpp_available(python: str | None = None) -> bool:
    if python:
        return subprocess.run([python, "-c", "import llama_cpp"], capture_output=True).returncode == 0
    return importlib.util.find_spec("llama_cpp") is not None


def peak_rss_mib() -> float:
    """Peak resident set size of this process (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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

    text = PROMPT_TEXT
    prompt = llm.tokenize(text.encode(), add_bos=True)
    while len(prompt) < args.n_prompt:
        text += " " + PROMPT_TEXT
        prompt = llm.tokenize(text.encode(), add_bos=True)
    prompt = prompt[:args.n_prompt]

    t0 = time.perf_counter()
    llm.eval(prompt)
    prompt_s = time.perf_counter() - t0

    generated, eval_s = [], 0.0
    t0 = time.perf_counter()
    for _ in range(args.n_gen):
        tok = llm.sample(temp=0.0)
        generated.append(int(tok))
        t1 = time.perf_counter()
        llm.eval([tok])
        eval_s += time.perf_counter() - t1
    decode_s = time.perf_counter() - t0
    return {
        "engine": args.child, "load_s": load_s,
        "n_prompt": len(prompt), "prompt_tps": len(prompt) / prompt_s,
        "n_gen": args.n_gen, "decode_tps": args.n_gen / decode_s,
        "eval_ms": 1000.0 * eval_s / args.n_gen, "rss_mib": peak_rss_mib(),
        "prompt_tokens": [int(t) for t in prompt], "tokens": generated,
    }


# ---- parent: interleaved runs and the table ---------------------------------------------

def run_child(engine: str, args: argparse.Namespace) -> dict:
    python = args.llama_cpp_python if engine == "llama.cpp" and args.llama_cpp_python else sys.executable
    cmd = [python, str(Path(__file__).resolve()), "--child", engine, "--model", args.model,
           "--threads", str(args.threads), "--n-prompt", str(args.n_prompt),
           "--n-gen", str(args.n_gen), "--n-ctx", str(args.n_ctx), "--n-batch", str(args.n_batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{engine} run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_row(label: str, r: dict) -> str:
    return f"{label:<22}" + "".join(f"{fmt.format(r[k]):>14}" for k, _, fmt in METRICS)


def header() -> str:
    return f"{'':<22}" + "".join(f"{name:>14}" for _, name, _ in METRICS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="GGUF file, or 'gemma3' (default: SmolLM2-135M Q4_1)")
    ap.add_argument("--threads", "-t", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--n-prompt", type=int, default=128)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--engines", default=",".join(ENGINES),
                    help="comma-separated subset of: " + ", ".join(ENGINES))
    ap.add_argument("--json", metavar="OUT", help="write every run and the medians here")
    ap.add_argument("--llama-cpp-python", default=os.environ.get("PYINFER_BENCH_LLAMA_CPP_PYTHON"),
                    metavar="PY", help="interpreter whose environment has llama-cpp-python "
                                       "(default: this one; env PYINFER_BENCH_LLAMA_CPP_PYTHON)")
    ap.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.model = resolve_model(args.model)
    if args.child:
        print(json.dumps(child(args)))
        return 0

    engines = [e for e in args.engines.split(",") if e]
    for e in engines:
        if e not in ENGINES:
            ap.error(f"unknown engine {e!r}")
    if "llama.cpp" in engines and not llama_cpp_available(args.llama_cpp_python):
        print("llama-cpp-python is not installed: measuring pyinfer only", file=sys.stderr)
        engines.remove("llama.cpp")

    if args.llama_cpp_python and "llama.cpp" in engines:
        print(f"llama.cpp runs under {args.llama_cpp_python}")
    print(f"model {os.path.basename(args.model)}, {args.threads} threads, n_ctx {args.n_ctx}, "
          f"{args.n_prompt} prompt tokens, {args.n_gen} generated, {args.runs} interleaved runs")
    print(header())
    runs = {e: [] for e in engines}
    for i in range(args.runs):
        order = engines if i % 2 == 0 else engines[::-1]
        for e in order:
            r = run_child(e, args)
            runs[e].append(r)
            print(fmt_row(f"run {i + 1} {e}", r), flush=True)

    medians = {e: {k: statistics.median(r[k] for r in runs[e]) for k, _, _ in METRICS}
               for e in engines}
    print("\nmedians")
    print(header())
    for e in engines:
        print(fmt_row(e, medians[e]))
    result = {"model": args.model, "threads": args.threads, "n_ctx": args.n_ctx,
              "n_prompt": args.n_prompt, "n_gen": args.n_gen, "runs": runs, "medians": medians}
    if len(engines) == 2:
        a, b = medians["pyinfer"], medians["llama.cpp"]
        ratios = {k: a[k] / b[k] for k, _, _ in METRICS if b[k]}
        print(f"{'pyinfer / llama.cpp':<22}" +
              "".join(f"{ratios[k]:>13.2f}x" if k in ratios else f"{'':>14}" for k, _, _ in METRICS))
        same_prompt = runs["pyinfer"][0]["prompt_tokens"] == runs["llama.cpp"][0]["prompt_tokens"]
        same_tokens = runs["pyinfer"][0]["tokens"] == runs["llama.cpp"][0]["tokens"]
        print(f"same prompt tokens: {same_prompt}; same greedy tokens: {same_tokens}")
        result.update(ratios=ratios, same_prompt_tokens=same_prompt, same_greedy_tokens=same_tokens)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
