"""Grammar-constrained generation: llama-cpp-python's `LlamaGrammar` on a GBNF matcher.

    from pyinfer import Llama, LlamaGrammar
    g = LlamaGrammar.from_string('root ::= "yes" | "no"')
    llm("Is the sky blue? ", grammar=g, max_tokens=4)

gbnf.py parses GBNF, matcher.py matches bytes and tokens against it, json_schema.py turns a
JSON schema into GBNF. A grammar is parsed and checked when the LlamaGrammar is made (unlike
llama-cpp-python, which defers to the first sampler: a bad grammar raises ValueError here).
What a grammar may cost is bounded by `GrammarLimits` (limits.py: llama.cpp's repetition
limit, the expanded size, the matcher's caches); each constructor takes `limits=` to change
them, and a grammar beyond one raises GrammarLimitError (a ValueError).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .gbnf import Grammar, parse_gbnf
from .json_schema import json_schema_to_gbnf
from .limits import DEFAULT_GRAMMAR_LIMITS, GrammarLimitError, GrammarLimits
from .matcher import Automaton, GrammarMatcher, VocabTrie

LLAMA_GRAMMAR_DEFAULT_ROOT = "root"

# Any JSON object: the language of llama-cpp-python's JSON_GBNF (llama.cpp's json.gbnf, what
# response_format {"type": "json_object"} and a failed schema conversion constrain to), so
# that the same logits give the same text. Unlike the schema grammars it allows a newline
# and up to 20 indentation characters (spaces or tabs) after each token, a closing bracket
# included; its quirks are kept: no "\/" escape, an exponent's digits after the first
# are 1-9, integer parts up to 16 digits, fractions unbounded.
JSON_GBNF = r"""root ::= object
object ::= "{" ws members? "}" ws
members ::= member ("," ws member)*
member ::= string ":" ws value
array ::= "[" ws elements? "]" ws
elements ::= value ("," ws value)*
value ::= object | array | string | number | literal
literal ::= ("true" | "false" | "null") ws
string ::= "\"" char* "\"" ws
char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4})
number ::= "-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws ::= | " " | "\n" [ \t]{0,20}
"""


class LlamaGrammar:
    """A parsed GBNF grammar (llama-cpp-python 0.3.x's class and constructors)."""

    def __init__(self, *args: Any, _grammar: str, limits: GrammarLimits = DEFAULT_GRAMMAR_LIMITS,
                 verbose: bool = False, **kwargs: Any):
        self._grammar = _grammar
        self._root = LLAMA_GRAMMAR_DEFAULT_ROOT
        self.limits = limits
        self._parsed: Grammar = parse_gbnf(_grammar, limits)
        self._automaton: Optional[Automaton] = None
        if verbose:         # what the parser changed (llama.cpp's unbounded repetitions)
            for note in self._parsed.notes:
                print(f"pyinfer: {note}", file=sys.stderr)

    @classmethod
    def from_string(cls, grammar: str, verbose: bool = True,
                    limits: GrammarLimits = DEFAULT_GRAMMAR_LIMITS) -> "LlamaGrammar":
        return cls(_grammar=grammar, limits=limits, verbose=verbose)

    @classmethod
    def from_file(cls, file: Union[str, Path], verbose: bool = True,
                  limits: GrammarLimits = DEFAULT_GRAMMAR_LIMITS) -> "LlamaGrammar":
        try:
            with open(file, encoding="utf-8") as f:
                grammar = f.read()
        except Exception as err:
            raise Exception(f"{cls.from_file.__name__}: error reading grammar file: {err}")
        if not grammar:
            raise ValueError(f"{cls.from_file.__name__}: error parsing grammar file: "
                             "params_grammer is empty")
        return cls.from_string(grammar, verbose=verbose, limits=limits)

    @classmethod
    def from_json_schema(cls, json_schema: Union[str, Dict[str, Any]], verbose: bool = True,
                         limits: GrammarLimits = DEFAULT_GRAMMAR_LIMITS) -> "LlamaGrammar":
        return cls.from_string(json_schema_to_gbnf(json_schema, limits), verbose=verbose,
                               limits=limits)

    @property
    def automaton(self) -> Automaton:
        """The compiled grammar with its state caches (shared by every generation using
        this grammar object)."""
        if self._automaton is None:
            self._automaton = Automaton(self._parsed, self.limits)
        return self._automaton

    def matcher(self, vocab: VocabTrie) -> GrammarMatcher:
        """A fresh position at the start of the grammar, for one generation."""
        return GrammarMatcher(self.automaton, vocab)

    def __repr__(self) -> str:
        return f"LlamaGrammar(rules={len(self._parsed.rules)})"


__all__ = ["Automaton", "DEFAULT_GRAMMAR_LIMITS", "GrammarLimitError", "GrammarLimits", "JSON_GBNF",
           "LLAMA_GRAMMAR_DEFAULT_ROOT", "GrammarMatcher", "LlamaGrammar", "VocabTrie",
           "json_schema_to_gbnf", "parse_gbnf"]
