"""The broadcaster configuration the demo runs with, written as a TOML file like an operator's own.

It points the feeds at the demo's HTTP server, the broker at the embedded one (amqtt, MQTT 3.1.1 only, so the
link speaks 3.1.1),
and adds an Atom timeline channel; intervals are short so the demo reacts within a second or two. The file is
left in the state folder for anyone who wants to see what a configuration looks like.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broadcaster.config import Config, load_config
from broadcaster.resources import data_dir

NETWORK_DIR = data_dir("config") / "demo" / "network"
TIMELINE_CHANNEL = "timeline"
TOPIC_PREFIX = "metro"


@dataclass(frozen=True, slots=True)
class DemoEndpoints:
    feeds_base_url: str  # e.g. http://127.0.0.1:8080/feeds
    mqtt_url: str  # the embedded broker: mqtt://127.0.0.1:port
    state_dir: Path
    poll_seconds: float = 1.0
    public_listen: str | None = None  # host:port of the commuter page (the [public] site); None: no page
    mqtt_websocket_url: str | None = None  # the embedded broker's WebSocket listener, as browsers reach it


def _table(name: str, values: Mapping[str, Any], *, array: bool = False) -> str:
    head = f"[[{name}]]" if array else f"[{name}]"
    # JSON strings, numbers, booleans and arrays of them are valid TOML values.
    return head + "\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def timeline_path(state_dir: Path) -> Path:
    return state_dir / "timeline.atom"


def render_config(endpoints: DemoEndpoints) -> str:
    poll = endpoints.poll_seconds
    parts = [
        "# Written by `broadcaster demo`: the demo city's feeds, the embedded broker, an Atom timeline.\n"
        'config_version = 1\ntimezone = "Asia/Shanghai"\n',
        _table("network", {"gtfs": NETWORK_DIR.as_posix(), "default_language": "zh", "languages": ["zh", "en"]}),
        _table("feeds", {
            "name": "operations", "kind": "gtfs-rt", "url": f"{endpoints.feeds_base_url}/gtfs-rt.pb",
            "poll_seconds": poll, "timeout_seconds": 5, "max_bytes": 4_000_000, "max_age_seconds": 120,
        }, array=True),
        _table("feeds", {
            "name": "passenger-flow", "kind": "passenger-flow",
            "url": f"{endpoints.feeds_base_url}/passenger-flow.json",
            "poll_seconds": poll, "timeout_seconds": 5, "max_bytes": 1_000_000, "max_age_seconds": 120,
        }, array=True),
        _table("state", {
            "directory": endpoints.state_dir.as_posix(), "resolve_after_missing": 2,
            "crowding_min_dwell_seconds": 2, "crowding_hysteresis_percent": 5, "crowding_trend_window_seconds": 60,
            "delay_threshold_seconds": 300,
        }),
        _table("mqtt", {
            # amqtt speaks MQTT 3.1.1 only: no message expiry (displays go by valid_until), no Will Delay.
            "url": endpoints.mqtt_url, "protocol": "3.1.1", "topic_prefix": TOPIC_PREFIX,
            "client_id": "broadcaster-demo",
            "keepalive_seconds": 10, "retained_ttl_seconds": 300, "reconnect_max_seconds": 2,
            "connect_timeout_seconds": 5,
        }),
        _table("channels", {
            "kind": "atom", "name": TIMELINE_CHANNEL, "path": timeline_path(endpoints.state_dir).as_posix(),
            "title": "临江地铁 Linjiang Metro", "languages": ["zh", "en"], "max_entries": 100,
        }, array=True),
    ]
    if endpoints.public_listen is not None:
        parts.append(_table("public", {
            "listen": endpoints.public_listen, "mqtt_websocket_url": endpoints.mqtt_websocket_url,
            "page_title.zh": "临江地铁出行提醒", "page_title.en": "Linjiang Metro updates",
        }))
    return "\n".join(parts)


def write_config(endpoints: DemoEndpoints) -> Config:
    """Write `broadcaster.toml` into the state folder and load it as `broadcaster run` would."""
    endpoints.state_dir.mkdir(parents=True, exist_ok=True)
    path = endpoints.state_dir / "broadcaster.toml"
    path.write_text(render_config(endpoints), encoding="utf-8")
    return load_config(path)
