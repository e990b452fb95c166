"""The `broadcaster` command as an operator runs it: real processes, a real broker, loopback feeds."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
from rig import Rig, both_protocols
from support import (
    LoopbackHttpServer,
    MessageRecorder,
    MosquittoBroker,
    ReceivedMessage,
    collect_retained,
    free_port,
)
from support.gtfs_rt_builders import alert_entity, selector

from broadcaster.config import load_config
from broadcaster.resources import data_dir

ROOT = Path(__file__).resolve().parent.parent


def broadcaster(*args: str) -> list[str]:
    return [sys.executable, "-m", "broadcaster", *args]


@pytest.fixture
def rig(tmp_path: Path, http_server: LoopbackHttpServer, mosquitto: MosquittoBroker, topic_prefix: str,
        speak_protocol: str) -> Rig:
    r = Rig(tmp_path, http_server, mosquitto.url, topic_prefix, protocol=speak_protocol)
    r.serve_rt(alert_entity("A-1", header={"zh": "1号线限速", "en": "Line 1 running slowly"},
                            informed=[selector(route_id="1")], effect="SIGNIFICANT_DELAYS"))
    r.serve_flow({"S04": "STANDING_ROOM_ONLY"})
    return r


async def run_command(*args: str, timeout: float = 60) -> tuple[int, str]:  # noqa: ASYNC109
    process = await asyncio.create_subprocess_exec(
        *broadcaster(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    async with asyncio.timeout(timeout):
        out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_once_publishes_the_documented_topics_and_exits_0(rig: Rig) -> None:
    path = rig.write_config()
    async with MessageRecorder(rig.mqtt_url, rig.topic("notices")) as notices:
        status, output = await run_command("once", "-c", str(path))
        assert status == 0, output
        assert len(await notices.wait_for_count(1)) == 1
    retained = await collect_retained(rig.mqtt_url, rig.topic("#"))
    assert orjson.loads(retained[rig.topic("lines/1/status")])["status"] == "delayed"
    assert rig.topic("lines/1/alerts/A-1") in retained
    assert rig.topic("stations/S04/crowding") in retained
    assert rig.topic("stations/S04/display") in retained
    # A clean batch run is not an outage: the status reads online, as a batch, until its data expires
    # (contract v1.2; before, it read offline and blanked every display between cron runs).
    status = orjson.loads(retained[rig.topic("broadcaster/status")])
    assert (status["status"], status["mode"]) == ("online", "batch")
    assert status["valid_until"]


async def test_once_twice_announces_once(rig: Rig) -> None:
    path = rig.write_config()
    async with MessageRecorder(rig.mqtt_url, rig.topic("notices")) as notices:
        for _ in range(2):
            status, output = await run_command("once", "-c", str(path))
            assert status == 0, output
        assert len(await notices.settle(quiet=0.5)) == 1


async def test_once_exits_1_with_a_clear_message_when_the_broker_is_down(rig: Rig) -> None:
    path = rig.write_config(mqtt={"url": f"mqtt://127.0.0.1:{free_port()}", "connect_timeout_seconds": 1.5})
    status, output = await run_command("once", "-c", str(path))
    assert status == 1
    assert "unreachable" in output
    assert "MQTT broker mqtt://127.0.0.1:" in output


async def test_once_gives_up_after_its_wait_leaving_the_notice_queued_for_the_next_run(rig: Rig) -> None:
    """A webhook that refuses connections: `--wait 1` exits 1 promptly, and the notice is still owed."""
    receiver = f"http://127.0.0.1:{free_port()}/hook"
    path = rig.write_config(channels=[{"name": "hook", "kind": "webhook", "url": receiver, "languages": ["en"],
                                       "timeout_seconds": 1}])
    status, output = await run_command("once", "-c", str(path), "--wait", "1", timeout=20)
    assert status == 1, output
    assert "notice(s) still queued in the outbox" in output
    db = sqlite3.connect(rig.tmp_path / "state" / "broadcaster.db")
    try:
        owed = db.execute("SELECT count(*) FROM outbox WHERE channel = 'hook' AND status = 'pending'").fetchone()
    finally:
        db.close()
    assert owed[0] >= 1


async def test_once_exits_1_naming_the_feed_that_failed(rig: Rig) -> None:
    rig.server.set_route("/rt.pb", b"<html>oops</html>", status=500)
    status, output = await run_command("once", "-c", str(rig.write_config()))
    assert status == 1
    assert "feed 'ops'" in output
    assert "HTTP 500" in output


@both_protocols
async def test_run_stops_cleanly_on_sigterm_and_says_offline(rig: Rig) -> None:
    path = rig.write_config()
    async with MessageRecorder(rig.mqtt_url, rig.topic("#")) as recorder:
        process = await asyncio.create_subprocess_exec(
            *broadcaster("run", "-c", str(path)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            await recorder.wait_for(lambda ms: any(m.topic.endswith("/lines/1/alerts/A-1") for m in ms), timeout=20)
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                _, err = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, err.decode()
        status = await recorder.wait_for(
            lambda ms: any(b'"offline"' in m.payload for m in ms if m.topic.endswith("broadcaster/status"))
        )
    states = [orjson.loads(m.payload)["status"] for m in status if m.topic.endswith("broadcaster/status")]
    assert states[-1] == "offline"


@both_protocols
async def test_sigkilled_broadcaster_reads_offline_through_its_last_will(rig: Rig) -> None:
    path = rig.write_config()  # will_delay_seconds = 2
    process = await asyncio.create_subprocess_exec(
        *broadcaster("run", "-c", str(path)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        async with MessageRecorder(rig.mqtt_url, rig.topic("broadcaster/status")) as recorder:
            await recorder.wait_for(lambda ms: any(b'"online"' in m.payload for m in ms), timeout=20)
            os.kill(process.pid, signal.SIGKILL)
            await recorder.wait_for(lambda ms: b'"offline"' in ms[-1].payload, timeout=10)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


def test_wheel_ships_templates_and_example_config(tmp_path: Path) -> None:
    """A non-editable install must find the templates and the example: they travel inside the wheel."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheel = next(tmp_path.glob("broadcaster-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"broadcaster/_data/templates/{p.name}" for p in data_dir("templates").glob("*.j2")}
    expected |= {"broadcaster/_data/config/example.toml", "broadcaster/_data/config/network/stops.txt",
                 "broadcaster/_data/config/samples/gtfs-rt.pb"}
    # The commuter page's files (the demo's board serves mqtt.js from there too).
    expected |= {f"broadcaster/public/static/{name}" for name in
                 ("commuter.html", "commuter.js", "commuter.css", "mqtt.js", "sw.js", "window.js")}
    assert expected <= names
    # No runtime state travels: no database, no state directory (the code package broadcaster/state/ is not one).
    assert not any(n.endswith(".db") or ("/state/" in n and not n.startswith("broadcaster/state/")) for n in names)


