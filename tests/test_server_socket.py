"""The server over a real localhost socket (uvicorn in a thread) driven by the official
`openai` client: completions, chat, streams, embeddings, errors, the API key, several
concurrent clients (each answer must equal `Llama`'s for the same greedy request) and a
streaming client that vanishes mid-way (the next request must still be served)."""
import threading
import time

import numpy as np
import pytest

_REASON = "server tests need the [server] extra plus openai: pip install 'pyinfer[server]' openai"
for _mod in ("fastapi", "sse_starlette", "pydantic_settings", "uvicorn", "openai", "httpx"):
    pytest.importorskip(_mod, reason=_REASON)

import httpx  # noqa: E402
import openai  # noqa: E402

from pyinfer import Llama  # noqa: E402
from pyinfer.server import Settings, create_app  # noqa: E402
from server_util import serve as _serve  # noqa: E402

N_CTX = 256
KEY = "test-key"
ALIAS = "smol"


@pytest.fixture(scope="module")
def server(smollm2):
    """A running server (FIFO: each request runs to its end; embeddings with the default
    pooling)."""
    yield from _serve(create_app(Settings(
        model=str(smollm2), model_alias=ALIAS, n_ctx=N_CTX, verbose=False, embedding=True,
        api_key=KEY)))


@pytest.fixture(scope="module")
def interleaving_server(smollm2):
    """A running server whose streams hand the model over every 2 chunks."""
    yield from _serve(create_app(Settings(
        model=str(smollm2), model_alias=ALIAS, n_ctx=N_CTX, verbose=False, api_key=KEY,
        interleave_tokens=2)))


@pytest.fixture(scope="module")
def oracle(smollm2):
    """Greedy answers, and embeddings one vector per token (pooling NONE)."""
    llm = Llama(str(smollm2), n_ctx=N_CTX, verbose=False, embedding=True, pooling_type=0)
    yield llm
    llm.close()


def _client(server, key=KEY):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=key, max_retries=0, timeout=60)


def _want_completion(oracle, prompt, max_tokens):
    oracle.reset()
    return oracle.create_completion(prompt, max_tokens=max_tokens, temperature=0.0,
                                    repeat_penalty=1.1)["choices"][0]["text"]


def _want_chat(oracle, messages, max_tokens):
    oracle.reset()
    return oracle.create_chat_completion(messages, max_tokens=max_tokens, temperature=0.0,
                                         repeat_penalty=1.1)["choices"][0]["message"]["content"]


def test_openai_completion_and_stream(server, oracle):
    c = _client(server)
    r = c.completions.create(model=ALIAS, prompt="The capital of France is", max_tokens=6,
                             temperature=0)
    want = _want_completion(oracle, "The capital of France is", 6)
    assert r.choices[0].text == want and r.model == ALIAS
    assert r.usage.completion_tokens == 6
    stream = c.completions.create(model=ALIAS, prompt="The capital of France is",
                                  max_tokens=6, temperature=0, stream=True)
    assert "".join(ch.choices[0].text for ch in stream) == want


def test_openai_chat_and_stream(server, oracle):
    c = _client(server)
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    r = c.chat.completions.create(model=ALIAS, messages=msgs, max_tokens=8, temperature=0)
    want = _want_chat(oracle, msgs, 8)
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    parts = [ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model=ALIAS, messages=msgs, max_tokens=8, temperature=0, stream=True)]
    assert "".join(parts) == want


def test_openai_embeddings(server, oracle):
    """One vector of n_embd floats per input string, by default, for SmolLM2 (which declares
    no pooling): the last token's, as the oracle's per-token vectors give it. The client asks
    for base64 by default and decodes it; float on request."""
    c = _client(server)
    texts = ["red apples", "blue sky", "A longer sentence about the weather today."]
    oracle.reset()
    rows = [np.asarray(oracle.embed(t), dtype=np.float32) for t in texts]
    assert all(r.shape[0] > 1 and r.shape[1] == oracle.n_embd() for r in rows)
    for fmt in (openai.NOT_GIVEN, "float"):
        r = c.embeddings.create(model=ALIAS, input=texts, encoding_format=fmt)
        assert len(r.data) == len(texts) and [d.index for d in r.data] == [0, 1, 2]
        assert r.usage.prompt_tokens == sum(len(x) for x in rows)
        for got, want in zip(r.data, rows):
            assert len(got.embedding) == oracle.n_embd() == 576
            np.testing.assert_allclose(np.float32(got.embedding), want[-1], rtol=1e-5, atol=1e-5)
    one = c.embeddings.create(model=ALIAS, input="blue sky", encoding_format="float")
    assert len(one.data) == 1
    np.testing.assert_allclose(np.float32(one.data[0].embedding), rows[1][-1], rtol=1e-5, atol=1e-5)


