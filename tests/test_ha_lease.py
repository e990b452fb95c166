"""The PostgreSQL lease (broadcaster/ha/lease.py) on a real server: who leads, when another may take over, and
that a leader stops acting before the database lets another take the lease (self-fencing)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from support.fault_proxy import FaultProxy
from support.postgres import PASSWORD, USER, PostgresServer

from broadcaster.config import Config, HaConfig, parse_config
from broadcaster.errors import ConfigError
from broadcaster.ha.lease import LeaseLeadership, LeaseTimes, lease_holder
from broadcaster.ha.role import Role

#: The plan's DDL (migration step 5 makes it in the broadcaster; here the test makes it itself).
LEASE_DDL = """
CREATE TABLE leader_lease (
    name TEXT PRIMARY KEY,
    holder TEXT,
    epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO leader_lease (name, holder, epoch, expires_at) VALUES ('leader', NULL, 0, '-infinity');
"""

FAST = LeaseTimes(lease=1.0, renew=0.2, margin=0.3, call_timeout=2.0)


def _conninfo(host: str, port: int, database: str) -> str:
    escaped = PASSWORD.replace("\\", "\\\\").replace("'", "\\'")
    return f"host={host} port={port} dbname={database} user={USER} password='{escaped}' connect_timeout=2"


@pytest.fixture
def lease_db(postgres: PostgresServer, postgres_database: str) -> str:
    with psycopg.connect(postgres.conninfo(postgres_database), autocommit=True) as conn:
        conn.execute(LEASE_DDL)
    return postgres.conninfo(postgres_database)


def _row(conninfo: str) -> tuple[str | None, int, datetime, datetime]:
    """(holder, epoch, expires_at, the database's now) as another instance sees them."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT holder, epoch, expires_at, now() FROM leader_lease WHERE name = 'leader'").fetchone()
    assert row is not None
    return row[0], row[1], row[2], row[3]


def _connector(conninfo: str) -> Callable[[], psycopg.Connection[Any]]:
    return lambda: psycopg.connect(conninfo, autocommit=True)


@contextlib.asynccontextmanager
async def _running(lease: LeaseLeadership) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(lease.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task
        await lease.close()


async def test_a_second_instance_takes_over_only_after_the_first_lease_expired_in_the_database(lease_db: str) -> None:
    first = LeaseLeadership("a", _connector(lease_db), FAST)
    second = LeaseLeadership("b", _connector(lease_db), FAST)
    first_stop = asyncio.Event()
    first_task = asyncio.create_task(first.run(first_stop))
    async with asyncio.timeout(10):
        await first.wait_until_leading()
    first_fence = first.fence()
    assert first.role is Role.LEADER
    assert first.may_act()
    assert first_fence is not None
    async with _running(second):
        # The first keeps renewing: the second, asking every renew interval for longer than a lease, never gets it.
        async with asyncio.timeout(10):
            await second.wait_for_answers(math.ceil(2 * FAST.lease / FAST.renew))
        assert second.role is Role.STANDBY
        assert not second.may_act()
        assert second.fence() is None
        # The first stops renewing (paused, killed: it does not release).
        first_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first_task
        _, _, first_expiry, _ = _row(lease_db)
        async with asyncio.timeout(10):
            await second.wait_until_leading()
        holder, epoch, second_expiry, _ = _row(lease_db)
        # The second's lease runs from the database's now() when it took it: after the first's expiry.
        assert holder == "b"
        assert second_expiry - timedelta(seconds=FAST.lease) >= first_expiry
        second_fence = second.fence()
        assert second_fence is not None
        assert second_fence.epoch == first_fence.epoch + 1 == epoch
    await first.close()


async def test_epochs_strictly_increase_with_every_new_holder(lease_db: str) -> None:
    epochs: list[int] = []
    for name in ("a", "b", "a", "c"):
        lease = LeaseLeadership(name, _connector(lease_db), FAST)
        assert await lease.try_acquire()
        fence = lease.fence()
        assert fence is not None
        assert fence.holder == name
        epochs.append(fence.epoch)
        await lease.release()
        await lease.close()
    assert epochs == sorted(set(epochs))
    assert len(epochs) == 4


async def test_a_released_lease_is_taken_at_once(lease_db: str) -> None:
    slow = LeaseTimes(lease=60.0, renew=20.0, margin=12.0)
    first = LeaseLeadership("a", _connector(lease_db), slow)
    second = LeaseLeadership("b", _connector(lease_db), slow)
    assert await first.try_acquire()
    assert not await second.try_acquire()  # a 60 s lease: not expired
    await first.release()
    assert not first.may_act()
    assert first.role is Role.STANDBY
    assert await second.try_acquire()  # at once, not 60 s later
    assert _row(lease_db)[0] == "b"
    for lease in (first, second):
        await lease.close()


async def test_instances_started_at_the_same_instant_make_exactly_one_leader(lease_db: str) -> None:
    with psycopg.connect(lease_db, autocommit=True) as conn:
        for round_ in range(20):
            leases = [LeaseLeadership(f"i{round_}-{n}", _connector(lease_db), FAST) for n in range(3)]
            # Connected first (an attempt refused while someone else holds the lease), so that the race below
            # is between the UPDATEs alone, not between connection set-ups.
            conn.execute("UPDATE leader_lease SET holder = 'someone', expires_at = now() + interval '1 hour'")
            assert not any(await asyncio.gather(*(lease.try_acquire() for lease in leases)))
            conn.execute("UPDATE leader_lease SET holder = NULL, expires_at = '-infinity'")
            # Each attempt runs in its lease's own worker thread: the three UPDATEs race in the database.
            won = await asyncio.gather(*(lease.try_acquire() for lease in leases))
            assert sum(won) == 1, f"round {round_}: {won}"
            leader = leases[won.index(True)]
            assert [lease.role for lease in leases].count(Role.LEADER) == 1
            row = conn.execute("SELECT holder FROM leader_lease").fetchone()
            assert row is not None
            assert row[0] == leader.instance
            for lease in leases:
                await lease.close()


async def test_a_leader_cut_off_from_the_database_stops_acting_before_another_can_take_over(
    postgres: PostgresServer, postgres_database: str, lease_db: str
) -> None:
    async with FaultProxy(postgres.host, postgres.port, mqtt=False) as proxy:
        cut = LeaseLeadership("a", _connector(_conninfo(proxy.host, proxy.port, postgres_database)), FAST)
        other = LeaseLeadership("b", _connector(lease_db), FAST)
        async with _running(cut):
            async with asyncio.timeout(10):
                await cut.wait_until_leading()
            async with asyncio.timeout(10):
                await cut.wait_for_answers(cut.answers + 3)  # a few renews went through
            assert cut.may_act()
            proxy.blackhole()  # the renews now get nowhere
            async with asyncio.timeout(FAST.lease + 1):
                await cut.lost.wait()
            stopped_at = time.monotonic()
            assert not cut.may_act()
            assert cut.role is Role.STANDBY
            assert cut.fence() is None
            # The database still holds the lease for the cut-off leader when it stopped acting: nobody else can
            # have it yet.
            _, _, expires_at, db_now = _row(lease_db)
            assert expires_at > db_now
            assert not await other.try_acquire()
            # Only after the database's expiry does the other take it; by then `cut` had stopped for a while.
            async with _running(other), asyncio.timeout(10):
                await other.wait_until_leading()
                taken_at = time.monotonic()
            assert taken_at - stopped_at >= 0.9 * FAST.margin
            proxy.heal()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lease=st.floats(0.5, 600), renew_share=st.floats(0.01, 0.98), margin_share=st.floats(0.01, 0.98))
def test_the_self_fence_deadline_is_always_before_the_database_expiry(
    lease_db: str, lease: float, renew_share: float, margin_share: float
) -> None:
    asyncio.run(_self_fence_before_expiry(lease_db, lease, renew_share, margin_share))


async def _self_fence_before_expiry(lease_db: str, lease: float, renew_share: float, margin_share: float) -> None:
    try:
        ha = HaConfig(instance="p", lease_seconds=lease, renew_seconds=lease * renew_share,
                      margin_seconds=lease * margin_share)
    except ValidationError:
        return  # a setting the config refuses is never run
    with psycopg.connect(lease_db, autocommit=True) as conn:
        conn.execute("UPDATE leader_lease SET holder = NULL, expires_at = '-infinity'")
    leader = LeaseLeadership("p", _connector(lease_db), LeaseTimes.of(ha))
    assert await leader.try_acquire()
    # Measured at one moment from both sides: what the leader has left on its own clock, what the other
    # instance sees left in the database. Whatever the settings, the leader's time runs out first.
    local_left_before = leader.deadline - time.monotonic()
    _, _, expires_at, db_now = _row(lease_db)
    local_left_after = leader.deadline - time.monotonic()
    db_left = (expires_at - db_now).total_seconds()
    assert local_left_before > db_left - ha.lease_seconds  # sanity: the deadline was read
    assert local_left_after < db_left
    assert db_left - local_left_after >= ha.margin * 0.99
    await leader.close()


def _ha_config(ha: dict[str, Any], storage_url: str | None = "postgresql://b@db.example/broadcaster") -> Config:
    data: dict[str, Any] = {"network": {"gtfs": "gtfs"},
                            "feeds": [{"name": "ops", "kind": "gtfs-rt", "url": "file://rt.pb"}], "ha": ha}
    if storage_url is not None:
        data["storage"] = {"url": storage_url}
    return parse_config(data, Path("/etc/broadcaster/b.toml"))


def test_ha_defaults_follow_the_lease() -> None:
    ha = _ha_config({"instance": "east-1", "lease_seconds": 30}).ha
    assert ha is not None
    assert (ha.renew, ha.margin) == (10, 12)


@pytest.mark.parametrize(("ha", "key"), [
    ({"lease_seconds": 10, "renew_seconds": 8}, "ha.renew_seconds"),
    ({"lease_seconds": 10, "renew_seconds": 5, "margin_seconds": 5}, "ha.margin_seconds"),
    ({"lease_seconds": 10, "margin_seconds": 7}, "ha.margin_seconds"),
])
def test_a_renew_and_margin_that_do_not_fit_in_the_lease_are_refused_naming_the_key(
    ha: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError, match=rf"{key}: renew_seconds .* must be less than lease_seconds"):
        _ha_config(ha)


@pytest.mark.parametrize(("ha", "statement_timeout", "refused"), [
    ({}, None, False),  # the defaults fit: margin 6 s (lease / 2.5) against the 5 s watchdog
    ({"lease_seconds": 15, "margin_seconds": 3}, None, True),  # the former default margin
    ({"lease_seconds": 15, "margin_seconds": 5}, 5, True),
    ({"lease_seconds": 15, "margin_seconds": 3}, 2, False),
    # A reconnect waits no longer than a statement (store/postgres.py), not libpq's whole-second connect_timeout.
    ({"lease_seconds": 15, "margin_seconds": 3}, 2.5, False),
    ({"lease_seconds": 15, "margin_seconds": 1.5}, 1, False),
    ({"lease_seconds": 2, "margin_seconds": 0.5}, 0.4, False),
])
def test_a_margin_that_one_blocked_store_call_can_outlast_is_refused_naming_the_key(
    ha: dict[str, Any], statement_timeout: float | None, refused: bool
) -> None:
    """A store call runs on the event loop's thread and may block it for up to statement_timeout_seconds (the
    watchdog's limit) between the moment `may_act()` said yes and the moment a queued MQTT packet or HTTP request
    is written to its socket: the margin must be longer, or that write may land after another instance took the
    lease."""
    storage: dict[str, Any] = {"url": "postgresql://b@db.example/broadcaster"}
    if statement_timeout is not None:
        storage["statement_timeout_seconds"] = statement_timeout
    data: dict[str, Any] = {"network": {"gtfs": "gtfs"},
                            "feeds": [{"name": "ops", "kind": "gtfs-rt", "url": "file://rt.pb"}],
                            "ha": {"instance": "a", **ha}, "storage": storage}
    if refused:
        with pytest.raises(ConfigError, match=r"ha\.margin_seconds: margin_seconds \(.*\) must be more than"
                                              r" storage\.statement_timeout_seconds"):
            parse_config(data, Path("/etc/broadcaster/b.toml"))
    else:
        config = parse_config(data, Path("/etc/broadcaster/b.toml"))
        assert config.ha is not None
        assert config.storage is not None
        assert config.ha.margin > config.storage.statement_timeout_seconds


def test_ha_without_postgresql_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"ha: needs a PostgreSQL database"):
        _ha_config({"instance": "a"}, storage_url=None)  # no [storage]: SQLite


def test_an_instance_id_outside_the_allowed_characters_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"ha\.instance"):
        _ha_config({"instance": "east 1"})


