"""`[storage]`: the PostgreSQL URL without its password, the password as a secret, and no section = SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rig import Rig

from broadcaster.cli import main
from broadcaster.config import parse_config
from broadcaster.errors import ConfigError
from broadcaster.resources import data_dir
from broadcaster.store import Database
from broadcaster.store.factory import open_database

SECRET = "hunter2-sentinel"


def document(**storage: Any) -> dict[str, Any]:
    return {
        "network": {"gtfs": (data_dir("config") / "network").as_posix()},
        "feeds": [{"name": "ops", "kind": "gtfs-rt", "url": "file:///nonexistent/rt.pb"}],
        **({"storage": storage} if storage else {}),
    }


@pytest.mark.parametrize("url", [
    f"postgresql://broadcaster:{SECRET}@db.example:5432/metro",
    f"postgresql://broadcaster:{SECRET}/x@db.example/metro",  # a "/" in the password splits the URL early
    f"postgresql://broadcaster@db.example/metro?password={SECRET}",
])
def test_a_password_in_the_url_is_refused_naming_the_key_and_never_shown(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(document(url=url), Path("broadcaster.toml"))
    message = str(refused.value)
    assert "storage.url: must not carry a password; give it as storage.password" in message
    assert SECRET not in message


@pytest.mark.parametrize(("url", "problem"), [
    ("mysql://db.example/metro", "must start with postgresql://"),
    ("postgresql:///metro", "names no host"),
    ("postgresql://db.example", "names no database"),
    ("postgresql://db.example:99999/metro", "has a port that is no number"),
])
def test_a_url_that_names_no_postgresql_database_is_refused(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"storage.url: {problem}"):
        parse_config(document(url=url), Path("broadcaster.toml"))


def test_the_password_is_a_secret_reference_and_a_literal_is_refused() -> None:
    config = parse_config(document(url="postgresql://broadcaster@db.example/metro", password={"env": "T_PG"},
                                   statement_timeout_seconds=2), Path("broadcaster.toml"))
    assert config.storage is not None
    assert config.storage.statement_timeout_seconds == 2
    with pytest.raises(ConfigError) as refused:
        parse_config(document(url="postgresql://broadcaster@db.example/metro", password=SECRET),
                     Path("broadcaster.toml"))
    assert "storage.password" in str(refused.value)
    assert 'password = { env = "METRO_STORAGE_PASSWORD" }' in str(refused.value)
    assert SECRET not in str(refused.value)


def test_without_storage_the_database_is_sqlite_in_the_state_directory(rig: Rig) -> None:
    config = rig.config()
    assert config.storage is None
    db = open_database(config)
    try:
        assert isinstance(db, Database)
        assert db.path == config.state.directory / "broadcaster.db"
    finally:
        db.close()


def test_an_unset_password_variable_is_a_configuration_error(rig: Rig, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("T_PG_UNSET", raising=False)
    path = rig.write_config(storage={"url": "postgresql://broadcaster@127.0.0.1:1/metro",
                                     "password": {"env": "T_PG_UNSET"}})
    assert main(["status", "-c", str(path)]) == 2
    assert "storage.password: environment variable T_PG_UNSET is not set" in capsys.readouterr().err
    assert main(["check", "--offline", "-c", str(path)]) == 0  # offline: no secret is read
    main(["check", "-c", str(path)])
    assert "storage.password: environment variable T_PG_UNSET is not set" in capsys.readouterr().err
