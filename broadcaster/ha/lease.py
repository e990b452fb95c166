"""Leadership decided by a lease row in PostgreSQL (`leader_lease`, migration step 5): `LeaseLeadership`.

Who holds the lease is decided by the DATABASE clock alone (`now()` in every statement), so clock skew between
instances cannot make two of them leaders. What an instance may do is decided by its OWN monotonic clock: it
acts only until `t + lease - margin`, where `t` is taken before its last successful renew was sent. The
database counts the same lease from the moment it ran the statement, which is later than `t`, so the instance
stops at least `margin` seconds before the database would let another instance take the lease (self-fencing),
even when its network to the database is black-holed.

Every call to the database runs in the lease's one worker thread (psycopg's sync API on the lease's own
connection, so a slow store transaction never delays a renew) and is awaited under `asyncio.timeout`: the event
loop is never blocked, and a call that has not answered in time is given up. Giving up also shuts the
connection's socket down (the watchdog idea of the store, docs/design.md), so the worker thread returns at once
instead of hanging on a dead route, and the next call opens a new connection. (A statement_timeout in the
server would not do: a black-holed route never delivers the server's answer.)

Concurrency: the lease's state (`_fence`, `_deadline`) is written only by the one task running `run()` and
by `release()`, each time from what the awaited call answered, never from a value read before that await.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from broadcaster.ha.role import Fence, Role
from broadcaster.store.postgres import conninfo_for

if TYPE_CHECKING:
    from broadcaster.config import Config, HaConfig

log = logging.getLogger(__name__)

ACQUIRE = """
UPDATE leader_lease SET holder = %(me)s, epoch = epoch + 1, expires_at = now() + make_interval(secs => %(lease)s)
WHERE name = 'leader' AND (holder IS NULL OR expires_at < now())
RETURNING epoch
"""
RENEW = """
UPDATE leader_lease SET expires_at = now() + make_interval(secs => %(lease)s)
WHERE name = 'leader' AND holder = %(me)s AND epoch = %(epoch)s
RETURNING 1
"""
#: Sessions an instance left inside a transaction when its route to the database died, once the lease has expired
#: by the database's clock. Cut between the messages of an extended-protocol exchange (psycopg's executemany, a
#: Parse or an Execute before its Sync), the server waits for the next message with neither the statement nor the
#: idle-in-transaction timeout running, until TCP keepalive gives up on the peer (two hours by default), and the
#: transaction's locks (the fence's FOR SHARE on the lease row) hold every takeover that long. A live instance
#: never leaves the server waiting on it for a lease: its calls are bounded by the store's watchdog.
END_VANISHED = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
  AND xact_start IS NOT NULL AND wait_event = 'ClientRead'
  AND state_change < now() - make_interval(secs => %(lease)s)
  AND EXISTS (SELECT 1 FROM leader_lease WHERE name = 'leader' AND expires_at < now())
"""
RELEASE = """
UPDATE leader_lease SET holder = NULL, expires_at = '-infinity'
WHERE name = 'leader' AND holder = %(me)s AND epoch = %(epoch)s
"""


#: The longest one call to the database may take (connect included) before it is given up, unless told.
CALL_TIMEOUT_SECONDS = 5.0


def connector(config: Config) -> Callable[[], psycopg.Connection[Any]]:
    """The lease's own connections to `[storage]`'s database, with the store's password and limits (bounded
    connect, TCP keepalives and user timeout, server-side statement and lock timeouts: store/postgres.py).

    Raises:
        ConfigError: `storage.password` names a variable that is unset or a file that cannot be read.
    """
    assert config.ha is not None
    assert config.storage is not None
    storage = config.storage
    secret = storage.password.require(config.source, "storage.password") if storage.password else None
    conninfo = conninfo_for(storage.url, secret.reveal() if secret else None, CALL_TIMEOUT_SECONDS)
    application = f"broadcaster-lease-{config.ha.instance}"

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(conninfo, autocommit=True, application_name=application)

    return connect


def lease_holder(connect: Callable[[], psycopg.Connection[Any]]) -> str | None:
    """The instance holding an unexpired lease now, by the database's clock (None: nobody), for `broadcaster
    status` (another process than the instances)."""
    with connect() as conn:
        row = conn.execute(
            "SELECT holder FROM leader_lease WHERE name = 'leader' AND expires_at > now()").fetchone()
    return None if row is None or row[0] is None else str(row[0])


