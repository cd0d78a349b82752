"""Limits on what untrusted input may cost (docs/limits.md): grammar repetitions, the expanded
grammar size and the matcher's caches (pyinfer.grammar.limits), JSON-schema bounds, and the
time, output and work of a model's chat template (pyinfer.chat.ChatTemplateLimits).

Oracles: llama.cpp's repetition rule (src/llama-grammar.cpp, MAX_REPETITION_THRESHOLD = 2000,
restated in the cases below), regular languages checked by walking the automaton with strings
of known membership, an unlimited automaton for the cache restarts, and plain Jinja2 (its
immutable sandbox, without our guards) for templates that render identically. Each refusal
is timed: "fast" is under a second, where the unguarded cases take minutes or gigabytes.
"""
import json
import time

import jinja2
import jinja2.ext
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

import tiny_chat_model
from pyinfer import Llama
from pyinfer.chat import (ChatTemplateError, ChatTemplateLimits, Jinja2ChatFormatter,
                          response_format_grammar)
from pyinfer.grammar import (DEFAULT_GRAMMAR_LIMITS, GrammarLimitError, GrammarLimits,
                             JSON_GBNF, LlamaGrammar, json_schema_to_gbnf, parse_gbnf)
from pyinfer.grammar.gbnf import grammar_size
from pyinfer.grammar.matcher import REJECT, GrammarMatcher, VocabTrie

FAST = 1.0      # seconds: a refusal (or a bounded expansion) takes less


def timed(f, *args, **kwargs):
    t = time.perf_counter()
    try:
        return f(*args, **kwargs), time.perf_counter() - t
    except Exception as e:
        e.elapsed = time.perf_counter() - t
        raise


def refused(exc, f, *args, match=None, **kwargs):
    """f(*args) raises exc (matching `match`) in under FAST seconds; the exception."""
    with pytest.raises(exc, match=match) as info:
        timed(f, *args, **kwargs)
    assert info.value.elapsed < FAST, info.value.elapsed
    return info.value


def matches(g: LlamaGrammar, text: str) -> bool:
    a = g.automaton
    s = a.walk(a.start, text.encode())
    return s != REJECT and a.complete[s]


# ---- GBNF repetitions: llama.cpp's rule ------------------------------------------------------

MIN_MSG = "number of repetitions exceeds sane defaults"
PRODUCT_MSG = "number of rules that are going to be repeated multiplied by the new repetition"


@pytest.mark.parametrize("rep,longest", [
    ("{2000}", 2000),               # exactly the threshold: expanded
    ("{0,2000}", 2000),             # (llama.cpp accepts 2000 since its PR #28469)
    ("{1999,}", None),
    ("{0,2001}", None),             # a maximum beyond it: unbounded, as llama.cpp since #26613
    ("{5,100000000}", None),        # the case: no expansion, any length
])
def test_repetitions_at_and_beyond_the_threshold(rep, longest):
    g, dt = timed(LlamaGrammar.from_string, f'root ::= "a"{rep}', verbose=False)
    assert dt < FAST
    lo = int(rep[1:].split(",")[0].rstrip("}"))
    assert matches(g, "a" * lo) and (lo == 0 or not matches(g, "a" * (lo - 1)))
    if longest is None:
        assert matches(g, "a" * 5000)
        assert g._parsed.notes == [] or "unbounded" in g._parsed.notes[0]
    else:
        assert matches(g, "a" * longest) and not matches(g, "a" * (longest + 1))


@pytest.mark.parametrize("grammar,msg", [
    ('root ::= "a"{2001}', MIN_MSG),
    ('root ::= "a"{100000000}', MIN_MSG),
    ('root ::= "a"{100000000,}', MIN_MSG),
    ('root ::= [a-z]{2001,3000}', MIN_MSG),
    ('root ::= "a"{' + "9" * 5000 + '}', MIN_MSG),                 # no int() of 5000 digits
    ('root ::= (("a"{0,1000}){0,1000}){0,1000}', PRODUCT_MSG),    # the nesting
    ('root ::= ("a"{0,39} "b"){0,51}', PRODUCT_MSG),               # 40 rules x 51 > 2000
    ('root ::= "a"{0,100}{0,100}', PRODUCT_MSG),                   # chained: 100 x 100
    ('root ::= ("a"{0,1999} "b"{0,10})?', PRODUCT_MSG),            # 2010 rules x 1
])
def test_repetitions_refused_fast_with_the_limit_named(grammar, msg):
    err = refused(GrammarLimitError, LlamaGrammar.from_string, grammar, match=msg)
    assert isinstance(err, ValueError)
    assert "max_repetitions=2000" in str(err) and "GrammarLimits(max_repetitions=" in str(err)


