"""Shared fixtures: a real Mosquitto per session (and per test when needed), a loopback HTTP server."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Protocol

import pytest
from rig import Rig
from support import LoopbackHttpServer, MosquittoBroker, MosquittoNotFound, mqtt_client
from support.long_tests import long_tests_first
from support.microblog_fixture import MicroblogServer, serve_microblog
from support.postgres import PASSWORD as POSTGRES_PASSWORD
from support.postgres import PostgresNotFound, PostgresServer

from broadcaster.store import Database, Store
from broadcaster.store.postgres import PostgresDatabase

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


#: The admin API's bearer tokens in tests, unique per run so a leak of either is found by searching for it.
ADMIN_TOKEN = f"sentinel-admin-token-{uuid.uuid4().hex}"
OTHER_ADMIN_TOKEN = f"other-desk-token-{uuid.uuid4().hex}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long tests first (`support.long_tests`): handed out one at a time, they start while the short ones fill
    the other workers, instead of running alone at the end."""
    items[:] = long_tests_first(items)


@pytest.fixture
def admin_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment the admin test configs name their tokens by (`T_ADMIN`, `T_ADMIN_OTHER`)."""
    monkeypatch.setenv("T_ADMIN", ADMIN_TOKEN)
    monkeypatch.setenv("T_ADMIN_OTHER", OTHER_ADMIN_TOKEN)


class MosquittoFactory(Protocol):
    """Starts a broker with the given `MosquittoBroker` options; the fixture stops it after the test."""

    def __call__(self, **options: Any) -> MosquittoBroker: ...


def _start_broker(workdir: Path, **options: Any) -> MosquittoBroker:
    try:
        broker = MosquittoBroker(workdir, **options)
    except MosquittoNotFound as exc:
        # A missing broker is a broken test environment, not a reason to skip the MQTT tests.
        pytest.fail(str(exc), pytrace=False)
    broker.start()
    return broker


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """One broker for the whole session. Use unique topics (`topic_prefix`); never stop or restart it."""
    broker = _start_broker(tmp_path_factory.mktemp("mosquitto"))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[MosquittoFactory]:
    """Start brokers with custom options (``persistence=False``, ``extra_config=...``) for this test only."""
    brokers: list[MosquittoBroker] = []

    def start(**options: Any) -> MosquittoBroker:
        broker = _start_broker(tmp_path / f"mosquitto-{len(brokers)}", **options)
        brokers.append(broker)
        return broker

    try:
        yield start
    finally:
        for broker in brokers:
            broker.kill()


@pytest.fixture
def fresh_mosquitto(mosquitto_factory: MosquittoFactory) -> MosquittoBroker:
    """A broker of this test's own, free to be stopped, killed or restarted (persistence on)."""
    return mosquitto_factory()


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix no other test uses, for tests sharing the session broker."""
    name = "".join(ch if ch.isalnum() else "_" for ch in request.node.name)[:40]
    return f"test/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def http_server() -> Iterator[LoopbackHttpServer]:
    """A loopback HTTP server of this test's own; program it with `set_route` / `push_response`."""
    server = LoopbackHttpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop(force=True)


@pytest.fixture
def microblog() -> Iterator[MicroblogServer]:
    """Mastodon, Bluesky, Weibo and webhook endpoints on a free loopback port (`support.microblog_server`)."""
    yield from serve_microblog()


@pytest.fixture
def mqtt_protocol() -> str:
    """The MQTT version a test's broadcaster and displays speak: "5"; the contract suite is parametrized over
    both (`rig.both_protocols`)."""
    return "5"


@pytest.fixture
def speak_protocol(mqtt_protocol: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test helpers' MQTT clients (displays, recorders) speak `mqtt_protocol` in this test."""
    monkeypatch.setattr(mqtt_client, "SUBSCRIBER_PROTOCOL", mqtt_protocol)
    return mqtt_protocol


@pytest.fixture
def rig(tmp_path: Path, http_server: LoopbackHttpServer, mosquitto: MosquittoBroker, topic_prefix: str,
        speak_protocol: str) -> Rig:
    """A config for this test (the example network, feeds on `http_server`, the session broker under
    `topic_prefix`, MQTT `mqtt_protocol`), with an empty GTFS-RT feed and one passenger-flow reading served."""
    r = Rig(tmp_path, http_server, mosquitto.url, topic_prefix, protocol=speak_protocol)
    r.serve_rt()
    r.serve_flow({"S04": "FEW_SEATS_AVAILABLE"})
    return r


@pytest.fixture
def server(microblog: MicroblogServer, monkeypatch: pytest.MonkeyPatch) -> MicroblogServer:
    """The micro-blog server, with its credentials in the environment variables `rig` configs name."""
    monkeypatch.setenv("T_MASTODON", microblog.mastodon_token)
    monkeypatch.setenv("T_BLUESKY", microblog.bluesky_password)
    monkeypatch.setenv("T_WEIBO", microblog.weibo_access_token)
    assert microblog.webhook_secret is not None
    monkeypatch.setenv("T_HOOK", microblog.webhook_secret)
    return microblog


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throw-away PostgreSQL server per test process (`support.postgres`); give each test its own database
    (`postgres_database`) and never stop it. A test that stops or kills a server starts its own."""
    try:
        server = PostgresServer()
    except PostgresNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server.start()
    finally:
        server.remove()


@pytest.fixture
def postgres_database(postgres: PostgresServer) -> str:
    """The name of a new, empty database on the session's server, for this test alone."""
    return postgres.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A new, migrated state database of each engine in turn: the storage-layer tests run on both."""
    db: Store
    if request.param == "sqlite":
        db = Database(tmp_path / "state" / "broadcaster.db")
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        db = PostgresDatabase(server.url(server.create_database()), password=POSTGRES_PASSWORD)
    try:
        yield db
    finally:
        db.close()
