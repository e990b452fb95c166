"""Several real `broadcaster run` processes sharing one PostgreSQL database: the high-availability rig
(docs/ha.md). The soak (tests/ha_soak.py), the partition and the start-up tests drive it.

Each instance is a process of its own with a config file of its own: the same feeds, channels, broker and
database as the others, its own `[ha] instance`, state directory and admin API port. The database password
reaches it through the environment (`PASSWORD_ENV`), as a deployment's secret does. The test side learns who
leads from each instance's `/v1/health` (`role`, `instance`): the takeover time of a kill is measured from the
SIGKILL to the first answer of another instance saying it leads.

Processes are other programs, with no event to await: `wait_for_leader` and friends look at `/v1/health` every
`LOOK_EVERY` seconds, always under a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg

from .ports import free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

#: The environment variable the instances' `[storage] password` names.
PASSWORD_ENV = "T_PG_PASSWORD"
#: How often the harness looks at an instance's health while it waits for a role to change (seconds).
LOOK_EVERY = 0.02
#: The exit status of a leader that lost its lease (EX_TEMPFAIL: its supervisor starts it again as a standby).
EXIT_LOST_LEASE = 75


@dataclass(frozen=True)
class LeaseSettings:
    """`[ha]` times for a test: short, so a takeover costs seconds (the defaults are 15 / 5 / 3 s)."""

    lease_seconds: float = 2.0
    renew_seconds: float = 0.5
    margin_seconds: float = 0.5
    #: `[storage] statement_timeout_seconds`: how long one store call may hold the event loop before it is cut;
    #: below the margin, as docs/ha.md requires.
    statement_timeout_seconds: float = 0.4

    def ha_section(self, instance: str) -> str:
        return (f'[ha]\ninstance = "{instance}"\nlease_seconds = {self.lease_seconds}\n'
                f"renew_seconds = {self.renew_seconds}\nmargin_seconds = {self.margin_seconds}\n")


@dataclass(frozen=True)
class Health:
    """One answer of an instance's `/v1/health`."""

    at: float  # time.monotonic() when it arrived
    status: int
    body: Mapping[str, Any]

    @property
    def role(self) -> str | None:
        role = self.body.get("role")
        return role if isinstance(role, str) else None

    @property
    def leads(self) -> bool:
        return self.role == "leader"


@dataclass
class Run:
    """One start of an instance: its process and its log."""

    process: asyncio.subprocess.Process
    log_path: Path
    #: Set when the test stopped or killed it: any other end is the instance's own doing.
    ended_by_test: bool = False
    #: time.monotonic() when the harness saw the process end (a task waits for it from the start).
    ended_at: float | None = None
    watcher: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.process.returncode is None


