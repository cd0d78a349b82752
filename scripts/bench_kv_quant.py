#!/usr/bin/env python3
"""Quantized KV caches side by side: F16, Q8_0 and Q4_0 (llama.cpp's type_k/type_v).

For each cache type, on the same model and threads:
  kv MiB    the KV cache's bytes at --n-ctx
  ppl       perplexity on the first --ppl-chunks chunks of --ppl-ctx tokens of
            pyinfer.perplexity's default corpus (its rules: each chunk from an empty cache,
            the second half scored); also the mean |delta NLL| per scored token vs F16
  prompt    tokens/s evaluating a --n-prompt token prompt (the same text for every type)
  decode    tokens/s of --n-gen greedy single-token forwards after that prompt
  agree     how many of the --n-gen greedy tokens equal F16's (from the first one on)
Speeds are medians of --runs runs; the types alternate within each run.

Usage: python scripts/bench_kv_quant.py [--model M.gguf] [--threads 2] [--n-ctx 2048]
       [--n-prompt 1500] [--n-gen 64] [--runs 3] [--ppl-chunks 8] [--ppl-ctx 512] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "src"))   # last: an installed pyinfer (with its extension) wins

TYPES = ("f16", "q8_0", "q4_0")


def prompt_tokens(eng, n: int):
    from pyinfer.perplexity import default_corpus
    from pyinfer.tokenizer import Tokenizer
    vocab = Tokenizer.from_gguf(eng.file.reader)
    toks = vocab.tokenize(default_corpus().encode("utf-8"), add_bos=True)
    return toks[-n:] if len(toks) >= n else (toks * (n // len(toks) + 1))[:n]


def speed_run(path: str, kv_type: str, args, prompt=None):
    """(prompt tok/s, decode tok/s, greedy tokens, KV bytes)."""
    from pyinfer.config import ContextSettings
    from pyinfer.engine import Engine
    eng = Engine(path, ContextSettings(n_ctx=args.n_ctx, n_batch=512, n_threads=args.threads,
                                       n_threads_batch=args.threads, kv_type=kv_type))
    try:
        prompt = prompt if prompt is not None else prompt_tokens(eng, args.n_prompt)
        t0 = time.perf_counter()
        for i in range(0, len(prompt), eng.n_batch):
            logits = eng.forward(prompt[i:i + eng.n_batch])
        t1 = time.perf_counter()
        out = []
        for _ in range(args.n_gen):
            tok = int(np.argmax(logits[-1]))
            out.append(tok)
            logits = eng.forward([tok])
        t2 = time.perf_counter()
        return len(prompt) / (t1 - t0), args.n_gen / (t2 - t1), out, eng.kv.nbytes, prompt
    finally:
        eng.close()


def perplexity(path: str, kv_type: str, args):
    from pyinfer.config import ContextSettings
    from pyinfer.engine import Engine
    from pyinfer.gguf_model import GGUFFile
    from pyinfer.perplexity import chunk_nll, chunks_of, default_corpus, second_half_logits
    from pyinfer.tokenizer import Tokenizer
    f = GGUFFile(path)
    vocab = Tokenizer.from_gguf(f.reader)
    add_bos = bool(f.metadata.get("tokenizer.ggml.add_bos_token", True))
    bos = int(f.metadata.get("tokenizer.ggml.bos_token_id", 1))
    tokens = vocab.tokenize(default_corpus().encode("utf-8"), add_bos=add_bos)
    eng = Engine(f, ContextSettings(n_ctx=args.ppl_ctx, n_batch=min(args.ppl_ctx, 512),
                                    n_threads=args.threads, n_threads_batch=args.threads, kv_type=kv_type))
    try:
        nll = []
        for chunk in chunks_of(tokens, args.ppl_ctx, args.ppl_chunks):
            inp = [bos] + chunk[1:] if add_bos else chunk
            nll.append(chunk_nll(second_half_logits(eng, inp), chunk))
        return np.concatenate(nll)
    finally:
        eng.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--n-prompt", type=int, default=1500)
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ppl-chunks", type=int, default=8)
    ap.add_argument("--ppl-ctx", type=int, default=512)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    if args.model is None:
        from pyinfer.default_model import require_default_model
        args.model = str(require_default_model())

    res = {t: {"prompt": [], "decode": []} for t in TYPES}
    prompt = None
    for run in range(args.runs):
        for t in TYPES:
            pp, tg, toks, nbytes, prompt = speed_run(args.model, t, args, prompt)
            r = res[t]
            r["prompt"].append(pp)
            r["decode"].append(tg)
            r["kv_mib"] = nbytes / 2**20
            r["tokens"] = toks
            print(f"run {run + 1} {t:5s} prompt {pp:7.1f} tok/s  decode {tg:6.1f} tok/s", flush=True)
    nll = {t: perplexity(args.model, t, args) for t in TYPES}
    ref = res["f16"]["tokens"]
    print(f"\nmodel {Path(args.model).name}, {args.threads} threads; speed at n_ctx {args.n_ctx} after a "
          f"{len(prompt)}-token prompt, medians of {args.runs}; perplexity: {args.ppl_chunks} chunks of "
          f"{args.ppl_ctx} ({len(nll['f16'])} scored tokens)")
    print(f"{'type':6s} {'kv MiB':>8s} {'x F16':>6s} {'ppl':>8s} {'|dNLL|':>8s} {'prompt t/s':>11s} "
          f"{'decode t/s':>11s} {'agree':>6s}")
    for t in TYPES:
        r = res[t]
        r["ppl"] = float(np.exp(nll[t].mean()))
        r["mean_abs_dnll"] = float(np.abs(nll[t] - nll["f16"]).mean())
        r["prompt_median"] = statistics.median(r["prompt"])
        r["decode_median"] = statistics.median(r["decode"])
        agree = next((i for i, (a, b) in enumerate(zip(r["tokens"], ref)) if a != b), len(ref))
        r["agree"] = agree
        print(f"{t:6s} {r['kv_mib']:8.1f} {r['kv_mib'] / res['f16']['kv_mib']:6.3f} {r['ppl']:8.4f} "
              f"{r['mean_abs_dnll']:8.4f} {r['prompt_median']:11.1f} {r['decode_median']:11.1f} "
              f"{agree:3d}/{len(ref)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": res}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
