"""Which methods of built-in types a template may call, and the size checks on the string methods that could
build a huge result (padding, ``replace``, ``join``)."""

from __future__ import annotations

from typing import Any, Final

from markupsafe import Markup

from broadcaster.render.sandbox.limits import RenderLimits, TemplateLimitExceeded, check_join_size, check_replace

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


def allowed_methods(kind: type) -> frozenset[str] | None:
    """The methods allowed on `kind`: those of the nearest built-in type it derives from (a StrEnum is a str, an
    IntEnum an int), or None (no restriction) for other objects: Jinja's own, macros, namespaces."""
    try:
        return _ALLOWED_BY_TYPE[kind]
    except KeyError:
        found = next((_ALLOWED_METHODS[base] for base in kind.__mro__ if base in _ALLOWED_METHODS), None)
        _ALLOWED_BY_TYPE[kind] = found
        return found


def check_method(limits: RenderLimits, owner: Any, name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The arguments to call `owner.name` with, once checked (an iterable to join is taken into a list)."""
    if not isinstance(owner, str) or not args:
        return args
    limit = limits.max_text
    if name in _PADDING_METHODS:
        if isinstance(args[0], int) and args[0] > limit:
            raise TemplateLimitExceeded(f"refused: .{name}({args[0]:,}) would pass {limit:,} characters")
    elif name == "replace" and len(args) >= 2:
        check_replace(limits, owner, args[0], args[1], args[2] if len(args) > 2 else -1)
    elif name == "join":
        items = list(args[0]) if not isinstance(args[0], list | tuple) else args[0]
        check_join_size(limits, [x for x in items if isinstance(x, str)], owner, len(items))
        return (items, *args[1:])
    return args
