"""PowerInfer's GPU index file: which FFN neurons of each layer live on the GPU.

``<model>.generated.gpuidx`` is a GGUF v3 file whose magic is patched to
``PWRI`` (as PowerInfer writes it), holding

    general.architecture         = "generic.gpu_index"
    generic.gpu_index.block_count  u32: number of layers
    split.vram_capacity            u64: the VRAM budget (bytes) the placement was made for
    per layer N, in order:
      blk.N.gpu_idx     I32 [n_ff]: 1 = neuron N lives on the GPU, 0 = on the CPU
      blk.N.gpu_bucket  I32 [k]:    the ids of the GPU neurons, ascending (k = sum gpu_idx)

Written with the ``gguf`` package's writer (then the magic patched), read with
pyinfer's reader (gguf_model.GGUFFile accepts PWRI). Files PowerInfer made are
read the same way; a file without ``gpu_bucket`` tensors (PowerInfer's newer
exporter leaves them out) gets them derived from ``gpu_idx``.

``ensure_gpu_index`` is what a loader calls: it reuses the file next to the
model when it was made for a budget no larger than the current one (a file
made for a larger budget would place more than fits, so it is regenerated,
as PowerInfer does), otherwise it runs the solver (``solver.py`` beside this
file) and writes the file. The neuron statistics it solves from, in order of
preference: profiled counts in ``activation/`` beside the model (ours,
``profile.npz``, or PowerInfer's ``activation_{i}.pt``); else what the
caller's ``calibrate`` function returns (the offline ``python convert.py
gpu-index`` passes a short dense calibration run); else uniform frequencies,
which only split the budget between layers (the load report says so: run
``python convert.py profile MODEL`` first for a real placement).
"""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np

from ..gguf_model import POWERINFER_MAGIC, GGUFFile, ModelLoadError
from .activation_counts import load_activation_counts
from .solver import Speeds, layer_neuron_bytes, solve

ARCH = "generic.gpu_index"
KEY_BLOCK_COUNT = "generic.gpu_index.block_count"
KEY_VRAM_CAPACITY = "split.vram_capacity"
SUFFIX = ".generated.gpuidx"


def gpu_index_path(model_path: str) -> str:
    """Where PowerInfer keeps the index of `model_path`: the model's path + '.generated.gpuidx'."""
    return str(model_path) + SUFFIX


@dataclass
class GpuIndex:
    """Per layer, a 0/1 int32 mask over the layer's n_ff neurons (1 = on the GPU), and the
    VRAM budget in bytes the placement was made for."""
    vram_capacity: int
    gpu_idx: List[np.ndarray]

    @property
    def n_layer(self) -> int:
        return len(self.gpu_idx)

    def bucket(self, layer: int) -> np.ndarray:
        """Ascending int32 ids of layer `layer`'s GPU neurons."""
        return np.flatnonzero(self.gpu_idx[layer]).astype(np.int32)

    @property
    def n_gpu(self) -> List[int]:
        return [int(np.count_nonzero(m)) for m in self.gpu_idx]

    @classmethod
    def from_counts(cls, vram_capacity: int, n_gpu: List[int], scores: List[np.ndarray]) -> "GpuIndex":
        """The `n_gpu[l]` highest-scoring neurons of each layer on the GPU (ties: lower id first)."""
        masks = []
        for k, s in zip(n_gpu, scores):
            order = np.argsort(-np.asarray(s, dtype=np.float64), kind="stable")
            m = np.zeros(len(s), dtype=np.int32)
            m[order[:int(k)]] = 1
            masks.append(m)
        return cls(int(vram_capacity), masks)


