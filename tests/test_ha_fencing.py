"""Self-fencing end to end on the real parts (PostgreSQL, the lease, the loopback micro-blog server): nothing leaves a
leader once its lease's local deadline has passed, even when what it did before the send (the claim of the outbox
entry, a store call on the event loop's thread) took it past that deadline."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from rig import Rig
from support.gtfs_rt_builders import alert_entity, selector
from support.microblog_server import MicroblogServer
from support.ports import free_port
from support.postgres import PASSWORD, PostgresServer
from test_admin import NOTICE, bearer
from test_channels import channels
from test_ha_runner import _admin, _announce, _until

from broadcaster import desk
from broadcaster.config import Config, load_config
from broadcaster.errors import LeaseHeld
from broadcaster.ha.lease import LeaseLeadership, LeaseTimes, connector, lease_holder
from broadcaster.runner import open_broadcaster, run_once, serve
from broadcaster.store.engine import WRITE_LOCK
from broadcaster.store.factory import open_database

WAIT = 30.0


def ha_config(rig: Rig, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch, server: MicroblogServer, *,
              statement_timeout: float = 5, admin_port: int | None = None, **ha: float) -> Config:
    """The rig's config on a new PostgreSQL database, with the Mastodon channel and an `[ha]` section (and an
    `[admin]` section on `admin_port`)."""
    monkeypatch.setenv("T_PG_PASSWORD", PASSWORD)
    path: Path = rig.write_config(
        channels=[c for c in channels(server) if c["name"] == "mastodon"],
        storage={"url": postgres.url(postgres.create_database()), "password": {"env": "T_PG_PASSWORD"},
                 "statement_timeout_seconds": statement_timeout})
    section = {"instance": '"east-1"', **{k: str(v) for k, v in ha.items()}}
    text = "\n[ha]\n" + "".join(f"{k} = {v}\n" for k, v in section.items())
    if admin_port is not None:
        text += (f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
                 'tokens = [{id = "duty-desk", token = {env = "T_ADMIN"}}]\n')
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")
    return load_config(path)


@contextlib.contextmanager
def write_lock_held_until(conninfo: str, release_at: float) -> Iterator[threading.Thread]:
    """Another instance's session holds the write lock (a standby queueing an operator's request takes it too) until
    the monotonic time `release_at`; released from a thread, as the event loop's thread is blocked meanwhile."""
    other = psycopg.connect(conninfo, autocommit=True)
    other.execute("SELECT pg_advisory_lock(%s)", (WRITE_LOCK,))

    def release() -> None:
        time.sleep(max(0.0, release_at - time.monotonic()))
        other.execute("SELECT pg_advisory_unlock(%s)", (WRITE_LOCK,))

    releaser = threading.Thread(target=release)
    releaser.start()
    try:
        yield releaser
    finally:
        releaser.join(WAIT)
        other.close()


async def test_a_claim_that_waited_past_the_self_fence_deadline_sends_nothing(
    rig: Rig, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch, server: MicroblogServer
) -> None:
    """may_act() is true when the drain loop picks the entry; the claim (`begin_attempt`) then waits for the write
    lock, on the event loop's thread, past the local deadline but not past the database's expiry, so the fence in
    the claim still passes. The request must not leave: from the local deadline on, the margin is all that stands
    between this send and another instance's lease."""
    # The server gives up a lock wait after 80 % of statement_timeout (2 s): the claim below waits 1.4 s.
    config = ha_config(rig, postgres, monkeypatch, server, statement_timeout=2.5, lease_seconds=6, renew_seconds=1,
                       margin_seconds=3.5)
    assert config.ha is not None
    assert config.storage is not None
    lease = LeaseLeadership("east-1", connector(config), LeaseTimes.of(config.ha))  # never renewed: it runs out
    try:
        async with open_broadcaster(config, leadership=lease) as b:
            assert await lease.try_acquire()
            await _announce(b, "Queued while leading")
            mastodon = next(c for c in b.channels if c.name == "mastodon")
            await asyncio.sleep(lease.deadline - 0.8 - time.monotonic())  # the lease's own timer, no guess
            assert lease.may_act()
            # Released after the local deadline, well before the database's expiry (3.5 s after it).
            with write_lock_held_until(postgres.conninfo(config.storage.url.rsplit("/", 1)[-1]),
                                      lease.deadline + 0.6):
                assert await b.drain_due(mastodon) == 0
            assert not lease.may_act()
            assert server.mastodon_statuses() == []
            assert b.outbox.pending_count("mastodon") == 1  # left for the next leader
    finally:
        await lease.close()


