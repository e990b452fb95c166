"""The SQLite store and outbox: durability settings, idempotent enqueue, priority order, retries, parking."""

from __future__ import annotations

import random
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broadcaster.errors import StoreError
from broadcaster.model import ActivePeriod, Alert, CrowdingReading, InformedEntity, LocalizedText, Occupancy, Severity
from broadcaster.outbox import Backoff, Outbox, OutgoingMessage, idempotency_key
from broadcaster.outbox_history import OutboxHistory
from broadcaster.state import (
    AlertRecord,
    CrowdingRecord,
    LineStatus,
    LineStatusKind,
    NetworkState,
    alert_version,
)
from broadcaster.store import Database, StateStore, Store

T0 = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)


@pytest.fixture
def db(store: Store) -> Store:
    """Each engine in turn (conftest `store`)."""
    return store


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Database:
    return Database(tmp_path / "state" / "broadcaster.db")


def message(notice: str, priority: int = 1, channel: str = "mqtt", version: str = "v1") -> OutgoingMessage:
    return OutgoingMessage(notice, version, channel, f"payload {notice}".encode(), priority)


def test_database_runs_in_wal_with_full_sync(sqlite_db: Database) -> None:
    assert sqlite_db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert sqlite_db.conn.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_start_up_refuses_a_database_that_cannot_run_in_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the file system offers no shared memory (some network file systems) SQLite keeps its rollback journal
    without a word. SQLite's `unix-none` VFS has no shared memory either: it stands in for such a file system."""
    real_connect = sqlite3.connect

    def without_shared_memory(path: Path, **kwargs: Any) -> sqlite3.Connection:
        connection: sqlite3.Connection = real_connect(f"file:{path}?vfs=unix-none", uri=True, **kwargs)
        return connection

    monkeypatch.setattr(sqlite3, "connect", without_shared_memory)
    with pytest.raises(StoreError, match="needs journal_mode=WAL and synchronous=FULL, got delete/2"):
        Database(tmp_path / "broadcaster.db")


def test_database_in_an_unwritable_place_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder", encoding="utf-8")
    with pytest.raises(StoreError) as info:
        Database(blocker / "broadcaster.db")
    assert info.value.path == str(blocker / "broadcaster.db")


def test_key_is_deterministic_and_distinguishes_every_part() -> None:
    base = idempotency_key("alert-1", "new-abc", "mqtt", 0)
    assert base == idempotency_key("alert-1", "new-abc", "mqtt", 0)
    others = {
        idempotency_key("alert-2", "new-abc", "mqtt", 0), idempotency_key("alert-1", "upd-abc", "mqtt", 0),
        idempotency_key("alert-1", "new-abc", "mastodon", 0), idempotency_key("alert-1", "new-abc", "mqtt", 1),
    }
    assert base not in others
    assert len(others) == 4


def test_enqueue_is_idempotent(db: Store) -> None:
    with db.transaction() as conn:
        assert Outbox.enqueue(conn, [message("a"), message("b")], T0) == 2
    with db.transaction() as conn:
        assert Outbox.enqueue(conn, [message("a"), message("c")], T0) == 1
    assert Outbox(db).pending_count() == 3


def test_a_failed_transaction_leaves_nothing(db: Store) -> None:
    def crash_before_commit() -> None:
        with db.transaction() as conn:
            Outbox.enqueue(conn, [message("a")], T0)
            raise RuntimeError("crash between insert and commit")

    with pytest.raises(RuntimeError):
        crash_before_commit()
    assert Outbox(db).pending_count() == 0


def test_due_orders_emergencies_first_then_oldest(db: Store) -> None:
    with db.transaction() as conn:
        Outbox.enqueue(conn, [message("routine", 2)], T0)
        Outbox.enqueue(conn, [message("normal", 1)], T0 + timedelta(seconds=1))
        Outbox.enqueue(conn, [message("emergency", 0)], T0 + timedelta(seconds=2))
    due = Outbox(db).due("mqtt", T0 + timedelta(seconds=3))
    assert [e.notice_id for e in due] == ["emergency", "normal", "routine"]
    assert Outbox(db).due("mastodon", T0 + timedelta(seconds=3)) == []


def test_retry_later_honours_retry_after_and_backs_off(db: Store) -> None:
    outbox = Outbox(db, Backoff(base_s=1, cap_s=60), random.Random(7))
    with db.transaction() as conn:
        Outbox.enqueue(conn, [message("a")], T0)
    entry = outbox.due("mqtt", T0)[0]
    at = outbox.retry_later(entry, T0, "HTTP 429", retry_after=120)
    assert at >= T0 + timedelta(seconds=120)
    assert outbox.due("mqtt", T0 + timedelta(seconds=119)) == []
    again = outbox.due("mqtt", at)
    assert [e.attempts for e in again] == [1]
    assert outbox.next_due_at("mqtt") == at


