#!/usr/bin/env python3
"""Decode speed of pyinfer on SmolLM2 with and without grammar constraints.

One Llama, one chat prompt asking for JSON; each mode decodes up to --n-gen tokens after the
prompt (the prompt's evaluation is not timed), the loop generation runs:

    tok = sampler.sample(logits); sampler.accept(tok); llm.eval([tok])

Modes: `none` (no grammar), `json` (JSON_GBNF: any JSON object), `schema` (a JSON schema
converted to GBNF). Each is run greedy and sampled (temperature 0.8, the default chain),
interleaved, --runs times; the medians are reported:

  tok/s        generated tokens / seconds of the whole loop (sample + grammar + eval)
  sample ms    milliseconds per token in sample + accept (the grammar's part included)
  eval ms      milliseconds per token in llm.eval (the model; the same work in every mode)
  grammar %    (sample ms - sample ms of `none`, same sampling) / (sample ms + eval ms):
               the share of decode time the grammar adds, robust to a busy machine
  rejected     tokens whose unconstrained pick the grammar refused (each built a full mask)
  tokens       tokens generated (a grammar stops at EOS when its text is complete)

The first run of each grammar mode starts from an empty grammar cache and is reported
apart as `cold` (sample ms of that run); later runs reuse the Llama's compiled grammar.

Usage: python scripts/bench_grammar.py [--model M.gguf] [--runs 5] [--n-gen 64]
       [--threads 2] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from pyinfer import Llama                                       # noqa: E402
from pyinfer.chat import Jinja2ChatFormatter                    # noqa: E402
from pyinfer.grammar import JSON_GBNF, LlamaGrammar             # noqa: E402
from pyinfer.sampling import Sampler, SamplingSettings          # noqa: E402
from pyinfer.default_model import require_default_model  # noqa: E402

SCHEMA = {"type": "object",
          "properties": {"cats": {"type": "array", "minItems": 3, "items": {
              "type": "object",
              "properties": {"name": {"type": "string", "maxLength": 16},
                             "age": {"type": "integer"},
                             "color": {"enum": ["black", "white", "orange", "grey"]},
                             "toys": {"type": "array", "items": {"type": "string"}}},
              "required": ["name", "age", "color", "toys"]}}},
          "required": ["cats"]}
MESSAGES = [{"role": "user", "content": "List three cats as JSON: name, age, color and toys."}]
SAMPLINGS = {"greedy": dict(temperature=0.0), "sampled": dict(temperature=0.8, seed=7)}


def default_model() -> str:
    return require_default_model()


def grammar_for(mode: str):
    if mode == "json":
        return LlamaGrammar.from_string(JSON_GBNF)
    if mode == "schema":
        return LlamaGrammar.from_json_schema(json.dumps(SCHEMA))
    return None


def run_once(llm: Llama, prompt, mode: str, sampling: str, n_gen: int) -> dict:
    llm.reset()
    llm.eval(prompt)
    settings = SamplingSettings(penalty_last_n=0, **SAMPLINGS[sampling])
    sampler = Sampler(settings, grammar=llm._grammar_matcher(grammar_for(mode)))
    t_sample = t_eval = 0.0
    tokens = []
    t0 = time.perf_counter()
    for _ in range(n_gen):
        t1 = time.perf_counter()
        tok = sampler.sample(llm._logits)
        sampler.accept(tok)
        t_sample += time.perf_counter() - t1
        if llm._vocab.is_eog(tok):
            break
        tokens.append(tok)
        t2 = time.perf_counter()
        llm.eval([tok])
        t_eval += time.perf_counter() - t2
    dt = time.perf_counter() - t0
    n = max(len(tokens), 1)
    return {"mode": mode, "sampling": sampling, "tokens": len(tokens),
            "tok_s": n / dt, "sample_ms": 1000 * t_sample / n, "eval_ms": 1000 * t_eval / n,
            "rejected": sampler.n_rejected,
            "text": llm.detokenize(tokens).decode("utf-8", errors="replace")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    llm = Llama(args.model or default_model(), n_ctx=1024, n_threads=args.threads,
                verbose=False)
    template = llm.metadata["tokenizer.chat_template"]
    text = Jinja2ChatFormatter(template, eos_token="", bos_token="")(messages=MESSAGES).prompt
    prompt = llm.tokenize(text.encode(), add_bos=False, special=True)
    t = time.perf_counter()
    llm._grammar_matcher(LlamaGrammar.from_string('root ::= "x"'))
    trie_s = time.perf_counter() - t
    runs = []
    for r in range(args.runs):
        for sampling in SAMPLINGS:
            for mode in ("none", "json", "schema"):
                res = run_once(llm, prompt, mode, sampling, args.n_gen)
                res["run"] = r
                runs.append(res)
    print(f"vocabulary trie built in {trie_s:.2f} s (once per Llama); "
          f"{args.runs} runs, up to {args.n_gen} tokens, {args.threads} threads")
    print(f"{'sampling':8} {'mode':7} {'tok/s':>7} {'sample ms':>10} {'cold ms':>8} "
          f"{'eval ms':>8} {'grammar %':>9} {'rejected':>9} {'tokens':>7}")
    medians = {}
    for sampling in SAMPLINGS:
        for mode in ("none", "json", "schema"):
            rs = [x for x in runs if x["mode"] == mode and x["sampling"] == sampling]
            warm = rs[1:] or rs
            m = {k: statistics.median(x[k] for x in warm)
                 for k in ("tok_s", "sample_ms", "eval_ms", "rejected", "tokens")}
            m["cold_sample_ms"] = rs[0]["sample_ms"]
            base = medians.get(f"{sampling}/none", m)
            m["grammar_pct"] = 100 * (m["sample_ms"] - base["sample_ms"]) / (
                m["sample_ms"] + m["eval_ms"])
            medians[f"{sampling}/{mode}"] = m
            print(f"{sampling:8} {mode:7} {m['tok_s']:7.1f} {m['sample_ms']:10.2f} "
                  f"{m['cold_sample_ms']:8.2f} {m['eval_ms']:8.1f} {m['grammar_pct']:9.1f} "
                  f"{m['rejected']:9.0f} {m['tokens']:7.0f}")
    for x in runs[:6]:
        print(f"  {x['sampling']}/{x['mode']}: {x['text'][:100]!r}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "medians": medians}, indent=1))


if __name__ == "__main__":
    main()
