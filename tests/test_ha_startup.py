"""Instances starting together on one PostgreSQL database: three at the same instant on an empty database make one
leader (the schema migrated once, under the migration lock); a standby started against a database a newer
release has migrated refuses to run (exit 2, one clear line), as a single instance does with SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest
from crash_harness import channel_tables, environment
from ha_soak import POLL_SECONDS
from rig import Rig
from support import LoopbackHttpServer, MosquittoBroker
from support.ha_cluster import HaCluster, LeaseSettings
from support.microblog_server import MicroblogServer
from support.postgres import PASSWORD, PostgresServer

from broadcaster.store.sqlite_steps import STEPS

LEASE = LeaseSettings(lease_seconds=2.0, renew_seconds=0.5, margin_seconds=0.5)
#: The schema version this release knows (the same number on both engines).
NEWEST = len(STEPS)


def cluster_of(names: tuple[str, ...], tmp_path: Path, http: LoopbackHttpServer, broker: MosquittoBroker,
               microblog: MicroblogServer, postgres: PostgresServer, database: str) -> HaCluster:
    prefix = f"ha-start/{database}"
    rig = Rig(tmp_path, http, broker.url, prefix)
    rig.serve_rt()
    rig.serve_flow({"S04": "FEW_SEATS_AVAILABLE"})

    def write_config(_: str, directory: Path) -> Path:
        return Rig(directory, http, broker.url, prefix).write_config(
            channels=channel_tables(microblog), feeds={"poll_seconds": POLL_SECONDS})

    return HaCluster(tmp_path, write_config, database_url=postgres.url(database), password=PASSWORD, names=names,
                     lease=LEASE, env=environment(microblog))


async def test_three_instances_started_at_the_same_instant_on_an_empty_database_make_one_leader(
    tmp_path: Path, http_server: LoopbackHttpServer, mosquitto: MosquittoBroker, microblog: MicroblogServer,
    postgres: PostgresServer, postgres_database: str,
) -> None:
    names = ("a", "b", "c")
    async with cluster_of(names, tmp_path, http_server, mosquitto, microblog, postgres, postgres_database) as cluster:
        await cluster.start_all()
        leader, _ = await cluster.wait_for_leader(timeout=60)
        for name in names:
            if name != leader:
                await cluster.wait_for_role(name, "standby", timeout=60)
        # Over several renew periods, every instance answering: one leader, always the same.
        seen: set[tuple[str, ...]] = set()
        loop = asyncio.get_running_loop()
        until = loop.time() + 2 * LEASE.lease_seconds
        while loop.time() < until:
            roles = await cluster.roles()
            seen.add(tuple(sorted(n for n, role in roles.items() if role == "leader")))
            assert None not in roles.values(), roles
            await asyncio.sleep(0.05)  # sampling other processes' answers over a fixed span
        assert seen == {(leader,)}
        assert cluster.unexpected_exits() == {}
        async with await psycopg.AsyncConnection.connect(postgres.conninfo(postgres_database)) as conn:
            row = await (await conn.execute("SELECT holder, epoch FROM leader_lease")).fetchone()
        assert row == (leader, 1), "one acquisition of the lease, by the leader"


async def test_a_standby_started_against_a_database_a_newer_release_migrated_refuses_with_exit_2(
    tmp_path: Path, http_server: LoopbackHttpServer, mosquitto: MosquittoBroker, microblog: MicroblogServer,
    postgres: PostgresServer, postgres_database: str,
) -> None:
    async with cluster_of(("a", "b"), tmp_path, http_server, mosquitto, microblog, postgres,
                          postgres_database) as cluster:
        await cluster.start("a")
        await cluster.wait_for_role("a", "leader", timeout=60)
        # A newer release (one more step) migrated the shared database while `a` runs: a rolling upgrade begun
        # on another machine. `b`, still this release, must not read a schema it does not know.
        async with await psycopg.AsyncConnection.connect(postgres.conninfo(postgres_database),
                                                         autocommit=True) as conn:
            await conn.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(NEWEST + 1),))
        await cluster.start("b")
        status = await cluster.wait_exit("b", timeout=60)
        output = cluster["b"].runs[-1].log_path.read_text(encoding="utf-8")
        assert status == 2, output
        lines = output.splitlines()
        assert len(lines) == 1, output
        assert lines[0].startswith("broadcaster: "), output
        for part in (postgres_database, f"schema version {NEWEST + 1}", f"up to {NEWEST}"):
            assert part in lines[0]
        assert PASSWORD not in output
        assert (await cluster.health("a") or pytest.fail("a stopped answering")).leads
