"""Hostile templates: Jinja's known sandbox escapes are refused when checked, runaway templates are stopped within
a second, and a notice is sent anyway (built-in template, else the plain fallback text)."""

from __future__ import annotations

import enum
import logging
import time
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
import pytest
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment, unsafe

from broadcaster.checking import sample_notices
from broadcaster.compose import Notice, NoticeKind
from broadcaster.config import load_config
from broadcaster.errors import TemplateProblem
from broadcaster.feeds.network import load_network
from broadcaster.messages import fallback_text, render_text
from broadcaster.render import Renderer, builtin_templates_dir
from broadcaster.render.engine import suffixed, tidy
from broadcaster.render.posts import DETAIL_LEVELS, FULL
from broadcaster.render.sandbox import BoundedSandbox, RenderLimits, TemplateLimitExceeded
from broadcaster.resources import data_dir

if TYPE_CHECKING:
    from collections.abc import Mapping

#: How long a hostile template may take to be refused or stopped, compile time included.
WITHIN_S = 1.0
#: Two harmless lines first, so the reported line number means something.
PREFIX = "{#- an operator's template -#}\n{{ header }}\n"
LINE = 3


@cache
def notices() -> list[Notice]:
    config = load_config(data_dir("config") / "example.toml")
    network = load_network(config.network.gtfs, config.network.default_language)
    return sample_notices(config, network, datetime(2026, 11, 25, 0, 15, tzinfo=UTC))


def alert_notice() -> Notice:
    return next(n for n in notices() if n.kind is NoticeKind.ALERT_NEW)


def context(detail: int = FULL, **extra: object) -> dict[str, object]:
    return {**alert_notice().contexts["en"], "detail": detail, **extra}


def operator_template(tmp_path: Path, body: str, name: str = "alert_new.en.j2") -> Path:
    folder = tmp_path / "templates"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(PREFIX + body + "\n", encoding="utf-8")
    return folder


class PrivateStuff:
    """Jinja's test_security.py fixture: one method marked unsafe."""

    def bar(self) -> int:
        return 23

    @unsafe
    def foo(self) -> int:
        return 42


# -- the known escapes: refused by `check`, with the template and the line ----------------------------------------

# Jinja's tests/test_security.py (the cases that still apply to Python 3) and the CVEs fixed in 3.1.5 and 3.1.6.
ESCAPES = {
    "private attribute (test_unsafe)": "{{ foo._foo() }}",
    "dunder attribute (test_unsafe)": "{{ foo.__class__ }}",
    "func_code (test_unsafe)": "{{ foo.func_code }}",
    "subclasses (test_unsafe)": "{{ foo.__class__.__subclasses__() }}",
    "list.append (test_immutable_environment)": "{{ [].append(23) }}",
    "dict.clear (test_immutable_environment)": "{{ {1:2}.clear() }}",
    "attr filter (test_attr_filter)": '{{ cls|attr("__subclasses__")() }}',
    "str.format (TestStringFormat)": '{{ "a{0.__class__}b".format(42) }}',
    "Markup.format (TestStringFormat)": '{{ ("a{0.__class__}b{1}"|safe).format(42, "<foo>") }}',
    "str.format_map (TestStringFormatMap)": '{{ "a{x.__class__}b".format_map({"x":42}) }}',
    "indirect str.format (CVE-2024-56326)": (
        '{% set ns = namespace(run="{0.__call__.__builtins__[__import__]}".format) %}{{ ns | run(not_here) }}'
    ),
    "attr('format') (CVE-2025-27516)": '{{ "{0.__call__.__builtins__[__import__]}" | attr("format")(not_here) }}',
    "subscript of a dunder": '{{ foo["__class__"] }}',
    "mro": "{{ foo.mro() }}",
    "generator frame": "{{ gen.gi_frame.f_globals }}",
    "map(attribute=dunder)": '{{ lines|map(attribute="__class__")|list }}',
    "map('attr')": '{{ lines|map("attr", "__class__")|list }}',
    "sort(attribute=path)": '{{ lines|sort(attribute="x.__class__")|list }}',
    "reserved filter name": "{{ lines|_bounded_iter|list }}",
}