def test_nested_repetition_just_under_the_product():
    g, dt = timed(LlamaGrammar.from_string, 'root ::= ("a"{0,39} "b"){0,50}')  # 40 x 50 = 2000
    assert dt < FAST
    run = "a" * 39 + "b"
    assert matches(g, run * 50) and matches(g, "") and matches(g, "ab" * 50)
    assert not matches(g, run * 51) and not matches(g, "a" * 40 + "b")


def test_repetition_limit_can_be_raised():
    with pytest.raises(GrammarLimitError):
        LlamaGrammar.from_string('root ::= "ab"{2500}')
    g = LlamaGrammar.from_string('root ::= "ab"{2500}', limits=GrammarLimits(max_repetitions=3000))
    assert matches(g, "ab" * 2500) and not matches(g, "ab" * 2499)
    g = LlamaGrammar.from_string('root ::= "a"{0,2500}', verbose=False,
                                 limits=GrammarLimits(max_repetitions=3000))
    assert matches(g, "a" * 2500) and not matches(g, "a" * 2501)      # bounded again


def test_unbounded_repetition_is_said_when_verbose(capsys):
    LlamaGrammar.from_string('root ::= "a"{0,5000}', verbose=True)
    assert "unbounded" in capsys.readouterr().err
    LlamaGrammar.from_string('root ::= "a"{0,5000}', verbose=False)
    assert capsys.readouterr().err == ""


# ---- the expanded size -------------------------------------------------------------------

def many_repetitions(n: int, count: int = 1999) -> str:
    return ("root ::= " + " ".join(f"x{i}" for i in range(n)) + "\n"
            + "".join(f"x{i} ::= [a-z]{{0,{count}}}\n" for i in range(n)))


@pytest.mark.parametrize("text", [
    many_repetitions(3, 300),
    # every form of repetition; counts inside literals, classes and comments are not ones
    'root ::= "a"{1500} "bc"{2,900} [x]{7,} "{0,1999}" [{0,1999}] x{3}   # {0,1999}\n'
    'x ::= ("y" | "z"){0,600}? "\\"{9}" "a"* "b"+ "c"?\n',
])
def test_size_limit_boundary(text):
    size = grammar_size(parse_gbnf(text).rules)
    assert size > 1800                   # each optional repetition is a rule of 2 alternatives
    assert grammar_size(parse_gbnf(text, GrammarLimits(max_size=size)).rules) == size
    with pytest.raises(GrammarLimitError, match=f"max_size={size - 1}"):
        parse_gbnf(text, GrammarLimits(max_size=size - 1))


def test_size_limit_default_refuses_many_repetitions_in_bounded_time():
    refused(GrammarLimitError, parse_gbnf, many_repetitions(200), match="max_size=500000")
    # a refusal comes before the repetition beyond the limit is expanded
    limits = GrammarLimits(max_size=10_000)
    refused(GrammarLimitError, parse_gbnf, 'root ::= x y\nx ::= "a"{0,1999}\n'
            'y ::= "b"{0,1999}\n', limits, match="line 3, column 10: its repetitions expand")
    g = LlamaGrammar.from_string(many_repetitions(60), limits=DEFAULT_GRAMMAR_LIMITS)
    assert matches(g, "ab" * 30)


def test_limits_are_checked():
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="positive integer"):
            GrammarLimits(max_size=bad)


# ---- JSON schema bounds -------------------------------------------------------------------

def schema_grammar(schema, **kw) -> LlamaGrammar:
    g, dt = timed(LlamaGrammar.from_json_schema, json.dumps(schema), verbose=False, **kw)
    assert dt < FAST
    return g


@pytest.mark.parametrize("lo", [0, 3])
def test_huge_max_length_is_unbounded(lo):
    g = schema_grammar({"type": "string", "minLength": lo, "maxLength": 10 ** 9})
    assert matches(g, json.dumps("x" * 3000)) and matches(g, json.dumps("x" * lo))
    assert lo == 0 or not matches(g, json.dumps("x" * (lo - 1)))


def test_huge_max_items_is_unbounded():
    g = schema_grammar({"type": "array", "items": {"type": "integer"}, "maxItems": 10 ** 7})
    assert matches(g, json.dumps(list(range(2500)))) and matches(g, "[]")


