"""Request limits: what a request may ask for, checked before it costs anything.

- `BodySizeLimit`: an ASGI middleware refusing a body larger than max_request_bytes with
  413 — at once when Content-Length says so, else as soon as the bytes read pass the limit
  (the rest is never read);
- `check_request`: the caps that need no model (OpenAI's: `logprobs` <= 5 for completions,
  `top_logprobs` <= 20 for chat, `n`, embedding inputs), each a ServerSettings field;
- `prompt_limit` / `PromptLimit`: the server's max_prompt_tokens when it is below the
  context size (the context size itself is `Llama`'s own check): a completion prompt is
  counted before it is evaluated; a chat prompt is rejected before evaluation when its
  messages' text alone is too long, and exactly, by a logits processor, before its first
  token is sampled. Both raise Llama's "Requested tokens (N) exceed context window of L",
  which the errors module answers as 400 context_length_exceeded.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from .errors import APIError
from .settings import ServerSettings


def _too_large(limit: int) -> str:
    return (f"The request body is larger than this server's limit of {limit} bytes "
            "(max_request_bytes)")


class BodySizeLimit:
    """ASGI middleware: HTTP request bodies of at most `limit` bytes."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    return await self._refuse(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:   # an HTTPException passes FastAPI's body parsing
                    raise HTTPException(413, _too_large(self.limit),
                                        headers={"Connection": "close"})
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, scope, receive, send):
        body = APIError(413, _too_large(self.limit), code="request_too_large").body()
        response = JSONResponse(body, status_code=413, headers={"Connection": "close"})
        await response(scope, receive, send)


def _cap(value: Optional[int], limit: int, name: str, setting: str) -> None:
    if value is not None and value > limit:
        raise APIError(400, f"{name} must be at most {limit} (this server's {setting}), "
                       f"got {value}", param=name)


def check_request(body: Any, ss: ServerSettings) -> None:
    """The limits of a completion, chat or embedding request that need no model."""
    if hasattr(body, "messages"):
        _cap(body.top_logprobs, ss.max_top_logprobs, "top_logprobs", "max_top_logprobs")
    elif hasattr(body, "prompt"):
        _cap(body.logprobs, ss.max_logprobs, "logprobs", "max_logprobs")
    if hasattr(body, "n"):
        _cap(body.n, ss.max_n, "n", "max_n")
        best_of = getattr(body, "best_of", None)
        if best_of is not None and best_of > max(body.n or 1, 1):
            raise APIError(400, "best_of greater than n is not supported (best_of == n "
                           "returns all n choices)", param="best_of", code="unsupported")
        if best_of is not None and best_of < (body.n or 1):
            raise APIError(400, "best_of must be at least n", param="best_of")
    inputs = getattr(body, "input", None)
    if isinstance(inputs, list):
        _cap(len(inputs), ss.max_embedding_inputs, "input", "max_embedding_inputs")


def prompt_limit(ss: ServerSettings, llama) -> Optional[int]:
    """The server's prompt limit when it is below the context size, else None (Llama
    itself refuses a prompt that does not fit the context)."""
    limit = ss.max_prompt_tokens
    if limit and limit < llama.n_ctx():
        return limit
    return None


def exceeded(n_tokens: int, limit: int) -> ValueError:
    return ValueError(f"Requested tokens ({n_tokens}) exceed context window of {limit}")


def check_completion_prompt(llama, prompt, limit: int, suffix: Optional[str] = None) -> None:
    """Count a completion prompt's tokens (as create_completion builds them; with a suffix,
    the fill-in-the-middle prompt with its FIM tokens)."""
    from ..completion import prompt_tokens
    n = len(prompt_tokens(llama, prompt, suffix))
    if n > limit:
        raise exceeded(n, limit)


def check_messages_text(llama, messages: List[Dict[str, Any]], limit: int) -> None:
    """A lower bound on a chat prompt: the tokens of its messages' text contents."""
    n = 0
    for m in messages:
        content = m.get("content")
        parts = [content] if isinstance(content, str) else [
            p.get("text") for p in content or () if isinstance(p, dict)]
        for text in parts:
            if isinstance(text, str) and text:
                n += len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))
                if n > limit:
                    raise exceeded(n, limit)


class PromptLimit:
    """Logits processor refusing, at its first call, a prompt longer than `limit` tokens
    (the prompt is every token evaluated before the first sample)."""

    def __init__(self, limit: int):
        self.limit, self.checked = limit, False

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if not self.checked:
            self.checked = True
            if len(input_ids) > self.limit:
                raise exceeded(len(input_ids), self.limit)
        return scores
