"""The throw-away PostgreSQL server the backend and high-availability tests stand on."""

from __future__ import annotations

import psycopg
import pytest
from support.postgres import PostgresServer


def test_a_database_of_its_own_takes_a_password_over_tcp(postgres: PostgresServer, postgres_database: str) -> None:
    with psycopg.connect(postgres.conninfo(postgres_database)) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
        version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None
        assert int(version[0]) >= 150000
    wrong = f"host={postgres.host} port={postgres.port} dbname={postgres_database} user=broadcaster password=x"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)


def test_two_tests_never_share_a_database(postgres: PostgresServer) -> None:
    first, second = postgres.create_database(), postgres.create_database()
    assert first != second
    with psycopg.connect(postgres.conninfo(first)) as conn:
        conn.execute("CREATE TABLE only_here (x int)")
    with psycopg.connect(postgres.conninfo(second)) as conn:
        assert conn.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
