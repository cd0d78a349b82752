"""Matching bytes and tokens against a parsed grammar.

The matcher follows llama.cpp's: a parse position is a *stack* of positions in the grammar's
alternatives (the top is the next element to match, the entries below are where to resume
when a rule finishes); rule references on top are expanded until every stack shows a
character element or is empty (the grammar is complete on that path). A code point advances
every stack whose top matches it. Tokens are byte strings that may end inside a UTF-8
character: a partial character (its value so far and the bytes still missing) keeps only the
stacks whose top could match some completion, as llama.cpp's match_partial_char decides.

`Automaton` interns each (stacks, partial) state as an int and caches its transitions per
byte, so a grammar that has been walked before costs a list lookup per byte. `VocabTrie`
holds the vocabulary's token pieces as a byte trie; `Automaton.allowed` walks it with the
states, sharing each prefix's work between all tokens that start with it, dropping whole
subtrees at the first rejected byte and taking whole subtrees whose bytes all lead back to the
same state (the inside of a string). `GrammarMatcher` is one generation's position.

The caches are bounded (limits.py): a state may hold at most max_stacks parse stacks (more
raises GrammarLimitError: the grammar is too ambiguous), and when the cache holds more than
max_states states or max_cached_stacks stacks in all it is emptied between steps and refilled as
matching goes on. A matcher keeps its position as the state's content, not only its number, so
it carries on across such a restart (the automaton's `epoch` says which numbering is current).
"""
from __future__ import annotations

import gc
import itertools
from typing import Dict, FrozenSet, List, Sequence, Tuple

import numpy as np

from .gbnf import Grammar
from .limits import DEFAULT_GRAMMAR_LIMITS, GrammarLimits

END = -1            # elems value: end of an alternative
REJECT = -1         # transition value: the byte is not allowed
UNKNOWN = -2        # transition value: not computed yet
_MAX_CACHED_MASKS = 128

Stack = Tuple[int, ...]


def _ref(rule: int) -> int:
    return -(rule + 2)


