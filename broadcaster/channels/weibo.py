"""Weibo: the open platform's `POST /2/statuses/share.json`.

Weibo has no idempotency key and refuses a status identical to the account's previous one (error 20019,
"repeat content"). Notices carry an "as of HH:MM" stamp, so two different posts never repeat; a 20019 is
therefore permanent for that text, except right after an attempt that may have been posted: then it is the
proof that the earlier attempt landed, and the entry counts as delivered.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from broadcaster.channels.base import ThreadRefs
from broadcaster.channels.http import HttpChannel, HttpChannelClient, check_status, retry_after_seconds
from broadcaster.config import Secret, WeiboChannelConfig
from broadcaster.errors import PermanentDeliveryError, TransientDeliveryError
from broadcaster.outbox import OutboxEntry
from broadcaster.posts import Post
from broadcaster.render.length import PlatformProfile, weibo

REPEAT_CONTENT = 20019
#: Request-rate errors: per IP, per user, per user per API. Weibo counts them per hour.
RATE_LIMITED = frozenset({10022, 10023, 10024})
#: Token errors: invalid, expired, revoked. Retrying with the same token will not help.
TOKEN_ERRORS = frozenset({21314, 21315, 21316, 21317, 21327, 21332})


class WeiboChannel(HttpChannel[WeiboChannelConfig]):
    def __init__(
        self, config: WeiboChannelConfig, http: HttpChannelClient, token: Secret, clock: Callable[[], datetime]
    ) -> None:
        super().__init__(config, http, clock)
        self._token = token
        self.profile: PlatformProfile = weibo()

    async def verify(self) -> str:
        """`GET /2/account/get_uid.json`: read-only; a bad or expired token is error 21332 / 21327. The token goes
        in the `Authorization: OAuth2` header, not the URL, so no log line or error can carry it."""
        reply = await self.http.request(
            self.name, "GET", f"{self.config.url.rstrip('/')}/2/account/get_uid.json",
            headers={"Authorization": f"OAuth2 {self._token.reveal()}"}, deadline_s=self.config.timeout_seconds,
        )
        body = reply.json()
        code = body.get("error_code") if isinstance(body, dict) else None
        if isinstance(code, int):
            raise PermanentDeliveryError(self.name, f"HTTP {reply.status}: error {code}: {body.get('error', '')}")
        check_status(self.name, reply, self.clock())
        uid = body.get("uid") if isinstance(body, dict) else None
        return f"token of uid {uid}" if uid is not None else "token accepted"

    async def send(self, entry: OutboxEntry, thread: ThreadRefs) -> str | None:
        post = Post.from_payload(entry.payload)
        reply = await self.http.request(
            self.name, "POST", f"{self.config.url.rstrip('/')}/2/statuses/share.json",
            data={"access_token": self._token.reveal(), "status": post.text},
            deadline_s=self.config.timeout_seconds,
        )
        body = reply.json()
        code = body.get("error_code") if isinstance(body, dict) else None
        if isinstance(code, int):
            message = f"error {code}: {body.get('error', '')}"
            if code == REPEAT_CONTENT and entry.uncertain:
                return None  # the earlier, uncertain attempt was posted: Weibo says this text is its last status
            # A 429 or 503 in front of the API may say when to come back; the error code alone never does.
            retry_after = retry_after_seconds(reply.headers, self.clock())
            if code in RATE_LIMITED:
                raise TransientDeliveryError(self.name, message, retry_after=retry_after)
            if code in TOKEN_ERRORS:
                raise PermanentDeliveryError(self.name, f"{message} (renew the access token)")
            if reply.status >= 500:
                raise TransientDeliveryError(self.name, message, retry_after=retry_after, maybe_delivered=True)
            raise PermanentDeliveryError(self.name, message)
        check_status(self.name, reply, self.clock())
        status_id = body.get("idstr") or body.get("id") if isinstance(body, dict) else None
        return str(status_id) if status_id else None
