"""A test rig for end-to-end tests: the example network, feeds on a loopback HTTP server, a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.transit import gtfs_realtime_pb2 as pb
from support import LoopbackHttpServer
from support.gtfs_rt_builders import feed_bytes

from broadcaster.config import Config, load_config
from broadcaster.resources import data_dir
from broadcaster.runner import open_broadcaster
from broadcaster.service import Broadcaster, Clock

NETWORK_DIR = data_dir("config") / "network"

#: The MQTT versions the contract suite runs against, on the same Mosquitto: a test that defines part of the
#: contract (docs/mqtt.md) takes `mqtt_protocol` and is marked `@both_protocols`.
PROTOCOLS = ("5", "3.1.1")
both_protocols = pytest.mark.parametrize("mqtt_protocol", PROTOCOLS)


def now_s() -> int:
    return int(time.time())


class SteppedClock:
    """Real time plus an offset the test moves forward: 'twenty minutes later' without waiting."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


def toml_value(value: Any) -> str:
    """A Python value as TOML (strings, numbers, booleans, lists and inline tables)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)


@dataclass
class Rig:
    """Writes a config for one test and serves its feeds."""

    tmp_path: Path
    server: LoopbackHttpServer
    mqtt_url: str
    prefix: str
    extra_state: str = ""
    #: `mqtt.protocol` of the configs it writes (the `mqtt_protocol` fixture).
    protocol: str = "5"

    @property
    def config_path(self) -> Path:
        return self.tmp_path / "broadcaster.toml"

    def write_config(self, **overrides: Any) -> Path:
        mqtt = {"url": self.mqtt_url, "topic_prefix": self.prefix, "client_id": f"bc-{self.prefix[-8:]}",
                "publish_timeout_seconds": 3, "reconnect_max_seconds": 1, "will_delay_seconds": 2,
                "protocol": self.protocol}
        mqtt.update(overrides.pop("mqtt", {}))
        if "urls" in mqtt:
            del mqtt["url"]  # one of the two, never both
        state = {"directory": str(self.tmp_path / "state"), "resolve_after_missing": 2,
                 "crowding_min_dwell_seconds": 0}
        state.update(overrides.pop("state", {}))
        feeds = [
            {"name": "ops", "kind": "gtfs-rt", "url": self.server.url("/rt.pb"), "timeout_seconds": 2,
             "max_bytes": 100_000, "max_age_seconds": 300},
            {"name": "flow", "kind": "passenger-flow", "url": self.server.url("/flow.json"), "timeout_seconds": 2,
             "max_bytes": 100_000, "max_age_seconds": 300},
        ]
        feed_settings = overrides.pop("feeds", {})  # e.g. {"poll_seconds": 0.5}, for every feed alike
        for feed in feeds:
            feed.update(feed_settings)
        lines = [f'[network]\ngtfs = "{NETWORK_DIR.as_posix()}"\n']
        for feed in feeds:
            lines.append("[[feeds]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in feed.items()))
        lines.append("[state]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in state.items()))
        lines.append("[mqtt]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in mqtt.items()))
        for channel in overrides.pop("channels", []):
            lines.append("[[channels]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in channel.items()))
        for digest in overrides.pop("digests", []):
            lines.append("[[digests]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in digest.items()))
        if "hashtags" in overrides:
            hashtags = overrides.pop("hashtags")
            lines.append("[hashtags]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in hashtags.items()))
        if "templates" in overrides:
            templates = overrides.pop("templates")
            lines.append("[templates]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in templates.items()))
        if "storage" in overrides:
            storage = overrides.pop("storage")
            lines.append("[storage]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in storage.items()))
        assert not overrides, f"the rig does not write {sorted(overrides)}"
        self.config_path.write_text("\n".join(lines), encoding="utf-8")
        return self.config_path

    def config(self, **overrides: Any) -> Config:
        return load_config(self.write_config(**overrides))

    def serve_rt(self, *entities: pb.FeedEntity, timestamp: int | None = None, etag: str | None = None) -> None:
        self.server.set_route("/rt.pb", feed_bytes(*entities, timestamp=timestamp or now_s()), etag=etag)

    def serve_flow(self, levels: Mapping[str, str], timestamp: int | None = None) -> None:
        doc = {
            "schema": "broadcaster.passenger-flow/1",
            "timestamp": timestamp or now_s(),
            "stations": [{"station_id": s, "level": level} for s, level in levels.items()],
        }
        self.server.set_route("/flow.json", orjson.dumps(doc), content_type="application/json")

    def topic(self, rest: str) -> str:
        return f"{self.prefix}/v1/{rest}"


@contextlib.asynccontextmanager
async def running(
    config: Config, *, connect_timeout: float = 10.0, clock: Clock | None = None
) -> AsyncIterator[Broadcaster]:
    """A broadcaster in this event loop: connected to the broker, its drain loops running."""
    async with open_broadcaster(config, clock=clock) as b:
        stop = asyncio.Event()
        link_task = asyncio.create_task(b.link.run(stop))
        drains = [asyncio.create_task(b.drain_loop(ch, stop)) for ch in b.channels]
        try:
            async with asyncio.timeout(connect_timeout):
                await b.link.connected.wait()
            yield b
        finally:
            stop.set()
            async with asyncio.timeout(10):
                await asyncio.gather(link_task, *drains)


@contextlib.asynccontextmanager
async def linked_only(config: Config) -> AsyncIterator[Broadcaster]:
    """A broadcaster with its broker link but no drain loops: the test drains by hand, step by step."""
    async with open_broadcaster(config) as b:
        stop = asyncio.Event()
        link = asyncio.create_task(b.link.run(stop))
        try:
            async with asyncio.timeout(10):
                await b.link.connected.wait()
            yield b
        finally:
            stop.set()
            async with asyncio.timeout(10):
                await link


def shorten_busy_wait(b: Broadcaster, milliseconds: int = 200) -> None:
    """Cut SQLite's busy wait on `b`'s database from its 5 s to `milliseconds`, for a test that holds the database
    with another writer: what the broadcaster does once the wait runs out is the same, only sooner."""
    b.db.conn.execute(f"PRAGMA busy_timeout={milliseconds}")


async def poll_all(b: Broadcaster) -> list[bool]:
    return [(await b.poll(feed)).ok for feed in b.config.feeds]


def payloads(messages: Sequence[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(m.payload) for m in messages if m.payload]
