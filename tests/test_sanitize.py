"""ggml_sparse and the extension built with sanitizers (opt-in: --run-sanitize; two builds and
the runs take a few minutes on 2 cores).

scripts/sanitize.sh builds each variant into a temporary folder (cmake -DGS_SANITIZE=KIND
-DPYINFER_BUILD_PYTHON=ON -DGS_CUDA=OFF), assembles a package (src/pyinfer plus the sanitized
extension) and runs a command with it first on the path and the sanitizer's runtime preloaded
(Python itself is not instrumented).

- AddressSanitizer: all of tests/test_lifetime.py - Llama.close during a prompt or a decode
  (16 trials in a child), ThreadPool/Context close during Graph.compute (24), two threads on
  one Llama, streams set aside and taken over, calls after close: no AddressSanitizer error.
- ThreadSanitizer: graphs of several op families on pools of 2 to 4 threads, computed many
  times, from two Python threads at once (one shared pool, and two pools); the pool/context
  close race; the server answering concurrent requests while its streams hand the model over
  (interleave_tokens=2). No ThreadSanitizer report may name the library's code. Reports whose
  stacks lie wholly outside it (CPython, numpy: uninstrumented, so TSan sees only part of
  their synchronisation) are not the library's races; they are printed, not failed.
- UndefinedBehaviorSanitizer (a finding aborts): the graphs above and two threads on one
  Llama (every kernel SmolLM2 uses, prompt and decode).
"""
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from test_lifetime import run_child

pytestmark = pytest.mark.sanitize

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
LIBRARY_FRAME = re.compile(r"_ggml_sparse\.|ggml_sparse/src/|ggml_sparse/include/")


def sanitizer(kind: str, out: Path):
    """Build with scripts/sanitize.sh; returns the command prefix that runs in that build."""
    prefix = ["bash", str(ROOT / "scripts" / "sanitize.sh"), kind, str(out), "--"]
    env = {**os.environ, "PYTHON": sys.executable}
    probe = subprocess.run(prefix + [sys.executable, "-c",
                                     "import pyinfer._ggml_sparse as m; print(m.__file__)"],
                           capture_output=True, text=True, env=env, timeout=1800)
    assert probe.returncode == 0, probe.stderr[-4000:] + _log(out / "build.log")
    assert probe.stdout.strip().startswith(str(out / "pkg")), probe.stdout
    return prefix, env


def _log(path: Path) -> str:
    return path.read_text()[-4000:] if path.exists() else ""


def tsan_reports(stderr: str):
    """(reports naming the library's code, other reports) of a ThreadSanitizer run."""
    blocks = [b for b in stderr.split("==================") if "WARNING: ThreadSanitizer" in b]
    ours = [b for b in blocks if LIBRARY_FRAME.search(b)]
    return ours, [b for b in blocks if b not in ours]


@pytest.fixture(scope="module")
def asan(tmp_path_factory):
    return sanitizer("address", tmp_path_factory.mktemp("asan"))


@pytest.fixture(scope="module")
def tsan(tmp_path_factory):
    prefix, env = sanitizer("thread", tmp_path_factory.mktemp("tsan"))
    return prefix, {**env, "TSAN_OPTIONS": "halt_on_error=0 exitcode=0 second_deadlock_stack=1"}


