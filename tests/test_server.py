"""The OpenAI-compatible server in-process (starlette TestClient): every endpoint, SSE
streams, errors and settings. The oracle is a separate `Llama` on the same file, reset
before each call: greedy server answers must equal its answers token for token."""
import base64
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

_REASON = "server tests need the [server] extra: pip install 'pyinfer[server]' httpx"
pytest.importorskip("fastapi", reason=_REASON)
pytest.importorskip("sse_starlette", reason=_REASON)
pytest.importorskip("pydantic_settings", reason=_REASON)
pytest.importorskip("httpx", reason=_REASON)

from fastapi.testclient import TestClient  # noqa: E402

from pyinfer import Llama  # noqa: E402
from pyinfer.server import ModelSettings, ServerSettings, Settings, create_app  # noqa: E402
from pyinfer import __version__  # noqa: E402
from pyinfer.server.__main__ import PROG, main, settings_from_args  # noqa: E402
from pyinfer.server.generation import MinTokensProcessor  # noqa: E402

N_CTX = 256
GREEDY = {"temperature": 0.0, "max_tokens": 6}
CHAT = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def oracle(smollm2):
    llm = Llama(str(smollm2), n_ctx=N_CTX, verbose=False, embedding=True, pooling_type=1)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def token_oracle(smollm2):
    """An independent Llama whose embeddings are one vector per token (pooling NONE)."""
    llm = Llama(str(smollm2), n_ctx=N_CTX, verbose=False, embedding=True, pooling_type=0)
    yield llm
    llm.close()


def token_vectors(token_oracle, text):
    return np.asarray(token_oracle.embed(text), dtype=np.float32)


def fresh(llm):
    llm.reset()
    return llm


@pytest.fixture(scope="module")
def client(smollm2):
    app = create_app(Settings(model=str(smollm2), model_alias="smol", n_ctx=N_CTX,
                              verbose=False, embedding=True, pooling_type=1))
    with TestClient(app) as c:
        yield c
    app.state.hub.close()


def sse_events(text):
    """The `data:` payloads of an SSE body, in order."""
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


def test_completion_equals_llama(client, oracle):
    r = client.post("/v1/completions", json={"prompt": "The capital of France is", **GREEDY})
    assert r.status_code == 200, r.text
    got = r.json()
    want = fresh(oracle).create_completion("The capital of France is", repeat_penalty=1.1,
                                           **GREEDY)
    assert got["object"] == "text_completion" and got["model"] == "smol"
    assert got["choices"][0]["text"] == want["choices"][0]["text"]
    assert got["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"]
    assert got["usage"] == want["usage"]


def test_completion_token_prompt_and_list_prompt(client, oracle):
    ids = oracle.tokenize(b"Once upon a time", add_bos=True, special=True)
    by_ids = client.post("/v1/completions", json={"prompt": ids, **GREEDY}).json()
    by_list = client.post("/v1/completions",
                          json={"prompt": ["Once upon a time"], **GREEDY}).json()
    want = fresh(oracle).create_completion(ids, repeat_penalty=1.1, **GREEDY)
    assert by_ids["choices"][0]["text"] == want["choices"][0]["text"]
    assert by_list["choices"][0]["text"] == want["choices"][0]["text"]
    r = client.post("/v1/completions", json={"prompt": ["a", "b"], **GREEDY})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_chat_equals_llama(client, oracle):
    r = client.post("/v1/chat/completions", json={"messages": CHAT, **GREEDY})
    assert r.status_code == 200, r.text
    got = r.json()
    want = fresh(oracle).create_chat_completion(CHAT, repeat_penalty=1.1, **GREEDY)
    assert got["object"] == "chat.completion"
    assert got["choices"][0]["message"] == want["choices"][0]["message"]
    assert got["usage"] == want["usage"]


