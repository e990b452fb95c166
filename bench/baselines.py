"""Baselines on the same broker with the same payloads the broadcaster published; prints one `RESULT {json}` line.

- floor: bare aiomqtt (MQTT 5, QoS 1, retained, the same message expiry) publishing the precomputed payloads
  through a bounded window of concurrent publishes; several window sizes are tried and the best median counts.
- limit: `bench.rawmqtt`, packets written straight to a socket (MQTT 3.1.1, QoS 1), PUBACKs counted.
- naive: what an operator would otherwise write: fetch and parse the feeds, then build each message with the
  standard library's json and publish it with a connection of its own (paho's `publish.single`, as generic
  notifiers do).

`python -m bench.baselines '{"messages": "...", "prefix": "...", "mqtt_host": ..., ...}'`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.publish
from google.transit import gtfs_realtime_pb2 as pb
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench import messages
from bench.messages import Message
from bench.rawmqtt import RawPublisher
from bench.rss import peak_rss_mb

_quiet = logging.getLogger("bench.aiomqtt")
_quiet.setLevel(logging.ERROR)  # aiomqtt warns on every publish past ten pending
# paho's publish.single logs "Client is not connected" after its own clean disconnect, once per message.
logging.getLogger("paho.mqtt.client").setLevel(logging.CRITICAL)


def _properties(expiry: int | None) -> Properties | None:
    if expiry is None:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = expiry
    return props


async def floor(host: str, port: int, msgs: list[Message], window: int, client_id: str) -> float:
    """Seconds to publish `msgs` through `window` concurrent publishes on one kept connection."""
    props = [_properties(m.expiry_s) for m in msgs]
    async with aiomqtt.Client(
        host, port, identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5, logger=_quiet, timeout=60,
        max_inflight_messages=max(20, window),
    ) as client:
        pending = iter(range(len(msgs)))

        async def worker() -> None:
            for i in pending:  # one shared iterator: each message is taken by exactly one worker
                await client.publish(msgs[i].topic, msgs[i].payload, qos=1, retain=True, properties=props[i])

        started = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(window, len(msgs))):
                tg.create_task(worker())
        return time.perf_counter() - started


def limit(host: str, port: int, msgs: list[Message], client_id: str) -> float:
    publisher = RawPublisher(host, port, client_id)
    try:
        return publisher.publish_all(msgs)
    finally:
        publisher.close()


def naive(host: str, port: int, msgs: list[Message], feed_urls: list[str]) -> float:
    """Fetch, parse, render and publish every message with a connection of its own."""
    started = time.perf_counter()
    delays: dict[str, list[int]] = {}
    for url in feed_urls:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (a loopback http:// URL)
            body = response.read()
        if url.endswith(".json"):
            json.loads(body)
            continue
        feed = pb.FeedMessage()
        feed.ParseFromString(body)
        for entity in feed.entity:
            if entity.HasField("trip_update") and entity.trip_update.stop_time_update:
                delays.setdefault(entity.trip_update.trip.route_id, []).append(
                    entity.trip_update.stop_time_update[0].arrival.delay
                )
    for m in msgs:
        payload = json.dumps(json.loads(m.payload), ensure_ascii=False).encode()
        paho.mqtt.publish.single(m.topic, payload, qos=1, retain=True, hostname=host, port=port)
    return time.perf_counter() - started


async def main(args: dict[str, Any]) -> dict[str, Any]:
    msgs = messages.load(Path(args["messages"]))
    host, port, prefix, run = args["mqtt_host"], args["mqtt_port"], args["prefix"], args["run_id"]
    reps = int(args.get("reps", 3))
    windows = [int(w) for w in args.get("windows", (1, 10, 32, 100))]
    out: dict[str, Any] = {"messages": len(msgs), "payload_bytes": sum(len(m.payload) for m in msgs)}
    floors: dict[str, list[float]] = {}
    for rep in range(reps):
        for window in windows:
            batch = messages.retopic(msgs, prefix, f"bench/{run}/floor-w{window}-r{rep}")
            seconds = await floor(host, port, batch, window, f"bench-floor-{window}-{rep}")
            floors.setdefault(str(window), []).append(seconds * 1000)
    out["floor_ms_by_window"] = {w: statistics.median(values) for w, values in floors.items()}
    best = min(out["floor_ms_by_window"], key=out["floor_ms_by_window"].get)
    out["floor_window"] = int(best)
    out["floor_ms"] = out["floor_ms_by_window"][best]
    limits = [
        limit(host, port, messages.retopic(msgs, prefix, f"bench/{run}/limit-r{rep}"), f"bench-limit-{rep}") * 1000
        for rep in range(reps)
    ]
    out["limit_ms"] = statistics.median(limits)
    if args.get("naive", True):
        batch = messages.retopic(msgs, prefix, f"bench/{run}/naive")
        out["naive_ms"] = naive(host, port, batch, list(args["feed_urls"])) * 1000
    out["rss_mb"] = peak_rss_mb()
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print("RESULT " + json.dumps(asyncio.run(main(json.loads(sys.argv[1])))), flush=True)
