"""Speculative decoding against plain decoding on a code-editing prompt.

For each model: greedy completion of a prompt that asks to repeat a piece of code with one
change (prompt lookup's best case, and a common one: editing code), plain vs
`LlamaPromptLookupDecoding(num_pred_tokens=K)` for a few K, and optionally a draft model
(`--draft SMALL.gguf`, same vocabulary). Reports tokens/s (median of --reps), the ratio to plain,
the acceptance rate, and whether the output is identical to plain decoding (it must be).

    python scripts/bench_speculative.py [--model M ...] [--draft D] [--threads 2] [--reps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent / "src"))   # a source checkout

from pyinfer import Llama  # noqa: E402
from pyinfer.default_model import require_default_model  # noqa: E402
from pyinfer.speculative import LlamaDraftLlama, LlamaPromptLookupDecoding  # noqa: E402

CODE = '''class Account:
    """A bank account with a balance and a history of operations."""

    def __init__(self, owner, balance=0):
        self.owner = owner
        self.balance = balance
        self.history = []

    def deposit(self, amount):
        if amount <= 0:
            raise ValueError("amount must be positive")
        self.balance += amount
        self.history.append(("deposit", amount))

    def withdraw(self, amount):
        if amount > self.balance:
            raise ValueError("insufficient funds")
        self.balance -= amount
        self.history.append(("withdraw", amount))
'''
PROMPT = ("Rename the attribute `history` to `log` everywhere in this Python class and write the "
          "whole class again.\n\n```python\n" + CODE + "```\n\nThe class with `history` renamed to "
          "`log`:\n\n```python\n")


def run(llm: Llama, max_tokens: int):
    llm.reset()
    llm.spec_stats.drafted = llm.spec_stats.accepted = llm.spec_stats.steps = 0
    t = time.perf_counter()
    out = llm.create_completion(PROMPT, max_tokens=max_tokens, temperature=0.0)
    dt = time.perf_counter() - t
    n = out["usage"]["completion_tokens"]
    return out["choices"][0]["text"], n / dt, llm.spec_stats.acceptance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="GGUF (repeatable; default: SmolLM2)")
    ap.add_argument("--draft", help="a draft model GGUF with the same vocabulary as --model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--lookup", default="4,10", help="num_pred_tokens values for prompt lookup")
    ap.add_argument("--json", default="bench_speculative.json")
    args = ap.parse_args()
    kw = dict(n_ctx=1024, n_threads=args.threads, verbose=False)
    results = {"load_before": os.getloadavg(), "threads": args.threads, "models": {}}
    for path in args.model or [str(require_default_model())]:
        name = Path(path).name
        modes = {"plain": None}
        modes.update({f"prompt lookup K={k}": LlamaPromptLookupDecoding(num_pred_tokens=int(k))
                      for k in args.lookup.split(",")})
        draft_llm = None
        if args.draft:
            draft_llm = Llama(args.draft, **kw)
            probe = Llama(path, vocab_only=True, verbose=False)
            if probe.n_vocab() == draft_llm.n_vocab():
                modes[f"draft model {Path(args.draft).name}"] = LlamaDraftLlama(draft_llm, num_pred_tokens=6)
            else:
                print(f"{name}: the draft model's vocabulary differs: no draft-model run", flush=True)
        rows, plain_text = {}, None
        for mode, draft in modes.items():
            llm = Llama(path, draft_model=draft, **kw)
            try:
                run(llm, 8)                                   # warm-up
                runs = [run(llm, args.max_tokens) for _ in range(args.reps)]
            finally:
                llm.close()
            text = runs[0][0]
            plain_text = text if mode == "plain" else plain_text
            rows[mode] = {"tok_s": statistics.median(r[1] for r in runs), "acceptance": runs[-1][2],
                          "identical": text == plain_text}
            print(f"{name} {mode}: {rows[mode]}", flush=True)
        if draft_llm is not None:
            draft_llm.close()
        results["models"][name] = rows
    results["load_after"] = os.getloadavg()
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"\nload average before {results['load_before']}, after {results['load_after']}; "
          f"{args.threads} threads, greedy, {args.max_tokens} tokens at most\n")
    for name, rows in results["models"].items():
        base = rows["plain"]["tok_s"]
        print(f"### {name}\n\n| mode | tokens/s | vs plain | acceptance | output identical |\n|---|---|---|---|---|")
        for mode, r in rows.items():
            print(f"| {mode} | {r['tok_s']:.1f} | {r['tok_s'] / base:.2f}x | {r['acceptance']:.0%} | {r['identical']} |")
        print()


if __name__ == "__main__":
    main()
