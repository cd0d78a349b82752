"""Offline planning end to end: profiling (against a numpy forward of the dense ReLU FFN),
the profile files, predictor training on a synthetic model, and profile -> train -> solve
-> run on a tiny ReLU model.

Budgets: profiled firing counts within 0.2% of all (token, neuron) pairs of the numpy
oracle's (float32 sums in another order may flip a neuron sitting at zero); trained
predictors reach recall >= 0.95 on held-out tokens; the trained-predictor sparse model's
perplexity on held-out text within 2% of the dense model's (a random model: missing
3-5% of the firing neurons moves it about 1%), and closer than the random
predictor it replaced.
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyinfer.convert.predictor_train import (TrainConfig, evaluate, train_predictors, write_model_with_predictors,
                                     write_predictor_dir)
from pyinfer.convert.profile import (default_corpus, load_activation_counts, load_samples, perplexity,
                             profile_model, tokenize_corpus)
from pyinfer.offload.solver import Speeds, layer_neuron_bytes, solve
from pyinfer.config import ContextSettings
from pyinfer.engine import Engine
from pyinfer.gguf_model import GGUFFile
from pyinfer.offload.gpu_index import ensure_gpu_index, read_gpu_index
from pyinfer.tokenizer import Tokenizer
from reference.numpy_sparse import NumpyPowerInfer
from tiny_chat_model import write_tiny_chat_model

ROOT = Path(__file__).resolve().parents[1]


class _Recorder(NumpyPowerInfer):
    """The numpy forward, dense, recording which neurons fire per layer."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.fired = {}

    def ffn(self, i, x, h):
        p, w = f"blk.{i}.", self.w
        act = np.maximum(h @ w[p + "ffn_gate.weight"].T, 0.0) * (h @ w[p + "ffn_up.weight"].T)
        self.fired.setdefault(i, []).append(act != 0)
        return act @ w[p + "ffn_down_t.weight"]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan")
    return str(write_tiny_chat_model(d / "chat.gguf", powerinfer=True, seed=5))


def test_profile_counts_match_numpy(chat_model):
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(0, 200, 70)), list(rng.integers(0, 200, 45))]
    r = profile_model(chat_model, token_docs=docs, n_ctx=32, n_batch=16, samples=40, progress=False)
    assert r.n_tokens == 115
    eng = Engine(chat_model, ContextSettings(n_ctx=64, n_threads=2))
    ref = _Recorder(chat_model, eng.cfg, 0.0, dense=True)
    eng.close()
    for d in docs:                      # the same windows of 32 tokens from position 0
        for s in range(0, len(d), 32):
            ref.forward(d[s:s + 32])
    want = np.stack([np.concatenate(ref.fired[i]).sum(axis=0) for i in range(2)])
    assert np.abs(r.counts - want).sum() <= 0.002 * r.counts.size * r.n_tokens
    assert 0.3 < r.density.mean() < 0.7          # a random ReLU layer fires about half
    assert r.x[0].shape == (40, 64) and r.mask[1].shape == (40, 128)
    # each sampled mask is the true firing of some token (up to neurons at zero)
    truth = np.concatenate(ref.fired[0])
    assert all((truth != m).sum(axis=1).min() <= 2 for m in r.mask[0])


def test_profile_files(chat_model, tmp_path, monkeypatch):
    r = profile_model(chat_model, token_docs=[list(range(3, 90))], samples=20, progress=False)
    monkeypatch.setitem(sys.modules, "torch", None)     # torch is optional: no .pt files, no failure
    files = r.save(str(tmp_path / "a"))
    assert sorted(Path(f).name for f in files) == ["profile.npz", "samples.npz"]
    back = load_activation_counts(str(tmp_path / "a"))
    assert back.n_tokens == 87 and np.array_equal(np.stack(back.counts), r.counts)
    xs, masks = load_samples(str(tmp_path / "a"))
    assert np.array_equal(xs[1], r.x[1]) and np.array_equal(masks[0], r.mask[0])


