"""Mixture-of-experts architectures against independent oracles (issue 17).

The fixtures (tests/data/moe/<name>/, written by scripts/make_moe_fixtures.py) are tiny random
Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE models (8 experts, top-2 or top-4) built with
transformers: the checkpoint (hf/, one tensor per expert), transformers' float32 logits at every
position of 24 tokens and its routing (per layer and token the chosen experts), the checkpoint
converted by llama.cpp's own convert_hf_to_gguf.py (F32, experts stacked), and the real llama.cpp's
logits and greedy continuation on that file. Two fixtures flip norm_topk_prob against what
llama.cpp's graph hard-codes (qwen2moe_top4_norm, qwen3moe_top4_nonorm) and two give two experts
identical router rows (mixtral_tie, qwen3moe_tie: bit-equal scores, tied inside the top-k and at
its boundary). transformers ran with a stable top-k (ties to the lower expert id, the rule of
our top_k op and of llama.cpp's CPU argsort on 8 experts; torch.topk's own tie order is
arbitrary).

Checked here: our converter writes llama.cpp's tensors (bit-equal) and keys; pyinfer's logits
on both files within 1e-4 (absolute) of transformers with an F32 KV cache (except llama.cpp's
file of a norm-flipped fixture), and on llama.cpp's file with llama.cpp's F16 cache llama.cpp's
recorded logits (to 1e-5); the routing equals transformers'; greedy tokens equal llama.cpp's
and transformers'; and the MoE FFN builder against a numpy reference on hand-made routers
(norm, scale, sigmoid gating, shared expert, ties). Opt-in (llama_cpp marker): the real
llama.cpp's greedy tokens, and its logits on quantized experts (Q8_0, Q4_0, Q4_K_M).
"""
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from pyinfer.config import ContextSettings, ModelConfig, UnsupportedModelError
from pyinfer.convert.hf_config import ConfigError, load_params
from pyinfer.convert.hf_to_gguf import ConvertError, ConvertOptions, convert
from pyinfer.engine import Engine
from engine_util import f32_conversions
from pyinfer.gguf_model import GGUFFile
from pyinfer.model.moe import build_moe_ffn, routing_ids
from pyinfer.tensor import Context, GGMLType, Graph, ThreadPool

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "moe")
NAMES = sorted(n for n in os.listdir(DATA) if os.path.isfile(os.path.join(DATA, n, "oracle.json")))
BUDGET = 1e-3
# llama.cpp's graph fixes the top-k normalisation per architecture; these fixtures have the
# other one, which our converter writes as expert_weights_norm (llama.cpp's file cannot say it)
NORM_FLIPPED = {"qwen2moe_top4_norm": True, "qwen3moe_top4_nonorm": False}
EXTRA_KEYS = {n: {"expert_weights_norm"} for n in NORM_FLIPPED}
TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                  "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")


def oracle(name):
    with open(os.path.join(DATA, name, "oracle.json")) as f:
        return json.load(f)


def hf_dir(name):
    return os.path.join(DATA, name, "hf")


def lcpp_path(name):
    return os.path.join(DATA, name, oracle(name)["llama_cpp"]["file"])


def _norm_err(got, ref):
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """name -> our F32 conversion of the fixture's checkpoint (converted once per module)."""
    return f32_conversions(tmp_path_factory.mktemp("moe"), hf_dir)


# ---- the converter against llama.cpp's --------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_converted_like_llama_cpp(name, ours):
    """The same tensors (names, 3-D expert shapes, values bit-equal: q/k permuted for Mixtral's
    llama layout, experts stacked in expert order), the same keys plus the documented ones."""
    a, b = GGUFFile(ours(name)), GGUFFile(lcpp_path(name))
    arch = b.metadata["general.architecture"]
    assert a.metadata["general.architecture"] == arch == {"mixtral": "llama", "qwen2moe": "qwen2moe",
                                                          "qwen3moe": "qwen3moe", "olmoe": "olmoe"}[name.split("_")[0]]
    assert set(a.tensors) == set(b.tensors)
    for t, ref in b.tensors.items():
        assert a.tensors[t].ne == ref.ne and a.tensors[t].type == ref.type, t
        np.testing.assert_array_equal(np.asarray(a.tensors[t].data), np.asarray(ref.data), err_msg=t)
    assert b.tensors["blk.0.ffn_gate_exps.weight"].ne[2] == 8
    ka = {k[len(arch) + 1:]: v for k, v in a.metadata.items() if k.startswith(arch + ".")}
    kb = {k[len(arch) + 1:]: v for k, v in b.metadata.items() if k.startswith(arch + ".")}
    assert set(ka) - set(kb) == EXTRA_KEYS.get(name, set()), "undocumented extra keys"
    assert set(kb) <= set(ka), f"keys llama.cpp writes and we do not: {set(kb) - set(ka)}"
    for k, v in kb.items():
        assert ka[k] == pytest.approx(v, rel=1e-7) if isinstance(v, float) else ka[k] == v, k
    if name in NORM_FLIPPED:
        assert ka["expert_weights_norm"] is NORM_FLIPPED[name]
    for k in TOKENIZER_KEYS:
        assert a.metadata.get(k) == b.metadata.get(k), k


