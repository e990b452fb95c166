"""Mastodon: `POST /api/v1/statuses` with the outbox key as `Idempotency-Key`, threads by `in_reply_to_id`.

Mastodon remembers an idempotency key for one hour, so a retry within that hour can never create a second
status. An entry whose earlier attempt may have reached the server is therefore retried only within 55
minutes of its creation; after that it is parked and reported rather than risk a visible duplicate.
The instance's own `max_characters` is read at start-up (`GET /api/v2/instance`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from broadcaster.channels.base import ThreadRefs
from broadcaster.channels.http import HttpChannel, HttpChannelClient, check_status
from broadcaster.config import MastodonChannelConfig, Secret
from broadcaster.errors import DeliveryError, PermanentDeliveryError
from broadcaster.outbox import OutboxEntry
from broadcaster.posts import Post
from broadcaster.render.length import PlatformProfile, mastodon

log = logging.getLogger(__name__)

#: Mastodon keeps idempotency keys for an hour; stay well inside it.
IDEMPOTENCY_WINDOW = timedelta(minutes=55)


class MastodonChannel(HttpChannel[MastodonChannelConfig]):
    def __init__(
        self, config: MastodonChannelConfig, http: HttpChannelClient, token: Secret, clock: Callable[[], datetime]
    ) -> None:
        super().__init__(config, http, clock)
        self._token = token
        self.base = config.url.rstrip("/")
        self.profile: PlatformProfile = mastodon(config.max_characters)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token.reveal()}"}

    async def start(self) -> None:
        """Learn the instance's length rule; keep the configured one if the instance cannot be asked."""
        try:
            reply = await self.http.request(
                self.name, "GET", f"{self.base}/api/v2/instance", deadline_s=self.config.timeout_seconds
            )
            check_status(self.name, reply, self.clock())
            statuses = (reply.json() or {}).get("configuration", {}).get("statuses", {})
            limit = int(statuses.get("max_characters", self.config.max_characters))
            url_length = int(statuses.get("characters_reserved_per_url", 23))
        except (DeliveryError, TypeError, ValueError, AttributeError) as exc:
            log.warning("%s: could not read the instance's limits (%s); assuming %d characters",
                        self.name, exc, self.config.max_characters)
            return
        self.profile = mastodon(limit, url_length)
        log.info("%s: instance allows %d characters per status", self.name, limit)

    async def send(self, entry: OutboxEntry, thread: ThreadRefs) -> str | None:
        if entry.uncertain and self.clock() - entry.created_at > IDEMPOTENCY_WINDOW:
            raise PermanentDeliveryError(
                self.name,
                "an earlier attempt may have been posted and Mastodon has forgotten its idempotency key by now;"
                " parked instead of risking a duplicate (check the account, then requeue or drop it)",
            )
        post = Post.from_payload(entry.payload)
        form: dict[str, str] = {"status": post.text, "language": post.language}
        form["visibility"] = post.visibility or self.config.default_visibility
        if post.spoiler_text:
            form["spoiler_text"] = post.spoiler_text
        if thread.parent:
            form["in_reply_to_id"] = thread.parent
        headers = {**self._auth(), "Idempotency-Key": entry.key}
        url = f"{self.base}/api/v1/statuses"
        reply = await self.http.request(self.name, "POST", url, data=form, headers=headers,
                                        deadline_s=self.config.timeout_seconds)
        if reply.status == 404 and thread.parent:
            # The status we answer was deleted: post on its own rather than lose the notice.
            log.warning("%s: status %s to reply to is gone; posting without it", self.name, thread.parent)
            del form["in_reply_to_id"]
            reply = await self.http.request(self.name, "POST", url, data=form, headers=headers,
                                            deadline_s=self.config.timeout_seconds)
        check_status(self.name, reply, self.clock())
        body = reply.json()
        status_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(status_id, str) or not status_id:
            raise PermanentDeliveryError(self.name, f"HTTP {reply.status} without a status id: {reply.snippet()}")
        return status_id

    async def verify(self) -> str:
        """`GET /api/v1/accounts/verify_credentials`: read-only, and answered 401 for a bad or revoked token."""
        reply = await self.http.request(self.name, "GET", f"{self.base}/api/v1/accounts/verify_credentials",
                                        headers=self._auth(), deadline_s=self.config.timeout_seconds)
        if reply.status == 403:
            # The token is valid but was made without read:accounts (a write:statuses-only bot token): fine.
            return "token accepted; it has no read:accounts scope, so the account was not read"
        check_status(self.name, reply, self.clock())
        body = reply.json()
        account = body.get("acct") if isinstance(body, dict) else None
        return f"token of @{account}" if isinstance(account, str) else "token accepted"

    async def delete(self, remote_id: str) -> None:
        reply = await self.http.request(self.name, "DELETE", f"{self.base}/api/v1/statuses/{remote_id}",
                                        headers=self._auth(), deadline_s=self.config.timeout_seconds)
        if reply.status == 404:
            return  # already gone
        check_status(self.name, reply, self.clock())
