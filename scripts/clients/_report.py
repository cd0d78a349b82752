"""What the client scripts share: their command line and one result line per feature.

Each script in this folder drives one third-party client of llama-cpp-python (LangChain,
LlamaIndex, outlines, instructor, the `llm` CLI) through `import llama_cpp`, whichever
package that is: pyinfer's compat/ or the real llama-cpp-python. It runs inside a venv
made by scripts/make_clients_venv.sh, imports nothing from pyinfer, and prints, for each
feature it exercises, one line

    CLIENT-FEATURE {"feature": ..., "ok": true|false, "error": ..., "text": ..., ...}

that tests/test_clients.py collects and compares between the two backends: `text` is the
feature's output (greedy unless `sampled` is set), `value` a structured one (an instance's
fields, embedding `vectors`). A failing feature does not stop the script: the next one runs.

    python scripts/clients/langchain_client.py --model SmolLM2.gguf [--n-embd 576]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback

PREFIX = "CLIENT-FEATURE "


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="the GGUF file (SmolLM2-135M-Instruct)")
    p.add_argument("--n-embd", type=int, default=None,
                   help="the model's embedding length, read from the GGUF by the caller")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


class CheckFailed(Exception):
    """A feature ran but its outcome is wrong."""


def expect(condition: bool, message: str) -> None:
    """Fail the current feature with `message` unless `condition` holds."""
    if not condition:
        raise CheckFailed(message)


def emit(record: dict) -> None:
    print(PREFIX + json.dumps(record, default=repr), flush=True)


def backend() -> None:
    """Report which `llama_cpp` this venv imports: pyinfer's compat package or the real one."""
    import llama_cpp
    emit({"feature": "backend", "ok": True, "version": llama_cpp.__version__,
          "pyinfer": getattr(llama_cpp, "__pyinfer_version__", None), "file": llama_cpp.__file__})


@contextlib.contextmanager
def feature(name: str):
    """Run one feature; yields the record to fill (text, value, detail). An exception marks
    the feature failed with its message and where it was raised; the script goes on."""
    record = {"feature": name, "ok": False}
    start = time.perf_counter()
    try:
        yield record
        record["ok"] = True
    except Exception as e:  # noqa: BLE001 (each feature reports its own failure)
        record["error"] = f"{type(e).__name__}: {e}"[:1500]
        frames = traceback.extract_tb(e.__traceback__)[-4:]
        record["where"] = [f"{f.filename}:{f.lineno} in {f.name}" for f in frames]
        print(traceback.format_exc(), file=sys.stderr, flush=True)
    record["seconds"] = round(time.perf_counter() - start, 2)
    emit(record)