@pytest.mark.parametrize("name", ["qwen2moe", "qwen3moe"])
def test_converts_stacked_expert_checkpoints(name, tmp_path):
    """A checkpoint holding each layer's experts stacked (transformers 5's in-memory layout:
    mlp.experts.gate_up_proj [X, 2G, E], mlp.experts.down_proj [X, E, G]), as llama.cpp's
    converter also reads for Qwen MoE models, converts to llama.cpp's file of the per-expert one."""
    from reference.tiny_hf import read_safetensors, write_safetensors
    d = tmp_path / "hf"
    shutil.copytree(hf_dir(name), d)
    w = read_safetensors(str(d / "model.safetensors"))
    n_expert, n_layer = oracle(name)["n_expert"], len(oracle(name)["routing"])
    for i in range(n_layer):
        p = f"model.layers.{i}.mlp.experts."
        pop = {k: [w.pop(f"{p}{x}.{k}.weight") for x in range(n_expert)] for k in ("gate_proj", "up_proj", "down_proj")}
        w[p + "gate_up_proj"] = np.stack([np.concatenate([g, u]) for g, u in zip(pop["gate_proj"], pop["up_proj"])])
        w[p + ("down_proj" if i else "down_proj.weight")] = np.stack(pop["down_proj"])
    write_safetensors(str(d / "model.safetensors"), w)
    out = str(tmp_path / "s.gguf")
    convert(str(d), ConvertOptions(out, "f32", progress=False))
    a, b = GGUFFile(out), GGUFFile(lcpp_path(name))
    assert set(a.tensors) == set(b.tensors)
    for t, ref in b.tensors.items():
        assert a.tensors[t].ne == ref.ne, t
        np.testing.assert_array_equal(np.asarray(a.tensors[t].data), np.asarray(ref.data), err_msg=t)
    w["model.layers.0.mlp.experts.gate_up_proj"] = w["model.layers.0.mlp.experts.gate_up_proj"][:, 1:]
    write_safetensors(str(d / "model.safetensors"), w)
    with pytest.raises(ConvertError, match="gate_up_proj"):
        convert(str(d), ConvertOptions(out, "f32", progress=False))


def test_f16_conversion_keeps_routers_f32(tmp_path):
    """--outtype f16: the experts F16, the routers (ffn_gate_inp, ffn_gate_inp_shexp) and norms
    F32, as llama.cpp's converter types them; the file runs and routes as the F32 one."""
    out = str(tmp_path / "q.gguf")
    convert(hf_dir("qwen2moe"), ConvertOptions(out, "f16", progress=False))
    f = GGUFFile(out)
    types = {n: t.type for n, t in f.tensors.items()}
    assert types["blk.0.ffn_gate_exps.weight"] == GGMLType.F16
    assert types["blk.0.ffn_down_shexp.weight"] == GGMLType.F16
    assert types["blk.0.ffn_gate_inp.weight"] == GGMLType.F32
    assert types["blk.0.ffn_gate_inp_shexp.weight"] == GGMLType.F32
    o = oracle("qwen2moe")
    logits, _ = _run(out, o["tokens"], 0)
    assert _norm_err(logits, np.load(os.path.join(DATA, "qwen2moe", "logits.npy"))) < 2e-2


