"""The grammar inside the sampler, on a hand-made vocabulary and hand-made logits: the
unconstrained pick is kept when the grammar allows it, otherwise the best allowed token is
taken; EOG only when the grammar is complete, and only EOG once nothing else can follow;
the trie walk gives the same allowed set as checking every token on its own."""
import random

import numpy as np
import pytest

from pyinfer.grammar import LlamaGrammar, VocabTrie
from pyinfer.grammar.matcher import REJECT
from pyinfer.sampling import Sampler, SamplingSettings

PIECES = [b"<eos>", b"a", b"b", b"ab", b"ba", b"c", b"\xc3", b"\xa9", "é".encode(), b"", b"aa",
          b"\xa9a", b"\xe2\x82", b"\xac"]
EOS = 0
GREEDY = SamplingSettings(temperature=0.0, penalty_last_n=0)


def vocab():
    return VocabTrie([b"" if i == EOS else p for i, p in enumerate(PIECES)], eog=[EOS])


def sampler(grammar: str, settings=GREEDY) -> Sampler:
    return Sampler(settings, grammar=LlamaGrammar.from_string(grammar).matcher(vocab()))


def logits(best_first):
    """Logits ranking the given tokens first (in order), every other token below."""
    x = np.full(len(PIECES), -10.0, np.float32)
    for rank, tok in enumerate(best_first):
        x[tok] = 10.0 - rank
    return x


def test_allowed_pick_is_kept_and_rejected_pick_is_replaced():
    s = sampler('root ::= "a" "b"*')
    tok = s.sample(logits([1, 3]))
    assert tok == 1 and s.n_rejected == 0
    s.accept(tok)
    tok = s.sample(logits([5, 1, 2]))          # "c" rejected -> next best allowed: "b"
    assert tok == 2 and s.n_rejected == 1


def test_eos_only_when_complete_and_only_eos_at_the_end():
    s = sampler('root ::= "ab"')
    assert s.sample(logits([EOS, 3])) == 3      # EOS not allowed before the grammar is done
    s.accept(3)
    assert s.grammar.complete
    assert s.grammar.allowed().tolist() == [EOS]
    assert s.sample(logits([1, 2, 3])) == EOS


def test_tokens_may_split_utf8():
    s = sampler('root ::= "é" "a"')
    assert s.sample(logits([6, 8])) == 6        # b"\xc3": the first half of é
    s.accept(6)
    assert s.grammar.allowed().tolist() == [7, 11]   # b"\xa9" and b"\xa9a"
    s.accept(11)
    assert s.grammar.complete


def test_empty_piece_tokens_are_never_allowed():
    s = sampler("root ::= [a-c]*")
    assert 9 not in s.grammar.allowed().tolist()
    assert not s.grammar.accepts(9)
    with pytest.raises(ValueError):
        s.grammar.accept(9)


def test_sampling_with_temperature_stays_in_the_grammar():
    settings = SamplingSettings(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0,
                                penalty_last_n=0, seed=42)
    rnd = np.random.default_rng(0)
    for _ in range(20):
        s = sampler('root ::= ("a" | "b"){1,3} "c"', settings)
        text = b""
        for _ in range(10):
            tok = s.sample(rnd.normal(size=len(PIECES)).astype(np.float32) * 3)
            s.accept(tok)
            if tok == EOS:
                break
            text += PIECES[tok]
        assert tok == EOS
        assert 2 <= len(text) <= 4 and text.endswith(b"c") and set(text[:-1]) <= set(b"ab")


def test_trie_walk_equals_checking_each_token():
    rnd = random.Random(5)
    alphabet = [b"a", b"b", b"{", b"}", b'"', b" ", b"1", "é".encode(), b"\xc3", b"\xa9", b"\xe2"]
    pieces = [b""] + [b"".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 4)))
                      for _ in range(400)]
    v = VocabTrie(pieces, eog=[0])
    g = LlamaGrammar.from_string('root ::= "{" ("\\"" [^"]* "\\"" | [0-9]+ | " ")* "}"')
    m = g.matcher(v)
    a = g.automaton
    for prefix in [b"", b"{", b'{"', b'{"\xc3', b'{1', b'{"a" }']:
        m.state = a.walk(a.start, prefix)
        brute = [t for t in range(1, len(pieces)) if a.walk(m.state, pieces[t]) != REJECT]
        brute += [0] if a.complete[m.state] else []
        assert m.allowed().tolist() == sorted(brute), prefix
