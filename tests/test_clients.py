"""Third-party clients of llama-cpp-python through `import llama_cpp`, on SmolLM2: LangChain,
LlamaIndex, outlines, instructor and the `llm` CLI, each driven by a script in
scripts/clients/ inside a virtual environment of its own.

Opt in with --run-slow and point PYINFER_CLIENTS_VENV at a venv made by
`bash scripts/make_clients_venv.sh` (pyinfer, compat/ and the pinned clients). With
PYINFER_CLIENTS_VENV_REAL pointing at one made by `bash scripts/make_clients_venv.sh --real`
(the real llama-cpp-python 0.3.36 instead), the same scripts run there too, and the outcomes
are compared feature by feature: every feature that works with llama-cpp-python must work
through pyinfer, and llama-cpp-python's own failures are pinned with their causes
(FAILS_WITH_LLAMA_CPP_PYTHON). Outputs (greedy texts, embeddings) are compared and tabled
(run with -s to see the table), not asserted: chat templates and sampling paths may
legitimately differ.

Each script prints one `CLIENT-FEATURE {json}` line per feature (scripts/clients/_report.py);
each run is made once per session and shared by the tests of its client.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "clients"
CLIENTS = ("langchain", "llamaindex", "outlines", "instructor", "llm_cli")
VENVS = {"compat": ("PYINFER_CLIENTS_VENV", "bash scripts/make_clients_venv.sh"),
         "real": ("PYINFER_CLIENTS_VENV_REAL", "bash scripts/make_clients_venv.sh --real")}
PREFIX = "CLIENT-FEATURE "
TIMEOUT_S = 1200


def venv_python(kind: str) -> Path:
    var, make = VENVS[kind]
    folder = os.environ.get(var)
    if not folder:
        pytest.skip(f"{var} is not set: make the venv with `{make}` and point {var} at it")
    python = Path(folder) / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"{var}={folder} is not a virtual environment (no bin/python)")
    return python


def gguf_embedding_length(path: str) -> int:
    """`{arch}.embedding_length` read with the gguf package, not with pyinfer."""
    from gguf import GGUFReader
    reader = GGUFReader(path)

    def value(key):
        f = reader.fields[key]
        return f.parts[f.data[0]]
    arch = bytes(value("general.architecture")).decode()
    return int(value(f"{arch}.embedding_length")[0])


@pytest.fixture(scope="session")
def run_client(smollm2):
    """run_client(kind, client) -> {feature: record}, each (kind, client) run once."""
    model = str(smollm2)
    n_embd = gguf_embedding_length(model)
    done = {}

    def run(kind, client):
        if (kind, client) not in done:
            python = venv_python(kind)
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
            proc = subprocess.run(
                [str(python), str(SCRIPTS / f"{client}_client.py"), "--model", model,
                 "--n-embd", str(n_embd)],
                capture_output=True, text=True, env=env, timeout=TIMEOUT_S, check=False)
            records = {}
            for line in proc.stdout.splitlines():
                if line.startswith(PREFIX):
                    rec = json.loads(line[len(PREFIX):])
                    records[rec["feature"]] = rec
            done[kind, client] = (proc, records)
        proc, records = done[kind, client]
        if "backend" not in records or proc.returncode != 0:
            pytest.fail(f"{client} script in the {kind} venv exited {proc.returncode}:\n"
                        f"{proc.stderr[-3000:]}")
        return records
    return run


def failures(records: dict, allowed=()) -> list:
    """'feature: error (where)' for each failed feature not in `allowed`."""
    return [f"{name}: {rec.get('error')} (at {rec.get('where', ['?'])[-1]})"
            for name, rec in records.items() if not rec["ok"] and name not in allowed]


@pytest.mark.parametrize("client", CLIENTS)
def test_client_through_pyinfer(run_client, client):
    """Every feature of the client works through pyinfer's `llama_cpp`."""
    records = run_client("compat", client)
    assert records["backend"]["pyinfer"], f"the compat venv imports a real llama_cpp: {records['backend']}"
    assert len(records) > 2, f"the script reported no features: {list(records)}"
    bad = failures(records)
    assert not bad, f"{client} through pyinfer:\n" + "\n".join(bad)