async def test_announce_and_correct_without_a_running_broadcaster(rig: Rig) -> None:
    path = rig.write_config()
    async with MessageRecorder(rig.mqtt_url, rig.topic("notices")) as notices:
        status, output = await run_command(
            "announce", "-c", str(path), "--line", "2", "--severity", "severe", "--effect", "NO_SERVICE",
            "--text-zh", "2号线因故暂停运营", "--text-en", "Line 2 suspended", "--until", "23:59",
        )
        assert status == 0, output
        notice_id = output.strip().splitlines()[-1]
        assert notice_id.startswith("alert-manual-")
        got = [orjson.loads(m.payload) for m in await notices.wait_for_count(1)]
        assert got[0]["priority"] == "emergency"
        status, output = await run_command(
            "correct", "-c", str(path), notice_id, "--text-zh", "2号线列车晚点，并未停运"
        )
        assert status == 0, output
        got = [orjson.loads(m.payload) for m in await notices.wait_for_count(2)]
        assert got[1]["kind"] == "correction"
        assert got[1]["notice_id"] == notice_id
    retained = await collect_retained(rig.mqtt_url, rig.topic("lines/2/#"))
    assert orjson.loads(retained[rig.topic("lines/2/status")])["status"] == "suspended"
    alert = orjson.loads(retained[rig.topic(f"lines/2/alerts/{notice_id.removeprefix('alert-')}")])
    assert alert["header"]["zh"] == "2号线列车晚点，并未停运"


