"""The compile-time audit: the constructs a template may not use because they can escape the sandbox, found in
its syntax tree so that `broadcaster check` refuses the template and names its line.

Refused: attribute names starting with ``_`` or reaching Python internals (``__class__``, ``mro``,
``gi_frame``...), ``.format`` / ``.format_map`` (format fields read attributes: Jinja's CVE-2016-10745,
CVE-2019-10906, CVE-2024-56326), the ``attr`` filter (CVE-2025-27516: it fetched ``format`` past the sandbox),
attribute paths starting with ``_`` in filter arguments (``map(attribute="__class__")``), and calls of methods
that modify data.
"""

from __future__ import annotations

from typing import Final

from jinja2 import nodes
from jinja2.exceptions import TemplateSyntaxError


class UnsafeTemplateError(TemplateSyntaxError):
    """A template was refused at compile time because it uses a construct that can escape the sandbox."""


#: Attribute names that reach interpreter internals without a leading underscore (frames, code, globals).
INTERNAL_ATTRIBUTES: Final = frozenset({
    "mro", "func_code", "func_globals", "func_closure", "func_defaults", "func_dict",
    "f_back", "f_builtins", "f_code", "f_globals", "f_locals", "f_trace",
    "gi_code", "gi_frame", "gi_yieldfrom", "cr_await", "cr_code", "cr_frame", "cr_origin",
    "ag_await", "ag_code", "ag_frame", "tb_frame", "tb_next", "co_code", "im_class", "im_func", "im_self",
})
FORMAT_ATTRIBUTES: Final = frozenset({"format", "format_map"})
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
    if name in FORMAT_ATTRIBUTES:
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
