"""GBNF text -> `Grammar`: rules of alternatives of elements, as llama.cpp parses it.

The syntax (llama.cpp grammars/README.md):

    root  ::= item ("," ws item)*        # a rule: name ::= alternatives
    item  ::= [a-z]+ | "\\x41" | . | (x y)? | z{2,5}
    # comments run to the end of the line

Rule names are [A-Za-z0-9_-]+; a sequence ends at a newline unless it is inside parentheses or
follows `::=` or `|` (a line starting with `|` also continues the rule before it). Literals
"..." and classes [...] take the escapes \\n \\t \\r \\\\ \\" \\[ \\] \\xHH \\uHHHH \\UHHHHHHHH;
classes hold characters and ranges a-z, negated by a leading ^; `.` is any character.
`*` `+` `?` `{m}` `{m,}` `{m,n}` repeat the symbol before them (a whole literal or group).

Repetitions become generated rules the way llama.cpp expands them: x{2,4} is `x x x_opt` with
`x_opt ::= x (x)? |` nested, x* is `x_rec ::= x x_rec |`. Groups become generated rules too.
Repetition counts and the expanded size are bounded as limits.py describes (llama.cpp's
repetition rule; a count too large is refused before anything is expanded). Errors raise
ValueError with the line and column (GrammarLimitError, a ValueError, for a limit).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .limits import DEFAULT_GRAMMAR_LIMITS, GrammarLimits

MAX_CODE_POINT = 0x10FFFF

# An element of an alternative: ("char", negated, ((lo, hi), ...)) matches one code point
# (negated with no ranges is `.`), ("ref", rule_id) stands for a rule.
Element = Tuple


@dataclass
class Grammar:
    """names[i] is rule i's name; rules[i] its alternatives, each a list of elements. Rule
    ids are dense; `root` is the id of the start rule. notes: what the parser changed
    (a repetition beyond max_repetitions made unbounded), for the user to see."""
    names: List[str]
    rules: List[List[List[Element]]]
    root: int
    notes: List[str] = field(default_factory=list)

    def rule_id(self, name: str) -> int:
        return self.names.index(name)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "[": "[", "]": "]"}
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}
ANY_CHAR: Element = ("char", True, ())


def _is_word(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c in "-_")


# What prescan looks at: literals, classes and comments (skipped) and repetition counts.
_SCAN = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|#[^\r\n]*'
                   r'|\{[ \t]*(\d+)[ \t]*(,[ \t]*(\d*)[ \t]*)?\}')


def grammar_size(rules: List[List[List[Element]]]) -> int:
    """Entries of the compiled grammar: every element and the end of every alternative."""
    return sum(len(alt) + 1 for alts in rules for alt in alts)


class _Parser:
    def __init__(self, src: str, limits: GrammarLimits):
        self.src = src
        self.limits = limits
        self.ids: Dict[str, int] = {}
        self.rules: Dict[int, List[List[Element]]] = {}
        self.first_use: Dict[int, int] = {}     # rule id -> position of its first reference
        self.n_wrappers = 0         # generated rules llama.cpp does not make (see repeat)
        self.expanded = 0           # grammar entries made by repetitions so far
        self.notes: List[str] = []

    # ---- helpers ---------------------------------------------------------------------------

    def where(self, pos: int) -> str:
        line = self.src.count("\n", 0, pos) + 1
        col = pos - (self.src.rfind("\n", 0, pos) + 1) + 1
        return f"line {line}, column {col}"

    def error(self, pos: int, msg: str) -> ValueError:
        near = self.src[pos:pos + 20].split("\n")[0]
        return ValueError(f"GBNF parse error at {self.where(pos)}: {msg}"
                          + (f" (near {near!r})" if near else ""))

    def n_symbols(self) -> int:
        """Symbols so far as llama.cpp counts them (its n_prev_rules for a group)."""
        return len(self.ids) - self.n_wrappers

    def peek(self, pos: int) -> str:
        return self.src[pos] if pos < len(self.src) else ""

    def space(self, pos: int, newline_ok: bool) -> int:
        src, n = self.src, len(self.src)
        while pos < n:
            c = src[pos]
            if c == "#":
                while pos < n and src[pos] not in "\r\n":
                    pos += 1
            elif c in " \t" or (newline_ok and c in "\r\n"):
                pos += 1
            else:
                break
        return pos

    def symbol_id(self, name: str) -> int:
        if name not in self.ids:
            self.ids[name] = len(self.ids)
        return self.ids[name]

    def generate_symbol(self, base: str) -> int:
        n = len(self.ids)
        while f"{base}_{n}" in self.ids:
            n += 1
        return self.symbol_id(f"{base}_{n}")

    def name(self, pos: int) -> Tuple[str, int]:
        end = pos
        while end < len(self.src) and _is_word(self.src[end]):
            end += 1
        if end == pos:
            raise self.error(pos, "expecting a rule name")
        return self.src[pos:end], end

    def int_(self, pos: int) -> Tuple[int, int]:
        end = pos
        while end < len(self.src) and self.src[end].isascii() and self.src[end].isdigit():
            end += 1
        if end == pos:
            raise self.error(pos, "expecting an integer")
        digits = self.src[pos:end].lstrip("0") or "0"
        return (int(digits) if len(digits) <= 18 else 10 ** 18), end   # any limit is below

    def char(self, pos: int) -> Tuple[int, int]:
        """One possibly escaped character at pos -> (code point, next pos)."""
        c = self.peek(pos)
        if c == "":
            raise self.error(pos, "unexpected end of input")
        if c != "\\":
            return ord(c), pos + 1
        e = self.peek(pos + 1)
        if e in _ESCAPES:
            return ord(_ESCAPES[e]), pos + 2
        if e in _HEX_DIGITS:
            digits = self.src[pos + 2:pos + 2 + _HEX_DIGITS[e]]
            if len(digits) != _HEX_DIGITS[e] or any(d not in "0123456789abcdefABCDEF"
                                                    for d in digits):
                raise self.error(pos, f"expecting {_HEX_DIGITS[e]} hex digits after \\{e}")
            cp = int(digits, 16)
            if cp > MAX_CODE_POINT:
                raise self.error(pos, f"code point U+{cp:X} is beyond U+10FFFF")
            return cp, pos + 2 + len(digits)
        raise self.error(pos, f"unknown escape \\{e}" if e else "unexpected end of input")

    # ---- grammar structure -----------------------------------------------------------------

    def parse(self) -> Grammar:
        self.prescan()
        pos = self.space(0, True)
        while pos < len(self.src):
            pos = self.rule(pos)
        if "root" not in self.ids or self.ids["root"] not in self.rules:
            raise ValueError("GBNF grammar has no 'root' rule (the start symbol)")
        for rid, at in self.first_use.items():
            if rid not in self.rules:
                name = next(n for n, i in self.ids.items() if i == rid)
                raise self.error(at, f"undefined rule '{name}'")
        names = [""] * len(self.ids)
        for n, i in self.ids.items():
            names[i] = n
        rules = [self.rules[i] for i in range(len(names))]
        size = grammar_size(rules)
        if size > self.limits.max_size:
            raise self.limits.error("max_size", f"GBNF grammar expands to {size} entries")
        return Grammar(names=names, rules=rules, root=self.ids["root"], notes=self.notes)

    def rule(self, pos: int) -> int:
        name, pos = self.name(pos)
        pos = self.space(pos, False)
        if self.src[pos:pos + 3] != "::=":
            raise self.error(pos, "expecting ::=")
        pos = self.space(pos + 3, True)
        rid = self.symbol_id(name)
        pos = self.alternates(pos, name, rid, nested=False)
        if pos < len(self.src) and self.src[pos] not in "\r\n":
            raise self.error(pos, "expecting a newline or the end of the grammar")
        return self.space(pos, True)

    def alternates(self, pos: int, rule_name: str, rid: int, nested: bool) -> int:
        alts: List[List[Element]] = []
        seq, pos = self.sequence(pos, rule_name, nested)
        alts.append(seq)
        while True:
            if self.peek(pos) != "|" and not nested:
                ahead = self.space(pos, True)          # a continuation line starting with |
                if self.peek(ahead) == "|":
                    pos = ahead
            if self.peek(pos) != "|":
                break
            seq, pos = self.sequence(self.space(pos + 1, True), rule_name, nested)
            alts.append(seq)
        self.rules[rid] = alts
        return pos

    def sequence(self, pos: int, rule_name: str, nested: bool) -> Tuple[List[Element], int]:
        out: List[Element] = []
        last_start: Optional[int] = None      # where the last symbol's elements begin in out
        n_prev = 1      # rules the last symbol stands for, times its repetitions (llama.cpp's)
        while pos < len(self.src):
            c = self.src[pos]
            if c not in "*+?{":
                n_prev = 1
            if c == '"':
                last_start, pos = len(out), pos + 1
                while self.peek(pos) != '"':
                    if self.peek(pos) == "":
                        raise self.error(pos, "unterminated string literal")
                    cp, pos = self.char(pos)
                    out.append(("char", False, ((cp, cp),)))
                pos = self.space(pos + 1, nested)
            elif c == "[":
                last_start, pos = len(out), pos + 1
                negated = self.peek(pos) == "^"
                pos += negated
                ranges = []
                while self.peek(pos) != "]":
                    if self.peek(pos) == "":
                        raise self.error(pos, "unterminated character class")
                    lo, pos = self.char(pos)
                    hi = lo
                    if self.peek(pos) == "-" and self.peek(pos + 1) not in ("]", ""):
                        hi, pos = self.char(pos + 1)
                        if hi < lo:
                            raise self.error(pos, f"empty range U+{lo:X}-U+{hi:X} in class")
                    ranges.append((lo, hi))
                out.append(("char", negated, tuple(ranges)))
                pos = self.space(pos + 1, nested)
            elif c == ".":
                last_start = len(out)
                out.append(ANY_CHAR)
                pos = self.space(pos + 1, nested)
            elif c == "(":
                before = self.n_symbols()
                sub = self.generate_symbol(rule_name)
                pos = self.alternates(self.space(pos + 1, True), rule_name, sub, nested=True)
                if self.peek(pos) != ")":
                    raise self.error(pos, "expecting ')'")
                n_prev = max(1, self.n_symbols() - before)
                last_start = len(out)
                out.append(("ref", sub))
                pos = self.space(pos + 1, nested)
            elif _is_word(c):
                name, end = self.name(pos)
                rid = self.symbol_id(name)
                self.first_use.setdefault(rid, pos)
                last_start = len(out)
                out.append(("ref", rid))
                pos = self.space(end, nested)
            elif c in "*+?{":
                if last_start is None:
                    raise self.error(pos, f"'{c}' has no preceding symbol to repeat")
                at = pos
                lo, hi, pos = self.bounds(pos)
                lo, hi, n_prev = self.check_repetition(at, lo, hi, n_prev)
                out[last_start:] = self.repeat(out[last_start:], lo, hi, rule_name, at)
                pos = self.space(pos, nested)
            else:
                break
        return out, pos

    def prescan(self) -> None:
        """Refuse a grammar whose {m,n} repetitions alone would expand beyond max_size before
        parsing it: each costs what repeat() will count, whatever it repeats."""
        total, lim = 0, self.limits
        for m in _SCAN.finditer(self.src):
            if m.group(1) is None or len(m.group(1)) > 18:
                continue                    # a literal, class or comment; or a count refused
            lo, hi = int(m.group(1)), m.group(3)
            if m.group(2) is None:          # {m}
                hi = lo
            elif not hi or len(hi) > 18 or int(hi) > lim.max_repetitions:
                hi = None                   # {m,}, or made so
            else:
                hi = int(hi)
            if lo <= lim.max_repetitions:
                total += lo + 4 * (1 if hi is None else max(hi - lo, 0))
            if total > lim.max_size:
                raise lim.error("max_size", (
                    f"GBNF grammar at {self.where(m.start())}: its repetitions expand to more "
                    f"than {lim.max_size} entries"))

    def bounds(self, pos: int) -> Tuple[int, Optional[int], int]:
        """A repetition operator at pos -> (min, max or None for unbounded, next pos)."""
        c = self.src[pos]
        if c != "{":
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[c] + (pos + 1,)
        lo, pos = self.int_(self.space(pos + 1, False))
        pos = self.space(pos, False)
        hi: Optional[int] = lo
        if self.peek(pos) == ",":
            pos = self.space(pos + 1, False)
            hi = None
            if self.peek(pos) != "}":
                hi, pos = self.int_(pos)
                pos = self.space(pos, False)
                if hi < lo:
                    raise self.error(pos, f"repetition {{{lo},{hi}}} has max < min")
        if self.peek(pos) != "}":
            raise self.error(pos, "expecting '}'")
        return lo, hi, pos + 1

    def check_repetition(self, at: int, lo: int, hi: Optional[int],
                         n_prev: int) -> Tuple[int, Optional[int], int]:
        """llama.cpp's rule (src/llama-grammar.cpp, MAX_REPETITION_THRESHOLD) with our limit:
        a minimum above it is refused, a maximum above it becomes unbounded, and the rules
        the repeated symbol stands for times the repetitions may not exceed it (so nested
        repetitions cannot multiply). -> (lo, hi, the symbol's new n_prev)."""
        limit, where = self.limits.max_repetitions, self.where(at)
        if lo > limit:
            raise self.limits.error("max_repetitions", (
                f"GBNF grammar at {where}: number of repetitions exceeds sane defaults, please "
                f"reduce the number of repetitions (at least {lo} repetitions)"))
        if hi is not None and hi > limit:
            self.notes.append(f"GBNF grammar at {where}: repetition {{{lo},{hi}}} is beyond "
                              f"max_repetitions={limit}, so it is unbounded ({{{lo},}}), as "
                              "llama.cpp makes it")
            hi = None
        total = hi if hi is not None and hi > 0 else lo if lo > 0 else 1
        if n_prev * total > limit:
            raise self.limits.error("max_repetitions", (
                f"GBNF grammar at {where}: number of rules that are going to be repeated "
                "multiplied by the new repetition exceeds sane defaults, please reduce the "
                f"number of repetitions or rule complexity ({n_prev} rules x {total} "
                "repetitions)"))
        return lo, hi, n_prev * total

    def repeat(self, sym: List[Element], lo: int, hi: Optional[int],
               rule_name: str, at: int) -> List[Element]:
        """The elements of `sym` repeated lo..hi times (hi None: unbounded). Its cost is
        checked against max_size before anything is made."""
        n_opt = 1 if hi is None else hi - lo
        cost = lo + 4 * n_opt + (len(sym) + 1 if len(sym) != 1 else 0)
        if self.expanded + cost > self.limits.max_size:
            raise self.limits.error("max_size", (
                f"GBNF grammar at {self.where(at)}: its repetitions expand to more than "
                f"{self.limits.max_size} entries"))
        self.expanded += cost
        if len(sym) != 1:            # a multi-character literal: make it one symbol
            rid = self.generate_symbol(rule_name)
            self.n_wrappers += 1     # llama.cpp repeats the characters themselves
            self.rules[rid] = [list(sym)]
            sym = [("ref", rid)]
        out = sym * lo
        if hi is None:               # rec ::= sym rec |
            rid = self.generate_symbol(rule_name)
            self.rules[rid] = [sym + [("ref", rid)], []]
            out.append(("ref", rid))
        elif hi > lo:                # opt_k ::= sym opt_(k-1) |, nested hi - lo deep
            tail: List[Element] = []
            for _ in range(hi - lo):
                rid = self.generate_symbol(rule_name)
                self.rules[rid] = [sym + tail, []]
                tail = [("ref", rid)]
            out += tail
        return out


def _nullable_rules(g: Grammar) -> List[bool]:
    """Which rules can match the empty string (linear worklist: an alternative becomes
    nullable when the last of its rule references does; characters never are)."""
    nullable = [False] * len(g.rules)
    pending: List[int] = []             # per alternative: rule references not yet nullable
    owner: List[int] = []               # per alternative: its rule
    users: List[List[int]] = [[] for _ in g.rules]   # rule -> alternatives (per reference)
    todo: List[int] = []
    for r, alts in enumerate(g.rules):
        for alt in alts:
            a = len(owner)
            owner.append(r)
            if any(e[0] == "char" for e in alt):
                pending.append(-1)
                continue
            pending.append(len(alt))
            for e in alt:
                users[e[1]].append(a)
            if not alt and not nullable[r]:
                nullable[r] = True
                todo.append(r)
    while todo:
        r = todo.pop()
        for a in users[r]:
            pending[a] -= 1
            if pending[a] == 0 and not nullable[owner[a]]:
                nullable[owner[a]] = True
                todo.append(owner[a])
    return nullable


def check_left_recursion(g: Grammar) -> None:
    """ValueError when a rule can reach itself without consuming a character (the matcher's
    stack expansion would not terminate)."""
    nullable = _nullable_rules(g)
    leftmost: List[set] = []
    for alts in g.rules:
        refs = set()
        for alt in alts:
            for e in alt:
                if e[0] != "ref":
                    break
                refs.add(e[1])
                if not nullable[e[1]]:
                    break
        leftmost.append(refs)
    state = [0] * len(g.rules)        # 0 unvisited, 1 on the DFS path, 2 done
    for start in range(len(g.rules)):
        if state[start]:
            continue
        path = [(start, iter(leftmost[start]))]
        state[start] = 1
        while path:
            r, it = path[-1]
            nxt = next(it, None)
            if nxt is None:
                state[r] = 2
                path.pop()
            elif state[nxt] == 1:
                raise ValueError("GBNF grammar is left-recursive (unsupported, as in llama.cpp): "
                                 f"rule '{g.names[nxt]}' can reach itself without consuming "
                                 "input")
            elif state[nxt] == 0:
                state[nxt] = 1
                path.append((nxt, iter(leftmost[nxt])))


def parse_gbnf(text: str, limits: GrammarLimits = DEFAULT_GRAMMAR_LIMITS) -> Grammar:
    """Parse and check a GBNF grammar (ValueError on syntax errors, undefined rules, a
    missing root, left recursion; GrammarLimitError beyond `limits`)."""
    if not isinstance(text, str):
        raise ValueError(f"a GBNF grammar is text, not {type(text).__name__}")
    try:
        g = _Parser(text, limits).parse()
    except RecursionError:
        raise ValueError("GBNF grammar nests parentheses too deeply") from None
    check_left_recursion(g)
    return g
