"""The template sandbox: Jinja2's immutable sandbox, closed against the known escapes and bounded in time and size.

Templates are operator data. Two layers keep a hostile or careless one harmless:

- **An audit at compile time**, so ``broadcaster check`` refuses the template and names its line: attribute
  names starting with ``_`` or reaching Python internals (``__class__``, ``mro``, ``gi_frame``...),
  ``.format`` / ``.format_map`` (format fields read attributes: Jinja's CVE-2016-10745, CVE-2019-10906,
  CVE-2024-56326), the ``attr`` filter (CVE-2025-27516: it fetched ``format`` past the sandbox), attribute paths
  starting with ``_`` in filter arguments (``map(attribute="__class__")``), and calls of methods that modify data.
  The same template refused at compile time fails at render time too, and the engine falls back to the
  built-in template.
- **Limits at render time**, all cheap enough for every render (a normal post costs a few microseconds more):
  operators that can explode (``*``, ``**``, ``+``, ``%``) are checked before they run, as are ``range``, the
  filters that pad, repeat or join, and string methods that pad or replace; every string a template builds and
  its output are capped; every loop iteration and every call costs a step, and a render stops after
  `RenderLimits.max_steps` steps or `RenderLimits.max_seconds`, whichever comes first. A stopped render raises
  `TemplateLimitExceeded` (a `jinja2.exceptions.SecurityError`), which the engine turns into a `TemplateProblem`.

The limits are checked in the rendering thread itself: loops and calls are the only ways a Jinja template can
repeat work, and each one passes through `_tick`; C-level operations that could run long or allocate much
(big powers, repetition, padding) are refused before they start, because no timer can interrupt them.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Final

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.filters import make_attrgetter
from jinja2.runtime import Context, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

__all__ = [
    "BoundedSandbox",
    "RenderLimits",
    "TemplateLimitExceeded",
    "UnsafeTemplateError",
]


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """What one render of one template may do. The defaults leave a post template ample room: the longest
    platform post is a few thousand characters and a template loops over a handful of lines or stations."""

    #: Characters in any string a template builds, and in its output.
    max_text: int = 10_000
    #: Items in any list, tuple or dict a template builds.
    max_items: int = 10_000
    #: Items a ``range()`` may produce.
    max_range: int = 1_000
    #: Bits of any integer a template computes (about 3,000 decimal digits).
    max_int_bits: int = 10_000
    #: Loop iterations plus calls (macros, methods, ``caller()``) in one render.
    max_steps: int = 5_000
    #: Characters and items built in one render, all operations together.
    max_built: int = 1_000_000
    #: Wall-clock time of one render.
    max_seconds: float = 0.5


class TemplateLimitExceeded(SecurityError):
    """A render was stopped: it went past one of its `RenderLimits`."""


class UnsafeTemplateError(TemplateSyntaxError):
    """A template was refused at compile time because it uses a construct that can escape the sandbox."""


# ------------------------------------------------------------------------------------------------------------
# The audit


#: Attribute names that reach interpreter internals without a leading underscore (frames, code, globals).
INTERNAL_ATTRIBUTES: Final = frozenset({
    "mro", "func_code", "func_globals", "func_closure", "func_defaults", "func_dict",
    "f_back", "f_builtins", "f_code", "f_globals", "f_locals", "f_trace",
    "gi_code", "gi_frame", "gi_yieldfrom", "cr_await", "cr_code", "cr_frame", "cr_origin",
    "ag_await", "ag_code", "ag_frame", "tb_frame", "tb_next", "co_code", "im_class", "im_func", "im_self",
})
_FORMAT_ATTRIBUTES: Final = frozenset({"format", "format_map"})
#: Methods of list, dict, set and deque that change them; the immutable sandbox refuses them at run time.
MUTATING_METHODS: Final = frozenset({
    "append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse", "update", "setdefault", "popitem",
    "add", "discard", "difference_update", "intersection_update", "symmetric_difference_update",
    "appendleft", "extendleft", "popleft", "rotate",
})
#: Filters whose string arguments are attribute paths (``map(attribute="a.b")``, ``sort("name")``).
_ATTRIBUTE_PATH_FILTERS: Final = frozenset({
    "map", "selectattr", "rejectattr", "sort", "groupby", "unique", "min", "max", "sum", "join", "dictsort",
})


def attribute_problem(name: str) -> str | None:
    """Why a template may not read attribute `name`, or None when it may."""
    if name.startswith("_"):
        return f"attribute {name!r}: names starting with '_' are Python internals"
    if name in _FORMAT_ATTRIBUTES:
        return (f"'.{name}': format fields can read any attribute and escape the sandbox "
                "(CVE-2024-56326); join with '~' or use the 'format' filter")
    if name in INTERNAL_ATTRIBUTES:
        return f"attribute {name!r} reaches Python internals"
    return None


def audit(tree: nodes.Template) -> tuple[str, int] | None:
    """The first construct in `tree` that the sandbox refuses, as (reason, line), or None."""
    found: list[tuple[int, str]] = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Test, nodes.Call)):
        reason = _node_problem(node)
        if reason is not None:
            found.append((node.lineno, reason))
    if not found:
        return None
    line, reason = min(found)
    return reason, line


def _node_problem(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr):
        return attribute_problem(node.attr)
    if isinstance(node, nodes.Getitem):
        key = node.arg
        if isinstance(key, nodes.Const) and isinstance(key.value, str):
            return attribute_problem(key.value)
        return None
    if isinstance(node, nodes.Filter | nodes.Test):
        return _filter_problem(node)
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr) and node.node.attr in MUTATING_METHODS:
        return f"'.{node.node.attr}()' would modify data; templates only read their variables"
    return None


def _filter_problem(node: nodes.Filter | nodes.Test) -> str | None:
    if node.name.startswith("_"):
        return f"filter or test {node.name!r}: names starting with '_' are reserved"
    if node.name == "attr" and isinstance(node, nodes.Filter):
        return ("the 'attr' filter can fetch methods past the sandbox's checks (CVE-2025-27516); "
                "write 'value.name' instead")
    if node.name not in _ATTRIBUTE_PATH_FILTERS or not isinstance(node, nodes.Filter):
        return None
    args: list[nodes.Expr] = [*node.args, *(keyword.value for keyword in node.kwargs)]
    if node.name == "map" and node.args and isinstance(node.args[0], nodes.Const) and node.args[0].value == "attr":
        return "map('attr', ...) is the 'attr' filter (CVE-2025-27516); use map(attribute='name')"
    for arg in args:
        if isinstance(arg, nodes.Const) and isinstance(arg.value, str):
            for part in arg.value.split("."):
                reason = attribute_problem(part)
                if reason is not None and part.startswith("_"):
                    return f"{node.name!r} filter argument {arg.value!r}: {reason}"
    return None


#: Filters the rewritten templates call; templates themselves may not name filters starting with '_'.
_ITER_FILTER: Final = "_bounded_iter"
_CONCAT_FILTER: Final = "_bounded_concat"


class _Bounder(NodeTransformer):
    """Rewrites the tree so that every loop iteration costs a step and every '~' is size-checked.

    The helpers are filters rather than calls: the compiled template calls a filter directly, while a call goes
    through the sandbox's `call` (a few microseconds per loop instead of a fraction of one).
    """

    def visit_For(self, node: nodes.For, *args: Any, **kwargs: Any) -> nodes.Node:
        result = self.generic_visit(node, *args, **kwargs)
        assert isinstance(result, nodes.For)
        assert isinstance(result.iter, nodes.Expr)
        result.iter = _filter(_ITER_FILTER, result.iter, result.iter.lineno)
        return result

    def visit_Concat(self, node: nodes.Concat, *args: Any, **kwargs: Any) -> nodes.Node:
        result = self.generic_visit(node, *args, **kwargs)
        assert isinstance(result, nodes.Concat)
        return _filter(_CONCAT_FILTER, nodes.Tuple(list(result.nodes), "load"), result.lineno)


def _filter(name: str, value: nodes.Expr, lineno: int) -> nodes.Filter:
    node = nodes.Filter(value, name, [], [], None, None)
    node.set_lineno(lineno, override=False)
    return node


# ------------------------------------------------------------------------------------------------------------
# The per-render budget


class _Budget:
    __slots__ = ("built", "deadline", "limits", "steps")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.steps = limits.max_steps
        self.built = limits.max_built
        self.deadline = time.monotonic() + limits.max_seconds


class _Active(threading.local):
    budget: _Budget | None = None


_active = _Active()


def _tick() -> None:
    """One loop iteration or call: stop the render when it has used its steps or its time."""
    budget = _active.budget
    if budget is None:
        return
    budget.steps -= 1
    if budget.steps < 0:
        raise TemplateLimitExceeded(
            f"stopped after {budget.limits.max_steps:,} loop iterations and calls (a runaway loop or recursion?)"
        )
    if time.monotonic() > budget.deadline:
        raise TemplateLimitExceeded(f"stopped: rendering took longer than {budget.limits.max_seconds:g} s")


def _spend(amount: int) -> None:
    budget = _active.budget
    if budget is None:
        return
    budget.built -= amount
    if budget.built < 0:
        raise TemplateLimitExceeded(
            f"stopped: the template built more than {budget.limits.max_built:,} characters and items in one render"
        )


class BudgetedTemplate(jinja2.Template):
    """A template whose `render` runs under a fresh budget (nested renders share the outer one)."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        if _active.budget is not None:
            return super().render(*args, **kwargs)
        env = self.environment
        _active.budget = _Budget(env.limits if isinstance(env, BoundedSandbox) else RenderLimits())
        try:
            return super().render(*args, **kwargs)
        finally:
            _active.budget = None