@dataclass(frozen=True, slots=True)
class LeaseTimes:
    """The `[ha]` times, in seconds (the config checks renew + margin < lease)."""

    lease: float
    renew: float
    margin: float
    #: The longest one database call may take (connect included) before it is given up.
    call_timeout: float = CALL_TIMEOUT_SECONDS

    @classmethod
    def of(cls, ha: HaConfig) -> LeaseTimes:
        return cls(lease=ha.lease_seconds, renew=ha.renew, margin=ha.margin)


class LeaseLeadership:
    """`Leadership` (broadcaster/ha/role.py) on the `leader_lease` row. Call `run(stop)` as a task: a standby
    tries to take the lease every `renew` seconds, a leader renews it every `renew` seconds; `release()` on a
    clean stop hands it over at once."""

    def __init__(
        self,
        instance: str,
        connect: Callable[[], psycopg.Connection[Any]],
        times: LeaseTimes,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._instance = instance
        self._connect = connect
        self.times = times
        self._monotonic = monotonic
        self._conn: psycopg.Connection[Any] | None = None  # used by the worker thread alone
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"lease-{instance}")
        self._fence: Fence | None = None
        self._deadline = float("-inf")  # the local monotonic time until which this instance may act
        self._leading = asyncio.Event()
        self._lost = asyncio.Event()
        #: How many of this instance's lease statements (an attempt to take it, a renew) the database has answered,
        #: granted or refused: the evidence that the keeper goes on asking (`wait_for_answers`).
        self.answers = 0
        self._answered = asyncio.Event()  # set at each answer; waiters clear it and look again

    # -- Leadership ------------------------------------------------------------------------------------------

    @property
    def instance(self) -> str:
        return self._instance

    @property
    def role(self) -> Role:
        return Role.LEADER if self._fence is not None else Role.STANDBY

    def fence(self) -> Fence | None:
        return self._fence

    def may_act(self) -> bool:
        return self._fence is not None and self._monotonic() < self._deadline

    async def wait_until_leading(self) -> None:
        await self._leading.wait()

    @property
    def lost(self) -> asyncio.Event:
        return self._lost

    async def wait_for_answers(self, count: int) -> None:
        """Wait until the database has answered `count` lease statements of this instance since it started."""
        while self.answers < count:
            self._answered.clear()
            await self._answered.wait()

    def _count_answer(self) -> None:
        """Synchronous: counting adds no suspension point between a statement's answer and acting on it."""
        self.answers += 1
        self._answered.set()

    @property
    def deadline(self) -> float:
        """The local monotonic time at which this instance stops acting (-inf when it does not lead)."""
        return self._deadline if self._fence is not None else float("-inf")

    # -- the lease -------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Take the lease when it is free or expired, then keep it, until `stop` or until it is lost."""
        while not stop.is_set() and not self._lost.is_set():
            try:
                if self._fence is None:
                    await self.try_acquire()
                else:
                    await self._renew()
            except Exception as exc:
                # Whatever was not foreseen: a leader must not go on reporting itself leading while nothing renews
                # its lease (it would act on nothing, answer as the leader and never exit); a standby tries again.
                log.exception("lease: the keeper failed")
                if self._fence is not None:
                    self._lose(f"the lease's keeper failed: {type(exc).__name__}: {exc}")
                    return
            wait = self.times.renew
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()

    async def try_acquire(self) -> bool:
        """One attempt to take the lease; True when this instance now leads."""
        if self._fence is not None or self._lost.is_set():
            return self._fence is not None
        sent_at = self._monotonic()  # before the statement leaves: the database's count starts later
        try:
            row = await self._call(ACQUIRE, {"me": self._instance, "lease": self.times.lease}, self.times.call_timeout)
        except (psycopg.Error, TimeoutError, OSError) as exc:
            log.warning("lease: could not ask for the lease: %s", exc)
            if isinstance(exc, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
                await self._end_vanished_sessions()
            return False
        self._count_answer()
        if row is None:
            return False
        self._fence = Fence(self._instance, int(row[0]))
        self._deadline = sent_at + self.times.lease - self.times.margin
        self._leading.set()
        log.info("lease: %s leads with epoch %d", self._instance, self._fence.epoch)
        return True

    async def _end_vanished_sessions(self) -> None:
        """The lease row stayed locked past the statement timeout: end the sessions that hold a transaction open
        although the lease they could be under has expired (END_VANISHED), so the next attempt can take it."""
        try:
            row = await self._call(END_VANISHED, {"lease": self.times.lease}, self.times.call_timeout)
        except (psycopg.Error, TimeoutError, OSError) as exc:
            log.warning("lease: could not end the sessions of a vanished instance: %s", exc)
            return
        if row is not None and row[0]:
            log.warning("lease: ended %d session(s) left in a transaction by a vanished instance", row[0])

    async def _renew(self) -> None:
        """Extend the lease; retried until the local deadline. A renew that is refused (another holder, another
        epoch) or that cannot be had before the deadline loses the lease: `lost` is set and nothing more acts."""
        fence = self._fence
        assert fence is not None
        while True:
            left = self._deadline - self._monotonic()
            if left <= 0:
                self._lose(f"no renew before the lease's local deadline (lease {self.times.lease:g} s, "
                           f"margin {self.times.margin:g} s)")
                return
            sent_at = self._monotonic()
            try:
                row = await self._call(RENEW, {"me": self._instance, "lease": self.times.lease, "epoch": fence.epoch},
                                       min(left, self.times.call_timeout))
            except (psycopg.Error, TimeoutError, OSError) as exc:
                log.warning("lease: renew failed: %s", exc)
                await asyncio.sleep(min(0.2, max(0.0, self._deadline - self._monotonic())))
                continue
            self._count_answer()
            if self._fence is not fence:
                return  # released while the renew was under way
            if row is None:
                self._lose(f"the lease (epoch {fence.epoch}) is no longer ours")
                return
            if self._monotonic() >= self._deadline:
                self._lose("the renew answered after the lease's local deadline")
                return
            self._deadline = sent_at + self.times.lease - self.times.margin
            return

    def _lose(self, why: str) -> None:
        log.error("lease: %s lost the lease: %s", self._instance, why)
        self._fence = None
        self._deadline = float("-inf")
        self._lost.set()

    async def release(self) -> None:
        """Give the lease up (a clean stop) so a standby takes it at its next attempt, without waiting for it to
        expire. Nothing acts from here on. Call it once `run()` has returned."""
        fence, self._fence = self._fence, None
        self._deadline = float("-inf")
        if fence is None:
            return
        try:
            await self._call(RELEASE, {"me": self._instance, "epoch": fence.epoch}, self.times.call_timeout)
            log.info("lease: %s released the lease (epoch %d)", self._instance, fence.epoch)
        except (psycopg.Error, TimeoutError, OSError) as exc:
            log.warning("lease: could not release the lease, it expires by itself: %s", exc)

    async def close(self) -> None:
        """Close the lease's connection and its worker thread (after `release()`, or without it after a loss)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.times.call_timeout):
                await asyncio.get_running_loop().run_in_executor(self._worker, self._close_connection)
        self._worker.shutdown(wait=False)

    # -- one bounded call -----------------------------------------------------------------------------------

    async def _call(self, sql: str, params: dict[str, Any], timeout: float) -> tuple[Any, ...] | None:  # noqa: ASYNC109
        """Run one statement on the lease's own connection in the lease's worker thread, for at most `timeout`
        seconds."""
        holder: list[psycopg.Connection[Any]] = []
        future = asyncio.get_running_loop().run_in_executor(self._worker, self._execute, sql, params, holder)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            # The thread may be stuck on a dead route: shut its socket down so it returns (and the next call
            # opens a new connection).
            for conn in holder:
                _shut_down(conn)
            raise

    def _execute(
        self, sql: str, params: dict[str, Any], holder: list[psycopg.Connection[Any]]
    ) -> tuple[Any, ...] | None:
        # The lease's one worker thread is the only one touching `_conn`; it hands the connection to the loop
        # through `holder` so that a timeout can cut it.
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                with contextlib.suppress(psycopg.Error, OSError):
                    conn.close()
            conn = self._connect()
            conn.autocommit = True  # each statement its own transaction: now() is the statement's time
            self._conn = conn
        holder.append(conn)
        return conn.execute(sql, params).fetchone()

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                conn.close()


def _shut_down(conn: psycopg.Connection[Any]) -> None:
    """Cut the connection's socket (a dup of it, as libpq owns the descriptor): a thread blocked on it returns."""
    with contextlib.suppress(OSError, psycopg.Error, ValueError), \
            socket.socket(fileno=os.dup(conn.pgconn.socket)) as dup:
        dup.shutdown(socket.SHUT_RDWR)
