"""The one protocol every notice channel implements."""

from __future__ import annotations

from typing import Protocol

from broadcaster.outbox import OutboxEntry


class NoticeChannel(Protocol):
    """Delivers outbox entries to one destination.

    `send` returns the platform's id for the post (None where there is none) only after the platform
    acknowledged it, and raises `TransientDeliveryError` (retry later, maybe with `retry_after`) or
    `PermanentDeliveryError` (park and report).
    """

    @property
    def name(self) -> str: ...

    @property
    def ready(self) -> bool:
        """False while the channel knows it cannot deliver (e.g. disconnected): the drain loop waits."""
        ...

    async def send(self, entry: OutboxEntry) -> str | None: ...
