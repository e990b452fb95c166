"""`broadcaster check --offline`: the config, its network, every template rendered on the sample notices at
every detail level, the feeds' files and the digests' slots; nothing on the network."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from broadcaster.checking.report import CheckReport
from broadcaster.checking.samples import named_digest_templates, sample_notices
from broadcaster.compose import Notice, NoticeKind, Priority
from broadcaster.compose.routing import Route, route_of, unknown_places
from broadcaster.config import Config, load_config
from broadcaster.errors import TemplateProblem
from broadcaster.feeds.network import load_network
from broadcaster.model import Network, Severity
from broadcaster.render import Renderer
from broadcaster.render.engine import template_name
from broadcaster.render.hashtags import hashtags_of
from broadcaster.render.posts import DETAIL_LEVELS, FULL
from broadcaster.scheduler import CronSchedule

#: How many upcoming slots `check` shows per digest.
DIGEST_SLOTS_SHOWN = 5


def _missing_digest_templates(config: Config, renderer: Renderer) -> dict[int, list[str]]:
    """Each digest (by index) whose template is missing for some language, with the missing file names: neither
    the operator's folder nor the built-in set has them."""
    folders = [d for d in (renderer.operator_dir, renderer.builtin_dir) if d is not None]
    missing: dict[int, list[str]] = {}
    for i, digest in enumerate(config.digests):
        names = [template_name(digest.template, lang) for lang in config.network.languages]
        absent = [name for name in names if not any((folder / name).is_file() for folder in folders)]
        if absent:
            missing[i] = absent
    return missing


def _feed_problems(config: Config) -> list[str]:
    problems = []
    for i, feed in enumerate(config.feeds):
        parts = urlsplit(feed.url)
        if parts.scheme == "file" and not Path(url2pathname(parts.path)).is_file():
            problems.append(f"{config.source}: feeds[{i}].url: {feed.url!r}: no such file")
    return problems


def _filter_text(route: Route) -> str:
    """A channel's filter for people: "alert_new, alert_updated; lines 1; at least WARNING"."""
    parts = [", ".join(sorted(route.notices)), route.area.label()]
    if route.min_severity is not None:
        parts.append(f"at least {route.min_severity.name}")
    if route.emergencies_only:
        parts.append("emergencies only")
    return "; ".join(parts)


def _routing(
    config: Config, network: Network, samples: list[Notice], now: datetime
) -> tuple[list[str], list[str]]:
    """Each channel's filter and where each sample notice goes; and, as warnings, each line about whose
    ordinary alerts no channel posts (only the MQTT notice stream would carry them)."""
    routes = {channel.name: route_of(channel, network) for channel in config.channels}
    lines = [f"channel {name!r} takes: {_filter_text(route)}" for name, route in routes.items()]
    for notice in samples:
        takers = [name for name, route in routes.items() if route.takes(notice)]
        if notice.kind is NoticeKind.DIGEST:  # each channel gets a digest of its own lines (digests.py)
            takers = [name for name, route in routes.items()
                      if route.admits(NoticeKind.DIGEST, Severity.INFO, emergency=False)]
        lines.append(f"sample {notice.kind.value} ({notice.id}) goes to: "
                     + (", ".join(takers) if takers else "NO CHANNEL (only the MQTT notice stream)"))
    warnings = []
    for line_id, line in network.lines.items():
        ordinary = Notice(f"probe-{line_id}", "probe", NoticeKind.ALERT_NEW, Priority.NORMAL, now,
                          (line_id,), (), Severity.WARNING, {})
        if routes and not any(route.takes(ordinary) for route in routes.values()):
            warnings.append(f"no channel posts an ordinary alert (WARNING) about line {line_id!r}"
                            f" ({line.short_name}): only the MQTT notice stream carries it")
    return lines, warnings


def digest_slots(config: Config, now: datetime) -> list[str]:
    """Each digest's next slots that fall within service hours (the others are skipped), with weekday names in
    the operator's zone, so that an operator sees what a cron expression means."""
    lines = []
    hours = config.service_hours
    for digest in config.digests:
        schedule = CronSchedule(digest.cron, config.zone)
        shown: list[str] = []
        slot = now
        for _ in range(3_000):  # a cron whose every slot falls outside service hours must end too
            slot = schedule.next_slot(slot)
            local = slot.astimezone(config.zone)
            if hours.contains(local.time()):
                shown.append(local.strftime("%a %Y-%m-%d %H:%M"))
                if len(shown) == DIGEST_SLOTS_SHOWN:
                    break
        where = f"digest {digest.name!r}: \"{digest.cron}\" in {config.timezone}, within service hours" \
                f" {hours.start:%H:%M}-{hours.end:%H:%M}"
        lines.append(f"{where}, next: {', '.join(shown)}" if shown else f"{where}: no slot falls within them")
    return lines