@pytest.mark.parametrize("schema,key", [
    ({"type": "string", "minLength": 10 ** 9}, "minLength"),
    ({"type": "array", "minItems": 10 ** 7}, "minItems"),
    ({"type": "string", "minLength": 2001}, "minLength"),
    ({"type": "array", "items": {"type": "null"}, "minItems": 2002}, "minItems"),
    ({"type": "object", "properties": {"a": {"type": "string", "minLength": 10 ** 9}}},
     "minLength"),
])
def test_huge_minimums_are_refused_fast(schema, key):
    err = refused(GrammarLimitError, LlamaGrammar.from_json_schema, json.dumps(schema),
                  match=key)
    assert "max_repetitions=2000" in str(err)


def test_bounds_just_under_the_limit():
    g = schema_grammar({"type": "string", "minLength": 2000, "maxLength": 2000})
    assert matches(g, json.dumps("é" * 2000))
    assert not matches(g, json.dumps("x" * 1999)) and not matches(g, json.dumps("x" * 2001))
    g = schema_grammar({"type": "array", "items": {"type": "null"}, "minItems": 2001})
    assert matches(g, json.dumps([None] * 2001)) and not matches(g, json.dumps([None] * 2000))
    g = schema_grammar({"type": "array", "items": {"type": "null"}, "maxItems": 2000})
    assert matches(g, json.dumps([None] * 2000)) and not matches(g, json.dumps([None] * 2001))
    assert matches(g, "[]")


def test_shared_string_bounds_expand_once():
    props = {f"p{i}": {"type": "string", "maxLength": 1999} for i in range(200)}
    g = schema_grammar({"type": "object", "properties": props})
    assert grammar_size(g._parsed.rules) < 20_000
    assert matches(g, json.dumps({"p0": "x" * 1999, "p199": ""}))
    assert not matches(g, json.dumps({"p0": "x" * 2000}))


@pytest.mark.parametrize("bad", [-1, "3", True, 1.5, float("inf")])
def test_bad_bounds_are_value_errors(bad):
    with pytest.raises(ValueError, match="non-negative integer"):
        json_schema_to_gbnf({"type": "string", "maxLength": bad})


def test_response_format_beyond_the_limit():
    schema = {"type": "string", "minLength": 10 ** 9}
    with pytest.raises(GrammarLimitError):
        response_format_grammar({"type": "json_schema", "json_schema": {"schema": schema}},
                                verbose=False)
    # json_object with a schema falls back to any JSON object, as llama-cpp-python does
    g = response_format_grammar({"type": "json_object", "schema": schema}, verbose=False)
    assert matches(g, '{"a": 1}')


# ---- the matcher's caches -----------------------------------------------------------------

def test_ambiguous_grammar_stops_at_max_stacks():
    # after n a's the parse stacks are the 2^n sequences of pending b / c
    g = LlamaGrammar.from_string('root ::= "a" root "b" | "a" root "c" | "d"')
    a = g.automaton
    assert a.walk(a.start, b"a" * 8 + b"d" + b"bc" * 4) != REJECT
    refused(GrammarLimitError, a.walk, a.start, b"a" * 40, match="max_stacks=10000")
    g = LlamaGrammar.from_string('root ::= "a" root "b" | "a" root "c" | "d"',
                                 limits=GrammarLimits(max_stacks=100))
    a = g.automaton
    assert a.walk(a.start, b"a" * 5) != REJECT        # 3 alternatives x 2^5 stacks
    with pytest.raises(GrammarLimitError, match="max_stacks=100"):
        a.walk(a.start, b"a" * 6)


DOCS = [{"a": [1, 2, {"x": [[[[3]]]], "y": "zz"}], "b": {"c": None, "d": [True, False]}},
        {"l": [{"k": "v" * 5}, [], {}, [[1.5e3], -2]]}, {"deep": [[[[[[[[{"e": 0}]]]]]]]]}]


def test_state_cache_restarts_and_matchers_carry_on():
    pieces = [bytes([i]) for i in range(256)] + [b'{"', b'": ', b'[1', b', ', b'"}', b'e"']
    vocab = VocabTrie(pieces, eog=[0])
    small = LlamaGrammar.from_string(JSON_GBNF, limits=GrammarLimits(max_states=40,
                                                                     max_cached_stacks=300))
    free = LlamaGrammar.from_string(JSON_GBNF)          # the oracle: never restarted
    a = small.automaton
    for doc in DOCS:
        m1, m2, ref = (GrammarMatcher(a, vocab), GrammarMatcher(a, vocab),
                       GrammarMatcher(free.automaton, vocab))
        for ch in json.dumps(doc):
            assert list(m1.allowed()) == list(ref.allowed())
            m1.accept(ord(ch))
            m2.accept(ord(ch))      # a second matcher on the same automaton
            ref.accept(ord(ch))
            assert len(a.states) <= 40 + 300 and a.n_cached_stacks <= 300 + 64 * 40
        assert m1.complete and m2.complete and m1.accepts(0)
    assert a.epoch > 3                  # it did restart, more than once


