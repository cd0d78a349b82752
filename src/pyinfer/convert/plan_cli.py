"""Planning subcommands of ``python convert.py`` for PowerInfer (ReLU) models:

    python convert.py profile MODEL [CORPUS ...] [--out DIR] [--max-tokens N] [--samples N]
    python convert.py train-predictor MODEL [--activation DIR] [--outfile OUT.gguf] [--predictor-dir DIR]
    python convert.py gpu-index MODEL --vram-budget GiB [--reset-gpu-index] [--disable-gpu-index]

profile counts neuron firings over a corpus (default: the first 8192 tokens of
pydoc_data.topics; --max-tokens 0 for all of it) into DIR (default: MODEL's
directory/activation, PowerInfer's layout); train-predictor trains predictors from the
samples profile kept; gpu-index solves the hot/cold placement for a VRAM budget and writes
MODEL.generated.gpuidx. profile and train-predictor show a progress bar on stderr (total
and ETA). Errors are one line on stderr: exit code 2 for bad arguments, missing files and
models of the wrong kind, 1 for other failures (``pyinfer.cli_util``).
"""
from __future__ import annotations

import os
import time
from typing import List

import numpy as np

from pyinfer import cli_util

from .cli import output_file

GIB = 1 << 30
DEFAULT_PROFILE_TOKENS = 8192     # seconds for a tiny model, about 15 min for a 7B one on 2 cores


def _default_activation_dir(model: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(model)), "activation")


def profile_parser(prog: str = "convert.py profile") -> cli_util.ArgumentParser:
    ap = cli_util.ArgumentParser(prog=prog, description=(
        "Count per-layer neuron firings of a ReLU model over a corpus. A progress bar on stderr\n"
        "shows the tokens run, the total and the ETA."))
    ap.add_argument("model", type=cli_util.existing_file, help="PowerInfer GGUF (or a ReLU llama GGUF)")
    ap.add_argument("corpus", nargs="*", help="text files or directories (default: pydoc_data.topics)")
    ap.add_argument("--out", help="output directory (default: MODEL's directory/activation)")
    ap.add_argument("--max-tokens", type=cli_util.non_negative_int, default=DEFAULT_PROFILE_TOKENS,
                    help="stop after this many tokens (0: the whole corpus; pydoc_data.topics has about 110k)")
    ap.add_argument("--samples", type=cli_util.non_negative_int, default=0,
                    help="keep this many random tokens' FFN inputs and true masks (predictor training data)")
    ap.add_argument("--ctx", type=cli_util.positive_int, default=512, help="tokens per window")
    ap.add_argument("--batch", type=cli_util.positive_int, default=128, help="tokens per forward")
    ap.add_argument("--threads", type=cli_util.non_negative_int, default=0, help="threads (0: all cores)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample choice")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return ap


def train_parser(prog: str = "convert.py train-predictor") -> cli_util.ArgumentParser:
    ap = cli_util.ArgumentParser(prog=prog, description=(
        "Train activation predictors from profiled samples. A progress bar on stderr shows the\n"
        "layers trained, the total and the ETA."))
    ap.add_argument("model", type=cli_util.existing_file, help="PowerInfer GGUF the samples were profiled on")
    ap.add_argument("--activation", type=cli_util.existing_dir,
                    help="profile directory with samples.npz (default: MODEL's dir/activation)")
    ap.add_argument("--outfile", type=output_file, help="write a copy of MODEL with the new predictors")
    ap.add_argument("--predictor-dir", help="write PowerInfer's predictor directory (model_{i}.pt, config.json)")
    ap.add_argument("--threshold", type=float, default=0.0,
                    help="training threshold; the file gets the calibrated one unless --no-calibrate")
    ap.add_argument("--no-calibrate", action="store_true",
                    help="keep --threshold in the file instead of per-layer recall thresholds")
    ap.add_argument("--target-recall", type=cli_util.bounded(float, 0, 1, name="target recall", lo_open=True),
                    default=0.95, help="share of firing neurons the predictors must flag")
    ap.add_argument("--hidden", type=cli_util.positive_int, default=None,
                    help="predictor size H for every layer (default: adaptive)")
    ap.add_argument("--epochs", type=cli_util.positive_int, default=12, help="epochs per round")
    ap.add_argument("--pred-type", default="f16", choices=["f32", "f16"], help="type of fc1/fc2 in --outfile")
    ap.add_argument("--seed", type=int, default=0, help="seed of the splits and initialisation")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return ap


