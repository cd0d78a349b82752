"""Parallel slots: the N sequences of a continuous-batching server, their choice and the
prefix cache between them (the forwards are batching.Scheduler's).

A request takes a free slot (`SlotPool.take`, llama.cpp's slot selection by prompt
similarity): the one whose sequence shares the longest prefix with its prompt (ties and no
match: the least recently used); the sequence's own generation code keeps that prefix. When
another slot, busy or not, holds a longer common prefix, those positions are copied into
the chosen slot (`Engine.copy_prefix`, no recompute) by the scheduler thread, between
forwards, from what the scheduler knows that slot's cache holds. Only positions computed
as a prompt are reused, and at least two prompt tokens are always evaluated, so that a
cached prefix gives bit-identical results to evaluating the prompt afresh (`_reusable`).

`run_on_slot` is what the app runs in a worker thread for a completion or chat request:
learn its prompt (`request_prompt`: the chat template rendered by a stand-in Llama), take
a slot, run the usual completion code on the slot's sequence (`Llama.using`).
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Optional

from ..llama_cache import longest_token_prefix
from .batching import Scheduler


class Slot:
    """One parallel slot: a sequence of the model and who uses it."""

    def __init__(self, index: int, sequence):
        self.index, self.sequence = index, sequence
        self.busy = False
        self.cancel = threading.Event()
        self.last_used = 0.0
        self.n_requests = 0


class SlotPool:
    """The N slots of a model, their scheduler and the prefix cache between them."""

    def __init__(self, llama, n_parallel: int):
        engine = llama._engine
        if engine is None:
            raise ValueError("continuous batching needs a model with weights (not vocab_only)")
        if engine.n_seq < n_parallel:
            raise ValueError(f"n_parallel={n_parallel} needs a model loaded with "
                             f"n_seq_max >= {n_parallel}, this one has {engine.n_seq}")
        self.llama, self.engine = llama, engine
        self.scheduler = Scheduler(engine)
        self.slots = [Slot(i, llama.sequence(i, runner=self.scheduler.runner))
                      for i in range(n_parallel)]
        self._lock = threading.Lock()
        self.prefix_hit_tokens = 0          # prompt tokens taken from the cache
        self.prefix_copied_tokens = 0       # of which copied from another slot
        self.prefix_copies = 0
        self.n_requests = 0

    @property
    def n_busy(self) -> int:
        with self._lock:
            return sum(s.busy for s in self.slots)

    def take(self, prompt: Optional[List[int]],
             cancel: Optional[threading.Event] = None) -> Slot:
        """A free slot for a request whose prompt is `prompt` (None: unknown), prepared
        with the longest prefix of it that any slot's cache holds; `cancel`: set when the
        request is cancelled (its queued evaluations are then dropped). The caller got a
        permit (hub lease), so a slot is free."""
        with self._lock:
            free = [s for s in self.slots if not s.busy]
            if not free:
                raise RuntimeError("no free slot (the hub's permits and the slots disagree)")
            own = {s.index: self._reusable(s, prompt) for s in free}
            slot = max(free, key=lambda s: (own[s.index], -s.last_used))
            slot.busy = True
            slot.cancel = cancel if cancel is not None else threading.Event()
            slot.n_requests += 1
            self.n_requests += 1
        self.scheduler.join(slot.index, slot.cancel)
        hit = own[slot.index]
        seq = slot.sequence
        if hit < seq.n_tokens:          # the generation code keeps at most this much
            seq.truncate(hit)
        if prompt:
            try:
                copied = self.scheduler.call(lambda: self._copy_best_prefix(slot, prompt, hit))
            except Exception:
                copied = 0
            hit = max(hit, copied)
        with self._lock:
            self.prefix_hit_tokens += hit
        return slot

    def _reusable(self, slot: Slot, prompt: Optional[List[int]]) -> int:
        """How much of `prompt` the free `slot` may keep: its common prefix, within the
        positions computed as a prompt, leaving at least two prompt tokens to evaluate.

        So a cached prefix is bit-identical to evaluating the prompt afresh: a prompt batch
        computes each row exactly as any other split of the prompt would (as long as it has
        two tokens or more), whereas a single token (the one llama-cpp-python re-evaluates
        when the whole prompt is cached) or a generated token goes through the one-token
        decode path, whose logits differ (up to 0.77 in a logit on SmolLM2 Q4_1). An
        answer thus never depends on what the slot held before, nor on which slot it ran
        in."""
        if not prompt:
            return 0
        seq, sched = slot.sequence, self.scheduler
        n = min(seq.n_tokens, sched.exact[slot.index], len(prompt) - 2)
        if n <= 0:
            return 0
        n = longest_token_prefix(seq.input_ids[:n].tolist(), prompt)
        return n if sched.held[slot.index][:n] == prompt[:n] else 0

    def _copy_best_prefix(self, slot: Slot, prompt: List[int], own: int) -> int:
        """(Scheduler thread.) Copy into `slot` the longest prefix of `prompt` that another
        slot's cache holds (within its prompt-computed positions, at most all but two of
        the prompt), when longer than what `slot` keeps itself. Returns how many tokens
        were copied (0: none)."""
        sched, eng = self.scheduler, self.engine
        best, best_n = None, own
        limit = len(prompt) - 2
        for other in self.slots:
            if other is slot:
                continue
            sched._sync_held(other.index)
            seq = other.sequence
            # positions whose tokens and rows the other request thread has recorded too
            n_rec = min(seq.n_tokens, eng.seq_pos[other.index], sched.exact[other.index], limit)
            if n_rec <= best_n:
                continue
            held = sched.held[other.index]
            n = longest_token_prefix(held[:n_rec], prompt)
            if n > best_n and seq.input_ids[:n].tolist() == held[:n]:
                best, best_n = other, n
        if best is None:
            return 0
        slot.sequence.copy_prefix_from(best.sequence, best_n)
        sched.held[slot.index] = list(sched.held[best.index][:best_n])
        sched.exact[slot.index] = best_n
        with self._lock:
            self.prefix_copies += 1
            self.prefix_copied_tokens += best_n
        return best_n

    def release(self, slot: Slot) -> None:
        """The request on `slot` ended (done, failed or cancelled): drop its queued work and
        free the slot."""
        slot.cancel.set()
        self.scheduler.leave(slot.index)
        with self._lock:
            slot.busy = False
            slot.last_used = time.monotonic()

    def kv_usage(self) -> float:
        """Fraction of the KV cache's positions that hold tokens."""
        eng = self.engine
        return sum(eng.seq_pos) / float(eng.n_seq * eng.n_ctx)

    def metrics(self) -> Dict[str, Any]:
        m = self.scheduler.metrics()
        with self._lock:
            m.update(slots_total=len(self.slots),
                     slots_processing=sum(s.busy for s in self.slots),
                     prefix_hit_tokens=self.prefix_hit_tokens,
                     prefix_copied_tokens=self.prefix_copied_tokens,
                     prefix_copies=self.prefix_copies, requests_total=self.n_requests)
        m["kv_cache_usage_ratio"] = self.kv_usage()
        m["kv_cache_tokens"] = int(sum(self.engine.seq_pos))
        return m

    def trim(self) -> int:
        """Give back the pages of the slots' logits rows past their tokens (memory.trim's
        rows, per slot); call only while no slot is busy. Returns the bytes released."""
        from .memory import release_rows
        return sum(release_rows(s.sequence.scores, s.sequence.n_tokens) for s in self.slots)

    def close(self) -> None:
        self.scheduler.close()


