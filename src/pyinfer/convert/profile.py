"""Activation profiling: which FFN neurons of a ReLU model fire, and how often.

``profile_model`` runs pyinfer over a corpus (default: the prose of the standard library's
``pydoc_data.topics``; or text files / directories) with the model's FFN computed densely
(every neuron: the true ReLU activations, not the predictor's guess) and counts, per layer
and neuron, the tokens on which the neuron's activation is non-zero. Optionally it keeps a
random sample of tokens' FFN inputs x (the residual stream before ffn_norm, what the
predictor reads) with their true activation masks, the training data of
predictor_train.py.

The FFN is captured without touching the model graph: the forward is built with an FFN
builder of our own (model/llama.py's hook) that computes the dense ReLU FFN of the file
and marks its input x and its activations as graph outputs (``Tensor.set_output``), so
their memory survives the run and is read through numpy views after each forward.

Output (``ProfileResult.save``) in one directory, PowerInfer's layout plus ours:
  activation_{i}.pt  PowerInfer's: a 1-D int64 torch tensor [n_ff] of counts per layer
                     (written only when torch is importable)
  profile.npz        ours, torch-free: counts int64 [n_layer, n_ff], n_tokens, model, corpus
  samples.npz        with samples: x_{i} float32 [S, n_embd], mask_{i} uint8 [S, ceil(n_ff/8)]
                     (np.packbits of the bool mask along neurons), n_ff
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence

import numpy as np

from pyinfer.config import ContextSettings, ModelConfig
from pyinfer.engine import Engine
from pyinfer.gguf_model import GGUFFile
from pyinfer.model.llama import ForwardGraph
from pyinfer.progress import bar
from pyinfer.tensor import Unary
from pyinfer.tokenizer import Tokenizer
from pyinfer.offload.activation_counts import ActivationCounts, load_activation_counts  # noqa: F401 (re-exported)

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")


def default_corpus() -> List[str]:
    """The documents of pydoc_data.topics (about 460 KB of English prose), in key order."""
    from pydoc_data.topics import topics
    return [topics[k] for k in sorted(topics)]


def read_corpus(paths: Sequence[str]) -> List[str]:
    """Documents from text files, or from the text files (*.txt, *.md, *.rst) under directories."""
    docs = []
    for p in paths:
        if os.path.isdir(p):
            for root, _, files in sorted(os.walk(p)):
                for name in sorted(files):
                    if name.endswith(TEXT_SUFFIXES):
                        docs.append(_read(os.path.join(root, name)))
        elif os.path.isfile(p):
            docs.append(_read(p))
        else:
            raise FileNotFoundError(f"corpus path {p} does not exist")
    if not docs:
        raise ValueError(f"no text files found in {', '.join(paths)}")
    return docs


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


@dataclass
class ProfileResult:
    counts: np.ndarray                 # int64 [n_layer, n_ff]: tokens on which each neuron fired
    n_tokens: int
    model: str = ""
    corpus: str = ""
    seconds: float = 0.0
    x: List[np.ndarray] = field(default_factory=list)      # per layer float32 [S, n_embd]
    mask: List[np.ndarray] = field(default_factory=list)   # per layer bool [S, n_ff]

    @property
    def density(self) -> np.ndarray:
        """Mean share of neurons firing per token, per layer."""
        return self.counts.sum(axis=1) / max(self.n_tokens, 1) / self.counts.shape[1]

    def save(self, directory: str, torch_files: bool = True) -> List[str]:
        """Write the files listed in the module docstring; returns their paths."""
        os.makedirs(directory, exist_ok=True)
        written = [os.path.join(directory, "profile.npz")]
        np.savez(written[0], counts=self.counts, n_tokens=self.n_tokens, model=self.model,
                 corpus=self.corpus)
        if self.x:
            path = os.path.join(directory, "samples.npz")
            arrays = {"n_ff": self.counts.shape[1]}
            for i, (x, m) in enumerate(zip(self.x, self.mask)):
                arrays[f"x_{i}"] = x
                arrays[f"mask_{i}"] = np.packbits(m, axis=1)
            np.savez(path, **arrays)
            written.append(path)
        if torch_files:
            try:
                import torch
            except ImportError:
                torch = None
            if torch is not None:
                for i, c in enumerate(self.counts):
                    path = os.path.join(directory, f"activation_{i}.pt")
                    torch.save(torch.from_numpy(np.ascontiguousarray(c, dtype=np.int64)), path)
                    written.append(path)
        return written


def load_samples(directory: str):
    """(x, mask) lists from samples.npz: per layer float32 [S, n_embd] and bool [S, n_ff]."""
    with np.load(os.path.join(directory, "samples.npz")) as z:
        n_ff = int(z["n_ff"])
        n = sum(1 for k in z.files if k.startswith("x_"))
        xs = [z[f"x_{i}"] for i in range(n)]
        masks = [np.unpackbits(z[f"mask_{i}"], axis=1, count=n_ff).astype(bool) for i in range(n)]
    return xs, masks


class _Taps:
    """An FFN builder computing the dense ReLU FFN and keeping (x, act) of every layer."""

    def __init__(self, engine: Engine):
        self.layer_of = {id(layer): i for i, layer in enumerate(engine.weights.layers)}
        self.both_relu = engine.cfg.ffn_gate_both or engine.cfg.arch == "bamboo"
        self.taps: dict = {}

    def __call__(self, ctx, layer, x, h):
        act = ctx.glu(ctx.mul_mat(layer.w_gate, h), ctx.mul_mat(layer.w_up, h), Unary.RELU,
                      gate_b=self.both_relu)
        self.taps[self.layer_of[id(layer)]] = (x.set_output(), act.set_output())
        if layer.w_down_t is not None:
            return ctx.axpy_sparse(layer.w_down_t, act)
        return ctx.mul_mat(layer.w_down, act)


class _Runner:
    """Forward graphs per chunk size, each with its taps' numpy views."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.graphs: dict = {}

    def run(self, tokens: Sequence[int], pos0: int):
        n = len(tokens)
        if n not in self.graphs:
            taps = _Taps(self.engine)
            e = self.engine
            g = ForwardGraph(e.cfg, e.weights, e.kv, n, n, e.n_threads, embeddings=True, ffn=taps)
            views = [(taps.taps[i][0].numpy(), taps.taps[i][1].numpy()) for i in range(e.cfg.n_layer)]
            self.graphs[n] = (g, views)
        g, views = self.graphs[n]
        g.tokens[:] = tokens
        g.pos[:] = np.arange(pos0, pos0 + n, dtype=np.int32)
        g.run(self.engine.pool)
        return views

    def close(self):
        for g, _ in self.graphs.values():
            g.close()
        self.graphs.clear()