def gpu_index_parser(prog: str = "convert.py gpu-index") -> cli_util.ArgumentParser:
    ap = cli_util.ArgumentParser(prog=prog, description=(
        "Solve the hot/cold neuron placement and write MODEL.generated.gpuidx."))
    ap.add_argument("model", type=cli_util.existing_file, help="PowerInfer GGUF")
    ap.add_argument("--vram-budget", type=cli_util.bounded(float, 0, name="VRAM budget"), required=True,
                    help="GiB of VRAM for FFN neurons (what is left after dense tensors and KV cache)")
    ap.add_argument("--activation", type=cli_util.existing_dir,
                    help="profile directory (default: MODEL's directory/activation)")
    ap.add_argument("--reset-gpu-index", action="store_true", help="regenerate even if a usable file exists")
    ap.add_argument("--disable-gpu-index", action="store_true",
                    help="use no GPU index (every neuron on the CPU): writes nothing")
    ap.add_argument("--objective", choices=["time", "mass"], default="time",
                    help="time: modelled decode time; mass: PowerInfer's activation mass")
    positive = cli_util.bounded(float, 0, name="throughput", lo_open=True)
    ap.add_argument("--cpu-gbps", type=positive, default=20.0, help="CPU sparse-FFN throughput, GB/s of rows")
    ap.add_argument("--gpu-gbps", type=positive, default=1000.0, help="GPU throughput, GB/s of rows")
    ap.add_argument("--group", type=cli_util.positive_int, default=256, help="neurons per placement unit")
    ap.add_argument("--calibration-tokens", type=cli_util.non_negative_int, default=256,
                    help="without a profile: tokens of a dense calibration run (0: uniform)")
    ap.add_argument("--threads", type=cli_util.non_negative_int, default=0,
                    help="calibration threads (0: all cores)")
    return ap


def run(argv: List[str], prog: str = "convert.py") -> int:
    """`argv` = [subcommand, its arguments...]: exit codes as ``pyinfer.cli_util``."""
    cmd, rest = argv[0], argv[1:]
    parser, body = {"profile": (profile_parser, _profile), "train-predictor": (train_parser, _train),
                    "gpu-index": (gpu_index_parser, _gpu_index)}[cmd]
    ap = parser(f"{prog} {cmd}")
    args = ap.parse_args(rest)
    return cli_util.run(lambda: body(args), ap.prog)


def _calibration(n_tokens: int, n_threads: int):
    """Without a profile: a dense calibration run over `n_tokens` tokens of the default corpus
    (true ReLU firing, not the predictor's guess); None (uniform frequencies) for 0."""
    if n_tokens <= 0:
        return None

    def calibrate(model_path: str):
        from .profile import profile_model
        r = profile_model(model_path, max_tokens=n_tokens, n_threads=n_threads, progress=False)
        return [c / r.n_tokens for c in r.counts.astype(np.float64)], f"a {r.n_tokens}-token dense calibration run"
    return calibrate


