"""What one render may do (`RenderLimits`), the per-render budget of steps, time and size, and the checks that
refuse an operation before it runs when its result would pass a limit.

The budget is kept per thread: the checks run in the rendering thread itself, and a render stops by raising
`TemplateLimitExceeded` from a step (`tick`) or from what it built (`spend`, `bounded`).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

from jinja2.exceptions import SecurityError


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


# ------------------------------------------------------------------------------------------------------------
# The per-render budget


class Budget:
    __slots__ = ("built", "deadline", "limits", "steps")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.steps = limits.max_steps
        self.built = limits.max_built
        self.deadline = time.monotonic() + limits.max_seconds


class _Active(threading.local):
    budget: Budget | None = None


#: The budget of the render running in this thread, if any.
active = _Active()


def tick() -> None:
    """One loop iteration or call: stop the render when it has used its steps or its time."""
    budget = active.budget
    if budget is None:
        return
    budget.steps -= 1
    if budget.steps < 0:
        raise TemplateLimitExceeded(
            f"stopped after {budget.limits.max_steps:,} loop iterations and calls (a runaway loop or recursion?)"
        )
    if time.monotonic() > budget.deadline:
        raise TemplateLimitExceeded(f"stopped: rendering took longer than {budget.limits.max_seconds:g} s")


def spend(amount: int) -> None:
    budget = active.budget
    if budget is None:
        return
    budget.built -= amount
    if budget.built < 0:
        raise TemplateLimitExceeded(
            f"stopped: the template built more than {budget.limits.max_built:,} characters and items in one render"
        )


# ------------------------------------------------------------------------------------------------------------
# Checks before an operation runs, and of what it built


#: One printf conversion: flags, width and precision are what can make it large.
_PRINTF: Final = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.DOTALL)


def bounded(limits: RenderLimits, value: Any, what: str) -> Any:
    """`value`, if it is within the size limits; counted against the render's budget."""
    if isinstance(value, str | bytes):
        size = len(value)
        if size > limits.max_text:
            raise TemplateLimitExceeded(f"refused: {what} made {size:,} characters "
                                        f"(limit {limits.max_text:,})")
        spend(size)
    elif isinstance(value, list | tuple | dict | set | frozenset):
        size = len(value)
        if size > limits.max_items:
            raise TemplateLimitExceeded(f"refused: {what} made {size:,} items (limit {limits.max_items:,})")
        spend(size)
    elif isinstance(value, int) and value.bit_length() > limits.max_int_bits:
        raise TemplateLimitExceeded(f"refused: {what} made a {value.bit_length():,}-bit number "
                                    f"(limit {limits.max_int_bits:,})")
    return value


def check_repeat(limits: RenderLimits, left: Any, right: Any) -> None:
    for sequence, times in ((left, right), (right, left)):
        if isinstance(times, int) and isinstance(sequence, str | bytes | list | tuple):
            text = isinstance(sequence, str | bytes)
            limit = limits.max_text if text else limits.max_items
            size = len(sequence) * times
            if size > limit:
                what = "characters" if text else "items"
                raise TemplateLimitExceeded(f"refused: repeating {len(sequence):,} {what} {times:,} times "
                                            f"would make {size:,} (limit {limit:,})")


def check_power(limits: RenderLimits, base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        bits = (abs(base).bit_length() - 1) * exponent
        if bits > limits.max_int_bits:
            raise TemplateLimitExceeded(f"refused: {base} ** {exponent} has more than {bits:,} bits "
                                        f"(limit {limits.max_int_bits:,})")


def check_printf(limits: RenderLimits, template: str) -> None:
    """Refuse printf formats whose width or precision could build a huge string (``'%999999999s'``)."""
    for match in _PRINTF.finditer(template):
        for number in match.group(1, 2):
            if number == "*":
                raise TemplateLimitExceeded("refused: '*' widths in % formats")
            if number is not None and int(number) > limits.max_text:
                raise TemplateLimitExceeded(f"refused: a % format width of {int(number):,} "
                                            f"(limit {limits.max_text:,})")


def check_replace(limits: RenderLimits, text: object, old: object, new: object, count: object) -> None:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return
    times = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    size = len(text) + times * (len(new) - len(old))
    if size > limits.max_text:
        raise TemplateLimitExceeded(f"refused: replace() would make {size:,} characters "
                                    f"(limit {limits.max_text:,})")


def check_join_size(limits: RenderLimits, texts: list[str], separator: str, count: int) -> None:
    if count > limits.max_items:
        raise TemplateLimitExceeded(f"refused: joining {count:,} items (limit {limits.max_items:,})")
    size = sum(map(len, texts)) + len(separator) * max(0, count - 1)
    if size > limits.max_text:
        raise TemplateLimitExceeded(f"refused: join would make {size:,} characters "
                                    f"(limit {limits.max_text:,})")
