"""The committed network state, in the `state` table: one row per record, written as the difference to the last
save."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

import orjson

from broadcaster.model import LineDelay, LineOccupancy
from broadcaster.state import AlertRecord, CrowdingRecord, LineStatus, NetworkState
from broadcaster.store.codec import (
    decode_alert_record,
    decode_crowding_record,
    decode_delays,
    decode_line,
    decode_occupancy,
    dumps_sorted,
    encode_alert_record,
    encode_crowding_record,
    encode_delays,
    encode_line,
    encode_occupancy,
    from_iso,
    iso,
)
from broadcaster.store.engine import Connection, Store

#: One family of state rows as committed (or about to be): the read-only mapping it was encoded from (None: read
#: from the database, or a plain dict, which could change in place) and, by key, each record with its bytes (the
#: record None when read from the database).
_Family = tuple[object, dict[str, tuple[object, bytes]]]


class StateStore:
    """Loads the committed `NetworkState` and writes only the entries that changed since the last save."""

    def __init__(self, db: Store) -> None:
        self.db = db
        # kind -> the family as committed, and as saved by the transaction not yet known to have committed.
        self._persisted: dict[str, _Family] = {}
        self._pending: dict[str, _Family] = {}

    def load(self) -> NetworkState:
        alerts: dict[str, AlertRecord] = {}
        crowding: dict[str, CrowdingRecord] = {}
        delays: dict[str, tuple[LineDelay, ...]] = {}
        occupancy: dict[str, tuple[LineOccupancy, ...]] = {}
        lines: dict[str, LineStatus] = {}
        as_of: datetime | None = None
        persisted: dict[str, dict[str, tuple[object, bytes]]] = {}
        for kind, key, body in self.db.conn.execute("SELECT kind, key, body FROM state"):
            persisted.setdefault(kind, {})[key] = (None, bytes(body))
            d = orjson.loads(body)
            if kind == "alert":
                alerts[key] = decode_alert_record(d)
            elif kind == "crowding":
                crowding[key] = decode_crowding_record(d)
            elif kind == "delays":
                delays[key] = decode_delays(d)
            elif kind == "occupancy":
                occupancy[key] = decode_occupancy(d)
            elif kind == "line":
                lines[key] = decode_line(d)
            elif kind == "meta" and key == "as_of":
                as_of = from_iso(d)
        self._persisted = {kind: (None, rows) for kind, rows in persisted.items()}
        return NetworkState(
            MappingProxyType(alerts), MappingProxyType(crowding), MappingProxyType(delays),
            MappingProxyType(occupancy), MappingProxyType(lines), as_of,
        )

    def save(self, conn: Connection, state: NetworkState) -> None:
        """Write the difference to the last committed state, inside the caller's transaction.

        A family that is the very read-only mapping committed last time is not even walked, and a record that is
        the very object committed last time is not encoded again: the state is immutable, and `apply_snapshot`
        carries unchanged records, and the families a snapshot does not touch, over as the same objects. So a
        tick encodes only what changed (a 500-station city re-encoded everything in ~20 ms per tick), and a feed
        that carries no crowding does not walk the stations' records at all. What is on disk is known from
        `committed()`, after the commit succeeded: a failed transaction leaves it as it was.
        """
        pending: dict[str, _Family] = {}
        upserts: list[tuple[str, str, bytes]] = []
        deletes: list[tuple[str, str]] = []

        def family(kind: str, records: Mapping[str, Any], encode: Callable[[Any], object]) -> None:
            # Only a read-only view is known by its identity: a plain dict (tests build states from them) could
            # have changed in place since, so it is walked every time.
            source = records if isinstance(records, MappingProxyType) else None
            before_source, before = self._persisted.get(kind, (None, {}))
            if source is not None and source is before_source:
                pending[kind] = (source, before)
                return
            rows: dict[str, tuple[object, bytes]] = {}
            kept = 0  # keys of `before` still present: when all are, nothing is deleted
            for key, record in records.items():
                hit = before.get(key)
                if hit is not None:
                    kept += 1
                    if hit[0] is record:
                        rows[key] = hit
                        continue
                body = dumps_sorted(encode(record))
                rows[key] = (record, body)
                if hit is None or hit[1] != body:
                    upserts.append((kind, key, body))
            if kept < len(before):
                deletes.extend((kind, key) for key in before if key not in rows)
            pending[kind] = (source, rows)

        family("alert", state.alerts, encode_alert_record)
        family("crowding", state.crowding, encode_crowding_record)
        family("delays", state.delays, encode_delays)
        family("occupancy", state.occupancy, encode_occupancy)
        family("line", state.lines, encode_line)
        family("meta", {"as_of": state.as_of} if state.as_of else {}, lambda as_of: iso(as_of))
        for kind in self._persisted.keys() - pending.keys():  # a family this release no longer writes
            deletes.extend((kind, key) for key in self._persisted[kind][1])
        conn.executemany("INSERT INTO state (kind, key, body) VALUES (?, ?, ?)"
                         " ON CONFLICT (kind, key) DO UPDATE SET body = excluded.body", upserts)
        conn.executemany("DELETE FROM state WHERE kind = ? AND key = ?", deletes)
        self._pending = pending

    def committed(self) -> None:
        self._persisted = self._pending


def alert_stored(db: Store, alert_id: str) -> bool:
    """Whether the committed state holds the alert `alert_id` (without loading the state)."""
    return db.conn.execute("SELECT 1 FROM state WHERE kind = 'alert' AND key = ?", (alert_id,)).fetchone() is not None
