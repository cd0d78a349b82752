"""GBNF grammars (llama-cpp-python's `llama_grammar`): pyinfer's `LlamaGrammar`, parsed and
checked when made, and its JSON-schema converter.

    grammar = LlamaGrammar.from_json_schema(json.dumps(schema))
    llm("...", grammar=grammar)
"""
from pyinfer.grammar import (  # noqa: F401 (re-exported)
    JSON_GBNF,
    LLAMA_GRAMMAR_DEFAULT_ROOT,
    GrammarLimitError,
    GrammarLimits,
    LlamaGrammar,
    json_schema_to_gbnf,
)
from pyinfer.grammar.json_schema import SchemaConverter  # noqa: F401 (re-exported)

__all__ = ["JSON_GBNF", "LLAMA_GRAMMAR_DEFAULT_ROOT", "LlamaGrammar", "SchemaConverter",
           "json_schema_to_gbnf"]