@pytest.mark.parametrize("name", ["mixtral", "qwen2moe", "olmoe"])
def test_q4_k_m_types_like_llama_cpp(name, tmp_path):
    """Q4_K_M (from our converter, and re-quantizing llama.cpp's F32 file) gives every tensor
    the type llama.cpp's own quantize gave it (recorded): an 8-expert model's attn_k and attn_v
    Q8_0 and attn_output Q5_K (Q5_1 on these 32-wide rows), the routers F32."""
    want = oracle(name)["llama_cpp"]["q4_k_m_types"]
    from pyinfer.convert.quantize import quantize_file
    a, b = str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf")
    convert(hf_dir(name), ConvertOptions(a, "q4_k_m", progress=False))
    quantize_file(lcpp_path(name), b, "q4_k_m", progress=False)
    for path in (a, b):
        assert {n: t.type.name for n, t in GGUFFile(path).tensors.items()} == want
    assert want["blk.0.attn_k.weight"] == "Q8_0" and want["blk.0.ffn_gate_inp.weight"] == "F32"


def test_shared_expert_gate_stored_1d(tmp_path):
    """llama.cpp's converter writes ffn_gate_inp_shexp as {n_embd, 1}, its quantizer as {n_embd}
    (ggml drops trailing 1s): both load, and run the same; another shape is refused."""
    from gguf_raw import parse, serialize
    from pyinfer.gguf_model import ModelLoadError
    g = parse(open(lcpp_path("qwen2moe"), "rb").read())
    for i in range(2):
        t = g.tensor(f"blk.{i}.ffn_gate_inp_shexp.weight")
        assert t.dims == [32, 1]
        t.dims = [32]
    path = tmp_path / "1d.gguf"
    path.write_bytes(serialize(g)[0])
    o = oracle("qwen2moe")
    logits, _ = _run(str(path), o["tokens"], 0)
    np.testing.assert_allclose(logits, np.load(os.path.join(DATA, "qwen2moe", "llama_cpp_logits.npy")), rtol=0,
                               atol=1e-5)
    g.tensor("blk.0.ffn_gate_inp_shexp.weight").dims = [16, 2]
    path.write_bytes(serialize(g)[0])
    with pytest.raises(ModelLoadError, match="ffn_gate_inp_shexp"):
        Engine(str(path), ContextSettings(n_ctx=64))


# ---- pyinfer against transformers and llama.cpp -----------------------------------------------

def _run(path, tokens, n_greedy, kv_type="f16"):
    """(logits at every position, (routing per layer as [T, k] ids, greedy continuation))."""
    e = Engine(path, ContextSettings(n_ctx=64, kv_type=kv_type))
    try:
        logits = e.decode(tokens, logits_all=True)
        routes = e.routing()          # the prompt's forward (one n_batch chunk)
        out, last = [], logits[-1]
        for _ in range(n_greedy):
            out.append(int(np.argmax(last)))
            last = e.decode([out[-1]])
    finally:
        e.close()
    return logits, (routes, out)


@pytest.mark.parametrize("which", ["ours", "llama.cpp"])
@pytest.mark.parametrize("name", NAMES)
def test_logits_routing_and_greedy(name, which, ours):
    """With an F32 KV cache, logits at every position within 1e-4 (absolute; measured 1.5e-6) of
    transformers' and the greedy tokens transformers'; every layer's routing transformers' (ties
    to the lower id). On llama.cpp's file with llama.cpp's F16 cache, logits llama.cpp's (1e-5:
    bit-equal but for qwen2moe's shared-expert sigmoid, which llama.cpp computes as silu(x)/x)
    and greedy tokens llama.cpp's; a norm-flipped fixture's llama.cpp file then differs from
    transformers, as llama.cpp does."""
    o = oracle(name)
    path = ours(name) if which == "ours" else lcpp_path(name)
    ref = np.load(os.path.join(DATA, name, "logits.npy"))
    logits, (routes, greedy) = _run(path, o["tokens"], len(o["transformers"]["greedy"]), "f32")
    if which == "llama.cpp" and name in NORM_FLIPPED:
        assert _norm_err(logits, ref) > 0.05        # llama.cpp's file cannot state the norm
    else:
        assert np.abs(logits - ref).max() < 1e-4
        assert greedy == o["transformers"]["greedy"]
    if which == "llama.cpp":
        lc_logits, (_, lc_greedy) = _run(path, o["tokens"], len(o["llama_cpp"]["greedy"]))
        np.testing.assert_allclose(lc_logits, np.load(os.path.join(DATA, name, "llama_cpp_logits.npy")),
                                   rtol=0, atol=1e-5)
        assert lc_greedy == o["llama_cpp"]["greedy"]
    assert sorted(routes) == list(range(len(o["routing"])))
    # on llama.cpp's file of a norm-flipped fixture only layer 0 sees transformers' hidden states
    layers = o["routing"][:1] if which == "llama.cpp" and name in NORM_FLIPPED else o["routing"]
    for layer, want in enumerate(layers):
        np.testing.assert_array_equal(routes[layer], np.array(want, dtype=np.int32), err_msg=f"layer {layer}")