@dataclass
class Instance:
    """One instance: a config, an admin port, and the `broadcaster run` processes started for it so far."""

    name: str
    config: Path
    admin_port: int
    directory: Path
    runs: list[Run] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return bool(self.runs) and self.runs[-1].running

    @property
    def exits(self) -> list[int]:
        """The exit status of every run that ended, in order (-9 for a SIGKILL)."""
        return [run.process.returncode for run in self.runs if run.process.returncode is not None]

    def log_tail(self, lines: int = 30) -> str:
        """The last lines this instance logged in its latest run, for failure messages."""
        if not self.runs or not self.runs[-1].log_path.exists():
            return ""
        return "\n".join(self.runs[-1].log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass(frozen=True)
class Takeover:
    """One SIGKILL of the leader and who took over."""

    killed: str
    new_leader: str
    seconds: float  # from the SIGKILL to the new leader's first health answer as leader
    pending_at_kill: int  # posts still queued in the outbox at the moment of the kill
    #: From the restart of the killed instance to its first answer as a standby (None: not waited for).
    restart_to_standby: float | None = None


class HaCluster:
    """The instances of one test. Use as ``async with HaCluster(...) as cluster``: leaving stops every process."""

    def __init__(
        self,
        workdir: Path,
        write_config: Callable[[str, Path], Path],
        *,
        database_url: str,
        password: str,
        names: Sequence[str] = ("a", "b"),
        lease: LeaseSettings | None = None,
        env: Mapping[str, str] | None = None,
        database_urls: Mapping[str, str] | None = None,
    ) -> None:
        """`write_config(name, directory)` writes an instance's config without `[storage]`, `[ha]` and `[admin]` (the
        cluster appends them) and returns its path. `database_urls` gives an instance another way to the same
        database (through a fault proxy)."""
        self.lease = lease or LeaseSettings()
        self.env = {**os.environ, **(env or {}), PASSWORD_ENV: password}
        self.instances: dict[str, Instance] = {}
        for name in names:
            directory = workdir / f"instance-{name}"
            directory.mkdir(parents=True, exist_ok=True)
            url = (database_urls or {}).get(name, database_url)
            instance = Instance(name, write_config(name, directory), free_port(), directory)
            with instance.config.open("a", encoding="utf-8") as config:
                config.write(self._sections(instance, url))
            self.instances[name] = instance
        # An instance on a loaded machine (a CI run's first minute, beside the crash loop and the soak) may take
        # over a second to answer; one that has not answered in 5 s is a finding, not load.
        self._http = httpx.AsyncClient(timeout=5.0)

    def _sections(self, instance: Instance, url: str) -> str:
        return (
            f'\n[storage]\nurl = "{url}"\npassword = {{ env = "{PASSWORD_ENV}" }}\n'
            f"statement_timeout_seconds = {self.lease.statement_timeout_seconds}\n\n"
            + self.lease.ha_section(instance.name)
            + f'\n[admin]\nlisten = "127.0.0.1:{instance.admin_port}"\n'
        )

    async def __aenter__(self) -> HaCluster:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.gather(*(self.stop(name) for name in self.instances))
        await asyncio.gather(*(run.watcher for i in self.instances.values() for run in i.runs if run.watcher))
        await self._http.aclose()

    def __getitem__(self, name: str) -> Instance:
        return self.instances[name]

    # -- processes -------------------------------------------------------------------------------------------

    async def start(self, name: str) -> Instance:
        instance = self.instances[name]
        assert not instance.running, f"{name} is running already"
        log_path = instance.directory / f"run-{len(instance.runs) + 1}.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "broadcaster", "--log-level", "info", "run", "-c", str(instance.config),
                env=self.env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )
        run = Run(process, log_path)
        run.watcher = asyncio.create_task(_note_end(run), name=f"watch {name}")
        instance.runs.append(run)
        return instance

    async def start_all(self) -> None:
        """Every instance at (nearly) the same instant."""
        await asyncio.gather(*(self.start(name) for name in self.instances))

    async def kill(self, name: str) -> float:
        """SIGKILL `name`; returns the time.monotonic() of the kill."""
        instance = self.instances[name]
        assert instance.running, f"{name} is not running"
        run = instance.runs[-1]
        run.ended_by_test = True
        run.process.kill()
        killed_at = time.monotonic()
        await run.process.wait()
        return killed_at

    async def stop(self, name: str, *, timeout: float = 15.0) -> int | None:  # noqa: ASYNC109
        """SIGTERM (a clean stop), SIGKILL if it has not ended within `timeout`; the exit status."""
        instance = self.instances[name]
        if not instance.runs:
            return None
        run = instance.runs[-1]
        if run.running:
            run.ended_by_test = True
            with contextlib.suppress(ProcessLookupError):
                run.process.terminate()
            try:
                async with asyncio.timeout(timeout):
                    await run.process.wait()
            except TimeoutError:
                run.process.kill()
        return await run.process.wait()

    async def wait_exit(self, name: str, timeout: float) -> int:  # noqa: ASYNC109
        """Wait for `name` to end by itself; its exit status."""
        instance = self.instances[name]
        assert instance.runs, f"{name} never started"
        async with asyncio.timeout(timeout):
            return await instance.runs[-1].process.wait()

    def unexpected_exits(self) -> dict[str, list[int]]:
        """Per instance, the exit statuses of runs that ended although the test neither stopped nor killed them."""
        found = {i.name: [r.process.returncode for r in i.runs if r.process.returncode is not None
                          and not r.ended_by_test] for i in self.instances.values()}
        return {name: statuses for name, statuses in found.items() if statuses}

    # -- who leads -------------------------------------------------------------------------------------------

    async def health(self, name: str) -> Health | None:
        """`name`'s /v1/health now, or None when it does not answer (not running, starting, stopped)."""
        instance = self.instances[name]
        if not instance.running:
            return None
        try:
            response = await self._http.get(f"http://127.0.0.1:{instance.admin_port}/v1/health")
            body = response.json()
        except (httpx.HTTPError, json.JSONDecodeError, ValueError):
            return None
        return Health(time.monotonic(), response.status_code, body if isinstance(body, dict) else {})

    async def roles(self) -> dict[str, str | None]:
        """Every instance's role now (None: no answer)."""
        answers = await asyncio.gather(*(self.health(name) for name in self.instances))
        return {name: a.role if a else None for name, a in zip(self.instances, answers, strict=True)}

    async def leaders(self) -> list[str]:
        return [name for name, role in (await self.roles()).items() if role == "leader"]

    async def wait_for_role(self, name: str, role: str, timeout: float) -> Health:  # noqa: ASYNC109
        """Wait until `name` answers with `role`; its answer. Fails at once if the process ends."""
        instance = self.instances[name]
        try:
            async with asyncio.timeout(timeout):
                while True:
                    answer = await self.health(name)
                    if answer is not None and answer.role == role:
                        return answer
                    if not instance.running:
                        raise AssertionError(f"{name} exited ({instance.exits}) while waiting for it to be {role}:"
                                             f"\n{instance.log_tail()}")
                    await asyncio.sleep(LOOK_EVERY)  # another process: nothing to await but its next answer
        except TimeoutError:
            raise AssertionError(f"{name} was not {role} within {timeout} s:\n{instance.log_tail()}") from None

    async def wait_for_leader(self, timeout: float, *, among: Sequence[str] | None = None) -> tuple[str, Health]:  # noqa: ASYNC109
        """Wait until one of `among` (default: all) answers as leader; its name and answer."""
        names = list(among if among is not None else self.instances)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    answers = await asyncio.gather(*(self.health(name) for name in names))
                    for name, answer in zip(names, answers, strict=True):
                        if answer is not None and answer.leads:
                            return name, answer
                    await asyncio.sleep(LOOK_EVERY)
        except TimeoutError:
            logs = "\n".join(f"--- {n}:\n{self.instances[n].log_tail()}" for n in names)
            raise AssertionError(f"none of {names} led within {timeout} s\n{logs}") from None


