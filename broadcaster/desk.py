"""Operator requests from the command line (`announce`, `correct`), carried out by the running broadcaster.

The command writes the request into the state database and waits for its result. A running broadcaster
picks requests up within a second and carries them out through the one pipeline; when none is running,
the command carries its request out itself (taking the state directory's lock, like `once`). Either way the
operator is told the notice id only after the notice was committed to the outbox.

A request may carry an ``idempotency_key`` (`--idempotency-key`): a second request with the same key (a retry
after a lost terminal, or the same command run twice at once) is not queued again but answered by the first
request's result; the same key with another request is refused (`IdempotencyKeyReused`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from broadcaster import idempotency
from broadcaster.channels.mqtt import CHANNEL_NAME as NOTICE_STREAM  # every notice ever issued has a row there
from broadcaster.errors import IdempotencyKeyReused, RequestFailed
from broadcaster.outbox_history import OutboxHistory
from broadcaster.store import Connection, Store, alert_stored, iso

log = logging.getLogger(__name__)

PENDING, DONE, FAILED = "pending", "done", "failed"
#: The idempotency scope of command-line requests (an admin token's id is the API's).
DESK_SCOPE = "desk"


@dataclass(frozen=True, slots=True)
class DeskRequest:
    id: int
    action: str  # "announce" or "correct"
    body: Mapping[str, Any]


def submit(db: Store, action: str, body: Mapping[str, Any]) -> int:
    """Queue a request; returns its id, or the id of the earlier request with the same idempotency key.

    Raises:
        IdempotencyKeyReused: the key came with a different request within 24 hours.
    """
    key = body.get("idempotency_key")
    now = datetime.now(UTC)
    # One writer at a time (BEGIN IMMEDIATE; PostgreSQL's write lock): two commands with one key queue one request.
    # A standby queues it too (leader_only=False): the leader carries it out.
    with db.transaction(leader_only=False) as conn:
        if key is not None:
            fingerprint = idempotency.fingerprint(action, "", {k: v for k, v in body.items() if k != "idempotency_key"})
            earlier = idempotency.recall(db, DESK_SCOPE, str(key), now)
            if earlier is not None and earlier.fingerprint != fingerprint:
                raise IdempotencyKeyReused(str(key))
            if earlier is not None and earlier.request_id is not None and _status(conn, earlier.request_id) != FAILED:
                return earlier.request_id
        request_id = int(conn.execute(
            "INSERT INTO requests (created_at, action, body) VALUES (?, ?, ?) RETURNING id",
            (iso(now), action, orjson.dumps(body)),
        ).fetchone()[0])
        if key is not None:
            idempotency.remember(conn, DESK_SCOPE, str(key), fingerprint, now, request_id=request_id)
    return request_id


def enqueue(conn: Connection, action: str, body: Mapping[str, Any]) -> int:
    """Queue a request within the caller's transaction (the admin API on a standby, which writes its
    Idempotency-Key row in the same transaction); returns its id."""
    row = conn.execute(
        "INSERT INTO requests (created_at, action, body) VALUES (?, ?, ?) RETURNING id",
        (iso(datetime.now(UTC)), action, orjson.dumps(body)),
    ).fetchone()
    return int(row[0])


def _status(conn: Connection, request_id: int) -> str | None:
    row = conn.execute("SELECT status FROM requests WHERE id = ?", (request_id,)).fetchone()
    return None if row is None else str(row[0])


def notice_known(db: Store, notice_id: str) -> bool:
    """Whether `notice_id` was ever issued: an active alert, or any notice on the notice stream."""
    if notice_id.startswith("alert-") and alert_stored(db, notice_id.removeprefix("alert-")):
        return True
    return OutboxHistory(db).issued(NOTICE_STREAM, notice_id)


def pending(db: Store) -> list[DeskRequest]:
    rows = db.conn.execute("SELECT id, action, body FROM requests WHERE status = ? ORDER BY id", (PENDING,))
    return [DeskRequest(r[0], r[1], orjson.loads(r[2])) for r in rows]


def record(conn: Connection, request_id: int, *, result: str | None = None, error: str | None = None) -> None:
    """Finish a pending request within the caller's transaction (a notice commits its request's result with it).

    A request is finished once: one already done or failed is left as it is.
    """
    conn.execute(
        "UPDATE requests SET status = ?, result = ?, error = ?, done_at = ? WHERE id = ? AND status = ?",
        (FAILED if error else DONE, result, error, iso(datetime.now(UTC)), request_id, PENDING),
    )


def outcome(db: Store, request_id: int) -> tuple[str, str | None, str | None]:
    """(status, result, error) of request `request_id`."""
    status, result, error = db.conn.execute(
        "SELECT status, result, error FROM requests WHERE id = ?", (request_id,)
    ).fetchone()
    return str(status), result, error


def finish(db: Store, request_id: int, *, result: str | None = None, error: str | None = None) -> None:
    with db.transaction() as conn:
        record(conn, request_id, result=result, error=error)


async def wait_for(db: Store, request_id: int, timeout: float) -> str:  # noqa: ASYNC109
    """The request's result once the running broadcaster has carried it out.

    Raises:
        RequestFailed: it failed, or nothing carried it out within `timeout` seconds.
    """
    try:
        async with asyncio.timeout(timeout):
            while True:
                status, result, error = outcome(db, request_id)
                if status == DONE:
                    return str(result)
                if status == FAILED:
                    raise RequestFailed(str(error))
                await asyncio.sleep(0.1)  # another process commits the answer; the database is all we share
    except TimeoutError:
        raise RequestFailed(
            f"the running broadcaster did not take request {request_id} within {timeout:g} s; it stays queued"
        ) from None

