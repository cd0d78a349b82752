"""Sampling as small pure functions over a logits vector, composed by a factory.

Each filter takes float32 logits (n_vocab,) and returns logits where
excluded tokens are -inf. The chain and its order follow llama.cpp's default
sampler as llama-cpp-python configures it: logit bias, penalties, top-k,
typical-p, top-p, min-p, temperature, then a seeded draw (temperature 0 is
greedy).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence

import numpy as np



@dataclass
class SamplingSettings:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    logit_bias: Dict[int, float] = field(default_factory=dict)
    seed: Optional[int] = None


def apply_logit_bias(logits: np.ndarray, bias: Dict[int, float]) -> np.ndarray:
    if not bias:
        return logits
    out = logits.copy()
    for tok, b in bias.items():
        out[int(tok)] += b
    return out


def apply_penalties(logits: np.ndarray, last_tokens: Sequence[int], repeat: float = 1.0,
                    frequency: float = 0.0, presence: float = 0.0) -> np.ndarray:
    """llama.cpp's penalties over the recent tokens: divide positive logits
    (multiply negative ones) by `repeat`, subtract count*frequency and
    presence once per distinct token."""
    if len(last_tokens) == 0 or (repeat == 1.0 and frequency == 0.0 and presence == 0.0):
        return logits
    toks, counts = np.unique(np.asarray(last_tokens, dtype=np.int64), return_counts=True)
    out = logits.copy()
    v = out[toks]
    v = np.where(v > 0, v / repeat, v * repeat)
    out[toks] = v - counts * frequency - presence
    return out


# ---- filters over candidate sets ------------------------------------------
# A candidate set is (ids, logits): token ids and their logits, any order.
# Filters return a subset; they never return an empty set.

def top_k(ids: np.ndarray, logits: np.ndarray, k: int):
    if k <= 0 or k >= logits.size:
        return ids, logits
    keep = np.argpartition(-logits, k - 1)[:k]
    return ids[keep], logits[keep]


def _sorted(ids: np.ndarray, logits: np.ndarray):
    order = np.argsort(-logits, kind="stable")
    ids, logits = ids[order], logits[order]
    p = np.exp(logits.astype(np.float64) - float(logits[0]))
    return ids, logits, p / p.sum()


def top_p(ids: np.ndarray, logits: np.ndarray, p: float, min_keep: int = 1):
    """Keep the smallest prefix of the sorted distribution with mass >= p."""
    if p >= 1.0:
        return ids, logits
    ids, logits, probs = _sorted(ids, logits)
    n_keep = max(int(np.searchsorted(np.cumsum(probs), p)) + 1, min_keep)
    return ids[:n_keep], logits[:n_keep]


def min_p(ids: np.ndarray, logits: np.ndarray, p: float, min_keep: int = 1):
    """Keep tokens whose probability is at least p times the top one's."""
    if p <= 0.0:
        return ids, logits
    keep = logits >= logits.max() + np.float32(np.log(p))
    if keep.sum() < min_keep:
        return top_k(ids, logits, min_keep)
    return ids[keep], logits[keep]


def typical_p(ids: np.ndarray, logits: np.ndarray, p: float, min_keep: int = 1):
    """Locally typical sampling: keep the tokens whose surprise is closest to
    the entropy of the distribution, up to cumulative mass p."""
    if p >= 1.0:
        return ids, logits
    probs = softmax(logits)
    logp = np.log(np.maximum(probs, 1e-300))
    entropy = -(probs * logp).sum()
    order = np.argsort(np.abs(-logp - entropy), kind="stable")
    n_keep = max(int(np.searchsorted(np.cumsum(probs[order]), p)) + 1, min_keep)
    keep = order[:n_keep]
    return ids[keep], logits[keep]


def softmax(logits: np.ndarray) -> np.ndarray:
    lg = logits.astype(np.float64)
    p = np.exp(lg - lg.max())
    return p / p.sum()


def make_sampler(s: SamplingSettings) -> Callable[[np.ndarray, Sequence[int]], int]:
    """A function (logits, recent_tokens) -> token id applying `s`."""
    rng = np.random.default_rng(s.seed)

    def sample(logits: np.ndarray, recent: Sequence[int]) -> int:
        x = apply_logit_bias(logits, s.logit_bias)
        last = recent[-s.penalty_last_n:] if s.penalty_last_n > 0 else ()
        x = apply_penalties(x, last, s.repeat_penalty, s.frequency_penalty, s.presence_penalty)
        if s.temperature <= 0.0:
            return int(np.argmax(x))
        ids, lg = top_k(np.arange(x.size), x, s.top_k)
        ids, lg = typical_p(ids, lg, s.typical_p)
        ids, lg = top_p(ids, lg, s.top_p)
        ids, lg = min_p(ids, lg, s.min_p)
        probs = softmax(lg / np.float32(s.temperature))
        return int(ids[rng.choice(ids.size, p=probs)])

    return sample
