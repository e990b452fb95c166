"""The online part of `broadcaster check`: every feed fetched and judged, the broker connected, every secret
resolved and every channel's credentials verified with a call that changes nothing. It uses the parts `run`
uses (the feed fetcher with each feed's deadline and size cap, the parsers, the freshness rule, the MQTT link's
client, the channels' own HTTP client), so what passes here works there. Nothing is published or posted."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime

from broadcaster import __version__
from broadcaster.checking.report import CheckReport, Verdict
from broadcaster.config import (
    BlueskyChannelConfig,
    Config,
    FeedConfig,
    MastodonChannelConfig,
    Secret,
    SecretRef,
    WebhookChannelConfig,
    WeiboChannelConfig,
)
from broadcaster.errors import BroadcasterError, ConfigError, DeliveryError, FeedError, StoreError
from broadcaster.feeds.fetch import FeedFetcher
from broadcaster.feeds.freshness import check_freshness
from broadcaster.feeds.gtfs_rt import parse_gtfs_rt
from broadcaster.feeds.network import load_network
from broadcaster.feeds.passenger_flow import parse_passenger_flow
from broadcaster.model import Network


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
    if config.storage is not None:
        refs.append(("storage.password", config.storage.password))
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


def _storage_verdict(config: Config, password: Secret | None) -> Verdict:
    """Connect to `[storage]`'s database and read its schema version; nothing is migrated or written."""
    from broadcaster.store.postgres import SCHEMA_VERSION, describe, probe  # psycopg only for a PostgreSQL config

    assert config.storage is not None
    what = f"storage {describe(config.storage.url)}"
    try:
        server, version = probe(config.storage.url, password=password.reveal() if password else None,
                                timeout=config.storage.statement_timeout_seconds)
    except StoreError as exc:
        return Verdict(what, False, str(exc).removeprefix(f"{exc.path}: "))
    if version > SCHEMA_VERSION:
        return Verdict(what, False, f"PostgreSQL {server}, schema version {version}: newer than this release"
                                    f" knows (up to {SCHEMA_VERSION}); it would refuse to start")
    later = "" if version == SCHEMA_VERSION else f"; migrated to {SCHEMA_VERSION} at the next start"
    return Verdict(what, True, f"PostgreSQL {server}, schema version {version}{later}")


async def _broker_verdict(config: Config, secrets: dict[str, Secret], url: str) -> Verdict:
    """Connect to the broker at `url` and disconnect under a throwaway client id: nothing published, a running
    broadcaster untouched."""
    from broadcaster.channels.mqtt import MqttLink

    username, password = secrets.get("mqtt.username"), secrets.get("mqtt.password")
    link = MqttLink(config.mqtt, username=username.reveal() if username else None,
                    password=password.reveal() if password else None)
    what = f"broker {url}"
    try:
        await link.probe_connection(url)
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
        # Every broker of mqtt.urls: a standby found broken only when the link fails over is found too late.
        return [await _broker_verdict(config, secrets, url) for url in config.mqtt.brokers]

    async def storage() -> list[Verdict]:
        if config.storage is None or "storage.password" in missing:
            return []
        return [await asyncio.to_thread(_storage_verdict, config, secrets.get("storage.password"))]

    async with FeedFetcher(user_agent=f"broadcaster/{__version__} (check)") as fetcher:
        feeds, brokers, (channels, build_problems), databases = await asyncio.gather(
            asyncio.gather(*(_feed_verdict(config, feed, network, fetcher, now) for feed in config.feeds)),
            broker(),
            _channel_verdicts(config, now, skip),
            storage(),
        )
    report.verdicts += [*feeds, *brokers, *channels, *databases]
    report.problems += build_problems
