"""The one decode loop: `generate_step(seq, prompt, sampler)` yields (token, logits) after
evaluating the prompt on a `Sequence`, forever (the caller stops).

Everything that generates goes through it: `Llama.generate` and completion/chat (through
`Llama.generate_tokens`), the CLI, and the server's parallel slots (whose sequences evaluate
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
                  evaluate: Optional[Callable[[List[int]], None]] = None, draft=None,
                  stats: Optional["SpecStats"] = None) -> Generator[Step, Optional[List[int]], None]:
    """Evaluate `prompt` on `seq` (keeping the prefix it already holds when `reuse`, else
    appending to what it holds) and yield a Step per sampled token, each evaluated before the
    next is sampled. `send(ids)` appends extra ids after the yielded token. Ends when
    `stopping_criteria(input_ids, logits)` says so. `on_reuse(kept, remaining)` is told how
    much of the prompt was already cached. `evaluate(tokens)` appends tokens to the sequence
    (default: seq.eval; Llama passes its own eval, which a subclass may override).

    Speculative decoding: `draft(input_ids) -> guessed next ids` (pyinfer.speculative:
    prompt lookup, a draft model). After each sampled token its guesses are evaluated with
    it in one forward, every position computed exactly as when decoded alone (rowwise), and
    sampling goes on through them while the sampled token equals the guess; the first
    mismatch drops the rest. The sampler sees the same logits in the same order as without a
    draft, so the output is identical (greedy or not); `stats` counts drafted and accepted."""
    tokens = [int(t) for t in prompt]
    if reuse:
        n_before = len(tokens)
        tokens = reuse_prefix(seq, tokens)
        if on_reuse is not None and len(tokens) < n_before:
            on_reuse(n_before - len(tokens), len(tokens))
    evaluate = evaluate or seq.eval
    if draft is not None and not seq.logits_all:
        raise ValueError("speculative decoding needs every position's logits: create the model "
                         "with logits_all=True (Llama does when given a draft_model)")
    sample_idx = seq.n_tokens + len(tokens) - 1
    guessed = 0                      # draft tokens at the end of the sequence's last eval
    while True:
        if guessed:
            seq.eval(tokens, rowwise=True)
        else:
            evaluate(tokens)
        while sample_idx < seq.n_tokens:
            # positions' ids: the sampler sees the sequence up to this position only
            ids = seq.input_ids[:sample_idx + 1]
            logits = seq.logits_at(sample_idx)
            token = sampler.sample(logits, ids)
            sampler.accept(token)
            sample_idx += 1
            if stopping_criteria is not None and stopping_criteria(ids, logits):
                if sample_idx < seq.n_tokens:
                    seq.truncate(sample_idx)
                return
            extra = yield Step(token, logits)
            tokens = [token] + [int(t) for t in (extra or ())]
            if sample_idx < seq.n_tokens:        # a draft guessed this position
                if token == seq.input_ids[sample_idx] and not extra:
                    if stats is not None:
                        stats.accepted += 1
                    continue                     # guessed right: its logits are computed
                seq.truncate(sample_idx)         # the rest of the draft is wrong
                break
        guessed = 0
        if draft is not None:
            guess = [int(t) for t in draft(np.concatenate([seq.input_ids[:seq.n_tokens],
                                                           np.asarray(tokens, dtype=np.intc)]))]
            guess = guess[:max(0, seq.n_ctx - seq.n_tokens - len(tokens))]
            if guess:
                tokens, guessed = tokens + guess, len(guess)
                if stats is not None:
                    stats.drafted += len(guess)
                    stats.steps += 1


class SpecStats:
    """Speculative decoding counts: draft tokens proposed, accepted, verification forwards."""

    def __init__(self):
        self.drafted = self.accepted = self.steps = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0
