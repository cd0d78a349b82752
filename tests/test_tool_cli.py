"""The offline tools' command lines: perplexity, sparsity calibrate, convert.py (and its
profile / train-predictor / gpu-index subcommands) and quantize.

Each must turn a missing file, an out-of-range argument and a model of the wrong kind into
exactly one stderr line ``PROG: error: ...`` with exit code 2 (no traceback), show its
defaults in --help, answer --version, and draw a progress bar with a total on stderr.
Tiny models only; the commands run in-process (main(argv)) except for a few subprocesses
that check what a user really sees.
"""
import json
import os
import re
import subprocess
import sys

import pytest

import pyinfer
from pyinfer.convert.cli import main as convert_main, quantize_main
from pyinfer.perplexity import DEFAULT_CHUNKS, main as perplexity_main
from pyinfer.sparsity.__main__ import main as sparsity_main
from reference.tiny_hf import make_tiny_hf
from tiny_chat_model import write_tiny_chat_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = ("The quick brown fox jumps over the lazy dog. " * 40).strip()
# tqdm's "n/total [elapsed<remaining" at the end of a run: the bar reached its total, with an ETA field
DONE = re.compile(r"(\d+(?:\.\d+)?[kMG]?)/\1 \[\d\d:\d\d<\d\d:\d\d")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("tool_cli")
    text = d / "text.txt"
    text.write_text(TEXT)
    not_gguf = d / "notes.gguf"
    not_gguf.write_text("not a model\n")
    return {"swiglu": str(write_tiny_chat_model(d / "swiglu.gguf", seed=3)),
            "pwri": str(write_tiny_chat_model(d / "pwri.gguf", powerinfer=True, seed=5)),
            "text": str(text), "not_gguf": str(not_gguf), "dir": str(d)}


