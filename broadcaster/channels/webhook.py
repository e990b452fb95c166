"""Webhook: a signed JSON POST per notice part, for systems of the operator's own (see docs/channels.md).

Headers: `Idempotency-Key` (the outbox key: the same on every retry, so a receiver can deduplicate),
`X-Broadcaster-Timestamp` (Unix seconds) and, when a secret is configured,
`X-Broadcaster-Signature: sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import datetime

import orjson

from broadcaster.channels.base import ThreadRefs
from broadcaster.channels.http import HttpChannel, HttpChannelClient, check_status
from broadcaster.config import Secret, WebhookChannelConfig
from broadcaster.outbox import OutboxEntry
from broadcaster.posts import Post
from broadcaster.store import iso

SCHEMA = "broadcaster.webhook/1"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: a receiver computes the same and compares in constant time."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WebhookChannel(HttpChannel[WebhookChannelConfig]):
    """No length rule (`profile` None): the receiver gets the full text."""

    def __init__(
        self, config: WebhookChannelConfig, http: HttpChannelClient, secret: Secret | None,
        clock: Callable[[], datetime],
    ) -> None:
        super().__init__(config, http, clock)
        self._secret = secret

    def body(self, entry: OutboxEntry, thread: ThreadRefs) -> bytes:
        post = Post.from_payload(entry.payload)
        return orjson.dumps({
            "schema": SCHEMA, "key": entry.key, "notice_id": post.notice_id, "version": entry.version,
            "kind": post.kind, "part": post.part, "parts": post.parts, "language": post.language,
            "text": post.text, "emergency": post.emergency, "reply_to_notice": post.reply_to_notice,
            "issued_at": iso(entry.created_at),
            # Since broadcaster.webhook/1.1: the hashtags of the notice's lines, then its stations' (no '#').
            "tags": list(post.tags),
        })

    async def verify(self) -> str:
        """With `check_dry_run`: a signed POST with `X-Broadcaster-Dry-Run: 1`, which the receiver answers 2xx
        without acting on it. Without it the receiver is not called: it might take any POST for a notice."""
        if not self.config.check_dry_run:
            return "not called: check_dry_run is off"
        now = self.clock()
        body = orjson.dumps({"schema": SCHEMA, "kind": "check", "dry_run": True, "issued_at": iso(now)})
        status = await self._post(body, {"X-Broadcaster-Dry-Run": "1"}, now)
        return f"dry run answered HTTP {status}"

    async def send(self, entry: OutboxEntry, thread: ThreadRefs) -> str | None:
        await self._post(self.body(entry, thread), {"Idempotency-Key": entry.key}, self.clock())
        return entry.key

    async def notify_deletion(self, entry: OutboxEntry, thread: ThreadRefs) -> str | None:
        """A correction that deletes its notice's posts: the receiver gets a "delete" event and acts on it."""
        return await self.send(entry, thread)

    async def _post(self, body: bytes, extra_headers: dict[str, str], now: datetime) -> int:
        """POST `body`, timestamped and signed (docs/channels.md); returns the 2xx status or raises the delivery
        error its answer means."""
        timestamp = str(int(now.timestamp()))
        headers = {"Content-Type": "application/json", "X-Broadcaster-Timestamp": timestamp, **extra_headers}
        if self._secret is not None:
            headers["X-Broadcaster-Signature"] = signature(self._secret.reveal(), timestamp, body)
        reply = await self.http.request(self.name, "POST", self.config.url, content=body, headers=headers,
                                        deadline_s=self.config.timeout_seconds)
        check_status(self.name, reply, now)
        return reply.status
