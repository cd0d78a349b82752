"""Continuous batching: one thread running the forward passes of parallel slots.

With `n_parallel` N > 1 the server loads its model with `n_seq_max=N` (one KV stream per
slot) and keeps N slots (slots.py), each a `pyinfer.sequence.Sequence`. A request runs the
usual completion code (sampling, grammars, logprobs, stop strings, streaming) in its own
worker thread on its slot's sequence; only the forward passes are shared. Every evaluation
of a slot's sequence goes through the `Scheduler`'s runner:

- single-token evaluations (one decode step of a generating sequence) of all the slots
  that are waiting are merged into ONE `Engine.decode_batch`, whose results are
  bit-identical to decoding each alone, so batching changes no answer;
- multi-token evaluations (prompts) run with `Engine.decode` on their sequence alone, one
  n_batch chunk per round, decode steps of the other slots running between two chunks:
  a long prompt does not stall the streams already running;
- a round starts as soon as the previous forward ended and something is queued. It only
  waits (at most half the last decode step, MAX_JOIN_WAIT_S at most) for the slots served
  by the last decode step that are still sampling their next token, so that they join the
  same batch. A lone request never waits: it is the whole of its last batch.

A cancelled request's queued evaluation is dropped (its sequence cut back to where it was,
`ClientGone` raised in the request thread), also between two chunks of a long prompt.
`Scheduler.metrics()` feeds /metrics (metrics.py).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional

import numpy as np

from .generation import ClientGone

MAX_JOIN_WAIT_S = 0.02     # the longest a round waits for the last batch's slots to come back
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class _Job:
    """One evaluation (or a `call`) queued for the scheduler thread."""
    __slots__ = ("seq", "tokens", "logits_all", "cancel", "fn", "done", "result", "error",
                 "offset", "start_pos", "out", "t_queued", "rowwise")

    def __init__(self, seq: int, tokens: List[int], logits_all: bool,
                 cancel: Optional[threading.Event] = None, fn: Optional[Callable] = None,
                 rowwise: bool = False):
        self.seq, self.tokens, self.logits_all, self.cancel, self.fn = \
            seq, tokens, logits_all, cancel, fn
        self.rowwise = rowwise          # decoded as if one by one (a speculative draft)
        self.done = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.offset = 0                 # prompt tokens evaluated so far (chunked prompts)
        self.start_pos: Optional[int] = None
        self.out: Optional[np.ndarray] = None   # logits_all rows of a chunked prompt
        self.t_queued = time.perf_counter()

    def finish(self, result: Any = None, error: Optional[BaseException] = None) -> None:
        self.result, self.error = result, error
        self.done.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


class Scheduler:
    """The thread that owns the forward passes of one multi-sequence engine."""

    def __init__(self, engine, name: str = "pyinfer-batching"):
        self.engine = engine
        self.n_batch = engine.n_batch
        self._cv = threading.Condition()
        self._queue: Deque[_Job] = deque()       # arrival order
        self._pending: Dict[int, _Job] = {}      # seq -> its queued evaluation (one at most)
        self._cancels: Dict[int, threading.Event] = {}
        self._expected: set = set()              # slots served by the last decode step
        self._last_step_s = 0.0
        self._closing = False
        # what each sequence's cache holds, as this thread wrote it (prefix copies read it),
        # and how many of its first positions were computed as a prompt (the prefix cache
        # reuses only those: see SlotPool.take)
        self.held: List[List[int]] = [[] for _ in range(engine.n_seq)]
        self.exact: List[int] = [0] * engine.n_seq
        # metrics (written by the scheduler thread, read under the lock)
        self.n_prompt_tokens = 0
        self.t_prompt = 0.0
        self.n_decode_tokens = 0
        self.t_decode = 0.0
        self.n_decode_batches = 0
        self.batch_hist = [0] * (len(BATCH_SIZE_BUCKETS) + 1)
        self.max_batch = 0
        self.n_dropped = 0                       # evaluations dropped for a cancelled request
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ---- request side ----------------------------------------------------------------------

    def runner(self, seq_id: int, tokens: List[int], logits_all: bool, rowwise: bool = False) -> np.ndarray:
        """The Sequence runner: queue the evaluation and wait for its logits (the last
        token's, or all rows with logits_all). `rowwise` (a speculative draft being verified):
        its tokens join the decode batch, each computed as when decoded alone. Raises
        ClientGone when the slot's request was cancelled before its evaluation ended."""
        tokens = [int(t) for t in tokens]
        job = _Job(int(seq_id), tokens, bool(logits_all), self._cancels.get(int(seq_id)),
                   rowwise=bool(rowwise) and len(tokens) <= self.n_batch)
        self._submit(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn()` in the scheduler thread between two forwards (cache operations that
        must not race with an evaluation) and return its result."""
        job = _Job(-1, [], False, fn=fn)
        self._submit(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _submit(self, job: _Job) -> None:
        with self._cv:
            if self._closing:
                raise RuntimeError("the batching scheduler is stopped")
            if job.fn is None:
                if job.seq in self._pending:
                    raise RuntimeError(f"sequence {job.seq} already has an evaluation queued")
                self._pending[job.seq] = job
            self._queue.append(job)
            self._cv.notify_all()

    def join(self, seq_id: int, cancel: threading.Event) -> None:
        """A request starts on sequence `seq_id`: its evaluations are dropped once `cancel`
        is set."""
        with self._cv:
            self._cancels[seq_id] = cancel

    def leave(self, seq_id: int) -> None:
        """The request on sequence `seq_id` ended: the scheduler stops expecting it."""
        with self._cv:
            self._cancels.pop(seq_id, None)
            self._expected.discard(seq_id)
            self._cv.notify_all()

    def wake(self) -> None:
        """Look at the queue again now (a request was cancelled)."""
        with self._cv:
            self._cv.notify_all()

    def close(self) -> None:
        """Stop the thread after failing what is still queued (idempotent)."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def queued(self) -> int:
        with self._cv:
            return len(self._queue)

    # ---- the scheduler thread -------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if self._closing:
                    for job in self._queue:
                        job.finish(error=RuntimeError("the batching scheduler is stopped"))
                    self._queue.clear()
                    self._pending.clear()
                    return
                self._wait_for_joiners()
                calls = [j for j in self._queue if j.fn is not None]
                steps = [j for j in self._queue if j.fn is None and (len(j.tokens) == 1 or j.rowwise)]
                prompts = [j for j in self._queue if j.fn is None and len(j.tokens) != 1 and not j.rowwise]
            for job in calls:
                self._run_call(job)
            self._run_steps(steps)
            if prompts:
                self._run_prompt_chunk(prompts[0])

    def _wait_for_joiners(self) -> None:
        """(Under the lock.) Wait, a little, for the slots served by the last decode step
        that are still sampling, so that they join this round's batch."""
        if not self._expected:
            return
        deadline = time.perf_counter() + min(MAX_JOIN_WAIT_S, 0.5 * self._last_step_s)
        while not self._closing:
            missing = self._expected.difference(self._pending)
            if not missing:
                return
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._cv.wait(left)

    def _remove(self, job: _Job) -> None:
        with self._cv:
            try:
                self._queue.remove(job)
            except ValueError:
                pass
            if job.fn is None and self._pending.get(job.seq) is job:
                del self._pending[job.seq]

    def _run_call(self, job: _Job) -> None:
        self._remove(job)
        try:
            job.finish(job.fn())
        except BaseException as e:     # handed to the caller
            job.finish(error=e)

    def _sync_held(self, seq: int) -> None:
        """Cut our record of sequence `seq` to what the cache holds (a request thread may
        have truncated it)."""
        pos = self.engine.seq_pos[seq]
        if len(self.held[seq]) > pos:
            del self.held[seq][pos:]
        self.exact[seq] = min(self.exact[seq], pos)

    def _drop(self, job: _Job) -> None:
        """A cancelled request's evaluation: undo its evaluated chunks, fail it."""
        self._remove(job)
        if job.start_pos is not None and self.engine.seq_pos[job.seq] > job.start_pos:
            try:
                self.engine.truncate(job.start_pos, seq=job.seq)
            except Exception:          # the sequence syncs itself at its next evaluation
                pass
            self._sync_held(job.seq)
        with self._cv:
            self.n_dropped += 1
        job.finish(error=ClientGone("the client closed the connection"))

    def _check_fits(self, job: _Job) -> bool:
        end = self.engine.seq_pos[job.seq] + len(job.tokens) - job.offset
        if end > self.engine.n_ctx:
            self._remove(job)
            job.finish(error=ValueError(
                f"Requested tokens ({end}) exceed context window of {self.engine.n_ctx}"))
            return False
        return True

    def _run_steps(self, steps: List[_Job]) -> None:
        """One decode_batch over every waiting single-token (or rowwise) evaluation, n_batch
        tokens per forward."""
        live = []
        for job in steps:
            if job.cancelled:
                self._drop(job)
            elif self._check_fits(job):
                self._sync_held(job.seq)
                live.append(job)
        groups: List[List[_Job]] = []
        for job in live:
            if not groups or sum(len(j.tokens) for j in groups[-1]) + len(job.tokens) > self.n_batch:
                groups.append([])
            groups[-1].append(job)
        for group in groups:
            t0 = time.perf_counter()
            try:
                outs = self.engine.decode_batch([(j.seq, j.tokens) for j in group])
            except BaseException as e:
                for j in group:
                    self._remove(j)
                    j.finish(error=e)
                continue
            dt = time.perf_counter() - t0
            for j, out in zip(group, outs):
                self.exact[j.seq] = min(self.exact[j.seq], len(self.held[j.seq]))
                self.held[j.seq].extend(j.tokens)
                self._remove(j)
                j.finish(out if j.logits_all else out[-1])
            with self._cv:
                self._last_step_s = dt
                self._expected = {j.seq for j in group}
                self.n_decode_tokens += sum(len(j.tokens) for j in group)
                self.t_decode += dt
                self.n_decode_batches += 1
                self.max_batch = max(self.max_batch, len(group))
                self.batch_hist[_bucket(len(group))] += 1

    def _run_prompt_chunk(self, job: _Job) -> None:
        """Evaluate the next n_batch tokens of a multi-token evaluation (the whole of it when
        it fits one chunk); finish it after its last chunk."""
        if job.cancelled:
            self._drop(job)
            return
        if job.start_pos is None:
            if not self._check_fits(job):
                return
            self._sync_held(job.seq)
            job.start_pos = self.engine.seq_pos[job.seq]
            if job.logits_all and len(job.tokens) > self.n_batch:
                job.out = np.empty((len(job.tokens), self.engine.cfg.n_vocab), dtype=np.float32)
        chunk = job.tokens[job.offset:job.offset + self.n_batch]
        t0 = time.perf_counter()
        try:
            out = self.engine.decode(chunk, logits_all=job.logits_all, seq=job.seq)
        except BaseException as e:
            self._remove(job)
            job.finish(error=e)
            return
        dt = time.perf_counter() - t0
        if len(chunk) > 1 and self.exact[job.seq] >= len(self.held[job.seq]):
            self.exact[job.seq] = len(self.held[job.seq]) + len(chunk)
        else:
            self.exact[job.seq] = min(self.exact[job.seq], len(self.held[job.seq]))
        self.held[job.seq].extend(chunk)
        with self._cv:
            self.n_prompt_tokens += len(chunk)
            self.t_prompt += dt
        if job.out is not None:
            job.out[job.offset:job.offset + len(chunk)] = out
        job.offset += len(chunk)
        if job.offset >= len(job.tokens):
            self._remove(job)
            job.finish(job.out if job.out is not None else out)

    # ---- metrics ------------------------------------------------------------------------

    def metrics(self) -> Dict[str, Any]:
        with self._cv:
            return {"prompt_tokens": self.n_prompt_tokens, "prompt_seconds": self.t_prompt,
                    "decode_tokens": self.n_decode_tokens, "decode_seconds": self.t_decode,
                    "decode_batches": self.n_decode_batches, "max_batch": self.max_batch,
                    "batch_hist": list(self.batch_hist), "queued": len(self._queue),
                    "dropped": self.n_dropped}


def _bucket(n: int) -> int:
    for i, b in enumerate(BATCH_SIZE_BUCKETS):
        if n <= b:
            return i
    return len(BATCH_SIZE_BUCKETS)
