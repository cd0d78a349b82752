"""GBNF parsing and matching (pyinfer.grammar) against hand-derived expectations and regexes.

The oracle for the matcher is Python's `re` / `regex` on grammars that are regular: a string
is a sentence of the grammar iff the equivalent regex fullmatches it, and (with `regex`'s
partial matching) a prefix of one iff the regex can still match after it. Strings are
random over a small alphabet plus random walks through the grammar (so that both answers
occur often).
"""
import random

import pytest
import regex

from pyinfer.grammar import LlamaGrammar, parse_gbnf
from pyinfer.grammar.matcher import REJECT, Automaton


def walk(grammar: str, text) -> int:
    a = LlamaGrammar.from_string(grammar).automaton
    data = text.encode("utf-8") if isinstance(text, str) else text
    return a, a.walk(a.start, data)


def accepts(grammar: str, text) -> bool:
    a, s = walk(grammar, text)
    return s != REJECT and a.complete[s]


def prefix_ok(grammar: str, text) -> bool:
    return walk(grammar, text)[1] != REJECT


# ---- syntax --------------------------------------------------------------------------------

@pytest.mark.parametrize("grammar,yes,no", [
    (r'root ::= "a\nb\t\r\\\"\x41\u00e9\U0001F600"', 'a\nb\t\r\\"Aé😀', 'a\\nb'),
    (r'root ::= "\[\]"', "[]", "\\[\\]"),
    ('root ::= [a-cx]', "b", "d"),
    ('root ::= [^a-c\\n]', "d", "\n"),
    ('root ::= [^a-c]', "é", "a"),
    ('root ::= [a-]', "-", "b"),                        # '-' before ']' is literal
    ('root ::= [\\]\\x5B]', "[", "a"),
    ('root ::= .', "\n", ""),
    ('root ::= . .', "é😀", "é"),
    ('root ::= ("ab" | "c")+', "abcab", "abca"),
    ('root ::= "ab"*', "abab", "aba"),                  # a literal repeats as a whole
    ('root ::= "ab"?', "", "abab"),
    ('root ::= "x"{3}', "xxx", "xxxx"),
    ('root ::= "x"{2,}', "xxxxx", "x"),
    ('root ::= "x"{1,3} "y"', "xxxy", "xxxxy"),
    ('root ::= "x"{0,2}', "", "xxx"),
    ('root ::= "x"{ 2 , 3 }', "xxx", "x"),
    ('root ::= ("a" [0-9]){2}', "a1a2", "a1"),
    ('root ::= "é"+ "ü"', "ééü", "eü"),
    ('root ::= [α-ω]{2}', "λμ", "ab"),
    ('root ::= "" "a"', "a", ""),
    ('root ::= a\na ::= "x" | ', "", "y"),
])
def test_syntax(grammar, yes, no):
    assert accepts(grammar, yes)
    assert not accepts(grammar, no)


def test_comments_and_multiline_rules():
    g = """
    # a comment line
    root ::= # comment after ::=
        item ("," item)*   # trailing comment
    item ::=
        "a"
      | "b"                 # a continuation line starting with |
      | (
          "c"
          "d"               # newlines are fine inside parentheses
        )
    """
    assert accepts(g, "a,b,cd")
    assert not accepts(g, "a,c")


def test_recursion():
    g = 'root ::= "(" root ")" root | '
    for s, ok in [("", True), ("()", True), ("(())()", True), ("(()", False), ("())", False)]:
        assert accepts(g, s) == ok, s
    nested = "(" * 60 + ")" * 60
    assert accepts(g, nested)


def test_rules_may_be_used_before_definition_and_names():
    g = 'root ::= my-rule_2\nmy-rule_2 ::= "z"'
    assert accepts(g, "z")


# ---- UTF-8: tokens are bytes ------------------------------------------------------------

def test_partial_utf8_is_kept_until_completed():
    g = 'root ::= "é" "x"'
    a, s = walk(g, b"\xc3")                 # the first byte of é
    assert s != REJECT and not a.complete[s]
    s = a.walk(s, b"\xa9x")
    assert a.complete[s]
    assert walk(g, b"\xc3\xa8")[1] == REJECT        # è is not é


def test_partial_utf8_prunes_impossible_characters():
    # [à-ÿ] is U+E0..U+FF: lead byte C3 (U+C0..U+FF) can complete to it, C2 (U+80..U+BF) not
    assert prefix_ok("root ::= [à-ÿ]", b"\xc3")
    assert not prefix_ok("root ::= [à-ÿ]", b"\xc2")
    assert not prefix_ok("root ::= [a-z]", b"\xc3")
    assert prefix_ok("root ::= [^a-z]", b"\xf0\x9f")         # the start of an emoji
    assert not prefix_ok("root ::= [^\\x80-\\U0010FFFF]", b"\xe2")
    assert not prefix_ok("root ::= .", b"\xc0")               # overlong 2-byte form
    assert not prefix_ok("root ::= .", b"\x80")               # stray continuation byte
    assert not prefix_ok("root ::= .", b"\xc3a")              # lead byte then ASCII
    assert not prefix_ok("root ::= .", b"\xff")


