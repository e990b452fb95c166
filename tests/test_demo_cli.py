"""`broadcaster demo` as a user runs it: a process that starts within seconds with no broker, account or network
of its own, serves its URLs, publishes the city's retained state on its embedded broker, and stops on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiomqtt
import httpx
import orjson
import pytest

from broadcaster.cli import build_parser

STARTUP_LIMIT_S = 15.0


async def read_urls(process: asyncio.subprocess.Process) -> dict[str, str]:
    """The name -> URL lines the demo prints once it is up (with --no-browser-hint, nothing else)."""
    assert process.stdout is not None
    urls: dict[str, str] = {}
    while "MQTT over WebSocket" not in urls:
        line = (await process.stdout.readline()).decode()
        if not line:
            raise AssertionError(f"the demo exited before printing its URLs (status {await process.wait()})")
        name, _, url = line.strip().rpartition("  ")
        urls[name.strip()] = url.strip()
    return urls


@pytest.fixture
async def demo_process() -> AsyncIterator[asyncio.subprocess.Process]:
    env = {**os.environ, "BROADCASTER_LOG_LEVEL": "warning"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broadcaster", "demo", "--port", "0", "--speed", "60", "--no-browser-hint",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_demo_starts_in_seconds_serves_and_stops_on_ctrl_c(
    demo_process: asyncio.subprocess.Process,
) -> None:
    started = time.monotonic()
    async with asyncio.timeout(STARTUP_LIMIT_S):
        urls = await read_urls(demo_process)
    startup = time.monotonic() - started
    print(f"demo up in {startup:.2f} s")
    assert set(urls) >= {"operator dashboard", "station display", "Atom timeline", "MQTT (3.1.1)"}

    async with httpx.AsyncClient(timeout=5) as http:
        status = (await http.get(urls["operator dashboard"] + "api/status")).json()
        assert status["broadcaster"] == {"running": True, "mqtt_connected": True, "mqtt_error": None}
        page = await http.get(urls["station display"])
        assert page.status_code == 200
        assert "/static/display.js" in page.text
        script = await http.get(urls["operator dashboard"] + "static/mqtt.js")
        assert script.status_code == 200
        assert "class MqttClient" in script.text
        timeline = await http.get(urls["Atom timeline"])
        assert timeline.status_code == 200
        assert "<feed" in timeline.text

    # A display vendor's first step: read one station's screen from the broker with any MQTT 3.1.1 client.
    mqtt = urlsplit(urls["MQTT (3.1.1)"])
    assert mqtt.hostname is not None
    assert mqtt.port is not None
    async with asyncio.timeout(10), aiomqtt.Client(mqtt.hostname, mqtt.port, identifier="vendor",
                                                   protocol=aiomqtt.ProtocolVersion.V311) as client:
        await client.subscribe("metro/v1/stations/peoples-square/display", qos=1)
        message = await anext(aiter(client.messages))
    assert isinstance(message.payload, bytes)
    display = orjson.loads(message.payload)
    assert display["schema"] == "broadcaster.mqtt.station-display/1"
    assert display["station"]["names"] == {"zh": "人民广场", "en": "People's Square"}
    assert [entry["line"]["id"] for entry in display["lines"]] == ["1", "2"]

    demo_process.send_signal(signal.SIGINT)
    async with asyncio.timeout(15):
        assert await demo_process.wait() == 0


async def test_a_port_in_use_is_one_line_and_status_1() -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broadcaster", "demo", "--port", str(port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(STARTUP_LIMIT_S):
            out, err = await process.communicate()
    finally:
        blocker.close()
        await blocker.wait_closed()
    assert process.returncode == 1
    assert out == b""
    last_line = err.decode().strip().splitlines()[-1]
    assert last_line.startswith(f"broadcaster: demo: cannot listen on 127.0.0.1 ports {port}")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--speed", "0"], "argument --speed: '0': must be above 0 and at most 3600"),
        (["demo", "--speed", "nan"], "argument --speed: 'nan': must be above 0 and at most 3600"),
        (["once", "--wait", "-1"], "argument --wait: '-1': must be at least 0 and at most 3600"),
        (["once", "--wait", "soon"], "argument --wait: 'soon' is not a number"),
    ],
)
def test_out_of_range_numbers_are_usage_errors_naming_the_option(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
