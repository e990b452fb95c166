"""The compile-time rewrite: every loop iteration costs a step and every '~' is size-checked, through two filters
the environment provides under reserved names (templates themselves may not name filters starting with '_')."""

from __future__ import annotations

from typing import Any, Final

from jinja2 import nodes
from jinja2.visitor import NodeTransformer

#: Filters the rewritten templates call; templates themselves may not name filters starting with '_'.
ITER_FILTER: Final = "_bounded_iter"
CONCAT_FILTER: Final = "_bounded_concat"


class Bounder(NodeTransformer):
    """Rewrites the tree so that every loop iteration costs a step and every '~' is size-checked.

    The helpers are filters rather than calls: the compiled template calls a filter directly, while a call goes
    through the sandbox's `call` (a few microseconds per loop instead of a fraction of one).
    """

    def visit_For(self, node: nodes.For, *args: Any, **kwargs: Any) -> nodes.Node:
        result = self.generic_visit(node, *args, **kwargs)
        assert isinstance(result, nodes.For)
        assert isinstance(result.iter, nodes.Expr)
        result.iter = _filter(ITER_FILTER, result.iter, result.iter.lineno)
        return result

    def visit_Concat(self, node: nodes.Concat, *args: Any, **kwargs: Any) -> nodes.Node:
        result = self.generic_visit(node, *args, **kwargs)
        assert isinstance(result, nodes.Concat)
        return _filter(CONCAT_FILTER, nodes.Tuple(list(result.nodes), "load"), result.lineno)


def _filter(name: str, value: nodes.Expr, lineno: int) -> nodes.Filter:
    node = nodes.Filter(value, name, [], [], None, None)
    node.set_lineno(lineno, override=False)
    return node
