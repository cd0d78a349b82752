"""What a grammar may cost: the limits checked while a grammar is parsed and while it is matched.

A GBNF grammar or JSON schema can come from a request, so its cost is bounded the way llama.cpp
bounds it, and further where pyinfer's matcher keeps more than llama.cpp does (state caches):

    max_repetitions   2000       llama.cpp's MAX_REPETITION_THRESHOLD (src/llama-grammar.cpp):
                                 x{m,n} with m above it is refused; with n above it the
                                 repetition becomes unbounded, x{m,} (as llama.cpp does since its
                                 PR #26613); and a repeated group may not expand to more than it
                                 in rules times repetitions, so nested repetitions
                                 (("a"{0,1000}){0,1000}) are refused before they expand.
    max_size          500_000    entries of the compiled grammar (a character class, a rule
                                 reference or the end of an alternative each): about 150 bytes
                                 and 1.5 us of parsing apiece, so 75 MB and under a second.
                                 The repetition counts are summed before parsing, so a grammar
                                 beyond it is refused in milliseconds.
    max_stacks        10_000     parse stacks one matcher state may hold (an ambiguous grammar
                                 such as `s ::= "a" s "b" | "a" s "c" |` doubles them per
                                 character): beyond it matching raises.
    max_states        10_000     states the automaton caches (each a 256-entry transition row,
                                 about 2 KB) ...
    max_cached_stacks 200_000    ... and parse stacks they hold in all (about 100 bytes each):
                                 beyond either the cache is emptied and refilled as matching
                                 goes on (positions of running generations are kept).

Each is a field of `GrammarLimits`; pass one to raise a limit for a grammar you trust:

    LlamaGrammar.from_string(text, limits=GrammarLimits(max_repetitions=10_000))

A grammar beyond a limit raises `GrammarLimitError` (a ValueError) naming the limit.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

# llama.cpp's MAX_REPETITION_THRESHOLD (src/llama-grammar.cpp).
MAX_REPETITION_THRESHOLD = 2000


class GrammarLimitError(ValueError):
    """A grammar (or JSON schema) beyond one of the GrammarLimits."""


@dataclass(frozen=True)
class GrammarLimits:
    """Bounds on a grammar's size and on its matcher's caches (see the module docstring)."""
    max_repetitions: int = MAX_REPETITION_THRESHOLD
    max_size: int = 500_000
    max_stacks: int = 10_000
    max_states: int = 10_000
    max_cached_stacks: int = 200_000

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GrammarLimits.{f.name} must be a positive integer, "
                                 f"not {value!r}")

    def error(self, name: str, what: str) -> GrammarLimitError:
        """A GrammarLimitError for limit `name`, saying how to raise it."""
        return GrammarLimitError(
            f"{what} (limit {name}={getattr(self, name)}; to allow more, pass "
            f"limits=GrammarLimits({name}=...) to LlamaGrammar.from_string / from_json_schema)")


DEFAULT_GRAMMAR_LIMITS = GrammarLimits()
