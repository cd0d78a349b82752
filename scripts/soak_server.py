#!/usr/bin/env python3
"""Soak test of `python -m pyinfer.server` with hostile requests mixed into legitimate ones.

Starts the server on SmolLM2-135M-Instruct (default n_ctx 2048, logits_all on, an API key
from PYINFER_API_KEY) in a subprocess, warms it up, then runs --clients concurrent clients,
each sending --rounds requests: legitimate ones (completions and chats, streamed or not,
greedy) and, every --hostile-every requests, a hostile one, the kinds taken in turn across
clients so that each appears:

  huge_body      a 50 MB body with its Content-Length             -> 413 (or a reset)
  chunked_body   a 16 MB body without Content-Length               -> 413 (or a reset)
  grammar        x{0,1000000} and a 1.5 MB grammar                 -> 200 or 400
  logprobs       logprobs 1000000 with echo                        -> 400
  bad_json       a body that is not JSON                           -> 400
  long_prompt    a 300 KB prompt, far over the context             -> 400 context_length_exceeded
  heavy_echo     a ~1000-token prompt, echo and logprobs 5         -> 200 (holds the model)
  tokenize_big   /extras/tokenize of 1.75 MB                       -> 200
  bad_fields     a message without role, logit_bias {-1: 5}        -> 400
  no_key         no API key                                        -> 401
  disconnect     a stream dropped after two events                 -> (gone)
  abandon        a long non-streaming request given up after 0.5 s -> (gone)

Checked: every legitimate request is answered with exactly the text an independent
`pyinfer.Llama` on the same file gives (greedy); every hostile one gets its expected status.
Measured: /health latency from a poller in a process of its own every 0.1 s (p50, p95, max;
not slowed by the clients' threads), and the
server's RSS (/proc/PID/status VmRSS) at baseline (after the warm-up, the server idle), at
its peak during the run and after it (one legitimate request, then idle for a few seconds).
Exit status 1 when a legitimate request failed, a hostile one got an unexpected answer, or
the /health p95 is 1 s or more. A run still going after --deadline seconds is stopped: the
server is sent SIGUSR1 (its threads' stacks go to its stderr, shown here), this script dumps
its own threads' stacks, and the run fails.

Usage: python scripts/soak_server.py [--model M.gguf] [--clients 16] [--rounds 6]
       [--hostile-every 3] [--n-ctx 2048] [--threads 2] [--deadline 600] [--json OUT]
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from pyinfer import Llama
from pyinfer.default_model import require_default_model
from server_proc import ServerProcess

KEY = "soak-key"
LEGIT = [("completion", "The capital of France is", False),
         ("chat", "Name a fruit.", True),
         ("completion", "Once upon a time", True),
         ("chat", "What colour is the sky?", False),
         ("completion", "def fibonacci(n):", False),
         ("chat", "Say hello in Spanish.", True)]
MAX_TOKENS = 8
HOSTILE = ["huge_body", "chunked_body", "grammar", "logprobs", "bad_json", "long_prompt",
           "heavy_echo", "tokenize_big", "bad_fields", "no_key", "disconnect", "abandon"]
HEADERS = {"Authorization": f"Bearer {KEY}"}


POLLER = """
import sys, time, httpx
while True:
    t0 = time.perf_counter()
    try:
        ok = httpx.get(sys.argv[1] + "/health", timeout=30).status_code == 200
    except httpx.HTTPError:
        ok = False
    print(time.perf_counter() - t0, int(ok), flush=True)
    time.sleep(0.1)
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_server(args) -> ServerProcess:
    extra = ["--n_ctx", str(args.n_ctx), "--verbose", "false"]
    if args.threads:
        extra += ["--n_threads", str(args.threads), "--n_threads_batch", str(args.threads)]
    return ServerProcess(args.model, extra, env={"PYINFER_API_KEY": KEY})


def expected_answers(model: str, n_ctx: int) -> list:
    """What an independent Llama answers to each legitimate request (greedy, the server's
    default repeat_penalty 1.1)."""
    llm = Llama(model, n_ctx=n_ctx, verbose=False)
    want = []
    for kind, text, _ in LEGIT:
        llm.reset()
        if kind == "completion":
            want.append(llm.create_completion(text, max_tokens=MAX_TOKENS, temperature=0.0,
                                              repeat_penalty=1.1)["choices"][0]["text"])
        else:
            want.append(llm.create_chat_completion(
                [{"role": "user", "content": text}], max_tokens=MAX_TOKENS, temperature=0.0,
                repeat_penalty=1.1)["choices"][0]["message"]["content"])
    llm.close()
    return want


