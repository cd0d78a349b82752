"""The server's security defaults: CORS off unless --cors_origins lists origins, the API key
from the command line, PYINFER_API_KEY / API_KEY or a file, the OpenAPI pages behind the
key, no filesystem path in any answer, and internal errors answered with a generic 500.

Oracles: the CORS rules themselves (which origin may read which answer), the key written to
the environment or a file, and the model's directory, which must appear in no body."""
import json
import os

import pytest

_REASON = "server tests need the [server] extra: pip install 'pyinfer[server]' httpx"
for _mod in ("fastapi", "sse_starlette", "pydantic_settings", "httpx"):
    pytest.importorskip(_mod, reason=_REASON)

from fastapi.testclient import TestClient  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from pyinfer import Llama  # noqa: E402
from pyinfer.server import ModelSettings, ServerSettings, create_app  # noqa: E402
from pyinfer.server.__main__ import PROG, main, settings_from_args  # noqa: E402
from pyinfer.server.security import redactor  # noqa: E402

N_CTX = 128
GOOD, EVIL = "http://localhost:3000", "https://evil.example"
PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type"}


@pytest.fixture(scope="module")
def llama(smollm2):
    llm = Llama(str(smollm2), n_ctx=N_CTX, verbose=False)
    yield llm
    llm.close()


def app_with(smollm2, llama, **server):
    return create_app(server_settings=ServerSettings(**server),
                      model_settings=[ModelSettings(model=str(smollm2), n_ctx=N_CTX,
                                                    verbose=False)], llama=llama)


@pytest.fixture(autouse=True)
def no_key_in_env(monkeypatch):
    for name in ("API_KEY", "PYINFER_API_KEY", "API_KEY_FILE", "PYINFER_API_KEY_FILE",
                 "CORS_ORIGINS", "CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)


def test_cors_is_off_by_default(smollm2, llama):
    """No CORS headers at all: a page on another site can neither preflight nor read."""
    with TestClient(app_with(smollm2, llama)) as c:
        r = c.options("/v1/completions", headers={"Origin": EVIL, **PREFLIGHT})
        assert r.status_code == 405
        r2 = c.get("/v1/models", headers={"Origin": EVIL})
        r3 = c.post("/v1/completions", headers={"Origin": EVIL},
                    json={"prompt": "hi", "max_tokens": 1})
    assert r2.status_code == r3.status_code == 200
    for resp in (r, r2, r3):
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")]


def test_cors_for_listed_origins_only(smollm2, llama):
    with TestClient(app_with(smollm2, llama, api_key="k",
                             cors_origins=f"{GOOD}/, https://b.example:8443")) as c:
        ok = c.options("/v1/completions", headers={"Origin": GOOD, **PREFLIGHT})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == GOOD
        assert ok.headers["access-control-allow-credentials"] == "true"
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        bad = c.options("/v1/completions", headers={"Origin": EVIL, **PREFLIGHT})
        assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
        auth = {"Authorization": "Bearer k"}
        assert c.get("/v1/models", headers={"Origin": GOOD, **auth}).headers[
            "access-control-allow-origin"] == GOOD
        assert "access-control-allow-origin" not in c.get(
            "/v1/models", headers={"Origin": EVIL, **auth}).headers
        assert c.get("/v1/models", headers={"Origin": GOOD}).status_code == 401


def test_cors_any_origin_never_with_credentials(smollm2, llama):
    with TestClient(app_with(smollm2, llama, cors_origins="*")) as c:
        r = c.options("/v1/completions", headers={"Origin": EVIL, **PREFLIGHT})
        assert r.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in r.headers
        r = c.get("/v1/models", headers={"Origin": EVIL})
        assert r.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in r.headers


def test_cors_origins_setting_forms(monkeypatch, capsys, smollm2):
    assert ServerSettings(cors_origins=f"{GOOD}, https://a.example/").cors_origins == \
        [GOOD, "https://a.example"]
    assert ServerSettings(cors_origins=json.dumps([GOOD])).cors_origins == [GOOD]
    assert ServerSettings(cors_origins=[GOOD, "*"]).cors_origins == [GOOD, "*"]
    assert ServerSettings(cors_origins=" ").cors_origins is None
    assert not ServerSettings(cors_origins=[GOOD, "*"]).cors_credentials()
    assert ServerSettings(cors_origins=GOOD).cors_credentials()
    monkeypatch.setenv("CORS_ORIGINS", f"{GOOD},https://b.example")
    assert ServerSettings().cors_origins == [GOOD, "https://b.example"]
    monkeypatch.delenv("CORS_ORIGINS")
    for bad in ("http://a.example/path", "ftp://a.example", "localhost:3000", "http://"):
        with pytest.raises(ValidationError, match="not an origin"):
            ServerSettings(cors_origins=bad)
    server, _ = settings_from_args(["--model", str(smollm2), "--cors_origins",
                                    f"{GOOD},https://b.example"])
    assert server.cors_origins == [GOOD, "https://b.example"]
    try:
        code = main(["--model", str(smollm2), "--cors_origins", "http://x.example/api"])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"{PROG}: error: ") and "not an origin" in err