@pytest.mark.parametrize("name", ["qwen2moe", "mixtral_tie"])
def test_prompt_in_chunks_is_bit_identical(name):
    """The prompt in batches of 5 tokens gives the logits of one 24-token batch bit for bit (the
    routing and the experts' products of a token do not depend on the tokens beside it)."""
    o = oracle(name)
    whole, _ = _run(lcpp_path(name), o["tokens"], 0)
    e = Engine(lcpp_path(name), ContextSettings(n_ctx=64, n_batch=5))
    try:
        chunked = e.decode(o["tokens"], logits_all=True)
    finally:
        e.close()
    np.testing.assert_array_equal(chunked, whole)


# ---- the fixtures themselves -------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_fixture_is_a_usable_oracle(name):
    """Not degenerate; llama.cpp agrees with transformers on its file except where its graph
    hard-codes the other norm; the tie fixtures really tie inside the top-k and at its boundary."""
    o = oracle(name)
    ref = np.load(os.path.join(DATA, name, "logits.npy"))
    assert ref.shape[0] == len(o["tokens"]) and ref.dtype == np.float32
    assert len(set(np.argmax(ref, axis=1).tolist())) >= 4 and 0.3 < ref.std() < 30
    lc = o["llama_cpp"]
    assert lc["loads"]
    if name in NORM_FLIPPED:
        assert o["norm_topk_prob"] is NORM_FLIPPED[name]
        assert lc["logits_err_vs_transformers"] > 0.05 and not lc["greedy_equals_transformers"]
    else:
        assert lc["logits_err_vs_transformers"] < BUDGET and lc["greedy_equals_transformers"]
    if name.endswith("_tie"):
        assert o["tie"]["inside"] >= 2 and o["tie"]["boundary"] >= 2
        for layer in o["routing"]:
            for ids in layer:
                a, b = o["tie"]["experts"]
                assert not (b in ids and a not in ids)       # a boundary tie keeps the lower id
    k = o["n_expert_used"]
    assert all(len(set(ids)) == k for layer in o["routing"] for ids in layer)


def test_fixtures_are_small():
    for r, _, fs in os.walk(DATA):
        for f in fs:
            assert os.path.getsize(os.path.join(r, f)) < 300 * 1024, os.path.join(r, f)


def _stable_topk():
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(DATA), "..", "..", "scripts"))
    from make_moe_fixtures import stable_topk
    return stable_topk


@pytest.mark.parametrize("name", NAMES)
def test_recorded_logits_are_transformers(name):
    """Opt-in by installation (torch and transformers): the recorded logits are what
    transformers computes from the committed checkpoint (with the stable top-k)."""
    torch = pytest.importorskip("torch", reason="needs torch (the transformers oracle)")
    transformers = pytest.importorskip("transformers", reason="needs transformers (the oracle)")
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir(name), attn_implementation="eager").eval()
    with torch.no_grad(), _stable_topk()():
        logits = model(torch.tensor([oracle(name)["tokens"]])).logits[0].float().numpy()
    assert _norm_err(logits, np.load(os.path.join(DATA, name, "logits.npy"))) < 1e-5


@pytest.mark.llama_cpp
@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_k_m"])
@pytest.mark.parametrize("name", ["mixtral", "qwen2moe", "qwen3moe", "olmoe"])
def test_quantized_experts_like_llama_cpp(name, qtype, tmp_path):
    """Quantized experts (mul_mat_id over Q8_0, Q4_0, and Q4_K_M's mix of Q5_0/F16 on these tiny
    rows): pyinfer's logits the real llama.cpp's on the same file (measured: bit-equal)."""
    from conftest import real_llama_cpp
    from pyinfer.convert.quantize import quantize_file
    llama_cpp = real_llama_cpp()
    o = oracle(name)
    path = str(tmp_path / f"{name}.{qtype}.gguf")
    quantize_file(lcpp_path(name), path, qtype, progress=False)
    logits, _ = _run(path, o["tokens"], 0)
    llm = llama_cpp.Llama(path, n_ctx=64, n_batch=64, logits_all=True, verbose=False)
    llm.eval(o["tokens"])
    want = np.array(llm.scores[:len(o["tokens"])], dtype=np.float32)
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-5)


