"""Whether CUDA can be used, and what the device has, through the C library.

The extension always has the gs_cuda_* functions: a build without CUDA answers "CUDA not
built", a CUDA build on a machine without a GPU or driver "no CUDA device: ...".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from .._lib import check, ffi, last_error, lib


class GPUUnavailableError(RuntimeError):
    """A GPU option was given, but this build or machine cannot run CUDA."""


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: Tuple[int, int]
    n_sm: int
    free_bytes: int
    total_bytes: int


def cuda_status() -> Tuple[bool, str]:
    """(True, "N device(s)") when CUDA is usable, else (False, the library's reason)."""
    n = ffi.new("int *")
    if lib.gs_cuda_device_count(n) != lib.GS_OK:
        return False, last_error()
    return True, f"{n[0]} CUDA device(s)"


def require_cuda(what: str) -> None:
    """Raise GPUUnavailableError naming `what` asked for the GPU and what is missing."""
    ok, reason = cuda_status()
    if not ok:
        raise GPUUnavailableError(f"{what} needs a CUDA GPU, but {reason}")


def device_info(device: int = 0) -> DeviceInfo:
    p = ffi.new("gs_cuda_device_info *")
    check(lib.gs_cuda_get_device_info(device, p))
    return DeviceInfo(device, ffi.string(p.name).decode("utf-8", "replace"), (p.cc_major, p.cc_minor),
                      p.n_sm, int(p.free_bytes), int(p.total_bytes))


def mem_info(device: int = 0) -> Tuple[int, int]:
    """(free, total) device bytes now."""
    f, t = ffi.new("size_t *"), ffi.new("size_t *")
    check(lib.gs_cuda_mem_info(device, f, t))
    return int(f[0]), int(t[0])
