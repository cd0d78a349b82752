#!/usr/bin/env python3
"""Placement summary of a profiled PowerInfer model at several VRAM budgets (markdown).

    python scripts/plan_report.py MODEL --activation DIR --budgets 0.5 1.5 [--cpu-gbps 20 --gpu-gbps 1000]

For each budget (GiB for FFN neurons): per layer, the neurons our solver (time objective)
and PowerInfer's rule (globally hottest groups of 256) put on the GPU and the activation
mass they carry, and both placements' modelled FFN time per token.
"""
from __future__ import annotations

import argparse


from pyinfer.offload.activation_counts import load_activation_counts  # noqa: E402
from pyinfer.offload.solver import Speeds, layer_neuron_bytes, powerinfer_greedy, solve  # noqa: E402
from pyinfer.gguf_model import GGUFFile  # noqa: E402

GIB = 1 << 30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--activation", required=True, help="profile directory (profile.npz or activation_*.pt)")
    ap.add_argument("--budgets", type=float, nargs="+", required=True, help="GiB for FFN neurons")
    ap.add_argument("--cpu-gbps", type=float, default=20.0)
    ap.add_argument("--gpu-gbps", type=float, default=1000.0)
    ap.add_argument("--group", type=int, default=256)
    args = ap.parse_args()
    counts = load_activation_counts(args.activation)
    if counts is None:
        ap.error(f"no profile in {args.activation}")
    freq = counts.freq()
    nbytes, n_ff = layer_neuron_bytes(GGUFFile(args.model))
    speeds = Speeds(args.cpu_gbps * 1e9, args.gpu_gbps * 1e9)
    print(f"{len(nbytes)} layers x {n_ff[0]} neurons, {nbytes[0]} bytes per neuron "
          f"({nbytes[0] * n_ff[0] / 2**20:.1f} MiB of FFN rows per layer); expected firing neurons per "
          f"token per layer: {', '.join(f'{f.sum():.0f}' for f in freq)}; cost model: CPU {args.cpu_gbps:g} GB/s, "
          f"GPU {args.gpu_gbps:g} GB/s, {speeds.sync_s * 1e6:g} us per split layer\n")
    for budget in args.budgets:
        b = int(budget * GIB)
        ours = solve(freq, nbytes, b, speeds, args.group)
        theirs = powerinfer_greedy(freq, nbytes, b, speeds, args.group)
        print(f"### budget {budget:g} GiB\n")
        print("| layer | ours: GPU neurons | ours: mass on GPU | ours: layer time (us) | "
              "PowerInfer: GPU neurons | PowerInfer: mass on GPU | PowerInfer: layer time (us) |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for l in range(len(nbytes)):
            tot = ours.total_mass[l] or 1.0
            print(f"| {l} | {ours.n_gpu[l]} | {100 * ours.gpu_mass[l] / tot:.1f}% | "
                  f"{ours.layer_time_s[l] * 1e6:.1f} | {theirs.n_gpu[l]} | "
                  f"{100 * theirs.gpu_mass[l] / tot:.1f}% | {theirs.layer_time_s[l] * 1e6:.1f} |")
        print(f"\nours ({ours.method}): {ours.summary()}  ")
        print(f"PowerInfer's rule: {theirs.summary()}\n")


if __name__ == "__main__":
    main()
