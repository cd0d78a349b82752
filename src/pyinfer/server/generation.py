"""How a completion or chat request becomes a `Llama` call: its keywords (logit_bias
forms, GBNF grammar, min_tokens), and the logits processors the server adds: banning
end-of-text before min_tokens, and stopping a non-streaming generation whose client left.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List

import anyio
import anyio.to_thread
import numpy as np
from fastapi import Request

from .errors import APIError
from .models import Lease


DISCONNECT_POLL_S = 0.25     # how often a non-streaming request checks for its client


class MinTokensProcessor:
    """Logits processor banning `eos` until `min_tokens` tokens have been generated."""

    def __init__(self, min_tokens: int, eos: int):
        self.min_tokens, self.eos, self.n_prompt = min_tokens, eos, None

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.n_prompt is None:
            self.n_prompt = len(input_ids)
        if len(input_ids) - self.n_prompt < self.min_tokens and 0 <= self.eos < len(scores):
            scores[self.eos] = -np.inf
        return scores


class ClientGone(Exception):
    """Raised inside generation when the client of a non-streaming request went away."""


class CancelCheck:
    """Logits processor (it changes nothing) that ends a generation once `event` is set:
    raising from the sampler leaves Llama's sequence state consistent."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.event.is_set():
            raise ClientGone("the client closed the connection")
        return scores


async def run_watching(request: Request, fn: Callable, event: threading.Event):
    """`fn()` in a worker thread; meanwhile, if the client disconnects, set `event`."""
    result: List[Any] = []
    failure: List[BaseException] = []

    async def work(scope: anyio.CancelScope):
        try:
            result.append(await anyio.to_thread.run_sync(fn))
        except Exception as e:          # re-raised below, not as an ExceptionGroup
            failure.append(e)
        finally:
            scope.cancel()

    async def watch():
        while not event.is_set():
            if await request.is_disconnected():
                event.set()
                return
            await anyio.sleep(DISCONNECT_POLL_S)

    async with anyio.create_task_group() as tg:
        tg.start_soon(work, tg.cancel_scope)
        tg.start_soon(watch)
    if failure:
        raise failure[0]
    return result[0]


def _grammar(text: str):
    try:
        from .. import LlamaGrammar
    except ImportError:
        raise NotImplementedError("grammar-constrained sampling (LlamaGrammar) is not "
                                  "available in this pyinfer build") from None
    return LlamaGrammar.from_string(text, verbose=False)


def single_prompt(prompt):
    """One prompt (text or token ids) from the OpenAI `prompt` forms."""
    if isinstance(prompt, str):
        return prompt
    if not prompt:
        return ""
    if all(isinstance(x, int) for x in prompt):
        return list(prompt)
    if len(prompt) == 1:
        return prompt[0]
    raise APIError(400, "only one prompt per request is supported", param="prompt")


def generation_kwargs(lease: Lease, body, cancel: threading.Event) -> Dict[str, Any]:
    """Llama keywords for a completion or chat request (`cancel`: set to stop it)."""
    llama = lease.llama
    kw = body.llama_kwargs()
    from ..sampling import LogitsProcessorList
    processors = LogitsProcessorList()
    kw["model"] = body.model or lease.alias
    if body.logit_bias:
        if body.logit_bias_type == "tokens":
            bias: Dict[int, float] = {}
            for text, value in body.logit_bias.items():
                for tok in llama.tokenize(text.encode("utf-8"), add_bos=False, special=True):
                    bias[tok] = value
            kw["logit_bias"] = bias
        else:
            try:
                kw["logit_bias"] = {int(k): v for k, v in body.logit_bias.items()}
            except ValueError:
                raise APIError(400, "logit_bias keys must be token ids (or set "
                               "logit_bias_type to 'tokens')", param="logit_bias") from None
    if body.grammar is not None:
        kw["grammar"] = _grammar(body.grammar)
    if body.min_tokens > 0:
        processors.append(MinTokensProcessor(body.min_tokens, llama.token_eos()))
    if not body.stream:     # a stream stops when its response is cancelled
        processors.append(CancelCheck(cancel))
    if processors:
        kw["logits_processor"] = processors
    return kw