def check_config(path: Path, now: datetime | None = None) -> CheckReport:
    """Validate everything `run` would use, without touching the network or the broker (`check --offline`).

    Raises:
        ConfigError, NetworkDataError: the config or the static GTFS cannot be used at all.
    """
    return check_offline(load_config(path), now)


#: How many dotted ids the warning lists before "...".
_DOTTED_SHOWN = 5


def _dotted_topic_ids(config: Config, network: Network) -> list[str]:
    """A warning when a topic would carry a '.': NATS before 2.10 (Debian's 2.9 among them) closes the connection
    of a client publishing one, and as every session republishes everything, no session would last
    (docs/mqtt.md, "NATS cluster"). Other brokers take it; the contract keeps the '.' as the id has it. Alert
    ids come from the feeds while running, so only the prefix, the `[ha]` instance id and the network's ids are
    checked here."""
    where = [("topic_prefix", config.mqtt.topic_prefix)] if "." in config.mqtt.topic_prefix else []
    # The presence topic names the instance; its default, the host name, often has a '.'.
    where += [("ha.instance", config.ha.instance)] if config.ha is not None and "." in config.ha.instance else []
    where += [(f"line {line_id!r}", line_id) for line_id in network.lines if "." in line_id]
    where += [(f"station {station_id!r}", station_id) for station_id in network.stations if "." in station_id]
    if not where:
        return []
    shown = ", ".join(label for label, _ in where[:_DOTTED_SHOWN]) + (
        f", ... ({len(where)} in all)" if len(where) > _DOTTED_SHOWN else "")
    return [f"MQTT topics will carry a '.' ({shown}): NATS before 2.10 refuses such topics and would drop every "
            "session; other brokers take them (docs/mqtt.md, \"NATS cluster\")"]


def check_offline(config: Config, now: datetime | None = None) -> CheckReport:
    """`check_config` for a config already loaded."""
    path = config.source
    now = now or datetime.now(UTC)
    network = load_network(config.network.gtfs, config.network.default_language)
    hashtags_of(config, network)  # an override naming a line or station the GTFS lacks: the ConfigError run gives
    report = CheckReport(path, len(network.lines), len(network.stations), len(config.feeds))
    report.problems += _feed_problems(config)
    report.problems += [str(problem) for problem in unknown_places(config, network)]
    report.digests = digest_slots(config, now)
    if config.templates.directory is not None and not config.templates.directory.is_dir():
        report.problems.append(f"{path}: templates.directory: {str(config.templates.directory)!r}: no such folder")
        report.offline_problems = len(report.problems)
        return report
    renderer = Renderer(config.templates.directory)
    missing = _missing_digest_templates(config, renderer)
    for i, names in missing.items():
        where = f"in {config.templates.directory} or the built-in templates" if config.templates.directory \
            else "among the built-in templates (templates.directory is not set)"
        report.problems.append(f"{path}: digests[{i}].template: {config.digests[i].template!r}: no template"
                               f" {', '.join(names)} {where}")
    unusable = {config.digests[i].template for i in missing}  # reported once above, not again per language
    usable = [t for t in named_digest_templates(config) if t not in unusable]
    samples = sample_notices(config, network, now, usable)
    report.routes, report.warnings = _routing(config, network, samples, now)
    report.warnings += _dotted_topic_ids(config, network)
    for notice in samples:
        kind = notice.kind.value
        label = kind if notice.template_base == kind else f"{kind} ({notice.template_base})"
        for lang, context in notice.contexts.items():
            # Every detail level a channel's length rule may ask for must render; the report shows the full one.
            for detail in DETAIL_LEVELS:
                try:
                    text = renderer.check(notice.template_base, lang, {**context, "detail": detail})
                except TemplateProblem as problem:
                    report.problems.append(f"{problem} (detail={detail})")
                    break
                if detail == FULL:
                    report.rendered.append((label, lang, text))
    report.offline_problems = len(report.problems)
    return report

