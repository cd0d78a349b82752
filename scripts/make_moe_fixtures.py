#!/usr/bin/env python3
"""Independent oracles for the mixture-of-experts architectures (issue 17).

The same recipe as scripts/make_arch_oracles.py (whose helpers this reuses), for
tiny randomly initialised Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE models (8
experts, hidden 32, two layers): for each fixture of ``FIXTURES`` it writes
``tests/data/moe/<name>/``:

* ``hf/``: the checkpoint as transformers' ``save_pretrained`` writes it (one
  tensor per expert, as real checkpoints have them) and a tiny tokenizer;
* ``logits.npy``: transformers' float32 logits at every position of the
  fixture's 24 tokens;
* ``llama_cpp.f32.gguf``: the checkpoint converted by llama.cpp's own
  ``convert_hf_to_gguf.py`` (F32, experts stacked into 3-D tensors);
* ``llama_cpp_logits.npy``: real llama.cpp's logits on that file (every position);
* ``oracle.json``: tokens, transformers' and llama.cpp's greedy continuations, the
  tensor types of llama.cpp's own Q4_K_M quantization of its file,
  llama.cpp's logits error against transformers, transformers' routing (per layer
  and token the chosen experts, by descending probability) and the routing facts
  the fixture was made to exercise (how often a tied pair of experts sits inside
  the top-k or straddles its boundary).

Routing ties: ``torch.topk`` breaks exact ties in no documented order (on these
models it picks the higher of two tied experts about as often as the lower), so
transformers runs here with a stable top-k (``stable_topk``: by descending
probability, equal ones in expert order, lower id first), the rule of our top_k op and
what llama.cpp's CPU argsort (std::sort of 8 ids: an insertion sort, stable) does.
Without ties it picks exactly what torch.topk picks.

Fixtures beyond one per architecture exercise the usual sources of error:
top-4 routing, top-k normalisation switched against the architecture's default
(``norm_topk_prob``: llama.cpp's graphs hard-code it per architecture, so its
files of those models differ from transformers, and the record says by how
much), and exact routing ties (two experts with identical router rows in every
layer, so their scores are bit-equal for every token).

Run with a Python that has torch and transformers (the oracle venv)::

    python scripts/make_moe_fixtures.py [--only mixtral,olmoe] \\
        --llama-cpp /path/to/vendor/llama.cpp --llama-cpp-python /path/to/venv/bin/python
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import make_arch_oracles as base  # noqa: E402

ROOT = os.path.dirname(HERE)
OUT_DIR = os.path.join(ROOT, "tests", "data", "moe")
VOCAB = base.VOCAB
N_EXPERT = 8
TIE = (2, 5)            # the experts whose router rows the tie fixtures make identical

COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
              pad_token_id=0, tie_word_embeddings=False, num_experts_per_tok=2)


@dataclass
class Fixture:
    config: str
    model: str
    over: Dict = field(default_factory=dict)
    tie: bool = False               # identical router rows for experts TIE in every layer
    note: str = ""


FIXTURES: Dict[str, Fixture] = {
    "mixtral": Fixture("MixtralConfig", "MixtralForCausalLM",
                       dict(intermediate_size=16, num_local_experts=N_EXPERT, rope_theta=1e6, sliding_window=None),
                       note="llama.cpp writes Mixtral as architecture llama with expert_count 8"),
    "qwen2moe": Fixture("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                        dict(intermediate_size=48, moe_intermediate_size=16, shared_expert_intermediate_size=32,
                             num_experts=N_EXPERT, norm_topk_prob=False, rope_theta=1e6),
                        note="shared expert with a sigmoid gate; top-k weights not normalised"),
    "qwen2moe_top4_norm": Fixture("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                                  dict(intermediate_size=48, moe_intermediate_size=16,
                                       shared_expert_intermediate_size=32, num_experts=N_EXPERT,
                                       num_experts_per_tok=4, norm_topk_prob=True, rope_theta=1e6),
                                  note="top-4 with norm_topk_prob true: llama.cpp's qwen2moe graph never "
                                       "normalises, so its file runs unnormalised (its error is recorded); "
                                       "our converter writes expert_weights_norm"),
    "qwen3moe": Fixture("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                        dict(intermediate_size=48, moe_intermediate_size=16, num_experts=N_EXPERT, head_dim=8,
                             norm_topk_prob=True, rope_theta=1e6),
                        note="normalised top-k, per-head Q/K norms"),
    "qwen3moe_top4_nonorm": Fixture("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                                    dict(intermediate_size=48, moe_intermediate_size=16, num_experts=N_EXPERT,
                                         head_dim=8, num_experts_per_tok=4, norm_topk_prob=False, rope_theta=1e6),
                                    note="top-4 with norm_topk_prob false: llama.cpp's qwen3moe graph always "
                                         "normalises (its error is recorded); our converter writes "
                                         "expert_weights_norm false"),
    "olmoe": Fixture("OlmoeConfig", "OlmoeForCausalLM",
                     dict(intermediate_size=16, num_experts=N_EXPERT, num_key_value_heads=4, norm_topk_prob=False,
                          rope_theta=10000.0),
                     note="Q/K RMS norms over the whole projections; llama.cpp requires n_head_kv == n_head "
                          "(attn_k_norm {n_embd})"),
    "mixtral_tie": Fixture("MixtralConfig", "MixtralForCausalLM",
                           dict(intermediate_size=16, num_local_experts=N_EXPERT, rope_theta=1e6,
                                sliding_window=None),
                           tie=True, note=f"experts {TIE} have identical router rows (different expert "
                                          "weights): exact score ties inside the top-2 and at its boundary"),
    "qwen3moe_tie": Fixture("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                            dict(intermediate_size=48, moe_intermediate_size=16, num_experts=N_EXPERT, head_dim=8,
                                 norm_topk_prob=True, rope_theta=1e6),
                            tie=True, note=f"experts {TIE} have identical router rows: exact ties"),
}


class stable_topk:
    """Within the block, torch.topk breaks ties by the lower index (a stable descending sort)."""

    def __enter__(self):
        import torch

        self.torch, self.orig = torch, torch.topk

        def topk(x, k, dim=-1, largest=True, sorted=True):
            assert largest, "only the largest"
            values, indices = torch.sort(x, dim=dim, descending=True, stable=True)
            return torch.return_types.topk((values.narrow(dim, 0, k), indices.narrow(dim, 0, k)))
        torch.topk = topk
        return self

    def __exit__(self, *exc):
        self.torch.topk = self.orig


def build_model(spec: Fixture, seed: int):
    import torch
    import transformers

    cfg = dict(COMMON)
    cfg.update(spec.over)
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.pop("rope_theta")}
    config = getattr(transformers, spec.config)(**cfg)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, spec.model)(config).eval()
    rescale(model, seed)
    if spec.tie:
        with torch.no_grad():
            for w in routers(model):
                w[TIE[1]].copy_(w[TIE[0]])
    return model


def rescale(model, seed: int) -> None:
    """make_arch_oracles' scales (matrices N(0, 1/fan_in), embeddings N(0, 1), norms 1 + N(0, 0.01)),
    with stacked expert matrices ([n_expert, rows, fan_in] in transformers 5) as matrices."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 2 and "embed" in pname:
                p.copy_(noise)
            elif p.ndim >= 2:
                p.copy_(noise / p.shape[-1] ** 0.5)
            elif pname.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(1.0 + 0.1 * noise)


