"""SmolLM2 re-quantized to each supported type: our greedy tokens and logits
against llama.cpp's on the same file.

scripts/make_requantized.py writes the GGUFs (llama.cpp's own quantizer,
from an all-F32 dequantization of the Q4_1 release) to
~/.cache/pyinfer/requant/ and records llama.cpp's prompt tokens, 48 greedy
tokens and the sha256 of its float32 logits after the prompt and the next 8
steps, per prompt, in tests/data/requant/<type>.llama_cpp[_norepack].json.
This test runs our engine on each cached file; it is skipped when the file
is missing (CI has no llama-cpp-python) or is not the one recorded.

Two recordings per type, each compared with our engine set up alike:
* norepack: llama.cpp with use_extra_bufts = false, its matmuls then the
  per-row dots and, for batches, tinyBLAS (F32/F16/BF16) and the tiled
  K-quant GEMM, which our kernels reproduce; our engine with
  repack_weights=False: every type must give bit-identical logits at every
  recorded step and all greedy tokens.
* default: llama.cpp as it loads by default. On x86 it then repacks Q4_0
  and Q4_K weights with M % 8 == 0 into interleaved 8-row layouts whose
  GEMV/GEMM kernels accumulate in another order; the other types load as
  without repacking. Our engine with its default repack_weights=True
  repacks Q4_0 likewise (gs_tensor_repack: one fused multiply-add per
  32-block and output, fma(isum, d_x d_y, acc), measured against llama.cpp's
  repacked buffer), so Q4_0 too must be bit-identical. Q4_K is repacked
  likewise (ggml_sparse/src/cpu/repack_q4k.c: llama.cpp's two accumulators,
  fma(s1, d_x d_y, acc) and fma(s2, dmin_x d_y, acc_min), result
  acc - acc_min, one step per super-block for single rows and per pair of
  sub-blocks for rows taken 4 at a time), so Q4_K_M is bit-identical too
  (before that: 1 of 54 logits identical; now 54 of 54).
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pyinfer.config import ContextSettings
from pyinfer.engine import Engine

# the files are llama.cpp's quantizer's output (scripts/make_requantized.py): a llama-cpp-python suite
pytestmark = pytest.mark.llama_cpp

DATA = Path(__file__).parent / "data" / "requant"
CACHE = Path.home() / ".cache" / "pyinfer" / "requant"
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k_m", "q5_k_m", "q6_k"]
REPACKED = {"q4_0", "q4_k_m"}     # llama.cpp repacks (some of) their weights by default


def model_path(name: str) -> Path:
    return CACHE / f"SmolLM2-135M-Instruct.{name.upper()}.gguf"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def logits_hash(logits: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(logits, np.float32).tobytes()).hexdigest()


@pytest.fixture(scope="module", params=TYPES)
def requantized(request):
    """(type name, run(record) -> run_record's result on the cached file,
    {mode: recording})."""
    name = request.param
    path = model_path(name)
    if not path.exists():
        pytest.skip(f"{path} is missing: run `python scripts/make_requantized.py` (needs llama-cpp-python)")
    recs = {mode: json.loads((DATA / f"{name}.llama_cpp{suffix}.json").read_text())
            for mode, suffix in (("default", ""), ("norepack", "_norepack"))}
    if file_sha256(path) != recs["default"]["gguf_sha256"]:
        pytest.skip(f"{path.name} differs from the file recorded in tests/data/requant "
                    "(another llama.cpp quantized it): re-run make_requantized.py --record")
    # llama.cpp's default run against ours with repacking, its norepack run
    # against ours without; one engine serves both for types nobody repacks
    engines = {repack: Engine(str(path), ContextSettings(n_ctx=512, n_batch=512, n_threads=2,
                                                         repack_weights=repack))
               for repack in ((True, False) if name in REPACKED else (True,))}
    runs = {}   # the two recordings mostly hold the same tokens: run each once

    def run(rec, mode):
        repack = mode == "default" or name not in REPACKED
        key = (repack, tuple(rec["prompt_tokens"]), tuple(rec["greedy"]), len(rec["logits_sha256"]))
        if key not in runs:
            runs[key] = run_record(engines[repack], rec)
        return runs[key]

    yield name, run, recs
    for eng in engines.values():
        eng.close()


def run_record(eng: Engine, rec: dict):
    """(greedy tokens agreeing before the first difference, logits hashes of
    the prompt and the following recorded steps, fed llama.cpp's tokens)."""
    eng.truncate(0)
    logits = eng.decode(rec["prompt_tokens"])
    hashes = [logits_hash(logits)]
    agreed, diverged = 0, False
    for tok in rec["greedy"]:
        if not diverged and int(np.argmax(logits)) == tok:
            agreed += 1
        else:
            diverged = True
        if diverged and len(hashes) >= len(rec["logits_sha256"]):
            break
        logits = eng.decode([tok])
        if len(hashes) < len(rec["logits_sha256"]):
            hashes.append(logits_hash(logits))
    return agreed, hashes


def test_norepack_bit_identical(requantized):
    """Against llama.cpp without repacking (ours with repack_weights=False):
    identical logits at every recorded step and all greedy tokens, for every
    type."""
    name, run, recs = requantized
    for rec in recs["norepack"]["records"]:
        agreed, hashes = run(rec, "norepack")
        assert hashes == rec["logits_sha256"], (name, rec["prompt"])
        assert agreed == len(rec["greedy"]), (name, rec["prompt"], agreed)


def test_default_llama_cpp(requantized):
    """Against llama.cpp as it runs by default (ours with repacking):
    bit-identical for every type."""
    name, run, recs = requantized
    for rec in recs["default"]["records"]:
        agreed, hashes = run(rec, "default")
        assert hashes == rec["logits_sha256"], (name, rec["prompt"])
        assert agreed == len(rec["greedy"]), (name, rec["prompt"], agreed)