def test_profile_files_in_powerinfer_format(chat_model, tmp_path):
    torch = pytest.importorskip("torch", reason="PowerInfer's activation_{i}.pt files need torch "
                                                "(the optional [torch] extra)")
    r = profile_model(chat_model, token_docs=[list(range(3, 90))], samples=20, progress=False)
    files = r.save(str(tmp_path / "a"))
    assert sorted(Path(f).name for f in files) == ["activation_0.pt", "activation_1.pt", "profile.npz",
                                                   "samples.npz"]
    for i in range(2):
        t = torch.load(tmp_path / "a" / f"activation_{i}.pt")
        assert t.shape == (128,) and np.array_equal(t.numpy(), r.counts[i])
    # PowerInfer's files alone (no profile.npz) are read through torch
    (tmp_path / "a" / "profile.npz").unlink()
    pt = load_activation_counts(str(tmp_path / "a"))
    assert pt.n_tokens is None and np.array_equal(pt.counts[1], r.counts[1])


def test_predictor_training_reaches_recall_on_synthetic_model(tmp_path):
    """scripts/make_synthetic_sparse.py (planted power-law firing, 80% sparse): predictors
    trained from profiled samples recall >= 95% of the firing neurons while skipping most."""
    out = tmp_path / "syn.powerinfer.gguf"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_synthetic_sparse.py"), "--shape", "tiny",
                    "--layers", "2", "--vocab", "tiny", "--type", "f16", "--sparsity", "0.8",
                    "--pred-hidden", "64", "--out", str(out)], check=True, capture_output=True)
    rng = np.random.default_rng(1)
    docs = [list(rng.integers(0, 96, 256)) for _ in range(8)]
    r = profile_model(str(out), token_docs=docs, n_ctx=256, samples=1000, progress=False)
    assert abs(r.density.mean() - 0.2) < 0.05
    freq = [c / r.n_tokens for c in r.counts]
    fc1s, fc2s, reports, threshold = train_predictors(str(out), r.x, r.mask, freq, TrainConfig(epochs=4))
    for rep, fc1, fc2 in zip(reports, fc1s, fc2s):
        assert rep.recall >= 0.95, rep
        assert rep.predicted_sparsity > 0.6, rep       # reported, and still sparse
        assert fc1.shape == (rep.hidden, 256) and fc2.shape == (1024, rep.hidden)
        assert 16 <= rep.hidden <= 512


def test_calibrated_thresholds_fold_into_fc2():
    """One file threshold T and fc2 scaled per layer decide exactly as per-layer thresholds."""
    from pyinfer.convert.predictor_train import _scores, calibrate_layers
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    fc1s = [rng.standard_normal((6, 8)).astype(np.float32) for _ in range(3)]
    fc2s = [rng.standard_normal((10, 6)).astype(np.float32) for _ in range(3)]
    taus = [-0.5, -2.0, -0.01]
    before = [_scores(x, a, b) >= t for a, b, t in zip(fc1s, fc2s, taus)]
    T = calibrate_layers(fc2s, taus)
    assert T == -0.5
    for a, b, want in zip(fc1s, fc2s, before):
        np.testing.assert_array_equal(_scores(x, a, b) >= T, want)


def test_uncalibrated_training_keeps_the_threshold(chat_model):
    r = profile_model(chat_model, token_docs=[list(range(3, 250))], samples=240, progress=False)
    cfg = TrainConfig(calibrate=False, epochs=1, max_rounds=2, threshold=0.25, hidden=32)
    fc1s, fc2s, reports, threshold = train_predictors(chat_model, r.x, r.mask, cfg=cfg)
    assert threshold == 0.25 and [rep.hidden for rep in reports] == [32, 32]
    for rep, fc1, fc2 in zip(reports, fc1s, fc2s):
        assert rep.pos_weight in (2.0, 4.0) and rep.n_val == 36
        assert fc1.shape == (32, 64) and fc2.shape == (128, 32)


