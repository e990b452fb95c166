"""A 304 is a good fetch of the same content in every process (issue 11, defect 3).

An alert removed from a feed is resolved after `resolve_after_missing` good fetches that lack it. When the feed
server answers every fetch after the first with 304 Not Modified, those fetches must count too, even when each
one is made by a new process (`broadcaster once` from cron, a restarted `broadcaster run`): the content they
confirm is the last committed one, which a new process has to take from the database, not from memory.
Real processes, a real Mosquitto, the loopback feed server answering conditional requests, a Mastodon server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
from rig import NETWORK_DIR, Rig
from support import MessageRecorder, collect_retained
from support.gtfs_rt_builders import alert_entity, selector
from support.microblog_fixture import MicroblogServer

ALERT = "A-GONE"
ALERT_TOPIC = f"lines/1/alerts/{ALERT}"


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "broadcaster", *args]


async def _once(config: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        *_command("once", "-c", str(config)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    assert process.returncode == 0, out.decode()


def _write_config(rig: Rig, server: MicroblogServer, *, poll_seconds: float = 3600) -> Path:
    """Three good fetches without the alert resolve it; feeds polled every `poll_seconds` by `run`."""
    mastodon = {"name": "mastodon", "kind": "mastodon", "url": server.url, "token": {"env": "T_MASTODON"},
                "languages": ["en"]}
    path = rig.write_config(state={"resolve_after_missing": 3}, channels=[mastodon])
    text = path.read_text(encoding="utf-8").replace("[[feeds]]\n", f"[[feeds]]\npoll_seconds = {poll_seconds}\n")
    path.write_text(text, encoding="utf-8")
    return path


def _missing(rig: Rig) -> int | None:
    """The committed `missing` count of the alert (None once it is resolved), read as an operator could."""
    db = sqlite3.connect(rig.tmp_path / "state" / "broadcaster.db")
    try:
        row = db.execute("SELECT body FROM state WHERE kind = 'alert' AND key = ?", (ALERT,)).fetchone()
    finally:
        db.close()
    return None if row is None else int(orjson.loads(row[0])["missing"])


async def _announce_then_remove(rig: Rig, config: Path) -> None:
    """`once` announces the alert (200, ETag v1); then the feed drops it (ETag v2) and `once` fetches that (200)."""
    rig.serve_rt(alert_entity(ALERT, header={"en": "Escalator out of order"}, informed=[selector(route_id="1")]),
                 etag='"v1"')
    await _once(config)
    assert _missing(rig) == 0
    rig.serve_rt(etag='"v2"')  # the alert is gone; from now on every conditional fetch is answered 304
    await _once(config)
    assert _missing(rig) == 1


async def _until(condition: Callable[[], bool], timeout: float) -> None:  # noqa: ASYNC109
    """Wait, bounded, until `condition` holds (it reads the database the other process commits to)."""
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.05)


def _answered_304_since(rig: Rig, first: int) -> int:
    """How many GTFS-RT fetches from request `first` on were conditional on the current ETag (so got a 304)."""
    later = rig.server.requests_for("/rt.pb")[first:]
    assert later, "no fetch was made"
    assert all(r.header("if-none-match") == '"v2"' for r in later), [r.header("if-none-match") for r in later]
    return len(later)


async def _assert_resolved_once(rig: Rig, server: MicroblogServer, notices: MessageRecorder) -> None:
    kinds = [orjson.loads(m.payload)["kind"] for m in await notices.settle(quiet=0.5)]
    assert kinds == ["alert_new", "alert_resolved"]
    retained = await collect_retained(rig.mqtt_url, rig.topic("lines/1/#"))
    assert rig.topic(ALERT_TOPIC) not in retained
    assert orjson.loads(retained[rig.topic("lines/1/status")])["alert_ids"] == []
    statuses = server.mastodon_statuses()
    assert len(statuses) == 2  # the alert, then its all-clear: once
    assert "Escalator out of order" in statuses[0].text


async def test_removed_alert_resolves_across_once_runs_answered_304(rig: Rig, server: MicroblogServer) -> None:
    config = _write_config(rig, server)
    async with MessageRecorder(rig.mqtt_url, rig.topic("notices")) as notices:
        await _announce_then_remove(rig, config)
        first_304 = len(rig.server.requests_for("/rt.pb"))
        await _once(config)  # 304: the second good fetch without the alert
        assert _missing(rig) == 2
        await _once(config)  # 304: the third; resolved
        assert _missing(rig) is None
        assert _answered_304_since(rig, first_304) == 2
        await _assert_resolved_once(rig, server, notices)


async def test_removed_alert_resolves_across_a_restarted_run_answered_304(rig: Rig, server: MicroblogServer) -> None:
    config = _write_config(rig, server)
    async with MessageRecorder(rig.mqtt_url, rig.topic("notices")) as notices:
        await _announce_then_remove(rig, config)
        first_304 = len(rig.server.requests_for("/rt.pb"))
        # A `run` that polls once (304) and is killed: its fetch counted, durably.
        process = await asyncio.create_subprocess_exec(
            *_command("run", "-c", str(config)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            await _until(lambda: _missing(rig) == 2, timeout=20)
        finally:
            os.kill(process.pid, signal.SIGKILL)
            await process.wait()
        # A fresh `run`, polling every second, only ever gets 304: it resolves the alert at its first poll.
        config = _write_config(rig, server, poll_seconds=1)
        process = await asyncio.create_subprocess_exec(
            *_command("run", "-c", str(config)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            await notices.wait_for(lambda ms: any(b'"alert_resolved"' in m.payload for m in ms), timeout=20)
            await asyncio.to_thread(server.wait_for, lambda _: len(server.mastodon_statuses()) >= 2, 10)
        finally:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                await process.wait()
        assert _missing(rig) is None
        assert _answered_304_since(rig, first_304) >= 2
        await _assert_resolved_once(rig, server, notices)


async def test_a_snapshot_parsed_against_another_network_is_not_applied_again(
    rig: Rig, server: MicroblogServer
) -> None:
    """A new static GTFS, then a restart: the stored snapshot names the old network's ids, so the next fetch is
    unconditional (a 200 to parse against the new network), not a 304 that would re-apply it."""
    config = _write_config(rig, server)
    rig.serve_rt(alert_entity(ALERT, header={"en": "Escalator out of order"}, informed=[selector(route_id="1")]),
                 etag='"v1"')
    await _once(config)
    await _once(config)
    assert [r.header("if-none-match") for r in rig.server.requests_for("/rt.pb")] == [None, '"v1"']
    network = rig.tmp_path / "network"
    shutil.copytree(NETWORK_DIR, network)
    with (network / "stops.txt").open("a", encoding="utf-8") as stops:
        stops.write("S60,新站,30.6,114.3,1,,\n")
    config.write_text(config.read_text(encoding="utf-8").replace(NETWORK_DIR.as_posix(), network.as_posix()),
                      encoding="utf-8")
    await _once(config)
    await _once(config)
    assert [r.header("if-none-match") for r in rig.server.requests_for("/rt.pb")][2:] == [None, '"v1"']
    assert _missing(rig) == 0
