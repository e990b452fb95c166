"""The state database: its transactions, the network state, feed records and snapshots, retained topics and the
`meta` table's small values. Import from here.

One job per module: `database` (the file, its transactions and schema version), `migrations` (how a schema is
brought up to date, for any engine) and `sqlite_steps` (SQLite's numbered steps), `codec` (how values are written),
`state` (the network state), `feeds` (feed records and stored snapshots), `retained` (retained topics) and
`meta` (`KeyValueStore`). The outbox, the operator's desk and idempotency keys have their own storage modules
(`broadcaster/outbox.py`, `desk.py`, `idempotency.py`).
"""

from broadcaster.store.codec import (
    decode_alert,
    decode_snapshot,
    diagnostic,
    encode_alert,
    encode_snapshot,
    from_iso,
    iso,
)
from broadcaster.store.database import SCHEMA_VERSION, Database, copy_database, refuse_newer_database
from broadcaster.store.engine import Connection, Store
from broadcaster.store.feeds import (
    FeedRecord,
    load_feeds,
    load_snapshot,
    load_snapshot_digests,
    save_feed,
    save_snapshot,
)
from broadcaster.store.meta import KeyValueStore
from broadcaster.store.retained import load_retained, reserve_retained, save_retained
from broadcaster.store.state import StateStore, alert_stored

__all__ = [
    "SCHEMA_VERSION",
    "Connection",
    "Database",
    "FeedRecord",
    "KeyValueStore",
    "StateStore",
    "Store",
    "alert_stored",
    "copy_database",
    "decode_alert",
    "decode_snapshot",
    "diagnostic",
    "encode_alert",
    "encode_snapshot",
    "from_iso",
    "iso",
    "load_feeds",
    "load_retained",
    "load_snapshot",
    "load_snapshot_digests",
    "refuse_newer_database",
    "reserve_retained",
    "save_feed",
    "save_retained",
    "save_snapshot",
]