async def _note_end(run: Run) -> None:
    await run.process.wait()
    run.ended_at = time.monotonic()


class SharedDatabase:
    """The test's own look at the database the instances share (one connection, each statement its own
    transaction): the outbox's progress and the lease row. ``async with SharedDatabase(conninfo) as db``."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def __aenter__(self) -> SharedDatabase:
        self._conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        assert self._conn is not None, "use SharedDatabase as an async context manager"
        return await (await self._conn.execute(sql)).fetchall()

    async def outbox_counts(self) -> tuple[int, int]:
        """(posts ever queued, posts still pending) in the shared outbox; (0, 0) before the schema exists."""
        try:
            rows = await self.rows("SELECT COUNT(*), COUNT(*) FILTER (WHERE status = 'pending') FROM outbox"
                                   " WHERE channel != 'mqtt'")
        except psycopg.errors.UndefinedTable:
            return 0, 0
        return int(rows[0][0]), int(rows[0][1])

    async def lease(self) -> tuple[str | None, int, datetime]:
        """The lease row: holder, epoch, expiry (the database's clock)."""
        (holder, epoch, expires_at), = await self.rows(
            "SELECT holder, epoch, expires_at FROM leader_lease WHERE name = 'leader'")
        return holder, int(epoch), expires_at

    async def sessions(self) -> list[tuple[Any, ...]]:
        """The database's other sessions (for failure messages): application, state, what it waits for, since
        when, its transaction's age and its last statement; and who blocks whom."""
        return await self.rows(
            "SELECT pid, application_name, client_port, state, wait_event_type, wait_event,"
            " round(extract(epoch FROM now() - state_change)::numeric, 2) AS in_state_s,"
            " round(extract(epoch FROM now() - xact_start)::numeric, 2) AS xact_s, pg_blocking_pids(pid),"
            " left(query, 80) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid != pg_backend_pid()")

    async def wait_for_commit(self, cluster: HaCluster, previous_total: int, timeout: float) -> int:  # noqa: ASYNC109
        """Wait until the leader has committed posts beyond `previous_total`; the new total."""
        async with asyncio.timeout(timeout):
            while True:
                total, _ = await self.outbox_counts()
                if total > previous_total:
                    return total
                if exits := cluster.unexpected_exits():
                    raise AssertionError(f"an instance exited by itself: {exits}")
                await asyncio.sleep(LOOK_EVERY)  # another process's commit: nothing to await but a look

    async def wait_until_drained(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until no post is pending any more."""
        async with asyncio.timeout(timeout):
            while True:
                if not (await self.outbox_counts())[1]:
                    return
                await asyncio.sleep(LOOK_EVERY)  # another process's sends: nothing to await but a look


def monotonic_of(moment: datetime) -> float:
    """A database timestamp on this machine's monotonic clock (the test server runs here, on the same clock)."""
    return moment.timestamp() - (time.time() - time.monotonic())
