"""Remembers the latest posts each notice channel delivered, for the operator dashboard.

`RecordingChannel` wraps a channel and records what it acknowledged; it changes nothing about delivery.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from broadcaster.channels.base import NoticeChannel, ThreadRefs
from broadcaster.posts import Post

if TYPE_CHECKING:
    from broadcaster.outbox import OutboxEntry

NOTICE_SCHEMA_PREFIX = "broadcaster.mqtt.notice/"


@dataclass(frozen=True, slots=True)
class SentPost:
    channel: str
    sent_at: datetime
    notice_id: str
    kind: str
    texts: dict[str, str]  # language -> text as delivered
    remote_id: str | None


def describe(channel: str, entry: OutboxEntry, remote_id: str | None, at: datetime) -> SentPost:
    """What was sent: an MQTT notice carries every language, a micro-blog post one text."""
    try:
        data = orjson.loads(entry.payload)
    except orjson.JSONDecodeError:
        return SentPost(channel, at, entry.notice_id, "", {}, remote_id)
    if isinstance(data, dict) and str(data.get("schema", "")).startswith(NOTICE_SCHEMA_PREFIX):
        texts = {str(k): str(v) for k, v in dict(data.get("text") or {}).items()}
        return SentPost(channel, at, entry.notice_id, str(data.get("kind", "")), texts, remote_id)
    try:
        post = Post.from_payload(entry.payload)
    except (KeyError, TypeError, ValueError):
        return SentPost(channel, at, entry.notice_id, "", {}, remote_id)
    return SentPost(channel, at, entry.notice_id, post.kind, {post.language: post.text}, remote_id)


class PostLog:
    """The newest `per_channel` posts of every channel, newest first."""

    def __init__(self, per_channel: int = 8) -> None:
        self.per_channel = per_channel
        self._posts: dict[str, deque[SentPost]] = {}
        self.total: dict[str, int] = {}

    def add(self, post: SentPost) -> None:
        self._posts.setdefault(post.channel, deque(maxlen=self.per_channel)).appendleft(post)
        self.total[post.channel] = self.total.get(post.channel, 0) + 1

    def latest(self, channel: str) -> list[SentPost]:
        return list(self._posts.get(channel, ()))


class RecordingChannel:
    """`inner`, recording every acknowledged send in `log`."""

    def __init__(self, inner: NoticeChannel, log: PostLog) -> None:
        self.inner = inner
        self.log = log

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def ready(self) -> bool:
        return self.inner.ready

    def __getattr__(self, name: str) -> Any:
        # Anything else the pipeline asks of a channel (a posting channel's `profile`, `start`) is the inner one's,
        # except a batch: the dispatcher would deliver through it and bypass `send`, which records.
        if name == "send_batch":
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def send(self, entry: OutboxEntry, thread: ThreadRefs) -> str | None:
        remote_id = await self.inner.send(entry, thread)
        self.log.add(describe(self.name, entry, remote_id, datetime.now(UTC)))
        return remote_id
