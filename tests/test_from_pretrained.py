"""Llama.from_pretrained (pyinfer/hub.py) without a network: a GGUF placed in a Hugging Face
cache laid out as huggingface_hub writes it (models--org--name/refs/main -> a commit,
snapshots/<commit>/<files>), found by glob with local_files_only=True or HF_HUB_OFFLINE=1;
llama-cpp-python's errors for no match and several matches; local_dir; and the error
naming the package when huggingface_hub is not installed."""
import os
import shutil
import subprocess
import sys

import pytest

from pyinfer import Llama

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "pyinfer-test/tiny-GGUF"


def make_cache(root, tiny_path, files):
    """A cache holding REPO at COMMIT with `files` (relative names), each a copy of the tiny
    model stored once as a blob and linked from the snapshot, as huggingface_hub does."""
    repo = root / ("models--" + REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    blob = repo / "blobs" / "0f1e2d3c"
    blob.parent.mkdir()
    shutil.copyfile(tiny_path, blob)
    for name in files:
        target = repo / "snapshots" / COMMIT / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, target.parent), target)
    return repo / "snapshots" / COMMIT


@pytest.fixture
def hub():
    return pytest.importorskip("huggingface_hub")


def test_loads_from_the_cache_offline(hub, tiny_path, tmp_path):
    snap = make_cache(tmp_path, tiny_path, ["tiny-Q8_0.gguf", "tiny-F16.gguf", "README.md"])
    with Llama.from_pretrained(REPO, "*Q8_0.gguf", cache_dir=tmp_path, local_files_only=True,
                               n_ctx=64, verbose=False) as m:
        assert m.model_path == str(snap / "tiny-Q8_0.gguf")
        assert m.n_ctx() == 256 and m.context_params.n_ctx == 64        # keywords reach Llama
        with Llama(tiny_path, n_ctx=64, verbose=False) as ref:
            kw = dict(max_tokens=8, temperature=0.0)
            assert m([5, 6], **kw)["choices"][0]["text"] == ref([5, 6], **kw)["choices"][0]["text"]


def test_glob_must_match_exactly_one_file(hub, tiny_path, tmp_path):
    make_cache(tmp_path, tiny_path, ["a-Q4_0.gguf", "a-Q8_0.gguf", "sub/b-Q4_0.gguf"])
    kw = dict(cache_dir=tmp_path, local_files_only=True, verbose=False)
    with pytest.raises(ValueError, match=f"^No file found in {REPO} that match \\*Q5_K.gguf\n\n"
                                         "Available Files:\n") as e:
        Llama.from_pretrained(REPO, "*Q5_K.gguf", **kw)
    assert '["a-Q4_0.gguf", "a-Q8_0.gguf", "sub/b-Q4_0.gguf"]' in str(e.value)
    with pytest.raises(ValueError, match=f"^Multiple files found in {REPO} matching \\*Q4_0.gguf"):
        Llama.from_pretrained(REPO, "*Q4_0.gguf", **kw)          # fnmatch's * crosses "/"
    with Llama.from_pretrained(REPO, "sub/b-*", additional_files=["a-Q8*"], **kw) as m:
        assert m.model_path.endswith(os.path.join(COMMIT, "sub", "b-Q4_0.gguf"))
    with pytest.raises(ValueError, match="No file found .* that match c-\\*"):
        Llama.from_pretrained(REPO, "a-Q8*", additional_files=["c-*"], **kw)


def test_not_cached_offline_is_a_clear_error(hub, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{REPO} is not in the Hugging Face cache"):
        Llama.from_pretrained(REPO, "*.gguf", cache_dir=tmp_path, local_files_only=True)


def test_local_dir(hub, tiny_path, tmp_path):
    """Files already in local_dir (as hf_hub_download(local_dir=...) leaves them) load offline."""
    (tmp_path / "sub").mkdir()
    shutil.copyfile(tiny_path, tmp_path / "sub" / "tiny.gguf")
    with Llama.from_pretrained(REPO, "*.gguf", local_dir=tmp_path, local_files_only=True,
                               verbose=False) as m:
        assert m.model_path == str(tmp_path / "sub" / "tiny.gguf")


def test_hf_hub_offline_environment(hub, tiny_path, tmp_path):
    """HF_HUB_OFFLINE=1 (read by huggingface_hub at import): the Hub is never asked."""
    snap = make_cache(tmp_path, tiny_path, ["tiny.gguf"])
    code = ("import sys; from pyinfer import Llama; "
            "m = Llama.from_pretrained(sys.argv[1], '*.gguf', cache_dir=sys.argv[2], verbose=False); "
            "print(m.model_path)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code, REPO, str(tmp_path)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(snap / "tiny.gguf")


def test_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)      # import raises ImportError
    with pytest.raises(ImportError, match="requires the huggingface-hub package.*"
                                          "pip install huggingface-hub"):
        Llama.from_pretrained("org/repo", "*.gguf")