# ---- chat templates -----------------------------------------------------------------------

USER = [{"role": "user", "content": "hi"}]
QUICK = ChatTemplateLimits(max_seconds=0.5)


def render(template: str, limits: ChatTemplateLimits = QUICK, messages=USER, **kw) -> str:
    return Jinja2ChatFormatter(template, "</s>", "<s>", limits=limits)(messages=messages,
                                                                        **kw).prompt


BIG = "{% set big = 'x' * 1000000 %}"
RUNAWAY = {     # template -> the limit it runs into
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}":
        "max_seconds",
    "{% set r = range(100000)|list %}{% for a in r %}{% for b in r %}{% endfor %}{% endfor %}":
        "max_seconds",
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}":
        "max_seconds",
    "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}": "max_output_chars",
    "{{ 'x' * 1000000000 }}": "max_work_chars",
    "{{ ([1] * 1000000000)|length }}": "max_work_chars",
    "{{ 2 ** 1000000000 }}": "max_work_chars",
    "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s|length }}": "max_work_chars",
    "{% set ns = namespace(s=[1]) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
    "{% endfor %}{{ ns.s|length }}": "max_work_chars",
    "{{ 'x'|center(1000000000) }}": "max_work_chars",
    "{{ 'x'.ljust(1000000000) }}": "max_work_chars",
    "{{ ('\n' * 100000)|indent(100000) }}": "max_work_chars",
    BIG + "{{ range(100000)|map('string')|join(big) }}": "max_work_chars",
    BIG + "{{ big.join(range(100000)|map('string')) }}": "max_work_chars",
    BIG + "{{ big|replace('x', big) }}": "max_work_chars",
    BIG + "{{ big.replace('', big) }}": "max_work_chars",
    BIG + "{{ big.translate({120: big}) }}": "max_work_chars",
    "{{ ('\t' * 100000).expandtabs(100000) }}": "max_work_chars",
    "{{ '%1000000000d' % 1 }}": "max_work_chars",
    "{{ '%1000000000d'|format(1) }}": "max_work_chars",
    "{{ '{:>1000000000}'.format(1) }}": "max_work_chars",
    "{{ '{:>{}}'.format(1, 1000000000) }}": "max_work_chars",
    "{{ messages|tojson(indent=100000) }}": "tojson indent",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}": "recursed too deeply",
}


@pytest.mark.parametrize("template", list(RUNAWAY))
def test_runaway_templates_stop_with_the_limit_named(template):
    t = time.perf_counter()
    with pytest.raises(ChatTemplateError, match=RUNAWAY[template]) as info:
        render(template)
    assert time.perf_counter() - t < QUICK.max_seconds + FAST
    assert isinstance(info.value, ValueError)


def test_lipsum_is_not_offered():
    with pytest.raises(jinja2.UndefinedError):
        render("{{ lipsum(1000000) }}")


def test_limits_just_under_and_over():
    assert len(render("{{ 'x' * 1000 }}", ChatTemplateLimits(max_output_chars=1000))) == 1000
    with pytest.raises(ChatTemplateError, match="max_output_chars=999"):
        render("{{ 'x' * 1000 }}", ChatTemplateLimits(max_output_chars=999))
    # 1000 built by `*`, then 1000 more as output
    assert render("{{ 'x' * 1000 }}", ChatTemplateLimits(max_work_chars=2000))
    with pytest.raises(ChatTemplateError, match="max_work_chars=1999"):
        render("{{ 'x' * 1000 }}", ChatTemplateLimits(max_work_chars=1999))
    # a long loop that does little is fine within the time
    assert render("{% for i in range(100000) %}{% endfor %}{{ range(100000)|list|length }}",
                  ChatTemplateLimits(max_seconds=5.0)) == "100000"


