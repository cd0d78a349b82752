"""Sampling as small pure functions over a logits vector, composed by a stateful chain.

The chain and its order follow llama.cpp's sampler as llama-cpp-python configures it:
user logits processors, logit bias, repetition penalties, then

    temperature < 0    draw from the softmax of the logits (no filtering)
    temperature == 0   greedy
    mirostat 1 / 2     the Mirostat samplers (they replace top-k ... temperature)
    otherwise          top-k, typical-p, top-p, min-p, temperature, seeded draw.

Candidate filters work on (ids, logits) pairs: token ids and float32 logits, in the order
llama.cpp would hold them (top-k and top-p leave them sorted by logit, descending). The draw
reproduces llama.cpp's: std::mt19937 seeded with the seed, one uniform double from libstdc++'s
generate_canonical, a cumulative scan in candidate order. Given the same logits and seed the
same token comes out as in llama.cpp.

A grammar (pyinfer.grammar.GrammarMatcher) is checked after the chain, the way llama.cpp's
common sampler does it (see `Sampler`).
"""
from __future__ import annotations

import math
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

LLAMA_DEFAULT_SEED = 0xFFFFFFFF     # llama.cpp's "pick a random seed"
_F32 = np.float32


@dataclass
class SamplingSettings:
    temperature: float = 0.8
    top_k: int = 40                 # <= 0: no top-k
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64        # 0: no penalties; -1: the whole generation
    mirostat_mode: int = 0          # 0 off, 1 Mirostat, 2 Mirostat 2.0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    logit_bias: Dict[int, float] = field(default_factory=dict)
    seed: Optional[int] = None      # None or LLAMA_DEFAULT_SEED: a random seed

    def __post_init__(self):
        self.logit_bias = check_logit_bias(self.logit_bias)


# ---- logits processors and stopping criteria (llama-cpp-python's hooks) ----

LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]
StoppingCriteria = Callable[[np.ndarray, np.ndarray], bool]


class LogitsProcessorList(List[LogitsProcessor]):
    """Processors `f(input_ids, scores) -> scores` applied in order; input_ids are the
    evaluated token ids (np.intc), scores the float32 logits of the next token."""

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


class StoppingCriteriaList(List[StoppingCriteria]):
    """Criteria `f(input_ids, logits) -> bool`; generation stops when any is true."""

    def __call__(self, input_ids: np.ndarray, logits: np.ndarray) -> bool:
        return any([criterion(input_ids, logits) for criterion in self])


# ---- whole-vocabulary transforms -------------------------------------------

def check_logit_bias(bias: Optional[Dict[int, float]],
                     n_vocab: Optional[int] = None) -> Dict[int, float]:
    """`bias` as {token id: float}, or ValueError: an id that is not an integer, negative or
    (with `n_vocab`) past the vocabulary, or a bias that is NaN or +inf (-inf bans a token).
    llama-cpp-python adds the bias with `scores[id]`, so there -1 silently biases the last
    token and an id past the vocabulary fails mid-generation with an IndexError; llama.cpp's
    server drops such ids without a word. Here they are an error, before anything runs."""
    out: Dict[int, float] = {}
    for tok, value in (bias or {}).items():
        if isinstance(tok, (bool, float)) or not isinstance(tok, (int, np.integer, str)):
            raise ValueError(f"logit_bias: token ids must be integers, got {tok!r}")
        try:
            tid = int(tok)
        except ValueError:
            raise ValueError(f"logit_bias: token ids must be integers, got {tok!r}") from None
        if tid < 0 or (n_vocab is not None and tid >= n_vocab):
            where = f"0 to {n_vocab - 1}" if n_vocab is not None else "0 or more"
            raise ValueError(f"logit_bias: token id {tid} is out of range ({where})")
        b = float(value)
        if math.isnan(b) or b == math.inf:
            raise ValueError(f"logit_bias: the bias of token {tid} must be a number or "
                             f"-inf, got {b}")
        out[tid] = b
    return out


