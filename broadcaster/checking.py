"""`broadcaster check`: validate a config, its network and every template against sample notices; then (unless
`--offline`) fetch every feed, connect to the broker, resolve every secret and verify every channel's credentials
with a call that changes nothing.

Sample notices are made by the real compose step from synthetic changes on the operator's own network, so a
template that passes here sees exactly the variables it will see in service. The online part uses the parts
`run` uses (the feed fetcher with each feed's deadline and size cap, the parsers, the freshness rule, the MQTT
link's client, the channels' own HTTP client), so what passes here works there. Nothing is published or posted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit
from urllib.request import url2pathname

from broadcaster import __version__
from broadcaster.compose import ComposePolicy, Notice, NoticeKind, compose, compose_correction, compose_digest
from broadcaster.config import (
    BlueskyChannelConfig,
    Config,
    FeedConfig,
    MastodonChannelConfig,
    Secret,
    SecretRef,
    WebhookChannelConfig,
    WeiboChannelConfig,
    load_config,
)
from broadcaster.errors import BroadcasterError, ConfigError, DeliveryError, FeedError, TemplateProblem
from broadcaster.feeds.fetch import FeedFetcher
from broadcaster.feeds.freshness import check_freshness
from broadcaster.feeds.gtfs_rt import parse_gtfs_rt
from broadcaster.feeds.network import load_network
from broadcaster.feeds.passenger_flow import parse_passenger_flow
from broadcaster.model import ActivePeriod, Alert, InformedEntity, LocalizedText, Network, Occupancy, Severity
from broadcaster.render import Renderer
from broadcaster.render.engine import template_name
from broadcaster.render.posts import DETAIL_LEVELS, FULL
from broadcaster.scheduler import CronSchedule
from broadcaster.state import (
    AlertChange,
    AlertChangeKind,
    AlertRecord,
    Change,
    CrowdingChange,
    CrowdingRecord,
    LineStatus,
    LineStatusChange,
    LineStatusKind,
    NetworkState,
    alert_version,
)

#: How many upcoming slots `check` shows per digest.
DIGEST_SLOTS_SHOWN = 5


@dataclass(frozen=True)
class Verdict:
    """One thing the online check tried: a feed, the broker or a channel."""

    what: str  # "feed ops", "broker mqtt://...", "channel masto"
    ok: bool
    detail: str  # what it found, or the failure's one line (never a secret)


@dataclass
class CheckReport:
    config: Path
    lines: int = 0
    stations: int = 0
    feeds: int = 0
    rendered: list[tuple[str, str, str]] = field(default_factory=list)  # kind, language, text
    #: Configuration problems (templates, files, secrets): exit status 2.
    problems: list[str] = field(default_factory=list)
    #: Each digest's upcoming slots, one line each.
    digests: list[str] = field(default_factory=list)
    #: The online checks, in config order; empty with --offline.
    verdicts: list[Verdict] = field(default_factory=list)
    #: How many of `problems` the offline part found (the sample posts' verdict counts those only).
    offline_problems: int = 0

    @property
    def failures(self) -> list[str]:
        """Run-time failures (a feed, the broker, a channel), one line each: exit status 1."""
        return [v.detail for v in self.verdicts if not v.ok]

    def as_text(self) -> str:
        out = [f"{self.config}: {self.lines} lines, {self.stations} stations, {self.feeds} feeds"]
        for kind, lang, text in self.rendered:
            out.append(f"--- {kind} [{lang}]")
            out.append(text)
        offline = self.problems[: self.offline_problems]  # the online part's problems are not the samples'
        verdict = "OK" if not offline else f"{len(offline)} problem(s)"
        out.append(f"--- {len(self.rendered)} sample posts rendered: {verdict}")
        out += self.digests
        out += [f"{v.what}: ok ({v.detail})" if v.ok else f"{v.what}: FAILED" for v in self.verdicts]
        if len(self.problems) > len(offline) or self.failures:
            out.append(f"--- {len(self.problems)} problem(s), {len(self.failures)} failure(s), one line each on stderr")
        return "\n".join(out)

    def as_dict(self) -> dict[str, object]:
        return {
            "config": str(self.config), "lines": self.lines, "stations": self.stations, "feeds": self.feeds,
            "rendered": [{"kind": k, "language": lang, "text": t} for k, lang, t in self.rendered],
            "digests": self.digests,
            "checks": [{"what": v.what, "ok": v.ok, "detail": v.detail} for v in self.verdicts],
            "problems": self.problems, "failures": self.failures, "ok": not self.problems and not self.failures,
        }


def sample_changes(network: Network, now: datetime) -> list[Change]:
    """One change of every kind that produces a notice, on the network's first line and station."""
    line_id = next(iter(network.lines))
    stations = network.stations_of(line_id) or tuple(network.stations)
    station_id = stations[0]
    header = LocalizedText.of(zh="信号故障，列车限速运行", en="Signal fault, trains running slowly")
    description = LocalizedText(MappingProxyType({
        "zh": "受信号设备故障影响，列车运行间隔延长，请乘客合理安排出行。",
        "en": "A signal fault is lengthening intervals between trains. Please allow extra time.",
    }))
    alert = Alert(
        id="sample-1", cause="TECHNICAL_PROBLEM", effect="SIGNIFICANT_DELAYS", severity=Severity.SEVERE,
        header=header, description=description, url=LocalizedText(),
        informed=(InformedEntity(line_id=line_id), InformedEntity(station_id=station_id)),
        active_periods=(ActivePeriod(now - timedelta(minutes=5), now + timedelta(hours=1)),),
    )
    record = AlertRecord(alert, alert_version(alert), "sample", now, now)
    delayed = LineStatus(LineStatusKind.DELAYED, max_delay_s=480)
    normal = LineStatus(LineStatusKind.NORMAL)
    crowded = CrowdingRecord(station_id, Occupancy.CRUSHED_STANDING_ROOM_ONLY, 92, now, now, trend=1)
    eased = CrowdingRecord(station_id, Occupancy.FEW_SEATS_AVAILABLE, 55, now, now, trend=-1)
    return [
        AlertChange(AlertChangeKind.NEW, record),
        AlertChange(AlertChangeKind.UPDATED, record, previous=record),
        AlertChange(AlertChangeKind.RESOLVED, record, previous=record),
        LineStatusChange(line_id, normal, delayed),
        LineStatusChange(line_id, delayed, normal),
        CrowdingChange(station_id, Occupancy.STANDING_ROOM_ONLY, crowded),
        CrowdingChange(station_id, Occupancy.CRUSHED_STANDING_ROOM_ONLY, eased),
    ]