def test_completion_stream(client):
    body = {"prompt": "The capital of France is", **GREEDY}
    whole = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    r = client.post("/v1/completions", json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_chat_stream(client):
    whole = client.post("/v1/chat/completions", json={"messages": CHAT, **GREEDY}).json()
    r = client.post("/v1/chat/completions", json={"messages": CHAT, "stream": True, **GREEDY})
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_stop_and_logit_bias_pass_through(client, oracle):
    prompt = "The capital of France is"
    first = fresh(oracle).create_completion(prompt, max_tokens=1, temperature=0.0,
                                            repeat_penalty=1.1)["choices"][0]["text"]
    tok = oracle.tokenize(first.encode(), add_bos=False, special=True)[0]
    for bias, kind in (({str(tok): -100.0}, None), ({first: -100.0}, "tokens")):
        r = client.post("/v1/completions", json={"prompt": prompt, "logit_bias": bias,
                                                 "logit_bias_type": kind, **GREEDY}).json()
        want = fresh(oracle).create_completion(prompt, logit_bias={tok: -100.0},
                                               repeat_penalty=1.1, **GREEDY)
        assert r["choices"][0]["text"] == want["choices"][0]["text"]
        assert not r["choices"][0]["text"].startswith(first)
    r = client.post("/v1/completions", json={"prompt": prompt, "stop": [first.strip()],
                                             **GREEDY}).json()
    assert r["choices"][0]["finish_reason"] == "stop"
    assert first.strip() not in r["choices"][0]["text"]
    r = client.post("/v1/completions", json={"prompt": prompt, "logit_bias": {"x": 1.0}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"


def test_min_tokens_processor():
    proc = MinTokensProcessor(2, eos=3)
    ids = np.array([1, 2], np.intc)
    assert proc(ids, np.zeros(5, np.float32))[3] == -np.inf
    assert proc(np.array([1, 2, 9], np.intc), np.zeros(5, np.float32))[3] == -np.inf
    assert proc(np.array([1, 2, 9, 9], np.intc), np.zeros(5, np.float32))[3] == 0.0


def test_embeddings(client, oracle, token_oracle):
    """--pooling_type 1: the mean of the token vectors, one vector per input."""
    r = client.post("/v1/embeddings", json={"input": ["hello world", "good night"]})
    assert r.status_code == 200, r.text
    got = r.json()
    want = oracle.create_embedding(["hello world", "good night"])
    assert [d["index"] for d in got["data"]] == [0, 1]
    for g, w, text in zip(got["data"], want["data"], ["hello world", "good night"]):
        np.testing.assert_array_equal(g["embedding"], w["embedding"])
        np.testing.assert_allclose(g["embedding"], token_vectors(token_oracle, text).mean(axis=0),
                                   rtol=1e-5, atol=1e-5)
    assert got["usage"] == want["usage"]
    r = client.post("/v1/embeddings", json={"input": "hello world", "encoding_format": "base64"})
    vec = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(vec, np.float32(want["data"][0]["embedding"]))


EMBED_INPUTS = ["hello world", "good night", "The quick brown fox jumps over the lazy dog."]


def test_embeddings_default_one_pooled_vector_per_input(smollm2, token_oracle):
    """No --pooling_type and a model that declares none (SmolLM2, a causal LM): one vector
    per input, the last token's, as an independent per-token Llama computes it."""
    app = create_app(Settings(model=str(smollm2), n_ctx=N_CTX, verbose=False, embedding=True))
    try:
        llama = app.state.hub.llama
        assert llama.pooling_type() == 0        # the model itself declares no pooling
        cpus = multiprocessing.cpu_count()      # and the server's thread defaults reach Llama
        assert (llama.n_threads, llama.n_threads_batch) == (max(cpus // 2, 1), max(cpus, 1))
        with TestClient(app) as c:
            got = c.post("/v1/embeddings", json={"input": EMBED_INPUTS}).json()
            one = c.post("/v1/embeddings", json={"input": "good night",
                                                 "encoding_format": "base64"}).json()
    finally:
        app.state.hub.close()
    assert [d["index"] for d in got["data"]] == [0, 1, 2]
    n_tokens = 0
    for d, text in zip(got["data"], EMBED_INPUTS):
        rows = token_vectors(token_oracle, text)
        n_tokens += len(rows)
        assert len(rows) > 1 and len(d["embedding"]) == token_oracle.n_embd() == 576
        assert all(isinstance(x, float) for x in d["embedding"])
        np.testing.assert_allclose(d["embedding"], rows[-1], rtol=1e-5, atol=1e-5)
    assert got["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
    vec = np.frombuffer(base64.b64decode(one["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, token_vectors(token_oracle, "good night")[-1],
                               rtol=1e-5, atol=1e-5)


def test_embeddings_pooling_none_keeps_token_vectors(smollm2, token_oracle):
    """An explicit --pooling_type 0: llama-cpp-python's per-token vectors."""
    app = create_app(Settings(model=str(smollm2), n_ctx=N_CTX, verbose=False, embedding=True,
                              pooling_type=0))
    try:
        with TestClient(app) as c:
            got = c.post("/v1/embeddings", json={"input": EMBED_INPUTS[:2]}).json()
    finally:
        app.state.hub.close()
    for d, text in zip(got["data"], EMBED_INPUTS[:2]):
        rows = token_vectors(token_oracle, text)
        assert np.asarray(d["embedding"]).shape == rows.shape == (len(rows), 576)
        np.testing.assert_allclose(d["embedding"], rows, rtol=1e-5, atol=1e-5)


def test_models_health_tokenize(client, oracle):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["smol"]
    assert client.get("/health").json()["status"] == "ok"
    text = "Hello world, <|im_start|>!"
    ids = oracle.tokenize(text.encode(), special=True)
    assert client.post("/extras/tokenize", json={"input": text}).json() == {"tokens": ids}
    assert client.post("/extras/tokenize/count", json={"input": text}).json() == {"count": len(ids)}
    back = client.post("/extras/detokenize", json={"tokens": ids[1:3]}).json()["text"]
    assert back == oracle.detokenize(ids[1:3]).decode()
    r = client.post("/extras/detokenize", json={"tokens": [10 ** 9]})
    assert r.status_code == 400 and "out of range" in r.json()["error"]["message"]


def test_context_overflow_errors(client):
    r = client.post("/v1/completions", json={"prompt": "hello " * 300, "max_tokens": 8})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["type"] == "invalid_request_error"
    n = int(err["message"].split("(")[1].split(" ")[0])
    assert err["message"] == (
        f"This model's maximum context length is {N_CTX} tokens, however you requested "
        f"{n + 8} tokens ({n} in your prompt; 8 for the completion). Please reduce your "
        "prompt; or completion length.")
    r = client.post("/v1/chat/completions",
                    json={"messages": [{"role": "user", "content": "hi " * 300}]})
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded"
    assert err["message"].startswith(f"This model's maximum context length is {N_CTX} tokens. "
                                     "However, you requested ")
    assert err["message"].endswith("in the messages, None in the completion). Please reduce "
                                   "the length of the messages or completion.")
    r = client.post("/v1/completions", json={"prompt": "hello " * 300, "stream": True})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_unknown_model_and_bad_body(client):
    # an unknown model name: served by a one-model server, 404 with several
    # (test_any_model_name_with_one_model)
    r = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": "many"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    # the model's file name and path also name it
    ok = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1,
                                              "model": "SmolLM2-135M-Instruct.Q4_1.gguf"})
    assert ok.status_code == 200


def _skip_if_unsupported(r):
    if r.status_code == 400 and r.json()["error"]["code"] == "unsupported":
        pytest.skip("Llama has no grammar-constrained sampling yet: " + r.json()["error"]["message"])
    assert r.status_code == 200, r.text


def test_response_format_pass_through(client):
    """Constrained output lives in Llama: here only that the request reaches it (a 400
    `unsupported` body while Llama lacks grammars, else output that parses)."""
    r = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Give me a JSON object with a name."}],
        "response_format": {"type": "json_object"}, "temperature": 0.0, "max_tokens": 48})
    _skip_if_unsupported(r)
    if r.json()["choices"][0]["finish_reason"] == "stop":
        json.loads(r.json()["choices"][0]["message"]["content"])


def test_grammar_pass_through(client):
    r = client.post("/v1/completions", json={"prompt": "Answer:", "grammar": 'root ::= "yes" | "no"',
                                             "temperature": 0.0, "max_tokens": 4})
    _skip_if_unsupported(r)
    assert r.json()["choices"][0]["text"] in ("yes", "no")


@pytest.fixture(scope="module")
def keyed_client(smollm2, oracle):
    """An app with an API key around the oracle's model (no second load)."""
    app = create_app(server_settings=ServerSettings(api_key="sesame"),
                     model_settings=[ModelSettings(model=str(smollm2))], llama=oracle)
    with TestClient(app) as c:
        yield c


def test_api_key(keyed_client):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
        r = keyed_client.get("/v1/models", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
    r = keyed_client.post("/extras/tokenize", json={"input": "a"})
    assert r.status_code == 401
    assert keyed_client.get("/v1/models", headers={"Authorization": "Bearer sesame"}).status_code == 200
    assert keyed_client.get("/health").status_code == 200


def test_embeddings_need_embedding_model(smollm2):
    with Llama(str(smollm2), n_ctx=64, verbose=False) as llm:
        app = create_app(model_settings=[ModelSettings(model=str(smollm2))], llama=llm)
        with TestClient(app) as c:
            r = c.post("/v1/embeddings", json={"input": "hello"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "embeddings_disabled"
    assert "embedding=True" in r.json()["error"]["message"]


def test_settings_sources(smollm2, tmp_path, monkeypatch):
    monkeypatch.setenv("N_CTX", "321")
    monkeypatch.setenv("API_KEY", "from-env")
    server, models = settings_from_args(["--model", str(smollm2), "--port", "9001",
                                         "--embedding", "true"])
    assert (models[0].n_ctx, models[0].embedding, server.port, server.api_key) == \
        (321, True, 9001, "from-env")
    server, models = settings_from_args(["--model", str(smollm2), "--n_ctx", "77"])
    assert models[0].n_ctx == 77
    cfg = {"port": 8123, "api_key": "k", "models": [
        {"model": str(smollm2), "model_alias": "a", "n_ctx": 128},
        {"model": str(smollm2), "model_alias": "b", "n_ctx": 64}]}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    server, models = settings_from_args(["--config_file", str(path)])
    assert server.port == 8123 and [m.model_alias for m in models] == ["a", "b"]
    # the file's values win; the environment fills what it leaves out (N_CTX=321 above)
    path.write_text(json.dumps({**cfg, "models": [{"model": str(smollm2)}]}))
    assert settings_from_args(["--config_file", str(path)])[1][0].n_ctx == 321
    path.write_text(json.dumps(cfg))
    assert models[1].llama_kwargs()["n_ctx"] == 64
    yaml = pytest.importorskip("yaml")
    ypath = tmp_path / "cfg.yaml"
    ypath.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("CONFIG_FILE", str(ypath))
    server, models = settings_from_args([])
    assert server.api_key == "k" and models[0].n_ctx == 128
    with pytest.raises(ValueError, match="not found"):
        settings_from_args(["--config_file", str(tmp_path / "missing.json")])


def test_thread_defaults_are_llama_cpp_pythons(smollm2, monkeypatch, capsys):
    """llama-cpp-python's server: n_threads max(cpu_count // 2, 1), n_threads_batch
    max(cpu_count, 1), -1 all cores; the settings, --help and docs/server.md say so."""
    for name in ("N_THREADS", "N_THREADS_BATCH", "CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    cpus = multiprocessing.cpu_count()
    half, every = max(cpus // 2, 1), max(cpus, 1)
    s = ModelSettings(model=str(smollm2))
    assert (s.n_threads, s.n_threads_batch) == (half, every)
    kw = s.llama_kwargs()
    assert (kw["n_threads"], kw["n_threads_batch"]) == (half, every)
    _, models = settings_from_args(["--model", str(smollm2)])
    assert (models[0].n_threads, models[0].n_threads_batch) == (half, every)
    _, models = settings_from_args(["--model", str(smollm2), "--n_threads", "-1",
                                    "--n_threads_batch", "-1"])
    assert (models[0].n_threads, models[0].n_threads_batch) == (cpus, cpus)
    monkeypatch.setenv("N_THREADS", "-1")
    assert settings_from_args(["--model", str(smollm2)])[1][0].n_threads == cpus
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0
    assert ("--n_threads N_THREADS Threads for decoding: half the CPU cores, at least 1 "
            f"(-1: all cores). (default: {half})") in text
    assert ("--n_threads_batch N_THREADS_BATCH Threads for prompt processing: all CPU cores "
            f"(-1 or 0: all cores). (default: {every})") in text
    docs = (Path(__file__).resolve().parents[1] / "docs" / "server.md").read_text()
    assert "| `--n_threads` | half the CPU cores, at least 1: `max(cpu_count // 2, 1)` |" in docs
    assert "| `--n_threads_batch` | all CPU cores: `cpu_count` |" in docs
    assert "2048, 512, all cores" not in docs                      # the old claim is gone


def test_help_shows_defaults_and_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0
    for option, default in (("--n_ctx N_CTX", "2048"), ("--port PORT", "8000"),
                            ("--host HOST", "localhost"), ("--embedding BOOL", "false"),
                            ("--logits_all BOOL", "true"), ("--pooling_type POOLING_TYPE", "-1"),
                            ("--cache_size CACHE_SIZE", str(2 << 30))):
        after = text.split(option + " ", 1)[1].split(" --", 1)[0]
        assert after.endswith(f"(default: {default})"), (option, after)
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"pyinfer {__version__}\n"


def _fails(capsys, argv):
    """main(argv) ends with exit code 2 and one line on stderr (no traceback)."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"{PROG}: error: "), (code, err)
    return err


def test_main_errors(smollm2, tmp_path, monkeypatch, capsys):
    """Bad command lines end with a one-line message and exit code 2, before serving."""
    for name in ("MODEL", "CONFIG_FILE", "N_CTX"):
        monkeypatch.delenv(name, raising=False)
    model = str(smollm2)
    assert "error: no model" in _fails(capsys, [])
    assert "no such file" in _fails(capsys, ["--model", str(tmp_path / "none.gguf")])
    assert "not a regular file" in _fails(capsys, ["--model", str(tmp_path)])
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    assert "not a GGUF file" in _fails(capsys, ["--model", str(bad), "--verbose", "false"])
    assert "invalid int value: 'ten'" in _fails(capsys, ["--model", model, "--n_ctx", "ten"])
    assert "argument --n_ctx: Input should be greater than or equal to 0, got -5" in \
        _fails(capsys, ["--model", model, "--n_ctx", "-5"])
    assert "not a boolean: 'maybe'" in _fails(capsys, ["--model", model, "--embedding", "maybe"])
    assert "--pooling_type" in _fails(capsys, ["--model", model, "--pooling_type", "4"])
    assert "unrecognized arguments: --bogus" in _fails(capsys, ["--model", model, "--bogus"])
    monkeypatch.setenv("MODEL", str(tmp_path / "env.gguf"))
    assert f"no such file: {tmp_path / 'env.gguf'}" in _fails(capsys, [])
    monkeypatch.setenv("N_CTX", "-1")
    assert "n_ctx: Input should be greater" in _fails(capsys, ["--model", model])
    monkeypatch.delenv("N_CTX")
    assert "not found" in _fails(capsys, ["--config_file", str(tmp_path / "none.yaml")])
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"models": [{"model": model, "model_alias": "a"},
                                          {"model": str(tmp_path / "b.gguf"), "model_alias": "b"}]}))
    assert "model b: no such file" in _fails(capsys, ["--config_file", str(cfg)])
    cfg.write_text("{not json")
    _fails(capsys, ["--config_file", str(cfg)])


def test_command_line_in_a_process(tmp_path):
    """`python -m pyinfer.server` itself: --version, and a missing model: exit code 2, one
    line on stderr, no traceback."""
    run = [sys.executable, "-m", "pyinfer.server"]
    r = subprocess.run(run + ["--version"], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout) == (0, f"pyinfer {__version__}\n")
    r = subprocess.run(run + ["--model", str(tmp_path / "nope.gguf")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"{PROG}: error: argument --model: no such file: "
                        f"{tmp_path / 'nope.gguf'} (see {PROG} --help)\n")


def test_two_models_swap(smollm2):
    """A config with two models: a request naming the other one loads it."""
    models = [ModelSettings(model=str(smollm2), model_alias="a", n_ctx=256, verbose=False),
              ModelSettings(model=str(smollm2), model_alias="b", n_ctx=512, verbose=False)]
    app = create_app(server_settings=ServerSettings(), model_settings=models)
    with TestClient(app) as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["a", "b"]
        r = c.post("/v1/completions", json={"prompt": "hi", "model": "b", "max_tokens": 1})
        assert r.status_code == 200 and r.json()["model"] == "b"
        assert app.state.hub.llama.n_ctx() == 512
        r = c.post("/v1/completions", json={"prompt": "hi " * 300, "model": "a", "max_tokens": 1})
        assert r.json()["error"]["code"] == "context_length_exceeded"
        assert app.state.hub.llama.n_ctx() == 256
    app.state.hub.close()


NOT_FOUND = {"message": "The model `gpt-9` does not exist", "type": "invalid_request_error",
             "param": "model", "code": "model_not_found"}


def test_any_model_name_with_one_model(client, smollm2):
    """As llama-cpp-python's server: one model answers whatever `model` a request names
    (clients send "gpt-3.5-turbo"), the same as under its alias. With several, an unknown
    name is 404, or the first model with --any_model_name (what llama-cpp-python's
    LlamaProxy does with several)."""
    requests = (("/v1/completions", {"prompt": "Hello", **GREEDY},
                 lambda j: j["choices"][0]["text"]),
                ("/v1/chat/completions", {"messages": CHAT, **GREEDY},
                 lambda j: j["choices"][0]["message"]["content"]),
                ("/v1/embeddings", {"input": "hi"}, lambda j: j["data"][0]["embedding"]))
    for path, body, result in requests:
        want = client.post(path, json={**body, "model": "smol"})
        assert want.status_code == 200, path
        for name in ("gpt-3.5-turbo", "x", "gpt-9"):
            r = client.post(path, json={**body, "model": name})
            assert r.status_code == 200, (path, name, r.text)
            assert result(r.json()) == result(want.json()), (path, name)
    chunks = client.post("/v1/chat/completions", json={"messages": CHAT, "stream": True,
                                                       "model": "gpt-4o", **GREEDY})
    assert chunks.status_code == 200 and sse_events(chunks.text)[-1] == "[DONE]"

    models = [ModelSettings(model=str(smollm2), model_alias="a", n_ctx=256, verbose=False),
              ModelSettings(model=str(smollm2), model_alias="b", n_ctx=256, verbose=False)]
    app = create_app(server_settings=ServerSettings(), model_settings=models)
    with TestClient(app) as c:
        for path, body, _ in requests:
            r = c.post(path, json={**body, "model": "gpt-9"})
            assert r.status_code == 404 and r.json()["error"] == NOT_FOUND, path
    app.state.hub.close()
    app = create_app(server_settings=ServerSettings(any_model_name=True), model_settings=models)
    with TestClient(app) as c:
        r = c.post("/v1/completions", json={"prompt": "hi", "model": "gpt-9", "max_tokens": 1})
        assert r.status_code == 200 and app.state.hub.loaded_alias == "a"
    app.state.hub.close()
