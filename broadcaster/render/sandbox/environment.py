"""`BoundedSandbox`: Jinja2's immutable sandbox with the compile-time audit and rewrite, and the render-time
limits on calls, operators, loops and output (the package docstring describes both)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from itertools import islice
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment

from broadcaster.render.sandbox.audit import FORMAT_ATTRIBUTES, INTERNAL_ATTRIBUTES, UnsafeTemplateError, audit
from broadcaster.render.sandbox.filters import guard_filters
from broadcaster.render.sandbox.limits import (
    Budget,
    RenderLimits,
    TemplateLimitExceeded,
    active,
    bounded,
    check_power,
    check_printf,
    check_repeat,
    tick,
)
from broadcaster.render.sandbox.methods import allowed_methods, check_method
from broadcaster.render.sandbox.rewrite import CONCAT_FILTER, ITER_FILTER, Bounder


class BudgetedTemplate(jinja2.Template):
    """A template whose `render` runs under a fresh budget (nested renders share the outer one)."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        if active.budget is not None:
            return super().render(*args, **kwargs)
        env = self.environment
        active.budget = Budget(env.limits if isinstance(env, BoundedSandbox) else RenderLimits())
        try:
            return super().render(*args, **kwargs)
        finally:
            active.budget = None


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with the audit and the render limits described in the package docstring."""

    template_class = BudgetedTemplate
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, *args: Any, limits: RenderLimits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits or RenderLimits()
        self.globals["range"] = self.bounded_range
        self.globals.pop("lipsum", None)  # lipsum(n=10**6) writes a book
        self.filters.pop("attr", None)
        guard_filters(self.filters, self.limits)
        self.filters[ITER_FILTER] = self.bounded_iter
        self.filters[CONCAT_FILTER] = self.bounded_concat
        self.concat = self._bounded_output  # type: ignore[method-assign]

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A template's globals as one plain dict, not Jinja's ChainMap over the environment's: every render copies
        them into its context, and copying a ChainMap walks both maps in Python (~10 us a render, ~2 % of a steady
        tick's CPU). The environment's globals are all set in `__init__`, before any template loads (Jinja asks not
        to change them after that anyway)."""
        return {**self.globals, **(d or {})}

    # -- compile time ------------------------------------------------------------------------------------------

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        problem = audit(tree)
        if problem is not None:
            reason, line = problem
            raise UnsafeTemplateError(f"refused: {reason}", line, name, filename)
        rewritten = Bounder().visit(tree)
        assert isinstance(rewritten, nodes.Template)
        rewritten.set_environment(self)
        return rewritten

    # -- attribute access and calls ----------------------------------------------------------------------------

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if attr in FORMAT_ATTRIBUTES or attr in INTERNAL_ATTRIBUTES:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        tick()
        owner = getattr(__obj, "__self__", None)
        allowed = allowed_methods(type(owner)) if owner is not None else None
        if allowed is not None:
            name = getattr(__obj, "__name__", "")
            if name not in allowed:
                raise SecurityError(f"calling {type(owner).__name__}.{name}() is not allowed in templates")
            args = check_method(__self.limits, owner, name, args)
        return bounded(__self.limits, super().call(__context, __obj, *args, **kwargs), "a call")

    # -- operators ---------------------------------------------------------------------------------------------

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            check_repeat(self.limits, left, right)
        elif operator == "**":
            check_power(self.limits, left, right)
        elif operator == "%" and isinstance(left, str):
            check_printf(self.limits, left)
        return bounded(self.limits, self.binop_table[operator](left, right), f"'{operator}'")

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
            tick()
            yield item

    @jinja2.pass_eval_context
    def bounded_concat(self, eval_ctx: jinja2.nodes.EvalContext, parts: tuple[Any, ...]) -> str:
        """The '~' operator, size-checked."""
        text = markup_join(parts) if eval_ctx.autoescape else str_join(parts)
        checked: str = bounded(self.limits, text, "'~'")
        return checked

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
