"""A retried operator request makes one notice: `Idempotency-Key` over real HTTP (admin API) and real command-line
processes (`--idempotency-key`, both when the command does the work itself and through a running broadcaster),
against the loopback platform server and a real Mosquitto."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Sequence

import orjson
import pytest
from rig import Rig, poll_all
from support import MessageRecorder, ReceivedMessage
from support.microblog_server import MicroblogServer
from test_admin import NOTICE, SENTINEL, admin_config, api, bearer
from test_channels import channels, until

MASTODON_ONLY = ["mastodon"]


# The admin tokens' environment (T_ADMIN, T_ADMIN_OTHER) for every test here; the `rig` is conftest's.
pytestmark = pytest.mark.usefixtures("admin_tokens")


def mastodon(server: MicroblogServer) -> list[dict[str, object]]:
    return [c for c in channels(server) if c["name"] in MASTODON_ONLY]


def keyed(key: str, token: str = SENTINEL) -> dict[str, str]:
    return {**bearer(token), "Idempotency-Key": key}


def notices_of(messages: Sequence[ReceivedMessage]) -> list[str]:
    return [orjson.loads(m.payload)["notice_id"] for m in messages]


async def test_a_retried_post_with_the_same_key_gets_the_same_answer_and_makes_one_notice(
    rig: Rig, server: MicroblogServer
) -> None:
    config = admin_config(rig, channels=mastodon(server))
    async with api(config) as (b, http), MessageRecorder(rig.mqtt_url, rig.topic("notices")) as stream:
        await poll_all(b)
        first = await http.post("/v1/notices", json=NOTICE, headers=keyed("retry-1"))
        assert first.status_code == 201, first.text
        again = await http.post("/v1/notices", json=NOTICE, headers=keyed("retry-1"))
        assert (again.status_code, again.json()) == (201, first.json())
        assert again.headers.get("idempotent-replayed") == "true"
        notice_id = first.json()["notice_id"]
        await until(lambda: b.pending() == 0, b)
        streamed = notices_of(await stream.settle(quiet=0.5))
    assert streamed.count(notice_id) == 1
    assert len(server.mastodon_statuses()) == 1


async def test_the_same_key_with_another_body_is_422_and_changes_nothing(rig: Rig) -> None:
    async with api(admin_config(rig)) as (b, http):
        first = await http.post("/v1/notices", json=NOTICE, headers=keyed("k-422"))
        assert first.status_code == 201
        other = await http.post("/v1/notices", json={**NOTICE, "severity": "SEVERE"}, headers=keyed("k-422"))
        assert other.status_code == 422, other.text
        assert other.json()["error"] == "idempotency_key_reused"
        rows = b.db.conn.execute("SELECT count(DISTINCT notice_id) FROM outbox").fetchone()[0]
        assert rows == 1
        bad = await http.post("/v1/notices", json=NOTICE, headers=keyed("x" * 300))
        assert bad.status_code == 400
        assert bad.json()["error"] == "invalid_idempotency_key"


async def test_five_concurrent_posts_with_one_key_make_one_notice(rig: Rig, server: MicroblogServer) -> None:
    config = admin_config(rig, channels=mastodon(server))
    async with api(config) as (b, http), MessageRecorder(rig.mqtt_url, rig.topic("notices")) as stream:
        await poll_all(b)
        answers = await asyncio.gather(*(http.post("/v1/notices", json=NOTICE, headers=keyed("burst"))
                                         for _ in range(5)))
        assert [a.status_code for a in answers] == [201] * 5, [a.text for a in answers]
        assert len({a.json()["notice_id"] for a in answers}) == 1
        await until(lambda: b.pending() == 0, b)
        streamed = notices_of(await stream.settle(quiet=0.5))
    assert len(streamed) == 1
    assert len(server.mastodon_statuses()) == 1


async def test_a_key_is_remembered_across_a_restart(rig: Rig) -> None:
    config = admin_config(rig)
    async with api(config) as (_, http):
        first = await http.post("/v1/notices", json=NOTICE, headers=keyed("k-restart"))
        assert first.status_code == 201
        fixed = await http.post(f"/v1/notices/{first.json()['notice_id']}/corrections",
                                json={"texts": {"en": "Fixed"}}, headers=keyed("c-restart"))
        assert fixed.status_code == 201
    async with api(config) as (b, http):
        again = await http.post("/v1/notices", json=NOTICE, headers=keyed("k-restart"))
        assert (again.status_code, again.json()) == (201, first.json())
        fixed_again = await http.post(f"/v1/notices/{first.json()['notice_id']}/corrections",
                                      json={"texts": {"en": "Fixed"}}, headers=keyed("c-restart"))
        assert (fixed_again.status_code, fixed_again.json()) == (201, fixed.json())
        versions = b.db.conn.execute("SELECT count(DISTINCT version) FROM outbox WHERE notice_id = ?",
                                     (first.json()["notice_id"],)).fetchone()[0]
    assert versions == 2  # the notice and one correction


# -- the command line ------------------------------------------------------------------------------------------


async def run_command(*args: str, timeout: float = 60) -> tuple[int, str]:  # noqa: ASYNC109
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broadcaster", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    async with asyncio.timeout(timeout):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode() + "\n--stderr--\n" + err.decode()


ANNOUNCE = ["--line", "2", "--text-en", "Exit B closed", "--text-zh", "B口关闭"]


async def test_the_command_line_retries_with_a_key_make_one_notice(rig: Rig, server: MicroblogServer) -> None:
    path = rig.write_config(channels=mastodon(server))
    async with MessageRecorder(rig.mqtt_url, rig.topic("notices")) as stream:
        ids = []
        for _ in range(2):  # a retry after, say, a lost terminal
            status, output = await run_command("announce", "-c", str(path), "--idempotency-key", "cli-1", *ANNOUNCE)
            assert status == 0, output
            ids.append(output.split("\n--stderr--")[0].strip())
        assert ids[0] == ids[1]
        status, output = await run_command("correct", "-c", str(path), ids[0], "--idempotency-key", "cli-c",
                                           "--text-en", "Exit B open")
        assert status == 0, output
        status, again = await run_command("correct", "-c", str(path), ids[0], "--idempotency-key", "cli-c",
                                          "--text-en", "Exit B open")
        assert status == 0, again
        assert again.split("\n--stderr--")[0] == output.split("\n--stderr--")[0]
        status, reused = await run_command("announce", "-c", str(path), "--idempotency-key", "cli-1", "--line", "3",
                                           "--text-en", "Something else")
        assert status == 2, reused
        assert "Idempotency-Key" in reused or "idempotency key" in reused
        streamed = notices_of(await stream.settle(quiet=0.5))
    assert streamed.count(ids[0]) == 2  # the notice and its correction, each once
    assert len(server.mastodon_statuses()) == 2


async def test_concurrent_command_line_requests_with_one_key_through_a_running_broadcaster(
    rig: Rig, server: MicroblogServer
) -> None:
    path = rig.write_config(channels=mastodon(server))
    async with MessageRecorder(rig.mqtt_url, rig.topic("#")) as recorder:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broadcaster", "run", "-c", str(path),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await recorder.wait_for(lambda ms: any(b'"online"' in m.payload for m in ms), timeout=20)
            results = await asyncio.gather(*(
                run_command("announce", "-c", str(path), "--idempotency-key", "desk-1", *ANNOUNCE)
                for _ in range(3)))
            assert [s for s, _ in results] == [0, 0, 0], results
            ids = {o.split("\n--stderr--")[0].strip() for _, o in results}
            assert len(ids) == 1
            await recorder.wait_for(lambda ms: any(m.topic.endswith("/notices") for m in ms))
            server.wait_for(lambda rs: any(r.path.endswith("/statuses") for r in rs), timeout_s=10)
            streamed = [m for m in await recorder.settle(quiet=0.5) if m.topic.endswith("/notices")]
        finally:
            process.terminate()
            await process.wait()
    assert len(streamed) == 1
    assert len(server.mastodon_statuses()) == 1


async def test_an_answer_that_cannot_be_remembered_commits_nothing_and_the_retry_makes_one_notice(rig: Rig) -> None:
    # The answer to a key is remembered in the transaction that commits the notice: if that write fails, the
    # notice is not committed either (503), so a client's retry can never meet a queued notice with no record of
    # its key and make a second one.
    async with api(admin_config(rig)) as (b, http):
        await poll_all(b)
        b.db.conn.execute("CREATE TEMP TRIGGER refuse_keys BEFORE INSERT ON idempotency"
                          " BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")
        failed = await http.post("/v1/notices", json=NOTICE, headers=keyed("atomic-1"))
        assert failed.status_code == 503, failed.text
        assert b.db.conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
        assert not b.operator_alerts
        b.db.conn.execute("DROP TRIGGER refuse_keys")
        retried = await http.post("/v1/notices", json=NOTICE, headers=keyed("atomic-1"))
        assert retried.status_code == 201, retried.text
        replayed = await http.post("/v1/notices", json=NOTICE, headers=keyed("atomic-1"))
        assert replayed.json() == retried.json()
        notices = b.db.conn.execute("SELECT DISTINCT notice_id FROM outbox").fetchall()
    assert notices == [(retried.json()["notice_id"],)]
