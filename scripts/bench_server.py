#!/usr/bin/env python3
"""Our server against llama-cpp-python's, side by side, under 1, 4, 8 and 16 streaming clients.

Every level is measured on a fresh server, one server at a time (never both at once: they
would share the cores): the script starts it in a subprocess on a free loopback port, waits
until /v1/models answers, sends two warm-up requests one after the other, then runs C
concurrent streaming clients (asyncio + httpx), each sending --requests streaming
/v1/completions (or, with --endpoint chat, /v1/chat/completions) requests one after
another: distinct prompts, temperature 0, exactly --max-tokens tokens (end-of-text is banned
with min_tokens, which both servers accept, so both do the same work and a request's token
count is known from finish_reason "length"), and stops the server. Measured per level (one
repetition):

  tok_per_s        all generated tokens / wall time of the level (all clients together)
  req_per_s        completed requests / wall time of the level
  ttft_p50/p95     time to first token: from sending a request to its first text chunk
  itl_p50/p95      inter-token latency: the gaps between consecutive text chunks, all the
                   level's requests pooled (a chunk is one token but for held-back partial
                   UTF-8 characters; chunks_per_token says how close that is)
  tpot_p50         time per output token after the first, per request: (last chunk - first
                   chunk) / (tokens - 1)
  latency_p50/p95  from sending to the end of the stream
  tok_per_cpu_s    tokens per CPU second of the server process (/proc; steadier than tok/s
                   on a shared machine)
  other_cores      mean number of cores busy with other processes than the server and this
                   script during the level (/proc/stat): the load the numbers were taken under
                   (client_cpu_s: the CPU seconds this script, the clients, took)

Order: for each level, R repetitions (--reps), each running both servers back to back, ours
first or theirs first in turn, so that a drift of the machine's load hits both alike; every
number of the report is the median of its R values. Ratios are ours / theirs: above 1 is
better for throughput (tok/s, req/s, tok/cpu-s), below 1 is better for latencies.

A fresh server per level keeps the levels apart. One effect this matters for, measured with
llama-cpp-python 0.3.36 built with OpenMP (SmolLM2, 2 threads, 2 cores): its decode steps
took 13-14 ms alone but 33-35 ms per token once several clients were queued (in most runs;
not in all: without the warm-up, 4 clients were served at 14 ms); OMP_WAIT_POLICY=active did
not change that, OMP_WAIT_POLICY=passive gave 35-38 ms even alone. Its server runs each step
of a stream on a worker thread of a pool (iterate_in_threadpool), and OpenMP keeps a thread
team per calling thread: a likely cause, not verified. It is part of what that server does
under concurrent load, but it must not leak into a later single-client level.

Shared machines: with --quiet-wait S each level first waits (at most S seconds) until other
processes keep fewer than --quiet-below cores busy (waited_for_quiet_s in the JSON); with
--retries N a level during which they kept that many busy or more is measured again on a
new server, at most N times, keeping the attempt with the least other load (attempts and
kept_attempt in the JSON). other_cores in the report says what load each number was taken
under.

Servers, started with the same model, --n_threads/--n_threads_batch T, --n_ctx C,
--verbose false and --logits_all false (no logprobs are asked; both default to true, which
only adds work):
  ours    python -m pyinfer.server ... [--n_parallel P]: P slots whose decode steps are
          batched into one forward (continuous batching; n_ctx is per slot); passed only
          when this server's --help lists the option (older servers run one request at a
          time) and P > 0 (0: the server's default). P should be at least the largest level
          for that level to batch fully (default 16); P 1 is one request at a time.
  theirs  THEIRS_PYTHON -m llama_cpp.server ... --interrupt_requests false: llama-cpp-python
          serves one request at a time; its default (true) ends a running stream early as
          soon as another request arrives, which would make the concurrent levels measure
          truncated answers.

llama-cpp-python's server needs its `server` extras beside llama_cpp. A venv that reuses an
installed llama_cpp (e.g. one built natively in VENV) was made for the measurements with
  python3 -m venv /tmp/lcp-server
  echo VENV/lib/python3.11/site-packages > /tmp/lcp-server/lib/python3.11/site-packages/lcp.pth
  /tmp/lcp-server/bin/pip install uvicorn==0.55.0 fastapi==0.165.0 sse-starlette==3.7.1 \
      starlette==1.10.0 starlette-context==0.3.6 opentelemetry-api==1.45.3
(llama-cpp-python 0.3.36; pydantic 2.14.4, pydantic-settings 2.16.3, PyYAML 6.0.4, anyio
4.16.0 came from VENV) and `--theirs-python /tmp/lcp-server/bin/python`.

Usage: python scripts/bench_server.py [--model M.gguf] [--threads 2] [--levels 1 4 8 16]
       [--max-tokens 64] [--reps 3] [--requests 1] [--n-ctx 1024] [--n-parallel 16]
       [--endpoint completions|chat] [--ours-only | --theirs-python PY]
       [--quiet-wait 20 --quiet-below 0.5 --retries 2] [--json OUT.json] [--md OUT.md]
The runs reported for issue 19 (shared 2-core machine) used:
  python scripts/bench_server.py --n-parallel 16 --quiet-wait 20 --retries 2 \
      --theirs-python /tmp/lcp-server/bin/python --json out.json --md out.md
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_proc import free_port  # noqa: E402

SUBJECTS = ["A dragon who guarded a library", "The history of the Roman Empire",
            "Simple tomato soup", "Newton's three laws of motion", "Lighthouse keepers",
            "Small robots in distant galaxies", "Learning a new language",
            "Photosynthesis", "Printing presses", "Cats that play chess", "Rain and rivers",
            "Building a wooden boat", "Honey bees", "Crossing the Sahara", "Vaccines",
            "Wilbur and Orville Wright", "Detectives in foggy London", "Football rules",
            "Volcanoes and plate tectonics", "Baking bread", "Johann Sebastian Bach",
            "Gardens in early spring", "Planets of the solar system", "Steam engines",
            "Foxes and crows", "Great Wall of China", "Marathon training", "Penicillin",
            "Old maps found in attics", "Suspension bridges", "Storms at sea", "Chess openings"]
OPENINGS = ["Write a short story about it.", "Explain it in plain words.",
            "Write an essay on it.", "Tell me everything you know about it."]
SPEED_KEYS = ("tok_per_s", "req_per_s", "tok_per_cpu_s")
LATENCY_KEYS = ("ttft_p50", "ttft_p95", "itl_p50", "itl_p95", "tpot_p50", "latency_p50",
                "latency_p95")


def prompts(n: int) -> List[str]:
    """`n` distinct prompts; they differ from their first words on (nothing for a prefix cache
    to reuse)."""
    k = len(SUBJECTS)
    out = [f"{SUBJECTS[i % k]}. {OPENINGS[(i + i // k) % len(OPENINGS)]}" for i in range(n)]
    if n > k * len(OPENINGS):
        out = [f"{p} ({i})" for i, p in enumerate(out)]
    return out


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """The q-th percentile (0..100), linear between the closest ranks; None for no values."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def median_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def ratio(ours: Optional[float], theirs: Optional[float]) -> Optional[float]:
    return ours / theirs if ours is not None and theirs else None