def tokenize_corpus(tokenizer: Tokenizer, docs: Iterable[str], max_tokens: Optional[int]) -> List[List[int]]:
    """Token ids of each document (BOS as the vocab asks), stopping once max_tokens are had."""
    out, total = [], 0
    for d in docs:
        ids = tokenizer.tokenize(d.encode("utf-8"), add_bos=True)
        if max_tokens is not None:
            ids = ids[:max_tokens - total]
        if ids:
            out.append(ids)
            total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    return out


def profile_model(model_path: str, docs: Optional[Sequence[str]] = None, *,
                  token_docs: Optional[Sequence[Sequence[int]]] = None, max_tokens: Optional[int] = None,
                  n_ctx: int = 512, n_batch: int = 128, samples: int = 0, seed: int = 0,
                  n_threads: int = 0, progress: bool = True, corpus_name: str = "") -> ProfileResult:
    """Count per-layer neuron firings of `model_path` (a ReLU model: PowerInfer file or a
    ReLU llama GGUF) over `docs` (texts; default the pydoc corpus) or `token_docs` (token id
    lists). Each document is cut into windows of n_ctx tokens run from position 0, in
    chunks of n_batch. `samples` > 0 keeps that many random tokens' (x, mask) per layer."""
    f = GGUFFile(model_path)
    act = ModelConfig.from_metadata(f.metadata).ffn_act
    sparse_layout = any(name.endswith(".ffn_down_t.weight") for name in f.tensors)
    if act != "relu" and not sparse_layout:     # checked before loading: the wrong model, one message
        raise ValueError(f"{model_path}: FFN activation is {act}, not ReLU: nothing to profile "
                         "(neurons are never exactly zero)")
    # dense: no predictor graph is built for a PowerInfer file (our FFN builder runs instead)
    engine = Engine(f, ContextSettings(n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads, dense=sparse_layout))
    try:
        if token_docs is None:
            if docs is None:
                docs, corpus_name = default_corpus(), corpus_name or "pydoc_data.topics"
            tok = Tokenizer.from_gguf(engine.file.reader)
            token_docs = tokenize_corpus(tok, docs, max_tokens)
        elif max_tokens is not None:
            token_docs = _clip(token_docs, max_tokens)
        return _profile(engine, token_docs, n_ctx, n_batch, samples, seed, progress,
                        os.path.basename(model_path), corpus_name)
    finally:
        engine.close()