def legit(base: str, i: int) -> str:
    """Send legitimate request i; returns its text."""
    kind, text, stream = LEGIT[i]
    path = "/v1/completions" if kind == "completion" else "/v1/chat/completions"
    body = {"max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream}
    if kind == "completion":
        body["prompt"] = text
    else:
        body["messages"] = [{"role": "user", "content": text}]
    if not stream:
        r = httpx.post(base + path, json=body, headers=HEADERS, timeout=600)
        r.raise_for_status()
        choice = r.json()["choices"][0]
        return choice["text"] if kind == "completion" else choice["message"]["content"]
    parts = []
    with httpx.stream("POST", base + path, json=body, headers=HEADERS, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(f"error event: {chunk['error']}")
                c = chunk["choices"][0]
                parts.append(c.get("text") or "" if kind == "completion"
                             else c["delta"].get("content") or "")
    return "".join(parts)


def _post(base, path, timeout=600, **kw):
    return httpx.post(base + path, headers={**HEADERS, **kw.pop("headers", {})},
                      timeout=timeout, **kw)


def hostile(base: str, kind: str) -> str:
    """Send a hostile request; returns what happened ('413', '400', 'reset', ...)."""
    try:
        if kind == "huge_body":
            r = _post(base, "/v1/completions", content=b"x" * (50 << 20),
                      headers={"Content-Type": "application/json"})
        elif kind == "chunked_body":
            def chunks():
                for _ in range(16):
                    yield b" " * (1 << 20)
            r = _post(base, "/v1/completions", content=chunks(),
                      headers={"Content-Type": "application/json"})
        elif kind == "grammar":
            big = "root ::= " + " | ".join(f'"w{i}"' for i in range(150_000))
            r = _post(base, "/v1/completions", json={
                "prompt": "x", "max_tokens": 4, "grammar": 'root ::= "a"{0,1000000}'})
            if r.status_code not in (200, 400):
                return str(r.status_code)
            r = _post(base, "/v1/completions", json={"prompt": "x", "max_tokens": 4,
                                                      "grammar": big})
        elif kind == "logprobs":
            r = _post(base, "/v1/completions", json={"prompt": "hello " * 200,
                                                      "logprobs": 1_000_000, "echo": True})
        elif kind == "bad_json":
            r = _post(base, "/v1/chat/completions", content=b'{"messages": [',
                      headers={"Content-Type": "application/json"})
        elif kind == "long_prompt":
            r = _post(base, "/v1/completions", json={"prompt": "hello " * 50_000})
        elif kind == "heavy_echo":
            r = _post(base, "/v1/completions", json={
                "prompt": "The quick brown fox jumps over the lazy dog. " * 100,
                "echo": True, "logprobs": 5, "max_tokens": 1})
        elif kind == "tokenize_big":
            r = _post(base, "/extras/tokenize", json={"input": "tokens " * 250_000})
        elif kind == "bad_fields":
            r = _post(base, "/v1/chat/completions", json={"messages": [{"content": "x"}]})
            if r.status_code != 400:
                return str(r.status_code)
            r = _post(base, "/v1/completions", json={"prompt": "x", "logit_bias": {"-1": 5}})
        elif kind == "no_key":
            r = httpx.post(base + "/v1/completions", json={"prompt": "x"}, timeout=60)
        elif kind == "disconnect":
            body = {"prompt": "Once upon a time, there was a dragon who", "max_tokens": 200,
                    "stream": True}
            with httpx.stream("POST", base + "/v1/completions", json=body, headers=HEADERS,
                              timeout=600) as r:
                for n, line in enumerate(r.iter_lines()):
                    if n >= 3:
                        break
            return "gone"
        elif kind == "abandon":
            try:
                _post(base, "/v1/completions", timeout=0.5, json={
                    "prompt": "Once upon a time, there was a dragon who", "max_tokens": 200})
            except httpx.TimeoutException:
                return "gone"
            return "answered"
        else:
            raise ValueError(kind)
    except (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError) as e:
        return f"reset ({type(e).__name__})"
    return str(r.status_code)


EXPECTED = {"huge_body": {"413", "reset"}, "chunked_body": {"413", "reset"},
            "grammar": {"200", "400"}, "logprobs": {"400"}, "bad_json": {"400"},
            "long_prompt": {"400"}, "heavy_echo": {"200"}, "tokenize_big": {"200"},
            "bad_fields": {"400"}, "no_key": {"401"}, "disconnect": {"gone"},
            "abandon": {"gone", "answered"}}


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=6, help="requests per client")
    ap.add_argument("--hostile-every", type=int, default=3,
                    help="every N-th request of a client is hostile")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--deadline", type=float, default=600,
                    help="seconds the clients may take before the run is declared hung")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    args.model = args.model or str(require_default_model())
    want = expected_answers(args.model, args.n_ctx)
    proc = start_server(args)
    try:
        return run(args, proc.base, proc, want)
    finally:
        proc.stop()