def test_backoff_grows_and_is_capped() -> None:
    backoff = Backoff(base_s=1, cap_s=30)
    rng = random.Random(1)
    assert 0.5 <= backoff.delay(0, None, rng) <= 1
    assert 4 <= backoff.delay(3, None, rng) <= 8
    assert 15 <= backoff.delay(40, None, rng) <= 30


def test_sent_and_parked_entries_are_never_due_again(db: Store) -> None:
    outbox = Outbox(db)
    with db.transaction() as conn:
        Outbox.enqueue(conn, [message("sent"), message("parked")], T0)
    by_id = {e.notice_id: e for e in outbox.due("mqtt", T0)}
    outbox.mark_sent(by_id["sent"].key, T0, remote_id="109876")
    outbox.park(by_id["parked"].key, "HTTP 422: text too long")
    assert outbox.due("mqtt", T0 + timedelta(days=1)) == []
    assert OutboxHistory(db).depth() == {("mqtt", "sent"): 1, ("mqtt", "parked"): 1}
    row = db.conn.execute("SELECT remote_id FROM outbox WHERE key = ?", (by_id["sent"].key,)).fetchone()
    assert row[0] == "109876"


def test_original_remote_ids_are_the_sent_posts_that_are_neither_corrections_nor_deletions(db: Store) -> None:
    """What a deletion takes down: the notice's posts on that channel that were sent, not its correction (which
    stays up), not a deletion entry, not one still queued or parked, and nothing on another channel."""
    outbox = Outbox(db)
    rows = {
        "first": message("n1", channel="mastodon", version="new-abc-1"),
        "update": message("n1", channel="mastodon", version="updated-def-1"),
        "correction": message("n1", channel="mastodon", version="correction-1700000000"),
        "deletion": message("n1", channel="mastodon", version="delete-1700000001"),
        "queued": message("n1", channel="mastodon", version="updated-ghi-1"),
        "parked": message("n1", channel="mastodon", version="updated-jkl-1"),
        "elsewhere": message("n1", channel="bluesky", version="new-abc-1"),
        "other notice": message("n2", channel="mastodon", version="new-abc-1"),
    }
    with db.transaction() as conn:
        Outbox.enqueue(conn, rows.values(), T0)
    for name, m in rows.items():
        if name == "parked":
            outbox.park(m.key, "HTTP 422")
        elif name != "queued":
            outbox.mark_sent(m.key, T0, remote_id=f"id-{name}")
    assert sorted(OutboxHistory(db).original_remote_ids("mastodon", "n1")) == ["id-first", "id-update"]
    assert OutboxHistory(db).original_remote_ids("mastodon", "n3") == []


def test_operator_reports_read_parked_and_latest_sent_rows(db: Store) -> None:
    outbox = Outbox(db)
    with db.transaction() as conn:
        Outbox.enqueue(conn, [message("a"), message("b"), message("c")], T0)
    by_id = {e.notice_id: e for e in outbox.due("mqtt", T0)}
    outbox.mark_sent(by_id["a"].key, T0 + timedelta(seconds=1), remote_id="r-a")
    outbox.mark_sent(by_id["b"].key, T0 + timedelta(seconds=2))
    outbox.park(by_id["c"].key, "HTTP 422: text too long")
    assert [(r.notice_id, r.sent_at) for r in OutboxHistory(db).latest_sent(limit=10)] == [
        ("b", T0 + timedelta(seconds=2)), ("a", T0 + timedelta(seconds=1))]
    assert [r.notice_id for r in OutboxHistory(db).latest_sent(limit=1)] == ["b"]
    [parked] = OutboxHistory(db).parked(limit=10)
    assert (parked.notice_id, parked.error, parked.attempts, parked.payload) == (
        "c", "HTTP 422: text too long", 1, b"payload c")
    assert OutboxHistory(db).backlog() == {("mqtt", "parked"): (1, T0)}
    assert OutboxHistory(db).latest_payload("mqtt", "a") == b"payload a"
    assert OutboxHistory(db).latest_payload("mqtt", "missing") is None
    assert OutboxHistory(db).issued("mqtt", "c")
    assert not OutboxHistory(db).issued("mastodon", "c")