def apply_logit_bias(logits: np.ndarray, bias: Dict[int, float]) -> np.ndarray:
    """`logits` plus the bias of each token id in `bias` (a ValueError for an id outside
    the vocabulary, never numpy's negative indexing)."""
    if not bias:
        return logits
    out = logits.copy()
    n = out.shape[-1]
    for tok, b in bias.items():
        t = int(tok)
        if not 0 <= t < n:
            raise ValueError(f"logit_bias: token id {t} is out of range (0 to {n - 1})")
        out[t] += b
    return out


def apply_penalties(logits: np.ndarray, last_tokens: Sequence[int], repeat: float = 1.0,
                    frequency: float = 0.0, presence: float = 0.0) -> np.ndarray:
    """llama.cpp's penalties over the recent tokens: divide positive logits
    (multiply negative ones) by `repeat`, subtract count*frequency and
    presence once per distinct token."""
    if len(last_tokens) == 0 or (repeat == 1.0 and frequency == 0.0 and presence == 0.0):
        return logits
    toks, counts = np.unique(np.asarray(last_tokens, dtype=np.int64), return_counts=True)
    out = logits.copy()
    v = out[toks]
    v = np.where(v > 0, v / _F32(repeat), v * _F32(repeat))
    out[toks] = v - counts * _F32(frequency) - _F32(presence)
    return out


# ---- filters over candidate sets ------------------------------------------
# A candidate set is (ids, logits): token ids and their logits. Filters return
# a subset; they never return an empty set.

def top_k(ids: np.ndarray, logits: np.ndarray, k: int):
    """The k largest logits, sorted descending (ties by position). k <= 0: unchanged."""
    if k <= 0:
        return ids, logits
    k = min(k, logits.size)
    keep = np.argpartition(-logits, k - 1)[:k] if k < logits.size else np.arange(logits.size)
    keep = keep[np.lexsort((keep, -logits[keep]))]
    return ids[keep], logits[keep]


def _sorted(ids: np.ndarray, logits: np.ndarray):
    """Sort descending and compute llama.cpp's float32 softmax."""
    order = np.argsort(-logits, kind="stable")
    ids, logits = ids[order], logits[order]
    p = np.exp(logits - logits[0], dtype=_F32)
    return ids, logits, p / np.cumsum(p, dtype=_F32)[-1]


def top_p(ids: np.ndarray, logits: np.ndarray, p: float, min_keep: int = 1):
    """Keep the smallest prefix of the sorted distribution with mass >= p."""
    if p >= 1.0:
        return ids, logits
    ids, logits, probs = _sorted(ids, logits)
    n_keep = max(int(np.searchsorted(np.cumsum(probs, dtype=_F32), _F32(p))) + 1, min_keep)
    return ids[:n_keep], logits[:n_keep]


def min_p(ids: np.ndarray, logits: np.ndarray, p: float, min_keep: int = 1):
    """Keep tokens whose probability is at least p times the top one's (order kept)."""
    if p <= 0.0:
        return ids, logits
    keep = logits >= logits.max() + np.log(_F32(p))
    if keep.sum() < min_keep:
        return top_k(ids, logits, min_keep)
    return ids[keep], logits[keep]


def typical_p(ids: np.ndarray, logits: np.ndarray, p: float, min_keep: int = 1):
    """Locally typical sampling: keep the tokens whose surprise is closest to
    the entropy of the distribution, up to cumulative mass p."""
    if p >= 1.0:
        return ids, logits
    probs = softmax(logits)
    logp = np.log(np.maximum(probs, 1e-300))
    entropy = -(probs * logp).sum()
    order = np.argsort(np.abs(-logp - entropy), kind="stable")
    n_keep = max(int(np.searchsorted(np.cumsum(probs[order]), p)) + 1, min_keep)
    keep = order[:n_keep]
    return ids[keep], logits[keep]


