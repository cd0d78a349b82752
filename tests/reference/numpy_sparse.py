"""A numpy forward pass with PowerInfer's semantics: the oracle of the sparse engine.

Per layer the predictor scores every FFN neuron from the residual stream x
entering the FFN (before ffn_norm): score = fc2 . relu(fc1 . x); neuron i is
computed iff score[i] >= threshold, else its activation is 0. The FFN is
relu(gate)*up (llama) or relu(gate)*relu(up) (bamboo), and the down
projection sums act[i] * ffn_down_t[i] over the computed neurons.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from .numpy_llama import NumpyLlama


class NumpyPowerInfer(NumpyLlama):
    def __init__(self, path: str, cfg, threshold: float, dense: bool = False):
        # gguf's reader wants the GGUF magic: read a copy with it restored
        with tempfile.TemporaryDirectory() as d:
            copy = Path(d) / "model.gguf"
            shutil.copyfile(path, copy)
            with open(copy, "r+b") as f:
                f.write(b"GGUF")
            super().__init__(str(copy), cfg)
        self.threshold = threshold
        self.dense = dense
        self.both_relu = cfg.arch == "bamboo"
        self.active_fraction = []     # per FFN call: share of (token, neuron) pairs computed

    def ffn(self, i, x, h):
        p, w = f"blk.{i}.", self.w
        g = np.maximum(h @ w[p + "ffn_gate.weight"].T, 0.0)
        u = h @ w[p + "ffn_up.weight"].T
        act = g * (np.maximum(u, 0.0) if self.both_relu else u)
        if not self.dense:
            score = np.maximum(x @ w[p + "fc1.weight"].T, 0.0) @ w[p + "fc2.weight"].T
            fires = score >= self.threshold
            self.active_fraction.append(float(fires.mean()))
            act = act * fires
        return act @ w[p + "ffn_down_t.weight"]

    def greedy(self, prompt, n):
        """The n tokens greedy decoding appends to `prompt` (a full forward per step)."""
        tokens = list(prompt)
        for _ in range(n):
            tokens.append(int(np.argmax(self.forward(tokens)[-1])))
        return tokens[len(prompt):]
