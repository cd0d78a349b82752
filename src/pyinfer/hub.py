"""`Llama.from_pretrained`: a GGUF file from a Hugging Face Hub repository, through the
optional `huggingface_hub` package (`pip install huggingface-hub`).

    path = download_gguf("org/model-GGUF", "*Q4_K_M.gguf")

As llama-cpp-python: `filename` (and each of `additional_files`, e.g. the other shards of
a split model) is a file name or glob pattern that must match exactly one file of the
repository (sub-folders included); the files go to the Hugging Face cache (`cache_dir`,
default ~/.cache/huggingface/hub) or, with `local_dir`, into that folder.

Offline (`local_files_only=True`, or `HF_HUB_OFFLINE=1`) the repository's files are
listed from the cache (or `local_dir`) instead of the Hub, and hf_hub_download only
looks there: a model downloaded once loads without a network. Otherwise the Hub lists the
files (llama-cpp-python does so always), so with no network and neither switch set the
call fails with huggingface_hub's connection error.
`local_dir_use_symlinks` is accepted for llama-cpp-python's signature; huggingface_hub
no longer takes it (files in `local_dir` are plain copies).
"""
from __future__ import annotations

import fnmatch
import json
import os
from typing import List, Optional, Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]


def _hub():
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.utils
    except ImportError:
        raise ImportError("Llama.from_pretrained requires the huggingface-hub package. "
                          "You can install it with `pip install huggingface-hub`.") from None
    return huggingface_hub


def _offline(hub) -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (is_offline_mode() where it has one)."""
    check = getattr(hub, "is_offline_mode", None)
    return bool(check() if check is not None else hub.constants.HF_HUB_OFFLINE)


def repo_files(repo_id: str, local_dir: Optional[PathLike] = None,
               cache_dir: Optional[PathLike] = None, local_files_only: bool = False) -> List[str]:
    """The repository's file paths (relative, '/'-separated): from the Hub, or offline
    from `local_dir` or the cached snapshot of the main revision."""
    hub = _hub()
    hub.utils.validate_repo_id(repo_id)
    if not (local_files_only or _offline(hub)):
        return list(hub.list_repo_files(repo_id))
    if local_dir is not None:
        root = os.fspath(local_dir)
    else:
        try:
            root = hub.snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True)
        except FileNotFoundError as e:   # huggingface_hub's LocalEntryNotFoundError
            raise FileNotFoundError(
                f"{repo_id} is not in the Hugging Face cache "
                f"({cache_dir or hub.constants.HF_HUB_CACHE}) and the Hub is not to be asked "
                "(local_files_only or HF_HUB_OFFLINE): download it once online") from e
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not (dirpath == root and d == ".cache")]
        rel = os.path.relpath(dirpath, root)
        files += [name if rel == "." else f"{rel}/{name}".replace(os.sep, "/") for name in filenames]
    return sorted(files)


def match_one(repo_id: str, pattern: str, files: Sequence[str]) -> str:
    """The single file of `files` that `pattern` matches (llama-cpp-python's errors else)."""
    found = [f for f in files if fnmatch.fnmatch(f, pattern)]
    if not found:
        raise ValueError(f"No file found in {repo_id} that match {pattern}\n\n"
                         f"Available Files:\n{json.dumps(list(files))}")
    if len(found) > 1:
        raise ValueError(f"Multiple files found in {repo_id} matching {pattern}\n\n"
                         f"Available Files:\n{json.dumps(list(files))}")
    return found[0]


def download_gguf(repo_id: str, filename: str, additional_files: Optional[Sequence[str]] = None,
                  local_dir: Optional[PathLike] = None, cache_dir: Optional[PathLike] = None,
                  local_files_only: bool = False) -> str:
    """Fetch the file `filename` matches (and those `additional_files` match); return the
    local path of the first."""
    if not isinstance(filename, str) or not filename:
        raise ValueError("from_pretrained needs a filename (or glob pattern) of a GGUF file "
                         f"in {repo_id}")
    hub = _hub()
    files = repo_files(repo_id, local_dir, cache_dir, local_files_only)
    wanted = [match_one(repo_id, p, files) for p in [filename, *(additional_files or ())]]
    offline = local_files_only or _offline(hub)
    paths = [hub.hf_hub_download(repo_id=repo_id, filename=f, local_dir=local_dir,
                                 cache_dir=cache_dir, local_files_only=offline)
             for f in wanted]
    return paths[0]