def test_pipeline_profile_train_solve_run(chat_model, tmp_path):
    tok = Tokenizer.from_gguf(GGUFFile(chat_model).reader)
    corpus = default_corpus()
    held_out = tokenize_corpus(tok, corpus[-4:], 1200)
    # profile (with training samples) on other text
    r = profile_model(chat_model, corpus[:30], max_tokens=4000, samples=1500, n_ctx=256, progress=False)
    act_dir = tmp_path / "activation"
    r.save(str(act_dir))
    # train and write the model with the new predictors, and a predictor directory
    xs, masks = load_samples(str(act_dir))
    fc1s, fc2s, reports, threshold = train_predictors(chat_model, xs, masks, cfg=TrainConfig(epochs=8))
    assert min(rep.recall for rep in reports) >= 0.95 and threshold < 0
    trained = str(tmp_path / "chat.trained.gguf")
    write_model_with_predictors(chat_model, trained, fc1s, fc2s, threshold)
    write_predictor_dir(str(tmp_path / "pred"), fc1s, fc2s, threshold)
    f = GGUFFile(trained)
    assert f.is_powerinfer and f.metadata["powerinfer.sparse_threshold"] == pytest.approx(threshold)
    assert f.get("blk.1.fc1.weight").ne == (64, reports[1].hidden)
    # the file's predictors are the trained ones (F16)
    x, m = xs[0][:200], masks[0][:200]
    fc1 = np.asarray(f.get("blk.0.fc1.weight").data, dtype=np.float32)
    fc2 = np.asarray(f.get("blk.0.fc2.weight").data, dtype=np.float32)
    assert evaluate(x, m, fc1, fc2, threshold)[0] >= 0.95
    # solve and write the GPU index beside the trained model from the profile
    nbytes, _ = layer_neuron_bytes(f)
    plan = solve(r.counts / r.n_tokens, nbytes, 128 * nbytes[0], Speeds(objective="mass"), group=32)
    idx = ensure_gpu_index(trained, 128 * nbytes[0], activation_dir=str(act_dir), group=32,
                           speeds=Speeds(objective="mass"))
    assert idx.n_gpu == plan.n_gpu and sum(idx.n_gpu) == 128
    assert read_gpu_index(trained + ".generated.gpuidx").n_gpu == plan.n_gpu
    # run: perplexity on held-out text, dense vs the trained predictor (vs the random one)
    dense = perplexity(trained, held_out, n_threads=2, dense=True)
    sparse = perplexity(trained, held_out, n_threads=2)
    untrained = perplexity(chat_model, held_out, n_threads=2)
    assert abs(sparse / dense - 1) < 0.02
    assert abs(sparse / dense - 1) < abs(untrained / dense - 1)


def test_cli_subcommands(chat_model, tmp_path, capsys):
    from pyinfer.convert.cli import main
    model = tmp_path / "m.gguf"
    model.write_bytes(Path(chat_model).read_bytes())
    assert main(["profile", str(model), "--max-tokens", "600", "--samples", "300", "--no-progress"]) == 0
    assert "profiled 600 tokens" in capsys.readouterr().out
    assert (tmp_path / "activation" / "profile.npz").exists()
    assert main(["train-predictor", str(model), "--outfile", str(tmp_path / "t.gguf"),
                 "--predictor-dir", str(tmp_path / "pred"), "--epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    suffix = "pt" if importlib.util.find_spec("torch") else "npz"     # PowerInfer's .pt needs torch
    assert "| layer | H | recall |" in out and (tmp_path / "pred" / f"model_1.{suffix}").exists()
    assert main(["gpu-index", str(model), "--vram-budget", "0.001", "--objective", "mass"]) == 0
    assert "GPU neurons per layer 128, 128" in capsys.readouterr().out
    assert read_gpu_index(str(model) + ".generated.gpuidx").n_gpu == [128, 128]
    assert main(["gpu-index", str(model), "--vram-budget", "1", "--disable-gpu-index"]) == 0
    capsys.readouterr()
    assert main(["train-predictor", str(model)]) == 2          # nothing to write: the user's error, one line
    assert capsys.readouterr().err == ("convert.py train-predictor: error: nothing to write: "
                                       "give --outfile and/or --predictor-dir\n")