ORDINARY = [    # templates in the styles models ship, each rendered with and without guards
    tiny_chat_model.CHAT_TEMPLATE,
    "{% set ns = namespace(sys='') %}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% set ns.sys = ns.sys ~ m['content'] %}{% endif %}{% endfor %}"
    "{% if ns.sys %}<<SYS>>{{ ns.sys | trim }}<</SYS>>\n{% endif %}"
    "{% for m in messages if m.role != 'system' %}{{ loop.index }}/{{ loop.length }} "
    "[{{ m.role | upper }}] {{ m.content | replace('\n', ' ') }}{% if not loop.last %}\n"
    "{% endif %}{% else %}none{% endfor %}{{ '\n<|assistant|>' if add_generation_prompt }}",
    "{% macro fmt(m) %}{{ '%-9s|%s' % (m.role, m.content) }}{% endmacro %}"
    "{% for m in messages %}{{ fmt(m) }}{{ loop.cycle(';', '.') }}{% endfor %}"
    "{% if tools %}{{ tools | tojson(indent=2) }}{% endif %}"
    "{{ '{:>6}|{}'.format(messages | length, bos_token + eos_token) }}",
    "{% for m in messages %}{{ (m.content.split() | map('title') | join('-')).center(30, '*') }}"
    "{{ m.content | indent(2, first=True) | wordwrap(8) }}{% endfor %}"
    "{% for i in range(3) %}{{ ([i] * 2) | join(',') }}{% endfor %}",
    "{% for item in tree recursive %}({{ item.name }}{{ loop(item.kids) if item.kids }})"
    "{% endfor %}",
]
MESSAGES = [{"role": "system", "content": "Be brief.\nAlways."},
            {"role": "user", "content": "what is a good name for a cat"},
            {"role": "assistant", "content": "Tom."}, {"role": "user", "content": "é 😀 ok"}]


@pytest.mark.parametrize("template", ORDINARY)
def test_ordinary_templates_render_as_plain_jinja(template):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False,
                                                              indent=indent)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"a": [1, 2]}}}]
    tree = [{"name": "a", "kids": [{"name": "b", "kids": []}, {"name": "c"}]}]
    ctx = dict(messages=MESSAGES, tools=tools, tree=tree, add_generation_prompt=True)
    want = env.from_string(template).render(eos_token="</s>", bos_token="<s>", **ctx)
    del ctx["add_generation_prompt"]        # the formatter's own (True)
    got = Jinja2ChatFormatter(template, "</s>", "<s>")(**ctx).prompt
    assert got == want and len(got) > 5


@pytest.fixture
def runaway_model(tmp_path, monkeypatch):
    """A tiny GGUF whose chat template loops 10^10 times without output."""
    monkeypatch.setattr(tiny_chat_model, "CHAT_TEMPLATE", next(iter(RUNAWAY)))
    return str(tiny_chat_model.write_tiny_chat_model(tmp_path / "runaway.gguf"))


def test_runaway_gguf_template_through_create_chat_completion(runaway_model):
    llm = Llama(runaway_model, n_threads=2, verbose=False)
    try:
        assert llm.chat_format == "chat_template.default"
        limit = ChatTemplateLimits().max_seconds
        t = time.perf_counter()
        with pytest.raises(ChatTemplateError, match="max_seconds"):
            llm.create_chat_completion(USER, max_tokens=4)
        assert time.perf_counter() - t < limit + FAST
        with pytest.raises(ValueError, match="max_seconds"):   # and again, streaming
            next(iter(llm.create_chat_completion(USER, max_tokens=4, stream=True)))
    finally:
        llm.close()


def test_llama_takes_chat_template_limits(tmp_path):
    """Llama(chat_template_limits=...) bounds the model's own template: the tiny model's
    ordinary template fits the defaults, and fails a 10-character output bound."""
    from pyinfer import Llama
    from pyinfer.chat import ChatTemplateError, ChatTemplateLimits
    path = str(tiny_chat_model.write_tiny_chat_model(tmp_path / "m.gguf"))
    msgs = [{"role": "user", "content": "hello there"}]
    with Llama(path, n_ctx=64, verbose=False) as llm:
        assert llm.create_chat_completion(msgs, max_tokens=1)["object"] == "chat.completion"
    with Llama(path, n_ctx=64, verbose=False,
               chat_template_limits=ChatTemplateLimits(max_output_chars=10)) as llm:
        with pytest.raises(ChatTemplateError, match="max_output_chars"):
            llm.create_chat_completion(msgs, max_tokens=1)


def test_compiled_grammars_are_cached_per_limits(tmp_path):
    """The same GBNF text under tighter limits is compiled again, not served from the cache."""
    from pyinfer import Llama
    from pyinfer.grammar import GrammarLimits, LlamaGrammar
    path = str(tiny_chat_model.write_tiny_chat_model(tmp_path / "m.gguf"))
    text = 'root ::= "a" ("b" | "c")*'
    with Llama(path, n_ctx=64, verbose=False) as llm:
        loose = llm.grammar_matcher(LlamaGrammar.from_string(text, verbose=False))
        tight = llm.grammar_matcher(LlamaGrammar.from_string(text, verbose=False,
                                                              limits=GrammarLimits(max_states=1)))
        assert loose.automaton is not tight.automaton
        assert len(llm._grammar_automata) == 2
