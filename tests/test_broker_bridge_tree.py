"""A Mosquitto bridge tree (tests/support/mosquitto_tree.py): the broadcaster publishes to a core, MQTT 5 bridges
carry `{prefix}/v1/#` out to two edges, displays subscribe on the edges. Real processes, SIGKILLs, the real
broadcaster. Each test prints what it measured (run with ``-s`` to see it); docs/mqtt.md, "Broker layer"."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import aiomqtt
import orjson
import pytest
from rig import Rig, poll_all, running
from support import LoopbackHttpServer, MessageRecorder, collect_retained, collect_retained_until
from support.gtfs_rt_builders import alert_entity, selector
from support.mosquitto import MosquittoNotFound
from support.mosquitto_tree import MosquittoTree
from support.mqtt_client import parse_mqtt_url

from broadcaster.service import Broadcaster

STATION = "S04"
#: Within this a display that lost its edge must show the latest state again (issue 15).
CONVERGE_S = 30.0


@pytest.fixture
def tree_factory(tmp_path: Path, topic_prefix: str) -> Iterator[Callable[..., MosquittoTree]]:
    """Starts a `MosquittoTree` with the given options; stops it after the test."""
    trees: list[MosquittoTree] = []

    def start(**options: object) -> MosquittoTree:
        try:
            tree = MosquittoTree(tmp_path / f"tree{len(trees)}", topic_prefix, **options)  # type: ignore[arg-type]
        except MosquittoNotFound as exc:
            pytest.fail(str(exc), pytrace=False)
        trees.append(tree)
        tree.start_all()
        return tree

    yield start
    for tree in trees:
        tree.stop()


class Display:
    """A station screen: subscribes to its station's topics and the status on the first edge that answers, and
    on losing it goes to the next edge of its list, as a display given several broker addresses does. It keeps
    the latest payload per topic, the way a screen keeps what it shows."""

    def __init__(self, urls: Sequence[str], prefix: str, station: str = STATION) -> None:
        self.urls = list(urls)
        self.filters = [f"{prefix}/v1/stations/{station}/#", f"{prefix}/v1/broadcaster/status"]
        self.display_topic = f"{prefix}/v1/stations/{station}/display"
        self.shown: dict[str, bytes] = {}
        self.url: str | None = None
        self.connections = 0
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Display:
        self._task = asyncio.create_task(self._run(), name="display")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        turn = 0
        while True:
            url = self.urls[turn % len(self.urls)]
            host, port = parse_mqtt_url(url)
            try:
                async with aiomqtt.Client(host, port, identifier=f"display-{uuid.uuid4().hex[:10]}",
                                          protocol=aiomqtt.ProtocolVersion.V5, timeout=2) as client:
                    for topic_filter in self.filters:
                        await client.subscribe(topic_filter, qos=1)
                    async with self._changed:
                        self.url, self.connections = url, self.connections + 1
                        self._changed.notify_all()
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes) else b""
                        async with self._changed:
                            self.shown[message.topic.value] = payload
                            self._changed.notify_all()
            except aiomqtt.MqttError:
                turn += 1
                # The display's own reconnect backoff (a real screen waits a moment before the next broker).
                await asyncio.sleep(0.1)

    def crowding(self) -> str | None:
        payload = self.shown.get(self.display_topic)
        crowding = orjson.loads(payload)["crowding"] if payload else None  # null before the flow feed's first poll
        return crowding["level"] if crowding else None

    async def wait_until(self, condition: Callable[[Display], bool], timeout: float) -> None:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: condition(self))
        except TimeoutError:
            raise AssertionError(f"display on {self.url} never met the condition within {timeout}s; shows "
                                 f"crowding {self.crowding()}, topics {sorted(self.shown)}") from None


def showing(level: str) -> Callable[[Display], bool]:
    return lambda display: display.crowding() == level


async def change_crowding(b: Broadcaster, rig: Rig, level: str) -> float:
    """A feed change at the station, polled; returns when it was served (monotonic)."""
    rig.serve_flow({STATION: level})
    changed = time.monotonic()
    await poll_all(b)
    return changed


async def test_a_display_whose_edge_is_killed_moves_to_the_other_edge_and_shows_the_latest_state(
    tmp_path: Path, http_server: LoopbackHttpServer, tree_factory: Callable[..., MosquittoTree], topic_prefix: str,
) -> None:
    tree = tree_factory()
    edge1, edge2 = tree.edge_urls
    rig = Rig(tmp_path, http_server, tree.core.url, topic_prefix)
    rig.serve_rt()
    rig.serve_flow({STATION: "FULL"})
    async with running(rig.config()) as b, Display([edge1, edge2], topic_prefix) as display:
        await poll_all(b)
        await display.wait_until(showing("FULL"), timeout=10)
        assert display.url == edge1

        killed = time.monotonic()
        tree.kill(1)  # SIGKILL the display's edge (node 1: edge1)
        await change_crowding(b, rig, "MANY_SEATS_AVAILABLE")  # the state moves on while the display is away
        await display.wait_until(showing("MANY_SEATS_AVAILABLE"), timeout=CONVERGE_S)
        shown = time.monotonic() - killed
        assert display.url == edge2
        assert display.connections == 2
        assert b'"online"' in display.shown[rig.topic("broadcaster/status")]
        print(f"edge SIGKILL: the display shows the latest state from the other edge {shown:.2f} s after the kill")
        assert shown < CONVERGE_S


async def test_the_broadcaster_fails_over_to_the_second_core_and_displays_on_every_edge_converge(
    tmp_path: Path, http_server: LoopbackHttpServer, tree_factory: Callable[..., MosquittoTree], topic_prefix: str,
) -> None:
    """The recommended tree: two cores, every edge bridged to both, `mqtt.urls = [core1, core2]`."""
    tree = tree_factory(cores=2)
    core1, core2 = tree.core_urls
    rig = Rig(tmp_path, http_server, core1, topic_prefix)
    rig.serve_rt(alert_entity("A-1", header={"en": "Line 1 running slowly"}, informed=[selector(route_id="1")],
                              effect="SIGNIFICANT_DELAYS"))
    rig.serve_flow({STATION: "FULL"})
    async with (running(rig.config(mqtt={"urls": [core1, core2]})) as b,
                Display(tree.edge_urls[:1], topic_prefix) as on_edge1,
                Display(tree.edge_urls[1:], topic_prefix) as on_edge2):
        assert b.link.broker == core1
        await poll_all(b)
        for display in (on_edge1, on_edge2):
            await display.wait_until(showing("FULL"), timeout=10)

        killed = time.monotonic()
        tree.kill(0)  # SIGKILL the core the broadcaster is on
        async with asyncio.timeout(15):
            await b.link.wait_for_session(2)
        assert b.link.broker == core2
        failed_over = time.monotonic() - killed
        changed = await change_crowding(b, rig, "STANDING_ROOM_ONLY")
        for display in (on_edge1, on_edge2):
            await display.wait_until(showing("STANDING_ROOM_ONLY"), timeout=CONVERGE_S)
            assert display.connections == 1  # the edges never went away: only their bridge to core1 did
        converged = time.monotonic()
        print(f"core SIGKILL: the broadcaster's session on the second core {failed_over:.2f} s after the kill; the"
              f" displays on both edges show a feed change {converged - changed:.2f} s after it was served,"
              f" {converged - killed:.2f} s after the kill")
        assert converged - killed < CONVERGE_S
        on_core2 = await collect_retained(core2, rig.topic("#"))
        for edge in tree.edge_urls:  # a late display anywhere gets exactly the second core's state
            assert await collect_retained(edge, rig.topic("#")) == on_core2
        assert b'"online"' in on_core2[rig.topic("broadcaster/status")]  # core1's Will died with it

        # core1 comes back empty; nobody moves, and both edges keep following the broadcaster on core2.
        tree.start(0)
        await change_crowding(b, rig, "FEW_SEATS_AVAILABLE")
        for display in (on_edge1, on_edge2):
            await display.wait_until(showing("FEW_SEATS_AVAILABLE"), timeout=10)
        assert b.link.broker == core2


async def test_failing_over_to_an_edge_leaves_the_other_edges_displays_behind(
    tmp_path: Path, http_server: LoopbackHttpServer, tree_factory: Callable[..., MosquittoTree], topic_prefix: str,
) -> None:
    """What the docs advise against: one core and `mqtt.urls = [core, edge1]`. The broadcaster fails over to
    edge1 and works there (its start-up check and canary echo on the node it is on), but edge1 bridges nothing
    back: edge2's displays miss every change, even once the core is back."""
    tree = tree_factory()
    core = tree.core.url
    edge1, edge2 = tree.edge_urls
    rig = Rig(tmp_path, http_server, core, topic_prefix)
    rig.serve_rt()
    rig.serve_flow({STATION: "FULL"})
    async with (running(rig.config(mqtt={"urls": [core, edge1]})) as b,
                Display([edge1], topic_prefix) as on_edge1, Display([edge2], topic_prefix) as on_edge2):
        await poll_all(b)
        await on_edge2.wait_until(showing("FULL"), timeout=10)
        tree.kill(0)
        async with asyncio.timeout(15):
            await b.link.wait_for_session(2)
        assert b.link.broker == edge1
        await change_crowding(b, rig, "EMPTY")
        await on_edge1.wait_until(showing("EMPTY"), timeout=10)
        for _ in range(2):  # the canary judges what it published two rounds ago: it came back, on edge1
            await poll_all(b)
        assert b.publisher.mqtt_delivering
        on_edge1_now = await collect_retained(edge1, rig.topic("#"))
        for topic in b.publisher.canary_topics:  # it saw the latest copy edge1 holds, through edge1 itself
            assert b.link.observed_seq.get(topic, 0) >= orjson.loads(on_edge1_now[topic])["seq"]
        tree.start(0)  # the core is back and bridged again, but never received the change
        crowding = (await collect_retained(edge2, rig.topic(f"stations/{STATION}/#")))[
            rig.topic(f"stations/{STATION}/crowding")]
        assert orjson.loads(crowding)["level"] == "FULL"  # what edge2 got before the core died, still
        assert on_edge2.crowding() == "FULL"