def on_slot(llama, slot: Slot, chunks):
    """Iterate a stream made on `slot`'s sequence, each step in `llama.using(sequence)`
    (a stream's steps run in whichever worker thread the server picks)."""
    it = iter(chunks)
    try:
        while True:
            with llama.using(slot.sequence):
                try:
                    chunk = next(it)
                except StopIteration:
                    return
            yield chunk
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            with llama.using(slot.sequence):
                close()


def run_on_slot(lease, body, call: Callable, cancel: threading.Event, ss):
    """`generation.prepared_call` on a slot (worker thread, holding a shared lease): learn
    the request's prompt, take the slot that best matches it, run the call there. A stream
    comes back as an iterator whose every step runs on the slot's sequence."""
    from .generation import generation_kwargs, prepared_call
    from .limits import prompt_limit
    llama = lease.llama
    kw = generation_kwargs(lease, body, cancel, prompt_limit(ss, llama))
    prompt = request_prompt(llama, call, kw)
    slot = lease.take_slot(prompt, cancel)
    with llama.using(slot.sequence):
        out = prepared_call(lease, body, call, cancel, ss)
    return on_slot(llama, slot, out) if body.stream else out


class _Prompt(Exception):
    def __init__(self, prompt, suffix):
        super().__init__("prompt captured")
        self.prompt, self.suffix = prompt, suffix


class _PromptProbe:
    """Stands for the Llama in a request's call to learn its prompt: create_completion
    (which every chat handler ends in) raises the prompt instead of generating."""

    def __init__(self, llama):
        self._llama = llama

    def __getattr__(self, name):
        return getattr(self._llama, name)

    def create_completion(self, prompt, suffix=None, *args, **kwargs):
        raise _Prompt(prompt, suffix)

    __call__ = create_completion

    def create_chat_completion(self, *args, **kwargs):
        return type(self._llama).create_chat_completion(self, *args, **kwargs)


def request_prompt(llama, call: Callable, kwargs: Dict[str, Any]) -> Optional[List[int]]:
    """The prompt tokens `call(llama, **kwargs)` would evaluate (chat template applied),
    or None when they cannot be learnt without generating. Only used to choose a slot."""
    try:
        call(_PromptProbe(llama), **{**kwargs, "stream": False})
    except _Prompt as p:
        try:
            from ..completion import prompt_tokens
            return prompt_tokens(llama, p.prompt, p.suffix)
        except Exception:
            return None
    except Exception:
        return None
    return None