@pytest.mark.llama_cpp
@pytest.mark.parametrize("name", NAMES)
def test_recorded_llama_cpp_greedy(name):
    """The real llama.cpp's greedy tokens on its file are the recorded ones."""
    from conftest import real_llama_cpp
    llama_cpp = real_llama_cpp()
    o = oracle(name)
    llm = llama_cpp.Llama(lcpp_path(name), n_ctx=64, n_batch=64, logits_all=True, verbose=False)
    llm.eval(o["tokens"])
    out = []
    for _ in range(len(o["llama_cpp"]["greedy"])):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    assert out == o["llama_cpp"]["greedy"]


# ---- the MoE FFN builder against numpy ---------------------------------------------------------

E, F, X, T = 32, 16, 8, 4


def _silu(x):
    return x / (1 + np.exp(-x))


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def reference_moe(h, w, k, norm, scale, gating):
    """The MoE FFN in numpy: h [T, E]; w the numpy weights (torch layouts)."""
    logits = h @ w["router"].T
    if gating == 2:
        probs = _sigmoid(logits)
    else:
        z = np.exp(logits - logits.max(1, keepdims=True))
        probs = z / z.sum(1, keepdims=True)
    out, chosen = np.zeros_like(h), []
    for t in range(len(h)):
        ids = np.argsort(-probs[t], kind="stable")[:k]
        chosen.append(ids)
        wt = probs[t, ids]
        if norm:
            wt = wt / wt.sum()
        wt = wt * scale
        for u, x in enumerate(ids):
            a = _silu(w["gate"][x] @ h[t]) * (w["up"][x] @ h[t])
            out[t] += wt[u] * (w["down"][x] @ a)
    if "sh_gate_inp" in w:
        g = _sigmoid(h @ w["sh_gate_inp"].T)                       # [T, 1]
        a = _silu(h @ w["sh_gate"].T) * (h @ w["sh_up"].T)
        out += g * (a @ w["sh_down"].T)
    return out, np.array(chosen, dtype=np.int32)


def _weights(rng, router, shared):
    w = _f32({"router": router,
         "gate": rng.standard_normal((X, F, E)).astype(np.float32) / np.sqrt(E),
         "up": rng.standard_normal((X, F, E)).astype(np.float32) / np.sqrt(E),
         "down": rng.standard_normal((X, E, F)).astype(np.float32) / np.sqrt(F)})
    if shared:
        w.update(sh_gate_inp=rng.standard_normal((1, E)).astype(np.float32) / np.sqrt(E),
                 sh_gate=rng.standard_normal((2 * F, E)).astype(np.float32) / np.sqrt(E),
                 sh_up=rng.standard_normal((2 * F, E)).astype(np.float32) / np.sqrt(E),
                 sh_down=rng.standard_normal((E, 2 * F)).astype(np.float32) / np.sqrt(2 * F))
    return _f32(w)


def _f32(w):
    return {n: np.asarray(a, dtype=np.float32) for n, a in w.items()}


def run_builder(h, w, k, norm=False, scale=0.0, gating=0):
    cfg = ModelConfig(arch="qwen2moe", n_vocab=16, n_ctx_train=64, n_embd=E, n_layer=1, n_ff=2 * F, n_head=4,
                      n_expert=X, n_expert_used=k, n_ff_exp=F, expert_weights_norm=norm,
                      expert_weights_scale=scale, expert_gating_func=gating)
    with Context(16 << 20) as ctx, ThreadPool(2) as pool:
        t = {n: ctx.from_numpy(np.ascontiguousarray(a)) for n, a in w.items()}
        layer = SimpleNamespace(index=3, ffn_gate_inp=t["router"], ffn_gate_exps=t["gate"], ffn_up_exps=t["up"],
                                ffn_down_exps=t["down"], ffn_gate_inp_shexp=t.get("sh_gate_inp"),
                                ffn_gate_shexp=t.get("sh_gate"), ffn_up_shexp=t.get("sh_up"),
                                ffn_down_shexp=t.get("sh_down"))
        out = build_moe_ffn(ctx, cfg, layer, ctx.from_numpy(h))
        g = Graph(ctx).build(out).plan(2)
        g.compute(pool)
        ids = routing_ids(g)
        assert list(ids) == [3]
        return out.numpy().copy(), ids[3].copy()