async def test_a_late_display_on_any_edge_receives_the_whole_retained_state(
    tmp_path: Path, http_server: LoopbackHttpServer, tree_factory: Callable[..., MosquittoTree], topic_prefix: str,
) -> None:
    tree = tree_factory()
    rig = Rig(tmp_path, http_server, tree.core.url, topic_prefix)
    rig.serve_rt(alert_entity("A-1", header={"en": "Line 1 running slowly"}, informed=[selector(route_id="1")],
                              effect="SIGNIFICANT_DELAYS"))
    rig.serve_flow({STATION: "FULL"})
    async with running(rig.config()) as b:
        await poll_all(b)
        on_core = await collect_retained(tree.core.url, rig.topic("#"))
        assert rig.topic("lines/1/alerts/A-1") in on_core
        assert len(on_core) > 20
        for edge in tree.edge_urls:
            started = time.monotonic()
            # The bridge carries the core's publications to the edge after the core acknowledged them: read until
            # the edge holds them (bounded), not once; what arrives after a read subscribed comes live, unseen.
            assert await collect_retained_until(edge, rig.topic("#"), lambda r: r == on_core) == on_core
            print(f"late display on {edge}: {len(on_core)} retained topics in"
                  f" {time.monotonic() - started:.2f} s (including the 0.3 s settle)")
            # The MQTT 5 bridge carries the message expiry: the edge drops the state when the core would.
            async with MessageRecorder(edge, rig.topic(f"stations/{STATION}/display")) as recorder:
                (replayed,) = await recorder.wait_for_count(1)
            assert replayed.message_expiry_interval is not None
            assert 0 < replayed.message_expiry_interval <= b.config.mqtt.retained_ttl_seconds

        # A resolved alert's clear crosses the bridges live: gone from every edge as from the core.
        rig.serve_rt()
        await poll_all(b)
        await poll_all(b)  # resolve_after_missing = 2
        on_core = await collect_retained(tree.core.url, rig.topic("#"))
        assert rig.topic("lines/1/alerts/A-1") not in on_core
        for edge in tree.edge_urls:
            assert await collect_retained(edge, rig.topic("#"), settle=0.3) == on_core


