#!/usr/bin/env python3
"""Throughput and latency of `python -m pyinfer.server` under 1, 4 and 8 concurrent clients.

Starts the server in a subprocess (SmolLM2-135M-Instruct Q4_1 by default), then for each
concurrency level C runs C client threads that each send --requests streaming completion
requests one after another (different prompts, temperature 0, exactly --max-tokens
tokens: end-of-text is banned with min_tokens). Reported per level:

  tok/s      total generated tokens / wall time of the level (all clients together)
  latency    per request, from sending to the last event: mean, median, max (seconds)
  ttft       time to the first generated text: mean and max (seconds)
  tok/cpu-s  generated tokens per CPU second of the server process (user + system, from
             /proc; less sensitive than tok/s to other work on a shared machine)

With --rounds R the levels run R times, interleaved (1 4 8 1 4 8 ...), and each column is
the median over the rounds.

By default the server serves one request at a time (a FIFO lease per generation), so
total tok/s stays that of one stream while latency grows with the queue; --interleave N
starts it with --interleave_tokens N (streams take turns every N chunks, saving and
restoring their KV cache), which trades some throughput for earlier first tokens.

Usage: python scripts/bench_server.py [--model M.gguf] [--threads 2] [--levels 1 4 8]
       [--requests 2] [--max-tokens 32] [--rounds 1] [--interleave 0] [--n-ctx 1024]
       [--port 0] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
from pyinfer.default_model import require_default_model  # noqa: E402
from server_proc import ServerProcess  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["Once upon a time, there was a dragon who", "The history of the Roman Empire",
           "Here is a recipe for a simple tomato soup:", "The three laws of motion are",
           "Dear diary, today I", "In a distant galaxy, a small robot",
           "The best way to learn a new language is", "Photosynthesis is the process"]


def default_model() -> str:
    return require_default_model()


def start_server(args, port: int) -> ServerProcess:
    extra = ["--n_ctx", str(args.n_ctx), "--verbose", "false", "--logits_all", "false"]
    if args.interleave:
        extra += ["--interleave_tokens", str(args.interleave)]
    if args.threads:
        extra += ["--n_threads", str(args.threads), "--n_threads_batch", str(args.threads)]
    return ServerProcess(args.model, extra, port=port)


def one_request(base: str, prompt: str, max_tokens: int) -> dict:
    """Stream one completion; returns its latency, time to first text and token count."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "min_tokens": max_tokens,
            "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    ttft = None
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"][0]["text"]:
                if ttft is None:
                    ttft = time.perf_counter() - t0
    return {"latency": time.perf_counter() - t0, "ttft": ttft or 0.0, "tokens": max_tokens}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_level(base: str, pid: int, clients: int, requests: int, max_tokens: int) -> dict:
    results, errors = [], []
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        barrier.wait()
        for k in range(requests):
            try:
                results.append(one_request(base, PROMPTS[(i * requests + k) % len(PROMPTS)],
                                           max_tokens))
            except Exception as e:         # reported with the level
                errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0, cpu0 = time.perf_counter(), cpu_seconds(pid)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    lat = [r["latency"] for r in results]
    ttft = [r["ttft"] for r in results]
    return {"clients": clients, "requests": len(results), "errors": errors, "wall_s": wall,
            "tokens": sum(r["tokens"] for r in results),
            "tok_per_s": sum(r["tokens"] for r in results) / wall,
            "tok_per_cpu_s": sum(r["tokens"] for r in results) / cpu if cpu > 0 else 0.0,
            "latency_mean": statistics.mean(lat), "latency_median": statistics.median(lat),
            "latency_max": max(lat), "ttft_mean": statistics.mean(ttft), "ttft_max": max(ttft)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1, help="repeat the levels, report medians")
    ap.add_argument("--interleave", type=int, default=0,
                    help="server --interleave_tokens (0: FIFO, each request to its end)")
    ap.add_argument("--n-ctx", type=int, default=1024)
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    args.model = args.model or default_model()
    proc = start_server(args, args.port)
    base = proc.base
    try:
        one_request(base, PROMPTS[0], 4)            # warm-up
        runs = [run_level(base, proc.pid, c, args.requests, args.max_tokens)
                for _ in range(args.rounds) for c in args.levels]
    finally:
        proc.stop()
    rows = [median_row([r for r in runs if r["clients"] == c]) for c in args.levels]
    print(f"model {os.path.basename(args.model)}, {args.max_tokens} tokens per request, "
          f"{args.requests} requests per client, threads {args.threads or 'default'}, "
          f"{'interleave every %d chunks' % args.interleave if args.interleave else 'FIFO'}, "
          f"medians of {args.rounds} round(s)")
    print(f"{'clients':>7} {'requests':>8} {'tok/s':>7} {'tok/cpu-s':>9} {'lat mean':>8} "
          f"{'lat med':>7} {'lat max':>7} {'ttft mean':>9} {'ttft max':>8}")
    for r in rows:
        print(f"{r['clients']:7d} {r['requests']:8d} {r['tok_per_s']:7.1f} {r['tok_per_cpu_s']:9.1f} "
              f"{r['latency_mean']:8.2f} {r['latency_median']:7.2f} {r['latency_max']:7.2f} "
              f"{r['ttft_mean']:9.2f} {r['ttft_max']:8.2f}"
              + (f"  errors: {r['errors']}" if r["errors"] else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "levels": rows,
                                               "runs": runs}, indent=2))
    return 0 if not any(r["errors"] for r in runs) else 1


def median_row(runs: list) -> dict:
    """Per-key medians of the runs of one level (errors concatenated)."""
    row = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "errors"}
    row["clients"], row["requests"] = runs[0]["clients"], runs[0]["requests"]
    row["errors"] = [e for r in runs for e in r["errors"]]
    return row


if __name__ == "__main__":
    sys.exit(main())