@pytest.mark.parametrize("body", ESCAPES.values(), ids=ESCAPES.keys())
def test_check_refuses_the_known_escapes_naming_template_and_line(tmp_path: Path, body: str) -> None:
    renderer = Renderer(operator_template(tmp_path, body))
    with pytest.raises(TemplateProblem) as caught:
        renderer.check("alert_new", "en", context())
    problem = caught.value
    assert problem.template.endswith("alert_new.en.j2")
    assert problem.line == LINE
    assert "refused" in str(problem)
    assert f"alert_new.en.j2:{LINE}: refused" in str(problem)


def test_a_restricted_loop_target_is_a_syntax_error_with_its_line(tmp_path: Path) -> None:
    """test_restricted: Jinja's parser itself refuses assigning to an attribute in a for loop."""
    renderer = Renderer(operator_template(tmp_path, "{% for item.attribute in seq %}...{% endfor %}"))
    with pytest.raises(TemplateProblem) as caught:
        renderer.check("alert_new", "en", context())
    assert caught.value.line == LINE


@pytest.mark.parametrize("body", ESCAPES.values(), ids=ESCAPES.keys())
def test_a_refused_operator_template_falls_back_to_the_built_in_one(
    tmp_path: Path, body: str, caplog: pytest.LogCaptureFixture
) -> None:
    renderer = Renderer(operator_template(tmp_path, body))
    with caplog.at_level(logging.ERROR, logger="broadcaster.render.engine"):
        text = renderer.render("alert_new", "en", context())
    assert text == Renderer().render("alert_new", "en", context())
    assert "alert_new.en.j2:3: refused" in caplog.text


class _Unaudited(BoundedSandbox):
    """The sandbox with its compile-time audit switched off: what the runtime checks alone still stop."""

    def _parse(self, source: str, name: str | None, filename: str | None) -> jinja2.nodes.Template:
        return jinja2.Environment._parse(self, source, name, filename)


RUNTIME_ESCAPES = {key: value for key, value in ESCAPES.items() if "reserved" not in key and "map('attr')" not in key}


@pytest.mark.parametrize("body", RUNTIME_ESCAPES.values(), ids=RUNTIME_ESCAPES.keys())
def test_without_the_audit_the_runtime_sandbox_still_refuses(body: str) -> None:
    """Defence in depth: the same cases, compiled without the audit, fail when rendered (or, for the removed
    `attr` filter, when compiled) and leak nothing."""
    env = _Unaudited(undefined=jinja2.StrictUndefined)
    env.filters["run"] = lambda value, arg: value.run(arg)  # the CVE-2024-56326 test's filter

    def gen() -> object:
        yield 1

    try:
        out = env.from_string(body).render(foo=42, cls=int, gen=gen(), lines=[{"name": "1"}])
    except (SecurityError, jinja2.UndefinedError, jinja2.TemplateAssertionError):
        return
    # map(attribute="__class__") yields Jinja's Undefined for each item: printed, it reveals nothing.
    assert out == "[Undefined]"


def test_an_unsafe_method_is_refused_at_render_time_and_a_safe_one_runs() -> None:
    env = BoundedSandbox()
    with pytest.raises(SecurityError):
        env.from_string("{{ foo.foo() }}").render(foo=PrivateStuff())
    assert env.from_string("{{ foo.bar() }}").render(foo=PrivateStuff()) == "23"


def test_a_dynamic_dunder_name_is_refused_at_render_time(tmp_path: Path) -> None:
    renderer = Renderer(operator_template(tmp_path, '{{ header[("_" ~ "_class__")] }}'))
    with pytest.raises(TemplateProblem, match="unsafe"):
        renderer.check("alert_new", "en", context())


def test_the_installed_jinja_carries_the_sandbox_fixes() -> None:
    installed = tuple(int(part) for part in version("jinja2").split(".")[:3])
    assert installed >= (3, 1, 6)


# -- resource limits: stopped within a second --------------------------------------------------------------------

