"""Offload executed on the stand-in device (pyinfer.backend: a device made of the CPU with its
own arena, worker thread and counted copies): layer offload (n_gpu_layers) and the hybrid
placement's dense part (vram_budget) run split across the CPU and the device.

Oracle: the same engine on the CPU alone. The stand-in runs the CPU kernels, so the greedy
tokens and the logits must be the same bits; the arena is exactly the budget, so the plan's
accounting is checked by construction (a byte too many would fail to place or to plan)."""
import numpy as np
import pytest

from pyinfer.backend import Backend, tensor_backend
from pyinfer.config import ContextSettings
from pyinfer.engine import Engine
from pyinfer.offload import MIB, OffloadBudgetError
from reference.tiny_model import write_tiny_llama

PROMPT = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889]


def _run(path, n_gen=8, prompt=PROMPT, **extra):
    e = Engine(path, ContextSettings(n_ctx=128, n_batch=16, n_threads=2, extra=extra))
    try:
        logits = [e.decode(prompt)]
        tokens = []
        for _ in range(n_gen):
            tokens.append(int(np.argmax(logits[-1])))
            logits.append(e.decode([tokens[-1]]))
        return tokens, np.array(logits), e
    finally:
        e.close()


@pytest.fixture(scope="module")
def cpu_run(smollm2):
    tokens, logits, _ = _run(smollm2)
    return tokens, logits


@pytest.mark.parametrize("n_gpu_layers", [1, 12, 30, -1])
def test_layer_offload_is_bit_identical(smollm2, cpu_run, n_gpu_layers):
    with Backend.standin(256 * MIB, n_threads=1) as dev:
        tokens, logits, e = _run(smollm2, offload_device=dev, n_gpu_layers=n_gpu_layers)
        stats = dev.stats()
        assert tokens == cpu_run[0]
        np.testing.assert_array_equal(logits, cpu_run[1])
        n = 30 if n_gpu_layers < 0 else n_gpu_layers
        assert e.offload_plan.gpu_layers == list(range(30 - n, 30))
        assert sorted(e.placement.kv_layers) == list(range(30 - n, 30))
        assert stats["splits"] > 0 and stats["h2d_bytes"] > 0 and stats["d2h_bytes"] > 0
        assert stats["arena_peak"] <= stats["arena_bytes"]


def test_placed_tensors_live_on_the_device(smollm2):
    with Backend.standin(256 * MIB, n_threads=1) as dev:
        e = Engine(smollm2, ContextSettings(n_ctx=128, extra={"offload_device": dev, "n_gpu_layers": 2}))
        try:
            w = e.weights
            assert tensor_backend(w.layers[29].wq) == "standin" and tensor_backend(w.layers[28].w_down) == "standin"
            assert tensor_backend(w.layers[27].wq) is None and tensor_backend(w.tok_embd) is None
            assert tensor_backend(e.kv.k[29]) == "standin" and tensor_backend(e.kv.k[0]) is None
        finally:
            e.close()


def test_copies_per_token_are_the_hidden_state(smollm2):
    """Decoding a token with layers 18..29 on the device copies the hidden state in and out
    (plus the inputs the device's first split reads), not weights."""
    with Backend.standin(256 * MIB, n_threads=1) as dev:
        e = Engine(smollm2, ContextSettings(n_ctx=128, extra={"offload_device": dev, "n_gpu_layers": 12}))
        try:
            e.decode(PROMPT)
            before = dev.stats()
            e.decode([42])
            after = dev.stats()
            per_token = (after["h2d_bytes"] - before["h2d_bytes"]) + (after["d2h_bytes"] - before["d2h_bytes"])
            assert 0 < per_token < 64 * 1024          # a few vectors of n_embd floats, not MiB of weights
        finally:
            e.close()