async def test_announce_goes_through_the_running_broadcaster(rig: Rig) -> None:
    path = rig.write_config()
    async with MessageRecorder(rig.mqtt_url, rig.topic("#")) as recorder:
        process = await asyncio.create_subprocess_exec(
            *broadcaster("run", "-c", str(path)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            await recorder.wait_for(lambda ms: any(b'"online"' in m.payload for m in ms), timeout=20)
            status, output = await run_command(
                "announce", "-c", str(path), "--station", "S04", "--text-en", "Exit B closed", "--text-zh", "B口关闭",
            )
            assert status == 0, output
            notice_id = output.strip().splitlines()[-1]
            await recorder.wait_for(
                lambda ms: any(m.topic.endswith("/notices") and notice_id.encode() in m.payload for m in ms)
            )
        finally:
            process.terminate()
            await process.wait()
    assert process.returncode == 0


async def test_announce_with_an_unknown_line_fails_clearly(rig: Rig) -> None:
    status, output = await run_command("announce", "-c", str(rig.write_config()), "--line", "99", "--text-en", "x")
    assert status == 2  # a usage error, refused before the broker is contacted (tests/test_cli_validation.py)
    assert "unknown line '99'" in output


async def test_a_quick_restart_causes_no_offline_flicker(rig: Rig) -> None:
    """SIGKILL, then a new process within the Will Delay: displays never see "offline"."""
    path = rig.write_config(mqtt={"will_delay_seconds": 20})
    async with MessageRecorder(rig.mqtt_url, rig.topic("broadcaster/status")) as recorder:
        for _ in range(2):
            process = await asyncio.create_subprocess_exec(
                *broadcaster("run", "-c", str(path)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                online = len([m for m in recorder.messages if b'"online"' in m.payload])

                def another_online(messages: Sequence[ReceivedMessage], seen: int = online) -> bool:
                    return len([m for m in messages if b'"online"' in m.payload]) > seen

                await recorder.wait_for(another_online, timeout=20)
            finally:
                os.kill(process.pid, signal.SIGKILL)
                await process.wait()
        # The second process was killed too: within its delay nothing is said; after it, "offline".
        states = [orjson.loads(m.payload)["status"] for m in recorder.messages if m.payload]
        assert "offline" not in states


@pytest.mark.timeout(90)
async def test_with_the_production_will_delay_a_dead_broadcaster_reads_offline_within_35_s(rig: Rig) -> None:
    path = rig.write_config(mqtt={"will_delay_seconds": 30})  # the default of the example and the docs
    process = await asyncio.create_subprocess_exec(
        *broadcaster("run", "-c", str(path)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        async with MessageRecorder(rig.mqtt_url, rig.topic("broadcaster/status")) as recorder:
            await recorder.wait_for(lambda ms: any(b'"online"' in m.payload for m in ms), timeout=20)
            os.kill(process.pid, signal.SIGKILL)
            # Not at once (a quick restart would have been in time) ...
            with pytest.raises(TimeoutError):
                await recorder.wait_for(lambda ms: b'"offline"' in ms[-1].payload, timeout=20)
            # ... but within 35 s of the death.
            await recorder.wait_for(lambda ms: b'"offline"' in ms[-1].payload, timeout=15)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@pytest.mark.parametrize("mqtt_protocol", ["3.1.1"])
async def test_with_mqtt_3_1_1_the_will_says_offline_at_once_whatever_the_will_delay(rig: Rig) -> None:
    """MQTT 3.1.1 has no Will Delay: a 3.1.1 display reads `offline` as soon as the broker notices the death,
    though the config asks for 30 s (docs/mqtt.md: a restart may show `offline` briefly)."""
    path = rig.write_config(mqtt={"will_delay_seconds": 30})
    process = await asyncio.create_subprocess_exec(
        *broadcaster("run", "-c", str(path)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        async with MessageRecorder(rig.mqtt_url, rig.topic("broadcaster/status")) as recorder:
            assert recorder.protocol == "3.1.1"
            await recorder.wait_for(lambda ms: any(b'"online"' in m.payload for m in ms), timeout=20)
            os.kill(process.pid, signal.SIGKILL)
            await recorder.wait_for(lambda ms: b'"offline"' in ms[-1].payload, timeout=10)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


def two_installations(rig: Rig) -> tuple[Path, Path]:
    """Two configs with the same MQTT client id and their own state directories (two machines, say)."""
    paths = []
    for name in ("first", "second"):
        written = rig.write_config(state={"directory": str(rig.tmp_path / f"state-{name}")})
        paths.append(written.rename(rig.tmp_path / f"{name}.toml"))
    return paths[0], paths[1]


def statuses(messages: Sequence[ReceivedMessage]) -> list[dict[str, str]]:
    return [orjson.loads(m.payload) for m in messages if m.topic.endswith("broadcaster/status") and m.payload]


@both_protocols
async def test_a_second_installation_with_the_same_client_id_refuses_to_start(rig: Rig) -> None:
    first_config, second_config = two_installations(rig)
    async with MessageRecorder(rig.mqtt_url, rig.topic("#")) as recorder:
        first = await asyncio.create_subprocess_exec(
            *broadcaster("run", "-c", str(first_config)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            await recorder.wait_for(lambda ms: any(s["status"] == "online" for s in statuses(ms)), timeout=20)
            await recorder.wait_for(lambda ms: any(m.topic.endswith("/lines/1/alerts/A-1") for m in ms))
            first_instance = statuses(recorder.messages)[-1]["instance"]

            for command in ("run", "once"):
                code, output = await run_command(command, "-c", str(second_config), timeout=30)
                assert code == 1, output
                assert "another broadcaster is online" in output, output
                assert load_config(first_config).mqtt.client_id in output, output
                assert first_instance in output, output  # names the one holding the client id

            # The first one kept its session (no takeover, no second "online"); the second fetched, queued and
            # published nothing.
            assert first.returncode is None
            assert {s["instance"] for s in statuses(recorder.messages)} == {first_instance}
            assert len(statuses(recorder.messages)) == 1
            second_db = sqlite3.connect(rig.tmp_path / "state-second" / "broadcaster.db")
            try:
                assert second_db.execute("SELECT count(*) FROM feeds").fetchone() == (0,)
                assert second_db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
            finally:
                second_db.close()

            # Once the first stops cleanly, the second starts.
            first.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                assert await first.wait() == 0
            code, output = await run_command("once", "-c", str(second_config), timeout=30)
            assert code == 0, output
            second_instances = {s["instance"] for s in statuses(recorder.messages)} - {first_instance}
            assert len(second_instances) == 1
        finally:
            if first.returncode is None:
                first.kill()
                await first.wait()