def softmax(logits: np.ndarray) -> np.ndarray:
    lg = logits.astype(np.float64)
    p = np.exp(lg - lg.max())
    return p / p.sum()


# ---- the seeded draw --------------------------------------------------------

def resolve_seed(seed: Optional[int]) -> int:
    """A 32-bit seed as llama.cpp takes it (C uint32); None and LLAMA_DEFAULT_SEED (or -1)
    pick a random one."""
    if seed is not None:
        seed = int(seed) & 0xFFFFFFFF
    if seed is None or seed == LLAMA_DEFAULT_SEED:
        seed = secrets.randbits(32)
    return seed


class CppRandom:
    """std::mt19937 seeded with a 32-bit seed, and std::uniform_real_distribution<double>(0, 1)
    as libstdc++ computes it (two 32-bit outputs, low word first)."""

    def __init__(self, seed: Optional[int]):
        self.seed = resolve_seed(seed)
        self._mt = None   # seeded on first use (~0.2 ms): greedy sampling never pays for it

    @property
    def _bits(self) -> np.random.MT19937:
        if self._mt is None:
            self._mt = np.random.MT19937()
            # RandomState's integer seeding is mt19937's init_genrand, as std::mt19937(seed)
            self._mt.state = np.random.RandomState(self.seed).get_state(legacy=False)
        return self._mt

    def uniform(self) -> float:
        lo, hi = (float(x) for x in self._bits.random_raw(2))
        x = (lo + hi * 4294967296.0) / 18446744073709551616.0
        return x if x < 1.0 else math.nextafter(1.0, 0.0)


def draw(ids: np.ndarray, logits: np.ndarray, rng: CppRandom) -> int:
    """Sample from the softmax of `logits`: the first candidate, in order, at which the
    running sum of exp(logit - max) reaches uniform * total. A uniform is drawn even for a
    single candidate, as llama.cpp does (it keeps the RNG stream in step)."""
    p = np.exp(logits - logits.max(), dtype=_F32)
    cum = np.cumsum(p, dtype=np.float64)
    target = cum[-1] * rng.uniform()
    i = int(np.searchsorted(cum, target, side="left"))
    return int(ids[min(i, ids.size - 1)])


# ---- the chain ----------------------------------------------------------------

