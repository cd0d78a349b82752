"""JSON Schema -> GBNF, for `LlamaGrammar.from_json_schema` and chat's response_format.

Covered: type (object, array, string, number, integer, boolean, null, or a list of them),
properties with required (properties appear in the schema's order, optional ones may be left
out), additionalProperties (false or absent: none; true or a schema: extra "key": value pairs
after the listed ones), enum, const, anyOf / oneOf, allOf of object schemas (merged), $ref into
the document (#/$defs/..., #/definitions/..., recursion allowed), items / prefixItems,
minItems / maxItems, string minLength / maxLength. Other keywords (format, pattern, minimum,
...) are ignored, so the output is valid JSON of the right shape but unchecked there.

Whitespace follows llama-cpp-python's converter (its SPACE_RULE, llama.cpp's
json-schema-to-grammar): at most one space after each token (`space ::= " "?`), no newlines,
also after the closing bracket, so a document ends where its value ends ('{"n": 10} ' at most)
and the same logits give llama-cpp-python's text. Numbers have at most 16 digits in each of
their integer, fraction and exponent parts, as there. (Strings are stricter than its converter
in one way: a raw control character, which JSON does not allow in a string, is refused.)

Length and item bounds become GBNF repetitions {m,n} with the schema's numbers, as llama.cpp's
and llama-cpp-python's converters write them, so the parser's repetition limit applies
(limits.py, llama.cpp's MAX_REPETITION_THRESHOLD = 2000): a maximum beyond it is unbounded
(maxLength: 10**9 is any length), a minimum beyond it is refused here with GrammarLimitError.
Strings with the same bounds share one rule, so the repetition is expanded once.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional, Tuple, Union

from .limits import DEFAULT_GRAMMAR_LIMITS, GrammarLimits

# Shared rules (their names are reserved).
PRIMITIVES = {
    "space": '" "?',
    "char": '[^"\\\\\\x7F\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "string": '"\\"" char* "\\"" space',
    "integral-part": '"0" | [1-9] [0-9]{0,15}',
    "integer": '"-"? integral-part space',
    "number": '"-"? integral-part ("." [0-9]{1,16})? ([eE] [-+]? integral-part)? space',
    "boolean": '("true" | "false") space',
    "null": '"null" space',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" space (string ":" space value ("," space string ":" space value)*)? "}" space',
    "array": '"[" space (value ("," space value)*)? "]" space',
}
_DEPENDS = {"string": ["char", "space"], "integer": ["integral-part", "space"],
            "number": ["integral-part", "space"], "boolean": ["space"], "null": ["space"],
            "value": ["object", "array", "string", "number", "boolean", "null"],
            "object": ["space", "string", "value"], "array": ["space", "value"]}


def gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _json_literal(value: Any) -> str:
    return gbnf_literal(json.dumps(value, ensure_ascii=False))


class SchemaConverter:
    def __init__(self, root_schema: Any, limits: GrammarLimits = DEFAULT_GRAMMAR_LIMITS):
        self.root_schema = root_schema
        self.limits = limits
        self.rules: Dict[str, str] = {}
        self.refs: Dict[str, str] = {}

    def add_rule(self, name: str, body: str) -> str:
        """Add `name ::= body` under a free name (reusing an identical rule) and return it."""
        name = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-") or "rule"
        if name in PRIMITIVES and name != "root":
            name += "-"
        key, i = name, 1
        while key in self.rules and self.rules[key] != body:
            i += 1
            key = f"{name}{i}"
        self.rules[key] = body
        return key

    def primitive(self, name: str) -> str:
        if name not in self.rules:
            self.rules[name] = PRIMITIVES[name]
            for dep in _DEPENDS.get(name, ()):
                self.primitive(dep)
        return name

    def grammar(self) -> str:
        top = self.visit(self.root_schema, "root")
        if top != "root":
            self.rules["root"] = top
        lines = [f"root ::= {self.rules['root']}"]
        lines += [f"{k} ::= {v}" for k, v in self.rules.items() if k != "root"]
        return "\n".join(lines) + "\n"

    # ---- schemas -----------------------------------------------------------------------------

    def visit(self, schema: Any, name: str) -> str:
        """Add the rules for `schema`; return the name of the rule that matches it."""
        if schema is True or schema == {}:
            return self.add_rule(name, self.primitive("value")) if name == "root" \
                else self.primitive("value")
        if not isinstance(schema, dict):
            raise ValueError(f"unsupported JSON schema at {name!r}: {schema!r}")
        if "$ref" in schema:
            return self.ref(schema["$ref"], name)
        if "const" in schema:
            self.primitive("space")
            return self.add_rule(name, f"{_json_literal(schema['const'])} space")
        if "enum" in schema:
            if not schema["enum"]:
                raise ValueError(f"JSON schema at {name!r} has an empty enum")
            self.primitive("space")
            alts = " | ".join(_json_literal(v) for v in schema["enum"])
            return self.add_rule(name, f"({alts}) space")
        for key in ("anyOf", "oneOf"):
            if key in schema:
                alts = [self.visit(s, f"{name}-{i}") for i, s in enumerate(schema[key])]
                return self.add_rule(name, " | ".join(alts))
        if "allOf" in schema:
            return self.visit(self.merge_all_of(schema), name)
        t = schema.get("type")
        if isinstance(t, list):
            alts = [self.visit({**schema, "type": x}, f"{name}-{x}") for x in t]
            return self.add_rule(name, " | ".join(alts))
        if t is None:
            t = ("object" if "properties" in schema or "additionalProperties" in schema
                 else "array" if "items" in schema or "prefixItems" in schema else None)
        if t == "object":
            return self.object(schema, name)
        if t == "array":
            return self.array(schema, name)
        if t == "string":
            return self.string(schema, name)
        if t in ("number", "integer", "boolean", "null"):
            return self.add_rule(name, self.primitive(t))
        if t is None:
            return self.add_rule(name, self.primitive("value"))
        raise ValueError(f"unsupported JSON schema type {t!r} at {name!r}")

    def ref(self, ref: str, name: str) -> str:
        if ref in self.refs:
            return self.refs[ref]
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise ValueError(f"JSON schema $ref {ref!r}: only references inside the document "
                             "(#/...) are supported")
        target = self.root_schema
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise ValueError(f"JSON schema $ref {ref!r} does not resolve")
            target = target[part]
        rule = self.add_rule(ref.rsplit("/", 1)[-1] or "ref", f"<{ref}>")   # reserved: recursion
        self.refs[ref] = rule
        inner = self.visit(target, rule + "-def")
        self.rules[rule] = inner
        return rule

    def merge_all_of(self, schema: Dict[str, Any]) -> Dict[str, Any]:
        merged: Dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for sub in schema["allOf"]:
            while isinstance(sub, dict) and "$ref" in sub:
                sub = self._resolve(sub["$ref"])
            if not isinstance(sub, dict):
                raise ValueError("allOf entries must be schemas")
            merged.setdefault("properties", {}).update(sub.get("properties", {}))
            merged["required"] = list(merged.get("required", [])) + list(sub.get("required", []))
            for k, v in sub.items():
                if k not in ("properties", "required"):
                    merged.setdefault(k, v)
        return merged

    def _resolve(self, ref: str) -> Any:
        target = self.root_schema
        for part in [p for p in ref.lstrip("#").split("/") if p]:
            target = target[part]
        return target

    def other_key(self, keys: List[str], name: str) -> str:
        """A rule for a JSON string key that is none of `keys`, with the space after it."""
        inner = _not_keys_rules(self, keys, name + "-char")
        return self.add_rule(name, f'"\\"" {inner} "\\"" space')

    def bounds(self, schema: Dict[str, Any], name: str,
               keys: Tuple[str, str]) -> Tuple[int, Optional[int]]:
        """minLength/maxLength (or minItems/maxItems) as non-negative integers."""
        out: List[Optional[int]] = []
        for key in keys:
            v = schema.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not 0 <= v < float("inf") or v != int(v)):
                raise ValueError(f"JSON schema at {name!r}: {key} must be a non-negative "
                                 f"integer, not {v!r}")
            out.append(None if v is None else int(v))
        return out[0] or 0, out[1]

    def repetition(self, lo: int, hi: Optional[int], name: str, key: str) -> str:
        """GBNF {lo,hi} (hi None: {lo,}); a minimum beyond max_repetitions is refused here,
        as the parser would refuse it (a maximum beyond it the parser makes unbounded)."""
        if lo > self.limits.max_repetitions:
            raise self.limits.error("max_repetitions", (
                f"JSON schema at {name!r}: {key} needs {lo} repetitions of one item"))
        return f"{{{lo},}}" if hi is None else f"{{{lo},{hi}}}"

    def string(self, schema: Dict[str, Any], name: str) -> str:
        lo, hi = self.bounds(schema, name, ("minLength", "maxLength"))
        if lo == 0 and hi is None:
            return self.add_rule(name, self.primitive("string"))
        rep = self.repetition(lo, hi, name, "minLength")
        self.primitive("char")
        self.primitive("space")
        chars = self.add_rule(f"char-{lo}-{'' if hi is None else hi}", f"char{rep}")
        return self.add_rule(name, f'"\\"" {chars} "\\"" space')

    def array(self, schema: Dict[str, Any], name: str) -> str:
        self.primitive("space")
        if "prefixItems" in schema:
            items = [self.visit(s, f"{name}-{i}") for i, s in enumerate(schema["prefixItems"])]
            body = ' "," space '.join(items)
            return self.add_rule(name, f'"[" space {body} "]" space')
        item = self.visit(schema.get("items", True), f"{name}-item")
        lo, hi = self.bounds(schema, name, ("minItems", "maxItems"))
        if hi == 0:
            return self.add_rule(name, '"[" space "]" space')
        rep = self.repetition(max(lo - 1, 0), None if hi is None else hi - 1, name, "minItems")
        inner = f'{item} ("," space {item}){rep}'
        if lo == 0:         # a rule of its own: `?` on a group would count its expansion again
            inner = self.add_rule(f"{name}-items", inner) + "?"
        return self.add_rule(name, f'"[" space {inner} "]" space')

    def object(self, schema: Dict[str, Any], name: str) -> str:
        props: Dict[str, Any] = schema.get("properties", {}) or {}
        extra = schema.get("additionalProperties")
        if not props and (extra is None or extra is True):
            return self.add_rule(name, self.primitive("object"))
        self.primitive("space")
        required = set(schema.get("required", []))
        kvs = []
        for key, sub in props.items():
            value = self.visit(sub, f"{name}-{key}")
            kvs.append((f'{_json_literal(key)} space ":" space {value}', key in required))
        extra_kv = None
        if extra is not None and extra is not False:
            value = self.visit(extra, f"{name}-additional") if extra is not True \
                else self.primitive("value")
            key = self.other_key(list(props), f"{name}-additional-key") if props \
                else self.primitive("string")
            extra_kv = f'{key} ":" space {value}'
        memo: Dict[tuple, str] = {}

        def rest(i: int, comma: bool) -> str:
            """Grammar text for properties i.. given whether one was written before."""
            if (i, comma) in memo:
                return memo[(i, comma)]
            sep = '"," space ' if comma else ""
            if i == len(kvs):
                text = "" if extra_kv is None else f'("," space {extra_kv})*' if comma \
                    else f'({extra_kv} ("," space {extra_kv})*)?'
            else:
                kv, req = kvs[i]
                after = rest(i + 1, True)
                text = f"{sep}{kv} {after}".strip()
                if not req:
                    skip = rest(i + 1, comma)
                    text = f"({text} | {skip})"
            if len(text) > 40:
                text = self.add_rule(f"{name}-rest{i}{'c' if comma else ''}", text)
            memo[(i, comma)] = text
            return text

        return self.add_rule(name, f'"{{" space {rest(0, False)} "}}" space')


def _class_char(c: str) -> str:
    return c if c.isalnum() and c.isascii() else f"\\U{ord(c):08X}"


def _not_keys_rules(conv: "SchemaConverter", keys: List[str], name: str) -> str:
    """Rules for the JSON text between the quotes of any key except `keys` (each compared
    as json.dumps writes it): a trie of the keys where every node may leave the trie with
    another character (then anything follows) or end unless a key ends there."""
    trie: Dict[str, Any] = {}
    for k in keys:
        node = trie
        for c in json.dumps(k, ensure_ascii=False)[1:-1]:
            node = node.setdefault(c, {})
        node[""] = {}
    conv.primitive("char")
    counter = [0]

    def rule(node: Dict[str, Any]) -> str:
        counter[0] += 1
        rname = conv.add_rule(f"{name}-{counter[0]}", f"<{counter[0]}>")
        chars = [c for c in node if c]
        alts = [f"{gbnf_literal(c)} {rule(node[c])}" for c in chars]
        other = "".join(_class_char(c) for c in chars)
        escape = '"\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})'
        alts.append(f'([^"\\\\\\x7F\\x00-\\x1F{other}] | {escape}) char*')
        if "" not in node:      # may end here; first, as a trailing | would continue the line
            alts.insert(0, "")
        conv.rules[rname] = " | ".join(alts)
        return rname

    return rule(trie)


def json_schema_to_gbnf(schema: Union[str, Dict[str, Any], bool],
                        limits: GrammarLimits = DEFAULT_GRAMMAR_LIMITS) -> str:
    """GBNF text for a JSON schema (text or a parsed object); ValueError when it cannot
    (GrammarLimitError beyond `limits`)."""
    if isinstance(schema, (str, bytes)):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ValueError(f"JSON schema is not valid JSON: {e}") from None
    try:
        return SchemaConverter(schema, limits).grammar()
    except RecursionError:
        raise ValueError("JSON schema nests too deeply") from None
    except (KeyError, TypeError, AttributeError, IndexError) as e:    # a malformed schema
        raise ValueError(f"unsupported JSON schema ({type(e).__name__}: {e})") from None
