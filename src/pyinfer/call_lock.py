"""Who may use one `Llama` when: `CallLock` serialises its public calls across threads, and
`LlamaClosedError` is what any call after `close()` raises (the Engine's own lock makes
`close()` wait for the forward pass in flight; see engine.py)."""
from __future__ import annotations

import threading
from typing import Optional

from ._lib import GSStateError, lib


class LlamaClosedError(GSStateError):
    """A call on a `Llama` (or `Engine`) after `close()`; a RuntimeError."""

    def __init__(self, message: str = "this Llama is closed"):
        super().__init__(lib.GS_ERR_STATE, message)



class StreamInterruptedError(RuntimeError):
    """A suspended stream resumed after another call changed its Llama's sequence."""


class _Turn:
    """One call, or one stream from its first step to its end, owning the sequence."""
    __slots__ = ("thread", "last_thread", "expect")

    def __init__(self):
        self.thread: Optional[int] = None       # the thread running it; None: a suspended stream
        self.last_thread: Optional[int] = None  # the thread that ran a suspended stream's step
        self.expect: Optional[object] = None    # the sequence to find when it resumes, if set aside


class CallLock:
    """Serialises the public calls of one `Llama` across threads: one call at a time owns
    the sequence (tokens, logits, KV cache); calls nested in it on its thread go through.

    A stream (a generator a call returns) owns the sequence from its first step until it is
    exhausted or closed, so two threads streaming get what two sequential calls would; other
    threads wait. Two ways past a suspended stream, so that waiting cannot deadlock:
      - a call on the thread that advanced it last takes the sequence over (that thread cannot
        advance the stream while it waits);
      - `save_state()` sets it aside: the hand-over of a sequence (the server's fair
        interleave saves it, serves others, loads it back).
    A stream whose sequence was taken over checks, when it next advances, that the sequence is
    the one it left (restored by load_state) and raises StreamInterruptedError otherwise:
    never a silently wrong continuation. `close()` wakes waiting calls with LlamaClosedError;
    it never waits for a call or a stream (the Engine's lock covers a forward in flight).

    `sequence` names the sequence's current contents: the Llama replaces it with a new
    object whenever it changes them, and a saved state carries it back.
    """

    def __init__(self):
        # re-entrant: a stream finalised by the garbage collector may end its turn while
        # this thread is inside one of the methods below
        self._cv = threading.Condition(threading.RLock())
        self._owner: Optional[_Turn] = None
        self._closed = False
        self.sequence = object()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def call(self, set_aside: bool = False) -> "_Call":
        """`with lock.call():` around a whole call; set_aside: may set a suspended stream
        aside (save_state)."""
        return _Call(self, set_aside)

    def stream(self, gen):
        """Iterate generator `gen` (send and close included) as one call that lasts until it
        ends."""
        turn = _Turn()
        value = None
        try:
            while True:
                nested = self._enter(turn, False)
                try:
                    if not nested and turn.expect is not None:
                        self._check_sequence(turn)
                    item = gen.send(value)
                except StopIteration:
                    return
                finally:
                    self._suspend(turn, nested)
                value = yield item
        finally:
            gen.close()
            self._end(turn)

    # ---- the owner, under self._cv -------------------------------------------------------

    def _enter(self, turn: _Turn, set_aside: bool) -> bool:
        """Make `turn` the owner, running on this thread, and return False; or return True
        when this thread already runs the owner (a nested call, which goes through)."""
        me = threading.get_ident()
        with self._cv:
            while True:
                if self._closed:
                    raise LlamaClosedError()
                owner = self._owner
                if owner is None or owner is turn:
                    break
                if owner.thread == me:
                    return True
                if owner.thread is None and (set_aside or owner.last_thread == me):
                    owner.expect = self.sequence
                    break
                self._cv.wait()
            self._owner = turn
            turn.thread = me
            return False

    def _exit(self, turn: _Turn, nested: bool) -> None:
        """End a call entered with _enter."""
        if nested:
            return
        with self._cv:
            if self._owner is turn:
                self._owner = None
                self._cv.notify_all()

    def _suspend(self, turn: _Turn, nested: bool) -> None:
        """A stream's step is over: it keeps the sequence, suspended."""
        with self._cv:
            if nested:      # the enclosing call may change the sequence after this step
                turn.expect = self.sequence
            elif self._owner is turn:
                turn.last_thread, turn.thread = turn.thread, None
                self._cv.notify_all()

    def _end(self, turn: _Turn) -> None:
        with self._cv:
            if self._owner is turn:
                self._owner = None
                self._cv.notify_all()

    def _check_sequence(self, turn: _Turn) -> None:
        expect, turn.expect = turn.expect, None
        if self.sequence is not expect:
            raise StreamInterruptedError(
                "this stream was interrupted: another call used the Llama while the stream was "
                "suspended and did not restore its sequence (finish or close a stream before "
                "the next call on its thread; save_state/load_state hand a sequence over)")


class _Call:
    __slots__ = ("_lock", "_set_aside", "_turn", "_nested")

    def __init__(self, lock: CallLock, set_aside: bool):
        self._lock, self._set_aside = lock, set_aside

    def __enter__(self) -> None:
        self._turn = _Turn()
        self._nested = self._lock._enter(self._turn, self._set_aside)

    def __exit__(self, *exc) -> None:
        self._lock._exit(self._turn, self._nested)