RUNAWAYS = {
    "repeat a string 10**8 times": "{{ 'x' * 10**8 }}",
    "a power with 10**8 bits": "{{ 2 ** (10 ** 8) }}",
    "a power of big numbers": "{{ (10 ** 5) ** (10 ** 5) }}",
    "range(10**9)": "{% for i in range(10**9) %}{{ i }}{% endfor %}",
    "range of a googol": "{{ range(10 ** 100)|list }}",
    "three nested loops, empty body": (
        "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}"
        "{% endfor %}{% endfor %}{% endfor %}"
    ),
    "nested loops over a long string": (
        "{% for a in 'x' * 5000 %}{% for b in 'x' * 5000 %}{% endfor %}{% endfor %}"
    ),
    "recursive macro": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "exponential macro": (
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}"
    ),
    "doubling with ~": (
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"
    ),
    "doubling with +": (
        "{% set ns = namespace(s=[1]) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}"
    ),
    "squaring a number": (
        "{% set ns = namespace(n=3) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}{{ ns.n }}"
    ),
    "output of 100,000 characters": "{% for i in range(1000) %}{{ 'x' * 100 }}{% endfor %}",
    "center filter": "{{ 'x'|center(10**9) }}",
    "indent filter": "{{ 'x'|indent(1000000000) }}",
    "format filter width": "{{ '%999999999s'|format(1) }}",
    "% width": "{{ '%999999999d' % 1 }}",
    "% star width": "{{ '%*d' % (999999999, 1) }}",
    "replace that grows": "{{ 'ab'.replace('', 'x' * 9000) }}",
    "replace filter that grows": "{{ ('ab' * 4000)|replace('a', 'x' * 9000) }}",
    "join that grows": "{{ range(1000)|join('x' * 5000) }}",
    "str.join that grows": "{{ ('x' * 5000).join(['a', 'b', 'c']) }}",
    "ljust": "{{ 'x'.ljust(10**9) }}",
    "zfill": "{{ '1'.zfill(10**9) }}",
    "expandtabs": "{{ 'a\tb'.expandtabs(10**9) }}",
    "int.to_bytes": "{{ (1).to_bytes(10**9, 'big') }}",
    "batch fill": "{{ range(10)|batch(10**9, 'x')|list }}",
    "slice count": "{{ range(10)|slice(10**9)|list }}",
    "sum of lists": "{{ ([[1] * 1000] * 1000)|sum(start=[])|length }}",
    "tojson indent": "{{ range(3)|tojson(indent=10**9) }}",
    "lipsum": "{{ lipsum(10**6) }}",
    "list repeat": "{{ (range(1000)|list) * 100000 }}",
}


@pytest.mark.parametrize("body", RUNAWAYS.values(), ids=RUNAWAYS.keys())
def test_runaway_templates_are_stopped_within_a_second(tmp_path: Path, body: str) -> None:
    renderer = Renderer(operator_template(tmp_path, body))
    started = time.perf_counter()
    with pytest.raises(TemplateProblem) as caught:
        renderer.check("alert_new", "en", context())
    elapsed = time.perf_counter() - started
    assert elapsed < WITHIN_S, f"took {elapsed:.2f} s"
    assert caught.value.template.endswith("alert_new.en.j2")


@pytest.mark.parametrize("body", RUNAWAYS.values(), ids=RUNAWAYS.keys())
def test_a_runaway_operator_template_still_sends_the_notice(tmp_path: Path, body: str) -> None:
    renderer = Renderer(operator_template(tmp_path, body))
    started = time.perf_counter()
    text = renderer.render("alert_new", "en", context())
    assert time.perf_counter() - started < WITHIN_S
    assert text == Renderer().render("alert_new", "en", context())


def test_the_limit_names_the_line_at_render_time(tmp_path: Path) -> None:
    renderer = Renderer(operator_template(tmp_path, "{{ 'x' * 10**8 }}"))
    with pytest.raises(TemplateProblem) as caught:
        renderer.check("alert_new", "en", context())
    assert caught.value.line == LINE
    assert "limit 10,000" in str(caught.value)


def test_the_deadline_stops_a_render_that_stays_under_the_step_limit() -> None:
    limits = RenderLimits(max_steps=10**9, max_seconds=0.05)
    env = BoundedSandbox(limits=limits)
    template = env.from_string(
        "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}"
        "{% endfor %}{% endfor %}{% endfor %}"
    )
    started = time.perf_counter()
    with pytest.raises(TemplateLimitExceeded, match=r"longer than 0\.05 s"):
        template.render()
    assert time.perf_counter() - started < 0.5


class Kind(enum.StrEnum):
    ALERT = "alert"


class Rank(enum.IntEnum):
    HIGH = 1


