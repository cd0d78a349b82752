"""llama-cpp-python 0.3.36's own test suite run through pyinfer's `llama_cpp` (compat/).

Opt in with --run-slow, and point LLAMA_CPP_PYTHON_SDIST at an unpacked llama-cpp-python
0.3.36 sdist (`pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36`, then
untar): its tests/ are copied to a temporary directory with a conftest that makes
`huggingface_hub.hf_hub_download` return the local SmolLM2 file for every model it would
download, and run by pytest in a subprocess with compat/src first on sys.path, with the sdist's
vendor/ linked into the run's directory (its tokenizer test reads
./vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf).

The outcome of each upstream test is pinned below. Those expected to fail assert what
cannot apply to pyinfer serving SmolLM2 (the reason is next to each): llama.cpp's C
internals, or facts of the model the test downloads that SmolLM2 does not share. A test
that changes outcome fails this one, so the list stays true.
"""
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SDIST_VAR = "LLAMA_CPP_PYTHON_SDIST"

PASS = "passed"
CACHE_TESTS = ("test_exact_cached_prompt_reuse_matches_fresh",
               "test_loaded_exact_cached_prompt_reuse_matches_fresh",
               "test_ram_cache_exact_prompt_hit_matches_fresh",
               "test_shorter_prompt_prefix_reuse_matches_fresh")


def cache_case(test: str, model: str, recurrent: bool, hybrid: bool) -> str:
    """The id of one parametrization of the prompt-cache tests."""
    return f"test_llama.py::{test}[llama_cpp_{model}_model_path-{recurrent}-{hybrid}]"


# test -> why it cannot pass through pyinfer (each is a failure, not an error of the runner)
CANNOT_APPLY = {
    "test_llama.py::test_real_model":
        "drives llama.cpp's C objects (_internals.LlamaModel from a path and a "
        "llama_model_params struct, LlamaContext, LlamaBatch, LlamaSampler) and asserts "
        "Qwen3.5's token ids",
    "test_llama.py::test_real_llama":
        "asserts Qwen3.5-0.8B's own completions (' jumps over the lazy dog.', 'true'); "
        "SmolLM2 writes other text",
    "test_llama.py::test_real_llama_repeated_prompt_cache":
        "asserts Qwen3.5-0.8B's greedy completion ' jumps over the lazy dog.'",
    "test_llama.py::test_recurrent_model_prompt_cache_reset":
        "asserts Llama._is_recurrent is True: the test downloads a Mamba model, SmolLM2 is "
        "not recurrent",
    "test_llama.py::test_hybrid_model_prompt_cache_reset":
        "asserts Llama._is_hybrid is True: the test downloads Falcon-H1, SmolLM2 is not hybrid",
    **{cache_case(t, "recurrent", True, False):
       "asserts _is_recurrent (the Mamba model it downloads is replaced by SmolLM2)"
       for t in CACHE_TESTS},
    **{cache_case(t, "hybrid", False, True):
       "asserts _is_hybrid (the Falcon-H1 model it downloads is replaced by SmolLM2)"
       for t in CACHE_TESTS},
    "test_llama.py::test_real_llama_embeddings":
        "asserts that every embedding has one length: the model it downloads (bge-small) "
        "pools each text into one vector; SmolLM2's GGUF sets no pooling, so embed() gives "
        "one vector per token (as llama-cpp-python does for it); the batched == one-by-one "
        "checks before that pass",
}
EXPECTED = {
    "test_llama.py::test_llama_cpp_version": PASS,
    "test_llama.py::test_llama_cpp_tokenization": PASS,
    **{cache_case(t, "transformer", False, False): PASS for t in CACHE_TESTS},
    "test_llama_chat_format.py::test_mistral_instruct": PASS,
    "test_llama_chat_format.py::test_hf_tokenizer_config_str_to_chat_formatter": PASS,
    "test_llama_grammar.py::test_grammar_from_string": PASS,
    "test_llama_grammar.py::test_composed_pydantic_grammar": PASS,
    "test_llama_grammar.py::test_grammar_anyof": PASS,
    "test_llama_speculative.py::test_find_candidate_pred_tokens": PASS,
    **{name: "failed" for name in CANNOT_APPLY},
}

CONFTEST = '''
"""Every model the suite downloads is the local SmolLM2 (no network)."""
import os
import sys
import types

SMOLLM2 = os.environ["PYINFER_TEST_SMOLLM2"]


def hf_hub_download(repo_id, filename, *args, **kwargs):
    return SMOLLM2


try:
    import huggingface_hub
except ImportError:
    huggingface_hub = sys.modules["huggingface_hub"] = types.ModuleType("huggingface_hub")
huggingface_hub.hf_hub_download = hf_hub_download
'''


def outcomes(junit: Path):
    """test id ("file.py::name[params]") -> passed / failed / error / skipped."""
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), None)
        out[f"{module}.py::{case.get('name')}"] = {"failure": "failed", "error": "error",
                                                   "skipped": "skipped"}.get(kind, PASS)
    return out


def test_llama_cpp_python_suite_through_compat(smollm2, tmp_path):
    sdist = os.environ.get(SDIST_VAR)
    if not sdist:
        pytest.skip(f"{SDIST_VAR} is not set: point it at an unpacked llama-cpp-python 0.3.36 "
                    "sdist to run its tests through compat/")
    sdist = Path(sdist)
    if not (sdist / "tests" / "test_llama.py").is_file():
        pytest.fail(f"{SDIST_VAR}={sdist} holds no tests/test_llama.py")
    tests = tmp_path / "tests"
    shutil.copytree(sdist / "tests", tests)
    (tests / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")       # the rootdir, not the sdist's
    # the tokenizer test's ./vendor/... path, without running from the sdist's root (whose own
    # llama_cpp/ source would come first on sys.path)
    (tmp_path / "vendor").symlink_to(sdist / "vendor", target_is_directory=True)
    junit = tmp_path / "junit.xml"
    env = dict(os.environ, PYINFER_TEST_SMOLLM2=str(smollm2),
               PYTHONPATH=os.pathsep.join([str(ROOT / "compat" / "src"),
                                           os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(tests), "-p", "no:cacheprovider", "-q", "-rA",
         f"--rootdir={tmp_path}", f"--junitxml={junit}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    report = proc.stdout[-20000:] + proc.stderr[-4000:]
    assert junit.is_file(), report
    assert outcomes(junit) == EXPECTED, report
