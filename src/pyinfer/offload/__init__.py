"""GPU offload: device status, the VRAM-budgeted placement and its load report.

    plan = make_plan(spec, vram_budget=4.0, hot_neurons=buckets)   # GiB, per-layer ids
    print(format_report(plan, spec.n_layer, spec.n_ff))

`Llama(vram_budget=..., n_gpu_layers=..., n_cpu_moe=...)` reaches this through
`plan_for_engine` (MoE experts: offload/experts.py; the settings' extra `expert_profile` names
a routing profile, `expert_slots` caps the device slots per layer, `expert_cache` runs the LRU
expert cache, offload/expert_cache.py). Without
CUDA (not built, or no device) `vram_budget` raises GPUUnavailableError, while
`n_gpu_layers` leaves every layer on the CPU, as llama.cpp's CPU build does
(`gpu_layers_note` says so).
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np

from .budget import DEFAULT_MARGIN, GIB, MIB, budget_bytes, ffn_slice_bytes, part
from .device import DeviceInfo, GPUUnavailableError, cuda_status, device_info, mem_info, require_cuda
from .model_spec import ModelSpec, TensorSpec, read_gpu_buckets, spec_from_file
from .planner import OffloadBudgetError, OffloadPlan, plan_hybrid, plan_layers, summary
from .report import format_report
from .gpu_index import ensure_gpu_index

__all__ = ["DEFAULT_MARGIN", "GIB", "MIB", "budget_bytes", "ffn_slice_bytes", "part", "DeviceInfo",
           "GPUUnavailableError", "cuda_status", "device_info", "mem_info", "require_cuda",
           "ModelSpec", "TensorSpec", "read_gpu_buckets", "spec_from_file", "OffloadBudgetError",
           "OffloadPlan", "plan_hybrid", "plan_layers", "summary", "format_report", "make_plan",
           "gpu_options_requested", "gpu_layers_note", "plan_for_engine"]


def make_plan(spec: ModelSpec, vram_budget: Optional[float] = None, n_gpu_layers: int = 0,
              hot_neurons: Optional[Sequence[np.ndarray]] = None,
              free_bytes: Optional[int] = None, margin: int = DEFAULT_MARGIN,
              expert_counts: Optional[Sequence[np.ndarray]] = None, n_cpu_moe: int = 0,
              expert_slots: Optional[int] = None) -> OffloadPlan:
    """Whole layers when n_gpu_layers != 0, else the hybrid placement. The budget is
    `vram_budget` GiB, or `free_bytes` minus `margin` when it is None. MoE models:
    `expert_counts` (per-layer routing counts) value the experts of the hybrid plan, and the
    experts of layers < `n_cpu_moe` stay on the CPU in both; `expert_slots` caps a layer's
    device slots (offload/experts.py)."""
    budget = budget_bytes(vram_budget, free_bytes, margin)
    if n_gpu_layers != 0:
        return plan_layers(spec, budget, n_gpu_layers, n_cpu_moe)
    return plan_hybrid(spec, budget, hot_neurons, expert_counts, n_cpu_moe, expert_slots)


def gpu_options_requested(vram_budget: Optional[float], n_gpu_layers: int) -> bool:
    return vram_budget is not None or n_gpu_layers != 0


def gpu_layers_note(n_gpu_layers: int, what: Optional[str] = None) -> Optional[str]:
    """None when n_gpu_layers is 0 or CUDA is usable; else the note that the layers stay
    on the CPU (llama-cpp-python's CPU build accepts n_gpu_layers and runs on the CPU).
    `what` names the option in the note (default "n_gpu_layers=N")."""
    if n_gpu_layers == 0:
        return None
    ok, reason = cuda_status()
    if ok:
        return None
    return (f"{what or f'n_gpu_layers={n_gpu_layers}'}: no usable CUDA GPU ({reason}), so "
            "every layer runs on the CPU")


def plan_for_engine(engine, vram_budget: Optional[float], n_gpu_layers: int,
                    device=None) -> Optional[OffloadPlan]:
    """The plan for a loaded Engine (None when no GPU option was given, or only
    n_gpu_layers on a machine without usable CUDA). Hot neurons of a sparse model come
    from its GPU index (`<model>.generated.gpuidx`), reused or generated for the VRAM the
    dense parts leave (gpu_index.ensure_gpu_index; the settings' extra `reset_gpu_index` /
    `disable_gpu_index` keep PowerInfer's meaning). `device`: a device Backend to plan for
    (its memory is the free memory, no margin; pyinfer.backend), else CUDA's device 0."""
    if not gpu_options_requested(vram_budget, n_gpu_layers):
        return None
    if device is None:
        if vram_budget is None and gpu_layers_note(n_gpu_layers) is not None:
            return None
        require_cuda(f"vram_budget={vram_budget!r}" if vram_budget is not None else f"n_gpu_layers={n_gpu_layers}")
    kv = engine.kv     # as allocated: its type (F16, Q8_0, ...), rows and sequences
    spec = spec_from_file(engine.file, engine.cfg, engine.n_ctx, engine.n_batch,
                          [part(k.nbytes) + part(v.nbytes) for k, v in zip(kv.k, kv.v)])
    # a device backend's free memory is its whole budget (no driver allocations grow after the plan)
    margin = 0 if device is not None else DEFAULT_MARGIN
    if device is not None:
        stats = device.stats()
        free = stats["arena_bytes"] - stats["arena_used"]
        if vram_budget is not None and budget_bytes(vram_budget, None) > free:
            raise OffloadBudgetError(f"vram_budget={vram_budget!r} GiB is more than the device's "
                                     f"{free / MIB:.1f} MiB")
    else:
        free, _ = mem_info(0)
    hot = None
    if spec.sparse and n_gpu_layers == 0:
        # the neurons' share: what the dense tensors, KV cache and scratch leave of the budget
        dense = make_plan(spec, vram_budget, 0, None, free_bytes=free, margin=margin)
        extra = engine.settings.extra
        index = ensure_gpu_index(engine.file.path, max(0, dense.budget - dense.device_bytes),
                                 reset=bool(extra.get("reset_gpu_index")),
                                 disable=bool(extra.get("disable_gpu_index")))
        if index is not None:
            hot = [index.bucket(i) for i in range(spec.n_layer)]
    extra = engine.settings.extra
    counts = None
    if spec.n_expert and extra.get("expert_profile"):
        from .experts import load_expert_counts
        counts = load_expert_counts(extra["expert_profile"])[0]
    plan = make_plan(spec, vram_budget, n_gpu_layers, hot, free_bytes=free, margin=margin,
                     expert_counts=counts, n_cpu_moe=extra.get("n_cpu_moe") or 0,
                     expert_slots=extra.get("expert_slots"))
    if device is None:
        warnings.warn("the GPU offload plan is computed and reported, but this engine's forward does "
                      "not run on the GPU yet: the model runs on the CPU", RuntimeWarning, stacklevel=3)
    return plan