@pytest.mark.parametrize("budget_mib", [12, 48])
def test_hybrid_dense_part_on_the_device(smollm2, cpu_run, budget_mib):
    """vram_budget: attention, norms, output and KV caches by priority on the device (at 12 MiB
    only a prefix of them); the FFN (dense SmolLM2: no hot neurons) on the CPU; same bits."""
    with Backend.standin(64 * MIB, n_threads=1) as dev:
        tokens, logits, e = _run(smollm2, offload_device=dev, vram_budget=budget_mib / 1024)
        assert tokens == cpu_run[0]
        np.testing.assert_array_equal(logits, cpu_run[1])
        assert e.offload_plan.mode == "hybrid" and e.placement.tensors
        on = [i.on_gpu for i in e.offload_plan.items]
        assert any(on) and (budget_mib == 48 or not all(on))
        assert dev.stats()["arena_peak"] <= budget_mib * MIB


def test_a_budget_too_small_is_refused(smollm2):
    with Backend.standin(8 * MIB, n_threads=1) as dev:
        with pytest.raises(OffloadBudgetError, match="n_gpu_layers=30"):
            Engine(smollm2, ContextSettings(n_ctx=128, extra={"offload_device": dev, "n_gpu_layers": 30}))
        with pytest.raises(OffloadBudgetError, match="more than the device"):
            Engine(smollm2, ContextSettings(n_ctx=128, extra={"offload_device": dev, "vram_budget": 1.0}))


def test_powerinfer_file_layer_offload(tmp_path):
    path = str(write_tiny_llama(tmp_path / "m.gguf", powerinfer=True, seed=3))
    prompt = [1, 5, 9, 17, 33, 60, 2, 7]
    ref_tokens, ref_logits, _ = _run(path, prompt=prompt)
    with Backend.standin(16 * MIB, n_threads=1) as dev:
        tokens, logits, _ = _run(path, prompt=prompt, offload_device=dev, n_gpu_layers=-1)
    assert tokens == ref_tokens
    np.testing.assert_array_equal(logits, ref_logits)


def test_load_and_close_give_the_memory_back(smollm2):
    with Backend.standin(256 * MIB, n_threads=1) as dev:
        for _ in range(3):
            e = Engine(smollm2, ContextSettings(n_ctx=128, extra={"offload_device": dev, "n_gpu_layers": 8}))
            e.decode(PROMPT[:4])
            assert dev.stats()["arena_used"] > 0
            e.close()
            assert dev.stats()["arena_used"] == 0


@pytest.mark.parametrize("hot_share", [0.2, 0.4, 0.8])
def test_hybrid_ffn_hot_on_the_device_cold_on_the_cpu(tmp_path, hot_share):
    """A PowerInfer file with a GPU index of 20/40/80% hot neurons per layer and a budget that holds
    the dense tensors and the slices: each layer's hot rows run on the device, the cold ones on
    the CPU, added. Against the CPU alone: the same greedy tokens, logits equal up to the
    rounding of summing the two shares apart."""
    from pyinfer.offload.gpu_index import GpuIndex, gpu_index_path, write_gpu_index
    path = str(write_tiny_llama(tmp_path / "m.gguf", powerinfer=True, seed=3))
    rng = np.random.default_rng(0)
    masks = [(rng.random(128) < hot_share).astype(np.int32) for _ in range(2)]
    write_gpu_index(gpu_index_path(path), GpuIndex(0, masks))
    prompt = [1, 5, 9, 17, 33, 60, 2, 7]
    ref_tokens, ref_logits, _ = _run(path, prompt=prompt)
    with Backend.standin(16 * MIB, n_threads=1) as dev:
        tokens, logits, e = _run(path, prompt=prompt, offload_device=dev, vram_budget=12 / 1024)
        assert [len(s.hot) for s in e.offload_plan.slices] == [int(m.sum()) for m in masks]
        assert "hybrid" in e.ffn_mode
        assert dev.stats()["arena_used"] == 0            # closed: everything given back
    assert tokens == ref_tokens
    scale = np.abs(ref_logits).max()
    assert np.abs(logits - ref_logits).max() / scale < 1e-5
