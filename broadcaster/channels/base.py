"""The one protocol every notice channel implements, and the capabilities a channel may add to it.

The post payload the outbox stores for a posting channel is `broadcaster.posts.Post`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from broadcaster.outbox import OutboxEntry

if TYPE_CHECKING:
    from broadcaster.render.length import PlatformProfile

__all__ = [
    "BatchOutcome", "BatchingChannel", "DeletingChannel", "DeletionNotifyingChannel", "NoticeChannel",
    "PostingChannel", "ThreadRefs", "VerifyingChannel",
]


@dataclass(frozen=True, slots=True)
class ThreadRefs:
    """Where a post goes in a thread: the remote ids (as the channel stored them) of the thread's first post
    and of the post this one answers. Both None for a post that starts a thread."""

    root: str | None = None
    parent: str | None = None


class NoticeChannel(Protocol):
    """Delivers outbox entries to one destination.

    `send` returns the platform's id for the post (None where there is none) only after the platform
    acknowledged it, and raises `TransientDeliveryError` (retry later, maybe with `retry_after`) or
    `PermanentDeliveryError` (park and report). `thread` says which earlier posts this one replies to.
    """

    @property
    def name(self) -> str: ...

    @property
    def ready(self) -> bool:
        """False while the channel knows it cannot deliver (e.g. disconnected): the drain loop waits."""
        ...

    async def send(self, entry: OutboxEntry, thread: ThreadRefs) -> str | None: ...


class PostingChannel(NoticeChannel, Protocol):
    """A channel that posts rendered text: it has a length rule (or None) and may need to ask the platform
    something at start-up (Mastodon's limit)."""

    @property
    def profile(self) -> PlatformProfile | None: ...

    async def start(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What became of a batch of outbox entries (`BatchingChannel.send_batch`): those the destination acknowledged,
    in order; those it refused, each with its reason; and why the rest had no answer, if any had none."""

    acked: list[OutboxEntry] = field(default_factory=list)
    refused: list[tuple[OutboxEntry, str]] = field(default_factory=list)
    stopped: str | None = None


@runtime_checkable
class BatchingChannel(Protocol):
    """A channel that delivers many entries at once, in order, with nothing to thread (the MQTT notice stream):
    the dispatcher hands it the due queue and records the whole answer in one transaction, where one entry at a
    time would pay a round trip and a commit per notice."""

    async def send_batch(self, entries: Sequence[OutboxEntry]) -> BatchOutcome:
        """Deliver `entries` in order; never raises for a delivery failure, which the outcome reports."""
        ...


@runtime_checkable
class SessionKeepingChannel(Protocol):
    """A channel that keeps a login session in the shared store (Bluesky): the leader renews it, so an instance
    taking over reads the one stored last instead of the one it read at start-up."""

    def reload_session(self) -> None: ...


@runtime_checkable
class VerifyingChannel(Protocol):
    """A channel that can prove its credentials with a call that changes nothing (for `broadcaster check`)."""

    async def verify(self) -> str:
        """A short description of what the platform confirmed (e.g. the account), or raise `DeliveryError`
        with the platform's reason (never the credential)."""
        ...


@runtime_checkable
class DeletingChannel(Protocol):
    """A channel that can take a post down again (Mastodon, Bluesky)."""

    async def delete(self, remote_id: str) -> None:
        """Delete one post by the id `send` returned; a post that is already gone counts as deleted."""
        ...


@runtime_checkable
class DeletionNotifyingChannel(Protocol):
    """A channel that cannot delete posts itself but passes the deletion on to whoever can (the webhook: a
    "delete" event its receiver acts on)."""

    async def notify_deletion(self, entry: OutboxEntry, thread: ThreadRefs) -> str | None:
        """Deliver the "delete" entry `entry` as `send` would: acknowledged, or a delivery error."""
        ...