# ---- errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("grammar,message", [
    ('root ::= "abc', "unterminated string"),
    ('root ::= [abc', "unterminated character class"),
    ('root ::= "a" )', "expecting a newline"),
    ('root ::= ("a"', "expecting ')'"),
    ('root := "a"', "expecting ::="),
    ('root ::= "\\q"', "unknown escape"),
    ('root ::= "\\x4"', "hex digits"),
    ('root ::= "a"{3,1}', "max < min"),
    ('root ::= "a"{x}', "expecting an integer"),
    ('root ::= "a"{2', "expecting '}'"),
    ('root ::= * "a"', "no preceding symbol"),
    ('root ::= [z-a]', "empty range"),
    ('root ::= item', "undefined rule 'item'"),
    ('item ::= "a"', "no 'root' rule"),
    ('', "no 'root' rule"),
    ('root ::= root "a" | "b"', "left-recursive"),
    ('root ::= a\na ::= b "x"\nb ::= "y"? a', "left-recursive"),
    ('root ::= ("a"?)*', "left-recursive"),
    ('root ::= "a"\n  "b"', "expecting a rule name"),
])
def test_bad_grammars_raise_value_error(grammar, message):
    with pytest.raises(ValueError, match=regex.escape(message)):
        LlamaGrammar.from_string(grammar)


def test_long_rule_chains_are_quick():
    n = 5000
    g = "root ::= r0\n" + "".join(f"r{i} ::= r{i + 1}\n" for i in range(n)) + f'r{n} ::= "a" |'
    assert accepts(g, "a") and accepts(g, "")


def test_deep_nesting_is_a_value_error_not_a_crash():
    with pytest.raises(ValueError, match="too deeply"):
        LlamaGrammar.from_string("root ::= " + "(" * 5000 + '"a"' + ")" * 5000)
    assert accepts("root ::= " + "(" * 100 + '"a"' + ")" * 100, "a")


def test_error_reports_line_and_column():
    with pytest.raises(ValueError, match="line 2, column 11"):
        parse_gbnf('root ::= a\na ::= "x" ]')


def test_from_file(tmp_path):
    p = tmp_path / "g.gbnf"
    p.write_text('root ::= "ok"\n', encoding="utf-8")
    assert LlamaGrammar.from_file(p)._grammar == 'root ::= "ok"\n'
    p.write_text("")
    with pytest.raises(ValueError):
        LlamaGrammar.from_file(p)


# ---- the matcher against regexes ----------------------------------------------------------

REGULAR = [   # (GBNF, the same language as a regex, alphabet for random strings)
    ('root ::= [a-c]+ ("," [a-c]+)*', r"[a-c]+(,[a-c]+)*", "abc,d"),
    ('root ::= ("x" | "yz"){2,4} "!"?', r"(x|yz){2,4}!?", "xyz!"),
    ('root ::= "-"? ("0" | [1-9] [0-9]{0,3}) ("." [0-9]+)?', r"-?(0|[1-9][0-9]{0,3})(\.[0-9]+)?",
     "-0159."),
    ('root ::= "\\"" ([^"\\\\] | "\\\\" ["\\\\n])* "\\""', r'"([^"\\]|\\["\\n])*"', '"\\na'),
    ('root ::= word (" " word)*\nword ::= [a-zé]{1,3}', r"[a-zé]{1,3}( [a-zé]{1,3})*", "aé z"),
    ('root ::= ([^a] | "ab")* "a"', r"([^a]|ab)*a", "abc"),
    ('root ::= "é"? [^é]{2}', r"é?[^é]{2}", "éeü"),
]


def random_walk(a: Automaton, alphabet: str, rnd: random.Random, max_len: int = 12) -> str:
    """A string built by random characters the grammar allows at each step."""
    s, out = a.start, []
    for _ in range(rnd.randint(0, max_len)):
        nxt = [(c, a.walk(s, c.encode())) for c in alphabet]
        nxt = [(c, t) for c, t in nxt if t != REJECT]
        if not nxt:
            break
        c, s = rnd.choice(nxt)
        out.append(c)
    return "".join(out)


@pytest.mark.parametrize("grammar,pattern,alphabet", REGULAR)
def test_matcher_agrees_with_regex(grammar, pattern, alphabet):
    a = LlamaGrammar.from_string(grammar).automaton
    rx = regex.compile(pattern)
    rnd = random.Random(7)
    strings = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 8)))
               for _ in range(300)]
    strings += [random_walk(a, alphabet, rnd) for _ in range(300)]
    n_yes = 0
    for s in strings:
        st = a.walk(a.start, s.encode())
        full = st != REJECT and a.complete[st]
        assert full == bool(rx.fullmatch(s)), s
        assert (st != REJECT) == bool(rx.fullmatch(s, partial=True)), s
        n_yes += full
    assert 30 < n_yes < len(strings) - 30          # both answers were exercised