def sample_notices(
    config: Config, network: Network, now: datetime, digest_templates: Sequence[str] | None = None
) -> list[Notice]:
    """A notice of every kind from `sample_changes`, a digest per template in `digest_templates` (by default each
    template the config's digests name, or the built-in "digest" when it names none) and a correction."""
    if digest_templates is None:
        digest_templates = _digest_templates(config)
    policy = ComposePolicy(config.zone, config.network.languages)
    changes = sample_changes(network, now)
    notices = compose(changes, network=network, now=now, policy=policy)
    state = NetworkState()
    for change in changes:  # a state with a disruption and a crowded station, for the digest
        if isinstance(change, AlertChange) and change.kind is AlertChangeKind.NEW:
            state = replace(state, alerts={change.record.alert.id: change.record})
        elif isinstance(change, LineStatusChange) and change.after.kind is LineStatusKind.DELAYED:
            state = replace(state, lines={**state.lines, change.line_id: change.after})
        elif isinstance(change, CrowdingChange) and change.record.level.rank >= Occupancy.STANDING_ROOM_ONLY.rank:
            state = replace(state, crowding={change.station_id: change.record})
    notices += [compose_digest(state, name=template, network=network, slot=now, policy=policy, template=template)
                for template in digest_templates]
    notices.append(compose_correction(
        "alert-sample-1",
        {"zh": "此前通告有误：1号线运营正常。", "en": "The earlier notice was wrong: Line 1 runs normally."},
        line_ids=tuple(network.lines)[:1], network=network, now=now, policy=policy,
    ))
    return sorted(notices, key=lambda n: n.kind.value)  # compose orders by priority; a report reads better by kind


def _digest_templates(config: Config) -> list[str]:
    """The template base names the config's digests use, each once, in config order."""
    named = [digest.template for digest in config.digests] or [NoticeKind.DIGEST.value]
    return list(dict.fromkeys(named))


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


def check_offline(config: Config, now: datetime | None = None) -> CheckReport:
    """`check_config` for a config already loaded."""
    path = config.source
    now = now or datetime.now(UTC)
    network = load_network(config.network.gtfs, config.network.default_language)
    report = CheckReport(path, len(network.lines), len(network.stations), len(config.feeds))
    report.problems += _feed_problems(config)
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
    for notice in sample_notices(config, network, now, [t for t in _digest_templates(config) if t not in unusable]):
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


# -- online: feeds, broker, secrets, channels ---------------------------------------------------------------------


def secret_refs(config: Config) -> list[tuple[str, SecretRef]]:
    """Every secret the config names, with its key: the broker's, each channel's and each admin token."""
    refs: list[tuple[str, SecretRef | None]] = [("mqtt.username", config.mqtt.username),
                                                ("mqtt.password", config.mqtt.password)]
    for i, channel in enumerate(config.channels):
        if isinstance(channel, MastodonChannelConfig):
            refs.append((f"channels[{i}].token", channel.token))
        elif isinstance(channel, BlueskyChannelConfig):
            refs.append((f"channels[{i}].password", channel.password))
        elif isinstance(channel, WeiboChannelConfig):
            refs.append((f"channels[{i}].access_token", channel.access_token))
        elif isinstance(channel, WebhookChannelConfig):
            refs.append((f"channels[{i}].secret", channel.secret))
    if config.admin is not None:
        refs += [(f"admin.tokens[{i}].token", token.token) for i, token in enumerate(config.admin.tokens)]
    return [(key, ref) for key, ref in refs if ref is not None]