# ------------------------------------------------------------------------------------------------------------
# Calls of built-in types' methods

_TEXT_METHODS: Final = frozenset({
    "capitalize", "casefold", "center", "count", "endswith", "find", "index", "isalnum", "isalpha", "isascii",
    "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric", "isprintable", "isspace", "istitle", "isupper",
    "join", "ljust", "lower", "lstrip", "partition", "removeprefix", "removesuffix", "replace", "rfind", "rindex",
    "rjust", "rpartition", "rsplit", "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title",
    "upper", "zfill",
})
#: The methods a template may call on values of built-in types; any other is refused at run time.
_ALLOWED_METHODS: Final[dict[type, frozenset[str]]] = {
    str: _TEXT_METHODS,
    Markup: _TEXT_METHODS | {"striptags", "unescape"},
    int: frozenset({"bit_length", "bit_count", "conjugate"}),
    bool: frozenset({"bit_length", "bit_count", "conjugate"}),
    float: frozenset({"is_integer", "conjugate"}),
    list: frozenset({"index", "count", "copy"}),
    tuple: frozenset({"index", "count"}),
    dict: frozenset({"get", "items", "keys", "values", "copy"}),
    set: frozenset({"union", "intersection", "difference", "symmetric_difference", "issubset", "issuperset",
                    "isdisjoint", "copy"}),
    frozenset: frozenset({"union", "intersection", "difference", "symmetric_difference", "issubset", "issuperset",
                          "isdisjoint", "copy"}),
}
_PADDING_METHODS: Final = frozenset({"center", "ljust", "rjust", "zfill"})