def sample_state() -> NetworkState:
    alert = Alert(
        "a1", "TECHNICAL_PROBLEM", "NO_SERVICE", Severity.SEVERE,
        LocalizedText.of(zh="停运", en="No service"), LocalizedText.of(en="Details"), LocalizedText(),
        (InformedEntity(line_id="1"), InformedEntity(station_id="S04", direction_id=1)),
        (ActivePeriod(T0, None), ActivePeriod(None, T0 + timedelta(hours=1))),
    )
    record = AlertRecord(alert, alert_version(alert), "ops", T0, T0, missing=1)
    platform = CrowdingReading("S04", Occupancy.FULL, T0, 101, "1", 0)
    crowding = CrowdingRecord("S04", Occupancy.FULL, 101, T0, T0, 1, 101, Occupancy.FEW_SEATS_AVAILABLE, T0,
                              (platform,), "flow")
    return NetworkState(
        alerts={"a1": record}, crowding={"S04": crowding},
        lines={"1": LineStatus(LineStatusKind.SUSPENDED, ("a1",), 0, "TECHNICAL_PROBLEM")}, as_of=T0,
    )


def test_state_round_trips_through_the_database(tmp_path: Path) -> None:
    path = tmp_path / "broadcaster.db"
    db = Database(path)
    store = StateStore(db)
    state = sample_state()
    with db.transaction() as conn:
        store.save(conn, state)
    store.committed()
    db.close()
    loaded = StateStore(Database(path)).load()
    assert loaded.alerts == state.alerts
    assert loaded.crowding == state.crowding
    assert dict(loaded.lines) == dict(state.lines)
    assert loaded.as_of == T0


def test_save_writes_only_what_changed(sqlite_db: Database) -> None:
    db = sqlite_db
    store = StateStore(db)
    state = sample_state()
    with db.transaction() as conn:
        store.save(conn, state)
    store.committed()
    before = db.conn.total_changes
    with db.transaction() as conn:
        store.save(conn, state)
    store.committed()
    assert db.conn.total_changes == before
    emptier = NetworkState(alerts={}, crowding=state.crowding, lines=state.lines, as_of=T0)
    with db.transaction() as conn:
        store.save(conn, emptier)
    store.committed()
    assert db.conn.execute("SELECT COUNT(*) FROM state WHERE kind = 'alert'").fetchone()[0] == 0


def test_rows_this_release_does_not_write_are_removed_at_the_first_save(sqlite_db: Database) -> None:
    """A kind an older release wrote (or a meta key it kept) is not part of any state this release loads: the
    first save after the load removes it, so the table holds exactly the state committed."""
    db = sqlite_db
    with db.transaction() as conn:
        conn.execute("INSERT INTO state (kind, key, body) VALUES ('retired', 'x', X'7B7D'), ('meta', 'old', X'31')")
    store = StateStore(db)
    store.load()
    with db.transaction() as conn:
        store.save(conn, sample_state())
    store.committed()
    kinds = {tuple(row) for row in db.conn.execute("SELECT kind, key FROM state WHERE kind IN ('retired', 'meta')")}
    assert kinds == {("meta", "as_of")}


def test_make_due_brings_backed_off_entries_forward(db: Store) -> None:
    outbox = Outbox(db)
    with db.transaction() as conn:
        Outbox.enqueue(conn, [message("a"), message("b", channel="mastodon")], T0)
    for entry in outbox.due("mqtt", T0) + outbox.due("mastodon", T0):
        outbox.retry_later(entry, T0, "not connected", retry_after=600)
    assert outbox.due("mqtt", T0 + timedelta(seconds=1)) == []
    assert outbox.make_due("mqtt", T0 + timedelta(seconds=1)) == 1
    assert [e.notice_id for e in outbox.due("mqtt", T0 + timedelta(seconds=1))] == ["a"]
    assert outbox.due("mastodon", T0 + timedelta(seconds=1)) == []  # other channels keep their backoff


def test_in_flight_mark_survives_a_crash_and_a_clear_failure_removes_it(db: Store) -> None:
    outbox = Outbox(db)
    with db.transaction() as conn:
        Outbox.enqueue(conn, [message("a", channel="mastodon")], T0)
    entry = outbox.due("mastodon", T0)[0]
    assert not entry.uncertain
    outbox.begin_attempt(entry.key, T0)
    # A crash now: the next run sees the attempt may have landed.
    assert Outbox(db).due("mastodon", T0)[0].uncertain
    # The attempt failed in a way that proves it did not land (connection refused): not uncertain.
    outbox.retry_later(entry, T0, "refused", retry_after=0, uncertain=False)
    assert not outbox.due("mastodon", T0 + timedelta(minutes=10))[0].uncertain
    again = outbox.due("mastodon", T0 + timedelta(minutes=10))[0]
    outbox.begin_attempt(again.key, T0)
    outbox.retry_later(again, T0, "timeout", retry_after=0, uncertain=True)
    assert outbox.due("mastodon", T0 + timedelta(hours=1))[0].uncertain


