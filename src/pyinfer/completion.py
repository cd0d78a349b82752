"""Text completion on top of `Llama.generate_tokens` (generate_step): prompt tokens, stop strings, echo, logprobs,
and the response / stream-chunk dicts of llama-cpp-python (OpenAI's completion shapes).

Streaming sends the text in token groups: a group goes out once its bytes end on a UTF-8
character boundary and none of its bytes could still be the beginning of a stop string; the
chunks' texts concatenate to the non-streamed text, and the last chunk carries only the
finish_reason. Stop strings end the text at their earliest occurrence.
"""
from __future__ import annotations

import random
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Union

import numpy as np

from .infill import infill_tokens
from .sampling import SamplingSettings, StoppingCriteriaList, check_logit_bias


@dataclass
class CompletionRequest:
    """The keywords of `create_completion`, parsed once."""
    prompt: Union[str, List[int]]
    suffix: Optional[str] = None    # fill-in-the-middle (infill.py)
    max_tokens: Optional[int] = 16
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    logprobs: Optional[int] = None
    echo: bool = False
    stop: List[bytes] = field(default_factory=list)
    stream: bool = False
    seed: Optional[int] = None
    model: Optional[str] = None
    stopping_criteria: Optional[StoppingCriteriaList] = None
    logits_processor: Any = None
    grammar: Any = None             # a LlamaGrammar constraining every sampled token

    @classmethod
    def from_keywords(cls, prompt, suffix, max_tokens, temperature, top_p, min_p, typical_p,
                      logprobs, echo, stop, frequency_penalty, presence_penalty, repeat_penalty,
                      top_k, stream, seed, mirostat_mode, mirostat_tau, mirostat_eta, model,
                      stopping_criteria, logits_processor, grammar, logit_bias,
                      penalty_last_n, n_vocab: Optional[int] = None) -> "CompletionRequest":
        if suffix is not None and not isinstance(suffix, str):
            raise TypeError(f"suffix must be a str, not {type(suffix).__name__}")
        stops = stop if isinstance(stop, list) else [stop] if isinstance(stop, str) else []
        sampling = SamplingSettings(
            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
            repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, penalty_last_n=penalty_last_n,
            mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta,
            logit_bias=check_logit_bias(logit_bias, n_vocab))
        return cls(prompt=prompt, suffix=suffix, max_tokens=max_tokens, sampling=sampling,
                   logprobs=logprobs, echo=echo, stop=[s.encode("utf-8") for s in stops if s],
                   stream=stream, seed=seed, model=model, stopping_criteria=stopping_criteria,
                   logits_processor=logits_processor, grammar=grammar)


def logits_to_logprobs(logits, axis: int = -1) -> np.ndarray:
    """log_softmax in float32; rows whose maximum is not finite are shifted by 0."""
    x = np.asarray(logits, dtype=np.float32)
    m = np.amax(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0).astype(np.float32)
    shifted = np.subtract(x, m, dtype=np.float32)
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def prompt_tokens(llama, prompt: Union[str, List[int]], suffix: Optional[str] = None) -> List[int]:
    """Prompt ids as llama-cpp-python builds them: special tokens in the text are parsed;
    BOS (and SEP/EOS) are added when the vocabulary asks for them; a token list is used as is.
    With a suffix: the fill-in-the-middle prompt of infill.py."""
    vocab = llama.vocab
    if suffix is not None:
        return infill_tokens(llama, prompt, suffix)
    if not isinstance(prompt, str):
        tokens = [int(t) for t in prompt]
    else:
        text = llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) if prompt else []
        bos = [vocab.bos_id] if vocab.add_bos and vocab.bos_id != -1 else []
        sep = vocab.sep_id
        eos = [] if (not vocab.add_eos and sep == -1) else [sep if sep != -1 else vocab.eos_id]
        tokens = bos + text + eos
    if not tokens:
        if vocab.bos_id == -1:
            raise ValueError("the prompt is empty and the vocabulary has no BOS token to start from")
        tokens = [vocab.bos_id]
    if tokens[:2] == [vocab.bos_id] * 2:
        warnings.warn(f'Detected duplicate leading "{vocab.token_text(vocab.bos_id)}" in prompt, '
                      "this will likely reduce response quality, consider removing it...",
                      RuntimeWarning)
    return tokens


