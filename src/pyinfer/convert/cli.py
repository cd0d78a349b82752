"""Command lines: ``python convert.py`` / ``pyinfer-convert`` and ``python -m pyinfer.quantize``."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from .quant_types import OUTTYPES


def _human(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"


# planning subcommands (plan_cli.py): `python convert.py profile|train-predictor|gpu-index ...`
PLANNING_COMMANDS = ("profile", "train-predictor", "gpu-index")


def convert_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description="Convert a Hugging Face checkpoint (llama, mistral, qwen2, ReLU-llama/ProSparse, bamboo) "
                    "to GGUF, or to a PowerInfer GGUF (PWRI) when a predictor directory or --sparse is given. "
                    "Offline planning for PowerInfer models: `profile`, `train-predictor`, `gpu-index` "
                    "(see `python convert.py profile --help`).")
    ap.add_argument("model", help="Hugging Face model directory (config.json, *.safetensors or "
                                  "pytorch_model*.bin, tokenizer files)")
    ap.add_argument("predictor", nargs="?", help="PowerInfer predictor directory: model_{i}.pt (torch) or "
                                                 "model_{i}.safetensors / model_{i}.npz with fc1.weight "
                                                 "[H, n_embd] and fc2.weight [n_ff, H]; optional config.json "
                                                 "with sparse_threshold")
    ap.add_argument("--outfile", help="output path (default: MODEL/ggml-model-OUTTYPE[.powerinfer].gguf)")
    ap.add_argument("--outtype", default="f16", choices=sorted(OUTTYPES), help="tensor type (default f16)")
    ap.add_argument("--sparse", action="store_true",
                    help="write the PowerInfer layout (PWRI, ffn_down_t) without predictors")
    ap.add_argument("--threads", type=int, default=0, help="quantization threads (default: all cores)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PLANNING_COMMANDS:
        from .plan_cli import run
        return run(argv)
    from .hf_to_gguf import ConvertOptions, convert
    args = convert_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    powerinfer = bool(args.predictor) or args.sparse
    outfile = args.outfile or os.path.join(
        args.model, f"ggml-model-{args.outtype}{'.powerinfer' if powerinfer else ''}.gguf")
    opts = ConvertOptions(outfile, args.outtype, args.predictor, args.sparse, args.threads,
                          progress=not args.no_progress)
    try:
        r = convert(args.model, opts)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    types = ", ".join(f"{n} {k}" for k, n in sorted(r.types.items()))
    print(f"wrote {r.path}: {'PowerInfer ' if r.powerinfer else ''}{r.arch}, {r.n_tensors} tensors ({types}), "
          f"{_human(r.nbytes)} from {_human(r.source_bytes)} of weights in {r.seconds:.1f} s; "
          f"tokenizer: {r.vocab_note}")
    return 0


def quantize_main(argv: Optional[Sequence[str]] = None) -> int:
    from .quantize import quantize_file
    ap = argparse.ArgumentParser(
        prog="python -m pyinfer.quantize",
        description="Re-quantize a GGUF or PowerInfer GGUF file with llama.cpp's per-tensor rules "
                    "(PowerInfer files keep their PWRI magic and layout).")
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("type", type=str.lower, choices=sorted(OUTTYPES))
    ap.add_argument("--threads", type=int, default=0, help="quantization threads (default: all cores)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        r = quantize_file(args.input, args.output, args.type, args.threads, progress=not args.no_progress)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    types = ", ".join(f"{n} {k}" for k, n in sorted(r.types.items()))
    print(f"wrote {r.path}: {r.n_tensors} tensors ({types}), {_human(r.nbytes)} in {r.seconds:.1f} s")
    return 0
