"""Command lines: ``python convert.py`` / ``pyinfer-convert`` and ``python -m pyinfer.quantize``
/ ``pyinfer-quantize``. Errors follow ``pyinfer.cli_util``: one line on stderr, exit code 2 for
bad arguments, missing files and checkpoints or models the tool cannot use."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from pyinfer import cli_util

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


def program_name(module: str) -> str:
    """How the user called us, for messages: ``python -m MODULE`` when sys.argv[0] is a file
    of this package, else the script's name (convert.py, pyinfer-convert, pyinfer-quantize)."""
    path = sys.argv[0] if sys.argv else ""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if path in ("", "-c") or os.path.abspath(path).startswith(package + os.sep):
        return f"python -m {module}"
    return os.path.basename(path)


def output_file(path: str) -> str:
    """argparse type: an output path whose directory exists (checked before any work)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise argparse.ArgumentTypeError(f"output directory {directory} does not exist")
    return path


def convert_parser(prog: str = "convert.py") -> cli_util.ArgumentParser:
    ap = cli_util.ArgumentParser(
        prog=prog,
        description="Convert a Hugging Face checkpoint (llama, mistral, qwen2, qwen3, gemma2, gemma3,\n"
                    "phi3, falcon, opt, stablelm, starcoder2, gpt-neox, ReLU-llama/ProSparse, bamboo)\n"
                    "to GGUF, or to a PowerInfer GGUF (PWRI: ReLU llama, bamboo, falcon, opt) when a\n"
                    "predictor directory or --sparse is given. A progress bar on stderr shows the\n"
                    "bytes written, the total and the ETA.\n\n"
                    "Offline planning for PowerInfer models:\n"
                    f"  {prog} profile|train-predictor|gpu-index ...   (see `{prog} profile --help`)")
    ap.add_argument("model", type=cli_util.existing_dir,
                    help="Hugging Face model directory (config.json, *.safetensors or "
                         "pytorch_model*.bin, tokenizer files)")
    ap.add_argument("predictor", nargs="?", type=cli_util.existing_dir,
                    help="PowerInfer predictor directory: model_{i}.pt (torch) or model_{i}.safetensors / "
                         "model_{i}.npz with fc1.weight [H, n_embd] and fc2.weight [n_ff, H]; optional "
                         "config.json with sparse_threshold")
    ap.add_argument("--outfile", type=output_file,
                    help="output path (default: MODEL/ggml-model-OUTTYPE[.powerinfer].gguf)")
    ap.add_argument("--outtype", default="f16", type=str.lower, choices=sorted(OUTTYPES), help="tensor type")
    ap.add_argument("--sparse", action="store_true",
                    help="write the PowerInfer layout (PWRI, ffn_down_t) without predictors")
    ap.add_argument("--threads", type=cli_util.non_negative_int, default=0,
                    help="quantization threads (0: all cores)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    prog = program_name("pyinfer.convert") if argv is None else "convert.py"
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PLANNING_COMMANDS:
        from .plan_cli import run
        return run(argv, prog)
    args = convert_parser(prog).parse_args(argv)
    return cli_util.run(lambda: _convert(args), prog)


def _convert(args) -> int:
    from .hf_to_gguf import ConvertOptions, convert
    logging.basicConfig(level=logging.WARNING, format="%(message)s")   # warnings only: the bar shows progress
    powerinfer = bool(args.predictor) or args.sparse
    outfile = args.outfile or os.path.join(
        args.model, f"ggml-model-{args.outtype}{'.powerinfer' if powerinfer else ''}.gguf")
    opts = ConvertOptions(outfile, args.outtype, args.predictor, args.sparse, args.threads,
                          progress=not args.no_progress)
    r = convert(args.model, opts)
    types = ", ".join(f"{n} {k}" for k, n in sorted(r.types.items()))
    print(f"wrote {r.path}: {'PowerInfer ' if r.powerinfer else ''}{r.arch}, {r.n_tensors} tensors ({types}), "
          f"{_human(r.nbytes)} from {_human(r.source_bytes)} of weights in {r.seconds:.1f} s; "
          f"tokenizer: {r.vocab_note}")
    return 0


def quantize_main(argv: Optional[Sequence[str]] = None) -> int:
    prog = program_name("pyinfer.quantize") if argv is None else "python -m pyinfer.quantize"
    ap = cli_util.ArgumentParser(
        prog=prog,
        description="Re-quantize a GGUF or PowerInfer GGUF file with llama.cpp's per-tensor rules\n"
                    "(PowerInfer files keep their PWRI magic and layout). A progress bar on stderr\n"
                    "shows the bytes written, the total and the ETA.")
    ap.add_argument("input", type=cli_util.existing_file, help="GGUF or PowerInfer GGUF to read")
    ap.add_argument("output", type=output_file, help="GGUF to write (not the input)")
    ap.add_argument("type", type=str.lower, choices=sorted(OUTTYPES), help="target type")
    ap.add_argument("--threads", type=cli_util.non_negative_int, default=0,
                    help="quantization threads (0: all cores)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = ap.parse_args(argv)
    return cli_util.run(lambda: _quantize(args), prog)


def _quantize(args) -> int:
    from .quantize import quantize_file
    logging.basicConfig(level=logging.WARNING, format="%(message)s")   # warnings only: the bar shows progress
    r = quantize_file(args.input, args.output, args.type, args.threads, progress=not args.no_progress)
    types = ", ".join(f"{n} {k}" for k, n in sorted(r.types.items()))
    print(f"wrote {r.path}: {r.n_tensors} tensors ({types}), {_human(r.nbytes)} in {r.seconds:.1f} s")
    return 0
