"""Rendering a chat template (Jinja code from a model file) as Hugging Face and
llama-cpp-python render it, within bounds.

The environment is jinja2's immutable sandbox with trim_blocks/lstrip_blocks, the
``generation`` tag, loop controls, ``raise_exception``, ``tojson`` without ASCII escaping and
``strftime_now``. A template is code from the model file, so ``render_bounded`` also limits
its wall time, the size of its output and of everything it builds (``ChatTemplateLimits``;
beyond them ``ChatTemplateError``, a ValueError): every loop checks the deadline per item,
string-growing operators, filters and methods check the size they would build before
building it, and the output is streamed and counted.
"""
from __future__ import annotations

import contextvars
import functools
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Dict, List, Optional, Tuple

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg
from jinja2.visitor import NodeTransformer


class _GenerationTag(jinja2.ext.Extension):
    """Hugging Face's `{% generation %}...{% endgeneration %}` (marks assistant text for
    training masks): rendered as its body."""
    tags = {"generation"}

    def parse(self, parser):
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Optional[int] = None,
            separators: Optional[Tuple[str, str]] = None, sort_keys: bool = False) -> str:
    if len(indent if isinstance(indent, str) else " " * (indent or 0)) > _MAX_JSON_INDENT:
        raise ChatTemplateError(f"chat template: tojson indent above {_MAX_JSON_INDENT} "
                                "characters is refused (it multiplies the output)")
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _raise_exception(message: str):
    raise ValueError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


# ---- bounded rendering of a GGUF's template ----------------------------------------------

@dataclass(frozen=True)
class ChatTemplateLimits:
    """Bounds on rendering a chat template from a model file (the sandbox stops it reaching
    out; these stop it running away). max_seconds: wall-clock time of one rendering, checked
    at every loop iteration, call, filter, operator and piece of output. max_output_chars: the
    rendered prompt's length. max_work_chars: every string (and list slot) the template
    builds along the way, counted cumulatively, and checked before each operation that
    could build one beyond it ("x" * 10**9, joins, replaces, padding, concatenation)."""
    max_seconds: float = 2.0
    max_output_chars: int = 1_000_000
    max_work_chars: int = 32_000_000


DEFAULT_CHAT_TEMPLATE_LIMITS = ChatTemplateLimits()
_MAX_JSON_INDENT = 16


class ChatTemplateError(ValueError):
    """A chat template went beyond its ChatTemplateLimits (or recursed too deeply)."""


_BUDGET: "contextvars.ContextVar[Optional[_Budget]]" = contextvars.ContextVar("chat_budget",
                                                                            default=None)


class _Budget:
    """One rendering's deadline and work count."""

    def __init__(self, limits: ChatTemplateLimits):
        self.limits = limits
        self.deadline = time.monotonic() + limits.max_seconds
        self.work = 0

    def error(self, field: str, what: str) -> ChatTemplateError:
        return ChatTemplateError(
            f"chat template {what} (limit {field}={getattr(self.limits, field)}; to change "
            f"it pass limits=ChatTemplateLimits({field}=...) to Jinja2ChatFormatter)")

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise self.error("max_seconds", "ran out of time")

    def need(self, n: int) -> None:
        """Refuse to build n more characters beyond max_work_chars."""
        if self.work + n > self.limits.max_work_chars:
            raise self.error("max_work_chars", f"would build more than "
                             f"{self.limits.max_work_chars} characters")
        self.tick()

    def spend(self, value: Any) -> Any:
        if isinstance(value, (str, bytes, list, tuple)):
            self.need(len(value))
            self.work += len(value)
        else:
            self.tick()
        return value


def _size(x: Any) -> int:
    return len(x) if isinstance(x, (str, bytes, list, tuple)) else 0


