"""The one sandboxed Jinja2 environment: compile each template once, render with strict undefined variables.

Templates are operator data and may be hostile, so they run in `BoundedSandbox` (render/sandbox/): Jinja2's
immutable sandbox, with the known escapes refused at compile time and every render bounded in time and size.
A template missing for an operator is taken from the built-in set; an operator template that is refused or fails
at render time falls back to the built-in one, so a notice is never lost to a template mistake (the failure is
logged and `check` reports it with the template's line).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import jinja2

from broadcaster.errors import TemplateProblem
from broadcaster.render.sandbox import BoundedSandbox, RenderLimits
from broadcaster.resources import data_dir

log = logging.getLogger(__name__)

TEMPLATE_SUFFIX = ".j2"


def builtin_templates_dir() -> Path:
    return data_dir("templates")


def template_name(kind: str, language: str) -> str:
    return f"{kind}.{language}{TEMPLATE_SUFFIX}"


_BLANK_RUNS = re.compile(r"\n{3,}")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")


def tidy(text: str) -> str:
    """Template output as a post: no trailing spaces, at most one blank line in a row, no outer white space."""
    return _BLANK_RUNS.sub("\n\n", _TRAILING_SPACE.sub("\n", text)).strip()


def suffixed(value: object, suffix: str) -> str:
    """`value` ending with `suffix` once: ``火车站 | suffixed("站")`` is 火车站, ``人民广场 | suffixed("站")`` is
    人民广场站 (a station name may already carry the word a template would add)."""
    text = str(value)
    return text if not suffix or text.endswith(suffix) else text + suffix


def _environment(loader: jinja2.BaseLoader, limits: RenderLimits | None) -> BoundedSandbox:
    env = BoundedSandbox(
        loader=loader,
        limits=limits,
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # plain-text posts; payloads that need escaping are built in code
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
    )
    env.filters["suffixed"] = suffixed
    return env


class Renderer:
    """Renders `{kind}.{language}.j2` templates; operator templates override built-in ones by name."""

    def __init__(
        self, operator_dir: Path | None = None, builtin_dir: Path | None = None, *, limits: RenderLimits | None = None
    ) -> None:
        self.builtin_dir = builtin_dir or builtin_templates_dir()
        self.operator_dir = operator_dir
        builtin_loader = jinja2.FileSystemLoader(self.builtin_dir)
        loaders: list[jinja2.BaseLoader] = [builtin_loader]
        if operator_dir is not None:
            loaders.insert(0, jinja2.FileSystemLoader(operator_dir))
        self.env = _environment(jinja2.ChoiceLoader(loaders), limits)
        self.builtin_env = _environment(builtin_loader, limits)

    def _template(self, env: BoundedSandbox, name: str) -> jinja2.Template:
        try:
            return env.get_template(name)  # compiled once, then cached by the environment
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateProblem(exc.filename or name, exc.message or "syntax error", exc.lineno) from exc
        except jinja2.TemplateNotFound:
            raise TemplateProblem(name, "no such template (neither the operator's nor built-in)") from None
        except UnicodeDecodeError as exc:
            # Saved in another encoding (GBK, say): the file is the operator's to fix, and a notice falls back.
            raise TemplateProblem(name, f"not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
        except OSError as exc:
            raise TemplateProblem(name, f"cannot be read: {exc.strerror or exc}") from None
        except RecursionError:
            raise TemplateProblem(name, "nested too deeply to compile") from None

    def compile_all(self, languages: Sequence[str]) -> int:
        """Compile every template of every kind in `languages` now; returns how many compiled.

        A template is otherwise compiled at its first render, a few milliseconds each (sandbox checks included),
        and the first notice after a start or a takeover is often an emergency's. One that cannot compile is
        left to `render`, which logs it and falls back to the built-in template, and `check` reports it.
        """
        compiled = 0
        for kind in self.known_kinds():
            for language in languages:
                try:
                    self._template(self.env, template_name(kind, language))
                except TemplateProblem:
                    continue
                compiled += 1
        return compiled

    @staticmethod
    def _render(template: jinja2.Template, name: str, context: Mapping[str, object]) -> str:
        try:
            return tidy(template.render(context))
        except jinja2.TemplateError as exc:
            raise TemplateProblem(template.filename or name, str(exc), _error_line(exc, template.filename)) from exc
        except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError, MemoryError) as exc:
            raise TemplateProblem(
                template.filename or name, f"{type(exc).__name__}: {exc}", _error_line(exc, template.filename)
            ) from exc

    def render(self, kind: str, language: str, context: Mapping[str, object], *, builtin: str | None = None) -> str:
        """The post text for one notice in one language.

        `builtin` names the built-in template base to fall back to when `kind` has no built-in template of its
        own (a digest's configured `template` falls back to the built-in `digest`, which takes the same variables).

        Raises:
            TemplateProblem: when neither the operator's template nor the built-in one can render it.
        """
        name = template_name(kind, language)
        try:
            return self._render(self._template(self.env, name), name, context)
        except TemplateProblem as problem:
            if not (self.builtin_dir / name).is_file() and builtin is not None:
                name = template_name(builtin, language)
            elif self.operator_dir is None or not (self.operator_dir / name).is_file():
                raise
            log.error("%s; using the built-in template %s instead", problem, name)
        return self._render(self._template(self.builtin_env, name), name, context)

    def check(self, kind: str, language: str, context: Mapping[str, object]) -> str:
        """Render strictly, without the built-in fallback: what `broadcaster check` uses."""
        name = template_name(kind, language)
        return self._render(self._template(self.env, name), name, context)

    def known_kinds(self) -> Sequence[str]:
        names = {p.name for p in self.builtin_dir.glob(f"*{TEMPLATE_SUFFIX}")}
        if self.operator_dir is not None:
            names |= {p.name for p in self.operator_dir.glob(f"*{TEMPLATE_SUFFIX}")}
        return sorted({n.split(".", 1)[0] for n in names})


def _error_line(exc: BaseException, filename: str | None) -> int | None:
    """The template line an error points at: its own for syntax errors, else the innermost frame of the template
    in the traceback (Jinja rewrites tracebacks so that template frames carry template line numbers)."""
    lineno = getattr(exc, "lineno", None)
    if isinstance(lineno, int):
        return lineno
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if filename is not None and tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
