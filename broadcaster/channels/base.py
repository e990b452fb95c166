"""The one protocol every notice channel implements, and the post payload the outbox stores for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import orjson

from broadcaster.outbox import OutboxEntry

if TYPE_CHECKING:
    from broadcaster.render.length import PlatformProfile


@dataclass(frozen=True, slots=True)
class ThreadRefs:
    """Where a post goes in a thread: the remote ids (as the channel stored them) of the thread's first post
    and of the post this one answers. Both None for a post that starts a thread."""

    root: str | None = None
    parent: str | None = None


@dataclass(frozen=True, slots=True)
class Post:
    """What a micro-blog channel posts for one outbox entry (the entry's payload, decoded).

    `text` is final: already fitted to the platform's length rule. `part`/`parts` number a thread that a long
    notice was split into. `reply_to_notice` names the notice whose first post this one answers (an update or
    all-clear of an alert), or None. `emergency` asks for prominence (Mastodon content warning).
    """

    notice_id: str
    kind: str
    text: str
    language: str
    part: int = 0
    parts: int = 1
    reply_to_notice: str | None = None
    emergency: bool = False
    spoiler_text: str | None = None
    visibility: str | None = None
    #: Every language the text holds, `language` first (a post may join several); () means `language` alone.
    languages: tuple[str, ...] = ()

    @property
    def all_languages(self) -> tuple[str, ...]:
        return self.languages or (self.language,)

    def to_payload(self) -> bytes:
        return orjson.dumps({
            "notice_id": self.notice_id, "kind": self.kind, "text": self.text, "language": self.language,
            "part": self.part, "parts": self.parts, "reply_to_notice": self.reply_to_notice,
            "emergency": self.emergency, "spoiler_text": self.spoiler_text, "visibility": self.visibility,
            "languages": list(self.all_languages),
        })

    @classmethod
    def from_payload(cls, payload: bytes) -> Post:
        d = orjson.loads(payload)
        return cls(
            d["notice_id"], d["kind"], d["text"], d["language"], d["part"], d["parts"], d["reply_to_notice"],
            d["emergency"], d["spoiler_text"], d["visibility"],
            tuple(d.get("languages") or ()),  # absent from entries queued before it existed
        )


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


@runtime_checkable
class VerifyingChannel(Protocol):
    """A channel that can prove its credentials with a call that changes nothing (for `broadcaster check`)."""

    async def verify(self) -> str:
        """A short description of what the platform confirmed (e.g. the account), or raise `DeliveryError`
        with the platform's reason (never the credential)."""
        ...


#: The `kind` of an outbox entry that asks a channel to delete the posts of its notice (a correction's option).
DELETE_KIND = "delete"


@runtime_checkable
class DeletingChannel(Protocol):
    """A channel that can take a post down again (Mastodon, Bluesky)."""

    async def delete(self, remote_id: str) -> None:
        """Delete one post by the id `send` returned; a post that is already gone counts as deleted."""
        ...
