"""Profiled FFN activation counts: reading what ``python convert.py profile`` (ours,
``profile.npz``) or PowerInfer (``activation_{i}.pt``) wrote, for the neuron placement."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

import numpy as np


@dataclass
class ActivationCounts:
    """Per-layer firing counts, and the number of tokens they were counted over (None for
    PowerInfer's .pt files, which do not say)."""
    counts: List[np.ndarray]
    n_tokens: Optional[int]

    def freq(self) -> List[np.ndarray]:
        """Firing frequencies per token. Without n_tokens the hottest neuron of the model
        is taken to fire on every token (an upper estimate)."""
        n = self.n_tokens or max(float(c.max()) for c in self.counts) or 1.0
        return [np.asarray(c, dtype=np.float64) / n for c in self.counts]



def load_activation_counts(directory: str) -> Optional[ActivationCounts]:
    """Counts from `directory`: our profile.npz, else PowerInfer's activation_{i}.pt (needs
    torch); None when there are neither."""
    npz = os.path.join(directory, "profile.npz")
    if os.path.exists(npz):
        with np.load(npz) as z:
            return ActivationCounts(list(z["counts"]), int(z["n_tokens"]))
    pts = []
    while os.path.exists(os.path.join(directory, f"activation_{len(pts)}.pt")):
        pts.append(os.path.join(directory, f"activation_{len(pts)}.pt"))
    if not pts:
        return None
    try:
        import torch
    except ImportError:
        raise RuntimeError(f"{directory} holds PowerInfer's activation_*.pt files: reading them "
                           "needs torch (pip install torch)") from None
    return ActivationCounts([torch.load(p, map_location="cpu").double().numpy().reshape(-1) for p in pts], None)