def _clip(docs, max_tokens):
    out, total = [], 0
    for d in docs:
        d = list(d)[:max_tokens - total]
        if d:
            out.append(d)
            total += len(d)
    return out


def _profile(engine, token_docs, n_ctx, n_batch, samples, seed, progress, model, corpus) -> ProfileResult:
    cfg = engine.cfg
    windows = [d[s:s + n_ctx] for d in token_docs for s in range(0, len(d), n_ctx)]
    total = sum(len(w) for w in windows)
    if total == 0:
        raise ValueError("the corpus has no tokens")
    keep = np.zeros(total, dtype=bool)
    if samples > 0:
        keep[np.random.default_rng(seed).choice(total, size=min(samples, total), replace=False)] = True
    counts = np.zeros((cfg.n_layer, cfg.n_ff), dtype=np.int64)
    xs = [[] for _ in range(cfg.n_layer)]
    masks = [[] for _ in range(cfg.n_layer)]
    runner = _Runner(engine)
    b = bar(total, "profiling", "tok", progress)
    t0, done = time.perf_counter(), 0
    try:
        for w in windows:
            for s in range(0, len(w), n_batch):
                chunk = w[s:s + n_batch]
                views = runner.run(chunk, s)
                rows = np.flatnonzero(keep[done:done + len(chunk)])
                for i, (x, act) in enumerate(views):
                    fired = act != 0
                    counts[i] += fired.sum(axis=0)
                    if rows.size:
                        xs[i].append(np.array(x[rows], dtype=np.float32))
                        masks[i].append(fired[rows].copy())
                done += len(chunk)
                b.update(len(chunk))
    finally:
        runner.close()
        b.close()
    seconds = time.perf_counter() - t0
    result = ProfileResult(counts, total, model, corpus, seconds)
    if samples > 0:
        result.x = [np.concatenate(v) for v in xs]
        result.mask = [np.concatenate(v) for v in masks]
    return result


def perplexity(model_path: str, token_docs: Sequence[Sequence[int]], n_ctx: int = 256,
               n_threads: int = 0, **settings) -> float:
    """exp(mean negative log-likelihood) of each next token of `token_docs`, each cut into
    windows of n_ctx run from position 0 (ContextSettings keywords in `settings`, e.g.
    dense=True or sparse_threshold)."""
    engine = Engine(model_path, ContextSettings(n_ctx=n_ctx, n_batch=min(n_ctx, 128),
                                                n_threads=n_threads, **settings))
    nll, n = 0.0, 0
    try:
        for d in token_docs:
            for s in range(0, len(d), n_ctx):
                w = list(d[s:s + n_ctx])
                if len(w) < 2:
                    continue
                engine.truncate(0)
                logits = engine.decode(w, logits_all=True)[:-1].astype(np.float64)
                m = logits.max(axis=1, keepdims=True)
                logz = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))
                nll += float((logz - logits[np.arange(len(w) - 1), w[1:]]).sum())
                n += len(w) - 1
    finally:
        engine.close()
    return math.exp(nll / max(n, 1))
