"""Routing profile of a MoE model: how often each layer's router chooses each expert.

    python -m pyinfer.offload.expert_profile MODEL.gguf TEXT.txt [-o MODEL.experts.npz]

runs the model over the text (windows of n_ctx tokens, chunks of n_batch, every token's
routing kept: each chunk computes all its outputs, so the last layer routes every token too)
and writes per-layer counts (offload/experts.py's save_expert_counts). `Llama(...,
vram_budget=..., offload_device=...)` / Engine settings' extra `expert_profile=<path>` values the
hybrid plan's experts by these counts; `record_routing` returns the trace itself (tokens,
layers, k) for scripts (scripts/bench_expert_cache.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np

from ..config import ContextSettings
from ..engine import Engine
from .experts import counts_from_trace, save_expert_counts


def record_routing(engine: Engine, tokens: Sequence[int], n_ctx: Optional[int] = None) -> np.ndarray:
    """The routing trace of `tokens` (int32 (n_tokens, n_layer, k)): windows of n_ctx tokens
    (default the engine's) from position 0, in chunks of the engine's n_batch."""
    cfg = engine.cfg
    if not cfg.n_expert:
        raise ValueError("not a mixture-of-experts model: nothing to profile")
    n_ctx = n_ctx or engine.n_ctx
    rows = []
    for s in range(0, len(tokens), n_ctx):
        engine.truncate(0)
        window = list(tokens[s:s + n_ctx])
        for c in range(0, len(window), engine.n_batch):
            chunk = window[c:c + engine.n_batch]
            engine.forward(chunk, n_outputs=len(chunk))
            r = engine.routing()
            rows.append(np.stack([r[i] for i in range(cfg.n_layer)], axis=1))
    engine.truncate(0)
    if not rows:
        raise ValueError("no tokens to profile")
    return np.concatenate(rows).astype(np.int32)


def profile_file(model_path: str, text: str, n_ctx: int = 512, n_batch: int = 64,
                 max_tokens: Optional[int] = None, n_threads: int = 0) -> np.ndarray:
    """The routing trace of `text` (tokenized with the model's tokenizer) through `model_path`."""
    from ..gguf_model import GGUFFile
    from ..tokenizer import Tokenizer
    f = GGUFFile(model_path)
    tokens = Tokenizer.from_gguf(f.reader).tokenize(text.encode("utf-8"), add_bos=True)
    if max_tokens:
        tokens = tokens[:max_tokens]
    engine = Engine(f, ContextSettings(n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads))
    try:
        return record_routing(engine, tokens)
    finally:
        engine.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pyinfer.offload.expert_profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="MoE GGUF model")
    ap.add_argument("text", help="calibration text file (UTF-8)")
    ap.add_argument("-o", "--output", default=None, help="counts file (default: <model>.experts.npz)")
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    ap.add_argument("-b", "--batch-size", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("-t", "--threads", type=int, default=0)
    args = ap.parse_args(argv)
    with open(args.text, encoding="utf-8") as fh:
        text = fh.read()
    trace = profile_file(args.model, text, args.ctx_size, args.batch_size, args.max_tokens, args.threads)
    out = args.output or os.path.splitext(args.model)[0] + ".experts.npz"
    from ..config import ModelConfig
    from ..gguf_model import GGUFFile
    n_expert = ModelConfig.from_metadata(GGUFFile(args.model).metadata).n_expert
    save_expert_counts(out, counts_from_trace(trace, n_expert), len(trace))
    print(f"expert routing of {len(trace)} tokens, {trace.shape[1]} layers, top-{trace.shape[2]}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