@pytest.mark.usefixtures("admin_tokens")
async def test_a_standby_on_postgresql_queues_an_admin_request_for_the_leader_who_carries_it_out(
    rig: Rig, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch, server: MicroblogServer
) -> None:
    """The admin API of a standby queues a request in the shared database (a standby's write, which the fence must
    let through) and answers once the leader carried it out; here the standby itself becomes that leader."""
    port = free_port()
    config = ha_config(rig, postgres, monkeypatch, server, admin_port=port)
    assert config.ha is not None
    times = LeaseTimes(lease=2.0, renew=0.3, margin=0.8)
    other = LeaseLeadership("west-1", connector(config), times)
    lease = LeaseLeadership("east-1", connector(config), times)
    stop = asyncio.Event()
    try:
        async with open_broadcaster(config, leadership=lease) as b:
            assert await other.try_acquire()  # west-1 leads: this instance is a standby
            running = asyncio.create_task(serve(b, stop, grace=2))
            async with _admin(port) as http:
                # Ready to take over (its presence session is up): healthy, so a load balancer may send operators.
                assert b.link.presence is not None
                await asyncio.wait_for(b.link.presence.present.wait(), 15)
                health = await http.get("/v1/health")
                assert (health.status_code, health.json()["healthy"], health.json()["role"]) == (200, True, "standby")
                answer = asyncio.create_task(http.post("/v1/notices", json=NOTICE,
                                                       headers={**bearer(), "Idempotency-Key": "pg-standby-1"}))
                await _until(lambda: answer.done() or len(desk.pending(b.db)) == 1)
                assert not answer.done(), answer.result().text
                await other.release()
                assert await lease.try_acquire()  # the standby leads now and carries the request out
                first = await asyncio.wait_for(answer, 30)
                assert first.status_code == 201, first.text
                await _until(lambda: len(server.mastodon_statuses()) == 1)
            stop.set()
            async with asyncio.timeout(15):
                await running
    finally:
        for instance in (other, lease):
            await instance.close()


async def test_once_on_an_ha_deployment_does_nothing_beside_a_leader_and_leads_alone_when_none_does(
    rig: Rig, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch, server: MicroblogServer
) -> None:
    """`broadcaster once` with `[ha]` opened the shared database with no lease and no fence: beside a running
    leader it polled, committed and posted as a second leader. It must take the lease for its run, or do nothing."""
    config = ha_config(rig, postgres, monkeypatch, server)
    rig.serve_rt(alert_entity("A-L2", header={"en": "Line 2 suspended"}, informed=[selector(route_id="2")],
                              effect="NO_SERVICE"))
    open_database(config).close()  # migrated: the lease row exists
    other = LeaseLeadership("west-1", connector(config), LeaseTimes(lease=30.0, renew=10.0, margin=8.0))
    try:
        assert await other.try_acquire()  # west-1 leads
        with pytest.raises(LeaseHeld):
            await run_once(config, drain_timeout=5)
        assert rig.server.requests_for("/rt.pb") == []
        assert server.mastodon_statuses() == []
        await other.release()  # nobody leads: once takes the lease for its run, and gives it back
        assert await run_once(config, drain_timeout=10) == 0
        assert rig.server.requests_for("/rt.pb") != []
        assert len(server.mastodon_statuses()) == 1
        assert lease_holder(connector(config)) is None
    finally:
        await other.close()


async def test_broadcaster_run_exits_75_when_another_instance_takes_its_lease(
    rig: Rig, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch, server: MicroblogServer
) -> None:
    """The command line end to end, in a process of its own: `broadcaster run` leads, the lease row is taken from
    it (as a takeover after a pause would), its next renew is refused, and the process exits with status 75
    (EX_TEMPFAIL) for its service manager to start it again as a standby."""
    config = ha_config(rig, postgres, monkeypatch, server, statement_timeout=1, lease_seconds=4, renew_seconds=0.5,
                       margin_seconds=2.5)
    assert config.storage is not None
    conninfo = postgres.conninfo(config.storage.url.rsplit("/", 1)[-1])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broadcaster.cli", "run", "-c", str(config.source),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        await _until(lambda: _holder(conninfo) == "east-1", timeout=20)
        await _until(lambda: rig.server.requests_for("/rt.pb") != [])  # leading: polling
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("UPDATE leader_lease SET holder = 'west-1', epoch = epoch + 1,"
                         " expires_at = now() + interval '1 minute'")
        async with asyncio.timeout(20):
            _, err = await process.communicate()  # read while it runs: a full pipe would hold it up
        assert process.returncode == 75
        assert b"lost the leader lease" in err
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def _holder(conninfo: str) -> str | None:
    with contextlib.suppress(psycopg.Error), psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT holder FROM leader_lease WHERE name = 'leader'").fetchone()
        return None if row is None else row[0]
    return None