def test_a_platform_error_text_with_a_nul_character_is_recorded_on_every_engine(db: Store) -> None:
    """A hostile or broken platform's answer ends up in the error text (`HTTP 422: <body>`); PostgreSQL's TEXT
    refuses U+0000, and a failure to record the failure would leave the post due again and again."""
    outbox = Outbox(db)
    with db.transaction() as conn:
        Outbox.enqueue(conn, [message("a", channel="mastodon"), message("b", channel="mastodon")], T0)
    first, second = outbox.due("mastodon", T0)
    outbox.retry_later(first, T0, "HTTP 500: bad\x00answer", retry_after=0, uncertain=True)
    outbox.park(second.key, "HTTP 422: bad\x00answer")
    errors = dict(db.conn.execute("SELECT notice_id, error FROM outbox").fetchall())
    assert errors == {"a": "HTTP 500: bad\ufffdanswer", "b": "HTTP 422: bad\ufffdanswer"}
    assert outbox.due("mastodon", T0 + timedelta(hours=1))[0].uncertain


_FAMILY_STEPS = st.lists(
    st.tuples(
        # What happens to the crowding family ("partly": a new mapping, most records the very objects as before).
        st.sampled_from(["same", "changed", "partly", "dropped", "plain dict"]),
        st.booleans(),  # whether the lines family changes too
        st.booleans(),  # whether the transaction fails (nothing committed)
    ),
    min_size=1, max_size=12,
)


@given(steps=_FAMILY_STEPS, seed=st.integers(0, 2**16))
@settings(max_examples=120, deadline=None)
def test_the_database_always_holds_the_state_last_committed(tmp_path_factory: pytest.TempPathFactory,
                                                            steps: list[tuple[str, bool, bool]], seed: int) -> None:
    """The state store skips whole families that are the very read-only mapping committed last time, and
    records that are the very objects encoded last time. Whatever the sequence of saves, unchanged or changed
    families, plain dicts changed in place and failed transactions, the rows on disk are exactly the encoding
    of the state last committed: a restart loads that state."""
    rng = random.Random(seed)
    db = Database(tmp_path_factory.mktemp("state") / "broadcaster.db")
    store = StateStore(db)
    base = sample_state()
    template = base.crowding["S04"]

    def crowding_family() -> dict[str, CrowdingRecord]:
        return {f"S{n:02d}": replace(template, station_id=f"S{n:02d}", percentage=rng.randint(0, 120))
                for n in rng.sample(range(20), rng.randint(0, 8))}

    plain: dict[str, CrowdingRecord] = crowding_family()
    state = replace(base, crowding=MappingProxyType(crowding_family()))
    committed = replace(base, crowding=MappingProxyType({}), lines=MappingProxyType({}), alerts={}, as_of=None)
    for crowding_step, lines_change, fails in steps:
        if crowding_step == "changed":
            state = replace(state, crowding=MappingProxyType(crowding_family()))
        elif crowding_step == "partly":
            records = dict(state.crowding)
            for station_id in rng.sample(sorted(records), min(len(records), rng.randint(0, 2))):
                del records[station_id]
            for station_id in rng.sample(sorted(records), min(len(records), rng.randint(0, 2))):
                # A new object: equal to the one before (its bytes the same) or not.
                records[station_id] = replace(records[station_id], percentage=rng.choice(
                    [records[station_id].percentage, rng.randint(0, 120)]))
            records.update(crowding_family() if rng.random() < 0.3 else {})
            state = replace(state, crowding=MappingProxyType(records))
        elif crowding_step == "dropped":
            state = replace(state, crowding=MappingProxyType({}))
        elif crowding_step == "plain dict":
            plain.clear()
            plain.update(crowding_family())  # the same dict object, changed in place
            state = replace(state, crowding=plain)
        if lines_change:
            kind = rng.choice(list(LineStatusKind))
            state = replace(state, lines=MappingProxyType({"1": LineStatus(kind, (), rng.randint(0, 900))}))
        try:
            with db.transaction() as conn:
                store.save(conn, state)
                if fails:
                    raise StoreError(db.path, "the disk said no")
        except StoreError:
            continue
        store.committed()
        committed = replace(state, crowding=dict(state.crowding))  # a copy: `plain` may change later
        loaded = StateStore(db).load()
        assert dict(loaded.crowding) == dict(committed.crowding)
        assert dict(loaded.lines) == dict(committed.lines)
        assert dict(loaded.alerts) == dict(committed.alerts)
    db.close()
