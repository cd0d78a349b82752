"""Reading Hugging Face checkpoints one tensor at a time.

``Checkpoint.open(dir)`` finds the weight files (``model.safetensors``, sharded
``*.safetensors`` with ``model.safetensors.index.json``, or
``pytorch_model*.bin``) and lists every tensor's name, dtype and shape without
reading data. ``load(name)`` returns one tensor as a float32 numpy array (or
its native integer dtype); nothing else stays in memory.

safetensors is read without the ``safetensors`` package: an 8-byte
little-endian header length, a JSON header ``{name: {dtype, shape,
data_offsets: [begin, end]}}`` (offsets relative to the end of the header),
then raw little-endian data. ``.bin`` files need torch (``pip install
torch``); they are memory-mapped by ``torch.load(mmap=True)``.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match its description."""


# safetensors dtype -> (numpy dtype of the stored bits, how to widen to float32 or None)
_ST_DTYPES: Dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


_READ_CHUNK = 1 << 23     # elements per read: bounds the staging buffer of a conversion


def read_raw(path: str, offset: int, dtype: str, n: int) -> np.ndarray:
    """`n` elements of safetensors dtype `dtype` at byte `offset` of `path`: floats widened to
    float32 (BF16 exactly: it is the top half of an f32), integers as stored. Read in chunks
    straight into the result, so memory is the result plus one chunk."""
    dt = _ST_DTYPES[dtype]
    out = np.empty(n, dtype=np.float32 if dtype in _FLOAT_DTYPES else dt)
    with open(path, "rb") as f:
        f.seek(offset)
        if out.dtype == dt:
            got = f.readinto(memoryview(out).cast("B"))
            if got != out.nbytes:
                raise CheckpointError(f"{path}: file ends inside a tensor")
            return out
        widened = out.view(np.uint32) if dtype == "BF16" else out
        for start in range(0, n, _READ_CHUNK):
            m = min(_READ_CHUNK, n - start)
            chunk = np.fromfile(f, dtype=dt, count=m)
            if chunk.size != m:
                raise CheckpointError(f"{path}: file ends inside a tensor")
            widened[start:start + m] = chunk
        if dtype == "BF16":
            widened <<= 16
    return out


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str                  # safetensors spelling: F32, F16, BF16, I64, ...
    shape: Tuple[int, ...]      # numpy / PyTorch order (outermost first)
    source: str                 # file it lives in

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def is_float(self) -> bool:
        return self.dtype in _FLOAT_DTYPES


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise CheckpointError(f"key {k!r} appears twice")
        out[k] = v
    return out


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_safetensors_header(path: str) -> Tuple[int, Dict[str, dict]]:
    """(offset of the data section, {name: info}) of one .safetensors file, checked as the
    `safetensors` library checks it, before any data is read: a JSON object of tensors, each
    with a known dtype, a shape of non-negative integers and data_offsets [begin, end] with
    end - begin = elements x dtype size; sorted by begin, the tensors tile the data section
    exactly (the first begins at 0, each begins where the previous one ends, the last ends at
    the end of the file), so no offset is negative, points outside the file or into another
    tensor. Python integers: nothing wraps. Anything else is a CheckpointError."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CheckpointError(f"{path}: not a safetensors file (header length {n} > file size)")
        try:
            header = json.loads(f.read(n), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, CheckpointError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, "
                              "not an object)")
    header.pop("__metadata__", None)
    data_start = 8 + n
    ranges = []
    for name, info in header.items():
        what = f"{path}: tensor '{name}'"
        if not isinstance(info, dict):
            raise CheckpointError(f"{what}: its header entry is not an object")
        dt, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dt, str) or dt not in _ST_DTYPES:
            raise CheckpointError(f"{what} has unsupported dtype {dt!r}")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise CheckpointError(f"{what} has an invalid shape {shape!r} (a list of integers >= 0)")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise CheckpointError(f"{what} has invalid data_offsets {offsets!r} ([begin, end])")
        begin, end = offsets
        n_elem = 1
        for d in shape:
            n_elem *= d
        want = n_elem * _ST_DTYPES[dt].itemsize
        if begin < 0 or end < begin or data_start + end > size:
            raise CheckpointError(f"{what} data range [{begin}, {end}) does not match the file: "
                                  f"the data section holds {size - data_start} bytes")
        if end - begin != want:
            raise CheckpointError(f"{what} data range [{begin}, {end}) does not match its shape "
                                  f"{shape} / dtype {dt} ({want} bytes)")
        ranges.append((begin, end, name))
    ranges.sort()
    pos, prev = 0, None
    for begin, end, name in ranges:
        if begin != pos:
            kind = f"overlaps tensor '{prev}'" if begin < pos else f"leaves a gap of {begin - pos} bytes"
            raise CheckpointError(f"{path}: tensor '{name}' data range [{begin}, {end}) {kind} "
                                  f"(it should begin at {pos})")
        pos, prev = end, name
    if data_start + pos != size:
        raise CheckpointError(f"{path}: {size - data_start - pos} bytes after the last tensor's data "
                              "(the tensors do not cover the data section)")
    return data_start, header


class Checkpoint:
    """All weight tensors of one checkpoint directory (or extra files such as predictors)."""

    def __init__(self, entries: Dict[str, TensorEntry], loaders: Dict[str, Callable[[TensorEntry], np.ndarray]]):
        self.entries = entries
        self._loaders = loaders          # source file -> loader

    # ---- discovery ----
    @classmethod
    def open(cls, model_dir: str) -> "Checkpoint":
        files = _weight_files(model_dir)
        return cls.from_files(files)

    @classmethod
    def from_files(cls, files: Iterable[str]) -> "Checkpoint":
        entries: Dict[str, TensorEntry] = {}
        loaders: Dict[str, Callable[[TensorEntry], np.ndarray]] = {}
        for path in files:
            if path.endswith(".safetensors"):
                found, loader = _safetensors_entries(path)
            else:
                found, loader = _torch_entries(path)
            for e in found:
                if e.name in entries:
                    raise CheckpointError(f"tensor '{e.name}' appears in both {entries[e.name].source} and {path}")
                entries[e.name] = e
            loaders[path] = loader
        return cls(entries, loaders)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> List[str]:
        return list(self.entries)

    def shape(self, name: str) -> Tuple[int, ...]:
        return self.entries[name].shape

    def load(self, name: str) -> np.ndarray:
        """One tensor: float types as float32, integer types as stored."""
        e = self.entries[name]
        return self._loaders[e.source](e)

    @property
    def nbytes(self) -> int:
        return sum(e.n_elements * _ST_DTYPES[e.dtype].itemsize for e in self.entries.values())


def _weight_files(model_dir: str) -> List[str]:
    if not os.path.isdir(model_dir):
        raise CheckpointError(f"{model_dir} is not a directory")
    names = sorted(os.listdir(model_dir))
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = os.path.join(model_dir, index_name)
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                try:
                    doc = json.load(f)
                except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                    raise CheckpointError(f"{index}: not valid JSON ({e})") from None
            weight_map = doc.get("weight_map", {}) if isinstance(doc, dict) else None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise CheckpointError(f"{index}: 'weight_map' must map tensor names to file names")
            files = sorted(set(weight_map.values()))
            missing = [p for p in files if not os.path.isfile(os.path.join(model_dir, p))]
            if missing:
                raise CheckpointError(f"{index_name} names shard(s) that are missing: {', '.join(missing)}")
            return [os.path.join(model_dir, p) for p in files]
    st = [n for n in names if n.endswith(".safetensors")]
    if st:
        return [os.path.join(model_dir, n) for n in st]
    bins = [n for n in names if n.startswith("pytorch_model") and n.endswith(".bin")]
    if bins:
        return [os.path.join(model_dir, n) for n in bins]
    raise CheckpointError(f"no weights found in {model_dir} (expected model*.safetensors or pytorch_model*.bin)")


def _safetensors_entries(path: str):
    data_start, header = read_safetensors_header(path)
    entries = [TensorEntry(n, i["dtype"], tuple(int(d) for d in i["shape"]), path) for n, i in header.items()]
    offsets = {n: data_start + int(i["data_offsets"][0]) for n, i in header.items()}

    def load(e: TensorEntry) -> np.ndarray:
        return read_raw(path, offsets[e.name], e.dtype, e.n_elements).reshape(e.shape)

    return entries, load


_TORCH_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
                 "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def import_torch(what: str):
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{what} needs PyTorch, which is not installed: `pip install torch` "
                              "(CPU wheel is enough), or convert the files to .safetensors") from None
    return torch


def _torch_entries(path: str):
    torch = import_torch(f"reading {os.path.basename(path)}")
    try:
        sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise CheckpointError(f"{path}: cannot be read by torch.load ({e})") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(sd).__name__}")
    entries = []
    for name, t in sd.items():
        dt = _TORCH_DTYPES.get(str(t.dtype).replace("torch.", ""))
        if dt is None:
            raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {t.dtype}")
        entries.append(TensorEntry(name, dt, tuple(int(d) for d in t.shape), path))

    def load(e: TensorEntry) -> np.ndarray:
        t = sd[e.name]
        if t.is_floating_point():
            return t.detach().to(torch.float32).numpy().copy()
        return t.detach().numpy().copy()

    return entries, load


def load_predictor_dir(pred_dir: str, n_layer: int) -> Tuple[Checkpoint, Optional[float]]:
    """PowerInfer predictors: per layer i, ``fc1.weight`` [H, n_embd] and ``fc2.weight``
    [n_ff, H], stored as ``model_{i}.pt`` (torch state dicts) or, torch-free,
    ``model_{i}.safetensors`` / ``model_{i}.npz`` (same key names). Returns a checkpoint whose
    names are ``{i}.fc1.weight`` / ``{i}.fc2.weight`` and the ``sparse_threshold`` of the
    directory's optional ``config.json``."""
    if not os.path.isdir(pred_dir):
        raise CheckpointError(f"predictor directory {pred_dir} does not exist")
    entries: Dict[str, TensorEntry] = {}
    loaders: Dict[str, Callable[[TensorEntry], np.ndarray]] = {}
    for i in range(n_layer):
        path = next((os.path.join(pred_dir, f"model_{i}{ext}") for ext in (".safetensors", ".npz", ".pt")
                     if os.path.isfile(os.path.join(pred_dir, f"model_{i}{ext}"))), None)
        if path is None:
            raise CheckpointError(f"predictor directory {pred_dir} lacks model_{i}.pt "
                                  f"(or .safetensors/.npz) for layer {i} of {n_layer}")
        if path.endswith(".npz"):
            found, loader = _npz_entries(path)
        elif path.endswith(".safetensors"):
            found, loader = _safetensors_entries(path)
        else:
            found, loader = _torch_entries(path)
        names = {e.name for e in found}
        for key in ("fc1.weight", "fc2.weight"):
            if key not in names:
                raise CheckpointError(f"{path}: missing tensor '{key}' (has {sorted(names)})")
        for e in found:
            if e.name in ("fc1.weight", "fc2.weight"):
                entries[f"{i}.{e.name}"] = TensorEntry(e.name, e.dtype, e.shape, path)
        loaders[path] = loader
    ckpt = Checkpoint(entries, loaders)
    threshold = None
    cfg = os.path.join(pred_dir, "config.json")
    if os.path.isfile(cfg):
        with open(cfg, encoding="utf-8") as f:
            value = json.load(f).get("sparse_threshold")
        threshold = None if value is None else float(value)
    return ckpt, threshold


def _npz_entries(path: str):
    with np.load(path) as z:
        entries = []
        for name in z.files:
            arr = z[name]
            dt = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
                  np.dtype(np.float64): "F64"}.get(arr.dtype)
            if dt is None:
                raise CheckpointError(f"{path}: array '{name}' has unsupported dtype {arr.dtype}")
            entries.append(TensorEntry(name, dt, tuple(arr.shape), path))

    def load(e: TensorEntry) -> np.ndarray:
        with np.load(path) as z:
            return z[e.name].astype(np.float32)

    return entries, load