class Sampler:
    """One generation's sampler: settings plus state (recent tokens for the penalties,
    Mirostat's mu, the RNG, the grammar position). `sample` picks a token, `accept` records it.

    With a grammar (a GrammarMatcher) sampling goes as llama.cpp's common sampler: the chain
    picks a token from the unconstrained logits and only that token is checked; if the
    grammar rejects it, the chain runs again on the tokens the grammar allows (a second RNG
    draw). Greedy picks are the same as masking first; the full mask is built only when needed.
    """

    def __init__(self, s: SamplingSettings, logits_processor: Optional[LogitsProcessor] = None,
                 grammar=None):
        self.settings = s
        self.rng = CppRandom(s.seed)
        n = s.penalty_last_n
        self.recent: deque = deque(maxlen=None if n < 0 else n)
        self.mu = 2.0 * s.mirostat_tau
        if logits_processor is not None and not callable(logits_processor):
            logits_processor = LogitsProcessorList(logits_processor)    # a plain list
        self.logits_processor = logits_processor
        self.grammar = grammar
        self.n_rejected = 0     # picks the grammar rejected (each cost a full mask)

    def sample(self, logits: np.ndarray, input_ids: Optional[np.ndarray] = None) -> int:
        """A token for float32 `logits` (n_vocab,); `input_ids` (the evaluated tokens) are
        passed to the logits processors."""
        s = self.settings
        x = np.asarray(logits, dtype=_F32)
        if self.logits_processor is not None:
            ids_in = input_ids if input_ids is not None else np.zeros(0, dtype=np.intc)
            x = np.asarray(self.logits_processor(ids_in, x.copy()), dtype=_F32)
        x = apply_logit_bias(x, s.logit_bias)
        if self.recent.maxlen != 0:
            x = apply_penalties(x, self.recent, s.repeat_penalty, s.frequency_penalty,
                                s.presence_penalty)
        token = self._choose(None, x)
        if self.grammar is None or self.grammar.accepts(token):
            return token
        self.n_rejected += 1
        allowed = self.grammar.allowed()
        if allowed.size == 0:
            raise RuntimeError("the grammar allows no token here (no token of the vocabulary "
                               "can continue it)")
        return self._choose(allowed, x[allowed], n_vocab=x.size)

    def _choose(self, ids: Optional[np.ndarray], x: np.ndarray,
                n_vocab: Optional[int] = None) -> int:
        """The chain from the temperature on, over candidates `ids` (None: every token) with
        logits `x`."""
        s = self.settings
        if s.temperature == 0.0:
            best = int(np.argmax(x))
            return best if ids is None else int(ids[best])
        if ids is None:
            ids = np.arange(x.size)
        if s.temperature < 0.0:
            return draw(ids, x, self.rng)
        if s.mirostat_mode == 1:
            return self._mirostat_v1(ids, x, n_vocab or x.size)
        if s.mirostat_mode == 2:
            return self._mirostat_v2(ids, x)
        ids, x = top_k(ids, x, s.top_k)
        ids, x = typical_p(ids, x, s.typical_p)
        ids, x = top_p(ids, x, s.top_p)
        ids, x = min_p(ids, x, s.min_p)
        return draw(ids, x / _F32(s.temperature), self.rng)

    def accept(self, token: int) -> None:
        self.recent.append(int(token))
        if self.grammar is not None:
            self.grammar.accept(token)

    def _update_mu(self, prob: float) -> None:
        surprise = -math.log2(prob)
        self.mu -= self.settings.mirostat_eta * (surprise - self.settings.mirostat_tau)

    def _mirostat_v2(self, ids: np.ndarray, logits: np.ndarray) -> int:
        """Mirostat 2.0: drop tokens whose surprise exceeds mu, sample, move mu toward tau."""
        ids, logits, p = _sorted(ids, logits)
        over = np.nonzero(-np.log2(p) > self.mu)[0]
        n = max(int(over[0]) if over.size else p.size, 1)
        ids, logits = ids[:n], logits[:n]
        tok = draw(ids, logits, self.rng)
        self._update_mu(float(softmax(logits)[int(np.nonzero(ids == tok)[0][0])]))
        return tok

    def _mirostat_v1(self, ids: np.ndarray, logits: np.ndarray, n_vocab: int,
                     m: int = 100) -> int:
        """Mirostat: estimate the Zipf exponent from the top m tokens, pick k so that the
        expected surprise is mu, sample from the top k, move mu toward tau."""
        ids, logits, p = _sorted(ids, logits)
        n = min(m - 1, p.size - 1)
        i = np.arange(n, dtype=np.float64)
        t = np.log((i + 2) / (i + 1))
        with np.errstate(all="ignore"):     # flat or one-hot heads give 0 or inf: no cut
            b = np.log(p[:n].astype(np.float64) / p[1:n + 1])
            s_hat = np.float64((t * b).sum() / (t * t).sum()) if n > 0 else np.float64(1.0)
            eps = s_hat - 1.0
            k = float(((eps * 2.0 ** self.mu) / (1.0 - np.float64(n_vocab) ** -eps)) ** (1.0 / s_hat))
        k = max(int(k), 1) if math.isfinite(k) else n_vocab
        ids, logits = ids[:k], logits[:k]
        tok = draw(ids, logits, self.rng)
        self._update_mu(float(softmax(logits)[int(np.nonzero(ids == tok)[0][0])]))
        return tok


def make_sampler(s: SamplingSettings, logits_processor: Optional[LogitsProcessor] = None,
                 grammar=None) -> Sampler:
    """A fresh sampler chain for one generation (grammar: a GrammarMatcher or None)."""
    return Sampler(s, logits_processor, grammar)