def routers(model) -> List:
    """The router weight of every layer ([n_expert, n_embd])."""
    out = []
    for pname, p in model.named_parameters():
        if p.ndim == 2 and p.shape[0] == N_EXPERT and pname.endswith("gate.weight") and "proj" not in pname:
            out.append(p)
    assert len(out) == model.config.num_hidden_layers, [n for n, _ in model.named_parameters()]
    return out


def router_logits(model, tokens: List[int]) -> List[np.ndarray]:
    """Per layer, the router's logits [T, n_expert] (router . post_attention_layernorm output)."""
    import torch

    seen = []
    hooks = [layer.post_attention_layernorm.register_forward_hook(lambda m, i, o: seen.append(o[0].detach()))
             for layer in model.model.layers]
    with torch.no_grad(), stable_topk():      # the earlier layers route as the oracle does
        model(torch.tensor([tokens]))
    for h in hooks:
        h.remove()
    return [(h @ w.detach().T).numpy() for h, w in zip(seen, routers(model))]


def routing(model, tokens: List[int]) -> List[List[List[int]]]:
    """Per layer and token the chosen experts by descending router probability (stable_topk's
    order: ties to the lower id)."""
    import torch

    k = model.config.num_experts_per_tok
    out = []
    for logits in router_logits(model, tokens):
        probs = torch.softmax(torch.tensor(logits), -1).numpy()
        out.append([[int(i) for i in np.argsort(-row, kind="stable")[:k]] for row in probs])
    return out


def routing_facts(model, tokens: List[int]) -> dict:
    """Where the tied experts rank, per layer and token (their router scores are bit-equal):
    both inside the top-k, straddling its boundary (one in, one out), or both outside."""
    import torch

    k = model.config.num_experts_per_tok
    # torch_picks_lower_at_boundary: how often plain torch.topk (not stable_topk) keeps the lower
    # id at a boundary tie
    facts = {"inside": 0, "boundary": 0, "outside": 0, "torch_picks_lower_at_boundary": 0}
    for logits in router_logits(model, tokens):
        for row in logits:
            assert row[TIE[0]] == row[TIE[1]]
            above = int((row > row[TIE[0]]).sum())
            if above + 2 <= k:
                facts["inside"] += 1
            elif above < k:
                facts["boundary"] += 1
                picked = torch.topk(torch.softmax(torch.tensor(row), -1), k).indices.tolist()
                facts["torch_picks_lower_at_boundary"] += int(TIE[0] in picked and TIE[1] not in picked)
            else:
                facts["outside"] += 1
    return facts