def _format_widths(fmt: str, args: Tuple[Any, ...], percent: bool) -> int:
    """The widths and precisions in a %-format or str.format string (with `*` or nested
    fields: the integer arguments), which the formatted text may be padded to."""
    pattern = r"%(?:\([^)]*\))?[#0 +\-]*(\d+|\*)?(?:\.(\d+|\*))?" if percent \
        else r"\{[^{}]*:([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}"
    total, dynamic = 0, False
    for m in re.finditer(pattern, fmt):
        spec = "".join(g or "" for g in m.groups())
        total += sum(int(d[:12]) for d in re.findall(r"\d+", spec))
        dynamic |= "*" in spec or "{" in spec
    if dynamic:
        flat = args[0] if len(args) == 1 and isinstance(args[0], (tuple, dict)) else args
        values = flat.values() if isinstance(flat, dict) else flat
        total += sum(v for v in values if isinstance(v, int) and v > 0)
    return total


def _grown_size(name: str, value: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> int:
    """How long the result of string method or filter `name` on `value` may be, for those
    whose result can be much longer than their input; 0 for the others."""
    if not isinstance(value, (str, bytes)):
        return 0

    def arg(i: int, key: str, default: Any = None) -> Any:
        return args[i] if len(args) > i else kwargs.get(key, default)
    n = len(value)
    if name in ("center", "ljust", "rjust", "zfill"):
        width = arg(0, "width", 80)
        return max(n, width) if isinstance(width, int) else n
    if name == "indent":
        width = arg(0, "width", 4)
        return n + (value.count("\n") + 1) * (width if isinstance(width, int) else len(width))
    if name == "expandtabs":
        size = arg(0, "tabsize", 8)
        return n + value.count("\t") * size if isinstance(size, int) else n
    if name == "replace":
        old, new = _size(arg(0, "old", "")), _size(arg(1, "new", ""))
        return n + (n + 1 if old == 0 else n // old) * new
    if name == "wordwrap":
        wrap = arg(2, "wrapstring") or "\n"
        width = arg(0, "width", 79)
        return n + (n // max(width if isinstance(width, int) else 1, 1) + 1) * _size(wrap)
    if name == "translate" and isinstance(arg(0, "table"), dict):
        return n * max([_size(v) for v in arg(0, "table").values()] + [1])
    if name in ("format", "format_map"):
        return n + _format_widths(value, args, percent=False)
    return 0


def _bounded_filter(name: str, f: Callable) -> Callable:
    """A filter that counts what it builds (and checks what it will build first)."""
    skip = 1 if _PassArg.from_obj(f) is not None else 0

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        budget = _BUDGET.get()
        if budget is None or len(args) <= skip:
            return f(*args, **kwargs)
        value, rest = args[skip], args[skip + 1:]
        if name == "join":          # the joined items, then the separators between them
            items = list(value)
            sep = _size(rest[0] if rest else kwargs.get("d", ""))
            budget.need(sum(_size(x) for x in items) + sep * max(len(items) - 1, 0))
            args = args[:skip] + (items,) + rest
        elif name == "format" and isinstance(value, str):
            budget.need(len(value) + _format_widths(value, rest or (kwargs,), percent=True))
        else:
            budget.need(_grown_size(name, value, rest, kwargs))
        return budget.spend(f(*args, **kwargs))
    return wrapper


class _LoopGuard:
    """An iterable that checks the deadline at each item (what a template loops over)."""

    def __init__(self, inner: Any, budget: _Budget):
        self.inner, self.budget = inner, budget

    def __iter__(self):
        tick = self.budget.tick
        for x in self.inner:
            tick()
            yield x


class _SizedLoopGuard(_LoopGuard):
    def __len__(self) -> int:         # loop.length and loop.last without materializing
        return len(self.inner)


class _Guards(NodeTransformer):
    """Rewrites a parsed template so that every `for` loops over environment.loop_guard(...)
    and every `~` concatenation is environment.concat_guard([...]) (neither is reachable or
    replaceable from template code)."""

    def __init__(self, env: jinja2.Environment):
        self.env = env

    def call(self, name: str, arg: nodes.Expr, lineno: int) -> nodes.Call:
        node = nodes.Call(nodes.EnvironmentAttribute(name), [arg], [], None, None)
        return node.set_lineno(lineno).set_environment(self.env)

    def visit_For(self, node: nodes.For) -> nodes.For:
        node = self.generic_visit(node)
        node.iter = self.call("loop_guard", node.iter, node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Call:
        node = self.generic_visit(node)
        parts = nodes.List(node.nodes).set_lineno(node.lineno).set_environment(self.env)
        return self.call("concat_guard", parts, node.lineno)


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with the checks of the rendering's _Budget: at loop
    iterations and concatenations (rewritten by _Guards), calls, filters and the operators
    that build strings (+ * ** %). `lipsum` (text generation) is left out."""
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.globals.pop("lipsum", None)
        self.filters["tojson"] = _tojson
        self.filters = {k: _bounded_filter(k, f) for k, f in self.filters.items()}

    def compile_template(self, source: str, limits: ChatTemplateLimits) -> jinja2.Template:
        """The template with its guards; compiled within `limits` too, as Jinja evaluates
        filters of constants while compiling (one beyond the limits is left for rendering)."""
        token = _BUDGET.set(_Budget(limits))
        try:
            return self.from_string(_Guards(self).visit(self.parse(source)))
        finally:
            _BUDGET.reset(token)

    def loop_guard(self, iterable: Any) -> Any:
        budget = _BUDGET.get()
        if budget is None:
            return iterable
        return (_SizedLoopGuard if hasattr(iterable, "__len__") else _LoopGuard)(iterable, budget)

    def concat_guard(self, parts: List[Any]) -> str:
        parts = [str(p) for p in parts]
        budget = _BUDGET.get()
        if budget is not None:
            budget.need(sum(map(len, parts)))
        return budget.spend("".join(parts)) if budget is not None else "".join(parts)

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.need(self._binop_size(operator, left, right))
        result = super().call_binop(context, operator, left, right)
        return budget.spend(result) if budget is not None else result

    @staticmethod
    def _binop_size(op: str, a: Any, b: Any) -> int:
        """How much `a op b` would build, for the operators that can build a lot."""
        if op == "*" and isinstance(a, int) and not isinstance(b, int):
            a, b = b, a
        if op == "*" and isinstance(b, int) and isinstance(a, (str, bytes, list, tuple)):
            return len(a) * max(b, 0)
        if op in ("*", "**") and isinstance(a, int) and isinstance(b, int) and b > 0:
            bits = a.bit_length() + b.bit_length() if op == "*" else a.bit_length() * b
            return bits // 8
        if op == "+" and isinstance(a, (str, bytes, list, tuple)):
            return _size(a) + _size(b)
        if op == "%" and isinstance(a, str):
            return len(a) + _format_widths(a, (b,), percent=True)
        return 0

    def call(__self, __context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _BUDGET.get()
        if budget is None or getattr(__obj, "__func__", None) in _GUARDS:
            return super().call(__context, __obj, *args, **kwargs)
        target = getattr(__obj, "__wrapped__", __obj)        # the sandbox's str.format
        owner, name = getattr(target, "__self__", None), getattr(target, "__name__", "")
        if isinstance(owner, (str, bytes)) and name == "join" and args:
            args = (list(args[0]),) + args[1:]
            budget.need(sum(_size(x) for x in args[0]) + len(owner) * len(args[0]))
        else:
            budget.need(_grown_size(name, owner, args, kwargs))
        return budget.spend(super().call(__context, __obj, *args, **kwargs))


_GUARDS = (_BoundedEnvironment.loop_guard, _BoundedEnvironment.concat_guard)


def render_bounded(template: jinja2.Template, limits: ChatTemplateLimits, **context: Any) -> str:
    """Render a template made by _BoundedEnvironment.compile_template within `limits`,
    streaming its output to count it (ChatTemplateError beyond a limit)."""
    budget = _Budget(limits)
    token = _BUDGET.set(budget)
    try:
        out, n = [], 0
        for chunk in template.generate(**context):
            n += len(chunk)
            if n > limits.max_output_chars:
                raise budget.error("max_output_chars", f"output is longer than "
                                   f"{limits.max_output_chars} characters")
            budget.spend(chunk)
            out.append(chunk)
        return "".join(out)
    except RecursionError:
        raise ChatTemplateError("chat template recursed too deeply") from None
    finally:
        _BUDGET.reset(token)


def _template_env() -> _BoundedEnvironment:
    return _BoundedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                               extensions=[_GenerationTag, jinja2.ext.loopcontrols])
