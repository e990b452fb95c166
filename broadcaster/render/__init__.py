"""Rendering of notices into post text with operator-owned Jinja2 templates in a sandbox."""

from broadcaster.render.engine import Renderer, builtin_templates_dir

__all__ = ["Renderer", "builtin_templates_dir"]