def write_gpu_index(path: str, index: GpuIndex) -> None:
    """Write `index` in PowerInfer's format (atomically: a temporary file renamed into place)."""
    import gguf
    if not 0 <= index.vram_capacity < 2 ** 64:
        raise ValueError(f"vram_capacity {index.vram_capacity} does not fit a u64")
    tmp = f"{path}.part{os.getpid()}"
    w = gguf.GGUFWriter(tmp, ARCH)
    try:
        for i, m in enumerate(index.gpu_idx):
            m = np.ascontiguousarray(m, dtype=np.int32)
            if m.ndim != 1 or not np.isin(m, (0, 1)).all():
                raise ValueError(f"layer {i}: gpu_idx must be a 1-D array of 0/1")
            w.add_tensor(f"blk.{i}.gpu_idx", m, raw_dtype=gguf.GGMLQuantizationType.I32)
            w.add_tensor(f"blk.{i}.gpu_bucket", np.flatnonzero(m).astype(np.int32),
                         raw_dtype=gguf.GGMLQuantizationType.I32)
        w.add_uint32(KEY_BLOCK_COUNT, index.n_layer)
        w.add_uint64(KEY_VRAM_CAPACITY, int(index.vram_capacity))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(tmp, "r+b") as f:
            f.write(POWERINFER_MAGIC)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_gpu_index(path: str) -> GpuIndex:
    """Read a GPU index file (ours or PowerInfer's). Raises ModelLoadError when it is not one
    or is inconsistent (a bucket that disagrees with its gpu_idx, a missing layer)."""
    f = GGUFFile(path)
    md = f.metadata
    if md.get("general.architecture") != ARCH:
        raise ModelLoadError(f"{path}: not a GPU index (general.architecture "
                             f"{md.get('general.architecture')!r}, want {ARCH!r})")
    for key in (KEY_BLOCK_COUNT, KEY_VRAM_CAPACITY):
        if key not in md:
            raise ModelLoadError(f"{path}: GPU index lacks the key '{key}'")
    masks = []
    for i in range(int(md[KEY_BLOCK_COUNT])):
        t = f.get(f"blk.{i}.gpu_idx")
        if t is None or len(t.ne) != 1 or t.type.name != "I32":
            raise ModelLoadError(f"{path}: missing or malformed tensor 'blk.{i}.gpu_idx' (want I32 [n_ff])")
        m = np.array(t.data, dtype=np.int32).reshape(-1)
        if not np.isin(m, (0, 1)).all():
            raise ModelLoadError(f"{path}: blk.{i}.gpu_idx holds values other than 0 and 1")
        b = f.get(f"blk.{i}.gpu_bucket")
        if b is not None and not np.array_equal(np.asarray(b.data).reshape(-1), np.flatnonzero(m)):
            raise ModelLoadError(f"{path}: blk.{i}.gpu_bucket disagrees with blk.{i}.gpu_idx")
        masks.append(m)
    return GpuIndex(int(md[KEY_VRAM_CAPACITY]), masks)


def ensure_gpu_index(model_path: str, budget_bytes: int, *, reset: bool = False, disable: bool = False,
                     activation_dir: Optional[str] = None, speeds=None, group: int = 256,
                     calibrate: Optional[Callable[[str], Tuple[List[np.ndarray], str]]] = None,
                     verbose: bool = False) -> Optional[GpuIndex]:
    """The GPU index to load `model_path` with, given `budget_bytes` of VRAM for FFN neurons
    (what is left after the dense tensors, KV cache and scratch).

    disable: no index (every neuron on the CPU): returns None and touches no file.
    reset: ignore an existing file and regenerate it.
    Otherwise an existing ``<model>.generated.gpuidx`` made for at most `budget_bytes` and
    matching the model's layer shapes is reused; else the placement is solved
    (solver.solve with `speeds`, a solver.Speeds, and `group` neurons per
    unit) from the statistics named in the module docstring, and written (a read-only
    directory only warns: the index is still returned)."""
    if disable:
        return None
    budget_bytes = int(budget_bytes)
    if budget_bytes < 0:
        raise ValueError(f"VRAM budget must be >= 0 bytes, got {budget_bytes}")
    model = GGUFFile(model_path)
    neuron_bytes, n_ff = layer_neuron_bytes(model)
    path = gpu_index_path(model_path)
    if not reset and os.path.exists(path):
        try:
            old = read_gpu_index(path)
        except ModelLoadError as e:
            warnings.warn(f"regenerating the GPU index: {e}", RuntimeWarning)
        else:
            fits = [len(m) for m in old.gpu_idx] == n_ff
            if fits and old.vram_capacity <= budget_bytes:
                note = "" if old.vram_capacity == budget_bytes else \
                    f"; reset it to place neurons for all {budget_bytes} bytes"
                _say(verbose, f"GPU index {path}: reused (made for {old.vram_capacity} bytes{note})")
                return old
            _say(verbose, f"GPU index {path}: made for {old.vram_capacity} bytes"
                          f"{'' if fits else ' and another layer shape'}: regenerating")
    freq, source = _neuron_statistics(model, activation_dir, calibrate)
    if [len(f) for f in freq] != n_ff:
        raise ValueError(f"the neuron statistics ({source}) do not match the model's layers")
    plan = solve(freq, neuron_bytes, budget_bytes, speeds or Speeds(), group=group)
    index = GpuIndex.from_counts(budget_bytes, plan.n_gpu, freq)
    try:
        write_gpu_index(path, index)
        _say(verbose, f"GPU index {path}: written from {source}; {plan.summary()}")
    except OSError as e:
        warnings.warn(f"could not write the GPU index {path} ({e}); using it from memory", RuntimeWarning)
    return index


def _neuron_statistics(model: GGUFFile, activation_dir, calibrate):
    """(per-layer firing frequencies per token, where they came from)."""
    directory = activation_dir or os.path.join(os.path.dirname(os.path.abspath(model.path)), "activation")
    counts = load_activation_counts(directory)
    if counts is not None:
        return counts.freq(), f"profiled counts in {directory}"
    if calibrate is not None:
        return calibrate(model.path)
    _, n_ff = layer_neuron_bytes(model)
    return [np.ones(n, dtype=np.float64) for n in n_ff], \
        f"uniform frequencies (no profile in {directory}: run `python convert.py profile {model.path}`)"


def _say(verbose: bool, message: str) -> None:
    if verbose:
        print(f"pyinfer: {message}", file=sys.stderr)
