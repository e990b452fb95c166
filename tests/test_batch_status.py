"""`once` from cron is not an outage: a batch run that ended cleanly leaves the status `online` with mode
`batch` and the `valid_until` of what it published (MQTT contract v1.2); a dead `run` still reads `offline`
through its Last Will (tests/test_cli_process.py keeps proving that)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from rig import Rig, both_protocols
from support import LoopbackHttpServer, MessageRecorder, MosquittoBroker, collect_retained
from support.gtfs_rt_builders import alert_entity, selector

from broadcaster.contract import BroadcasterStatusPayload
from broadcaster.payloads import status_body

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


@pytest.fixture
def rig(tmp_path: Path, http_server: LoopbackHttpServer, mosquitto: MosquittoBroker, topic_prefix: str,
        speak_protocol: str) -> Rig:
    r = Rig(tmp_path, http_server, mosquitto.url, topic_prefix, protocol=speak_protocol)
    r.serve_rt(alert_entity("A-1", header={"zh": "1号线限速", "en": "Line 1 running slowly"},
                            informed=[selector(route_id="1")], effect="SIGNIFICANT_DELAYS"))
    r.serve_flow({"S04": "STANDING_ROOM_ONLY"})
    return r


def broadcaster(*args: str) -> list[str]:
    return [sys.executable, "-m", "broadcaster", *args]


def test_the_batch_status_matches_the_contract() -> None:
    body = status_body("online", "b1", T0, "i1", mode="batch", valid_until=T0 + timedelta(minutes=30))
    payload = BroadcasterStatusPayload.model_validate(body)
    assert (payload.status, payload.mode, payload.valid_until) == ("online", "batch", "2026-11-25T08:30:00+00:00")
    assert "valid_until" not in status_body("online", "b1", T0, "i1", mode="service")


@both_protocols
async def test_a_clean_once_leaves_the_status_online_as_a_batch_until_its_data_expires(rig: Rig) -> None:
    started = datetime.now(UTC)
    process = await asyncio.create_subprocess_exec(
        *broadcaster("once", "-c", str(rig.write_config(mqtt={"retained_ttl_seconds": 600}))),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    retained = await collect_retained(rig.mqtt_url, rig.topic("#"))
    status = orjson.loads(retained[rig.topic("broadcaster/status")])
    BroadcasterStatusPayload.model_validate(status)
    assert status["status"] == "online"  # not "offline": displays keep showing the data
    assert status["mode"] == "batch"
    valid_until = datetime.fromisoformat(status["valid_until"])
    assert started + timedelta(seconds=590) <= valid_until <= datetime.now(UTC) + timedelta(seconds=600)
    line = orjson.loads(retained[rig.topic("lines/1/status")])
    assert datetime.fromisoformat(line["valid_until"]) <= valid_until  # the status outlives no payload it covers


async def test_a_sigkilled_run_after_a_batch_still_reads_offline(rig: Rig) -> None:
    """The Will of a long-running service says offline, whatever a cron run said before it."""
    path = rig.write_config()
    once = await asyncio.create_subprocess_exec(*broadcaster("once", "-c", str(path)),
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    async with asyncio.timeout(60):
        assert await once.wait() == 0
    async with MessageRecorder(rig.mqtt_url, rig.topic("broadcaster/status")) as recorder:
        run = await asyncio.create_subprocess_exec(*broadcaster("run", "-c", str(path)),
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await recorder.wait_for(
                lambda ms: bool(ms) and orjson.loads(ms[-1].payload).get("mode") == "service", timeout=30)
        finally:
            run.send_signal(signal.SIGKILL)
            await run.wait()
        await recorder.wait_for(lambda ms: bool(ms) and orjson.loads(ms[-1].payload)["status"] == "offline", timeout=15)
    last = orjson.loads(recorder.messages[-1].payload)
    assert (last["status"], last["mode"]) == ("offline", "service")