_QUANTIZE = """
import ctypes, sys
import llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype, p.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, 1
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""


def llama_cpp_q4_k_m_types(python: str, lcpp: str, gguf_path: str, tmp: str) -> Dict[str, str]:
    """The tensor types of real llama.cpp's Q4_K_M quantization of `gguf_path` (its quantize
    gives 8-expert models more bits in attention)."""
    out = os.path.join(tmp, "q4_k_m.gguf")
    r = subprocess.run([python, "-c", _QUANTIZE, gguf_path, out], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"llama.cpp's quantize failed:\n{r.stderr[-2000:]}")
    sys.path.insert(0, os.path.join(lcpp, "gguf-py"))
    import gguf
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}


def save_checkpoint(model, d: str) -> None:
    model.save_pretrained(d)
    base.write_tokenizer(d, VOCAB, tokenizer_class="GPT2Tokenizer")
    gen = os.path.join(d, "generation_config.json")
    if os.path.exists(gen):
        os.unlink(gen)


def make(name: str, spec: Fixture, args) -> dict:
    import torch
    import transformers

    for seed in range(args.seed, args.seed + 30):
        model = build_model(spec, seed)
        tokens = base.tokens_for(seed)
        with stable_topk():
            logits, greedy, margin = base.transformers_oracle(model, tokens)
        why = base.not_degenerate(logits)
        facts = routing_facts(model, tokens) if spec.tie else None
        if why is None and facts is not None and (facts["inside"] < 2 or facts["boundary"] < 2):
            why = f"ties {facts}"
        if why is None and margin >= base.MIN_MARGIN:
            break
        print(f"  {name}: seed {seed} rejected ({why or f'greedy margin {margin:.3g}'})")
    else:
        raise RuntimeError(f"{name}: no seed gives a usable model")
    d = os.path.join(OUT_DIR, name)
    shutil.rmtree(d, ignore_errors=True)
    hf = os.path.join(d, "hf")
    os.makedirs(hf)
    save_checkpoint(model, hf)
    np.save(os.path.join(d, "logits.npy"), logits.astype(np.float32))
    oracle = {
        "arch": name, "hf_architecture": spec.model, "seed": seed, "tokens": tokens, "note": spec.note,
        "n_expert": N_EXPERT, "n_expert_used": model.config.num_experts_per_tok,
        "norm_topk_prob": getattr(model.config, "norm_topk_prob", None),
        "tie": {"experts": list(TIE), **facts} if facts else None,
        "routing": routing(model, tokens),
        "transformers": {"version": transformers.__version__, "torch": torch.__version__.split("+")[0],
                         "top_k": "stable (ties: lower expert id)", "greedy": greedy,
                         "min_greedy_margin": round(margin, 5), "logit_std": round(float(logits.std()), 4)},
    }
    gg = os.path.join(d, "llama_cpp.f32.gguf")
    base.convert_llama_cpp(args.llama_cpp, hf, gg)
    lc = {"file": "llama_cpp.f32.gguf",
          "converter": f"convert_hf_to_gguf.py of llama-cpp-python's sdist, pre-tokenizer answered "
                       f"'{base.PRE_TOKENIZER}'"}
    if args.llama_cpp_python:
        with tempfile.TemporaryDirectory() as tmp:
            run = base.run_llama_cpp(args.llama_cpp_python, gg, tokens, tmp)
        lc["loads"] = run["loads"]
        if run["loads"]:
            lc["llama_cpp_python"] = run["version"]
            lc["greedy"] = run["greedy"]
            lc["logits_err_vs_transformers"] = round(base.rel_err(run["logits"], logits), 6)
            lc["greedy_equals_transformers"] = run["greedy"] == greedy
            np.save(os.path.join(d, "llama_cpp_logits.npy"), run["logits"].astype(np.float32))
            with tempfile.TemporaryDirectory() as tmp:
                lc["q4_k_m_types"] = llama_cpp_q4_k_m_types(args.llama_cpp_python, args.llama_cpp, gg, tmp)
        else:
            lc["error"] = run["error"]
    oracle["llama_cpp"] = lc
    with open(os.path.join(d, "oracle.json"), "w") as f:
        json.dump(oracle, f, indent=1)
    return oracle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="comma-separated names of FIXTURES (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llama-cpp", required=True, help="llama.cpp's source folder (vendor/llama.cpp)")
    ap.add_argument("--llama-cpp-python", default="", help="a Python with the real llama-cpp-python")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(FIXTURES)
    for n in names:
        if n not in FIXTURES:
            ap.error(f"unknown fixture {n!r} (known: {', '.join(FIXTURES)})")
    for n in names:
        o = make(n, FIXTURES[n], args)
        lc = o["llama_cpp"]
        sizes = {f: os.path.getsize(os.path.join(r, f)) // 1024
                 for r, _, fs in os.walk(os.path.join(OUT_DIR, n)) for f in fs}
        print(f"{n:22s} seed {o['seed']}  largest {max(sizes.values())} KiB  "
              f"llama.cpp: {'loads' if lc.get('loads') else lc.get('error', 'not run')}"
              f"  err {lc.get('logits_err_vs_transformers', '-')}"
              f"  greedy==hf {lc.get('greedy_equals_transformers', '-')}  tie {o['tie']}")


if __name__ == "__main__":
    main()
