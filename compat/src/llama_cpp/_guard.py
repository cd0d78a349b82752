"""Refuse to run beside a real llama-cpp-python.

Both distributions install the same `llama_cpp` package directory, so with both installed
the files of whichever was installed last cover the other's, and uninstalling either one
removes files the other needs. pip cannot prevent it (a distribution cannot declare that it
conflicts with another), so the check is made here, on import: if the environment holds a
`llama-cpp-python` distribution, `import llama_cpp` raises ImportError saying how to fix it.
(If llama-cpp-python was installed last, its own `__init__` runs and this check never does:
see compat/README.md.)
"""
from __future__ import annotations

import importlib.metadata
import re
from typing import Optional

DISTRIBUTION = "pyinfer-llama-cpp"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def real_llama_cpp_python() -> Optional[importlib.metadata.Distribution]:
    """The llama-cpp-python distribution visible on sys.path, if any."""
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name and _canonical(name) == "llama-cpp-python":
            return dist
    return None


def refuse_beside_llama_cpp_python() -> None:
    dist = real_llama_cpp_python()
    if dist is None:
        return
    where = dist.locate_file("")
    raise ImportError(
        f"llama_cpp: both llama-cpp-python {dist.version} (in {where}) and {DISTRIBUTION} "
        "(llama_cpp served by pyinfer) are installed in this environment. They install the same "
        "`llama_cpp` package, so their files overwrite each other and neither works reliably. "
        f"Keep one: for pyinfer, `pip uninstall -y llama-cpp-python` then "
        f"`pip install --force-reinstall --no-deps {DISTRIBUTION}` (or ./compat from pyinfer's "
        f"repository); for the real llama-cpp-python, `pip uninstall -y {DISTRIBUTION}` then "
        "`pip install --force-reinstall llama-cpp-python`. Or use one virtual environment each.")
