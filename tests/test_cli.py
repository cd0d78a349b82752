"""The generation command line (python -m pyinfer): streams text, prints llama.cpp-style
timings, and reports bad options as one-line errors with exit status 1."""
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


@pytest.mark.parametrize("flags", [["-ngl", "99"], ["--vram-budget", "4"]])
def test_gpu_options_without_cuda_fail_clearly(smollm2, capsys, flags):
    ok, _ = cuda_status()
    if ok:
        pytest.skip("a CUDA device is present")
    assert main(["-m", str(smollm2), "-n", "2"] + flags) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "needs a CUDA GPU" in err


def test_missing_model_file(tmp_path, capsys):
    assert main(["-m", str(tmp_path / "nope.gguf"), "-n", "2"]) == 1
    assert "does not exist" in capsys.readouterr().err
