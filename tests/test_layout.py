"""The package layout a fresh clone depends on: from the clone's root the installed package is
the one imported (the source lives under src/, so the root cannot shadow it), the README's
commands work there, nothing but `pyinfer` is installed at the top level, and the runtime
imports none of the offline tools (pyinfer.convert)."""
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def run_at_root(*args, timeout=300, **kw):
    """`python ARGS` with the clone's root as the working directory (as a user types it)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def test_clone_root_imports_the_installed_package():
    r = run_at_root("-c", "import pyinfer, pyinfer._lib; print(pyinfer.__file__)")
    assert r.returncode == 0, r.stderr
    import pyinfer
    assert Path(r.stdout.strip()) == Path(pyinfer.__file__)
    assert not (ROOT / "pyinfer").exists() and not (ROOT / "convert").exists()


@pytest.mark.parametrize("args", [["convert.py", "--help"], ["-m", "pyinfer", "--help"],
                                  ["-m", "pyinfer.quantize", "--help"], ["-m", "pyinfer.perplexity", "--help"],
                                  ["-m", "pyinfer.sparsity", "--help"], ["-m", "pyinfer.server", "--help"]])
def test_documented_commands_start_from_the_clone_root(args):
    r = run_at_root(*args)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout


def test_only_pyinfer_is_installed_at_the_top_level():
    """The installed files: one package, `pyinfer` (no top-level `convert`); an editable
    install has only its import hooks, which are checked by name."""
    files = importlib.metadata.files("pyinfer") or []
    tops = {Path(f).parts[0] for f in files}
    tops = {t for t in tops if not t.endswith(".dist-info") and t not in ("..", "__pycache__")
            and not (t.startswith("_") and "editable" in t)}
    assert tops <= {"pyinfer"} and "convert" not in tops, tops
    assert "pyinfer" not in importlib.metadata.packages_distributions().get("convert", [])


def test_runtime_imports_no_offline_tool(tmp_path):
    """Loading a model, generating, and the server app pull in nothing from pyinfer.convert."""
    code = f"""
import sys
sys.path.insert(0, {str(ROOT / 'tests')!r})
from tiny_chat_model import write_tiny_chat_model
path = str(write_tiny_chat_model({str(tmp_path / 'm.gguf')!r}, powerinfer=True))
from pyinfer import Llama
import pyinfer.offload, pyinfer.engine, pyinfer.server.app
llm = Llama(path, n_ctx=64, verbose=False)
llm("hello", max_tokens=2)
llm.close()
print([m for m in sys.modules if m.startswith("pyinfer.convert")])
"""
    r = run_at_root("-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_readme_python_snippet_runs_from_the_clone_root(smollm2):
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    assert 'Llama("model.gguf"' in code
    r = run_at_root("-c", code.replace('"model.gguf"', repr(str(smollm2))))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Q: Name the planets in the solar system? A: ") and len(r.stdout) > 60


def test_readme_convert_and_quantize_commands_from_the_clone_root(tmp_path):
    """`python convert.py HF_DIR --outfile m.gguf --outtype q4_k_m`, then
    `python -m pyinfer.quantize IN OUT q4_0`, as the README gives them."""
    from reference.tiny_hf import make_tiny_hf
    assert "python convert.py HF_DIR --outfile m.gguf --outtype q4_k_m" in README
    assert "python -m pyinfer.quantize IN OUT q4_0" in README
    make_tiny_hf(tmp_path / "hf", "llama", seed=7)
    out = tmp_path / "m.gguf"
    r = run_at_root("convert.py", str(tmp_path / "hf"), "--outfile", str(out), "--outtype", "q4_k_m")
    assert r.returncode == 0, r.stderr
    assert out.exists() and "wrote" in r.stdout
    q = tmp_path / "q.gguf"
    r = run_at_root("-m", "pyinfer.quantize", str(out), str(q), "q4_0")
    assert r.returncode == 0, r.stderr
    from pyinfer import Llama
    with Llama(str(q), n_ctx=64, verbose=False) as llm:
        assert llm("The quick", max_tokens=3)["usage"]["completion_tokens"] >= 1
