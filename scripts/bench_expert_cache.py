#!/usr/bin/env python3
"""Expert-cache hit rates and bytes moved per token on a synthetic OLMoE-shaped model.

The traces are SYNTHETIC: a randomly initialised model of OLMoE-1B-7B's MoE shape (hidden
2048, 64 experts, top-8, expert FFN 1024; few layers, a 320-token byte-level vocabulary), so
its routing says nothing about a trained model's. Two routers:

* uniform: the random router (rows made orthogonal to the embeddings' shared direction):
  routing by the token's own embedding, a popularity near uniform (the attention output and
  expert down projections are scaled by --branch-scale and the embeddings are N(0, 1), so that
  the residual stream stays the embedding's: in a plain random model their outputs build a
  component common to all tokens
  and every token picks the same few experts);
* skewed: the same model with each router row e given a component along the direction every
  token embedding shares (a common direction of the residual stream), of size
  alpha * log(1 / rank_e) (a per-layer random ranking): a Zipf-like popularity on top of the
  token-dependent routing.

Steps (each reuses what the previous wrote in --dir):

    /tmp/oracle/bin/python scripts/bench_expert_cache.py build --dir D   # transformers: the checkpoint
    python scripts/bench_expert_cache.py run --dir D                      # convert, trace, tables

`run` converts the checkpoint with our converter (Q4_0), writes the skewed file (the F32 router
tensors patched), records routing traces (tokens x layers x k) of two different texts (a profile
text and a held-out one, both from pydoc_data's topics), prints the hit rates of LRU caches of
8/16/32 slots per layer against a static hot set of the same size chosen from the profile
text's counts, then runs the engine with the LRU cache on the stand-in device at the budgets
that hold 8/16/32 slots per layer and prints the bytes moved host <-> device per decoded token.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = dict(hidden_size=2048, num_experts=64, num_experts_per_tok=8, intermediate_size=1024,
             num_attention_heads=16, num_key_value_heads=16, vocab_size=320)
SLOTS = (8, 16, 32)


# ---- build (torch + transformers) ----

def build(d: str, n_layer: int, seed: int, branch_scale: float) -> None:
    import torch
    import transformers
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from reference.tiny_hf import write_tokenizer
    hf = os.path.join(d, "hf")
    os.makedirs(hf, exist_ok=True)
    cfg = transformers.OlmoeConfig(num_hidden_layers=n_layer, max_position_embeddings=4096, norm_topk_prob=False,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
                                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **SHAPE)
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.bfloat16)
    model = transformers.OlmoeForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.mul_(1.0 / emb.float().std())                    # N(0, 1) embeddings (make_moe_fixtures' scale)
        m = torch.randn(emb.shape[1], generator=gen, dtype=torch.float32)
        m_hat = m / m.norm()
        # every token embedding shares a direction as long as its random part
        emb.add_((m_hat * emb.float().norm(dim=1).mean()).to(emb.dtype))
        n_router = 0
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):           # the router {n_expert, n_embd}
                w = p.float()
                p.copy_((w - torch.outer(w @ m_hat, m_hat)).to(p.dtype))
                n_router += 1
            elif name.endswith(("o_proj.weight", "experts.down_proj")):
                # the layers' outputs small against the embeddings: a random model's attention
                # and expert outputs otherwise build a common component that every router sees
                # (all tokens then pick the same experts)
                p.mul_(branch_scale)
    assert n_router == n_layer, "router weights not found"
    model.save_pretrained(hf)
    write_tokenizer(hf, SHAPE["vocab_size"], tokenizer_class="GPT2Tokenizer")
    np.save(os.path.join(d, "shared_direction.npy"), m_hat.numpy())
    print(f"built {hf}: {n_layer} layers, {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters")


# ---- run (pyinfer) ----

def convert_files(d: str, alphas, seed: int):
    from pyinfer.convert.hf_to_gguf import ConvertOptions, convert
    uni = os.path.join(d, "synthetic-olmoe.q4_0.gguf")
    if not os.path.exists(uni):
        t0 = time.perf_counter()
        convert(os.path.join(d, "hf"), ConvertOptions(uni + ".part", "q4_0", progress=False))
        os.replace(uni + ".part", uni)
        print(f"converted to {uni} in {time.perf_counter() - t0:.0f} s")
    return uni, [skewed_file(d, uni, alpha, seed) for alpha in alphas]


def skewed_file(d: str, uni: str, alpha: float, seed: int) -> str:
    """A copy of `uni` whose routers favour a per-layer random ranking of experts by
    alpha * log(1 / rank) (router rows given a component along the shared direction)."""
    from pyinfer.gguf_model import GGUFFile
    skew = os.path.join(d, f"synthetic-olmoe-skewed-{alpha:g}.q4_0.gguf")
    if not os.path.exists(skew):
        shutil.copyfile(uni, skew + ".part")
        m_hat = np.load(os.path.join(d, "shared_direction.npy")).astype(np.float32)
        f = GGUFFile(skew + ".part")
        rng = np.random.default_rng(seed)
        patches = []
        for t in f.reader.tensors:
            if t.name.endswith("ffn_gate_inp.weight"):
                w = np.array(t.data, dtype=np.float32).reshape(-1, m_hat.size)      # {n_expert rows}
                rank = rng.permutation(len(w))                                     # expert e's popularity rank
                # the shared direction's share of a normed hidden state is about sqrt(n_embd) * cos
                bias = alpha * np.log(1.0 / (rank + 1.0)) / (np.sqrt(m_hat.size) * 0.5)
                patches.append((int(t.data_offset), (w + np.outer(bias, m_hat)).astype(np.float32)))
        del f
        with open(skew + ".part", "r+b") as fh:
            for off, w in patches:
                fh.seek(off)
                fh.write(w.tobytes())
        os.replace(skew + ".part", skew)
    return skew


def texts(n_tokens: int, tok):
    """Two different texts of pydoc_data's topics (a profile text and a held-out one)."""
    from pydoc_data.topics import topics
    keys = sorted(topics)
    a = "\n".join(topics[k] for k in keys[0::2])
    b = "\n".join(topics[k] for k in keys[1::2])
    return [tok.tokenize(t.encode(), add_bos=True)[:n_tokens] for t in (a, b)]