def test_subclasses_of_built_in_types_get_the_same_method_checks() -> None:
    env = BoundedSandbox()
    assert env.from_string("{{ kind.upper() }} {{ rank.bit_length() }}").render(kind=Kind.ALERT, rank=Rank.HIGH) == (
        "ALERT 1"
    )
    with pytest.raises(TemplateLimitExceeded):
        env.from_string("{{ kind.ljust(10**9) }}").render(kind=Kind.ALERT)
    with pytest.raises(SecurityError, match="not allowed"):
        env.from_string("{{ rank.to_bytes(10**9, 'big') }}").render(rank=Rank.HIGH)


def test_each_render_gets_a_fresh_budget() -> None:
    env = BoundedSandbox(limits=RenderLimits(max_steps=100))
    template = env.from_string("{% for i in range(60) %}.{% endfor %}")
    for _ in range(5):
        assert template.render() == "." * 60


# -- the notice goes out anyway ------------------------------------------------------------------------------------


def test_when_the_built_in_template_fails_too_the_plain_fallback_text_goes_out(tmp_path: Path) -> None:
    hostile = "{{ 'x' * 10**8 }}"
    operator = operator_template(tmp_path / "operator", hostile)
    builtin = operator_template(tmp_path / "builtin", hostile)
    renderer = Renderer(operator, builtin_dir=builtin)
    notice = alert_notice()
    started = time.perf_counter()
    text = render_text(renderer, notice, "en")
    assert time.perf_counter() - started < WITHIN_S
    assert text == fallback_text(notice, "en")
    assert str(notice.contexts["en"]["header"]) in text


def test_a_good_operator_template_is_used(tmp_path: Path) -> None:
    renderer = Renderer(operator_template(tmp_path, "{% for l in lines %}[{{ l }}]{% endfor %}"))
    notice = alert_notice()
    text = render_text(renderer, notice, "en")
    assert text.startswith(str(notice.contexts["en"]["header"]))
    assert "[" in text


# -- ordinary templates are unaffected ---------------------------------------------------------------------------

ORDINARY: Mapping[str, tuple[str, str]] = {
    "loop with loop.last": ("{% for x in items %}{{ x }}{{ ', ' if not loop.last }}{% endfor %}", "a, b, c"),
    "loop over a dict": ("{% for k, v in table|dictsort %}{{ k }}={{ v }};{% endfor %}", "x=1;y=2;"),
    "filtered loop with else": ("{% for x in items if x > 'z' %}{{ x }}{% else %}none{% endfor %}", "none"),
    "recursive loop": (
        "{% for n in tree recursive %}{{ n.name }}{% if n.kids %}({{ loop(n.kids) }}){% endif %}{% endfor %}",
        "a(bc)",
    ),
    "concatenation": ("{{ 'a' ~ 1 ~ items|length }}", "a13"),
    "arithmetic": ("{{ 2 ** 10 }} {{ 7 * 6 }} {{ 10 // 3 }} {{ 1 + 2 }} {{ 7 % 4 }}", "1024 42 3 3 3"),
    "printf": ("{{ '%s: %05.1f' % ('load', 92.25) }} {{ '%s-%s'|format('a', 'b') }}", "load: 092.2 a-b"),
    "repeat": ("{{ '=' * 5 }}{{ [0] * 2 }}", "=====[0, 0]"),
    "macro and caller": (
        "{% macro box(t) %}[{{ t }}{{ caller() }}]{% endmacro %}{% call box('x') %}y{% endcall %}", "[xy]"
    ),
    "namespace": ("{% set ns = namespace(n=0) %}{% for x in items %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
                  "3"),
    "set block": ("{% set b %}{{ items|join('/') }}{% endset %}{{ b|upper }}", "A/B/C"),
    "string methods": ("{{ 'Abc'.upper() }} {{ 'a,b'.split(',')|length }} {{ 'x'.center(5) }}|", "ABC 2   x  |"),
    "join with attribute": ("{{ tree|join(', ', attribute='name') }}", "a"),
    "replace and wordwrap": ("{{ 'a-b'|replace('-', ' to ') }} {{ 'aaa bbb'|wordwrap(3) }}", "a to b aaa\nbbb"),
    "range and sum": ("{{ range(5)|sum }} {{ range(1, 10, 3)|list }}", "10 [1, 4, 7]"),
    "batch and slice": ("{{ items|batch(2)|list|length }} {{ items|slice(2)|list|length }}", "2 2"),
    "dict get": ("{{ table.get('x') }} {{ table.items()|list|length }}", "1 2"),
    "tojson": ("{{ items|tojson }}", '["a", "b", "c"]'),
}