def _utf8_complete(b: bytes) -> bool:
    """False when `b` ends inside a multi-byte UTF-8 character that may still be completed."""
    for back in range(1, min(4, len(b)) + 1):
        c = b[-back]
        if c & 0xC0 == 0x80:        # continuation byte: look further back
            continue
        need = 2 if c & 0xE0 == 0xC0 else 3 if c & 0xF0 == 0xE0 else 4 if c & 0xF8 == 0xF0 else 1
        return back >= need
    return True


def _held_back(pending: bytes, stops: List[bytes]) -> int:
    """Length of the longest end of `pending` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(pending)), best, -1):
            if pending.endswith(s[:n]):
                best = n
                break
    return best


class _Run:
    """One completion: generated tokens, their bytes and what has been streamed."""

    def __init__(self, llama, req: CompletionRequest):
        self.llama, self.req = llama, req
        self.seq = llama.current_sequence       # bound now: a stream may resume in another thread
        self.prompt_tokens = prompt_tokens(llama, req.prompt, req.suffix)
        self.prompt_text = (req.prompt if isinstance(req.prompt, str) else
                            llama.detokenize(self.prompt_tokens).decode("utf-8", errors="ignore"))
        n_ctx, n_prompt = llama.n_ctx(), len(self.prompt_tokens)
        if n_prompt >= n_ctx:
            raise ValueError(f"Requested tokens ({n_prompt}) exceed context window of {n_ctx}")
        if req.logprobs is not None and not llama.logits_all:
            raise ValueError("logprobs is not supported for models created with logits_all=False")
        llama.grammar_matcher(req.grammar)     # a grammar of the wrong type raises here
        max_tokens = req.max_tokens
        if max_tokens is None or max_tokens <= 0:
            max_tokens = n_ctx - n_prompt
        self.max_tokens = min(max_tokens, n_ctx - n_prompt)
        self.id = f"cmpl-{uuid.uuid4()}"
        self.created = int(time.time())
        self.model = req.model if req.model is not None else llama.model_path
        self.tokens: List[int] = []     # generated, EOG excluded
        self.ends: List[int] = []       # byte end of each generated token's text in buf
        self.buf = bytearray()
        self.text_end: Optional[int] = None   # where a stop string begins
        self.finish_reason = "length"
        self.sent_tokens = 0            # streaming: tokens already sent
        self.sent_bytes = 0

    # ---- the token loop -------------------------------------------------------

    def steps(self) -> Iterator[None]:
        """Generate; yields after every token so that a stream can send what is ready."""
        llama, req = self.llama, self.req
        with llama.using(self.seq):
            self._load_cached_prefix()
        seed = req.seed if req.seed is not None else random.Random(llama.seed).randint(0, 2 ** 32)
        llama.set_seed(seed)
        settings = SamplingSettings(**{**req.sampling.__dict__, "seed": seed})
        longest_stop = max((len(s) for s in req.stop), default=0)
        with llama.using(self.seq):
            gen = llama.generate_tokens(self.prompt_tokens, settings, logits_processor=req.logits_processor,
                                        stopping_criteria=req.stopping_criteria, grammar=req.grammar)
        t_start = t_first = time.perf_counter()
        for token in gen:
            if not self.tokens:
                t_first = time.perf_counter()
            if llama.vocab.is_eog(token):
                self.finish_reason = "stop"
                break
            if len(self.req.prompt) == 0 and not self.tokens:  # no space prefix before the text
                piece = llama.detokenize([llama.vocab.bos_id, token])
            else:   # a tokenizer given to Llama(tokenizer=...) may need the context
                prev = self.prompt_tokens + self.tokens if llama.has_custom_tokenizer else None
                piece = llama.detokenize([token], prev_tokens=prev)
            self.tokens.append(token)
            start = max(0, len(self.buf) - longest_stop + 1)
            self.buf += piece
            self.ends.append(len(self.buf))
            hits = [i for i in (self.buf.find(s, start) for s in req.stop) if i >= 0]
            if hits:
                self.text_end = min(hits)
                self.finish_reason = "stop"
                break
            yield
            if len(self.tokens) >= self.max_tokens:
                self.finish_reason = "length"
                break
        gen.close()
        if llama.verbose:
            self._print_timings(t_start, t_first, time.perf_counter())
        crit = req.stopping_criteria
        seq = self.seq
        if crit is not None and seq.logits is not None and crit(seq.input_ids[:seq.n_tokens], seq.logits):
            self.finish_reason = "stop"
        if llama.cache:
            with llama.using(seq):
                llama.cache[self.prompt_tokens + self.tokens] = llama.save_state()

    def _print_timings(self, t_start: float, t_first: float, t_end: float) -> None:
        n = len(self.tokens)
        rate = f" ({(n - 1) / (t_end - t_first):.1f} tokens/s)" if n > 1 and t_end > t_first else ""
        cache = getattr(self.llama.engine, "expert_cache", None)
        experts = "" if cache is None else \
            f"; expert cache: {cache.stats.hit_rate:.1%} hits, {cache.stats.bytes_loaded / 2**20:.1f} MiB loaded"
        print(f"pyinfer: prompt {len(self.prompt_tokens)} tokens, first token after "
              f"{(t_first - t_start) * 1000:.0f} ms; {n} tokens in {(t_end - t_start) * 1000:.0f} "
              f"ms{rate}{experts}", file=sys.stderr)

    def _load_cached_prefix(self) -> None:
        llama = self.llama
        if not llama.cache:
            return
        try:
            item = llama.cache[self.prompt_tokens]
        except KeyError:
            return
        cached = llama.longest_token_prefix(item.input_ids[:item.n_tokens].tolist(), self.prompt_tokens)
        current = llama.longest_token_prefix(llama.current_sequence.tokens, self.prompt_tokens)
        if cached > current:
            llama.load_state(item)

    # ---- results ------------------------------------------------------------------

    @property
    def end(self) -> int:
        return len(self.buf) if self.text_end is None else self.text_end

    def text(self) -> str:
        return bytes(self.buf[:self.end]).decode("utf-8", errors="ignore")

    def n_kept(self) -> int:
        """Generated tokens whose text starts before the end of the returned text."""
        if self.text_end is None:
            return len(self.tokens)
        starts = [0] + self.ends[:-1]
        return sum(1 for st in starts if st < self.text_end)

    def logprobs(self, first: int, last: int, with_prompt: bool) -> Optional[Dict[str, list]]:
        """OpenAI logprobs for generated tokens [first, last), preceded by the prompt's
        tokens (BOS left out) when `with_prompt`. Needs the logits rows of logits_all."""
        if self.req.logprobs is None:
            return None
        llama, n_prompt, bos = self.llama, len(self.prompt_tokens), self.llama.token_bos()
        items = []      # (position in the sequence, token, text offset)
        if with_prompt:
            skip = 1 if self.prompt_tokens[0] == bos else 0
            shown = self.prompt_tokens[skip:]
            for j, tok in enumerate(shown):
                before = llama.detokenize(shown[:j]).decode("utf-8", errors="ignore")
                items.append((skip + j, tok, len(before)))
        for i in range(first, last):
            start = self.ends[i - 1] if i else 0
            before = bytes(self.buf[:start]).decode("utf-8", errors="ignore")
            items.append((n_prompt + i, self.tokens[i], len(self.prompt_text) + len(before)))
        out: Dict[str, list] = {"tokens": [], "text_offset": [], "token_logprobs": [],
                                "top_logprobs": []}
        for pos, tok, offset in items:
            if tok == bos:
                continue
            text = llama.detokenize([tok]).decode("utf-8", errors="ignore")
            out["tokens"].append(text)
            out["text_offset"].append(offset)
            if pos == 0:
                out["token_logprobs"].append(None)
                out["top_logprobs"].append(None)
                continue
            lp = logits_to_logprobs(llama.scores[pos - 1])
            out["token_logprobs"].append(float(lp[tok]))
            out["top_logprobs"].append(self._top(lp, text, tok))
        if with_prompt and out["token_logprobs"]:
            out["token_logprobs"][0] = None     # OpenAI: no logprob for the first echoed token
            out["top_logprobs"][0] = None
        return out

    def _top(self, lp: np.ndarray, text: str, tok: int) -> Dict[str, float]:
        """The `logprobs` most likely tokens' texts -> logprob (ties: higher id first), plus
        the chosen token."""
        k = max(int(self.req.logprobs), 0)
        cand = np.argpartition(-lp, k - 1)[:k] if 0 < k < lp.size else np.arange(lp.size if k else 0)
        cand = cand[np.lexsort((-cand, -lp[cand]))]
        top = {self.llama.detokenize([int(i)]).decode("utf-8", errors="ignore"): float(lp[i])
               for i in cand}
        top[text] = float(lp[tok])
        return top

    def response(self) -> Dict[str, Any]:
        text = self.text()
        if self.req.echo:
            text = self.prompt_text + text
        n = len(self.tokens)
        return {
            "id": self.id, "object": "text_completion", "created": self.created,
            "model": self.model,
            "choices": [{"text": text, "index": 0,
                         "logprobs": self.logprobs(0, self.n_kept(), self.req.echo),
                         "finish_reason": self.finish_reason}],
            "usage": {"prompt_tokens": len(self.prompt_tokens), "completion_tokens": n,
                      "total_tokens": len(self.prompt_tokens) + n},
        }

    # ---- streaming -------------------------------------------------------------------

    def chunk(self, text: str, logprobs=None, finish_reason=None) -> Dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model,
                "choices": [{"text": text, "index": 0, "logprobs": logprobs,
                             "finish_reason": finish_reason}]}

    def ready_chunk(self, final: bool) -> Optional[Dict[str, Any]]:
        """The next group of generated tokens that may be sent, as a chunk (or None)."""
        if final:
            last, limit = (self.n_kept(), self.end)
        else:
            limit = len(self.buf) - _held_back(bytes(self.buf[self.sent_bytes:]), self.req.stop)
            last = self.sent_tokens
            for i in range(self.sent_tokens, len(self.tokens)):
                if self.ends[i] > limit:
                    break
                if _utf8_complete(bytes(self.buf[max(0, self.ends[i] - 4):self.ends[i]])):
                    last = i + 1
            limit = self.ends[last - 1] if last > self.sent_tokens else self.sent_bytes
        if last <= self.sent_tokens:
            return None
        text = bytes(self.buf[self.sent_bytes:limit]).decode("utf-8", errors="ignore")
        lp = self.logprobs(self.sent_tokens, last, False)
        self.sent_tokens, self.sent_bytes = last, limit
        return self.chunk(text, lp)


def create_completion(llama, req: CompletionRequest):
    """The response dict, or with req.stream an iterator of chunk dicts. Argument errors
    (context overflow, logprobs without logits_all) are raised here, before any chunk."""
    run = _Run(llama, req)
    if not req.stream:
        for _ in run.steps():
            pass
        return run.response()
    return _stream(run)


def _stream(run: _Run) -> Iterator[Dict[str, Any]]:
    echo = run.req.echo     # the prompt goes first, once it is evaluated (for its logprobs)
    for _ in run.steps():
        if echo:
            echo = False
            yield run.chunk(run.prompt_text, run.logprobs(0, 0, True))
        chunk = run.ready_chunk(final=False)
        if chunk is not None:
            yield chunk
    if echo:
        yield run.chunk(run.prompt_text, run.logprobs(0, 0, True))
    chunk = run.ready_chunk(final=True)
    if chunk is not None:
        yield chunk
    yield run.chunk("", None, run.finish_reason)