def resolve_secrets(config: Config) -> tuple[dict[str, Secret], list[str]]:
    """Every secret's value by key, and one problem line per secret that cannot be had (naming the key and the
    variable or file, never a value). A missing secret is a configuration error: exit status 2."""
    values: dict[str, Secret] = {}
    problems = []
    for key, ref in secret_refs(config):
        try:
            secret = ref.load(config.source.parent)
        except OSError as exc:
            problems.append(f"{config.source}: {key}: cannot read {ref.file}: {exc.strerror}")
            continue
        if secret is None:
            problems.append(f"{config.source}: {key}: environment variable {ref.env} is not set")
        else:
            values[key] = secret
    return values, problems


async def _feed_verdict(config: Config, feed: FeedConfig, network: Network, fetcher: FeedFetcher,
                        now: datetime) -> Verdict:
    """Fetch and parse one feed as a poll does (its deadline, its size cap) and judge its own timestamp."""
    try:
        result = await fetcher.fetch(feed.name, feed.url, timeout_s=feed.timeout_seconds, max_bytes=feed.max_bytes)
        body = result.body or b""
        snapshot = (
            parse_gtfs_rt(feed.name, body, network, carries=frozenset(feed.contains),
                          default_language=config.network.default_language)
            if feed.kind == "gtfs-rt" else parse_passenger_flow(feed.name, body, network)
        )
        check_freshness(feed.name, snapshot.timestamp, now=now, max_age_s=feed.max_age_seconds, previous=None)
    except FeedError as exc:
        return Verdict(f"feed {feed.name}", False, str(exc))
    age = (now - snapshot.timestamp).total_seconds()
    return Verdict(f"feed {feed.name}", True,
                   f"HTTP {result.status}, {len(body)} bytes, timestamp {age:.0f} s old (max"
                   f" {feed.max_age_seconds:.0f} s), {len(snapshot.problems)} record(s) skipped as invalid")


async def _broker_verdict(config: Config, secrets: dict[str, Secret]) -> Verdict:
    """Connect and disconnect under a throwaway client id: nothing published, a running broadcaster untouched."""
    from broadcaster.channels.mqtt import MqttLink

    username, password = secrets.get("mqtt.username"), secrets.get("mqtt.password")
    link = MqttLink(config.mqtt, username=username.reveal() if username else None,
                    password=password.reveal() if password else None)
    what = f"broker {config.mqtt.url}"
    try:
        await link.probe_connection()
    except DeliveryError as exc:
        return Verdict(what, False, f"{what}: {exc.reason}")
    return Verdict(what, True, "connected and disconnected")


async def _channel_verdicts(config: Config, now: datetime, skip: set[int]) -> tuple[list[Verdict], list[str]]:
    """Each channel's credentials, verified with a read-only call (all at once), and the config problems found
    building them; channels in `skip` (a secret is missing) are left out."""
    from broadcaster.channels.base import VerifyingChannel
    from broadcaster.channels.factory import build_channel
    from broadcaster.channels.http import HttpChannelClient

    async def outcome(name: str, call: Awaitable[str] | None) -> Verdict:
        if call is None:
            return Verdict(f"channel {name}", True, "a local file: nothing to call")
        try:
            return Verdict(f"channel {name}", True, await call)
        except BroadcasterError as exc:
            return Verdict(f"channel {name}", False, str(exc))

    problems: list[str] = []
    calls: list[tuple[str, Awaitable[str] | None]] = []
    async with HttpChannelClient(lambda: now) as http:
        for i in range(len(config.channels)):
            if i in skip:
                continue
            try:
                channel = build_channel(config, i, http, lambda: now)
            except ConfigError as exc:  # a token an HTTP header cannot carry
                problems.append(str(exc))
                continue
            calls.append((channel.name, channel.verify() if isinstance(channel, VerifyingChannel) else None))
        verdicts = await asyncio.gather(*(outcome(name, call) for name, call in calls))
    return list(verdicts), problems


async def check_online(config: Config, report: CheckReport, now: datetime | None = None) -> None:
    """Add to `report` what only the network can tell: every feed fetched and judged, the broker connected, every
    secret resolved and every channel's credentials verified, all at once. Changes nothing anywhere; a part whose
    secret is missing is not tried (that is reported as a config problem already)."""
    now = now or datetime.now(UTC)
    secrets, problems = resolve_secrets(config)
    report.problems += problems
    missing = [key for key, _ in secret_refs(config) if key not in secrets]
    skip = {i for i in range(len(config.channels)) if any(key.startswith(f"channels[{i}].") for key in missing)}
    network = load_network(config.network.gtfs, config.network.default_language)

    async def broker() -> list[Verdict]:
        if any(key.startswith("mqtt.") for key in missing):
            return []
        return [await _broker_verdict(config, secrets)]

    async with FeedFetcher(user_agent=f"broadcaster/{__version__} (check)") as fetcher:
        feeds, brokers, (channels, build_problems) = await asyncio.gather(
            asyncio.gather(*(_feed_verdict(config, feed, network, fetcher, now) for feed in config.feeds)),
            broker(),
            _channel_verdicts(config, now, skip),
        )
    report.verdicts += [*feeds, *brokers, *channels]
    report.problems += build_problems
