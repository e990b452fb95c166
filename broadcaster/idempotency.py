"""Idempotency keys of operator requests: a retried request gets the first answer, not a second notice.

The admin API honours an ``Idempotency-Key`` header on its writes, the command line a ``--idempotency-key``
(docs/admin.md). A key is remembered for `KEEP` (24 hours) in the state database, per scope (an admin token's
id, or the command line's desk), with a fingerprint of the request it came with: the same key with the same
request gets the same answer; with another request it is refused (as the IETF draft "The Idempotency-Key HTTP
Header Field" asks: 422 on the API, exit status 2 on the command line).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import orjson

from broadcaster.store import Connection, Store, iso

#: How long a key is remembered.
KEEP: Final = timedelta(hours=24)
#: Visible ASCII, 1 to 255 characters (a UUID is the usual choice).
_KEY: Final = re.compile(r"[\x21-\x7e]{1,255}")
KEY_RULE: Final = "an idempotency key is 1 to 255 visible ASCII characters (a UUID, say)"


@dataclass(frozen=True, slots=True)
class Remembered:
    fingerprint: str
    status: int | None  # the answer given (admin API) ...
    body: bytes | None
    request_id: int | None  # ... or the desk request carrying it out (command line)


def valid_key(key: str) -> bool:
    return _KEY.fullmatch(key) is not None


def fingerprint(action: str, subject: str, body: Any) -> str:
    """What a key is bound to: the action, its subject (a notice id for a correction) and the request body."""
    canonical = orjson.dumps([action, subject, body], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def recall(db: Store, scope: str, key: str, now: datetime) -> Remembered | None:
    """The key's record if it was used within `KEEP` (inside an open transaction, as that transaction sees it:
    the database has one connection)."""
    row = db.conn.execute(
        "SELECT fingerprint, status, body, request_id FROM idempotency WHERE scope = ? AND key = ? AND created_at >= ?",
        (scope, key, iso(now - KEEP)),
    ).fetchone()
    if row is None:
        return None
    return Remembered(row[0], row[1], bytes(row[2]) if row[2] is not None else None, row[3])


def remember(
    conn: Connection, scope: str, key: str, fingerprint_: str, now: datetime, *,
    status: int | None = None, body: bytes | None = None, request_id: int | None = None,
) -> None:
    """Record the key's answer (inside the caller's transaction), and forget keys older than `KEEP`."""
    conn.execute("DELETE FROM idempotency WHERE created_at < ?", (iso(now - KEEP),))
    conn.execute(
        "INSERT INTO idempotency (scope, key, fingerprint, created_at, status, body, request_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint,"
        " created_at = excluded.created_at, status = excluded.status, body = excluded.body,"
        " request_id = excluded.request_id",
        (scope, key, fingerprint_, iso(now), status, body, request_id),
    )
