"""The health check when the state database does not answer (PostgreSQL past the statement timeout, a lost
connection, a SQLite read error): `/v1/health` still answers, `503` with its role and `database.ok` false, so a
supervisor or a load balancer sees why; `/v1/status` says why; `/metrics` still renders; the log says so once when
it starts and once when it ends. Before, the read of the outbox raised through the handler and the answer was a
bare 500, which a probe cannot read, and which took the HA start-up test down on a loaded CI machine."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import UTC, datetime
from typing import cast

import httpx
import psycopg
import pytest
from rig import Rig, poll_all
from support.postgres import PASSWORD, PostgresServer
from test_admin import admin_config, api, bearer, parse_metrics

from broadcaster.metrics import read_health
from broadcaster.outbox_history import OutboxHistory


async def health_until(http: httpx.AsyncClient, code: int) -> httpx.Response:
    """`/v1/health` once it answers `code`: on a loaded machine one read may miss the statement timeout."""
    async with asyncio.timeout(20):
        while (answer := await http.get("/v1/health")).status_code != code:
            pass
    return answer


@pytest.mark.usefixtures("admin_tokens")
async def test_health_answers_503_with_its_role_while_the_database_does_not_answer_and_200_after(
    rig: Rig, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("T_PG_PASSWORD", PASSWORD)
    database = postgres.create_database()
    config = admin_config(rig, storage={"url": postgres.url(database), "password": {"env": "T_PG_PASSWORD"},
                                        "statement_timeout_seconds": 1})
    rig.serve_rt()
    async with api(config) as (b, http):
        await poll_all(b)
        await health_until(http, 200)
        caplog.set_level(logging.INFO, logger="broadcaster.service")
        caplog.clear()
        async with await psycopg.AsyncConnection.connect(postgres.conninfo(database)) as locker, \
                locker.transaction():
            # Every read of the outbox now waits past the statement timeout, as on a database that does not answer.
            await locker.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
            health = await http.get("/v1/health")
            assert health.status_code == 503
            body = health.json()
            assert body["healthy"] is False
            assert body["database"]["ok"] is False
            assert "error" not in body["database"]  # the reason names the database: only for the authenticated
            assert body["role"] == "leader"
            assert body["outbox"] == {}  # unknown, not empty
            status = await http.get("/v1/status", headers=bearer())
            assert status.status_code == 200
            assert status.json()["healthy"] is False
            assert "the outbox could not be read" in status.json()["database"]["error"]
            assert status.json()["parked"] == []
            assert PASSWORD not in status.text
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert parse_metrics(metrics.text)["broadcaster_database_ok"] == 0
        # The lock released: the next read that gets an answer makes the health what it was.
        health = await health_until(http, 200)
        assert health.json()["database"]["ok"] is True
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith("health check:")]
    assert [level for level, _ in said] == [logging.WARNING, logging.INFO], said  # once each, not per probe


def test_a_sqlite_read_error_is_part_of_the_health_not_an_exception() -> None:
    class Failing:
        def backlog(self) -> None:
            raise sqlite3.OperationalError("disk I/O error")

    health = read_health((), {}, ["mqtt"], cast(OutboxHistory, Failing()), True, datetime.now(UTC))
    assert health.database_error == "the outbox could not be read: disk I/O error"
    assert not health.database_ok
    assert not health.healthy
    assert health.outbox == {}
