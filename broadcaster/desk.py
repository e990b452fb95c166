"""Operator requests from the command line (`announce`, `correct`), carried out by the running broadcaster.

The command writes the request into the state database and waits for its result. A running broadcaster
picks requests up within a second and carries them out through the one pipeline; when none is running,
the command carries its request out itself (taking the state directory's lock, like `once`). Either way the
operator is told the notice id only after the notice was committed to the outbox.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from broadcaster.errors import BroadcasterError
from broadcaster.store import Database, iso

log = logging.getLogger(__name__)

PENDING, DONE, FAILED = "pending", "done", "failed"


@dataclass(frozen=True, slots=True)
class DeskRequest:
    id: int
    action: str  # "announce" or "correct"
    body: Mapping[str, Any]


class RequestFailed(BroadcasterError):
    """The broadcaster could not carry out an operator request."""


def submit(db: Database, action: str, body: Mapping[str, Any]) -> int:
    with db.transaction() as conn:
        cursor = conn.execute(
            "INSERT INTO requests (created_at, action, body) VALUES (?, ?, ?)",
            (iso(datetime.now(UTC)), action, orjson.dumps(body)),
        )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def pending(db: Database) -> list[DeskRequest]:
    rows = db.conn.execute("SELECT id, action, body FROM requests WHERE status = ? ORDER BY id", (PENDING,))
    return [DeskRequest(r[0], r[1], orjson.loads(r[2])) for r in rows]


def record(conn: sqlite3.Connection, request_id: int, *, result: str | None = None, error: str | None = None) -> None:
    """Finish a pending request within the caller's transaction (a notice commits its request's result with it).

    A request is finished once: one already done or failed is left as it is.
    """
    conn.execute(
        "UPDATE requests SET status = ?, result = ?, error = ?, done_at = ? WHERE id = ? AND status = ?",
        (FAILED if error else DONE, result, error, iso(datetime.now(UTC)), request_id, PENDING),
    )


def finish(db: Database, request_id: int, *, result: str | None = None, error: str | None = None) -> None:
    with db.transaction() as conn:
        record(conn, request_id, result=result, error=error)


async def wait_for(db: Database, request_id: int, timeout: float) -> str:  # noqa: ASYNC109
    """The request's result once the running broadcaster has carried it out.

    Raises:
        RequestFailed: it failed, or nothing carried it out within `timeout` seconds.
    """
    try:
        async with asyncio.timeout(timeout):
            while True:
                row = db.conn.execute("SELECT status, result, error FROM requests WHERE id = ?", (request_id,))
                status, result, error = row.fetchone()
                if status == DONE:
                    return str(result)
                if status == FAILED:
                    raise RequestFailed(str(error))
                await asyncio.sleep(0.1)  # another process commits the answer; the database is all we share
    except TimeoutError:
        raise RequestFailed(
            f"the running broadcaster did not take request {request_id} within {timeout:g} s; it stays queued"
        ) from None

