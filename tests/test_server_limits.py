"""The server's limits and its 4xx answers: request body size, prompt tokens, logprobs,
top_logprobs, n, embedding inputs; every invalid request gets an OpenAI-shaped 4xx naming
the field; /health answers while a request is being prepared; the memory a big request
used is given back when the model goes idle.

Oracles: an independent `Llama` on the same file (its token counts, its answers for each
seed), the configured limits themselves, the process's resident memory from /proc, and
wall-clock latency measured by the client."""
import json
import threading
import time

import numpy as np
import pytest

_REASON = "server tests need the [server] extra: pip install 'pyinfer[server]' httpx"
for _mod in ("fastapi", "sse_starlette", "pydantic_settings", "httpx", "uvicorn"):
    pytest.importorskip(_mod, reason=_REASON)

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from pyinfer import Llama  # noqa: E402
from pyinfer.server import Settings, create_app  # noqa: E402
from pyinfer.server.memory import release_rows  # noqa: E402

N_CTX = 256
LIMITS = dict(max_request_bytes=64 << 10, max_prompt_tokens=40, max_n=3,
              max_embedding_inputs=3)
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def oracle(smollm2):
    llm = Llama(str(smollm2), n_ctx=N_CTX, verbose=False, logits_all=True)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def client(smollm2):
    app = create_app(Settings(model=str(smollm2), model_alias="smol", n_ctx=N_CTX,
                              verbose=False, embedding=True, **LIMITS))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    app.state.hub.close()