def run(args, base: str, proc: subprocess.Popen, want: list) -> int:
    for i in range(len(LEGIT)):                      # warm-up, and a first check
        assert legit(base, i) == want[i], (LEGIT[i], want[i])
    time.sleep(3)                                    # idle: the server trims
    baseline = rss_mib(proc.pid)
    stop = threading.Event()
    health, rss = [], [baseline]
    poller_proc = subprocess.Popen([sys.executable, "-c", POLLER, base], text=True,
                                   stdout=subprocess.PIPE)

    def read_health():
        for line in poller_proc.stdout:
            secs, ok = line.split()
            health.append((float(secs), ok == "1"))

    def sample_rss():
        while not stop.is_set():
            rss.append(rss_mib(proc.pid))
            time.sleep(0.1)

    results = []                                     # (kind, ok, detail, seconds)
    lock = threading.Lock()
    barrier = threading.Barrier(args.clients)
    hostile_turn = iter(range(10 ** 9))

    def client(c: int):
        barrier.wait()
        for k in range(args.rounds):
            t0 = time.perf_counter()
            if (k + c) % args.hostile_every == args.hostile_every - 1:
                with lock:
                    kind = HOSTILE[next(hostile_turn) % len(HOSTILE)]
                try:
                    got = hostile(base, kind)
                    ok, detail = got.split(" ")[0] in EXPECTED[kind], got
                except Exception as e:       # recorded as a failure
                    ok, detail = False, repr(e)
            else:
                i = (c + k) % len(LEGIT)
                kind = "legit:" + LEGIT[i][0] + (" stream" if LEGIT[i][2] else "")
                try:
                    got = legit(base, i)
                    ok, detail = got == want[i], got
                except Exception as e:       # recorded as a failure
                    ok, detail = False, repr(e)
            with lock:
                results.append((kind, ok, detail, time.perf_counter() - t0))

    reader = threading.Thread(target=read_health, daemon=True)
    sampler = threading.Thread(target=sample_rss, daemon=True)
    reader.start()
    sampler.start()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, args.deadline - (time.perf_counter() - t0)))
    wall = time.perf_counter() - t0
    if any(t.is_alive() for t in threads):
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(3)
        print(f"HUNG: clients still running after {args.deadline:.0f} s; the server's "
              "threads:\n" + "".join(proc.log[-200:]), file=sys.stderr)
        print("this script's threads:", file=sys.stderr)
        faulthandler.dump_traceback(all_threads=True)
        return 1
    stop.set()
    poller_proc.terminate()
    poller_proc.wait(timeout=30)
    reader.join(timeout=30)
    sampler.join()
    legit(base, 0)                                   # one more legitimate request, then idle
    time.sleep(4)
    after = rss_mib(proc.pid)
    return report(args, results, health, baseline, max(rss), after, wall)


def report(args, results, health, baseline, peak, after, wall) -> int:
    lat = [t for t, _ in health]
    figures = {
        "clients": args.clients, "requests": len(results), "wall_s": round(wall, 1),
        "legit": sum(k.startswith("legit") for k, *_ in results),
        "legit_ok": sum(k.startswith("legit") and ok for k, ok, *_ in results),
        "hostile": sum(not k.startswith("legit") for k, *_ in results),
        "hostile_as_expected": sum(not k.startswith("legit") and ok for k, ok, *_ in results),
        "health_polls": len(lat), "health_failed": sum(not ok for _, ok in health),
        "health_p50_s": round(statistics.median(lat), 4) if lat else None,
        "health_p95_s": round(percentile(lat, 0.95), 4), "health_max_s": round(max(lat), 4),
        "rss_baseline_mib": round(baseline), "rss_peak_mib": round(peak),
        "rss_after_mib": round(after)}
    print(json.dumps(figures, indent=1))
    by_kind = {}
    for kind, ok, detail, secs in results:
        row = by_kind.setdefault(kind, {"n": 0, "ok": 0, "max_s": 0.0, "seen": set()})
        row["n"] += 1
        row["ok"] += ok
        row["max_s"] = max(row["max_s"], secs)
        if not kind.startswith("legit"):
            row["seen"].add(detail)
    for kind, row in sorted(by_kind.items()):
        print(f"  {kind:26s} {row['ok']:3d}/{row['n']:<3d} max {row['max_s']:6.1f} s  "
              f"{' '.join(sorted(row['seen']))}")
    failures = [(k, d) for k, ok, d, _ in results if not ok]
    for kind, detail in failures:
        print(f"FAILED {kind}: {detail[:300]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "figures": figures,
                                               "failures": failures}, indent=2))
    healthy = lat and percentile(lat, 0.95) < 1.0 and not figures["health_failed"]
    return 0 if not failures and healthy else 1


if __name__ == "__main__":
    sys.exit(main())
