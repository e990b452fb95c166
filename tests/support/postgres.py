"""A real, throw-away PostgreSQL server on a free loopback port, made with `initdb` and run with `pg_ctl`, the way
`mosquitto.py` runs a broker: the tests of the PostgreSQL backend and of high availability talk to it.

Clients connect over TCP with a password (scram-sha-256), as a deployment's instances do; each test gets a
database of its own (`create_database`), so tests sharing the server never see each other's rows.

PostgreSQL refuses to run as root. When the tests run as root (CI does), the server runs as the `postgres`
user (Debian's package makes it) or, failing that, `nobody`, in a directory of its own outside pytest's
root-only temporary tree.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Self

from .binaries import find_binary
from .ports import free_port

#: The superuser the tests connect as, and its password (given to the broadcaster through the environment).
USER = "broadcaster"
PASSWORD = "test-password-Ünïcode ok"


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def _known(name: str) -> tuple[str, ...]:
    # Debian keeps the server programs in /usr/lib/postgresql/<major>/bin, off PATH; newest first.
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True)
    return (*(f"{bin_dir}/{name}" for bin_dir in versions), f"/usr/local/bin/{name}", f"/usr/local/pgsql/bin/{name}")


def _major(bin_dir: str) -> int:
    try:
        return int(Path(bin_dir).parent.name)
    except ValueError:
        return 0


def find_pg_binary(name: str) -> str:
    """`initdb` or `pg_ctl`: $PG_BINDIR/<name>, then PATH, then Debian's and the usual locations."""
    override = os.environ.get("PG_BINDIR", "")
    if override:
        os.environ.setdefault(f"PG_{name.upper()}", str(Path(override) / name))
    return find_binary(name, f"PG_{name.upper()}", _known(name), "postgresql", PostgresNotFound)


def _run_as() -> pwd.struct_passwd | None:
    """The account the server runs under: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresNotFound("running as root and there is neither a `postgres` nor a `nobody` user to run as")


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, listening on 127.0.0.1:`port` only."""

    host = "127.0.0.1"

    def __init__(self, *, port: int | None = None) -> None:
        self.initdb = find_pg_binary("initdb")
        self.pg_ctl = find_pg_binary("pg_ctl")
        self.port = port if port is not None else free_port(self.host)
        self.account = _run_as()
        self.workdir = Path(tempfile.mkdtemp(prefix="broadcaster-pg-"))
        self.data = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self._databases = 0
        if self.account is not None:
            os.chown(self.workdir, self.account.pw_uid, self.account.pw_gid)

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        user = self.account.pw_uid if self.account is not None else None
        group = self.account.pw_gid if self.account is not None else None
        done = subprocess.run(
            args, user=user, group=group, capture_output=True, text=True, timeout=timeout, cwd=self.workdir,
            env={**os.environ, "LC_ALL": "C.UTF-8"})
        if done.returncode != 0:
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stdout}{done.stderr}{log}")

    def start(self) -> Self:
        """initdb (first time only) and start; returns once the server accepts connections."""
        if not self.data.exists():
            pwfile = self.workdir / "pwfile"
            pwfile.write_text(PASSWORD + "\n")
            if self.account is not None:
                os.chown(pwfile, self.account.pw_uid, self.account.pw_gid)
            self._run(self.initdb, "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile), "-E", "UTF8",
                      "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
            pwfile.unlink()
        # fsync and friends off: the tests kill broadcasters, never this server, so its own crash safety only
        # costs time here.
        options = (f"-p {self.port} -c listen_addresses={self.host} -k {self.workdir} -c fsync=off"
                   " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.log_path), "-o", options, "-w", "-t", "60",
                  "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: roll back open transactions; `immediate`: as a crash would)."""
        if (self.data / "postmaster.pid").exists():
            self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def url(self, database: str = "postgres", *, password: bool = False) -> str:
        """The `postgresql://` URL of `database`, with the password in it only when asked (the broadcaster takes
        its password from the environment or a secret file, never from the URL)."""
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{USER}{secret}@{self.host}:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """A libpq connection string for `database`, with the password (for the tests' own connections)."""
        escaped = PASSWORD.replace("\\", "\\\\").replace("'", "\\'")
        return f"host={self.host} port={self.port} dbname={database} user={USER} password='{escaped}'"

    def create_database(self, prefix: str = "t") -> str:
        """A new, empty database of its own; returns its name."""
        import psycopg

        self._databases += 1
        name = f"{prefix}_{os.getpid()}_{self._databases}"
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return name