async def test_an_edge_restarted_without_its_persistence_gets_the_whole_state_back_from_the_core(
    tmp_path: Path, http_server: LoopbackHttpServer, tree_factory: Callable[..., MosquittoTree], topic_prefix: str,
) -> None:
    """Also while it was down an alert was resolved: an edge starting from nothing cannot keep the stale alert,
    which an edge restarted from its own database does (the MQTT 5 bridge's session ends with the link, so the
    clear is not queued for it; docs/mqtt.md, "A Mosquitto bridge tree")."""
    tree = tree_factory(edge_persistence=True)
    rig = Rig(tmp_path, http_server, tree.core.url, topic_prefix)
    rig.serve_rt(alert_entity("A-1", header={"en": "Line 1 running slowly"}, informed=[selector(route_id="1")],
                              effect="SIGNIFICANT_DELAYS"))
    rig.serve_flow({STATION: "FULL"})
    alert = rig.topic("lines/1/alerts/A-1")
    async with running(rig.config()) as b:
        await poll_all(b)
        for edge in tree.edge_urls:
            assert alert in await collect_retained(edge, rig.topic("#"), settle=0.3)
        tree.stop_node(1)  # edge1 saves its database
        tree.kill(2)  # edge2 dies...
        tree.wipe(2)  # ...and its disk with it
        rig.serve_rt()
        await poll_all(b)
        await poll_all(b)  # A-1 resolved while both edges are down
        await change_crowding(b, rig, "EMPTY")
        on_core = await collect_retained(tree.core.url, rig.topic("#"))
        assert alert not in on_core

        started = time.monotonic()
        await asyncio.to_thread(tree.start, 2)
        rebuilt = await collect_retained(tree.url(2), rig.topic("#"), settle=0.3)
        print(f"edge restarted from nothing: {len(rebuilt)} retained topics back from the core"
              f" {time.monotonic() - started:.2f} s after its start (including the 0.3 s settle)")
        assert rebuilt == on_core

        await asyncio.to_thread(tree.start, 1)
        from_disk = await collect_retained(tree.url(1), rig.topic("#"), settle=0.3)
        assert {topic: payload for topic, payload in from_disk.items() if topic != alert} == on_core
        assert alert in from_disk  # the resolved alert lingers on the edge that kept its database