class Automaton:
    """A grammar compiled to flat arrays, with the state and transition caches.

    elems: every alternative's elements back to back, each followed by END; a value >= 0 is
    an index into `charsets` (negated, ((lo, hi), ...)), a value <= -2 is a reference to
    rule -(value + 2). rule_alts[r]: the elems index where each alternative of rule r starts.
    """

    def __init__(self, g: Grammar, limits: GrammarLimits = DEFAULT_GRAMMAR_LIMITS):
        self.limits = limits
        self.charsets: List[Tuple[bool, Tuple[Tuple[int, int], ...]]] = []
        charset_ids: Dict[tuple, int] = {}
        self.elems: List[int] = []
        self.rule_alts: List[List[int]] = []
        for alts in g.rules:
            starts = []
            for alt in alts:
                starts.append(len(self.elems))
                for e in alt:
                    if e[0] == "ref":
                        self.elems.append(_ref(e[1]))
                    else:
                        key = (e[1], e[2])
                        if key not in charset_ids:
                            charset_ids[key] = len(self.charsets)
                            self.charsets.append(key)
                        self.elems.append(charset_ids[key])
                self.elems.append(END)
            self.rule_alts.append(starts)
        self.epoch = 0
        self._clear()
        ready = set()
        for a in self.rule_alts[g.root]:
            ready.update(self._expand((a,) if self.elems[a] != END else ()))
        self._start_key = (self._checked(ready), 0, 0)
        self.start = self._intern(*self._start_key)

    def _clear(self) -> None:
        self._expanded: Dict[Stack, Tuple[Stack, ...]] = {}
        # state id -> (stacks, partial character's value so far, its bytes still missing)
        self.states: List[Tuple[FrozenSet[Stack], int, int]] = []
        self.complete: List[bool] = []
        self.trans: List[List[int]] = []
        self._ids: Dict[tuple, int] = {}
        self._masks: Dict[tuple, np.ndarray] = {}
        self._loops: Dict[int, int] = {}
        self.n_cached_stacks = 0

    def restart_if_full(self) -> None:
        """Empty the caches when they hold more than max_states states or max_cached_stacks
        stacks (called between matcher steps, when no state number is in use but the
        matchers', which re-intern their state after a restart)."""
        lim = self.limits
        if len(self.states) > lim.max_states or self.n_cached_stacks > lim.max_cached_stacks:
            self._clear()
            self.epoch += 1
            self.start = self._intern(*self._start_key)

    def _checked(self, stacks) -> FrozenSet[Stack]:
        if len(stacks) > self.limits.max_stacks:
            raise self.limits.error("max_stacks", (
                f"the grammar is too ambiguous here: {len(stacks)} parse stacks at one "
                "position"))
        return frozenset(stacks)

    # ---- stacks ------------------------------------------------------------------------

    def _expand(self, stack: Stack) -> Tuple[Stack, ...]:
        """The stacks `stack` stands for once rule references on top are replaced by their
        alternatives (each result is empty or shows a character element on top)."""
        done = self._expanded.get(stack)
        if done is not None:
            return done
        elems, out, seen, todo = self.elems, [], {stack}, [stack]
        while todo:
            s = todo.pop()
            if not s or elems[s[-1]] >= 0:
                out.append(s)
                continue
            p = s[-1]
            base = s[:-1] + (p + 1,) if elems[p + 1] != END else s[:-1]
            for a in self.rule_alts[-elems[p] - 2]:
                ns = base + (a,) if elems[a] != END else base
                if ns not in seen:
                    seen.add(ns)
                    todo.append(ns)
            if len(seen) > self.limits.max_stacks:
                self._checked(seen)
        result = self._expanded[stack] = tuple(out)
        self.n_cached_stacks += len(result)
        return result

    def _matches(self, charset: int, cp: int) -> bool:
        negated, ranges = self.charsets[charset]
        for lo, hi in ranges:
            if lo <= cp <= hi:
                return not negated
        return negated

    def _may_match(self, charset: int, value: int, left: int) -> bool:
        """Can a UTF-8 character whose leading bits are `value`, with `left` continuation
        bytes missing, match the charset? (llama.cpp's match_partial_char)"""
        if left == 1 and value < 2:          # a 7-bit character split over two bytes
            return False
        lo = value << (6 * left)
        hi = lo | ((1 << (6 * left)) - 1)
        if lo == 0:                          # overlong forms are not completions
            lo = 1 << 11 if left == 2 else 1 << 16 if left == 3 else lo
        negated, ranges = self.charsets[charset]
        for a, b in ranges:
            if negated and a <= lo and hi <= b:
                return False
            if not negated and a <= hi and lo <= b:
                return True
        return negated

    def _advance(self, stacks: FrozenSet[Stack], cp: int) -> FrozenSet[Stack]:
        elems, out = self.elems, set()
        for s in stacks:
            if s and self._matches(elems[s[-1]], cp):
                p = s[-1]
                out.update(self._expand(s[:-1] + (p + 1,) if elems[p + 1] != END else s[:-1]))
        return self._checked(out)

    # ---- states ------------------------------------------------------------------------

    def _intern(self, stacks: FrozenSet[Stack], value: int, left: int) -> int:
        key = (stacks, value, left)
        sid = self._ids.get(key)
        if sid is None:
            sid = self._ids[key] = len(self.states)
            self.states.append(key)
            self.n_cached_stacks += len(stacks)
            self.complete.append(left == 0 and () in stacks)
            self.trans.append([UNKNOWN] * 256)
        return sid

    def step(self, sid: int, b: int) -> int:
        """The state after byte b from state sid, or REJECT."""
        t = self.trans[sid][b]
        if t == UNKNOWN:
            t = self.trans[sid][b] = self._step(sid, b)
        return t

    def _step(self, sid: int, b: int) -> int:
        stacks, value, left = self.states[sid]
        if left == 0:
            if b < 0x80:
                new = self._advance(stacks, b)
                return self._intern(new, 0, 0) if new else REJECT
            if 0xC0 <= b < 0xE0:
                value, left = b & 0x1F, 1
            elif 0xE0 <= b < 0xF0:
                value, left = b & 0x0F, 2
            elif 0xF0 <= b < 0xF8:
                value, left = b & 0x07, 3
            else:                               # a stray continuation byte or invalid lead
                return REJECT
        else:
            if b & 0xC0 != 0x80:
                return REJECT
            value, left = (value << 6) | (b & 0x3F), left - 1
            if left == 0:
                new = self._advance(stacks, value)
                return self._intern(new, 0, 0) if new else REJECT
        elems = self.elems
        new = frozenset(s for s in stacks if s and self._may_match(elems[s[-1]], value, left))
        return self._intern(new, value, left) if new else REJECT

    def walk(self, sid: int, piece: bytes) -> int:
        """The state after all of `piece`'s bytes, or REJECT."""
        trans = self.trans
        for b in piece:
            t = trans[sid][b]
            if t == UNKNOWN:
                t = self.step(sid, b)
            if t < 0:
                return REJECT
            sid = t
        return sid

    def loop_bytes(self, sid: int) -> int:
        """A 256-bit mask of the ASCII bytes that lead from state sid back to itself (inside
        a JSON string: every character but the quote, backslash and controls)."""
        mask = self._loops.get(sid)
        if mask is None:
            mask = sum(1 << b for b in range(128) if self.step(sid, b) == sid)
            self._loops[sid] = mask
        return mask

    def allowed(self, sid: int, vocab: "VocabTrie") -> np.ndarray:
        """Sorted ids of the tokens allowed in state sid (EOG tokens iff it is complete).

        The trie walk drops a subtree at its first rejected byte. It also takes a subtree
        whole, without walking it, when it is reached in state sid and every byte below it
        leads from sid back to sid: then all its tokens are allowed (inside a string that is
        most of the vocabulary, so only the subtrees holding quotes, escapes and non-ASCII
        bytes are walked). A subtree's tokens are a contiguous run of `vocab.sorted_ids`."""
        key = (vocab.key, sid)
        ids = self._masks.get(key)
        if ids is not None:
            return ids
        out: List[int] = list(vocab.eog) if self.complete[sid] else []
        runs: List[int] = []            # start, end, start, end, ... into vocab.sorted_ids
        outside = ~self.loop_bytes(sid)
        trans, step = self.trans, self.step
        todo = [(vocab.root, sid)]
        while todo:
            node, s = todo.pop()
            row = trans[s]
            for b, child in node[0]:
                t = row[b]
                if t == UNKNOWN:
                    t = step(s, b)
                if t < 0:
                    continue
                if t == sid and not child[4] & outside:
                    runs += (child[2], child[3])
                    continue
                if child[1]:
                    out.extend(child[1])
                if child[0]:
                    todo.append((child, t))
        mask = np.zeros(vocab.n_vocab, dtype=bool)
        mask[np.array(out, dtype=np.int64)] = True
        if runs:
            edges = np.zeros(len(vocab.sorted_ids) + 1, np.int32)
            np.add.at(edges, runs[0::2], 1)
            np.add.at(edges, runs[1::2], -1)
            mask[vocab.sorted_ids[np.cumsum(edges[:-1]) > 0]] = True
        ids = np.flatnonzero(mask)
        if len(self._masks) >= _MAX_CACHED_MASKS:
            self._masks.pop(next(iter(self._masks)))
        self._masks[key] = ids
        return ids


