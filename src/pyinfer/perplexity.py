"""Perplexity of a GGUF model on text, computed the way llama.cpp's `perplexity` tool does.

    python -m pyinfer.perplexity MODEL.gguf [--text FILE] [-c N_CTX] [--chunks N | --all]
                                 [-t THREADS] [--bos auto|yes|no] [--dense] [--no-progress]

The text (default: the standard library's ``pydoc_data.topics``, its topic strings
joined with blank lines in sorted-key order, see :func:`default_corpus`; 113k tokens for
SmolLM2) is tokenized once; the tokens are cut into non-overlapping chunks of ``n_ctx``
(a trailing partial chunk is dropped). The command scores the first ``--chunks``
(default 16, 8192 tokens at n_ctx 512: 40-65 s for SmolLM2 on 2 threads); ``--all``
scores every chunk (220 for SmolLM2 at 512: 10-15 minutes). Each chunk is evaluated from an empty KV
cache; its first token is replaced by BOS when the model adds one (``--bos auto``,
llama.cpp's rule) or when asked (``--bos yes``). Only the second half of each chunk is
scored: the logits at positions ``n_ctx/2 .. n_ctx-2`` predict tokens
``n_ctx/2+1 .. n_ctx-1``, so every scored token sees at least ``n_ctx/2`` tokens of
context. Perplexity is ``exp(mean negative log-likelihood)`` over all scored tokens; the
running value after each chunk is printed as llama.cpp prints it (``[1]17.1,[2]16.5,...``),
while a progress bar on stderr shows the chunks done, the total and the ETA.

A model calibrated by ``python -m pyinfer.sparsity calibrate`` runs with its sparse
FFN; ``--dense`` runs it densely (the quality cost is the difference).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

from . import cli_util
from .progress import bar

DEFAULT_CHUNKS = 16     # 8192 tokens at n_ctx 512: about a minute for SmolLM2 on 2 threads


def default_corpus() -> str:
    """The stdlib's pydoc topic texts, joined by a blank line in sorted-key order."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k] for k in sorted(topics))