# --- machine accounting (Linux /proc; zeros elsewhere) ---------------------------------------

def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid`."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy (not idle or waiting for I/O) since boot."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in first[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def wait_for_quiet(pid: int, below: float, limit: float, window: float = 2.0) -> float:
    """Wait (at most `limit` seconds) until processes other than the server `pid` and this one
    keep fewer than `below` cores busy over a `window`-second sample; returns the seconds
    waited (0 when limit is 0)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        m0, s0, o0 = machine_busy_seconds(), process_cpu_seconds(pid), own_cpu_seconds()
        time.sleep(window)
        mine = process_cpu_seconds(pid) - s0 + own_cpu_seconds() - o0
        if (machine_busy_seconds() - m0 - mine) / window < below:
            break
    return time.monotonic() - t0


def load_snapshot() -> Dict:
    """Load averages and the head of `top` (what else runs on the machine)."""
    snap = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "loadavg": list(os.getloadavg()), "cpus": os.cpu_count()}
    if shutil.which("top"):
        r = subprocess.run(["top", "-bn1", "-w", "160"], capture_output=True, text=True)
        snap["top"] = r.stdout.splitlines()[:15]
    return snap


# --- the server subprocess ------------------------------------------------------------------

class Server:
    """`argv` + `--host 127.0.0.1 --port PORT` in a subprocess, ready once /v1/models answers;
    the last lines of its output kept by a thread so that the pipe never fills."""

    def __init__(self, argv: Sequence[str], timeout: float = 300):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log: List[str] = []
        self.proc = subprocess.Popen([*argv, "--host", "127.0.0.1", "--port", str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._tail, daemon=True).start()
        try:
            self._wait(timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _tail(self) -> None:
        for line in self.proc.stdout:
            self.log.append(line.decode(errors="replace"))
            del self.log[:-200]

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                time.sleep(0.3)
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n"
                                   + "".join(self.log[-30:]))
            try:
                if httpx.get(self.base + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in {timeout:.0f} s:\n{''.join(self.log[-30:])}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s (a server finishing an abandoned generation
        before it exits would only delay the next one)."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def accepts_option(python: str, module: str, option: str) -> bool:
    """Whether `python -m module --help` lists `option`."""
    r = subprocess.run([python, "-m", module, "--help"], capture_output=True, text=True,
                       timeout=120)
    return r.returncode == 0 and option in r.stdout


def server_argv(name: str, args) -> List[str]:
    common = ["--model", args.model, "--n_threads", str(args.threads),
              "--n_threads_batch", str(args.threads), "--n_ctx", str(args.n_ctx),
              "--verbose", "false", "--logits_all", "false"]
    if name == "theirs":
        return [args.theirs_python, "-m", "llama_cpp.server", *common,
                "--interrupt_requests", "false"]
    argv = [args.ours_python, "-m", "pyinfer.server", *common]
    if args.n_parallel_used:
        argv += ["--n_parallel", str(args.n_parallel_used)]
    if args.interleave:
        argv += ["--interleave_tokens", str(args.interleave)]
    return argv


# --- clients --------------------------------------------------------------------------------

def request_body(args, prompt: str, max_tokens: int) -> Dict:
    body = {"max_tokens": max_tokens, "temperature": 0, "stream": True}
    if args.force_length:
        body["min_tokens"] = max_tokens
    if args.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


async def stream_one(client: httpx.AsyncClient, url: str, body: Dict) -> Dict:
    """One streaming request: when it was sent, its text chunks' arrival times, its end."""
    t0 = time.perf_counter()
    stamps: List[float] = []
    finish = None
    async with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            text = (await r.aread()).decode(errors="replace")
            raise RuntimeError(f"HTTP {r.status_code}: {text[:300]}")
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue                      # blank separators, `: ping` comments
            data = line[5:].strip()
            if data == "[DONE]":
                break
            choice = json.loads(data)["choices"][0]
            text = choice["delta"].get("content") if "delta" in choice else choice.get("text")
            if text:
                stamps.append(time.perf_counter())
            finish = choice.get("finish_reason") or finish
    end = time.perf_counter()
    tokens = body["max_tokens"] if finish == "length" else len(stamps)
    return {"start": t0, "end": end, "stamps": stamps, "finish_reason": finish, "tokens": tokens}


async def run_clients(base: str, args, n_clients: int, bodies: List[List[Dict]]) -> tuple:
    """`n_clients` concurrent clients, client i sending bodies[i] one after another."""
    url = base + ("/v1/chat/completions" if args.endpoint == "chat" else "/v1/completions")
    results, errors = [], []
    limits = httpx.Limits(max_connections=n_clients + 4, max_keepalive_connections=n_clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0), limits=limits) as client:
        async def worker(i: int) -> None:
            for body in bodies[i]:
                try:
                    results.append(await stream_one(client, url, body))
                except Exception as e:            # reported with the level
                    errors.append(repr(e))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(n_clients)))
        wall = time.perf_counter() - t0
    return results, errors, wall


def level_metrics(results: List[Dict], errors: List[str], wall: float, cpu: Dict) -> Dict:
    """The numbers of one level from its requests (see the module docstring)."""
    tokens = sum(r["tokens"] for r in results)
    ttft = [r["stamps"][0] - r["start"] for r in results if r["stamps"]]
    gaps = [b - a for r in results for a, b in zip(r["stamps"], r["stamps"][1:])]
    tpot = [(r["stamps"][-1] - r["stamps"][0]) / (r["tokens"] - 1)
            for r in results if len(r["stamps"]) > 1 and r["tokens"] > 1]
    lat = [r["end"] - r["start"] for r in results]
    chunks = sum(len(r["stamps"]) for r in results)
    return {"requests": len(results), "errors": errors, "wall_s": wall, "tokens": tokens,
            "not_length": sum(r["finish_reason"] != "length" for r in results),
            "chunks_per_token": chunks / tokens if tokens else None,
            "tok_per_s": tokens / wall, "req_per_s": len(results) / wall,
            "ttft_p50": percentile(ttft, 50), "ttft_p95": percentile(ttft, 95),
            "itl_p50": percentile(gaps, 50), "itl_p95": percentile(gaps, 95),
            "tpot_p50": percentile(tpot, 50),
            "latency_p50": percentile(lat, 50), "latency_p95": percentile(lat, 95),
            "server_cpu_s": cpu["server"],
            "tok_per_cpu_s": tokens / cpu["server"] if cpu["server"] > 0 else None,
            "other_cores": cpu["other_cores"]}


def run_level(server: Server, args, n_clients: int) -> Dict:
    texts = prompts(n_clients * args.requests)
    bodies = [[request_body(args, texts[i * args.requests + k], args.max_tokens)
               for k in range(args.requests)] for i in range(n_clients)]
    s0, m0, o0, t0 = (process_cpu_seconds(server.pid), machine_busy_seconds(), own_cpu_seconds(),
                      time.perf_counter())
    results, errors, wall = asyncio.run(run_clients(server.base, args, n_clients, bodies))
    s1, m1, o1, t1 = (process_cpu_seconds(server.pid), machine_busy_seconds(), own_cpu_seconds(),
                      time.perf_counter())
    other = ((m1 - m0) - (s1 - s0) - (o1 - o0)) / (t1 - t0)
    row = level_metrics(results, errors, wall, {"server": s1 - s0, "other_cores": max(other, 0.0)})
    row["clients"], row["client_cpu_s"] = n_clients, o1 - o0
    row["per_request"] = [{"ttft": r["stamps"][0] - r["start"] if r["stamps"] else None,
                           "latency": r["end"] - r["start"], "tokens": r["tokens"],
                           "chunks": len(r["stamps"]), "finish_reason": r["finish_reason"]}
                          for r in results]
    return row


def warm_up(server: Server, args) -> None:
    """A full-length request, then a short one, one after the other: the first level then
    meets a warm server that has not yet served concurrent requests."""
    for i, n in enumerate((args.max_tokens, 8)):
        body = request_body(args, f"Warm-up number {i}: say something about the sea.", n)
        _, errors, _ = asyncio.run(run_clients(server.base, args, 1, [[body]]))
        if errors:
            raise RuntimeError(f"warm-up failed: {errors[0]}")


def measure(name: str, args, n_clients: int) -> Dict:
    """One level on a fresh server: start it, warm it up, wait for a quiet machine (with
    --quiet-wait), run the level, stop it. With --retries, a level during which other
    processes kept --quiet-below cores or more busy is measured again on a new server; the
    attempt with the least other load is kept."""
    best = None
    for attempt in range(1 + args.retries):
        server = Server(server_argv(name, args))
        try:
            warm_up(server, args)
            waited = wait_for_quiet(server.pid, args.quiet_below, args.quiet_wait)
            loadavg = list(os.getloadavg())
            row = run_level(server, args, n_clients)
        finally:
            server.stop()
        row.update(waited_for_quiet_s=waited, loadavg=loadavg)
        print(f"  {name:6s} clients {n_clients:2d}: {row['tok_per_s']:7.1f} tok/s  "
              f"{row['req_per_s']:5.2f} req/s  ttft p50 {fmt_s(row['ttft_p50'])}  itl p50 "
              f"{fmt_s(row['itl_p50'])}  other cores {row['other_cores']:.2f}"
              + (f"  ERRORS {row['errors'][:2]}" if row["errors"] else ""), flush=True)
        if best is None or row["other_cores"] < best["other_cores"]:
            best = {**row, "kept_attempt": attempt + 1}
        if row["other_cores"] < args.quiet_below:
            break
    best["attempts"] = attempt + 1
    return best


def median_rows(rows: List[Dict], levels: Sequence[int]) -> Dict[int, Dict]:
    """Per level, the median over the repetitions of every number (errors concatenated)."""
    out = {}
    for c in levels:
        mine = [r for r in rows if r["clients"] == c]
        med = {k: median_or_none([r[k] for r in mine]) for k in mine[0]
               if k not in ("errors", "clients", "per_request", "loadavg")}
        med["clients"], med["errors"] = c, [e for r in mine for e in r["errors"]]
        out[c] = med
    return out


# --- report ---------------------------------------------------------------------------------

def fmt_s(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"


def fmt(v: Optional[float], key: str) -> str:
    if v is None:
        return "-"
    if key in LATENCY_KEYS:
        return fmt_s(v)
    return f"{v:.2f}" if key in ("req_per_s", "other_cores") else f"{v:.1f}"


def markdown(report: Dict) -> str:
    names = list(report["medians"])
    both = names == ["ours", "theirs"]
    a = report["args"]
    lines = [f"# Server benchmark: {', '.join(names)}", "",
             f"Model `{os.path.basename(a['model'])}`, {a['threads']} threads, n_ctx {a['n_ctx']}, "
             f"{a['max_tokens']} tokens per streaming {a['endpoint']} request (temperature 0), "
             f"{a['requests']} request(s) per client, medians of {a['reps']} repetition(s). "
             "Ours: n_parallel "
             f"{a['n_parallel_used'] or 'not passed (the server default, or no such option)'}"
             + (f", interleave_tokens {a['interleave']}" if a["interleave"] else "")
             + (f"; theirs: llama-cpp-python {report.get('theirs_version')} with "
                "interrupt_requests false" if "theirs" in names else "") + ".", "",
             f"Machine: {report['load']['start']['cpus']} CPUs; load average "
             f"{' '.join('%.2f' % x for x in report['load']['start']['loadavg'])} at the start, "
             f"{' '.join('%.2f' % x for x in report['load']['end']['loadavg'])} at the end; "
             "other processes kept on average " + ", ".join(
                 f"{n} {statistics.mean(r['other_cores'] for r in med.values()):.2f}"
                 for n, med in report["medians"].items()) + " cores busy during the levels.", ""]
    groups = [("Throughput (higher is better; other cores: the load they were taken under)",
               SPEED_KEYS + ("other_cores",)),
              ("Latency (lower is better)", ("ttft_p50", "ttft_p95", "itl_p50", "itl_p95"))]
    titles = {"tok_per_s": "tok/s", "req_per_s": "req/s", "tok_per_cpu_s": "tok/cpu-s",
              "ttft_p50": "TTFT p50", "ttft_p95": "TTFT p95", "itl_p50": "ITL p50",
              "itl_p95": "ITL p95", "other_cores": "other cores"}
    for title, keys in groups:
        head = ["clients"]
        for k in keys:
            head += [f"{titles[k]} {n}" for n in names]
            head += [f"{titles[k]} ours/theirs"] if both and k != "other_cores" else []
        lines += [f"## {title}", "", "| " + " | ".join(head) + " |",
                  "|" + "---:|" * len(head)]
        for c in a["levels"]:
            cells = [str(c)]
            for k in keys:
                vals = [report["medians"][n][c][k] for n in names]
                cells += [fmt(v, k) for v in vals]
                if both and k != "other_cores":
                    r = ratio(*vals)
                    cells.append("-" if r is None else f"{r:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    errs = {n: sum(len(r["errors"]) for r in report["medians"][n].values()) for n in names}
    if any(errs.values()):
        lines.append(f"Errors: {errs} (see the JSON).")
    return "\n".join(lines) + "\n"


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)        # unwinds through measure's finally: the server stops


def main() -> int:
    signal.signal(signal.SIGTERM, _terminated)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default=None,
                    help="GGUF model (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--threads", type=int, default=2, help="n_threads and n_threads_batch")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16],
                    help="concurrent clients")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per request")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (medians reported)")
    ap.add_argument("--requests", type=int, default=1, help="requests per client per level")
    ap.add_argument("--n-ctx", type=int, default=1024,
                    help="context size (ours with n_parallel: per slot; theirs: its one sequence)")
    ap.add_argument("--n-parallel", type=int, default=16,
                    help="ours: --n_parallel (when the server has it; 0: not passed, its default)")
    ap.add_argument("--interleave", type=int, default=0, help="ours: --interleave_tokens")
    ap.add_argument("--quiet-wait", type=float, default=0.0,
                    help="before each level wait up to this many seconds for the machine to "
                    "be quiet (shared machines; 0: do not wait)")
    ap.add_argument("--quiet-below", type=float, default=0.5,
                    help="quiet: other processes keep fewer cores than this busy")
    ap.add_argument("--retries", type=int, default=0,
                    help="measure a level again (at most this many times) when other "
                    "processes kept --quiet-below cores or more busy during it")
    ap.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    ap.add_argument("--no-force-length", dest="force_length", action="store_false",
                    help="do not send min_tokens=max_tokens (requests may end early)")
    ap.add_argument("--ours-only", action="store_true", help="only our server")
    ap.add_argument("--ours-python", default=sys.executable, help="python with pyinfer[server]")
    ap.add_argument("--theirs-python", default=None,
                    help="python with llama_cpp and its server extras (default: this python)")
    ap.add_argument("--json", default=None, help="write the full results here")
    ap.add_argument("--md", default=None, help="write the markdown tables here")
    args = ap.parse_args()
    if args.model is None:
        from pyinfer.default_model import require_default_model
        args.model = require_default_model()
    args.theirs_python = args.theirs_python or sys.executable
    names = ["ours"] if args.ours_only else ["ours", "theirs"]
    report: Dict = {"load": {"start": load_snapshot()}}
    if not args.ours_only:
        r = subprocess.run([args.theirs_python, "-c", "import llama_cpp.server.app, llama_cpp; "
                            "print(llama_cpp.__version__)"], capture_output=True, text=True)
        if r.returncode != 0:
            ap.error(f"{args.theirs_python} cannot import llama_cpp's server "
                     f"({r.stderr.strip().splitlines()[-1:]}); pass --theirs-python or --ours-only")
        report["theirs_version"] = r.stdout.strip()
        if "pyinfer" in report["theirs_version"]:
            ap.error(f"{args.theirs_python}'s llama_cpp is pyinfer's own compat package "
                     f"({report['theirs_version']}), not llama-cpp-python")
    args.n_parallel_used = None
    if args.n_parallel > 0:
        if accepts_option(args.ours_python, "pyinfer.server", "--n_parallel"):
            args.n_parallel_used = args.n_parallel
        else:
            print("our server has no --n_parallel: it runs one request at a time", flush=True)
    print(f"load average {report['load']['start']['loadavg']}", flush=True)
    reps: Dict[str, List[Dict]] = {n: [] for n in names}
    for i, c in enumerate(args.levels):
        for rep in range(args.reps):
            order = names if (i + rep) % 2 == 0 else names[::-1]
            print(f"clients {c}, rep {rep + 1}/{args.reps}", flush=True)
            for name in order:
                reps[name].append({**measure(name, args, c), "rep": rep})
    report["load"]["end"] = load_snapshot()
    report["args"] = vars(args)
    report["medians"] = {n: median_rows(reps[n], args.levels) for n in names}
    if len(names) == 2:
        report["ratios"] = {c: {k: ratio(report["medians"]["ours"][c][k],
                                         report["medians"]["theirs"][c][k])
                                for k in SPEED_KEYS + LATENCY_KEYS} for c in args.levels}
    report["reps"] = reps
    md = markdown(report)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.md:
        Path(args.md).write_text(md)
    failed = any(r["errors"] for n in names for r in reps[n])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