_trie_keys = itertools.count()


class VocabTrie:
    """A vocabulary's token pieces (the bytes each token stands for) as a byte trie.

    A node is a list (see _new_node): its children (byte, node) in byte order, the tokens whose
    piece ends there, the run of sorted_ids its subtree holds and the bytes found below it.
    End-of-generation tokens (`eog`) and tokens with an empty piece are left out of the trie;
    a grammar allows EOG when it is complete, never an empty piece. sorted_ids: the other
    token ids in the order of their pieces (so a subtree's tokens are contiguous).
    """

    def __init__(self, pieces: Sequence[bytes], eog: Sequence[int]):
        self.pieces = list(pieces)
        self.eog = tuple(sorted(set(int(t) for t in eog)))
        self.n_vocab = len(self.pieces)
        self.key = next(_trie_keys)
        eog_set = set(self.eog)
        entries = sorted((piece, tok) for tok, piece in enumerate(self.pieces)
                         if piece and tok not in eog_set)
        self.sorted_ids = np.array([tok for _, tok in entries], dtype=np.int64)
        gc_was_on = gc.isenabled()
        gc.disable()    # ~100k new lists would trigger many full collections (seconds)
        try:
            self.root = self._build(entries)
        finally:
            if gc_was_on:
                gc.enable()

    def _build(self, entries: List[Tuple[bytes, int]]) -> list:
        root = self._new_node(0)
        path, prev = [root], b""        # path[d]: the node of prev[:d]
        for i, (piece, tok) in enumerate(entries):  # sorted: a piece extends a prefix of the last
            common = 0
            for x, y in zip(prev, piece):
                if x != y:
                    break
                common += 1
            while len(path) > common + 1:
                self._close(path.pop(), path[-1], i)
            for b in piece[common:]:
                node = self._new_node(i)
                path[-1][0].append((b, node))
                path.append(node)
            path[-1][1].append(tok)
            prev = piece
        while len(path) > 1:
            self._close(path.pop(), path[-1], len(entries))
        root[3] = len(entries)
        return root

    @staticmethod
    def _new_node(start: int) -> list:
        """[children [(byte, node)], token ids ending here, first and end index of the
        subtree's tokens in sorted_ids, mask of the bytes below the node (bit b: byte b)]"""
        return [[], [], start, start, 0]

    @staticmethod
    def _close(node: list, parent: list, end: int) -> None:
        node[3] = end
        byte, last = parent[0][-1]          # the node closed is its parent's last child
        assert last is node
        parent[4] |= node[4] | (1 << byte)

    @classmethod
    def from_tokenizer(cls, vocab, n_vocab: int) -> "VocabTrie":
        """Pieces as detokenizing shows them (control tokens give b"", so never match)."""
        n = min(n_vocab, vocab.n_vocab)
        pieces = [vocab.token_to_piece(t) for t in range(n)] + [b""] * (n_vocab - n)
        return cls(pieces, [t for t in range(n) if vocab.is_eog(t)])


