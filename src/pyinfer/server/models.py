"""The served models and the lock that serialises their use.

One `Llama` (one KV cache) is loaded at a time; a config file may list several models,
and a request naming another one swaps it in (the previous one is closed), as
llama-cpp-python's server does. With one model every request gets it, whatever `model` it
names (`ModelHub.resolve`). Every request that touches a model holds the hub's lease
for its whole duration, streaming included: requests are served one after another in
arrival order (an anyio Semaphore is FIFO), so no two can interleave on the KV cache.

Opt-in fair interleave (ServerSettings.interleave_tokens > 0, one served model): a stream
that has sent that many chunks while others wait hands the lease over (`yield_turn`): it
saves its sequence (`Llama.save_state`: KV rows, token ids, logits), queues again behind
the waiters and, back on turn, restores it if another request used the model meanwhile.

Parallel slots (ServerSettings.n_parallel N > 1, one served model): the model is loaded with
n_seq_max=N and the lock has N permits. A completion or chat request takes one (a *shared*
lease) and, in its worker thread, a slot of the hub's `slots.SlotPool`; the requests
beyond N wait in arrival order, at most max_queued_requests of them (more: 429). Whatever
else touches the model (embeddings, tokenize, loading, trimming) takes all N permits (an
exclusive lease), waiting for the running generations to end.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Dict, List, Optional

import anyio
import anyio.to_thread

from .errors import APIError, model_not_found
from .settings import ModelSettings


class Lease:
    """Exclusive use of the loaded model until `release()` (idempotent)."""

    def __init__(self, hub: "ModelHub", llama, alias: str, answer_name: Optional[str] = None,
                 permits: int = 1, shared: bool = False):
        """`answer_name`: the `model` answers carry (the alias, or the unknown name a client
        asked for, echoed as llama-cpp-python's server does); `permits`: how many of the
        hub's permits it holds (all of them: exclusive)."""
        self.llama, self.alias = llama, alias
        self.answer_name = answer_name or alias
        self._hub = hub
        self._held = True
        self._permits = permits
        self._shared = shared      # counted in hub.generating
        self.slot = None            # the batching slot a shared lease runs on (`take_slot`)
        hub.turn_owner = self

    def take_slot(self, prompt=None, cancel=None):
        """(Worker thread.) Take a slot of the hub's SlotPool for this shared lease: the
        one whose cache best matches `prompt` (token ids, or None); `cancel`: the request's
        cancel event."""
        self.slot = self._hub.pool.take(prompt, cancel)
        return self.slot

    def release(self) -> None:
        if self._held:
            self._held = False
            slot, self.slot = self.slot, None
            if slot is not None:
                self._hub.pool.release(slot)
            self._hub.generating -= self._shared
            for _ in range(self._permits):
                self._hub._sem.release()

    async def yield_turn(self) -> None:
        """Let waiting requests run, then continue this sequence where it was (no-op
        when nobody waits). Cancelled while queued, the lease is left released."""
        hub = self._hub
        if not self._held or hub._sem.statistics().tasks_waiting == 0:
            return
        state = await anyio.to_thread.run_sync(self.llama.save_state)
        self.release()
        await hub._sem.acquire()
        self._held = True
        if hub.turn_owner is not self:
            try:
                await anyio.to_thread.run_sync(self.llama.load_state, state)
            except BaseException:
                self.release()
                raise
            hub.switches += 1
            hub.turn_owner = self


class ModelHub:
    """Model settings by alias, the loaded model and the lock around it."""

    def __init__(self, models: List[ModelSettings], any_model_name: bool = False, llama=None,
                 n_parallel: int = 1, max_queued: int = 0):
        """`llama`: an already loaded model for models[0] (tests and embedders reuse one;
        it gets as many slots as it has sequences, n_seq_max, at most n_parallel);
        `n_parallel`: slots generating at once (one
        served model only; several models are served one request at a time);
        `max_queued`: most requests waiting for a slot (0: no limit)."""
        if not models:
            raise ValueError("no models to serve")
        self.settings: Dict[str, ModelSettings] = {}
        for m in models:
            if m.alias in self.settings:
                raise ValueError(f"two models are named {m.alias!r}: give each a model_alias")
            self.settings[m.alias] = m
        self.default_alias = models[0].alias
        self.any_model_name = any_model_name
        self.created = int(time.time())
        self._llama = llama
        self._alias = self.default_alias if llama is not None else None
        self._sem_obj: Optional[anyio.Semaphore] = None
        self._exclusive_obj: Optional[anyio.Lock] = None
        self.n_parallel = max(1, n_parallel) if len(models) == 1 else 1
        if llama is not None:   # a given model has the sequences it was loaded with
            eng = getattr(llama, "_engine", None)
            self.n_parallel = min(self.n_parallel, eng.n_seq if eng is not None else 1)
        self.max_queued = max_queued
        self.generating = 0         # shared leases held (requests on a slot)
        self.queued = 0             # shared leases waited for
        self.pool = None                          # slots.SlotPool when n_parallel > 1
        self._start_pool()
        self.turn_owner: Optional[Lease] = None   # the lease whose sequence is in the cache
        self.switches = 0                         # sequences restored by yield_turn
        self.used = False                         # a lease was taken since the last trim

    @property
    def _sem(self) -> anyio.Semaphore:
        if self._sem_obj is None:      # created inside the running event loop
            self._sem_obj = anyio.Semaphore(self.n_parallel)
            self._exclusive_obj = anyio.Lock()
        return self._sem_obj

    @property
    def batching(self) -> bool:
        """Whether completions run on parallel slots (n_parallel > 1)."""
        return self.n_parallel > 1

    @property
    def waiting(self) -> int:
        """Requests waiting for a permit."""
        return 0 if self._sem_obj is None else self._sem_obj.statistics().tasks_waiting

    async def _acquire(self, shared: bool) -> int:
        """One permit (shared) or all of them (exclusive); returns how many."""
        sem = self._sem
        if shared or self.n_parallel == 1:
            await sem.acquire()
            return 1
        async with self._exclusive_obj:     # one exclusive taker at a time: no deadlock
            got = 0
            try:
                while got < self.n_parallel:
                    await sem.acquire()
                    got += 1
            except BaseException:
                for _ in range(got):
                    sem.release()
                raise
        return got

    def _release_n(self, n: int) -> None:
        for _ in range(n):
            self._sem.release()

    @property
    def loaded_alias(self) -> Optional[str]:
        return self._alias

    @property
    def busy(self) -> bool:
        """Whether a request holds a lease now."""
        return self._sem_obj is not None and self._sem_obj.value < self.n_parallel

    @property
    def llama(self):
        """The loaded model (loading the default one if none is)."""
        if self._llama is None:
            self._load(self.default_alias)
        return self._llama

    def resolve(self, name: Optional[str]) -> str:
        """The alias a request's `model` names: an alias, a model path or its file name;
        None is the default model. A server of one model serves it under any name, as
        llama-cpp-python's does (clients send "gpt-3.5-turbo" and the like). With several,
        an unknown name is 404 unless any_model_name is set; llama-cpp-python's LlamaProxy
        gives it the default (first) model, which any_model_name does here."""
        if name is None or name == "":
            return self.default_alias
        if name in self.settings:
            return name
        for alias, s in self.settings.items():
            if name in (s.model, os.path.basename(s.model)):
                return alias
        if self.any_model_name or len(self.settings) == 1:
            return self.default_alias
        raise model_not_found(name)

    def _names(self, name: Optional[str]) -> bool:
        """Whether `name` is empty or names a served model (alias, path or file name)."""
        return not name or name in self.settings or any(
            name in (s.model, os.path.basename(s.model)) for s in self.settings.values())

    def _load(self, alias: str) -> None:
        from ..llama import Llama
        if self._llama is not None:
            self._close_llama()
        s = self.settings[alias]
        kwargs = s.llama_kwargs()
        if self.batching:
            kwargs["n_seq_max"] = self.n_parallel
        llama = Llama(**kwargs)
        if s.cache:
            from ..llama_cache import LlamaRAMCache
            llama.set_cache(LlamaRAMCache(capacity_bytes=s.cache_size))
        self._llama, self._alias = llama, alias
        self._start_pool()

    def _start_pool(self) -> None:
        if self.batching and self.pool is None and self._llama is not None:
            from .slots import SlotPool
            self.pool = SlotPool(self._llama, self.n_parallel)

    def _close_llama(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if self._llama is not None:
            self._llama.close()
        self._llama, self._alias = None, None

    async def lease(self, name: Optional[str], shared: bool = False) -> Lease:
        """Wait for the model named `name` to be free (loading it if needed); the caller
        must release the lease, also on errors. `shared`: a generation on a parallel slot
        (one permit; with n_parallel 1 the same as exclusive); beyond max_queued waiting
        requests it is refused with 429."""
        alias = self.resolve(name)
        shared = shared and self.batching
        if shared and self.max_queued and \
                self.generating + self.queued >= self.n_parallel + self.max_queued:
            raise APIError(429, f"All {self.n_parallel} slots are busy and "
                           f"{self.queued} requests are queued (max_queued_requests); "
                           "retry later", type="server_busy", code="too_many_requests")
        if shared:
            self.queued += 1
            try:
                permits = await self._acquire(True)
            finally:
                self.queued -= 1
            self.generating += 1
        else:
            permits = await self._acquire(False)
        try:
            if self._alias != alias or self._llama is None:
                await anyio.to_thread.run_sync(self._load, alias)
        except Exception as e:      # the details (paths) go to the log only
            self._release_n(permits)
            self.generating -= shared
            print(f"pyinfer.server: loading model {alias!r} failed:", file=sys.stderr)
            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
            raise APIError(500, f"The model `{alias}` could not be loaded",
                           type="internal_server_error") from None
        except BaseException:
            self._release_n(permits)
            self.generating -= shared
            raise
        self.used = True
        return Lease(self, self._llama, alias, None if self._names(name) else name, permits,
                     shared)

    @property
    def idle(self) -> bool:
        """Nobody holds the lease or waits for it."""
        sem = self._sem_obj
        return sem is None or (sem.value == self.n_parallel and
                               sem.statistics().tasks_waiting == 0)

    async def trim(self) -> bool:
        """If the model was used since the last trim and is idle now: give the memory its
        last requests left behind back to the system (`memory.trim`), holding the lease.
        Returns whether it trimmed."""
        if not self.used or not self.idle or self._llama is None:
            return False
        permits = await self._acquire(False)
        try:
            await anyio.to_thread.run_sync(_trim, self._llama, self.pool)
        finally:
            self.used = False
            self._release_n(permits)
        return True

    def close(self) -> None:
        self._close_llama()


def _trim(llama, pool) -> None:
    """memory.trim of the model, and of the slots' logits rows when there are slots."""
    from .memory import trim
    trim(llama)
    if pool is not None:
        pool.trim()
