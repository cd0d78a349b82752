"""GGUF -> GGUF quantization (``python -m pyinfer.quantize IN OUT TYPE``).

Matrix weights get the type llama.cpp's quantize tool would give them for
TYPE (see ``quant_types``); 1-D tensors, norms and other non-weight tensors
are copied unchanged, as is every tensor that already has its target type.
Quantized inputs are dequantized first (re-quantizing loses precision).
All metadata is copied, ``general.file_type`` updated; a PowerInfer (PWRI)
file stays one, with the same tensors in the same order.
"""
from __future__ import annotations

import mmap
import os
import time

import numpy as np
from gguf import GGUFValueType

from pyinfer.gguf_model import GGUFFile
from pyinfer.progress import bar
from pyinfer.tensor import GGMLType, dequantize

from .hf_to_gguf import ConvertReport
from .quant_types import encode, is_quantizable, outtype, tensor_type
from .writer import OutputFile, type_counts

_REPLACED_KEYS = ("general.architecture", "general.file_type", "general.quantization_version")
_FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


def quantize_file(src: str, dst: str, type_name: str, threads: int = 0, progress: bool = True) -> ConvertReport:
    """Re-quantize `src` into `dst` (see the module docstring); `progress`: a bar on stderr
    (bytes written of the total, ETA)."""
    t0 = time.perf_counter()
    ot = outtype(type_name)
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("input and output are the same file")
    f = GGUFFile(src)
    arch = str(f.metadata.get("general.architecture", "llama"))
    n_layer = int(f.metadata.get(f"{arch}.block_count", 0))
    has_output = "output.weight" in f.tensors
    infos = list(f)
    n_expert = int(f.metadata.get(f"{arch}.expert_count", 0))
    types = [tensor_type(t.name, t.ne, ot, n_layer, has_output, arch, n_expert) if is_quantizable(t.name, t.ne)
             else t.type for t in infos]

    out = OutputFile(dst, arch, f.is_powerinfer)
    with out.writing():
        w = out.gguf
        for name, field in f.reader.fields.items():
            if name.startswith("GGUF.") or name in _REPLACED_KEYS:
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
            w.add_key_value(name, field.contents(), vtype, sub_type=sub)
        w.add_file_type(ot.file_type)
        if ot.base not in _FLOAT_TYPES:
            w.add_quantization_version(2)
        for t, ty in zip(infos, types):
            out.add_tensor(t.name, t.ne, ty)

        with bar(sum(size for *_, size in out.planned), "quantizing", enabled=progress, nbytes=True) as b:
            def produce(i: int, name: str) -> np.ndarray:
                if i > 0:
                    _release(f, infos[i - 1].data)     # written by now: let its pages leave the process
                t, ty = infos[i], types[i]
                b.set_postfix_str(f"{name} {t.type.name} -> {ty.name}", refresh=False)
                if ty == t.type:
                    data = t.data
                else:
                    x = dequantize(t.data, t.type, int(np.prod(t.ne))).reshape(tuple(reversed(t.ne)))
                    data = encode(x, ty, threads or None)
                b.update(data.nbytes)
                return data

            out.write(produce)
    return ConvertReport(out.path, arch, f.is_powerinfer, len(infos), os.path.getsize(out.path),
                         time.perf_counter() - t0, "copied", type_counts(types))


def _release(f: GGUFFile, data: np.ndarray) -> None:
    """Drop the mapped pages of one input tensor from this process (the file map stays valid;
    the pages come back from the page cache if touched again)."""
    whole = f.reader.data
    mm = getattr(whole, "_mmap", None)
    if not isinstance(mm, mmap.mmap) or not hasattr(mm, "madvise"):
        return
    start = data.ctypes.data - whole.ctypes.data
    page = mmap.PAGESIZE
    lo = (start + page - 1) // page * page
    hi = (start + data.nbytes) // page * page
    if hi > lo:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
