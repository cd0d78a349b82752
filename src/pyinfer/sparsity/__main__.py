"""python -m pyinfer.sparsity calibrate MODEL.gguf --sparsity 0.5 -o OUT.gguf [--text FILE ...]

Calibrates per-layer CATS thresholds (|silu(gate)| magnitude cuts) for a target FFN
sparsity and writes a copy of the model holding them (pyinfer.sparsity.* keys).
Default calibration text: the last --tokens tokens of the pydoc_data.topics corpus
(pyinfer.perplexity scores the corpus from its start, so a perplexity run of fewer
than (corpus - tokens) / n_ctx chunks never sees calibration text; the full corpus
overlaps it in its last chunks). With --text, the first --tokens tokens of the files.
A progress bar on stderr shows the tokens run, the total and the ETA.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from .. import cli_util
from ..perplexity import read_text
from ..tensor import GGMLType
from .calibrate import calibrate, write_calibrated

PROG = "python -m pyinfer.sparsity"
DOWN_T_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1)


def parser() -> cli_util.ArgumentParser:
    ap = cli_util.ArgumentParser(prog=PROG, description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    c = sub.add_parser("calibrate", help="calibrate per-layer thresholds and write a copy of the model",
                       description=__doc__)
    c.add_argument("model", type=cli_util.existing_file, help="a plain SwiGLU GGUF (not a PowerInfer file)")
    c.add_argument("--sparsity", type=cli_util.bounded(float, 0, 1, name="sparsity", hi_open=True),
                   required=True, help="fraction of FFN neurons to drop, in [0, 1)")
    c.add_argument("-o", "--output", required=True, help="the calibrated GGUF to write")
    c.add_argument("--text", action="append", type=cli_util.existing_file,
                   help="calibration text file (repeatable; default: the pydoc_data.topics corpus)")
    c.add_argument("--tokens", type=int, default=8192, help="calibration tokens (<= 0: all of the text)")
    c.add_argument("-c", "--ctx-size", type=cli_util.bounded(int, 16, name="n_ctx"), default=512,
                   help="tokens per run")
    c.add_argument("-t", "--threads", type=cli_util.non_negative_int, default=0, help="threads (0: one per core)")
    c.add_argument("--down-t", choices=[t.name.lower() for t in DOWN_T_TYPES],
                   help="also store the down projection transposed (ffn_down_t) in this type, "
                        "replacing ffn_down (quantized types are re-quantized: numerics change)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    return cli_util.run(lambda: _calibrate(args), f"{PROG} {args.cmd}")


def _calibrate(args) -> int:
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):      # before a minute of calibration, not after
        raise FileNotFoundError(f"output directory {out_dir} does not exist")
    res = calibrate(args.model, read_text(args.text), args.sparsity, args.tokens, args.ctx_size, args.threads,
                    from_end=not args.text, progress=not args.no_progress)
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