def test_api_key_sources(monkeypatch, tmp_path, smollm2):
    """--api_key, PYINFER_API_KEY (preferred), llama-cpp-python's API_KEY, or a file."""
    assert ServerSettings().api_key is None
    monkeypatch.setenv("API_KEY", "from-api-key")
    assert ServerSettings().api_key == "from-api-key"
    monkeypatch.setenv("PYINFER_API_KEY", "from-pyinfer")
    assert ServerSettings().api_key == "from-pyinfer"
    assert ServerSettings(api_key="given").api_key == "given"
    server, _ = settings_from_args(["--model", str(smollm2), "--api_key", "cli"])
    assert server.api_key == "cli"
    monkeypatch.delenv("API_KEY")
    monkeypatch.delenv("PYINFER_API_KEY")
    monkeypatch.setenv("API_KEY", "")                   # empty: no key
    assert ServerSettings().api_key is None
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    assert ServerSettings(api_key_file=str(key_file)).api_key == "s3cret"
    server, _ = settings_from_args(["--model", str(smollm2), "--api_key_file", str(key_file)])
    assert server.api_key == "s3cret"
    monkeypatch.setenv("PYINFER_API_KEY_FILE", str(key_file))
    assert ServerSettings().api_key == "s3cret"
    assert ServerSettings(api_key="s3cret").api_key == "s3cret"     # the same key: fine
    with pytest.raises(ValidationError, match="different keys"):
        ServerSettings(api_key="other")
    monkeypatch.delenv("PYINFER_API_KEY_FILE")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValidationError, match="is empty"):
        ServerSettings(api_key_file=str(tmp_path / "empty"))
    with pytest.raises(ValidationError, match="cannot read"):
        ServerSettings(api_key_file=str(tmp_path / "missing"))


def test_key_from_file_is_enforced(smollm2, llama, tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    monkeypatch.setenv("PYINFER_API_KEY_FILE", str(key_file))
    with TestClient(app_with(smollm2, llama)) as c:
        r = c.get("/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert c.get("/v1/models", headers={"Authorization": "Bearer from-file"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "Bearer from-fil"}).status_code == 401
        assert c.get("/health").status_code == 200


def test_docs_behind_the_key(smollm2, llama):
    with TestClient(app_with(smollm2, llama)) as c:       # no key: public, as FastAPI's
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert c.get(path).status_code == 200, path
    with TestClient(app_with(smollm2, llama, api_key="k")) as c:
        for path in ("/docs", "/redoc", "/openapi.json"):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert c.get(path, headers={"Authorization": "Bearer k"}).status_code == 200
        spec = c.get("/openapi.json", headers={"Authorization": "Bearer k"}).json()
        assert "/v1/chat/completions" in spec["paths"]
        assert "/openapi.json" in c.get("/docs", headers={"Authorization": "Bearer k"}).text


def test_no_filesystem_paths_in_answers(smollm2, llama):
    """The model is named by its file name: /health, /v1/models and generations show no
    directory, though a client may still name the model by its path."""
    directory = os.path.dirname(os.path.abspath(str(smollm2)))
    name = os.path.basename(str(smollm2))
    with TestClient(app_with(smollm2, llama)) as c:
        bodies = [c.get("/health"), c.get("/v1/models"),
                  c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1}),
                  c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1,
                                                  "model": str(smollm2)}),
                  c.post("/v1/chat/completions", json={
                      "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
                  c.post("/v1/completions", json={"prompt": "hi", "model": "gpt-9"})]
    assert bodies[0].json() == {"status": "ok", "model": name}
    assert [m["id"] for m in bodies[1].json()["data"]] == [name]
    assert bodies[2].json()["model"] == bodies[3].json()["model"] == name
    for r in bodies:
        assert directory not in r.text, r.text


def test_redactor():
    redact = redactor(["/srv/models/m.gguf", "rel/dir/x.gguf"])
    assert redact("cannot open /srv/models/m.gguf: gone") == "cannot open m.gguf: gone"
    assert redact("in /srv/models: 2 files") == "in <model dir>: 2 files"
    full = os.path.abspath("rel/dir/x.gguf")
    assert redact(f"bad {full} and rel/dir/x.gguf") == "bad x.gguf and x.gguf"
    assert redact("nothing here") == "nothing here"


def test_model_that_fails_to_load_is_a_generic_500(smollm2, tmp_path, capsys):
    """A second model whose file went away after start: 500 naming the alias only; the
    path goes to the log."""
    gone = tmp_path / "private" / "other.gguf"
    gone.parent.mkdir()
    gone.symlink_to(smollm2)
    models = [ModelSettings(model=str(smollm2), model_alias="a", n_ctx=N_CTX, verbose=False),
              ModelSettings(model=str(gone), model_alias="b", n_ctx=N_CTX, verbose=False)]
    app = create_app(server_settings=ServerSettings(), model_settings=models)
    gone.unlink()
    with TestClient(app) as c:
        r = c.post("/v1/completions", json={"prompt": "hi", "model": "b", "max_tokens": 1})
    app.state.hub.close()
    assert r.status_code == 500
    assert r.json()["error"] == {"message": "The model `b` could not be loaded",
                                 "type": "internal_server_error", "param": None, "code": None}
    assert str(tmp_path) not in r.text
    assert str(gone) in capsys.readouterr().err


def test_internal_errors_say_nothing(smollm2, llama, monkeypatch, capsys):
    """An unexpected exception inside Llama: a 500 with a generic message; its text and
    traceback only in the server's log."""
    def boom(*args, **kwargs):
        raise KeyError(f"secret detail {smollm2}")
    with TestClient(app_with(smollm2, llama), raise_server_exceptions=False) as c:
        monkeypatch.setattr(llama, "create_completion", boom)
        r = c.post("/v1/completions", json={"prompt": "hi"})
        s = c.post("/v1/completions", json={"prompt": "hi", "stream": True})
        monkeypatch.undo()
    for resp in (r, s):
        assert resp.status_code == 500
        assert resp.json()["error"] == {"message": "Internal server error",
                                        "type": "internal_server_error", "param": None,
                                        "code": None}
        assert "secret" not in resp.text
    log = capsys.readouterr().err
    assert "secret detail" in log and "Traceback" in log
