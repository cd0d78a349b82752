"""Continuous batching in the server (n_parallel slots, server/batching.py), over a real
localhost socket: concurrent greedy answers equal the answers of the same requests sent
one after another and those of an independent single-sequence `Llama` (batch invariance:
the engine computes a token alike alone or batched); the scheduler's metrics show decode
steps of several sequences while requests overlap; streams run concurrently; a client that
hangs up frees its slot and leaves no queued work; 50 requests through 2 slots leave the
cache and the queues clean; the prefix cache copies a shared system prompt from a busy slot
(fewer prompt tokens evaluated, same answer); /health and /metrics."""
import json
import re
import threading
import time

import pytest

_REASON = "server tests need the [server] extra plus httpx: pip install 'pyinfer[server]' httpx"
for _mod in ("fastapi", "sse_starlette", "pydantic_settings", "uvicorn", "httpx"):
    pytest.importorskip(_mod, reason=_REASON)

import httpx  # noqa: E402

from pyinfer import Llama  # noqa: E402
from pyinfer.server import Settings, create_app  # noqa: E402
from server_util import serve as _serve  # noqa: E402

N_CTX = 512
MAX_TOKENS = 8
SYSTEM = ("You are a careful assistant for a small bakery. Answer in one short sentence. "
          "The bakery opens at seven, closes at six, sells bread, cakes and coffee, and is "
          "closed on Mondays. Never invent prices. ") * 2

REQUESTS = [
    ("/v1/completions", {"prompt": "The capital of France is"}),
    ("/v1/completions", {"prompt": "One, two, three, four,", "logprobs": 2}),
    ("/v1/completions", {"prompt": "def fibonacci(n):"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Name a colour."}]}),
    ("/v1/chat/completions", {"messages": [
        {"role": "user", "content": "Give a JSON object with a key name."}],
        "response_format": {"type": "json_object"}, "max_tokens": 16}),
    ("/v1/chat/completions", {"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say yes or no."}], "logprobs": True, "top_logprobs": 2}),
]


@pytest.fixture(scope="module")
def par(smollm2):
    """A server of 4 parallel slots."""
    yield from _serve(create_app(Settings(model=str(smollm2), model_alias="smol", n_ctx=N_CTX,
                                          verbose=False, n_parallel=4)))


@pytest.fixture(scope="module")
def oracle(smollm2):
    """An independent single-sequence Llama: the answers of requests run alone."""
    llm = Llama(str(smollm2), n_ctx=N_CTX, verbose=False, logits_all=True)
    yield llm
    llm.close()


def _post(base, path, body, timeout=120):
    r = httpx.post(base + path, json={"temperature": 0, "max_tokens": MAX_TOKENS, **body},
                   timeout=timeout)
    assert r.status_code == 200, r.text
    return r.json()


def _answer(out):
    """What must not change: text (or message), finish reason, logprobs."""
    c = out["choices"][0]
    return (c.get("text"), c.get("message"), c["finish_reason"], c.get("logprobs"),
            out["usage"]["completion_tokens"])