_ALLOWED_BY_TYPE: dict[type, frozenset[str] | None] = {}


def _allowed_methods(kind: type) -> frozenset[str] | None:
    """The methods allowed on `kind`: those of the nearest built-in type it derives from (a StrEnum is a str, an
    IntEnum an int), or None (no restriction) for other objects: Jinja's own, macros, namespaces."""
    try:
        return _ALLOWED_BY_TYPE[kind]
    except KeyError:
        found = next((_ALLOWED_METHODS[base] for base in kind.__mro__ if base in _ALLOWED_METHODS), None)
        _ALLOWED_BY_TYPE[kind] = found
        return found


#: One printf conversion: flags, width and precision are what can make it large.
_PRINTF: Final = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.DOTALL)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with the audit and the render limits described in the module docstring."""

    template_class = BudgetedTemplate
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, *args: Any, limits: RenderLimits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits or RenderLimits()
        self.globals["range"] = self.bounded_range
        self.globals.pop("lipsum", None)  # lipsum(n=10**6) writes a book
        self.filters.pop("attr", None)
        self._guard_filters()
        self.filters[_ITER_FILTER] = self.bounded_iter
        self.filters[_CONCAT_FILTER] = self.bounded_concat
        self.concat = self._bounded_output  # type: ignore[method-assign]

    # -- compile time ------------------------------------------------------------------------------------------

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        problem = audit(tree)
        if problem is not None:
            reason, line = problem
            raise UnsafeTemplateError(f"refused: {reason}", line, name, filename)
        bounded = _Bounder().visit(tree)
        assert isinstance(bounded, nodes.Template)
        bounded.set_environment(self)
        return bounded

    # -- attribute access and calls ----------------------------------------------------------------------------

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if attr in _FORMAT_ATTRIBUTES or attr in INTERNAL_ATTRIBUTES:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        owner = getattr(__obj, "__self__", None)
        allowed = _allowed_methods(type(owner)) if owner is not None else None
        if allowed is not None:
            name = getattr(__obj, "__name__", "")
            if name not in allowed:
                raise SecurityError(f"calling {type(owner).__name__}.{name}() is not allowed in templates")
            args = __self._check_method(owner, name, args)
        return __self._bounded(super().call(__context, __obj, *args, **kwargs), "a call")

    def _check_method(self, owner: Any, name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
        if not isinstance(owner, str) or not args:
            return args
        limit = self.limits.max_text
        if name in _PADDING_METHODS:
            if isinstance(args[0], int) and args[0] > limit:
                raise TemplateLimitExceeded(f"refused: .{name}({args[0]:,}) would pass {limit:,} characters")
        elif name == "replace" and len(args) >= 2:
            self._check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else -1)
        elif name == "join":
            items = list(args[0]) if not isinstance(args[0], list | tuple) else args[0]
            self._check_join_size([x for x in items if isinstance(x, str)], owner, len(items))
            return (items, *args[1:])
        return args

    def _check_replace(self, text: object, old: object, new: object, count: object) -> None:
        if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
            return
        times = len(text) + 1 if old == "" else text.count(old)
        if isinstance(count, int) and count >= 0:
            times = min(times, count)
        size = len(text) + times * (len(new) - len(old))
        if size > self.limits.max_text:
            raise TemplateLimitExceeded(f"refused: replace() would make {size:,} characters "
                                        f"(limit {self.limits.max_text:,})")

    def _check_join_size(self, texts: list[str], separator: str, count: int) -> None:
        if count > self.limits.max_items:
            raise TemplateLimitExceeded(f"refused: joining {count:,} items (limit {self.limits.max_items:,})")
        size = sum(map(len, texts)) + len(separator) * max(0, count - 1)
        if size > self.limits.max_text:
            raise TemplateLimitExceeded(f"refused: join would make {size:,} characters "
                                        f"(limit {self.limits.max_text:,})")

    # -- operators ---------------------------------------------------------------------------------------------

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            self._check_repeat(left, right)
        elif operator == "**":
            self._check_power(left, right)
        elif operator == "%" and isinstance(left, str):
            self.check_printf(left, right)
        return self._bounded(self.binop_table[operator](left, right), f"'{operator}'")

    def _check_repeat(self, left: Any, right: Any) -> None:
        for sequence, times in ((left, right), (right, left)):
            if isinstance(times, int) and isinstance(sequence, str | bytes | list | tuple):
                text = isinstance(sequence, str | bytes)
                limit = self.limits.max_text if text else self.limits.max_items
                size = len(sequence) * times
                if size > limit:
                    what = "characters" if text else "items"
                    raise TemplateLimitExceeded(f"refused: repeating {len(sequence):,} {what} {times:,} times "
                                                f"would make {size:,} (limit {limit:,})")

    def _check_power(self, base: Any, exponent: Any) -> None:
        if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
            bits = (abs(base).bit_length() - 1) * exponent
            if bits > self.limits.max_int_bits:
                raise TemplateLimitExceeded(f"refused: {base} ** {exponent} has more than {bits:,} bits "
                                            f"(limit {self.limits.max_int_bits:,})")

    def check_printf(self, template: str, values: Any) -> None:
        """Refuse printf formats whose width or precision could build a huge string (``'%999999999s'``)."""
        for match in _PRINTF.finditer(template):
            for number in match.group(1, 2):
                if number == "*":
                    raise TemplateLimitExceeded("refused: '*' widths in % formats")
                if number is not None and int(number) > self.limits.max_text:
                    raise TemplateLimitExceeded(f"refused: a % format width of {int(number):,} "
                                                f"(limit {self.limits.max_text:,})")

    def _bounded(self, value: Any, what: str) -> Any:
        """`value`, if it is within the size limits; counted against the render's budget."""
        if isinstance(value, str | bytes):
            size = len(value)
            if size > self.limits.max_text:
                raise TemplateLimitExceeded(f"refused: {what} made {size:,} characters "
                                            f"(limit {self.limits.max_text:,})")
            _spend(size)
        elif isinstance(value, list | tuple | dict | set | frozenset):
            size = len(value)
            if size > self.limits.max_items:
                raise TemplateLimitExceeded(f"refused: {what} made {size:,} items (limit {self.limits.max_items:,})")
            _spend(size)
        elif isinstance(value, int) and value.bit_length() > self.limits.max_int_bits:
            raise TemplateLimitExceeded(f"refused: {what} made a {value.bit_length():,}-bit number "
                                        f"(limit {self.limits.max_int_bits:,})")
        return value

    # -- helpers the rewritten templates call ------------------------------------------------------------------

    def bounded_range(self, *args: int) -> range:
        """``range()`` for templates: at most `RenderLimits.max_range` items."""
        numbers = range(*args)
        # len() overflows past sys.maxsize; the arithmetic does not.
        size = max(0, (numbers.stop - numbers.start + numbers.step - (1 if numbers.step > 0 else -1)) // numbers.step)
        if size > self.limits.max_range:
            raise TemplateLimitExceeded(f"refused: range() of {size:,} items (limit {self.limits.max_range:,})")
        return numbers

    def bounded_iter(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """Every for loop iterates through this: one step per item."""
        for item in iterable:
            _tick()
            yield item

    @jinja2.pass_eval_context
    def bounded_concat(self, eval_ctx: jinja2.nodes.EvalContext, parts: tuple[Any, ...]) -> str:
        """The '~' operator, size-checked."""
        text = markup_join(parts) if eval_ctx.autoescape else str_join(parts)
        bounded: str = self._bounded(text, "'~'")
        return bounded

    def _bounded_output(self, pieces: Iterable[str]) -> str:
        # Taken in chunks so that C does the looping; a chunk overshoots the limit by at most 64 pieces.
        limit = self.limits.max_text
        iterator = iter(pieces)
        out = list(islice(iterator, 64))
        size = sum(map(len, out))
        while size <= limit:
            chunk = list(islice(iterator, 64))
            if not chunk:
                return "".join(out)
            size += sum(map(len, chunk))
            out += chunk
        raise TemplateLimitExceeded(f"stopped: the output passed {limit:,} characters")

    # -- filters -----------------------------------------------------------------------------------------------

    def _guard_filters(self) -> None:
        """Wrap the built-in filters that can pad, repeat or join beyond the limits."""
        limits = self.limits
        filters = self.filters

        def guard(name: str, check: Callable[..., None]) -> None:
            original = filters[name]
            passes_arg = getattr(original, "jinja_pass_arg", None) is not None

            def guarded(*args: Any, **kwargs: Any) -> Any:
                check(*(args[1:] if passes_arg else args), **kwargs)
                return original(*args, **kwargs)

            filters[name] = functools.update_wrapper(guarded, original)

        def at_most(value: object, limit: int, what: str) -> None:
            if isinstance(value, int) and value > limit:
                raise TemplateLimitExceeded(f"refused: {what} {value:,} (limit {limit:,})")

        # The checks take the filters' own parameter names, so keyword arguments land where they would.
        def center(value: object, width: object = 80) -> None:
            at_most(width, limits.max_text, "center width")

        def indent(s: object, width: object = 4, first: object = False, blank: object = False) -> None:
            pad = width if isinstance(width, int) else len(str(width))
            text = str(s)
            at_most(len(text) + (text.count("\n") + 1) * pad, limits.max_text, "indent would make")

        def replace(s: object, old: object, new: object, count: object = None) -> None:
            self._check_replace(str(s), old, new, count)

        def wordwrap(s: object, width: object = 79, break_long_words: object = True, wrapstring: object = None,
                     break_on_hyphens: object = True) -> None:
            at_most(len(str(s)) * (1 + len(str(wrapstring or "\n"))), limits.max_text, "wordwrap could make")

        def format_(value: object, *args: object, **kwargs: object) -> None:
            self.check_printf(str(value), args or kwargs)

        def batch(value: object, linecount: object, fill_with: object = None) -> None:
            at_most(linecount, limits.max_items, "batch size")

        def slice_(value: object, slices: object, fill_with: object = None) -> None:
            at_most(slices, limits.max_items, "slice count")

        def tojson(value: object, indent: object = None) -> None:
            at_most(indent, 16, "tojson indent")

        def sum_(iterable: object, attribute: object = None, start: object = 0) -> None:
            if not isinstance(start, int | float):
                raise TemplateLimitExceeded("refused: sum() of sequences (quadratic); use join or a loop")

        for name, check in (("center", center), ("indent", indent), ("replace", replace), ("wordwrap", wordwrap),
                            ("format", format_), ("batch", batch), ("slice", slice_), ("tojson", tojson),
                            ("sum", sum_)):
            guard(name, check)
        original_join = filters["join"]

        @jinja2.pass_eval_context
        def join(eval_ctx: jinja2.nodes.EvalContext, value: Iterable[Any], d: str = "",
                 attribute: str | int | None = None) -> Any:
            items = list(value) if not isinstance(value, list | tuple) else value
            if attribute is not None:
                items = list(map(make_attrgetter(eval_ctx.environment, attribute), items))
            texts = [x if isinstance(x, str) else str(x) for x in items]
            self._check_join_size(texts, str(d), len(items))
            return original_join(eval_ctx, items, d)

        filters["join"] = functools.update_wrapper(join, original_join)