def call(main, argv, capsys):
    """(exit code, stdout, stderr) of main(argv), argparse's SystemExit included."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_line_error(rc, err, prog, *words):
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    assert err.startswith(f"{prog}: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)


# (main, argv prefix, program name) of every command; a subcommand's name is part of its prog
PPL = (perplexity_main, [], "python -m pyinfer.perplexity")
CAL = (sparsity_main, ["calibrate"], "python -m pyinfer.sparsity calibrate")
CONV = (convert_main, [], "convert.py")
PROF = (convert_main, ["profile"], "convert.py profile")
TRAIN = (convert_main, ["train-predictor"], "convert.py train-predictor")
GPUIDX = (convert_main, ["gpu-index"], "convert.py gpu-index")
QUANT = (quantize_main, [], "python -m pyinfer.quantize")
COMMANDS = {"perplexity": PPL, "calibrate": CAL, "convert": CONV, "profile": PROF,
            "train-predictor": TRAIN, "gpu-index": GPUIDX, "quantize": QUANT}


def _missing_args(name, missing, out):
    return {"perplexity": [missing], "calibrate": [missing, "--sparsity", "0.5", "-o", out],
            "convert": [missing, "--outfile", out], "profile": [missing],
            "train-predictor": [missing, "--outfile", out], "gpu-index": [missing, "--vram-budget", "1"],
            "quantize": [missing, out, "q8_0"]}[name]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_missing_file_is_one_line_exit_2(name, tmp_path, capsys):
    main, sub, prog = COMMANDS[name]
    missing = str(tmp_path / "no_such_model")
    rc, out, err = call(main, sub + _missing_args(name, missing, str(tmp_path / "o.gguf")), capsys)
    assert_one_line_error(rc, err, prog, "no_such_model", f"see {prog} --help")
    assert not os.path.exists(tmp_path / "o.gguf")


@pytest.mark.parametrize("name, args, words", [
    ("perplexity", ["-c", "2"], ["n_ctx must be in [4, ], got 2"]),
    ("perplexity", ["--chunks", "0"], ["--chunks", "got 0"]),
    ("perplexity", ["--chunks", "2", "--all"], ["not allowed with argument"]),
    ("calibrate", ["--sparsity", "1.5", "-o", "{out}"], ["sparsity must be in [0, 1), got 1.5"]),
    ("calibrate", ["--sparsity", "1", "-o", "{out}"], ["sparsity must be in [0, 1), got 1"]),
    ("calibrate", ["--sparsity", "nan", "-o", "{out}"], ["got nan"]),
    ("calibrate", ["--sparsity", "0.5", "-o", "{dir}/nowhere/x.gguf"], ["output directory", "nowhere"]),
    ("profile", ["--max-tokens", "-5"], ["--max-tokens", "got -5"]),
    ("train-predictor", ["--target-recall", "1.5", "--outfile", "{out}"], ["target recall must be in (0, 1]"]),
    ("gpu-index", ["--vram-budget", "-1"], ["VRAM budget must be in [0, ], got -1"]),
    ("quantize", ["{out}", "q3_z"], ["invalid choice: 'q3_z'"]),
    ("quantize", ["{out}", "q8_0", "--threads", "-1"], ["--threads", "got -1"]),
])
def test_out_of_range_argument_is_one_line_exit_2(models, tmp_path, capsys, name, args, words):
    main, sub, prog = COMMANDS[name]
    args = [a.format(out=str(tmp_path / "o.gguf"), dir=str(tmp_path)) for a in args]
    rc, out, err = call(main, sub + [models["swiglu"]] + args, capsys)
    assert_one_line_error(rc, err, prog, *words)
    assert not os.listdir(tmp_path)          # refused before anything was written


def test_convert_out_of_range_and_missing_output_directory(tmp_path, capsys):
    make_tiny_hf(tmp_path / "hf", "llama", seed=1)
    rc, _, err = call(convert_main, [str(tmp_path / "hf"), "--threads", "-1"], capsys)
    assert_one_line_error(rc, err, "convert.py", "--threads", "got -1")
    rc, _, err = call(convert_main, [str(tmp_path / "hf"), "--outfile", str(tmp_path / "no" / "m.gguf")], capsys)
    assert_one_line_error(rc, err, "convert.py", "output directory", "does not exist")


@pytest.mark.parametrize("name, model, args, words", [
    ("perplexity", "not_gguf", [], ["not a GGUF file"]),
    ("calibrate", "pwri", ["--sparsity", "0.5", "-o", "{out}"], ["is a PowerInfer file"]),
    ("calibrate", "not_gguf", ["--sparsity", "0.5", "-o", "{out}"], ["not a GGUF file"]),
    ("profile", "swiglu", ["--no-progress", "--out", "{dir}/act"], ["not ReLU"]),
    ("train-predictor", "swiglu", ["--outfile", "{out}"], ["not a PowerInfer file"]),
    ("gpu-index", "swiglu", ["--vram-budget", "1"], ["not a PowerInfer model"]),
    ("quantize", "not_gguf", ["{out}", "q8_0"], ["not a GGUF file"]),
])
def test_wrong_kind_of_model_is_one_line_exit_2(models, tmp_path, capsys, name, model, args, words):
    main, sub, prog = COMMANDS[name]
    args = [a.format(out=str(tmp_path / "o.gguf"), dir=str(tmp_path)) for a in args]
    rc, out, err = call(main, sub + [models[model]] + args, capsys)
    assert_one_line_error(rc, err, prog, *words)
    assert not os.path.exists(tmp_path / "o.gguf")
    assert not os.path.exists(models["swiglu"] + ".generated.gpuidx")


def test_calibrate_refuses_a_relu_model(tmp_path, capsys):
    """A plain (not PowerInfer) ReLU-llama GGUF loads, but CATS calibrates SwiGLU models only."""
    make_tiny_hf(tmp_path / "hf", "relu_llama", seed=6)
    relu = tmp_path / "relu.gguf"
    assert call(convert_main, [str(tmp_path / "hf"), "--outfile", str(relu), "--no-progress"], capsys)[0] == 0
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    rc, _, err = call(sparsity_main, ["calibrate", str(relu), "--sparsity", "0.3", "-o", str(tmp_path / "o.gguf"),
                                      "--text", str(text), "--tokens", "64", "-c", "16"], capsys)
    assert_one_line_error(rc, err, "python -m pyinfer.sparsity calibrate", "needs a SwiGLU model",
                          "relu(gate)*up")
    assert not os.path.exists(tmp_path / "o.gguf")


@pytest.mark.parametrize("config, args, words", [
    ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, [], ["unsupported model architecture"]),
    ({}, ["--sparse"], ["needs a ReLU model"]),                     # a SwiGLU model as a PowerInfer file
])
def test_convert_wrong_kind_of_checkpoint(tmp_path, capsys, config, args, words):
    make_tiny_hf(tmp_path / "hf", "llama", seed=2)
    cfg_path = tmp_path / "hf" / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), **config}))
    rc, _, err = call(convert_main, [str(tmp_path / "hf"), "--outfile", str(tmp_path / "o.gguf")] + args, capsys)
    assert_one_line_error(rc, err, "convert.py", *words)
    assert not os.path.exists(tmp_path / "o.gguf")


@pytest.mark.parametrize("name, defaults", [
    ("perplexity", ["(default: 512)", f"(default: {DEFAULT_CHUNKS})", "(default: auto)", "(default: 0)"]),
    ("calibrate", ["(default: 8192)", "(default: 512)"]),
    ("convert", ["(default: f16)", "(default: 0)"]),
    ("profile", ["(default: 8192)", "(default: 128)"]),
    ("train-predictor", ["(default: 0.95)", "(default: 12)", "(default: f16)"]),
    ("gpu-index", ["(default: time)", "(default: 256)", "(default: 20.0)"]),
    ("quantize", ["(default: 0)"]),
])
def test_help_shows_defaults(capsys, name, defaults):
    main, sub, prog = COMMANDS[name]
    rc, out, err = call(main, sub + ["--help"], capsys)
    assert rc == 0 and err == ""
    assert out.startswith(f"usage: {prog} ")
    flat = " ".join(out.split())                  # argparse wraps help text
    for d in defaults:
        assert d in flat, (d, out)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_version(capsys, name):
    main, sub, _ = COMMANDS[name]
    rc, out, _ = call(main, sub + ["--version"], capsys)
    assert rc == 0 and out == f"pyinfer {pyinfer.__version__}\n"


# ---- progress bars --------------------------------------------------------------------
def test_perplexity_bar_and_report(models, capsys):
    argv = [models["swiglu"], "--text", models["text"], "-c", "16", "--chunks", "3", "-t", "1"]
    rc, out, err = call(perplexity_main, argv, capsys)
    assert rc == 0, err
    assert DONE.search(err).group(1) == "3" and "chunk" in err
    lines = out.splitlines()
    assert re.fullmatch(r"\[1\][\d.]+,\[2\][\d.]+,\[3\][\d.]+", lines[0])
    n_text = int(re.search(r"\((\d+) tokens; ", lines[1]).group(1))
    assert f"over 3 of {n_text // 16} chunks of 16 tokens of the text" in lines[1]
    assert "(%d tokens; 21 scored)" % n_text in lines[1] and "--all scores every chunk" in lines[1]
    # without the bar the same numbers stream on stdout, nothing on stderr
    rc, out2, err2 = call(perplexity_main, argv + ["--no-progress"], capsys)
    assert rc == 0 and err2 == "" and out2.splitlines()[0] == lines[0]
    # --all: every chunk
    rc, out3, _ = call(perplexity_main, argv[:5] + ["--all", "--no-progress"], capsys)
    assert rc == 0 and f"over {n_text // 16} of {n_text // 16} chunks" in out3 and "--all" not in out3


def test_calibrate_bar(models, tmp_path, capsys):
    out_path = tmp_path / "cats.gguf"
    rc, out, err = call(sparsity_main, ["calibrate", models["swiglu"], "--sparsity", "0.5", "-o", str(out_path),
                                        "--text", models["text"], "--tokens", "64", "-c", "16", "-t", "1"], capsys)
    assert rc == 0, err
    assert DONE.search(err).group(1) == "64" and "tok" in err
    assert "calibrated on 64 tokens" in out and out_path.exists()


def test_convert_and_quantize_bars(tmp_path, capsys):
    make_tiny_hf(tmp_path / "hf", "llama", seed=4)
    f16 = tmp_path / "m.gguf"
    rc, out, err = call(convert_main, [str(tmp_path / "hf"), "--outfile", str(f16)], capsys)
    assert rc == 0, err
    assert "converting" in err and DONE.search(err) and "B/s" in err
    rc, out, err = call(quantize_main, [str(f16), str(tmp_path / "q.gguf"), "q8_0"], capsys)
    assert rc == 0, err
    assert "quantizing" in err and DONE.search(err)
    rc, out, err = call(quantize_main, [str(f16), str(tmp_path / "q2.gguf"), "q8_0", "--no-progress"], capsys)
    assert rc == 0 and err == ""


def test_profile_and_train_bars(models, tmp_path, capsys):
    model = tmp_path / "p.gguf"
    model.write_bytes(open(models["pwri"], "rb").read())
    rc, out, err = call(convert_main, ["profile", str(model), "--max-tokens", "200", "--samples", "100"], capsys)
    assert rc == 0, err
    assert DONE.search(err).group(1) == "200" and "profiling" in err
    rc, out, err = call(convert_main, ["train-predictor", str(model), "--predictor-dir", str(tmp_path / "pred"),
                                       "--epochs", "1"], capsys)
    assert rc == 0, err
    assert DONE.search(err).group(1) == "2" and "layer" in err        # the tiny model's 2 layers
    assert "| layer | H | recall |" in out


# ---- what a user sees: real processes -------------------------------------------------
def _run(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_processes_exit_2_with_one_line(models, tmp_path):
    cases = [(["-m", "pyinfer.perplexity", models["not_gguf"]], "python -m pyinfer.perplexity"),
             (["-m", "pyinfer.sparsity", "calibrate", models["swiglu"], "--sparsity", "1.5", "-o", "x.gguf"],
              "python -m pyinfer.sparsity calibrate"),
             (["-m", "pyinfer.quantize", models["not_gguf"], "x.gguf", "q8_0"], "python -m pyinfer.quantize"),
             (["-m", "pyinfer.convert", "profile", models["swiglu"], "--out", "act"],
              "python -m pyinfer.convert profile"),
             ([os.path.join(ROOT, "convert.py"), os.path.join(str(tmp_path), "nowhere")], "convert.py")]
    for args, prog in cases:
        r = _run(args, tmp_path)
        assert_one_line_error(r.returncode, r.stderr, prog)
    assert not os.listdir(tmp_path)