@pytest.mark.parametrize("k,norm,scale,gating,shared", [
    (2, False, 0.0, 0, False), (2, True, 0.0, 0, False), (4, True, 0.0, 0, True), (4, False, 2.5, 0, True),
    (3, True, 0.5, 2, False), (1, True, 0.0, 0, True), (8, False, 0.0, 2, False)])
def test_builder_matches_numpy(k, norm, scale, gating, shared):
    """Random router and experts: top-k by descending probability, weights normalised or not,
    scaled, softmax or sigmoid router, with and without the sigmoid-gated shared expert."""
    rng = np.random.default_rng(k * 7 + gating)
    h = rng.standard_normal((T, E)).astype(np.float32)
    w = _weights(rng, rng.standard_normal((X, E)).astype(np.float32) / np.sqrt(E), shared)
    got, ids = run_builder(h, w, k, norm, scale, gating)
    want, want_ids = reference_moe(h.astype(np.float64), {n: a.astype(np.float64) for n, a in w.items()},
                                   k, norm, scale or 1.0, gating)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())


def test_builder_norm_changes_the_output():
    """The norm flag is not a no-op (top-2 softmax weights sum to well under 1 over 8 experts)."""
    rng = np.random.default_rng(5)
    h = rng.standard_normal((T, E)).astype(np.float32)
    w = _weights(rng, rng.standard_normal((X, E)).astype(np.float32) / np.sqrt(E), False)
    a, _ = run_builder(h, w, 2, norm=False)
    b, _ = run_builder(h, w, 2, norm=True)
    assert np.abs(a - b).max() > 0.1 * np.abs(a).max()


def test_builder_exact_ties():
    """Router logits chosen exactly (one-hot hidden states read one router column each):
    experts 2 and 5 tie at the top (both run, each with half of the pair's weight), tie at the
    top-2 boundary behind expert 0 (expert 2 runs, not 5), or all eight tie (experts 0, 1)."""
    cols = np.array([[0, 1, 3, 0.5, 0, 3, 0, 0],          # token 0: 2 and 5 inside the top-2
                     [4, 1, 2, 0, 0, 2, 0, 0],            # token 1: 0, then 2 = 5 at the boundary
                     [1, 1, 1, 1, 1, 1, 1, 1],            # token 2: all tied
                     [0, 0, 0, 0, 0, 0, 0, 5]], np.float32)   # token 3: 7, then six tied at 0
    router = np.zeros((X, E), np.float32)
    router[:, :T] = cols.T
    h = np.zeros((T, E), np.float32)
    h[np.arange(T), np.arange(T)] = 1.0
    rng = np.random.default_rng(11)
    w = _weights(rng, router, False)
    for norm in (False, True):
        got, ids = run_builder(h, w, 2, norm)
        np.testing.assert_array_equal(ids, [[2, 5], [0, 2], [0, 1], [7, 0]])
        want, want_ids = reference_moe(h.astype(np.float64), {n: a.astype(np.float64) for n, a in w.items()},
                                       2, norm, 1.0, 0)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())


# ---- hyper-parameters and refusals -------------------------------------------------------------

def _md(arch, **extra):
    md = {"general.architecture": arch, f"{arch}.attention.head_count": 4, f"{arch}.embedding_length": 32,
          f"{arch}.block_count": 2, f"{arch}.feed_forward_length": 48}
    md.update({f"{arch}.{k}": v for k, v in extra.items()})
    return md


