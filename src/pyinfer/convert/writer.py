"""Streaming GGUF output that never leaves a half-written file behind.

The metadata and every tensor's name, shape and type are declared first; the
header, key/values and tensor infos are written; then tensor data is produced
and written one tensor at a time. Everything goes to a temporary file in the
target's directory, renamed over the target only when complete (a failure
removes it). A PowerInfer file is an ordinary GGUF whose first four bytes are
patched to ``PWRI`` before the rename.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import gguf

from pyinfer.tensor import GGMLType

from .quant_types import nbytes

POWERINFER_MAGIC = b"PWRI"


class OutputFile:
    def __init__(self, path: str, arch: str, powerinfer: bool = False):
        self.path = os.path.abspath(path)
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"output directory {directory} does not exist")
        self.tmp_path = os.path.join(directory, f".{os.path.basename(self.path)}.part{os.getpid()}")
        self.powerinfer = powerinfer
        self.gguf = gguf.GGUFWriter(self.tmp_path, arch)
        self._plan: List[Tuple[str, Tuple[int, ...], GGMLType, int]] = []

    # metadata goes through self.gguf.add_* before write()

    def add_tensor(self, name: str, ne: Sequence[int], t: GGMLType) -> None:
        """Declare a tensor of ggml shape `ne` (innermost first) and type `t`."""
        size = nbytes(t, ne)
        shape = tuple(int(d) for d in reversed(ne))          # numpy order, as GGUFWriter expects
        self.gguf.add_tensor_info(name, shape, np.dtype(np.float32), size,
                                  raw_dtype=gguf.GGMLQuantizationType(int(t)))
        self._plan.append((name, tuple(ne), t, size))

    @property
    def planned(self) -> List[Tuple[str, Tuple[int, ...], GGMLType, int]]:
        return list(self._plan)

    def write(self, produce: Callable[[int, str], np.ndarray]) -> None:
        """Write the file: `produce(i, name)` returns the data of the i-th declared tensor
        (any array whose bytes are the tensor's, e.g. float32, float16 or uint8 blocks)."""
        w = self.gguf
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for i, (name, ne, t, size) in enumerate(self._plan):
            data = produce(i, name)
            if data.nbytes != size:
                raise ValueError(f"tensor '{name}': produced {data.nbytes} bytes, "
                                 f"{t.name} {list(ne)} needs {size}")
            w.write_tensor_data(np.ascontiguousarray(data))
            del data
        w.close()

    @contextlib.contextmanager
    def writing(self) -> Iterator["OutputFile"]:
        """`with out.writing():` declare and write; the file is committed when the block
        ends normally and discarded (no partial file left) when it raises."""
        try:
            yield self
            self.commit()
        except BaseException:
            self.discard()
            raise

    def commit(self) -> None:
        """Patch the magic (PowerInfer) and move the finished file into place."""
        if self.powerinfer:
            with open(self.tmp_path, "r+b") as f:
                f.write(POWERINFER_MAGIC)
        os.replace(self.tmp_path, self.path)

    def discard(self) -> None:
        try:
            self.gguf.close()
        finally:
            if os.path.exists(self.tmp_path):
                os.unlink(self.tmp_path)


def type_counts(types: Sequence[GGMLType]) -> Dict[str, int]:
    """GGUF type name -> how many tensors have it."""
    counts: Dict[str, int] = {}
    for t in types:
        counts[t.name] = counts.get(t.name, 0) + 1
    return counts