@pytest.mark.parametrize(("body", "expected"), ORDINARY.values(), ids=ORDINARY.keys())
def test_ordinary_templates_render_as_in_plain_jinja(body: str, expected: str) -> None:
    values = {"items": ["a", "b", "c"], "table": {"y": 2, "x": 1},
              "tree": [{"name": "a", "kids": [{"name": "b", "kids": []}, {"name": "c", "kids": []}]}]}
    plain = SandboxedEnvironment(undefined=jinja2.StrictUndefined).from_string(body).render(values)
    bounded = BoundedSandbox(undefined=jinja2.StrictUndefined).from_string(body).render(values)
    assert bounded == plain == expected


def test_every_built_in_template_renders_exactly_as_before() -> None:
    plain = SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(builtin_templates_dir()), undefined=jinja2.StrictUndefined,
        autoescape=False, trim_blocks=True, lstrip_blocks=True,
    )
    plain.filters["suffixed"] = suffixed  # broadcaster's own filter (templates never double a station's 站)
    renderer = Renderer()
    checked = 0
    for notice in notices():
        for language, values in notice.contexts.items():
            for detail in DETAIL_LEVELS:
                name = f"{notice.kind.value}.{language}.j2"
                expected = plain.get_template(name).render({**values, "detail": detail})
                got = renderer.render(notice.kind.value, language, {**values, "detail": detail})
                assert got == tidy(expected), name
                checked += 1
    assert checked >= 30


def test_a_normal_post_still_renders_in_microseconds() -> None:
    renderer = Renderer()
    values = context()
    renderer.render("alert_new", "en", values)
    runs = 500
    started = time.perf_counter()
    for _ in range(runs):
        renderer.render("alert_new", "en", values)
    per_render = (time.perf_counter() - started) / runs
    assert per_render < 500e-6, f"{per_render * 1e6:.0f} us per render"


def test_compiling_every_template_up_front_leaves_a_refused_one_to_the_fallback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`open_broadcaster` compiles the templates before the first notice (so an emergency's does not wait for
    it): every built-in one in every language compiles, a refused operator template is skipped there without
    raising, and rendering it still falls back to the built-in one with the error logged."""
    builtin = Renderer()
    kinds = builtin.known_kinds()
    assert builtin.compile_all(("zh", "en")) == 2 * len(kinds)
    assert len(builtin.env.cache or {}) == 2 * len(kinds)  # compiled now, not at their first render

    renderer = Renderer(operator_template(tmp_path, ESCAPES[next(iter(ESCAPES))]))
    assert renderer.compile_all(("zh", "en")) == 2 * len(kinds) - 1  # all but the operator's refused alert_new.en
    with caplog.at_level(logging.ERROR, logger="broadcaster.render.engine"):
        text = renderer.render("alert_new", "en", context())
    assert text == builtin.render("alert_new", "en", context())
    assert "alert_new.en.j2:3: refused" in caplog.text


def test_a_template_file_that_cannot_be_read_is_a_template_problem_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator template saved in another encoding (GBK, say) cannot be decoded. Unused, it must not stop the
    broadcaster from starting (compile_all skips it); used, the notice falls back to the built-in template with
    the file named in the log, and `check` reports it as a template problem rather than a traceback."""
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "alert_new_old.zh.j2").write_bytes("旧的模板 {{ line }}".encode("gbk"))  # unused
    (folder / "alert_new.en.j2").write_bytes("Line \xa3{{ line }}".encode("latin-1"))  # used, not UTF-8
    renderer = Renderer(folder)
    kinds = renderer.known_kinds()
    assert "alert_new_old" in kinds
    # Skipped without raising: the unused kind in both languages (zh unreadable, en absent) and alert_new.en.
    assert renderer.compile_all(("zh", "en")) == 2 * len(kinds) - 3
    with caplog.at_level(logging.ERROR, logger="broadcaster.render.engine"):
        text = renderer.render("alert_new", "en", context())
    assert text == Renderer().render("alert_new", "en", context())
    assert "alert_new.en.j2" in caplog.text
    with pytest.raises(TemplateProblem) as caught:
        renderer.check("alert_new", "en", context())
    assert "alert_new.en.j2" in str(caught.value)
    assert "UTF-8" in str(caught.value)