def read_text(paths: Optional[Sequence[str]]) -> str:
    """The files' text joined by a blank line, or the default corpus when there are none."""
    if not paths:
        return default_corpus()
    parts = []
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as f:
            parts.append(f.read())
    return "\n\n".join(parts)


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits[i])[targets[i]] per row, in float64. logits (n, n_vocab)."""
    z = logits.astype(np.float64)
    mx = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - mx).sum(axis=1)) + mx[:, 0]
    return lse - z[np.arange(len(targets)), targets]


def chunk_nll(logits: np.ndarray, chunk: Sequence[int]) -> np.ndarray:
    """NLL of the scored half of one chunk: logits (n_ctx - n_ctx//2, n_vocab) of the
    chunk's positions n_ctx//2 .. n_ctx-1; chunk the original tokens (the BOS written
    over the first one is not a target)."""
    n_ctx = len(chunk)
    first = n_ctx // 2
    targets = np.asarray(chunk[first + 1:], dtype=np.int64)
    return token_nll(logits[:n_ctx - 1 - first], targets)


@dataclass
class PerplexityResult:
    n_ctx: int
    chunk_nll: List[float] = field(default_factory=list)   # summed NLL per chunk
    n_scored: int = 0                                      # scored tokens in all chunks
    seconds: float = 0.0
    n_text_tokens: int = 0                                 # tokens of the whole text

    @property
    def ppl(self) -> float:
        return math.exp(sum(self.chunk_nll) / self.n_scored) if self.n_scored else float("nan")

    @property
    def n_chunks_in_text(self) -> int:
        return self.n_text_tokens // self.n_ctx

    def running(self) -> List[float]:
        """Perplexity after each chunk (llama.cpp's printed sequence)."""
        per = self.n_ctx - 1 - self.n_ctx // 2
        return [math.exp(s / (per * (i + 1))) for i, s in enumerate(np.cumsum(self.chunk_nll))]


def chunks_of(tokens: Sequence[int], n_ctx: int, n_chunks: int = -1) -> List[List[int]]:
    """Non-overlapping chunks of n_ctx tokens (at most n_chunks when > 0)."""
    n = len(tokens) // n_ctx
    if n_chunks > 0:
        n = min(n, n_chunks)
    return [list(tokens[i * n_ctx:(i + 1) * n_ctx]) for i in range(n)]


def evaluate(logits_of: Callable[[List[int]], np.ndarray], tokens: Sequence[int], n_ctx: int,
             n_chunks: int = -1, bos: Optional[int] = None,
             on_chunk: Optional[Callable[[int, float], None]] = None,
             progress: bool = False) -> PerplexityResult:
    """Perplexity with `logits_of(chunk)`: the logits of a chunk run from an empty cache
    at its positions n_ctx//2 .. n_ctx-1 (the only ones scored); `bos`: the id written
    over each chunk's first token (None: keep it). `on_chunk(i, running_ppl)` after each
    chunk; `progress`: a bar on stderr (chunks done of the total, ETA, running ppl)."""
    if n_ctx < 4:
        raise ValueError(f"n_ctx must be at least 4, got {n_ctx}")
    chunks = chunks_of(tokens, n_ctx, n_chunks)
    if not chunks:
        raise ValueError(f"the text has {len(tokens)} tokens: fewer than one chunk of {n_ctx}")
    res = PerplexityResult(n_ctx, n_text_tokens=len(tokens))
    t0 = time.perf_counter()
    with bar(len(chunks), "perplexity", "chunk", progress) as b:
        for i, chunk in enumerate(chunks):
            inp = list(chunk)
            if bos is not None:
                inp[0] = bos
            nll = chunk_nll(logits_of(inp), chunk)
            res.chunk_nll.append(float(nll.sum()))
            res.n_scored += len(nll)
            ppl = res.running()[-1]
            b.set_postfix_str(f"ppl {ppl:.4f}", refresh=False)
            b.update(1)
            if on_chunk:
                on_chunk(i, ppl)
    res.seconds = time.perf_counter() - t0
    return res


def second_half_logits(eng, chunk: Sequence[int]) -> np.ndarray:
    """Run `chunk` on an Engine from an empty cache in n_batch pieces, computing output
    rows (the vocabulary projection) only for positions n_ctx//2 and later."""
    n, first = len(chunk), len(chunk) // 2
    eng.truncate(0)
    out = []
    for i in range(0, n, eng.n_batch):
        piece = chunk[i:i + eng.n_batch]
        need = min(len(piece), i + len(piece) - first)
        logits = eng.forward(piece, n_outputs=max(need, 1))
        if need > 0:
            out.append(logits.copy())
    return np.concatenate(out)


def model_perplexity(model_path: str, text: str, n_ctx: int = 512, n_chunks: int = -1,
                     n_threads: int = 0, bos: str = "auto", dense: bool = False,
                     on_chunk: Optional[Callable[[int, float], None]] = None,
                     progress: bool = False, cache_type: str = "f16") -> PerplexityResult:
    """Perplexity of the model at `model_path` on `text` (see the module docstring);
    n_chunks <= 0: every chunk of the text; `cache_type`: the KV cache's type (f16, f32,
    q8_0, q4_0: llama-perplexity's -ctk/-ctv)."""
    from .config import ContextSettings
    from .engine import Engine
    from .gguf_model import GGUFFile
    from .tokenizer import Tokenizer

    f = GGUFFile(model_path)
    vocab = Tokenizer.from_gguf(f.reader)
    add_bos = bool(f.metadata.get("tokenizer.ggml.add_bos_token", True))
    if bos not in ("auto", "yes", "no"):
        raise ValueError(f"bos must be auto, yes or no, got {bos!r}")
    use_bos = add_bos if bos == "auto" else bos == "yes"
    bos_id = int(f.metadata.get("tokenizer.ggml.bos_token_id", 1))
    # llama.cpp tokenizes with add_special: BOS in front when the model adds one
    tokens = vocab.tokenize(text.encode("utf-8"), add_bos=add_bos)
    eng = Engine(f, ContextSettings(n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_threads=n_threads,
                                    dense=dense, kv_type=cache_type))
    try:
        def logits_of(chunk):
            return second_half_logits(eng, chunk)
        return evaluate(logits_of, tokens, n_ctx, n_chunks, bos_id if use_bos else None, on_chunk, progress)
    finally:
        eng.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = cli_util.ArgumentParser(prog="python -m pyinfer.perplexity", description=__doc__)
    ap.add_argument("model", type=cli_util.existing_file, help="GGUF model (plain, calibrated or PowerInfer)")
    ap.add_argument("--text", action="append", type=cli_util.existing_file,
                    help="text file (repeatable; default: the pydoc_data.topics corpus)")
    ap.add_argument("-c", "--ctx-size", type=cli_util.bounded(int, 4, name="n_ctx"), default=512,
                    help="tokens per chunk")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--chunks", type=cli_util.positive_int, default=DEFAULT_CHUNKS,
                      help="score the first N chunks of the text")
    size.add_argument("--all", action="store_true", help="score every chunk of the text")
    ap.add_argument("-t", "--threads", type=cli_util.non_negative_int, default=0,
                    help="threads (0: one per core)")
    ap.add_argument("--bos", choices=("auto", "yes", "no"), default="auto",
                    help="write BOS over each chunk's first token: auto = when the model adds BOS")
    ap.add_argument("--dense", action="store_true", help="run a sparse (calibrated) model densely")
    kv_types = ("f16", "f32", "q8_0", "q4_0")
    ap.add_argument("-ctk", "--cache-type-k", choices=kv_types, default="f16", help="KV cache type of K")
    ap.add_argument("-ctv", "--cache-type-v", choices=kv_types, default="f16",
                    help="KV cache type of V (pyinfer keeps K and V in one type: give the same as -ctk)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = ap.parse_args(argv)
    return cli_util.run(lambda: _main(args), ap.prog)


def _main(args) -> int:
    show = not args.no_progress
    if args.cache_type_k != args.cache_type_v:
        raise ValueError(f"-ctk {args.cache_type_k} and -ctv {args.cache_type_v} differ: pyinfer keeps "
                                  "K and V in one type")

    def stream(i, ppl):     # the running values as llama.cpp streams them (with a bar: at the end)
        print(f"{',' if i else ''}[{i + 1}]{ppl:.4f}", end="", flush=True)
    res = model_perplexity(args.model, read_text(args.text), args.ctx_size, -1 if args.all else args.chunks,
                           args.threads, args.bos, args.dense, on_chunk=None if show else stream, progress=show,
                           cache_type=args.cache_type_k)
    if show:
        print(",".join(f"[{i + 1}]{p:.4f}" for i, p in enumerate(res.running())), end="")
    print()
    n = len(res.chunk_nll)
    corpus = "the text" if args.text else "pydoc_data.topics"
    print(f"Final estimate: PPL = {res.ppl:.4f} over {n} of {res.n_chunks_in_text} chunks of {res.n_ctx} "
          f"tokens of {corpus} ({res.n_text_tokens} tokens; {res.n_scored} scored), {res.seconds:.1f} s"
          + ("" if n == res.n_chunks_in_text else "; --all scores every chunk"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
