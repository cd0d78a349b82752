"""Server-sent events for a generation that holds the model's lease.

The chunks iterator (Llama's stream) is advanced in a worker thread one chunk at a time;
each chunk goes out as `data: {json}` and the stream ends with `data: [DONE]`. The first
chunk is computed before the response starts (`first_chunk`), so that a request failing
before its first token (the prompt does not fit, a bad logit_bias id, a grammar) gets an
HTTP error rather than a 200 stream holding an error event. The lease is released and the
iterator closed when the response ends for any reason: finished, failed, or the client went
away (sse-starlette cancels the sender, which first lets the chunk being computed finish),
so a vanished client never keeps the model.
"""
from __future__ import annotations

import json
import math
from functools import partial
from typing import Any, Callable, Iterator, Optional

import anyio
import anyio.to_thread
from sse_starlette.sse import EventSourceResponse
from starlette.responses import Response

from .errors import from_exception

END = object()


def to_json(obj: Any) -> str:
    """Compact JSON, as Starlette's JSONResponse writes it; non-finite floats (a -inf
    logprob of a banned token) become null, as pydantic writes them, instead of an error."""
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(_finite(obj), ensure_ascii=False, allow_nan=False,
                          separators=(",", ":"))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


async def json_response(obj: Any) -> Response:
    """A JSON response serialised in a worker thread (a million token ids or embedding
    floats would hold the event loop for seconds)."""
    data = await anyio.to_thread.run_sync(to_json, obj)
    return Response(data.encode("utf-8"), media_type="application/json")


def _next_json(chunks: Iterator[Any]) -> Any:
    chunk = next(chunks, END)
    return chunk if chunk is END else to_json(chunk)


def first_chunk(chunks: Iterator[Any]) -> Any:
    """The first chunk of `chunks` as JSON (END when there is none); closes them on an
    error."""
    try:
        return _next_json(chunks)
    except BaseException:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        raise


class LeasedEventStream(EventSourceResponse):
    def __init__(self, chunks: Iterator[Any], lease, body: Any = None, pings: bool = True,
                 turn: int = 0, first: Any = None,
                 redact: Optional[Callable[[str], str]] = None):
        """`chunks`: Llama's stream; `lease`: released when the response ends; `body`:
        the request, for error messages raised mid-stream; `pings`: keep-alive comments
        every 15 s; `turn`: chunks after which waiting requests get the model (0: never);
        `first`: its first chunk as JSON, already taken from `chunks` (END: there was
        none; None: not taken); `redact`: cleans error messages."""
        self._chunks, self._lease, self._body, self._turn = chunks, lease, body, turn
        self._first, self._redact = first, redact
        send, recv = anyio.create_memory_object_stream(10)
        super().__init__(recv, data_sender_callable=partial(self._publish, send), sep="\n",
                         ping=None if pings else 0)

    async def _publish(self, send) -> None:
        async with send:
            try:
                n = 0
                while True:
                    chunk, self._first = self._first, None
                    if chunk is None:
                        chunk = await anyio.to_thread.run_sync(_next_json, self._chunks)
                    if chunk is END:
                        break
                    await send.send({"data": chunk})
                    n += 1
                    if self._turn and n % self._turn == 0:
                        await self._lease.yield_turn()
            except Exception as e:     # an error after the first chunk: an error event
                err = from_exception(e, self._body)
                if self._redact is not None:
                    err.message = self._redact(err.message)
                await send.send({"data": to_json(err.body())})
                return
            await send.send({"data": "[DONE]"})

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self._chunks, "close", None)
            try:
                if close is not None:
                    close()
            finally:
                self._lease.release()