class GrammarMatcher:
    """One generation's position in a grammar over a vocabulary."""

    def __init__(self, automaton: Automaton, vocab: VocabTrie):
        self.automaton, self.vocab = automaton, vocab
        self.state = automaton.start
        self._eog = frozenset(vocab.eog)

    @property
    def state(self) -> int:
        """The current state's number in the automaton's current numbering (the caches
        may have been restarted since the last step: then the state is interned again)."""
        a = self.automaton
        a.restart_if_full()
        if self._epoch != a.epoch:
            self._state, self._epoch = a._intern(*self._key), a.epoch
        return self._state

    @state.setter
    def state(self, sid: int) -> None:
        self._state, self._epoch = sid, self.automaton.epoch
        self._key = self.automaton.states[sid]

    @property
    def complete(self) -> bool:
        """The text so far is a whole sentence of the grammar (EOG may come now)."""
        return self.automaton.complete[self.state]

    def _next(self, token: int) -> int:
        token = int(token)
        state = self.state
        if token in self._eog:
            return state if self.automaton.complete[state] else REJECT
        if not 0 <= token < self.vocab.n_vocab or not self.vocab.pieces[token]:
            return REJECT
        return self.automaton.walk(state, self.vocab.pieces[token])

    def accepts(self, token: int) -> bool:
        return self._next(token) >= 0

    def allowed(self) -> np.ndarray:
        """Sorted ids of every token the grammar allows next."""
        return self.automaton.allowed(self.state, self.vocab)

    def accept(self, token: int) -> None:
        """Move past `token` (ValueError when the grammar does not allow it)."""
        nxt = self._next(token)
        if nxt < 0:
            raise ValueError(f"token {int(token)} is not allowed by the grammar here")
        self.state = nxt
