"""Server-sent events for a generation that holds the model's lease.

The chunks iterator (Llama's stream) is advanced in a worker thread one chunk at a time;
each chunk goes out as `data: {json}` and the stream ends with `data: [DONE]`. The lease
is released and the iterator closed when the response ends for any reason: finished,
failed, or the client went away (sse-starlette cancels the sender, which first lets the
chunk being computed finish), so a vanished client never keeps the model.
"""
from __future__ import annotations

import json
from functools import partial
from typing import Any, Iterator

import anyio
import anyio.to_thread
from sse_starlette.sse import EventSourceResponse

from .errors import from_exception

_END = object()


class LeasedEventStream(EventSourceResponse):
    def __init__(self, chunks: Iterator[Any], lease, body: Any = None, pings: bool = True,
                 turn: int = 0):
        """`chunks`: Llama's stream; `lease`: released when the response ends; `body`:
        the request, for error messages raised mid-stream; `pings`: keep-alive comments
        every 15 s; `turn`: chunks after which waiting requests get the model (0: never)."""
        self._chunks, self._lease, self._body, self._turn = chunks, lease, body, turn
        send, recv = anyio.create_memory_object_stream(10)
        super().__init__(recv, data_sender_callable=partial(self._publish, send), sep="\n",
                         ping=None if pings else 0)

    async def _publish(self, send) -> None:
        async with send:
            try:
                n = 0
                while True:
                    chunk = await anyio.to_thread.run_sync(next, self._chunks, _END)
                    if chunk is _END:
                        break
                    await send.send({"data": json.dumps(chunk)})
                    n += 1
                    if self._turn and n % self._turn == 0:
                        await self._lease.yield_turn()
            except Exception as e:     # an error after the first chunk: an error event
                await send.send({"data": json.dumps(from_exception(e, self._body).body())})
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
