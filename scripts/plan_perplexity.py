#!/usr/bin/env python3
"""Perplexity of PowerInfer models on held-out text, dense and with their predictors.

    python scripts/plan_perplexity.py MODEL [MODEL ...] --tokens 512

The text is the last documents of pydoc_data.topics (`convert.py profile --max-tokens N`
reads the first ones, so the two do not overlap for any N below the corpus size). Each
model runs twice: every neuron computed (dense=True) and as the file says (predictor and
threshold); the relative difference is what the predictor costs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


from pyinfer.convert.profile import default_corpus, perplexity, tokenize_corpus  # noqa: E402
from pyinfer.gguf_model import GGUFFile  # noqa: E402
from pyinfer.tokenizer import Tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--tokens", type=int, default=512, help="held-out tokens")
    ap.add_argument("--docs", type=int, default=6, help="held-out documents (from the end of the corpus)")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    print("| model | threshold | dense PPL | sparse PPL | difference |\n|---|---:|---:|---:|---:|")
    for path in args.models:
        f = GGUFFile(path)
        docs = tokenize_corpus(Tokenizer.from_gguf(f.reader), default_corpus()[-args.docs:], args.tokens)
        t0 = time.perf_counter()
        dense = perplexity(path, docs, args.ctx, args.threads, dense=True)
        sparse = perplexity(path, docs, args.ctx, args.threads)
        print(f"| {Path(path).name} | {f.metadata.get('powerinfer.sparse_threshold', 0.0):.4g} | {dense:.3f} | "
              f"{sparse:.3f} | {100 * (sparse / dense - 1):+.2f}% |", flush=True)
        print(f"({sum(len(d) for d in docs)} tokens, {time.perf_counter() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
