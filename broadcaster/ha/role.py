"""What the rest of the code asks about leadership, whoever decides it.

With SQLite there is one instance (the state directory's lock makes sure), always the leader: `SoleInstance`.
With PostgreSQL several instances share the database and a lease in it decides (broadcaster/ha/lease.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Role(StrEnum):
    """What an instance does now. `status` and `/v1/health` report it."""

    LEADER = "leader"  # polls, commits, publishes and delivers
    STANDBY = "standby"  # holds everything loaded, takes requests into the shared store, waits for the lease


@dataclass(frozen=True, slots=True)
class Fence:
    """The lease an instance holds: every leader-only transaction checks, in the transaction, that the lease row
    still names this holder with this epoch (a fencing token), so a former leader can commit nothing."""

    holder: str
    epoch: int


class Leadership(Protocol):
    """Who leads. Read on the event loop thread only."""

    @property
    def instance(self) -> str:
        """This instance's id (unique among the instances sharing a database)."""

    @property
    def role(self) -> Role: ...

    def fence(self) -> Fence | None:
        """The lease this instance holds now, or None (a standby, or a leader that lost or gave up its lease)."""

    def may_act(self) -> bool:
        """True only while this instance leads and its lease is still valid on its local clock, with the safety
        margin: checked before every send and every publish (self-fencing), so nothing leaves a former leader
        after its lease could have passed to another."""

    async def wait_until_leading(self) -> None:
        """Return once this instance holds the lease."""

    @property
    def lost(self) -> asyncio.Event:
        """Set once a leader has lost its lease (or could not renew it in time): it must stop at once."""


class SoleInstance:
    """The one instance of a SQLite deployment: always the leader, with no lease to check."""

    def __init__(self, instance: str = "sole") -> None:
        self._instance = instance
        self._lost = asyncio.Event()

    @property
    def instance(self) -> str:
        return self._instance

    @property
    def role(self) -> Role:
        return Role.LEADER

    def fence(self) -> Fence | None:
        return None

    def may_act(self) -> bool:
        return True

    async def wait_until_leading(self) -> None:
        return None

    @property
    def lost(self) -> asyncio.Event:
        return self._lost  # never set