def traces(path: str, n_tokens: int, threads: int):
    from pyinfer.config import ContextSettings
    from pyinfer.engine import Engine
    from pyinfer.offload.expert_profile import record_routing
    from pyinfer.tokenizer import Tokenizer
    cache = path + f".traces{n_tokens}.npz"
    if os.path.exists(cache):
        with np.load(cache) as z:
            return z["a"], z["b"]
    e = Engine(path, ContextSettings(n_ctx=512, n_batch=64, n_threads=threads))
    try:
        a, b = texts(n_tokens, Tokenizer.from_gguf(e.file.reader))
        t0 = time.perf_counter()
        ta, tb = record_routing(e, a), record_routing(e, b)
        print(f"traced {len(a) + len(b)} tokens of {os.path.basename(path)} in {time.perf_counter() - t0:.0f} s")
    finally:
        e.close()
    np.savez(cache, a=ta, b=tb)
    return ta, tb


def hit_table(name: str, ta: np.ndarray, tb: np.ndarray, n_expert: int) -> list:
    from pyinfer.offload.experts import counts_from_trace, lru_hits, static_hits
    counts_a = counts_from_trace(ta, n_expert)
    counts_b = counts_from_trace(tb, n_expert)
    k = tb.shape[2]
    rows = []
    top8 = np.mean([np.sort(c)[::-1][:k].sum() / c.sum() for c in counts_b])
    # temporal locality: the share of choices whose expert the previous token chose too
    reuse = np.mean([np.isin(tb[t, i], tb[t - 1, i]).mean() for t in range(1, len(tb)) for i in range(tb.shape[1])])
    for S in SLOTS:
        st = lr = cold = pin = 0
        for i in range(tb.shape[1]):
            hot = np.argsort(-counts_a[i], kind="stable")[:S]
            st += static_hits(tb[:, i], hot)
            lr += lru_hits(tb[:, i], S, hot.tolist())[0]
            cold += lru_hits(tb[:, i], S)[0]
            pin += lru_hits(tb[:, i], S, hot.tolist(), policy="pinned")[0]
        n = tb[:, :, :].size
        rows.append((name, S, 100.0 * st / n, 100.0 * lr / n, 100.0 * cold / n, 100.0 * pin / n,
                     100.0 * top8, 100.0 * reuse))
    return rows


