"""The health check when the state database does not answer (PostgreSQL past the statement timeout, a lost
connection): `/v1/health` still answers, `503` with its role and `database.ok` false, so a supervisor or a load
balancer sees why; `/v1/status` says why; `/metrics` still renders. Before, the read of the outbox raised through
the handler and the answer was a bare 500, which a probe cannot read, and which took the HA start-up test down on
a loaded CI machine."""

from __future__ import annotations

import psycopg
import pytest
from rig import Rig, poll_all
from support.postgres import PASSWORD, PostgresServer
from test_admin import admin_config, api, bearer, parse_metrics


@pytest.mark.usefixtures("admin_tokens")
async def test_health_answers_503_with_its_role_while_the_database_does_not_answer_and_200_after(
    rig: Rig, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("T_PG_PASSWORD", PASSWORD)
    database = postgres.create_database()
    config = admin_config(rig, storage={"url": postgres.url(database), "password": {"env": "T_PG_PASSWORD"},
                                        "statement_timeout_seconds": 0.5})
    rig.serve_rt()
    async with api(config) as (b, http):
        await poll_all(b)
        assert (await http.get("/v1/health")).status_code == 200
        async with await psycopg.AsyncConnection.connect(postgres.conninfo(database)) as locker, \
                locker.transaction():
            # Every read of the outbox now waits past the statement timeout, as on a database that is not answering.
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
            assert "the outbox could not be read" in status.json()["database"]["error"]
            assert status.json()["parked"] == []
            assert PASSWORD not in status.text
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert parse_metrics(metrics.text)["broadcaster_database_ok"] == 0
        # The lock released: the store opens a new connection and the health is as before.
        health = await http.get("/v1/health")
        assert health.status_code == 200, health.text
        assert health.json()["database"]["ok"] is True
