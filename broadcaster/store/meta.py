"""The `meta` table: small values kept under a namespace (`KeyValueStore`)."""

from __future__ import annotations

from broadcaster.store.engine import Connection, Store


class KeyValueStore:
    """Small values that must survive a restart, in the `meta` table under "<namespace>:<key>": a platform
    session (so a crash loop does not log in again and again), the operator's alerts, corrections and digest
    marks. They may be credentials: the database file is created readable by its owner only."""

    def __init__(self, db: Store, namespace: str) -> None:
        self.db = db
        self.prefix = f"{namespace}:"

    def get(self, key: str) -> str | None:
        row = self.db.conn.execute("SELECT value FROM meta WHERE key = ?", (self.prefix + key,)).fetchone()
        return str(row[0]) if row else None

    def put(self, key: str, value: str | None) -> None:
        """Write (None: delete) one value in a transaction of its own. Not fenced (`leader_only=False`): a
        standby may keep a session or the installation id as well as the leader."""
        with self.db.transaction(leader_only=False) as conn:
            self.save(conn, key, value)

    def put_if_absent(self, key: str, value: str) -> str:
        """Write `value` unless the key has one already, and return the value the key holds: two instances
        starting at once on a new shared database both get the one the first commit wrote."""
        with self.db.transaction(leader_only=False) as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                         (self.prefix + key, value))
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (self.prefix + key,)).fetchone()
        return str(row[0])

    def save(self, conn: Connection, key: str, value: str | None) -> None:
        """Write (None: delete) one value inside the caller's transaction."""
        if value is None:
            conn.execute("DELETE FROM meta WHERE key = ?", (self.prefix + key,))
        else:
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)"
                         " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (self.prefix + key, value))

