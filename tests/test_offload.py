"""GPU placement planned on the host (pyinfer/offload): budget arithmetic, the hybrid and
n_gpu_layers plans, the load report, the error when a VRAM budget is asked for without CUDA,
and n_gpu_layers without CUDA left on the CPU (as llama-cpp-python's CPU build).

Oracle for the accounting: the device bytes of a plan are recomputed here from the raw sizes
(256-byte parts, a 2 MiB arena granule, the slice layout of ggml_sparse/src/cuda/ffn_hybrid.cu)
and must never exceed the budget, over many random models and budgets.
"""
import gguf
import numpy as np
import pytest

from pyinfer import Llama
from pyinfer.config import ModelConfig
from pyinfer.gguf_model import GGUFFile
from pyinfer.offload import (GIB, MIB, GPUUnavailableError, OffloadBudgetError, budget_bytes,
                             cuda_status, format_report, gpu_layers_note, make_plan, plan_hybrid,
                             plan_layers, read_gpu_buckets, spec_from_file, summary)
from pyinfer.offload.budget import ScratchShape, SliceRowBytes, arena_bytes, ffn_slice_bytes, part
from pyinfer.offload.model_spec import ModelSpec, TensorSpec, classify
from pyinfer.offload.planner import PRIORITY
from reference.tiny_model import write_tiny_llama
from tiny_chat_model import write_tiny_chat_model

A, G = 256, 2 * 1024 * 1024


