"""Interactive chat in the terminal: `python -m pyinfer [-m MODEL.gguf] --chat [--system TEXT]`.

Each line you type is a user message; the reply streams as it is generated, rendered by
the model's chat template (`Llama.create_chat_completion`), and the whole conversation is
sent each turn (the KV cache keeps the shared prefix, so only the new turn is evaluated).
After each answer a timings line: prompt tokens evaluated and their rate, generated tokens
and the decode rate.

Commands: /exit (or /quit, Ctrl-D) leaves, /reset forgets the conversation. Ctrl-C while
an answer streams stops that answer; Ctrl-C at the prompt leaves.
"""
from __future__ import annotations

import importlib
import os
import sys
import time
from typing import Any, Dict, List, Optional

READ_CHUNK = 8 << 20          # bytes read per step while warming the model file
PROGRESS_DELAY_S = 0.5        # the progress bar shows only if loading takes longer


class TurnTimer:
    """Logits processor that only watches: the first call ends prompt processing, each
    call is one sampled token. Prompt tokens evaluated = the prompt minus the prefix the
    KV cache already held (`cached`: the cache's token ids before the turn)."""

    def __init__(self, cached: List[int]):
        self.cached = cached
        self.t_start = time.perf_counter()
        self.t_first: Optional[float] = None
        self.t_last: Optional[float] = None
        self.n_prompt = self.n_prompt_eval = self.n_sampled = 0

    def __call__(self, input_ids, scores):
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first = now
            ids = [int(t) for t in input_ids]
            reused = 0
            for a, b in zip(self.cached, ids):
                if a != b:
                    break
                reused += 1
            if reused == len(ids):      # a fully cached prompt re-evaluates its last token
                reused -= 1
            self.n_prompt, self.n_prompt_eval = len(ids), len(ids) - max(reused, 0)
        self.t_last = now
        self.n_sampled += 1
        return scores

    def report(self) -> str:
        if self.t_first is None:
            return "(no tokens evaluated)"
        t_prompt = self.t_first - self.t_start
        n_dec = self.n_sampled - 1            # tokens evaluated after the first sample
        t_dec = self.t_last - self.t_first
        p_rate = self.n_prompt_eval / t_prompt if t_prompt > 0 else 0.0
        d_rate = n_dec / t_dec if n_dec > 0 and t_dec > 0 else 0.0
        return (f"[prompt: {self.n_prompt_eval} of {self.n_prompt} tokens evaluated in "
                f"{t_prompt * 1000:.0f} ms, {p_rate:.1f} tokens/s | decode: {self.n_sampled} "
                f"tokens in {t_dec * 1000:.0f} ms, {d_rate:.1f} tokens/s]")


def warm_file(path: str, err) -> None:
    """Read the model file once (into the page cache: the memory-mapped weights are then
    resident) with a tqdm bar that appears only when this takes noticeable time."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    size = os.path.getsize(path)
    bar = (tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, file=err,
                desc=f"loading {os.path.basename(path)}", delay=PROGRESS_DELAY_S, leave=False)
           if tqdm is not None else None)
    buf = bytearray(min(READ_CHUNK, max(size, 1)))
    try:
        with open(path, "rb", buffering=0) as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                if bar is not None:
                    bar.update(n)
    finally:
        if bar is not None:
            bar.close()


def load_model(args, model: str, err):
    """The Llama for the chat (load report on stderr), the file warmed first."""
    from .engine import default_threads
    from .llama import Llama
    warm_file(model, err)
    threads = args.threads or default_threads()
    from .__main__ import llama_kwargs
    llm = Llama(model, **{**llama_kwargs(args, threads), "verbose": True})
    llm.verbose = False       # the load report only; no per-call timing lines in the chat
    return llm


def _read_line(out) -> Optional[str]:
    """The next user line (with line editing when stdin is a terminal), None at the end
    of input."""
    out.write("\n")
    out.flush()
    try:
        return input("> ")
    except EOFError:
        return None


def answer(llm, messages: List[Dict[str, Any]], args, out, err) -> str:
    """Stream one reply to `out`; returns its text (partial if interrupted by Ctrl-C)."""
    timer = TurnTimer(llm._input_ids.tolist())
    stream = llm.create_chat_completion(
        messages, stream=True, temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repeat_penalty=args.repeat_penalty, seed=args.seed,
        max_tokens=None if args.n_predict < 0 else args.n_predict, logits_processor=[timer])
    parts: List[str] = []
    interrupted = False
    try:
        for chunk in stream:
            text = chunk["choices"][0]["delta"].get("content")
            if text:
                parts.append(text)
                out.write(text)
                out.flush()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stream.close()
    out.write("\n")
    out.flush()
    print(("[interrupted] " if interrupted else "") + timer.report(), file=err)
    return "".join(parts)


def run_chat(args) -> int:
    """The chat loop (args: pyinfer.__main__'s parsed arguments)."""
    from .default_model import require_default_model
    out, err = sys.stdout, sys.stderr
    if sys.stdin.isatty():
        try:     # line editing and history for input()
            importlib.import_module("readline")
        except ImportError:
            pass
    llm = load_model(args, args.model or require_default_model(), err)   # errors: cli_util.run
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages: List[Dict[str, Any]] = list(system)
    print(f"pyinfer chat ({llm.chat_format or 'chat template'}): /exit or Ctrl-D to leave, "
          "/reset to start over, Ctrl-C stops an answer", file=err)
    with llm:
        while True:
            try:
                line = _read_line(out)
            except KeyboardInterrupt:
                line = None
            if line is None or line.strip() in ("/exit", "/quit"):
                out.write("\n")
                out.flush()
                return 0
            if line.strip() == "/reset":
                messages = list(system)
                print("[conversation cleared]", file=err)
                continue
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line})
            try:
                reply = answer(llm, messages, args, out, err)
            except ValueError as e:       # e.g. the conversation no longer fits the context
                messages.pop()
                print(f"error: {e} (/reset starts over)", file=err)
                continue
            messages.append({"role": "assistant", "content": reply})
