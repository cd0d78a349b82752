"""JSON schema -> GBNF (pyinfer.grammar.json_schema), with `jsonschema` as the oracle: for
each schema, candidate documents are accepted by the grammar iff jsonschema validates them
(written as json.dumps writes them), and random walks through the grammar always give
documents that json.loads and validate."""
import json
import random
import string

import jsonschema
import pytest

from pyinfer.grammar import JSON_GBNF, LlamaGrammar, json_schema_to_gbnf
from pyinfer.grammar.matcher import REJECT
from conftest import real_llama_cpp

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 8},
        "age": {"type": "integer"},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
        "kind": {"enum": ["a", "b", 3, None]},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
    "x-unknown-keyword": True,
}
TREE = {
    "$defs": {"node": {"type": "object",
                       "properties": {"v": {"type": "number"},
                                      "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                       "required": ["v"]}},
    "$ref": "#/$defs/node",
}
CASES = [
    (PERSON, [
        ({"name": "Ann", "age": 3}, True),
        ({"name": "Ann", "age": 3, "email": "x@y", "tags": ["t"], "kind": None}, True),
        ({"name": "Ann", "age": 3, "kind": 3}, True),
        ({"name": "Ann", "age": 3, "tags": ["a", "b"]}, True),
        ({"name": "Ann", "age": 3, "tags": []}, False),              # minItems
        ({"name": "Ann", "age": 3, "tags": ["a", "b", "c"]}, False),  # maxItems
        ({"name": "", "age": 3}, False),                              # minLength
        ({"name": "Annabelle", "age": 3}, False),                     # maxLength
        ({"name": "Ann"}, False),                                     # required
        ({"name": "Ann", "age": 3.5}, False),                         # integer
        ({"name": "Ann", "age": 3, "kind": "c"}, False),              # enum
        ({"name": "Ann", "age": 3, "other": 1}, False),               # additionalProperties
    ]),
    (TREE, [
        ({"v": 1.5}, True),
        ({"v": -2, "kids": [{"v": 0}, {"v": 1e5, "kids": []}]}, True),
        ({"v": 1, "kids": [{"kids": []}]}, False),
    ]),
    ({"anyOf": [{"type": "integer"}, {"type": "array", "items": {"type": "boolean"}}]}, [
        (3, True), ([True, False], True), ("x", False), ([1], False),
    ]),
    ({"oneOf": [{"const": "on"}, {"type": "null"}]}, [("on", True), (None, True), ("off", False)]),
    ({"type": ["string", "null"]}, [("é\n😀", True), (None, True), (1, False)]),
    ({"type": "object", "additionalProperties": {"type": "integer"}}, [
        ({}, True), ({"a": 1, "b": 2}, True), ({"a": "x"}, False),
    ]),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": True},
     [({"a": 1, "z": [1, {}]}, True), ({"z": None}, True), ({"a": "s"}, False)]),
    ({"type": "object"}, [({"a": [1, 2.5, "x", True, None, {}]}, True), ([], False)]),
    ({"allOf": [{"properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"properties": {"b": {"type": "boolean"}}}]}, [
        ({"a": 1}, True), ({"a": 1, "b": True}, True), ({"b": True}, False),
    ]),
    ({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]}, [
        ([1, "a"], True), (["a", 1], False),
    ]),
]


def doc_accepted(grammar: LlamaGrammar, text: str) -> bool:
    a = grammar.automaton
    s = a.walk(a.start, text.encode("utf-8"))
    return s != REJECT and a.complete[s]


@pytest.mark.parametrize("schema,docs", CASES)
def test_grammar_accepts_what_jsonschema_validates(schema, docs):
    """Written with one space or none after each token; never indented (the whitespace
    rule: at most one space, no newline)."""
    g = LlamaGrammar.from_json_schema(json.dumps(schema))
    validator = jsonschema.Draft202012Validator(schema)
    for doc, valid in docs:
        assert validator.is_valid(doc) == valid, doc        # the case itself is right
        for text in (json.dumps(doc, ensure_ascii=False), json.dumps(doc),
                     json.dumps(doc, separators=(",", ":")), json.dumps(doc) + " "):
            assert doc_accepted(g, text) == valid, text
        indented = json.dumps(doc, indent=2)
        if "\n" in indented:
            assert not doc_accepted(g, indented), indented


def test_schema_whitespace_is_llama_cpp_pythons_space_rule():
    """llama-cpp-python's converter allows one optional space after each token (its
    SPACE_RULE '" "?'), so a document ends at its closing bracket or one space after it;
    the old rule let a model add a newline and 20 tabs there."""
    g = LlamaGrammar.from_json_schema({"type": "object", "properties": {"n": {"type": "integer"}},
                                       "required": ["n"]})
    for text in ('{"n":10}', '{"n": 10} ', '{ "n" : 10 } '):
        assert doc_accepted(g, text), text
    for text in ('{"n":10}\n', '{"n":10}  ', '{"n":10}\t', '{\n"n":10}', '{"n":  10}',
                 '{"n":10}\n' + "\t" * 20):
        assert not doc_accepted(g, text), text
    assert 'space ::= " "?' in json_schema_to_gbnf({"type": "object"})


def random_document(grammar: LlamaGrammar, rnd: random.Random, max_len: int = 400):
    """Random characters the grammar allows, closing as soon as it can after max_len."""
    a = grammar.automaton
    alphabet = list('{}[],:" \n-.+\\é' + string.ascii_letters + string.digits)
    s, out = a.start, []
    while len(out) < 3 * max_len:
        if a.complete[s] and (len(out) > max_len or rnd.random() < 0.05):
            return "".join(out)
        nxt = [(c, a.walk(s, c.encode())) for c in alphabet]
        nxt = [(c, t) for c, t in nxt if t != REJECT]
        if not nxt:         # nothing may follow: a document iff complete here
            return "".join(out) if a.complete[s] else None
        if len(out) > max_len:      # prefer closing brackets and quotes to finish
            nxt = [x for x in nxt if x[0] in '}]"0'] or nxt
        c, s = rnd.choice(nxt)
        out.append(c)
    return None


@pytest.mark.parametrize("schema", [PERSON, TREE, {"type": "object"}])
def test_random_walks_are_valid_documents(schema):
    g = LlamaGrammar.from_json_schema(schema)
    rnd = random.Random(3)
    done = 0
    for _ in range(40):
        text = random_document(g, rnd, max_len=60)
        if text is None:
            continue
        jsonschema.validate(json.loads(text), schema)
        done += 1
    assert done >= 10


def test_json_gbnf_is_any_object():
    """JSON_GBNF (response_format json_object) keeps llama-cpp-python's JSON_GBNF language:
    a newline and up to 20 spaces or tabs after a token, its number and escape quirks."""
    g = LlamaGrammar.from_string(JSON_GBNF)
    assert doc_accepted(g, '{"a": [1, -0.5e+3, "\\u00e9\\n", true, false, null, {}]}')
    assert doc_accepted(g, json.dumps({"a": [1, {"b": None}]}, indent=2) + "\n" + "\t" * 20)
    assert doc_accepted(g, '{"a": 1.123456789012345678901, "b": 12e3}')
    for bad in ['[1]', '{"a": 01}', '{"a": "\n"}', "{'a': 1}", '{"a": 1,}',
                '{"a": 1}\n' + "\t" * 21, '{"a": 1}  ', '{"a": "\\/"}', '{"a": 1e10}',
                '{"a": 12345678901234567}']:
        assert not doc_accepted(g, bad), bad


def test_bad_schemas_raise_value_error():
    for schema in ['{"type": "object"', {"$ref": "#/$defs/missing"}, {"type": "tuple"},
                   {"enum": []}, {"$ref": "http://example.com/s.json"},
                   {"type": "object", "properties": [1]}, {"allOf": [{"$ref": "#/nope"}]},
                   {"type": "array", "minItems": "x"}]:
        with pytest.raises(ValueError):
            json_schema_to_gbnf(schema)


@pytest.mark.llama_cpp
def test_llama_cpp_python_grammars_parse_and_match():
    """llama-cpp-python's own GBNF (its JSON_GBNF and its schema converter's output) parses
    with our parser, and on compact documents of the schemas it converts the same way as we
    do, the grammar accepts exactly what jsonschema validates."""
    theirs = real_llama_cpp("llama_cpp.llama_grammar")
    g = LlamaGrammar.from_string(theirs.JSON_GBNF)
    assert doc_accepted(g, '{"a": [1, "x", {"b": null}]}') and not doc_accepted(g, "[1]")
    for schema, docs in CASES[:5]:
        if schema is TREE:      # its converter does not resolve recursive $refs
            continue
        g = LlamaGrammar.from_string(theirs.json_schema_to_gbnf(json.dumps(schema)))
        for doc, valid in docs:
            assert doc_accepted(g, json.dumps(doc, ensure_ascii=False)) == valid, doc
