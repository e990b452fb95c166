"""The built-in filters that can pad, repeat or join beyond the limits, wrapped so that each checks its arguments
against the `RenderLimits` before it runs."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import jinja2
from jinja2.filters import make_attrgetter

from broadcaster.render.sandbox.limits import (
    RenderLimits,
    TemplateLimitExceeded,
    check_join_size,
    check_printf,
    check_replace,
)


def guard_filters(filters: dict[str, Callable[..., Any]], limits: RenderLimits) -> None:
    """Wrap, in `filters`, the built-in filters that can pad, repeat or join beyond `limits`."""

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
        check_replace(limits, str(s), old, new, count)

    def wordwrap(s: object, width: object = 79, break_long_words: object = True, wrapstring: object = None,
                 break_on_hyphens: object = True) -> None:
        at_most(len(str(s)) * (1 + len(str(wrapstring or "\n"))), limits.max_text, "wordwrap could make")

    def format_(value: object, *args: object, **kwargs: object) -> None:
        check_printf(limits, str(value))

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
        check_join_size(limits, texts, str(d), len(items))
        return original_join(eval_ctx, items, d)

    filters["join"] = functools.update_wrapper(join, original_join)