async def test_lease_holder_names_the_instance_with_an_unexpired_lease(lease_db: str) -> None:
    assert lease_holder(_connector(lease_db)) is None  # never taken
    lease = LeaseLeadership("a", _connector(lease_db), FAST)
    assert await lease.try_acquire()
    assert lease_holder(_connector(lease_db)) == "a"
    await lease.release()
    assert lease_holder(_connector(lease_db)) is None
    await lease.close()


async def test_a_lease_keeper_that_fails_unexpectedly_while_leading_sets_lost(lease_db: str) -> None:
    """Anything the keeper did not foresee (here the reconnect after a killed session raises a plain error) must not
    leave a leader that reports itself leading, acts on nothing and never exits: the loss is declared, so the
    runner stops and exits 75."""
    connects = 0

    def connect() -> psycopg.Connection[Any]:
        nonlocal connects
        connects += 1
        if connects > 1:
            raise RuntimeError("unforeseen")
        return psycopg.connect(lease_db, application_name="lease-under-test", autocommit=True)

    lease = LeaseLeadership("a", connect, FAST)
    stop = asyncio.Event()
    keeper = asyncio.create_task(lease.run(stop))
    try:
        async with asyncio.timeout(10):
            await lease.wait_until_leading()
        with psycopg.connect(lease_db, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE application_name = 'lease-under-test'")
        async with asyncio.timeout(FAST.lease + 2):
            await lease.lost.wait()
        assert lease.role is Role.STANDBY
        assert not lease.may_act()
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await keeper
        await lease.close()