def test_config_reads_the_expert_keys():
    c = ModelConfig.from_metadata(_md("qwen2moe", expert_count=8, expert_used_count=2, expert_feed_forward_length=16,
                                      expert_shared_feed_forward_length=32), n_vocab=64)
    assert (c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_ff_shexp) == (8, 2, 16, 32)
    assert c.expert_weights_norm is False and c.expert_gating_func == 0
    # llama.cpp's defaults: qwen experts n_ff / n_expert_used, shared n_ff; llama/olmoe experts n_ff
    c = ModelConfig.from_metadata(_md("qwen3moe", expert_count=8, expert_used_count=4), n_vocab=64)
    assert (c.n_ff_exp, c.expert_weights_norm) == (12, True)
    c = ModelConfig.from_metadata(_md("llama", expert_count=8, expert_used_count=2), n_vocab=64)
    assert (c.n_ff_exp, c.expert_weights_norm) == (48, True)
    c = ModelConfig.from_metadata(_md("olmoe", expert_count=8, expert_used_count=2, expert_weights_norm=True,
                                      expert_weights_scale=2.0, expert_gating_func=2), n_vocab=64)
    assert (c.n_ff_exp, c.expert_weights_norm, c.expert_weights_scale, c.expert_gating_func) == (48, True, 2.0, 2)
    assert ModelConfig.from_metadata(_md("llama"), n_vocab=64).n_expert == 0


@pytest.mark.parametrize("arch,extra,why", [
    ("qwen2moe", {}, "expert_count"),
    ("olmoe", {"expert_count": 0}, "expert_count"),
    ("qwen3moe", {"expert_count": 8, "expert_used_count": 9}, "n_expert_used"),
    ("qwen3moe", {"expert_count": 8}, "n_expert_used"),
    ("qwen3moe", {"expert_count": 8, "expert_used_count": 2, "expert_gating_func": 3}, "expert_gating_func"),
    ("qwen3moe", {"expert_count": 8, "expert_used_count": 2, "expert_weights_scale": -1.0}, "expert_weights_scale"),
    ("qwen3moe", {"expert_count": 8, "expert_used_count": 2, "expert_weights_norm": 1}, "boolean"),
    ("gemma3", {"expert_count": 8, "expert_used_count": 2}, "mixture of experts"),
    ("llama", {"expert_used_count": 2}, "n_expert_used"),
])
def test_config_refuses(arch, extra, why):
    with pytest.raises(UnsupportedModelError, match=why):
        ModelConfig.from_metadata(_md(arch, **extra), n_vocab=64)


def test_mixtral_without_experts_is_a_dense_llama():
    """A llama file without expert_count loads the dense FFN (tensor set unchanged)."""
    from pyinfer.model.arch import LLAMA_TENSORS, get_arch
    spec = get_arch("llama")
    assert spec.layer_tensors(0) == (spec.tensors, spec.optional)
    req, _ = spec.layer_tensors(8)
    assert req == (LLAMA_TENSORS - {"w_gate", "w_up", "w_down"}) | {"ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps",
                                                                   "ffn_down_exps"}


def _edited(tmp_path, name, edit_cfg=None, drop=None):
    d = tmp_path / "hf"
    shutil.copytree(hf_dir(name), d)
    if edit_cfg:
        cfg = json.loads((d / "config.json").read_text())
        edit_cfg(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
    if drop:
        from reference.tiny_hf import read_safetensors, write_safetensors
        w = read_safetensors(str(d / "model.safetensors"))
        del w[drop]
        write_safetensors(str(d / "model.safetensors"), w)
    return str(d)


@pytest.mark.parametrize("name,edit,why", [
    ("qwen2moe", lambda c: c.update(mlp_only_layers=[1]), "mlp_only_layers"),
    ("qwen3moe", lambda c: c.update(decoder_sparse_step=2), "decoder_sparse_step"),
    ("olmoe", lambda c: c.update(clip_qkv=8.0), "clip_qkv"),
    ("mixtral", lambda c: c.update(num_experts_per_tok=9), "num_experts_per_tok"),
    ("mixtral", lambda c: c.pop("num_local_experts"), "num_local_experts"),
])
def test_converter_refuses_configs(tmp_path, name, edit, why):
    with pytest.raises(ConfigError, match=why):
        load_params(_edited(tmp_path, name, edit))


def test_converter_refuses_missing_and_extra_experts(tmp_path):
    d = _edited(tmp_path, "mixtral", drop="model.layers.1.block_sparse_moe.experts.6.w3.weight")
    with pytest.raises(ConvertError, match="experts.6.w3"):
        convert(d, ConvertOptions(str(tmp_path / "a.gguf"), "f32", progress=False))
    six = lambda c: c.update({k: 6 for k in ("num_local_experts", "num_experts") if k in c})  # noqa: E731
    d2 = _edited(tmp_path / "b", "qwen3moe", six)
    with pytest.raises(ConvertError, match="expert 6"):
        convert(d2, ConvertOptions(str(tmp_path / "b.gguf"), "f32", progress=False))
