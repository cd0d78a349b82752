"""python -m pyinfer.sparsity calibrate MODEL.gguf --sparsity 0.5 -o OUT.gguf [--text FILE ...]

Calibrates per-layer CATS thresholds (|silu(gate)| magnitude cuts) for a target FFN
sparsity and writes a copy of the model holding them (pyinfer.sparsity.* keys).
Default calibration text: the last --tokens tokens of the pydoc_data.topics corpus
(pyinfer.perplexity scores the corpus from its start, so a perplexity run of fewer
than (corpus - tokens) / n_ctx chunks never sees calibration text; the full corpus
overlaps it in its last chunks). With --text, the first --tokens tokens of the files.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..perplexity import read_text
from ..tensor import GGMLType
from .calibrate import calibrate, write_calibrated


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pyinfer.sparsity",
                                 description="training-free FFN sparsity (CATS) for SwiGLU models")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("calibrate", help="calibrate per-layer thresholds and write a copy of the model")
    c.add_argument("model")
    c.add_argument("--sparsity", type=float, required=True, help="fraction of FFN neurons to drop, in [0, 1)")
    c.add_argument("-o", "--output", required=True, help="the calibrated GGUF to write")
    c.add_argument("--text", action="append", help="calibration text file (repeatable; default: pydoc_data.topics)")
    c.add_argument("--tokens", type=int, default=8192, help="calibration tokens (default 8192; <= 0: all)")
    c.add_argument("-c", "--ctx-size", type=int, default=512, help="tokens per run (default 512)")
    c.add_argument("-t", "--threads", type=int, default=0, help="threads (default: one per core)")
    c.add_argument("--down-t", choices=[t.name.lower() for t in (GGMLType.F32, GGMLType.F16, GGMLType.Q8_0,
                                                                  GGMLType.Q4_0, GGMLType.Q4_1)],
                   help="also store the down projection transposed (ffn_down_t) in this type, "
                        "replacing ffn_down (quantized types are re-quantized: numerics change)")
    args = ap.parse_args(argv)

    res = calibrate(args.model, read_text(args.text), args.sparsity, args.tokens, args.ctx_size, args.threads,
                    from_end=not args.text)
    down_t = GGMLType[args.down_t.upper()] if args.down_t else None
    write_calibrated(args.model, args.output, res, down_t)
    print(f"calibrated on {res.n_tokens} tokens for {res.target:.0%} FFN sparsity; "
          f"dropped per layer on the calibration sample: "
          f"{min(res.achieved):.3f}..{max(res.achieved):.3f}")
    print("thresholds: " + " ".join(f"{t:.4g}" for t in res.thresholds))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