def test_lifetime_under_address_sanitizer(asan, smollm2):
    prefix, env = asan
    proc = subprocess.run(prefix + [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                    str(ROOT / "tests" / "test_lifetime.py")],
                          capture_output=True, text=True, env={**env, "CI": ""}, timeout=1800,
                          cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert "ERROR: AddressSanitizer" not in out, out[-8000:]
    assert proc.returncode == 0, out[-8000:]
    assert " passed" in out and "skipped" not in out, out[-2000:]


def test_thread_pool_under_thread_sanitizer(tsan):
    prefix, env = tsan
    result, proc = run_child("pool_stress", 40, file=HERE, prefix=prefix, env=env)
    assert result["mismatches"] == 0, result
    _, proc2 = run_child("pool_close_race", 12, prefix=prefix, env=env)
    ours, other = tsan_reports(proc.stderr + proc2.stderr)
    print(f"{len(other)} ThreadSanitizer reports outside the library:\n" + "\n".join(other))
    assert not ours, "\n".join(ours)[:12000]


def test_server_under_thread_sanitizer(tsan, smollm2):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    prefix, env = tsan
    result, proc = run_child("server_requests", smollm2, file=HERE, prefix=prefix, env=env)
    assert result["wrong"] == [] and result["statuses"] == [200] * result["requests"], result
    ours, other = tsan_reports(proc.stderr)
    print(f"streams handed back {result['switches']} times; {len(other)} ThreadSanitizer "
          "reports outside the library:\n" + "\n".join(other))
    assert not ours, "\n".join(ours)[:12000]


def test_kernels_under_undefined_behaviour_sanitizer(tmp_path_factory, smollm2):
    prefix, env = sanitizer("undefined", tmp_path_factory.mktemp("ubsan"))
    result, proc = run_child("pool_stress", 5, file=HERE, prefix=prefix, env=env)
    assert result["mismatches"] == 0
    result, proc2 = run_child("concurrent_calls", smollm2, 2, prefix=prefix, env=env)
    assert result["wrong"] == []
    assert "runtime error:" not in proc.stderr + proc2.stderr


# ---- scenarios run in the sanitized child ---------------------------------------------------

def pool_stress(runs: str) -> dict:
    """Graphs mixing matmuls (F32, Q8_0, Q4_0), norms, GLU, softmax and row gathers on pools
    of 2-4 threads, each run `runs` times; then two Python threads at once, sharing one pool
    and on two pools. Every result must equal the graph's 1-thread result."""
    from pyinfer.tensor import Context, GGMLType, Graph, ThreadPool, Unary
    rng = np.random.default_rng(0)
    mismatches, runs = 0, int(runs)

    def build(ctx, n_tok):
        w = rng.standard_normal((256, 128)).astype(np.float32)
        x = ctx.from_numpy(rng.standard_normal((n_tok, 128)).astype(np.float32))
        h = ctx.rms_norm(x, 1e-5)
        gate = ctx.mul_mat(ctx.from_numpy(w, t=GGMLType.Q8_0), h)
        up = ctx.mul_mat(ctx.from_numpy(w, t=GGMLType.Q4_0), h)
        y = ctx.glu(gate, up, Unary.SILU)
        y = ctx.mul_mat(ctx.from_numpy(rng.standard_normal((128, 256)).astype(np.float32)), y)
        y = ctx.add(ctx.soft_max(ctx.scale(y, 0.1)), x)
        rows = ctx.from_numpy(np.arange(n_tok, dtype=np.int32)[::-1].copy())
        return ctx.get_rows(y, rows)

    def check(g, out, pool, want) -> int:
        bad = 0
        for _ in range(runs):
            g.compute(pool)
            bad += out.numpy().tobytes() != want
        return bad

    with ThreadPool(1) as one, ThreadPool(4) as shared, ThreadPool(2) as other:
        graphs = []
        for n_tok in (1, 3, 8):
            ctx = Context(16 << 20)
            out = build(ctx, n_tok)
            g = Graph(ctx).build(out).plan(4)
            g.compute(one)
            graphs.append((ctx, g, out, out.numpy().tobytes()))
        for n in (2, 3, 4):
            with ThreadPool(n) as pool:
                for _, g, out, want in graphs:
                    mismatches += check(g, out, pool, want)
        counts = []
        pairs = [(graphs[0], shared), (graphs[1], shared), (graphs[2], other)]

        def run(graph, pool):
            _, g, out, want = graph
            counts.append(check(g, out, pool, want))
        threads = [threading.Thread(target=run, args=pair) for pair in pairs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        mismatches += sum(counts) + (len(pairs) - len(counts))
        for ctx, *_ in graphs:
            ctx.close()
    return {"mismatches": int(mismatches)}


def server_requests(model_path: str) -> dict:
    """The server (in-process, TestClient) with interleave_tokens=2: four requests, two of
    them streams, sent one after another and then all at once; the concurrent answers must
    equal the sequential ones."""
    from fastapi.testclient import TestClient

    from pyinfer.server import Settings, create_app
    app = create_app(Settings(model=model_path, model_alias="smol", n_ctx=256, n_threads=2,
                              n_threads_batch=2, verbose=False, interleave_tokens=2))
    requests = [("The capital of France is", False), ("Water boils at", True),
                ("My favourite fruit is the", True), ("The first president of", False)]
    statuses = []

    def text(client, prompt, stream):
        r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 6,
                                                 "temperature": 0.0, "stream": stream})
        statuses.append(r.status_code)
        if not stream:
            return r.json()["choices"][0]["text"]
        data = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        return "".join(json.loads(d)["choices"][0]["text"] for d in data if d != "[DONE]")

    with TestClient(app) as client:
        want = [text(client, p, s) for p, s in requests]
        got = [None] * len(requests)

        def send(i, prompt, stream):
            got[i] = text(client, prompt, stream)
        threads = [threading.Thread(target=send, args=(i, p, s))
                   for i, (p, s) in enumerate(requests)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    switches = getattr(app.state.hub, "switches", None)    # sequences handed back
    app.state.hub.close()
    wrong = [(p, w, g) for (p, _), w, g in zip(requests, want, got) if w != g]
    return {"wrong": wrong, "statuses": statuses, "requests": 2 * len(requests),
            "switches": switches}


if __name__ == "__main__":
    scenario, *args = sys.argv[1:]
    scenarios = {"pool_stress": pool_stress, "server_requests": server_requests}
    print(json.dumps(scenarios[scenario](*args)))
