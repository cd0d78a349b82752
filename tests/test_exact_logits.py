"""SmolLM2 logits are bit-identical to a recorded run of the engine.

Speed work (SIMD attention, fused graph nodes, other tilings) must not change
a single bit of the model's output: llama.cpp token-exactness rests on it.
tests/data/smollm2_logits_sha256.json holds the SHA-256 of the float32
logits of a few prompts (prompt path in n_batch chunks, then greedy decode
steps crossing the 64-slot lane and 256-slot padding boundaries of the F16
attention), recorded with the engine whose logits equal llama.cpp's bit for
bit (tests/test_engine.py checks those against llama.cpp's own hashes).
Regenerate only for a deliberate change of numerics:
    python tests/test_exact_logits.py --record
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data" / "smollm2_logits_sha256.json"


def lcg_tokens(n: int, seed: int, lo: int = 100, hi: int = 49000) -> list:
    """Deterministic pseudo-random token ids (no tokenizer involved)."""
    out, x = [], seed
    for _ in range(n):
        x = (x * 1103515245 + 12345) % (1 << 31)
        out.append(lo + x % (hi - lo))
    return out


# name: (n_batch, prompt token ids, greedy decode steps, threads)
CASES = {
    "short": (32, list(range(200, 205)), 6, 2),
    "two_chunks": (32, lcg_tokens(40, 7), 4, 2),
    "crosses_256": (128, lcg_tokens(250, 11), 10, 2),
    "one_thread": (64, lcg_tokens(70, 3), 3, 1),
}


def case_hashes(path, n_batch: int, prompt: list, steps: int, threads: int) -> list:
    from pyinfer.config import ContextSettings
    from pyinfer.engine import Engine

    eng = Engine(str(path), ContextSettings(n_ctx=512, n_batch=n_batch, n_threads=threads))
    try:
        logits = eng.decode(prompt)
        hashes = [hashlib.sha256(logits.tobytes()).hexdigest()]
        for _ in range(steps):
            logits = eng.decode([int(np.argmax(logits))])
            hashes.append(hashlib.sha256(logits.tobytes()).hexdigest())
        return hashes
    finally:
        eng.close()


@pytest.mark.parametrize("name", sorted(CASES))
def test_smollm2_logits_match_recording(smollm2, name):
    want = json.loads(DATA.read_text())[name]
    got = case_hashes(smollm2, *CASES[name])
    bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    assert not bad and len(got) == len(want), f"{name}: logits differ at steps {bad}"


if __name__ == "__main__" and "--record" in sys.argv:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import smollm2_path

    DATA.write_text(json.dumps({k: case_hashes(smollm2_path(), *v) for k, v in CASES.items()}, indent=1) + "\n")
    print(f"wrote {DATA}")
