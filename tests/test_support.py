"""The test infrastructure itself: real broker, real HTTP server, bounded MQTT helpers."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from support import MessageRecorder, collect_retained, publish
from support.long_tests import LONG_TESTS, long_tests_first
from support.mosquitto import MosquittoBroker

if TYPE_CHECKING:
    from conftest import MosquittoFactory
    from support import LoopbackHttpServer


async def test_retained_message_survives_subscriber_reconnect(mosquitto: MosquittoBroker, topic_prefix: str) -> None:
    await publish(mosquitto.url, f"{topic_prefix}/a", b"one", retain=True)
    await publish(mosquitto.url, f"{topic_prefix}/b", b"two", retain=True)
    await publish(mosquitto.url, f"{topic_prefix}/live", b"not kept")

    first = await collect_retained(mosquitto.url, f"{topic_prefix}/#", settle=0.3)
    second = await collect_retained(mosquitto.url, f"{topic_prefix}/#", settle=0.3)

    assert first == {f"{topic_prefix}/a": b"one", f"{topic_prefix}/b": b"two"}
    assert second == first


async def test_empty_retained_payload_clears_the_topic(mosquitto: MosquittoBroker, topic_prefix: str) -> None:
    await publish(mosquitto.url, f"{topic_prefix}/alert", b"active", retain=True)
    await publish(mosquitto.url, f"{topic_prefix}/alert", b"", retain=True)

    assert await collect_retained(mosquitto.url, f"{topic_prefix}/#", settle=0.3) == {}


async def test_recorder_sees_live_messages_and_settles(mosquitto: MosquittoBroker, topic_prefix: str) -> None:
    async with MessageRecorder(mosquitto.url, f"{topic_prefix}/+") as recorder:
        await publish(mosquitto.url, f"{topic_prefix}/x", b"1")
        await publish(mosquitto.url, f"{topic_prefix}/y", b"2", retain=True)
        messages = await recorder.wait_for(lambda ms: {m.topic for m in ms} >= {f"{topic_prefix}/y"})
        rest = await recorder.settle(quiet=0.3)

    assert [m.payload for m in rest] == [b"1", b"2"]
    assert messages[0].topic == f"{topic_prefix}/x"
    assert not any(m.retain for m in rest)  # live delivery clears the flag unless retain_as_published


async def test_recorder_wait_is_bounded(mosquitto: MosquittoBroker, topic_prefix: str) -> None:
    async with MessageRecorder(mosquitto.url, f"{topic_prefix}/#") as recorder:
        with pytest.raises(TimeoutError, match="condition not met"):
            await recorder.wait_for_count(1, timeout=0.2)


async def test_retain_as_published_keeps_the_flag(mosquitto: MosquittoBroker, topic_prefix: str) -> None:
    async with MessageRecorder(mosquitto.url, f"{topic_prefix}/#", retain_as_published=True) as recorder:
        await publish(mosquitto.url, f"{topic_prefix}/s", b"state", retain=True)
        [message] = await recorder.wait_for_count(1)

    assert message.retain


async def test_restart_keeps_port_and_retained_state(fresh_mosquitto: MosquittoBroker) -> None:
    port = fresh_mosquitto.port
    await publish(fresh_mosquitto.url, "state/a", b"kept", retain=True)

    fresh_mosquitto.restart()

    assert fresh_mosquitto.port == port
    assert await collect_retained(fresh_mosquitto.url, "state/#", settle=0.3) == {"state/a": b"kept"}
    assert "mosquitto version" in fresh_mosquitto.log_text()


async def test_kill_loses_retained_state_since_last_clean_stop(fresh_mosquitto: MosquittoBroker) -> None:
    await publish(fresh_mosquitto.url, "state/saved", b"1", retain=True)
    fresh_mosquitto.restart()  # clean stop: saved
    await publish(fresh_mosquitto.url, "state/lost", b"2", retain=True)

    fresh_mosquitto.restart(kill=True)

    assert await collect_retained(fresh_mosquitto.url, "state/#", settle=0.3) == {"state/saved": b"1"}


async def test_broker_without_persistence_forgets_on_restart(mosquitto_factory: MosquittoFactory) -> None:
    broker = mosquitto_factory(persistence=False)
    await publish(broker.url, "state/a", b"gone", retain=True)

    broker.restart()

    assert await collect_retained(broker.url, "state/#", settle=0.3) == {}


def test_stopped_broker_refuses_connections(fresh_mosquitto: MosquittoBroker) -> None:
    fresh_mosquitto.stop()

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((fresh_mosquitto.host, fresh_mosquitto.port), timeout=1).close()
    assert not fresh_mosquitto.running


def test_bad_config_fails_fast_with_the_log(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path, extra_config="no_such_option 1")

    with pytest.raises(RuntimeError, match="exited with status"):
        broker.start()


async def test_http_route_and_recorded_request(http_server: LoopbackHttpServer) -> None:
    http_server.set_route("/feed.pb", b"\x0a\x01", content_type="application/x-protobuf", headers={"x-a": "1"})

    async with httpx.AsyncClient() as client:
        response = await client.post(http_server.url("/feed.pb?key=abc"), content=b"hello", headers={"X-B": "2"})
        missing = await client.get(http_server.url("/nothing"))

    assert response.status_code == 200
    assert response.content == b"\x0a\x01"
    assert response.headers["content-type"] == "application/x-protobuf"
    assert response.headers["x-a"] == "1"
    assert missing.status_code == 404
    first, second = http_server.requests
    assert (first.method, first.path, first.query, first.body) == ("POST", "/feed.pb", "key=abc", b"hello")
    assert first.header("X-B") == "2"
    assert second.path == "/nothing"


async def test_http_conditional_get(http_server: LoopbackHttpServer) -> None:
    last_modified = "Wed, 25 Nov 2026 10:00:00 GMT"
    http_server.set_route("/f", b"body", etag='"v1"', last_modified=last_modified)

    async with httpx.AsyncClient() as client:
        by_etag = await client.get(http_server.url("/f"), headers={"If-None-Match": '"v1"'})
        other_etag = await client.get(http_server.url("/f"), headers={"If-None-Match": '"v0"'})
        by_date = await client.get(http_server.url("/f"), headers={"If-Modified-Since": last_modified})
        older = await client.get(http_server.url("/f"), headers={"If-Modified-Since": "Wed, 25 Nov 2026 09:59:59 GMT"})

    assert (by_etag.status_code, by_etag.content, by_etag.headers["etag"]) == (304, b"", '"v1"')
    assert (other_etag.status_code, other_etag.content) == (200, b"body")
    assert by_date.status_code == 304
    assert older.status_code == 200


async def test_http_one_shot_responses_come_first(http_server: LoopbackHttpServer) -> None:
    http_server.set_route("/api", b"ok")
    http_server.push_response("/api", b"slow down", status=429, headers={"Retry-After": "1"})

    async with httpx.AsyncClient() as client:
        statuses = [(await client.get(http_server.url("/api"))).status_code for _ in range(2)]

    assert statuses == [429, 200]


async def test_http_drip_really_drips(http_server: LoopbackHttpServer) -> None:
    body = bytes(range(256)) * 8  # 2048 bytes at 4096 B/s: about half a second
    http_server.set_route("/slow", body, drip_bytes_per_s=4096)

    arrivals: list[float] = []
    received = b""
    async with httpx.AsyncClient() as client, client.stream("GET", http_server.url("/slow")) as response:
        async for piece in response.aiter_raw():
            arrivals.append(time.monotonic())
            received += piece

    assert received == body
    assert response.headers["content-length"] == str(len(body))
    assert len(arrivals) > 5
    assert arrivals[-1] - arrivals[0] >= 0.3


async def test_http_chunked_has_no_content_length(http_server: LoopbackHttpServer) -> None:
    http_server.set_route("/c", b"x" * 50_000, chunked=True)

    async with httpx.AsyncClient() as client:
        response = await client.get(http_server.url("/c"))

    assert response.content == b"x" * 50_000
    assert "content-length" not in response.headers
    assert response.headers["transfer-encoding"] == "chunked"


async def test_http_delay(http_server: LoopbackHttpServer) -> None:
    http_server.set_route("/late", b"z", delay_s=2)

    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(http_server.url("/late"), timeout=0.2)


async def test_http_server_stops_even_with_a_request_in_flight(http_server: LoopbackHttpServer) -> None:
    http_server.set_route("/slow", b"y" * 10_000, drip_bytes_per_s=1000)

    async with (
        httpx.AsyncClient() as client,
        client.stream("GET", http_server.url("/slow")) as response,
    ):
        pieces = response.aiter_raw()
        await anext(pieces)
        await asyncio.to_thread(http_server.stop, force=True)
        with pytest.raises(httpx.RemoteProtocolError):
            async for _ in pieces:
                pass


def test_every_long_test_named_for_the_ordering_exists() -> None:
    tests = Path(__file__).parent
    missing = []
    for key in LONG_TESTS:
        file, _, function = key.partition("::")
        source = (tests / file).read_text(encoding="utf-8") if (tests / file).exists() else ""
        if not re.search(rf"^(async )?def {re.escape(function)}\(", source, re.MULTILINE):
            missing.append(key)
    assert missing == []


def test_long_tests_go_first_longest_first_and_the_rest_keep_their_order() -> None:
    @dataclass
    class Node:
        nodeid: str

    short = [Node("tests/test_a.py::test_one"), Node("tests/test_a.py::test_two"), Node("tests/test_b.py::test_x")]
    longest, second = (Node(f"tests/{key}[param]") for key in LONG_TESTS[:2])
    ordered = long_tests_first([short[0], second, short[1], longest, short[2]])
    assert ordered == [longest, second, *short]