def _concurrently(fn, items):
    results = [None] * len(items)
    errors = []
    barrier = threading.Barrier(len(items))

    def run(i):
        try:
            barrier.wait()
            results[i] = fn(items[i])
        except BaseException as e:       # reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def _metrics(base):
    r = httpx.get(base + "/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for line in r.text.splitlines():
        m = re.fullmatch(r"pyinfer:(\w+)(\{[^}]*\})? (\S+)", line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def _oracle_answer(oracle, path, body):
    oracle.reset()
    kw = {"temperature": 0, "max_tokens": MAX_TOKENS, "repeat_penalty": 1.1, **body}
    if path == "/v1/completions":
        out = oracle.create_completion(kw.pop("prompt"), **kw)
    else:
        out = oracle.create_chat_completion(**kw)
    return _answer(json.loads(json.dumps(out)))


def test_concurrent_answers_equal_sequential(par, oracle):
    base, app = par
    sequential = [_answer(_post(base, p, b)) for p, b in REQUESTS]
    before = _metrics(base)
    concurrent = [_answer(o) for o in _concurrently(lambda pb: _post(base, *pb), REQUESTS)]
    after = _metrics(base)
    assert after["prefix_cache_hit_tokens_total"] > before["prefix_cache_hit_tokens_total"]
    assert concurrent == sequential
    assert [_oracle_answer(oracle, p, b) for p, b in REQUESTS] == sequential
    assert concurrent[4][1]["content"].startswith("{")   # the JSON grammar held
    assert concurrent[1][3]["top_logprobs"][0] and concurrent[5][3]["content"]
    # the decode steps of the overlapping requests were batched
    assert after["decode_batch_size_max"] > 1
    steps = after["n_decode_total"] - before["n_decode_total"]
    tokens = after["tokens_predicted_total"] - before["tokens_predicted_total"]
    assert tokens / steps > 1.5, (tokens, steps)
    health = httpx.get(base + "/health").json()
    assert health == {"status": "ok", "model": "smol", "slots_idle": 4, "slots_processing": 0}


def _stream_text(base, body, stop_after=None):
    text, n = [], 0
    with httpx.stream("POST", base + "/v1/completions", timeout=120,
                      json={"temperature": 0, "stream": True, **body}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                break
            text.append(json.loads(line[6:])["choices"][0]["text"])
            n += 1
            if stop_after is not None and n >= stop_after:
                return n
    return "".join(text)


def test_streams_run_concurrently(par):
    base, _ = par
    bodies = [{"prompt": p, "max_tokens": 16} for p in
              ("Once upon a time", "The best way to learn", "In 1492,")]
    want = [_post(base, "/v1/completions", b)["choices"][0]["text"] for b in bodies]
    before = _metrics(base)
    got = _concurrently(lambda b: _stream_text(base, b), bodies)
    after = _metrics(base)
    assert got == want
    assert after["decode_batch_size_max"] > 1
    assert after["tokens_predicted_total"] - before["tokens_predicted_total"] \
        > after["n_decode_total"] - before["n_decode_total"]


def _wait_idle(base, app, timeout=10.0):
    pool = app.state.hub.pool
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = httpx.get(base + "/health", timeout=30).json()
        if h["slots_processing"] == 0 and pool.scheduler.queued == 0:
            return time.monotonic() - (deadline - timeout)
        time.sleep(0.02)
    raise AssertionError(f"slots still busy: {httpx.get(base + '/health').json()}")


def test_disconnected_stream_frees_its_slot(par):
    """A streaming client hangs up after 2 chunks of 400: its slot is free again well
    before the generation would have ended, and nothing of it stays queued."""
    base, app = par
    body = {"prompt": "Once upon a time, there was a dragon who", "max_tokens": 400}
    t0 = time.monotonic()
    assert _stream_text(base, body, stop_after=2) == 2
    _wait_idle(base, app)
    took = time.monotonic() - t0
    sched = app.state.hub.pool.scheduler
    assert not sched._pending and not sched._cancels and sched.queued == 0
    m = _metrics(base)
    assert m["requests_processing"] == 0
    # the 400 tokens would take far longer than this (> 40 ms a decode step here)
    assert took < 5.0, took
    for slot in app.state.hub.pool.slots:       # the caches agree with the slots' tokens
        assert app.state.hub.llama._engine.seq_pos[slot.index] == slot.sequence.n_tokens


def test_prefix_cache_copies_a_busy_slots_prompt(par, oracle):
    """Two chats with the same long system prompt: the second, sent while the first is
    still streaming (so it takes another slot), copies the shared prefix from the first's
    slot instead of evaluating it, and both answer as they would alone."""
    base, app = par

    def chat(q, n):
        return {"messages": [{"role": "system", "content": SYSTEM},
                             {"role": "user", "content": q}], "max_tokens": n}
    first = chat("When do you open?", 24)
    second = chat("Do you sell coffee?", MAX_TOKENS)
    n_system = len(oracle.tokenize(SYSTEM.encode(), add_bos=False))
    parts = []
    with httpx.stream("POST", base + "/v1/chat/completions", timeout=120,
                      json={"temperature": 0, "stream": True, **first}) as r:
        lines = r.iter_lines()
        for line in lines:                  # the first chunk: its prompt is in its slot
            if line.startswith("data: "):
                parts.append(json.loads(line[6:])["choices"][0]["delta"].get("content", ""))
                break
        m0 = _metrics(base)
        got = _post(base, "/v1/chat/completions", second)
        m1 = _metrics(base)
        for line in lines:
            if line.startswith("data: ") and line != "data: [DONE]":
                parts.append(json.loads(line[6:])["choices"][0]["delta"].get("content") or "")
    evaluated = m1["prompt_tokens_total"] - m0["prompt_tokens_total"]
    assert m1["prefix_cache_copied_tokens_total"] - m0["prefix_cache_copied_tokens_total"] \
        >= n_system
    assert evaluated <= got["usage"]["prompt_tokens"] - n_system
    assert _answer(got) == _oracle_answer(oracle, "/v1/chat/completions", second)
    want_first = _oracle_answer(oracle, "/v1/chat/completions", first)
    assert "".join(parts) == want_first[1]["content"]
    # the same request again: its own slot keeps the whole prompt but two tokens
    _wait_idle(base, app)
    m2 = _metrics(base)
    again = _post(base, "/v1/chat/completions", second)
    m3 = _metrics(base)
    assert _answer(again) == _answer(got)
    assert m3["prompt_tokens_total"] - m2["prompt_tokens_total"] == 2


@pytest.fixture(scope="module")
def two(smollm2):
    """A server of 2 slots, at most 2 requests queued, prompts in chunks of 32 tokens."""
    yield from _serve(create_app(Settings(model=str(smollm2), n_ctx=256, verbose=False,
                                          n_parallel=2, max_queued_requests=2, n_batch=32,
                                          n_ubatch=32)))


def test_slot_reuse_leaks_nothing(two):
    """50 short requests from 4 clients at a time through 2 slots: all answered alike, and
    afterwards the slots are free, the scheduler holds no queued work or cancel event, and
    every sequence's cache positions equal its tokens."""
    base, app = two
    prompts = [f"Count to {i % 5 + 2}:" for i in range(50)]
    want = {p: _post(base, "/v1/completions", {"prompt": p, "max_tokens": 2})["choices"][0]
            ["text"] for p in set(prompts)}

    def one(p):
        return _post(base, "/v1/completions", {"prompt": p, "max_tokens": 2})["choices"][0]["text"]
    got = []
    for i in range(0, 50, 4):       # 2 running, 2 queued (max_queued_requests)
        got += _concurrently(one, prompts[i:i + 4])
    assert got == [want[p] for p in prompts]
    pool, eng = app.state.hub.pool, app.state.hub.llama._engine
    sched = pool.scheduler
    assert not any(s.busy for s in pool.slots)
    assert not sched._pending and not sched._cancels and sched.queued == 0
    for slot in pool.slots:
        assert eng.seq_pos[slot.index] == slot.sequence.n_tokens <= 256
        assert sched.held[slot.index] == slot.sequence.tokens
    assert sum(s.n_requests for s in pool.slots) >= 50 + len(want)
    assert httpx.get(base + "/health").json()["slots_idle"] == 2


def test_full_queue_is_refused_with_429(two):
    """2 slots busy and 2 requests queued: the next is refused with 429 at once."""
    base, app = two
    body = {"prompt": "Once upon a time, there was a dragon who", "max_tokens": 16,
            "temperature": 0}
    codes = _concurrently(lambda _: httpx.post(base + "/v1/completions", json=body,
                                               timeout=120).status_code, list(range(6)))
    assert codes.count(200) >= 4 and codes.count(429) >= 1 and set(codes) <= {200, 429}
    _wait_idle(base, app)


def test_disconnect_during_a_long_prompt_cancels_it(two):
    """A client that leaves while its long prompt is evaluated (7 chunks of 32 tokens):
    the prompt stops between two chunks (its evaluation dropped), the slot comes back at
    once and its cache is cut back to what its sequence holds."""
    base, app = two
    m0 = _metrics(base)
    t0 = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        httpx.post(base + "/v1/completions", timeout=0.3,
                   json={"prompt": "word " * 200, "max_tokens": 4, "temperature": 0})
    _wait_idle(base, app)
    took = time.monotonic() - t0
    m1 = _metrics(base)
    assert m1["requests_cancelled_evaluations_total"] == \
        m0["requests_cancelled_evaluations_total"] + 1
    assert m1["prompt_tokens_total"] - m0["prompt_tokens_total"] < 200
    eng = app.state.hub.llama._engine
    for slot in app.state.hub.pool.slots:
        assert eng.seq_pos[slot.index] == slot.sequence.n_tokens
    assert took < 5.0, took


def test_metrics_follow_the_api_key_and_single_slot_servers(smollm2):
    """/metrics needs the API key (as every endpoint but /health); a server given a
    single-sequence Llama serves one request at a time and reports the request gauges."""
    from fastapi.testclient import TestClient
    from pyinfer.server import ModelSettings, ServerSettings
    llm = Llama(str(smollm2), n_ctx=128, verbose=False)
    app = create_app(server_settings=ServerSettings(api_key="sesame", n_parallel=4),
                     model_settings=[ModelSettings(model=str(smollm2))], llama=llm)
    try:
        with TestClient(app) as c:
            assert app.state.hub.n_parallel == 1 and app.state.hub.pool is None
            assert c.get("/metrics").status_code == 401
            assert c.get("/health").json() == {"status": "ok", "model": app.state.hub.loaded_alias}
            r = c.get("/metrics", headers={"Authorization": "Bearer sesame"})
            assert r.status_code == 200
            text = r.text
            assert "pyinfer:requests_processing 0" in text and "pyinfer:n_parallel 1" in text
            assert "prompt_tokens_total" not in text
    finally:
        app.state.hub.close()


class _CancelAfterFirstChunk:
    """The engine, except that its first prompt chunk sets `event` (a client leaving
    while its prompt is evaluated)."""

    def __init__(self, engine, event):
        self._engine, self._event = engine, event

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def decode(self, *args, **kwargs):
        out = self._engine.decode(*args, **kwargs)
        self._event.set()
        return out


def test_scheduler_drops_a_cancelled_prompt_and_cuts_its_cache(smollm2):
    """Between two chunks of a prompt the scheduler sees its request cancelled: the request
    thread gets ClientGone, the sequence's cache is cut back to where the prompt started,
    nothing stays queued, and the sequence then evaluates as if nothing happened (logits
    bit-identical to a plain decode)."""
    import numpy as np
    from pyinfer.server.batching import Scheduler
    from pyinfer.server.generation import ClientGone
    llm = Llama(str(smollm2), n_ctx=128, n_batch=16, n_ubatch=16, n_seq_max=2, verbose=False)
    try:
        eng = llm._engine
        cancel = threading.Event()
        sched = Scheduler(_CancelAfterFirstChunk(eng, cancel))
        try:
            sched.join(1, cancel)
            start = sched.runner(1, [1, 2, 3], False)           # 3 tokens held before
            assert eng.seq_pos[1] == 3 and cancel.is_set()      # (set after the chunk)
            cancel.clear()
            with pytest.raises(ClientGone):
                sched.runner(1, list(range(100, 160)), False)   # 4 chunks of 16
            assert eng.seq_pos[1] == 3 and sched.held[1] == [1, 2, 3]
            assert sched.metrics()["dropped"] == 1 and sched.queued == 0
            assert sched.metrics()["prompt_tokens"] == 3 + 16
            sched.leave(1)
            got = sched.runner(1, [7, 8], False)
            eng.truncate(0, seq=0)
            want = eng.decode([1, 2, 3], seq=0)
            assert np.array_equal(start, want)
            want = eng.decode([7, 8], seq=0)
            assert np.array_equal(got, want)
        finally:
            sched.close()
    finally:
        llm.close()


def test_scheduler_batches_speculative_drafts(smollm2):
    """A slot whose Llama has a draft model: the verification of [token] + draft goes through
    the scheduler as one rowwise item of a decode batch, and the text equals plain decoding."""
    from pyinfer import Llama
    from pyinfer.server.batching import Scheduler
    from pyinfer.speculative import LlamaPromptLookupDecoding
    prompt = "Repeat after me: one two three four five six. Again: one two three four five six. Again:"
    plain = Llama(smollm2, n_ctx=256, n_threads=2, verbose=False)
    llm = Llama(smollm2, n_ctx=256, n_threads=2, verbose=False, n_seq_max=2,
                draft_model=LlamaPromptLookupDecoding(num_pred_tokens=4))
    sched = Scheduler(llm.engine)
    try:
        want = plain.create_completion(prompt, max_tokens=24, temperature=0)["choices"][0]["text"]
        seq = llm.sequence(1, runner=sched.runner)
        with llm.using(seq):
            got = llm.create_completion(prompt, max_tokens=24, temperature=0)["choices"][0]["text"]
        assert got == want
        assert llm.spec_stats.accepted > 0
        assert sched.n_decode_tokens > sched.n_decode_batches   # several tokens per verification
    finally:
        sched.close()
        llm.close()
        plain.close()