def simulated_window(trace: np.ndarray, counts, S: int, n_prompt: int, n_decode: int, policy: str) -> float:
    """The hit rate of the same policy replayed on the trace: warm from the profile's top S,
    the prompt's tokens, then the decoded window (the engine's check)."""
    from pyinfer.offload.experts import make_slots
    hits = 0
    for i in range(trace.shape[1]):
        lru = make_slots(policy, S, np.argsort(-np.asarray(counts[i]), kind="stable")[:S].tolist())
        for row in trace[:n_prompt, i]:
            lru.access(row)
        hits += sum(lru.access(row)[0] for row in trace[n_prompt:n_prompt + n_decode, i])
    return hits / trace[n_prompt:n_prompt + n_decode].size


def bytes_per_token(path: str, n_prompt: int, n_decode: int, threads: int, profile: str, trace) -> list:
    """Per slot count: the budget holding that many slots per layer, and the bytes moved per
    decoded token (host -> device, device -> host, of them the cache's expert loads)."""
    from pyinfer.backend import Backend
    from pyinfer.config import ContextSettings
    from pyinfer.engine import Engine
    from pyinfer.offload import GIB, MIB, make_plan, spec_from_file
    from pyinfer.tokenizer import Tokenizer
    out = []
    probe = Engine(path, ContextSettings(n_ctx=256, n_batch=16, n_threads=threads))
    try:
        _, b = texts(n_prompt + n_decode, Tokenizer.from_gguf(probe.file.reader))
        spec = spec_from_file(probe.file, probe.cfg, probe.n_ctx, probe.n_batch)
    finally:
        probe.close()
    from pyinfer.offload.experts import load_expert_counts
    counts = load_expert_counts(profile)[0]
    for S in SLOTS:
        budget = make_plan(spec, vram_budget=64.0, expert_counts=counts, expert_slots=S).device_bytes
        for policy in ("static", "lru", "pinned"):
            with Backend.standin(budget) as dev:
                e = Engine(path, ContextSettings(n_ctx=256, n_batch=16, n_threads=threads, extra={
                    "offload_device": dev, "vram_budget": budget / GIB, "expert_cache": policy != "static" and policy,
                    "expert_slots": S, "expert_profile": profile}))
                try:
                    e.decode(b[:n_prompt])
                    s0 = dev.stats()
                    c = e.expert_cache
                    c0 = (c.stats.bytes_loaded, c.stats.hits, c.stats.misses) if c else (0, 0, 0)
                    t0 = time.perf_counter()
                    for t in b[n_prompt:n_prompt + n_decode]:
                        e.decode([t])
                    dt = time.perf_counter() - t0
                    s1, n = dev.stats(), n_decode
                    if c:
                        loads = (c.stats.bytes_loaded - c0[0]) / n / MIB
                        hits, misses = c.stats.hits - c0[1], c.stats.misses - c0[2]
                        hr = hits / max(1, hits + misses)
                        sim = simulated_window(trace, counts, S, n_prompt, n_decode, policy)
                    else:       # the plan's slots: the profile's top S of each layer
                        from pyinfer.offload.experts import static_hits
                        win = trace[n_prompt:n_prompt + n_decode]
                        loads, hr = 0.0, None
                        sim = sum(static_hits(win[:, i], x.experts) for i, x in
                                  enumerate(e.offload_plan.experts)) / win.size
                    out.append((policy, S, budget / MIB, (s1["h2d_bytes"] - s0["h2d_bytes"]) / n / MIB,
                                (s1["d2h_bytes"] - s0["d2h_bytes"]) / n / 1024, loads,
                                None if hr is None else 100.0 * hr, 100.0 * sim,
                                s1["arena_peak"] <= budget, n / dt))
                finally:
                    e.close()
    return out


