"""The load report: what went to the GPU, per layer, against the budget.

PowerInfer prints this with LLAMA_OFFLOAD_DEBUG; here `Llama(..., verbose=True)` prints it
(and `format_report` returns it for scripts). One line per layer, then the global tensors and
the totals; every line starts with "pyinfer:" like the rest of the verbose output.
"""
from __future__ import annotations

from typing import List, Optional

from .budget import MIB
from .model_spec import is_expert_tensor
from .planner import OffloadPlan


def _mib(n: int) -> str:
    return f"{n / MIB:.2f} MiB"


def _layer_line(plan: OffloadPlan, layer: int, n_ff: int) -> str:
    items = [i for i in plan.items if i.layer == layer]
    marks = []
    for kind, label in (("attention", "attn"), ("predictor", "pred"), ("norm", "norm"),
                        ("kv", "kv"), ("ffn", "ffn"), ("experts", "experts")):
        if kind == "experts" and plan.mode == "hybrid":
            if plan.n_expert:
                ex = plan.experts_of(layer)
                n = 0 if ex is None else ex.n_slots
                ids = f" {sorted(int(e) for e in ex.experts)}" if ex is not None and n <= 16 else ""
                marks.append(f"experts {n}/{plan.n_expert} GPU{ids}" + (" (n_cpu_moe)" if layer < plan.n_cpu_moe else ""))
            continue
        ks = [i for i in items if (i.kind == "ffn" and is_expert_tensor(i.name)) == (kind == "experts")
              and i.kind == (kind if kind != "experts" else "ffn")]
        if not ks:
            continue
        on = sum(i.on_gpu for i in ks)
        marks.append(f"{label} {'GPU' if on == len(ks) else 'cpu' if on == 0 else f'{on}/{len(ks)} GPU'}")
    sl = next((s for s in plan.slices if s.layer == layer), None)
    if plan.mode == "hybrid" and (plan.slices or not plan.n_expert):
        n_hot = 0 if sl is None else len(sl.hot)
        marks.append(f"hot {n_hot}/{n_ff} ({100.0 * n_hot / max(n_ff, 1):.1f}%)")
    return f"pyinfer:   layer {layer:3d}: {', '.join(marks)}; {_mib(plan.gpu_bytes_of(layer))}"


def _experts_line(plan: OffloadPlan, n_layer: int) -> str:
    """Where the experts live: how many on the GPU, which layers keep theirs on the CPU."""
    total = n_layer * plan.n_expert
    if plan.mode == "hybrid":
        on = sum(e.n_slots for e in plan.experts)
    else:
        on = sum(plan.n_expert for i in range(n_layer)
                 if any(it.on_gpu and it.layer == i and is_expert_tensor(it.name) for it in plan.items))
    line = f"experts on the GPU: {on} of {total} ({100.0 * on / max(total, 1):.1f}%); the CPU computes the rest"
    if plan.n_cpu_moe:
        last = min(plan.n_cpu_moe, n_layer) - 1
        line += f"; n_cpu_moe={plan.n_cpu_moe}: layers 0..{last} keep their experts on the CPU"
    return line


def format_report(plan: OffloadPlan, n_layer: int, n_ff: int, device: Optional[str] = None,
                  executed: bool = True) -> str:
    """The report of `plan` for a model of n_layer layers of n_ff neurons. `device`: the
    GPU's name; `executed=False` says the plan was made but the forward runs on the CPU."""
    mode = f"hybrid (dense tensors by priority, then {'experts' if plan.n_expert else 'hot neurons'})" \
        if plan.mode == "hybrid" \
        else f"n_gpu_layers: layers {plan.gpu_layers[0]}..{plan.gpu_layers[-1]}" if plan.gpu_layers \
        else "n_gpu_layers: no layer"
    lines: List[str] = [
        f"pyinfer: GPU offload plan{' on ' + device if device else ''}: {mode}",
        f"pyinfer:   budget {_mib(plan.budget)}, used {_mib(plan.device_bytes)} "
        f"({100.0 * plan.device_bytes / max(plan.budget, 1):.1f}%: weights, slices, KV cache and "
        f"scratch {_mib(plan.scratch)}, in one arena)",
    ]
    lines += [_layer_line(plan, i, n_ff) for i in range(n_layer)]
    glob = [i for i in plan.items if i.layer is None]
    if glob:
        lines.append("pyinfer:   global: " + ", ".join(
            f"{i.name} {'GPU' if i.on_gpu else 'cpu'}" for i in glob) + "; embedding lookup on the CPU")
    n_hot = sum(len(s.hot) for s in plan.slices)
    if plan.n_expert:
        lines.append("pyinfer:   " + _experts_line(plan, n_layer))
    if plan.mode == "hybrid" and (plan.slices or not plan.n_expert):
        lines.append(f"pyinfer:   hot neurons on the GPU: {n_hot} of {n_layer * n_ff} "
                     f"({100.0 * n_hot / max(n_layer * n_ff, 1):.1f}%); the CPU computes the rest")
    lines += [f"pyinfer:   note: {n}" for n in plan.notes]
    if not executed:
        lines.append("pyinfer:   note: this engine's forward does not run on the GPU yet: the plan "
                     "above is computed and reported, the model runs on the CPU")
    return "\n".join(lines)
