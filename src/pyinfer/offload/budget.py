"""Byte arithmetic of a GPU placement: every device byte the plan will use.

All device memory of a plan lives in one arena (one cudaMalloc). Each part of it (a tensor,
a KV cache, a hot-neuron slice, a scratch buffer) starts at a multiple of PART_ALIGN, and the
arena is a whole number of ARENA_GRANULE (the allocation granularity of cudaMalloc for large
blocks), so `arena_bytes(parts)` is what the device will really lose. The sizes of a hybrid
FFN slice follow ggml_sparse/src/cuda/ffn_hybrid.cu exactly (gs_cuda_ffn_mem reports the same
numbers; the GPU tests compare them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

GIB = 1 << 30
MIB = 1 << 20
PART_ALIGN = 256
ARENA_GRANULE = 2 * MIB
# Default headroom left free when no budget is given: CUDA's own per-context allocations
# (kernel images, stream and event pools, the attention scratch) grow after the plan is made.
DEFAULT_MARGIN = 512 * MIB
F32, I32, F16 = 4, 4, 2


def part(n: int) -> int:
    """Bytes a part of n bytes takes in the arena (rounded up to PART_ALIGN)."""
    if n < 0:
        raise ValueError(f"negative size {n}")
    return -(-n // PART_ALIGN) * PART_ALIGN


def arena_bytes(parts_total: int) -> int:
    """Device bytes of an arena holding parts that add up to parts_total (aligned parts)."""
    return -(-parts_total // ARENA_GRANULE) * ARENA_GRANULE


def budget_bytes(vram_budget_gib: Optional[float], free_bytes: Optional[int],
                 margin: int = DEFAULT_MARGIN) -> int:
    """The budget in bytes: `vram_budget_gib` GiB when given (PowerInfer's --vram-budget),
    else the free device memory minus `margin`. Negative or NaN budgets are errors."""
    if vram_budget_gib is not None:
        b = float(vram_budget_gib)
        if not b >= 0.0:
            raise ValueError(f"vram_budget must be a number of GiB >= 0, got {vram_budget_gib!r}")
        return int(b * GIB)
    if free_bytes is None:
        raise ValueError("no vram_budget given and the free device memory is unknown")
    return max(0, int(free_bytes) - margin)


def kv_layer_bytes(kv_dim: int, n_ctx: int, elem_bytes: int = F16) -> int:
    """One layer's K and V caches ({kv_dim, n_ctx} each, F16 by default), as two parts."""
    return 2 * part(kv_dim * n_ctx * elem_bytes)


@dataclass(frozen=True)
class SliceRowBytes:
    """Bytes of one neuron's rows in a layer: gate and up (0 for gate when the FFN has
    none) and ffn_down_t."""
    gate: int
    up: int
    down: int


def ffn_slice_bytes(rows: SliceRowBytes, n_hot: int, n_embd: int, n_ff: int) -> int:
    """Device bytes of gs_cuda_ffn_new for n_hot neurons (0 when n_hot is 0: no slice):
    weights (gate, up, down_t rows, the I32 bucket) and the per-token scratch (x, the
    index column, activations, output)."""
    if n_hot == 0:
        return 0
    weights = (part(n_hot * rows.gate) if rows.gate else 0) + part(n_hot * rows.up) \
        + part(n_hot * rows.down) + part(I32 * n_hot)
    scratch = part(F32 * n_embd) + part(I32 * (n_ff + 1)) + part(F32 * n_hot) + part(F32 * n_embd)
    return weights + scratch


@dataclass(frozen=True)
class ScratchShape:
    """What sizes the forward's device scratch: the largest batch run on the GPU, the
    context, and the model's widths."""
    n_batch: int
    n_ctx: int
    n_embd: int
    n_ff: int
    n_head: int
    q_dim: int
    kv_dim: int
    n_vocab: int


def scratch_parts(s: ScratchShape, output_on_gpu: bool, dense_ffn_on_gpu: bool) -> Iterable[int]:
    """The device scratch buffers of one forward (each a part): hidden state, residual and
    norm output, q/k/v, attention scores (attention.cu: n_head x n_ctx per token) and output,
    the dense FFN's two intermediates when an FFN runs densely on the GPU, and the logits
    when the output matrix is on the GPU."""
    n = s.n_batch
    yield from (part(F32 * s.n_embd * n) for _ in range(3))
    yield part(F32 * (s.q_dim + 2 * s.kv_dim) * n)
    yield part(F32 * s.n_head * s.n_ctx * n)
    yield part(F32 * s.q_dim * n)
    if dense_ffn_on_gpu:
        yield from (part(F32 * s.n_ff * n) for _ in range(2))
    if output_on_gpu:
        yield part(F32 * s.n_vocab * n)
