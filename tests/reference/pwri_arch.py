"""PowerInfer (PWRI) files of the architecture oracles' checkpoints (tests/data/arch): the
checkpoint switched to a ReLU MLP (ReluFalcon's relu(up); OPT's is ReLU already) and
converted with random predictors, as PowerInfer's converter lays them out."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from pyinfer.convert.hf_config import load_params
from pyinfer.convert.hf_to_gguf import ConvertOptions, convert

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "arch")


def oracle_tokens(name: str, n: int):
    """The first n tokens of the fixture's oracle sequence."""
    with open(os.path.join(DATA, name, "oracle.json")) as f:
        return json.load(f)["tokens"][:n]


def write_pwri(name: str, d: str, predictor: bool = True, hidden: int = 16, seed: int = 3) -> str:
    """`d`/`name`.pwri.gguf (F32) from tests/data/arch/`name`, with predictors fc1 [hidden,
    n_embd] and fc2 [n_ff, hidden] drawn standard normal (scores of unit scale and more), or
    without any (predictor=False: the --sparse layout)."""
    hf = os.path.join(d, name + "_hf")
    shutil.copytree(os.path.join(DATA, name, "hf"), hf)
    with open(os.path.join(hf, "config.json")) as f:
        cfg = json.load(f)
    cfg["activation" if name.startswith("falcon") else "activation_function"] = "relu"
    with open(os.path.join(hf, "config.json"), "w") as f:
        json.dump(cfg, f)
    out = os.path.join(d, name + ".pwri.gguf")
    if not predictor:
        convert(hf, ConvertOptions(out, "f32", sparse=True, progress=False))
        return out
    p = load_params(hf)
    rng = np.random.default_rng(seed)
    pred = os.path.join(d, name + "_pred")
    os.makedirs(pred)
    for i in range(p.n_layer):
        np.savez(os.path.join(pred, f"model_{i}.npz"),
                 **{"fc1.weight": rng.standard_normal((hidden, p.n_embd)).astype(np.float32),
                    "fc2.weight": rng.standard_normal((p.n_ff, hidden)).astype(np.float32)})
    convert(hf, ConvertOptions(out, "f32", predictor_dir=pred, progress=False))
    return out
