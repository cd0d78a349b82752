"""How a completion or chat request becomes a `Llama` call: its keywords (logit_bias
forms, GBNF grammar, min_tokens), and the logits processors the server adds: banning
end-of-text before min_tokens, the server's prompt limit, and stopping a non-streaming
generation whose client left. `prepared_call` does all of it, and the call, in one function
that the app runs in a worker thread holding the model's lease: grammar parsing, template
rendering and tokenizing never run on the event loop. `n` choices are generated one after
another and merged into one response (or one stream, choice after choice).
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Iterator, List, Optional

import anyio
import anyio.to_thread
import numpy as np
from fastapi import Request

from .errors import APIError
from .limits import PromptLimit, check_completion_prompt, check_messages_text, prompt_limit
from .models import Lease
from .settings import ServerSettings


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


def _logit_bias(llama, body) -> Dict[int, float]:
    """The request's logit_bias as token ids -> bias, each id checked against the vocabulary
    (llama-cpp-python would index from the end for a negative id and fail mid-generation
    for one past the vocabulary)."""
    from ..sampling import check_logit_bias
    if body.logit_bias_type == "tokens":
        bias: Dict[int, float] = {}
        for text, value in body.logit_bias.items():
            for tok in llama.tokenize(text.encode("utf-8"), add_bos=False, special=True):
                bias[tok] = value
    else:
        try:
            bias = {int(k): v for k, v in body.logit_bias.items()}
        except ValueError:
            raise APIError(400, "logit_bias keys must be token ids (or set "
                           "logit_bias_type to 'tokens')", param="logit_bias") from None
    try:
        return check_logit_bias(bias, llama.n_vocab())
    except ValueError as e:
        raise APIError(400, str(e), param="logit_bias") from None


def generation_kwargs(lease: Lease, body, cancel: threading.Event,
                      limit: Optional[int] = None) -> Dict[str, Any]:
    """Llama keywords for a completion or chat request (`cancel`: set to stop it; `limit`:
    the server's prompt limit in tokens, None for the context size). Parses the grammar and
    tokenizes: run it off the event loop."""
    llama = lease.llama
    kw = body.llama_kwargs()
    from ..sampling import LogitsProcessorList
    processors = LogitsProcessorList()
    kw["model"] = lease.answer_name
    if body.logit_bias:
        kw["logit_bias"] = _logit_bias(llama, body)
    if body.grammar is not None:
        kw["grammar"] = _grammar(body.grammar)
    if limit is not None:
        if hasattr(body, "messages"):
            check_messages_text(llama, body.messages, limit)
            processors.append(PromptLimit(limit))
        else:
            check_completion_prompt(llama, single_prompt(body.prompt), limit, body.suffix)
    if body.min_tokens > 0:
        processors.append(MinTokensProcessor(body.min_tokens, llama.token_eos()))
    if not body.stream:     # a stream stops when its response is cancelled
        processors.append(CancelCheck(cancel))
    if processors:
        kw["logits_processor"] = processors
    return kw


def _choice_seed(seed: Optional[int], i: int) -> Optional[int]:
    """Choice i of a seeded request uses seed + i: reproducible, and the choices differ."""
    return None if seed is None else (seed + i) & 0xFFFFFFFF


def merge_choices(results: List[Dict[str, Any]]) -> Dict[str, Any]:
    """n single-choice responses -> one response with choices 0..n-1 (usage: one prompt,
    the completions' tokens summed)."""
    out = dict(results[0])
    out["choices"] = [{**r["choices"][0], "index": i} for i, r in enumerate(results)]
    usage = results[0].get("usage")
    if usage is not None:
        completion = sum(r["usage"]["completion_tokens"] for r in results)
        out["usage"] = {**usage, "completion_tokens": completion,
                        "total_tokens": usage["prompt_tokens"] + completion}
    return out


def _chained(first: Iterator[Dict[str, Any]], more: Callable[[int], Iterator[Dict[str, Any]]],
             n: int) -> Iterator[Dict[str, Any]]:
    """The chunks of choice 0, then of choices 1..n-1 (made by `more(i)` when their turn
    comes), each chunk carrying its choice index and the first stream's id."""
    head = None
    for i in range(n):
        chunks = first if i == 0 else more(i)
        try:
            for chunk in chunks:
                if head is None:
                    head = (chunk.get("id"), chunk.get("created"))
                chunk["id"], chunk["created"] = head
                chunk["choices"][0]["index"] = i
                yield chunk
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()


def prepared_call(lease: Lease, body, call: Callable, cancel: threading.Event,
                  ss: ServerSettings):
    """Prepare the request and run `call(llama, **kwargs)` for each of its `n` choices: the
    merged response, or for a stream an iterator of chunks. Blocking: run it in a worker
    thread while holding `lease`."""
    limit = prompt_limit(ss, lease.llama)
    n = max(body.n or 1, 1)

    def one(i: int):
        kw = generation_kwargs(lease, body, cancel, limit)
        kw["seed"] = _choice_seed(body.seed, i)
        return call(lease.llama, **kw)

    if not body.stream:
        results = [one(i) for i in range(n)]
        return results[0] if n == 1 else merge_choices(results)
    first = one(0)
    return first if n == 1 else _chained(first, one, n)