def run(args) -> None:
    from pyinfer.offload.experts import counts_from_trace, save_expert_counts
    alphas = [float(a) for a in args.alpha.split(",")]
    uni, skews = convert_files(args.dir, alphas, args.seed)
    models = [("uniform", uni)] + [(f"skewed a={a:g}", p) for a, p in zip(alphas, skews)]
    rows = []
    for name, path in models:
        ta, tb = traces(path, args.tokens, args.threads)
        rows += hit_table(name, ta, tb, SHAPE["num_experts"])
        prof = path + ".profile.npz"
        save_expert_counts(prof, counts_from_trace(ta, SHAPE["num_experts"]), len(ta))
    print(f"\nHit rates over the held-out text ({args.tokens} tokens; profile text: another {args.tokens}); "
          "SYNTHETIC routing (random OLMoE-shaped model), 64 experts, top-8, per layer:")
    print("| router | slots/layer | static top-S (profile) | LRU (warm from profile) | LRU (cold) "
          "| half pinned + half LRU | top-8 experts' share | reused from the previous token |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f}% | {r[3]:.1f}% | {r[4]:.1f}% | {r[5]:.1f}% | {r[6]:.1f}% "
              f"| {r[7]:.1f}% |")
    if args.no_device:
        return
    print(f"\nBytes moved per decoded token on the stand-in device (static slots, LRU cache, half pinned; "
          f"prompt {args.prompt} tokens, {args.decode} decoded tokens of the held-out text):")
    print("| router | policy | slots/layer | budget | host->device per token | device->host per token "
          "| of which expert loads | engine's hit rate | trace replay, same window | arena peak <= budget "
          "| tokens/s (stand-in, CPU) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, path in models[:2]:
        trace = traces(path, args.tokens, args.threads)[1]
        for r in bytes_per_token(path, args.prompt, args.decode, args.threads, path + ".profile.npz", trace):
            engine_hr = "-" if r[6] is None else f"{r[6]:.1f}%"
            print(f"| {name} | {r[0]} | {r[1]} | {r[2]:.0f} MiB | {r[3]:.2f} MiB | {r[4]:.1f} KiB | {r[5]:.2f} MiB | "
                  f"{engine_hr} | {r[7]:.1f}% | {r[8]} | {r[9]:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=("build", "run"))
    ap.add_argument("--dir", required=True, help="working directory (checkpoint, GGUF files, traces)")
    ap.add_argument("--layers", type=int, default=4, help="build: layers of the synthetic model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--branch-scale", type=float, default=0.1,
                    help="build: scale of the attention output and expert down projections")
    ap.add_argument("--alpha", default="0.3,1", help="run: the skewed routers' strengths (comma-separated; "
                    "the bytes-per-token table runs the first)")
    ap.add_argument("--tokens", type=int, default=1024, help="run: tokens of each text traced")
    ap.add_argument("--prompt", type=int, default=192, help="run: prompt tokens before the decode measurement")
    ap.add_argument("--decode", type=int, default=48, help="run: decoded tokens measured per budget")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-device", action="store_true", help="run: only the hit-rate table")
    args = ap.parse_args()
    if args.step == "build":
        build(args.dir, args.layers, args.seed, args.branch_scale)
    else:
        run(args)


if __name__ == "__main__":
    main()