# (client, feature) -> why it fails with llama-cpp-python 0.3.36 itself (pinned: a change of
# outcome fails test_client_through_llama_cpp_python, so the list stays true)
FAILS_WITH_LLAMA_CPP_PYTHON = {
    ("langchain", "ChatLlamaCpp.bind_tools stream"):
        "llama-cpp-python streams the tool's name again in every delta of a tool call; the "
        "OpenAI stream format (and LangChain, which concatenates the deltas) wants it once",
    ("langchain", "LlamaCppEmbeddings (model pooling): batch-independent"):
        "with pooling NONE llama-cpp-python's embed() reads the rows of the second and later "
        "texts of a batch at an offset counted in tokens instead of floats (pos += size): "
        "their vectors are wrong",
    ("instructor", "response_model -> pydantic instance"):
        "instructor 1.17 asks for response_format {'type': 'json_schema', 'json_schema': ...}; "
        "llama-cpp-python constrains only type 'json_object', so the model writes free text",
    ("instructor", "Partial[...] stream"):
        "the same response_format: the streamed text is not JSON",
}


@pytest.mark.parametrize("client", CLIENTS)
def test_client_through_llama_cpp_python(run_client, client):
    """The same scripts against the real llama-cpp-python: the oracle of the checks. Its
    outcome of each feature is what it should be: ok, or the failure pinned above."""
    records = run_client("real", client)
    assert records["backend"]["pyinfer"] is None, f"the real venv imports pyinfer: {records['backend']}"
    assert len(records) > 2, f"the script reported no features: {list(records)}"
    pinned = [f for (c, f) in FAILS_WITH_LLAMA_CPP_PYTHON if c == client]
    bad = failures(records, allowed=pinned)
    assert not bad, f"{client} through llama-cpp-python:\n" + "\n".join(bad)
    missing = [f for f in pinned if f not in records]
    assert not missing, f"{client}: pinned features the script no longer reports: {missing}"
    fixed = [f for f in pinned if records[f]["ok"]]
    assert not fixed, f"{client}: now works with llama-cpp-python, unpin: {fixed}"


def cell(rec):
    if rec is None:
        return "-"
    return "ok" if rec["ok"] else "FAIL: " + (rec.get("error") or "?")[:60]


def agreement(a, b) -> str:
    """How the two backends' outputs for one feature compare: texts (greedy unless the
    script marked them sampled), else embedding vectors by their largest difference."""
    if not (a and b):
        return ""
    how = "sampled, " if a.get("sampled") or b.get("sampled") else ""
    va, vb = (r.get("value") if isinstance(r.get("value"), dict) else {} for r in (a, b))
    va, vb = va.get("vectors"), vb.get("vectors")
    if va and vb and len(va) == len(vb):
        diff = max(abs(x - y) for u, v in zip(va, vb) for x, y in zip(u, v))
        return f"vectors differ by at most {diff:.1e}"
    if a.get("text") is not None and b.get("text") is not None:
        if a["text"] == b["text"]:
            return how + "same"
        return how + f"differ: {a['text']!r} vs {b['text']!r}"
    return ""


@pytest.mark.parametrize("client", CLIENTS)
def test_clients_agree(run_client, client):
    """Feature by feature, pyinfer against llama-cpp-python: what works there works here.
    The table (with -s) says for each feature whether the greedy texts agree."""
    ours, theirs = run_client("compat", client), run_client("real", client)
    rows, worse = [], []
    for name in [n for n in theirs if n != "backend"] + [n for n in ours if n not in theirs]:
        a, b = ours.get(name), theirs.get(name)
        rows.append(f"| {client} | {name} | {cell(a)} | {cell(b)} | {agreement(a, b)[:160]} |")
        if b and b["ok"] and not (a and a["ok"]):
            worse.append(name)
    print("\n| client | feature | pyinfer | llama-cpp-python | outputs |\n|---|---|---|---|---|\n"
          + "\n".join(rows))
    assert not worse, f"{client}: works with llama-cpp-python, fails through pyinfer: {worse}"