def up(n, k):
    return -(-n // k) * k


def slice_oracle(rows, n, E, M):
    """ffn_hybrid.cu's allocation, written out again: weights then per-token scratch."""
    if n == 0:
        return 0
    w = (up(n * rows.gate, A) if rows.gate else 0) + up(n * rows.up, A) + up(n * rows.down, A) + up(4 * n, A)
    return w + up(4 * E, A) + up(4 * (M + 1), A) + up(4 * n, A) + up(4 * E, A)


def device_oracle(plan, spec):
    total = plan.scratch + sum(up(i.nbytes, A) for i in plan.items if i.on_gpu)
    total += sum(slice_oracle(spec.ffn_rows[s.layer], len(s.hot), spec.n_embd, spec.n_ff) for s in plan.slices)
    return up(total, G) if total else 0


def random_spec(rng, sparse=True):
    L = int(rng.integers(1, 9))
    E = int(rng.choice([64, 256, 1024, 4096]))
    F = int(E * rng.choice([2, 3, 4]))
    V = int(rng.choice([1000, 32000]))
    kv = E // int(rng.choice([1, 4]))
    bpw = float(rng.choice([0.5625, 1.0625, 2.0]))     # q4_0, q8_0, f16 bytes per weight
    ts = [TensorSpec("token_embd.weight", "embedding", None, int(E * V * bpw)),
          TensorSpec("output_norm.weight", "norm", None, 4 * E),
          TensorSpec("output.weight", "output", None, int(E * V * bpw))]
    for i in range(L):
        for n, k, sz in (("attn_q", "attention", E * E), ("attn_k", "attention", E * kv),
                         ("attn_v", "attention", E * kv), ("attn_output", "attention", E * E),
                         ("ffn_gate", "ffn", E * F), ("ffn_up", "ffn", E * F), ("ffn_down_t", "ffn", E * F)):
            ts.append(TensorSpec(f"blk.{i}.{n}.weight", k, i, int(sz * bpw)))
        ts.append(TensorSpec(f"blk.{i}.attn_norm.weight", "norm", i, 4 * E))
        ts.append(TensorSpec(f"blk.{i}.ffn_norm.weight", "norm", i, 4 * E))
        if sparse:
            ts.append(TensorSpec(f"blk.{i}.fc1.weight", "predictor", i, 2 * E * 128))
            ts.append(TensorSpec(f"blk.{i}.fc2.weight", "predictor", i, 2 * 128 * F))
    n_ctx = int(rng.choice([256, 2048]))
    shape = ScratchShape(n_batch=int(rng.choice([1, 32, 512])), n_ctx=n_ctx, n_embd=E, n_ff=F,
                         n_head=max(1, E // 64), q_dim=E, kv_dim=kv, n_vocab=V)
    row = int(E * bpw)
    return ModelSpec(L, E, F, ts, [2 * up(kv * n_ctx * 2, A)] * L, shape,
                     [SliceRowBytes(row, row, row)] * L, sparse)


def random_hot(rng, spec):
    return [rng.permutation(spec.n_ff)[:int(rng.integers(0, spec.n_ff + 1))] for _ in range(spec.n_layer)]


def test_budget_arithmetic():
    assert part(0) == 0 and part(1) == 256 and part(256) == 256 and part(257) == 512
    assert arena_bytes(1) == 2 * MIB and arena_bytes(2 * MIB) == 2 * MIB
    assert budget_bytes(1.5, None) == 3 * GIB // 2
    assert budget_bytes(None, 8 * GIB, margin=512 * MIB) == 8 * GIB - 512 * MIB
    assert budget_bytes(None, 100, margin=512 * MIB) == 0
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="vram_budget"):
            budget_bytes(bad, None)
    with pytest.raises(ValueError, match="free device memory is unknown"):
        budget_bytes(None, None)
    rows = SliceRowBytes(gate=18 * 4, up=18 * 4, down=34 * 4)    # n_embd 128: q4_0 gate/up, q8_0 down
    # 10 hot neurons of 512: gate 720->768, up 768, down 1360->1536, bucket 40->256;
    # x 512, idx 2052->2304, h 40->256, y 512
    assert ffn_slice_bytes(rows, 10, 128, 512) == 768 + 768 + 1536 + 256 + 512 + 2304 + 256 + 512
    assert ffn_slice_bytes(rows, 0, 128, 512) == 0
    assert ffn_slice_bytes(SliceRowBytes(0, 72, 136), 10, 128, 512) == 768 + 1536 + 256 + 512 + 2304 + 256 + 512


def test_classify_tensor_names():
    want = {"blk.3.attn_q.weight": ("attention", 3), "blk.0.attn_q.bias": ("attention", 0),
            "blk.12.fc2.weight": ("predictor", 12), "blk.1.ffn_norm.weight": ("norm", 1),
            "blk.1.ffn_down_t.weight": ("ffn", 1), "output_norm.weight": ("norm", None),
            "output.weight": ("output", None), "token_embd.weight": ("embedding", None)}
    for name, (kind, layer) in want.items():
        t = classify(name)
        assert (t.kind, t.layer) == (kind, layer), name


@pytest.mark.parametrize("seed", range(40))
def test_hybrid_plan_never_exceeds_the_budget(seed):
    rng = np.random.default_rng(seed)
    spec = random_spec(rng)
    hot = random_hot(rng, spec)
    full = sum(t.nbytes for t in spec.tensors) + sum(spec.kv_bytes)
    for frac in (0.0, 0.001, 0.05, 0.25, 0.5, 1.0, 2.0, float(rng.random())):
        budget = int(full * frac)
        plan = plan_hybrid(spec, budget, hot)
        assert plan.device_bytes == device_oracle(plan, spec) <= budget
        # dense tensors: exactly a prefix of the priority order
        on = [i.on_gpu for i in plan.items]
        assert on == sorted(on, reverse=True)
        assert [PRIORITY.index(i.kind) for i in plan.items] == sorted(PRIORITY.index(i.kind) for i in plan.items)
        # slices: ascending ids taken from the front of each layer's list
        for s in plan.slices:
            assert np.array_equal(s.hot, np.sort(hot[s.layer][:len(s.hot)]))
            assert s.nbytes == slice_oracle(spec.ffn_rows[s.layer], len(s.hot), spec.n_embd, spec.n_ff)
        # maximal: one more neuron in any layer that has more would break the budget
        counts = {s.layer: len(s.hot) for s in plan.slices}
        if plan.scratch:
            for i in range(spec.n_layer):
                c = counts.get(i, 0)
                if c < len(hot[i]):
                    grown = plan.parts_total - slice_oracle(spec.ffn_rows[i], c, spec.n_embd, spec.n_ff) + \
                        slice_oracle(spec.ffn_rows[i], c + 1, spec.n_embd, spec.n_ff)
                    assert up(grown, G) > budget


def test_hybrid_plan_grows_with_the_budget(rng):
    spec = random_spec(rng)
    hot = random_hot(rng, spec)
    used = [plan_hybrid(spec, b, hot).parts_total for b in np.linspace(0, 4 * GIB, 12).astype(int)]
    assert used == sorted(used)


def test_hybrid_plan_budget_too_small_and_large():
    rng = np.random.default_rng(7)
    spec = random_spec(rng)
    hot = [np.arange(spec.n_ff)] * spec.n_layer
    empty = plan_hybrid(spec, 1000, hot)
    assert empty.device_bytes == 0 and not empty.slices and "scratch" in empty.notes[0]
    everything = plan_hybrid(spec, 1 << 50, hot)
    assert all(i.on_gpu for i in everything.items)
    assert [len(s.hot) for s in everything.slices] == [spec.n_ff] * spec.n_layer
    assert np.array_equal(everything.slices[0].gpu_idx(), np.ones(spec.n_ff, np.int32))
    no_index = plan_hybrid(spec, 1 << 50, None)
    assert not no_index.slices and any("no GPU index" in n for n in no_index.notes)


def test_hybrid_plan_reports_a_truncated_index():
    spec = random_spec(np.random.default_rng(3))
    spec.ffn_rows = [SliceRowBytes(200_000, 200_000, 200_000)] * spec.n_layer
    hot = [np.arange(spec.n_ff)[::-1]] * spec.n_layer     # priority order: highest ids first
    dense = plan_hybrid(spec, 1 << 50, None).parts_total
    slices = sum(slice_oracle(r, spec.n_ff, spec.n_embd, spec.n_ff) for r in spec.ffn_rows)
    plan = plan_hybrid(spec, up(dense + slices // 2, G), hot)
    assert 0 < sum(len(s.hot) for s in plan.slices) < spec.n_layer * spec.n_ff
    assert any("regenerate" in n for n in plan.notes)
    for s in plan.slices:         # the front of the list: the highest ids
        assert s.hot.min() == spec.n_ff - len(s.hot)


def test_hot_neuron_lists_are_checked():
    spec = random_spec(np.random.default_rng(5))
    with pytest.raises(ValueError, match="layers"):
        plan_hybrid(spec, GIB, [np.arange(3)] * (spec.n_layer + 1))
    with pytest.raises(ValueError, match=r"\[0, "):
        plan_hybrid(spec, GIB, [np.array([spec.n_ff])] * spec.n_layer)
    with pytest.raises(ValueError, match="repeat"):
        plan_hybrid(spec, GIB, [np.array([1, 1])] * spec.n_layer)


@pytest.mark.parametrize("seed", range(10))
def test_layer_plan(seed):
    rng = np.random.default_rng(100 + seed)
    spec = random_spec(rng, sparse=False)
    L = spec.n_layer
    assert plan_layers(spec, GIB, 0).device_bytes == 0
    for ngl in (1, L, L + 1, -1):
        plan = plan_layers(spec, 1 << 50, ngl)
        layers = list(range(max(0, L - ngl), L)) if ngl >= 0 else list(range(L))
        assert plan.gpu_layers == layers
        for it in plan.items:
            want = it.layer in layers if it.layer is not None else (ngl > L or ngl < 0) and it.kind != "embedding"
            assert it.on_gpu == want, it.name
        assert plan.device_bytes == device_oracle(plan, spec)
        s = summary(plan)
        assert s["ffn"] == sum(up(t.nbytes, A) for t in spec.tensors if t.kind == "ffn" and t.layer in layers)
        with pytest.raises(OffloadBudgetError, match=f"n_gpu_layers={ngl} needs"):
            plan_layers(spec, plan.device_bytes - 1, ngl)
        assert plan_layers(spec, plan.device_bytes, ngl).device_bytes == plan.device_bytes


@pytest.fixture(scope="module")
def tiny_sparse(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("offload") / "m.gguf", arch="llama",
                                powerinfer=True, seed=3))


def _spec(path, n_ctx=64, n_batch=16):
    f = GGUFFile(path)
    cfg = ModelConfig.from_metadata(f.metadata, n_vocab=f.get("token_embd.weight").ne[1])
    return spec_from_file(f, cfg, n_ctx, n_batch), f


def test_spec_from_a_file(tiny_sparse):
    spec, f = _spec(tiny_sparse)
    assert spec.sparse and spec.n_layer >= 1
    names = {t.name for t in spec.tensors}
    assert set(f.tensors) <= names
    assert sum(t.nbytes for t in spec.tensors if t.name in f.tensors) == f.nbytes
    g = f.get("blk.0.ffn_gate.weight")
    assert spec.ffn_rows[0].gate == g.nbytes // spec.n_ff
    assert spec.ffn_rows[0].down == f.get("blk.0.ffn_down_t.weight").nbytes // spec.n_ff
    cfg = ModelConfig.from_metadata(f.metadata, n_vocab=1)
    assert spec.kv_bytes[0] == 2 * up(cfg.n_head_kv * cfg.head_dim * 64 * 2, A)


def test_load_report(tiny_sparse):
    spec, _ = _spec(tiny_sparse)
    hot = [np.arange(0, spec.n_ff, 2)] * spec.n_layer
    plan = make_plan(spec, 1.0, hot_neurons=hot)
    text = format_report(plan, spec.n_layer, spec.n_ff, device="Test GPU", executed=False)
    lines = text.splitlines()
    assert lines[0].startswith("pyinfer: GPU offload plan on Test GPU: hybrid")
    assert "budget 1024.00 MiB" in lines[1]
    for i in range(spec.n_layer):
        assert f"layer {i:3d}: attn GPU, pred GPU, norm GPU, kv GPU, " \
               f"hot {spec.n_ff // 2}/{spec.n_ff} (50.0%)" in text
    assert f"hot neurons on the GPU: {spec.n_layer * spec.n_ff // 2} of {spec.n_layer * spec.n_ff}" in text
    assert "runs on the CPU" in lines[-1]
    big = random_spec(np.random.default_rng(100))       # n_embd 4096: a 2 MiB arena holds one tensor
    first = plan_hybrid(big, 1 << 50, None)
    small = plan_hybrid(big, up(first.scratch + first.items[0].nbytes, G), None)
    text = format_report(small, big.n_layer, big.n_ff)
    assert "note: dense placement stopped at blk.0.attn_output.weight" in text
    assert f"layer   0: attn 1/4 GPU, pred cpu, norm cpu, kv cpu, hot 0/{big.n_ff} (0.0%)" in text
    assert "layer   1: attn cpu" in text
    layers = make_plan(spec, 1.0, n_gpu_layers=-1)
    assert f"n_gpu_layers: layers 0..{spec.n_layer - 1}" in format_report(layers, spec.n_layer, spec.n_ff)


def test_gpu_index_buckets_are_read(tmp_path):
    path = tmp_path / "m.generated.gpuidx"
    w = gguf.GGUFWriter(str(path), "generic.gpu_index")
    w.add_uint32("generic.gpu_index.block_count", 2)
    w.add_uint64("split.vram_capacity", 1 << 20)
    buckets = [np.array([1, 5, 7], np.int32), np.array([0], np.int32)]
    for i, b in enumerate(buckets):
        idx = np.zeros(8, np.int32)
        idx[b] = 1
        w.add_tensor(f"blk.{i}.gpu_idx", idx)
        w.add_tensor(f"blk.{i}.gpu_bucket", b)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    got = read_gpu_buckets(str(path), 2)
    assert [g.tolist() for g in got] == [b.tolist() for b in buckets]


@pytest.mark.skipif(cuda_status()[0], reason="this machine has a usable CUDA device")
def test_gpu_options_without_cuda_name_what_is_missing(tmp_path):
    model = str(write_tiny_chat_model(tmp_path / "chat.gguf"))
    reason = cuda_status()[1]
    assert reason.startswith("CUDA not built") or reason.startswith("no CUDA device")
    with pytest.raises(GPUUnavailableError, match=r"vram_budget=2\.0 needs a CUDA GPU, but ") as e:
        Llama(model, vram_budget=2.0, verbose=False)
    assert reason in str(e.value)
    with pytest.raises(GPUUnavailableError, match=r"vram_budget=1\.0 needs a CUDA GPU"):
        Llama(model, vram_budget=1.0, n_gpu_layers=4, verbose=False)
    Llama(model, n_gpu_layers=0, verbose=False).close()


@pytest.mark.skipif(cuda_status()[0], reason="this machine has a usable CUDA device")
def test_n_gpu_layers_without_cuda_leaves_the_model_on_the_cpu(tmp_path):
    """As llama-cpp-python's CPU build: no plan, no error, the note names the reason."""
    model = str(write_tiny_chat_model(tmp_path / "chat.gguf"))
    reason = cuda_status()[1]
    assert gpu_layers_note(0) is None
    assert gpu_layers_note(4) == (f"n_gpu_layers=4: no usable CUDA GPU ({reason}), so every "
                                  "layer runs on the CPU")
    assert gpu_layers_note(-1, "-ngl -1").startswith("-ngl -1: no usable CUDA GPU")
    with Llama(model, n_gpu_layers=4, n_ctx=64, verbose=False) as m:
        assert m._engine.offload_plan is None and m.model_params.n_gpu_layers == 4


def test_llama_verbose_prints_the_plan(tmp_path, monkeypatch, capsys):
    """The engine hook and the verbose report, with the device answers stubbed (a 1 GiB
    free device): what Llama(vram_budget=...) prints on a GPU machine."""
    import pyinfer.offload as offload
    model = str(write_tiny_chat_model(tmp_path / "m.gguf", powerinfer=True, seed=3))
    spec, _ = _spec(model)
    from pyinfer.offload.gpu_index import GpuIndex, gpu_index_path, write_gpu_index
    mask = np.zeros(spec.n_ff, dtype=np.int32)
    mask[::4] = 1
    # an index made for a smaller budget is reused (DESIGN.md), so the plan takes its neurons
    write_gpu_index(gpu_index_path(model), GpuIndex(1 << 20, [mask.copy() for _ in range(spec.n_layer)]))
    monkeypatch.setattr(offload, "require_cuda", lambda what: None)
    monkeypatch.setattr(offload, "cuda_status", lambda: (True, "1 CUDA device(s)"))
    monkeypatch.setattr(offload, "mem_info", lambda device=0: (GIB, 2 * GIB))
    with pytest.warns(RuntimeWarning, match="does not run on the GPU yet"):
        Llama(model, vram_budget=0.5, n_ctx=64, verbose=True).close()
    err = capsys.readouterr().err
    assert "pyinfer: GPU offload plan: hybrid" in err and "budget 512.00 MiB" in err
    assert f"layer   0: attn GPU, pred GPU, norm GPU, kv GPU, hot {spec.n_ff // 4}/{spec.n_ff}" in err
    assert "the model runs on the CPU" in err
    # disable_gpu_index: no neurons placed by the index
    with pytest.warns(RuntimeWarning, match="does not run on the GPU yet"):
        Llama(model, vram_budget=0.5, disable_gpu_index=True, n_ctx=64, verbose=True).close()
    assert f"hot 0/{spec.n_ff}" in capsys.readouterr().err
    with pytest.warns(RuntimeWarning, match="does not run on the GPU yet"):
        Llama(model, n_gpu_layers=-1, n_ctx=64, verbose=True).close()
    assert f"n_gpu_layers: layers 0..{spec.n_layer - 1}" in capsys.readouterr().err


def test_llama_generates_a_missing_gpu_index(tmp_path, monkeypatch):
    """Llama(vram_budget=...) on a sparse model without <model>.generated.gpuidx solves the
    placement and writes the file (device answers stubbed); reset_gpu_index rewrites it."""
    import os
    import pyinfer.offload as offload
    from pyinfer.offload.gpu_index import gpu_index_path, read_gpu_index
    model = str(write_tiny_chat_model(tmp_path / "m.gguf", powerinfer=True, seed=3))
    monkeypatch.setattr(offload, "require_cuda", lambda what: None)
    monkeypatch.setattr(offload, "mem_info", lambda device=0: (GIB, 2 * GIB))
    path = gpu_index_path(model)
    with pytest.warns(RuntimeWarning, match="does not run on the GPU yet"):
        Llama(model, vram_budget=0.5, n_ctx=64, verbose=False).close()
    index = read_gpu_index(path)
    assert 0 < index.vram_capacity <= GIB // 2
    first = os.stat(path).st_mtime_ns
    with pytest.warns(RuntimeWarning, match="does not run on the GPU yet"):
        Llama(model, vram_budget=0.5, n_ctx=64, verbose=False).close()
    assert os.stat(path).st_mtime_ns == first          # reused
    with pytest.warns(RuntimeWarning, match="does not run on the GPU yet"):
        Llama(model, vram_budget=0.5, reset_gpu_index=True, n_ctx=64, verbose=False).close()
    assert os.stat(path).st_mtime_ns != first          # regenerated


# ---- other architectures' tensors (issue 15) ---------------------------------------------

# the planner's role of every tensor a falcon, opt, gpt-neox or gemma3 file holds (by the name
# between "blk.N." and ".weight"/".bias"), written out here as the oracle
LAYER_KINDS = {
    "attn_norm": "norm", "attn_norm_2": "norm", "ffn_norm": "norm", "attn_q_norm": "norm",
    "attn_k_norm": "norm", "post_attention_norm": "norm", "post_ffw_norm": "norm",
    "attn_q": "attention", "attn_k": "attention", "attn_v": "attention", "attn_qkv": "attention",
    "attn_output": "attention", "fc1": "predictor", "fc2": "predictor",
    "ffn_gate": "ffn", "ffn_up": "ffn", "ffn_down": "ffn", "ffn_down_t": "ffn",
}
GLOBAL_KINDS = {"token_embd.weight": "embedding", "position_embd.weight": "embedding",
                "output_norm.weight": "norm", "output_norm.bias": "norm", "output.weight": "output"}
ARCH_FILES = ("falcon", "falcon40b", "gptneox", "gemma3", "opt", "falcon-pwri", "opt-pwri")


@pytest.fixture(scope="module")
def arch_files(tmp_path_factory):
    from pyinfer.convert.hf_to_gguf import ConvertOptions, convert
    from reference.pwri_arch import DATA, write_pwri
    d = tmp_path_factory.mktemp("arch_specs")
    out = {n: f"{DATA}/{n}/llama_cpp.f32.gguf" for n in ("falcon", "falcon40b", "gptneox", "gemma3")}
    out["opt"] = str(d / "opt.gguf")          # llama.cpp has no OPT: ours
    convert(f"{DATA}/opt/hf", ConvertOptions(out["opt"], "f32", progress=False))
    for n in ("falcon", "opt"):
        out[n + "-pwri"] = write_pwri(n, str(d))
    return out


@pytest.mark.parametrize("name", ARCH_FILES)
def test_spec_counts_every_tensor_once(arch_files, name):
    """Each tensor of the file is in the spec once, with its role (norms are norms, not
    attention or FFN weights), the tied output once more as the GPU's output matrix; one
    neuron's rows times n_ff are the FFN matrices' bytes; a whole-model layer plan places
    every tensor but the lookups exactly once."""
    spec, f = _spec(arch_files[name])
    from_file = [t for t in spec.tensors if t.name in f.tensors]
    assert sorted(t.name for t in from_file) == sorted(f.tensors)
    assert sum(t.nbytes for t in from_file) == f.nbytes
    tied = "output.weight" not in f.tensors
    assert [t.name for t in spec.tensors if t.name not in f.tensors] == \
        (["token_embd.weight (as output)"] if tied else [])
    for t in from_file:
        if t.layer is None:
            assert t.kind == GLOBAL_KINDS[t.name], t.name
        else:
            base = t.name.split(".", 2)[2].rsplit(".", 1)[0]
            assert (t.kind, t.layer) == (LAYER_KINDS[base], int(t.name.split(".")[1])), t.name
    kinds = {t.kind for t in from_file}
    assert {"norm", "attention", "ffn", "embedding"} <= kinds
    assert ("predictor" in kinds) == name.endswith("-pwri") == spec.sparse
    for i in range(spec.n_layer):
        mats = [f.get(f"blk.{i}.{m}.weight") for m in ("ffn_gate", "ffn_up", "ffn_down", "ffn_down_t")]
        rows = spec.ffn_rows[i]
        assert spec.n_ff * (rows.gate + rows.up + rows.down) == sum(m.nbytes for m in mats if m is not None)
        assert rows.gate == 0 if f.get(f"blk.{i}.ffn_gate.weight") is None else rows.gate > 0
    plan = plan_layers(spec, 64 * GIB, -1)
    placed = [it.name for it in plan.items if it.on_gpu and it.kind != "kv"]
    want = [t.name for t in spec.tensors if t.kind != "embedding"]
    assert sorted(placed) == sorted(want)
    assert sum(it.nbytes for it in plan.items if it.on_gpu and it.kind != "kv") == \
        sum(up(t.nbytes, A) for t in spec.tensors if t.kind != "embedding")
