"""Retained topics: what the broker holds (broadcaster/retained.py plans, these two remember)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from broadcaster.store.codec import from_iso
from broadcaster.store.engine import Connection, Store


def load_retained(db: Store) -> tuple[dict[str, str], dict[str, datetime]]:
    """(topic -> digest of the retained payload on the broker, topic -> when its clear was acknowledged)."""
    published = {str(t): str(d) for t, d in db.conn.execute("SELECT topic, digest FROM retained")}
    cleared = {str(t): from_iso(at) for t, at in db.conn.execute("SELECT topic, cleared_at FROM retained_cleared")}
    return published, cleared


def reserve_retained(conn: Connection, topics: Iterable[tuple[str, str]]) -> None:
    """Record (topic, placeholder digest) for topics about to be published for the first time, inside the
    caller's transaction; a topic already recorded keeps its row."""
    conn.executemany("INSERT INTO retained (topic, digest) VALUES (?, ?) ON CONFLICT (topic) DO NOTHING", topics)


def save_retained(
    conn: Connection,
    *,
    published: Iterable[tuple[str, str]],
    unpublished: Iterable[tuple[str]],
    cleared: Iterable[tuple[str, str]],
    forgotten: Iterable[tuple[str]],
) -> None:
    """Record acknowledged publications inside the caller's transaction: (topic, digest) published,
    (topic,) no longer published, (topic, iso time) clears to remember, (topic,) clears to forget."""
    conn.executemany("INSERT INTO retained (topic, digest) VALUES (?, ?)"
                     " ON CONFLICT (topic) DO UPDATE SET digest = excluded.digest", published)
    conn.executemany("DELETE FROM retained WHERE topic = ?", unpublished)
    conn.executemany("INSERT INTO retained_cleared (topic, cleared_at) VALUES (?, ?) ON CONFLICT (topic) DO NOTHING",
                     cleared)
    conn.executemany("DELETE FROM retained_cleared WHERE topic = ?", forgotten)