async def test_a_killed_broadcasters_will_reaches_the_displays_on_every_edge(
    tmp_path: Path, http_server: LoopbackHttpServer, tree_factory: Callable[..., MosquittoTree], topic_prefix: str,
) -> None:
    """The core publishes the Last Will (after the Will Delay, 2 s here); the bridges carry it, retained."""
    tree = tree_factory()
    rig = Rig(tmp_path, http_server, tree.core.url, topic_prefix)
    rig.serve_rt()
    rig.serve_flow({STATION: "FULL"})
    status = rig.topic("broadcaster/status")

    def says(word: str) -> Callable[[Display], bool]:
        return lambda display: f'"status":"{word}"'.encode() in display.shown.get(status, b"")

    async with Display(tree.edge_urls[:1], topic_prefix) as on_edge1, \
            Display(tree.edge_urls[1:], topic_prefix) as on_edge2:
        run = await asyncio.create_subprocess_exec(sys.executable, "-m", "broadcaster", "run", "-c",
                                                   str(rig.write_config()), stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL)
        try:
            for display in (on_edge1, on_edge2):
                await display.wait_until(says("online"), timeout=30)
        finally:
            killed = time.monotonic()
            run.send_signal(signal.SIGKILL)
            await run.wait()
        for display in (on_edge1, on_edge2):
            await display.wait_until(says("offline"), timeout=15)
        print(f"broadcaster SIGKILL: both edges' displays read offline {time.monotonic() - killed:.2f} s after"
              " it (Will Delay 2 s)")
    for edge in tree.edge_urls:  # retained on the edges too: a late display reads offline
        assert b'"offline"' in (await collect_retained(edge, status))[status]
