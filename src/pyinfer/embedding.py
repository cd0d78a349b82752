"""Embeddings as llama-cpp-python's `Llama.embed` computes them: the final normed hidden
states of each input, evaluated as its own sequence from position 0, then pooled:

    NONE  one vector per token (the default for llama-family models)
    MEAN  the mean over the tokens
    CLS   the first token's
    LAST  the last token's

with optional L2 normalization of each returned vector.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from .llama_options import (LLAMA_POOLING_TYPE_CLS, LLAMA_POOLING_TYPE_LAST,
                            LLAMA_POOLING_TYPE_MEAN, LLAMA_POOLING_TYPE_NONE)


def hidden_states(engine, tokens: Sequence[int]) -> np.ndarray:
    """(n_tokens, n_embd) float32 states of `tokens` at positions 0.. (the cache is reused)."""
    engine.truncate(0)
    step = engine.n_batch
    rows = [engine.forward(tokens[i:i + step], len(tokens[i:i + step]), embeddings=True)
            for i in range(0, len(tokens), step)]   # copies: forward returns no views
    engine.truncate(0)
    return np.concatenate(rows)


def pool(rows: np.ndarray, pooling_type: int, normalize: bool):
    """A list of floats (or, for NONE, one list per token)."""
    def out(v: np.ndarray) -> List[float]:
        n = float(np.linalg.norm(v))
        return (v / n if normalize and n != 0.0 else v).tolist()

    if pooling_type == LLAMA_POOLING_TYPE_NONE:
        return [out(r) for r in rows]
    if pooling_type == LLAMA_POOLING_TYPE_MEAN:
        return out(rows.mean(axis=0, dtype=np.float32))
    if pooling_type == LLAMA_POOLING_TYPE_CLS:
        return out(rows[0])
    if pooling_type == LLAMA_POOLING_TYPE_LAST:
        return out(rows[-1])
    raise ValueError(f"unsupported pooling type {pooling_type}")


def embed_texts(llama, texts: Sequence[str], normalize: bool, truncate: bool) -> Tuple[list, int]:
    """Pooled embeddings of each text, and the total token count."""
    data, total = [], 0
    for text in texts:
        tokens = llama.tokenize(text.encode("utf-8"))
        if truncate:
            tokens = tokens[:llama.n_batch]
        if len(tokens) > llama.n_batch:
            raise ValueError(f"Requested tokens ({len(tokens)}) exceed batch size of {llama.n_batch}")
        if not tokens:
            raise ValueError("cannot embed an input that has no tokens")
        total += len(tokens)
        data.append(pool(hidden_states(llama.engine, tokens), llama.pooling_type(), normalize))
    return data, total