def error_of(r, status: int) -> dict:
    """The OpenAI-shaped error of response `r`, which must have `status`."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    assert body["error"]["type"] == ("invalid_request_error" if status < 500
                                     else "internal_server_error")
    return body["error"]


def prompt_tokens(oracle, **request) -> int:
    """How many prompt tokens the independent Llama counts for a request."""
    oracle.reset()
    if "messages" in request:
        out = oracle.create_chat_completion(max_tokens=1, **request)
    else:
        out = oracle.create_completion(max_tokens=1, **request)
    return out["usage"]["prompt_tokens"]


def test_body_size_limit(client):
    limit = LIMITS["max_request_bytes"]
    body = json.dumps({"prompt": "a" * limit}).encode()
    err = error_of(client.post("/v1/completions", content=body,
                               headers={"Content-Type": "application/json"}), 413)
    assert f"limit of {limit} bytes (max_request_bytes)" in err["message"]

    def chunks():               # no Content-Length: counted while read
        for _ in range(4):
            yield b" " * (limit // 2)
    err = error_of(client.post("/v1/completions", content=chunks(),
                               headers={"Content-Type": "application/json"}), 413)
    assert "max_request_bytes" in err["message"]
    just_under = json.dumps({"prompt": "hi", "max_tokens": 1, "stop": ["x" * (limit - 100)]})
    assert len(just_under) <= limit
    assert client.post("/v1/completions", content=just_under.encode(),
                       headers={"Content-Type": "application/json"}).status_code == 200


def _text_of_tokens(oracle, n: int, **shape) -> str:
    """A text whose request (completion, or chat with `shape`) has exactly n prompt tokens."""
    for k in range(1, 200):
        text = "hello" + " hello" * k
        req = ({"messages": [{"role": "user", "content": text}]} if shape.get("chat")
               else {"prompt": text})
        if prompt_tokens(oracle, **req) == n:
            return text
    raise AssertionError(f"no text of {n} tokens")


def test_prompt_token_limit_completions(client, oracle):
    limit = LIMITS["max_prompt_tokens"]
    at = _text_of_tokens(oracle, limit)
    r = client.post("/v1/completions", json={"prompt": at, "max_tokens": 1})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == limit
    over = _text_of_tokens(oracle, limit + 1)
    for stream in (False, True):        # a stream too: an HTTP error, not an error event
        err = error_of(client.post("/v1/completions", json={
            "prompt": over, "max_tokens": 2, "stream": stream}), 400)
        assert err["code"] == "context_length_exceeded"
        assert err["message"].startswith(f"This model's maximum context length is {limit} "
                                         f"tokens, however you requested {limit + 3} tokens "
                                         f"({limit + 1} in your prompt; 2 for")


def test_prompt_token_limit_chat(client, oracle):
    """Rejected before evaluation when the text alone is too long, and exactly (template
    included) before the first token otherwise."""
    limit = LIMITS["max_prompt_tokens"]
    at = _text_of_tokens(oracle, limit, chat=True)
    over = _text_of_tokens(oracle, limit + 1, chat=True)
    r = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": at}], "max_tokens": 1})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == limit
    for content, n in ((over, limit + 1), ("hello " * 60, None)):
        err = error_of(client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": content}], "max_tokens": 1}), 400)
        assert err["code"] == "context_length_exceeded"
        assert f"maximum context length is {limit} tokens" in err["message"]
        if n is not None:
            assert f"({n} in the messages" in err["message"]


def test_prompt_limit_above_the_context_is_the_context(smollm2, oracle):
    app = create_app(Settings(model=str(smollm2), n_ctx=N_CTX, verbose=False,
                              max_prompt_tokens=10 * N_CTX), llama=oracle)
    with TestClient(app) as c:
        err = error_of(c.post("/v1/completions", json={"prompt": "hello " * N_CTX}), 400)
    assert f"maximum context length is {N_CTX} tokens" in err["message"]


def test_logprobs_caps(client, smollm2, oracle):
    """OpenAI: completions logprobs at most 5, chat top_logprobs at most 20; each a
    setting."""
    r = client.post("/v1/completions", json={"prompt": "The capital of France is",
                                             "logprobs": 5, "echo": True, "max_tokens": 2})
    assert r.status_code == 200
    tops = r.json()["choices"][0]["logprobs"]["top_logprobs"]
    assert all(t is None or 5 <= len(t) <= 6 for t in tops) and any(tops)
    for n in (6, 1_000_000):
        err = error_of(client.post("/v1/completions", json={
            "prompt": "hi", "logprobs": n, "echo": True}), 400)
        assert err["param"] == "logprobs" and f"at most 5 (this server's max_logprobs), " \
            f"got {n}" in err["message"]
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "logprobs": True}
    r = client.post("/v1/chat/completions", json={**chat, "top_logprobs": 20})
    assert r.status_code == 200
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert content and all(20 <= len(c["top_logprobs"]) <= 21 for c in content)
    err = error_of(client.post("/v1/chat/completions", json={**chat, "top_logprobs": 21}), 400)
    assert err["param"] == "top_logprobs" and "max_top_logprobs" in err["message"]
    app = create_app(Settings(model=str(smollm2), n_ctx=N_CTX, verbose=False, max_logprobs=8),
                     llama=oracle)
    with TestClient(app) as c:
        assert c.post("/v1/completions", json={"prompt": "hi", "logprobs": 8,
                                               "max_tokens": 1}).status_code == 200
        assert c.post("/v1/completions", json={"prompt": "hi", "logprobs": 9}).status_code == 400


def test_n_choices_are_seeded_generations(client, oracle):
    """n choices: choice i is what Llama answers with seed + i."""
    body = {"prompt": "Once upon a time", "max_tokens": 6, "temperature": 1.0, "seed": 11}
    want = []
    for i in range(3):
        oracle.reset()
        want.append(oracle.create_completion(body["prompt"], max_tokens=6, temperature=1.0,
                                             seed=11 + i, repeat_penalty=1.1))
    r = client.post("/v1/completions", json={**body, "n": 3})
    assert r.status_code == 200, r.text
    got = r.json()
    assert [c["index"] for c in got["choices"]] == [0, 1, 2]
    assert [c["text"] for c in got["choices"]] == [w["choices"][0]["text"] for w in want]
    assert len({c["text"] for c in got["choices"]}) > 1
    assert got["usage"]["completion_tokens"] == sum(w["usage"]["completion_tokens"]
                                                    for w in want)
    r = client.post("/v1/completions", json={**body, "n": 2, "stream": True})
    events = [json.loads(line[6:]) for line in r.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    texts = ["".join(e["choices"][0]["text"] for e in events if e["choices"][0]["index"] == i)
             for i in range(2)]
    assert texts == [w["choices"][0]["text"] for w in want[:2]]
    assert len({e["id"] for e in events}) == 1
    chat = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Name a fruit."}], "n": 2, "max_tokens": 4,
        "temperature": 0}).json()
    assert [c["index"] for c in chat["choices"]] == [0, 1]
    assert chat["choices"][0]["message"] == chat["choices"][1]["message"]   # greedy
    for extra, param in (({"n": 4}, "n"), ({"n": 0}, "n"), ({"n": 2, "best_of": 3}, "best_of"),
                         ({"n": 2, "best_of": 1}, "best_of")):
        assert error_of(client.post("/v1/completions", json={**body, **extra}),
                        400)["param"] == param
    assert client.post("/v1/completions", json={**body, "n": 2, "best_of": 2}).status_code == 200


def test_embedding_inputs_cap(client):
    assert client.post("/v1/embeddings", json={"input": ["a", "b", "c"]}).status_code == 200
    err = error_of(client.post("/v1/embeddings", json={"input": ["a", "b", "c", "d"]}), 400)
    assert err["param"] == "input" and "max_embedding_inputs" in err["message"]


CHAT_OK = [{"role": "user", "content": "hi"}]
INVALID = [  # (path, json body or raw bytes, expected param or None, words in the message)
    ("/v1/completions", b"{not json", None, "not valid JSON"),
    ("/v1/completions", b"[1, 2]", None, ""),
    ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, "temperature", "number"),
    ("/v1/completions", {"prompt": {"a": 1}}, "prompt", ""),
    ("/v1/completions", {"prompt": "hi", "stop": 5}, "stop", ""),
    ("/v1/completions", {"prompt": "hi", "max_tokens": -1}, "max_tokens", ""),
    ("/v1/completions", {"prompt": ["a", "b"]}, "prompt", "one prompt"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"-1": 5}}, "logit_bias",
     "token id -1 is out of range (0 to 49151)"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"49152": 5}}, "logit_bias",
     "token id 49152 is out of range"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"x": 5}}, "logit_bias", "token ids"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"5": "big"}}, "logit_bias", "logit_bias.5"),
    ("/v1/chat/completions", {"messages": "hi"}, "messages", ""),
    ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, "messages", "'role'"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages", "'content'"),
    ("/v1/chat/completions", {"messages": [{"role": 3, "content": "x"}]}, "messages", "role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": None}]}, "messages",
     "may not be null"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages",
     "string or a list"),
    ("/v1/chat/completions", {"messages": ["hi"]}, "messages", ""),
    ("/v1/chat/completions", {"messages": CHAT_OK, "tools": [{"type": "function"}]}, "tools",
     "tools.0"),
    ("/v1/chat/completions", {"messages": CHAT_OK, "tools": [{"function": {"x": 1}}]},
     "tools", "name"),
    ("/v1/chat/completions", {"messages": CHAT_OK, "tool_choice": "always"}, "tool_choice", ""),
    ("/v1/chat/completions", {"messages": CHAT_OK, "response_format": {"type": "xml"}}, None,
     "response_format"),
    ("/v1/embeddings", {"input": 5}, "input", ""),
    ("/extras/detokenize", {"tokens": [10 ** 9]}, None, "out of range"),
    ("/extras/tokenize", {}, "input", ""),
]


@pytest.mark.parametrize("path,body,param,words", INVALID)
def test_invalid_requests_are_openai_shaped_400s(client, path, body, param, words):
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = client.post(path, json=body)
    err = error_of(r, 400)
    assert err["param"] == param and words in err["message"], err
    assert "Traceback" not in err["message"] and "File \"" not in err["message"]


def test_other_4xx_codes(client):
    assert error_of(client.get("/v1/nothing"), 404)["message"] == "Not Found"
    r = client.put("/v1/completions", json={})
    assert error_of(r, 405)["message"] == "Method Not Allowed" and "POST" in r.headers["allow"]


def test_unknown_fields_are_ignored(client):
    """As llama-cpp-python (and for clients of newer API versions): not an error."""
    r = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1,
                                             "stream_options": {"include_usage": True},
                                             "frobnicate": [1, 2]})
    assert r.status_code == 200 and r.json()["choices"][0]["index"] == 0


def test_health_answers_while_a_request_is_prepared(smollm2, oracle):
    """A request whose preparation takes seconds (logit_bias given as 5 MB of text, which
    must be tokenized) runs in a worker thread: /health, polled meanwhile, keeps answering
    within a second, and within half the request's time. (The text holds special tokens, so it is tokenized as many
    fragments; the `tokenizers` call for a single huge fragment holds the GIL throughout,
    which no thread can help: see docs/server.md.)"""
    import uvicorn
    app = create_app(Settings(model=str(smollm2), n_ctx=N_CTX, verbose=False,
                              max_request_bytes=16 << 20), llama=oracle)
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    text = "hello world<|im_end|>" * 250_000                   # 5.25 MB
    done = {}

    def hostile():
        t0 = time.perf_counter()
        done["r"] = httpx.post(base + "/v1/completions", timeout=300, json={
            "prompt": "hi", "max_tokens": 1, "logit_bias": {text: 0.5},
            "logit_bias_type": "tokens"})
        done["s"] = time.perf_counter() - t0

    try:
        worker = threading.Thread(target=hostile)
        worker.start()
        latencies = []
        while worker.is_alive():
            t0 = time.perf_counter()
            assert httpx.get(base + "/health", timeout=30).json()["status"] == "ok"
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.02)
        worker.join()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert done["r"].status_code == 200, done["r"].text
    # the preparation lasted long enough to be polled several times (each poll itself waits for
    # the tokenizer's GIL holds: 70-150 ms apiece on the 2-core machine)
    assert done["s"] > 1.0 and len(latencies) >= 3, (done["s"], latencies)
    # on the event loop the whole preparation would be one stall (one /health waiting about as
    # long as the request); in a thread what is left are the tokenizer's own short holds of the
    # GIL. Relative, not absolute: a loaded CI machine slows both sides alike.
    assert max(latencies) < 0.75 * done["s"], (done["s"], sorted(latencies)[-5:])


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="Linux /proc")
def test_release_rows_gives_pages_back():
    a = np.zeros((256, 65536), dtype=np.float32)                # 64 MiB
    a[:] = 1.0
    before = rss_mib()
    released = release_rows(a, 64)
    assert released >= 47 << 20
    assert before - rss_mib() >= 40
    assert (a[:64] == 1.0).all()                                # kept rows untouched
    assert np.count_nonzero(a[64:]) <= 2 * 4096 // 4            # all but partial pages
    assert release_rows(a[:, :10], 0) == 0                       # a view: untouched


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="Linux /proc")
def test_memory_returns_after_a_big_request(smollm2):
    """A 900-token prompt with logits_all makes ~170 MiB of logits rows and big graphs
    resident; after a short request the idle server gives them back, and a later request
    reusing the cached prefix still gets exact logprobs."""
    n_ctx = 1024
    app = create_app(Settings(model=str(smollm2), n_ctx=n_ctx, verbose=False))
    hub = app.state.hub
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 90
    short = {"prompt": "The quick brown fox", "max_tokens": 2, "temperature": 0}

    def idle_trimmed():
        deadline = time.monotonic() + 10
        while hub.used and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not hub.used, "the janitor did not trim"

    with TestClient(app) as c:
        for _ in range(2):
            assert c.post("/v1/completions", json=short).status_code == 200
        idle_trimmed()
        baseline = rss_mib()
        r = c.post("/v1/completions", json={"prompt": long_prompt, "max_tokens": 1})
        assert r.json()["usage"]["prompt_tokens"] > 800
        peak = rss_mib()
        assert c.post("/v1/completions", json=short).status_code == 200
        idle_trimmed()
        after = rss_mib()
        echo = {"prompt": long_prompt[:400], "max_tokens": 1, "echo": True, "logprobs": 2,
                "temperature": 0}
        got = c.post("/v1/completions", json=echo).json()["choices"][0]["logprobs"]
    hub.close()
    assert peak - baseline > 150, (baseline, peak)
    assert after - baseline < 60, (baseline, peak, after)
    with Llama(str(smollm2), n_ctx=n_ctx, verbose=False, logits_all=True) as fresh:
        want = fresh.create_completion(echo["prompt"], max_tokens=1, echo=True, logprobs=2,
                                       temperature=0, repeat_penalty=1.1)
    want = want["choices"][0]["logprobs"]
    assert got["tokens"] == want["tokens"]
    np.testing.assert_allclose([x for x in got["token_logprobs"] if x is not None],
                               [x for x in want["token_logprobs"] if x is not None],
                               rtol=1e-4, atol=1e-4)
