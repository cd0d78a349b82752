"""The one decode loop: `generate_step(seq, prompt, sampler)` yields (token, logits) after
evaluating the prompt on a `Sequence`, forever (the caller stops).

Everything that generates goes through it: `Llama.generate` and completion/chat (through
`Llama._generate`), the CLI, and the server's parallel slots (whose sequences evaluate
through the batching scheduler's runner). The sampler is any object with
``sample(logits, input_ids) -> token`` and ``accept(token)`` (pyinfer.sampling.Sampler:
penalties, logits processors, grammar, temperature chain); logits processors are functions
``(input_ids, scores) -> scores``.
"""
from __future__ import annotations

from typing import Callable, Generator, List, NamedTuple, Optional, Sequence as Seq

import numpy as np

from .llama_cache import longest_token_prefix
from .sequence import Sequence


class Step(NamedTuple):
    """One generated token and the logits it was sampled from."""
    token: int
    logits: np.ndarray

    @property
    def logprobs(self) -> np.ndarray:
        """log-softmax of the logits (float32)."""
        x = self.logits.astype(np.float32)
        m = x.max()
        return x - (m + np.log(np.exp(x - m).sum()))


def reuse_prefix(seq: Sequence, tokens: List[int]) -> List[int]:
    """Keep the longest prefix the sequence shares with `tokens` and return what remains to
    evaluate (one token is evaluated again when the prompt is all cached but its logits
    are not); everything when nothing is shared."""
    if seq.n_tokens == 0:
        return tokens
    prefix = longest_token_prefix(seq.tokens, tokens)
    consumed = prefix == len(tokens)
    if consumed and seq.n_tokens == len(tokens) and not seq.requires_eval:
        return []                        # the whole prompt is cached with its logits
    reuse = prefix - 1 if consumed else prefix
    if reuse > 0:
        seq.truncate(reuse)
        return tokens[reuse:]
    seq.reset()
    return tokens


def generate_step(seq: Sequence, prompt: Seq[int], sampler, stopping_criteria=None,
                  reuse: bool = True, on_reuse: Optional[Callable[[int, int], None]] = None,
                  evaluate: Optional[Callable[[List[int]], None]] = None
                  ) -> Generator[Step, Optional[List[int]], None]:
    """Evaluate `prompt` on `seq` (keeping the prefix it already holds when `reuse`, else
    appending to what it holds) and yield a Step per sampled token, each evaluated before the
    next is sampled. `send(ids)` appends extra ids after the yielded token. Ends when
    `stopping_criteria(input_ids, logits)` says so. `on_reuse(kept, remaining)` is told how
    much of the prompt was already cached. `evaluate(tokens)` appends tokens to the sequence
    (default: seq.eval; Llama passes its own eval, which a subclass may override)."""
    tokens = [int(t) for t in prompt]
    if reuse:
        n_before = len(tokens)
        tokens = reuse_prefix(seq, tokens)
        if on_reuse is not None and len(tokens) < n_before:
            on_reuse(n_before - len(tokens), len(tokens))
    evaluate = evaluate or seq.eval
    sample_idx = seq.n_tokens + len(tokens) - 1
    while True:
        evaluate(tokens)
        while sample_idx < seq.n_tokens:
            logits = seq.logits_at(sample_idx)
            ids = seq.input_ids[:seq.n_tokens]
            token = sampler.sample(logits, ids)
            sampler.accept(token)
            sample_idx += 1
            if stopping_criteria is not None and stopping_criteria(ids, logits):
                return
            extra = yield Step(token, logits)
            tokens = [token] + [int(t) for t in (extra or ())]