def test_openai_errors(server):
    c = _client(server)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=ALIAS, prompt="word " * 300, max_tokens=4)
    assert e.value.code == "context_length_exceeded"
    # one model is served under any name, as llama-cpp-python's server does, and echoed back
    reply = c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}], max_tokens=1)
    assert reply.choices[0].message.role == "assistant" and reply.model == "gpt-4o"
    with pytest.raises(openai.AuthenticationError) as e:
        _client(server, key="wrong").models.list()
    assert e.value.code == "invalid_api_key"
    assert [m.id for m in c.models.list().data] == [ALIAS]
    assert httpx.get(server[0] + "/health").json()["status"] == "ok"


# Mixed requests sent together; prompts differ so that a mix-up shows.
JOBS = [("completion", "The capital of France is", False),
        ("chat", "Name a fruit.", True),
        ("completion", "Once upon a time", True),
        ("chat", "What colour is the sky?", False),
        ("completion", "def fibonacci(n):", False),
        ("chat", "Say hello in Spanish.", True),
        ("completion", "The largest planet is", True),
        ("chat", "Count to three.", False)]


def _run_job(server, kind, text, stream, max_tokens):
    c = _client(server)
    if kind == "completion":
        if stream:
            return "".join(ch.choices[0].text for ch in c.completions.create(
                model=ALIAS, prompt=text, max_tokens=max_tokens, temperature=0, stream=True))
        return c.completions.create(model=ALIAS, prompt=text, max_tokens=max_tokens,
                                    temperature=0).choices[0].text
    msgs = [{"role": "user", "content": text}]
    if stream:
        return "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model=ALIAS, messages=msgs, max_tokens=max_tokens, temperature=0, stream=True))
    return c.chat.completions.create(model=ALIAS, messages=msgs, max_tokens=max_tokens,
                                     temperature=0).choices[0].message.content


def _concurrent(server, oracle, max_tokens):
    want = [_want_completion(oracle, t, max_tokens) if k == "completion"
            else _want_chat(oracle, [{"role": "user", "content": t}], max_tokens)
            for k, t, _ in JOBS]
    assert all(want), want
    got = [None] * len(JOBS)
    errors = []
    start = threading.Barrier(len(JOBS))

    def worker(i):
        try:
            start.wait()
            got[i] = _run_job(server, *JOBS[i], max_tokens)
        except Exception as e:       # reported below, with the job
            errors.append((JOBS[i], repr(e)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(JOBS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert got == want


def test_concurrent_clients_match_llama(server, oracle):
    _concurrent(server, oracle, 6)


def test_interleaved_streams_match_llama(interleaving_server, oracle):
    """Streams take turns (saving and restoring their KV cache) and still answer exactly
    what Llama answers to each request alone."""
    _concurrent(interleaving_server, oracle, 10)
    assert interleaving_server[1].state.hub.switches > 0


def _assert_freed_early(server, oracle, body, wait_s):
    """After its client went away, the request `body` frees the model within `wait_s`
    seconds, without having generated all its tokens, and the next request is served."""
    _, app = server
    hub = app.state.hub
    deadline = time.monotonic() + wait_s
    while hub.busy:
        assert time.monotonic() < deadline, "the request of a vanished client kept the model"
        time.sleep(0.05)
    n_prompt = len(oracle.tokenize(body["prompt"].encode()))
    assert hub.llama.n_tokens < n_prompt + body["max_tokens"] - 1, "it ran to its end"
    r = _client(server).completions.create(model=ALIAS, prompt="The capital of France is",
                                           max_tokens=4, temperature=0)
    assert r.choices[0].text == _want_completion(oracle, "The capital of France is", 4)


def test_disconnected_stream_frees_the_model(server, oracle):
    """A client reads two events of a long stream and hangs up: the lease must come
    back (the stream stops) and a following request must be answered correctly."""
    base, _ = server
    body = {"model": ALIAS, "prompt": "Once upon a time, there was a dragon who", "max_tokens": 120,
            "temperature": 0, "stream": True}
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as h:
        with h.stream("POST", base + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("data: ")
                if seen == 2:
                    break
    _assert_freed_early(server, oracle, body, 30)


def test_abandoned_request_stops(server, oracle):
    """A non-streaming request whose client gives up (read timeout) stops generating at
    its next token and frees the model."""
    base, _ = server
    body = {"model": ALIAS, "prompt": "Once upon a time, there was a dragon who",
            "max_tokens": 120, "temperature": 0}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(base + "/v1/completions", json=body, timeout=0.5,
                   headers={"Authorization": f"Bearer {KEY}"})
    _assert_freed_early(server, oracle, body, 60)