def _profile(args) -> int:
    from .profile import profile_model, read_corpus
    docs = read_corpus(args.corpus) if args.corpus else None
    r = profile_model(args.model, docs, max_tokens=args.max_tokens or None, n_ctx=args.ctx, n_batch=args.batch,
                      samples=args.samples, seed=args.seed, n_threads=args.threads,
                      progress=not args.no_progress,
                      corpus_name=", ".join(args.corpus) if args.corpus else "")
    out = args.out or _default_activation_dir(args.model)
    files = r.save(out)
    dens = ", ".join(f"{d:.3f}" for d in r.density)
    print(f"profiled {r.n_tokens} tokens in {r.seconds:.1f} s ({r.n_tokens / max(r.seconds, 1e-9):.1f} tok/s); "
          f"firing density per layer: {dens}")
    print(f"wrote {len(files)} files to {out}" + ("" if any(f.endswith(".pt") for f in files)
                                                  else " (no activation_*.pt: torch is not installed)"))
    return 0


def _train(args) -> int:
    from pyinfer.gguf_model import GGUFFile
    from pyinfer.tensor import GGMLType

    from .predictor_train import (TABLE_HEADER, TrainConfig, train_predictors, write_model_with_predictors,
                                  write_predictor_dir)
    from .profile import load_activation_counts, load_samples
    if not args.outfile and not args.predictor_dir:
        raise ValueError("nothing to write: give --outfile and/or --predictor-dir")
    if args.outfile and not GGUFFile(args.model).is_powerinfer:     # before training, not after
        raise ValueError(f"{args.model} is not a PowerInfer file (PWRI): --outfile copies one; "
                         "convert the model with --sparse first, or write only --predictor-dir")
    directory = args.activation or _default_activation_dir(args.model)
    if not os.path.exists(os.path.join(directory, "samples.npz")):
        raise ValueError(f"{directory} has no samples.npz: run `convert.py profile --samples N` first")
    xs, masks = load_samples(directory)
    counts = load_activation_counts(directory)
    cfg = TrainConfig(threshold=args.threshold, target_recall=args.target_recall, hidden=args.hidden,
                      epochs=args.epochs, seed=args.seed, calibrate=not args.no_calibrate)
    t0 = time.perf_counter()
    fc1s, fc2s, reports, threshold = train_predictors(args.model, xs, masks, counts.freq() if counts else None,
                                                      cfg, progress=not args.no_progress)
    print(TABLE_HEADER)
    for r in reports:
        print(r.row())
    print(f"trained {len(reports)} predictors in {time.perf_counter() - t0:.1f} s; threshold {threshold:g}; "
          "held-out mean recall "
          f"{sum(r.recall for r in reports) / len(reports):.4f}, mean predicted sparsity "
          f"{sum(r.predicted_sparsity for r in reports) / len(reports):.3f}")
    if args.predictor_dir:
        write_predictor_dir(args.predictor_dir, fc1s, fc2s, threshold)
        print(f"wrote {args.predictor_dir}")
    if args.outfile:
        write_model_with_predictors(args.model, args.outfile, fc1s, fc2s, threshold,
                                    GGMLType[args.pred_type.upper()])
        print(f"wrote {args.outfile}")
    return 0


def _gpu_index(args) -> int:
    from pyinfer.offload.gpu_index import ensure_gpu_index, gpu_index_path
    from pyinfer.offload.solver import Speeds
    if args.disable_gpu_index:
        print("GPU index disabled: every FFN neuron stays on the CPU; nothing written")
        return 0
    speeds = Speeds(args.cpu_gbps * 1e9, args.gpu_gbps * 1e9, objective=args.objective)
    index = ensure_gpu_index(args.model, int(args.vram_budget * GIB), reset=args.reset_gpu_index,
                             activation_dir=args.activation, speeds=speeds, group=args.group,
                             calibrate=_calibration(args.calibration_tokens, args.threads), verbose=True)
    per_layer = ", ".join(str(n) for n in index.n_gpu)
    print(f"{gpu_index_path(args.model)}: GPU neurons per layer {per_layer} "
          f"(made for {index.vram_capacity / GIB:.4g} GiB, {index.vram_capacity} bytes)")
    return 0
