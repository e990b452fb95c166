"""Bluesky: `com.atproto.repo.createRecord` of `app.bsky.feed.post` with a record key derived from the outbox key.

Bluesky has no idempotency header, but a record key is unique in a repository: the same outbox entry always
writes the same key, and a PDS answers a second write of an existing key with HTTP 500. So after a 500, a
timeout or a broken connection, the channel looks the record up (`com.atproto.repo.getRecord`) before it
tries again, and an entry found there counts as delivered.

Sessions are reused: `createSession` (limited to 30 per 5 minutes per account) only when there is no session
or its refresh token no longer works; an expired access token is renewed with `refreshSession`.
Links and hashtags get facets at UTF-8 byte offsets; replies carry the thread's root and parent.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
import regex

from broadcaster.channels.base import ThreadRefs
from broadcaster.channels.http import HttpChannel, HttpChannelClient, HttpReply, check_status
from broadcaster.config import BlueskyChannelConfig, Secret
from broadcaster.errors import PermanentDeliveryError, TransientDeliveryError
from broadcaster.outbox import OutboxEntry
from broadcaster.posts import Post
from broadcaster.render.hashtags import MAX_TAG_BYTES, MAX_TAG_GRAPHEMES
from broadcaster.render.length import URL_PATTERN, PlatformProfile, bluesky, grapheme_count
from broadcaster.store import KeyValueStore

log = logging.getLogger(__name__)

COLLECTION = "app.bsky.feed.post"
_TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
# Bluesky's own tag detection (@atproto/api rich-text `TAG_REGEX`): a '#' at the start or after white space, then a
# run of anything but white space and invisible characters that holds a character which is neither a digit nor
# punctuation (JavaScript's \d: ASCII digits); trailing punctuation is not part of the tag
# (`TRAILING_PUNCTUATION_REGEX`).
_INVISIBLE = "\u00ad\u2060\u200a\u200b\u200c\u200d\u20e2"
_HASHTAG = regex.compile(
    rf"(?:^|\s)([#＃])((?!\ufe0f)[^\s{_INVISIBLE}]*[^0-9\s\p{{P}}{_INVISIBLE}]+[^\s{_INVISIBLE}]*)")
_TRAILING_PUNCTUATION = regex.compile(r"\p{P}+$")


def record_key(entry_key: str, created_at: datetime) -> str:
    """A TID (13 base32-sortable characters) that is a pure function of the outbox entry.

    TIDs encode microseconds since the epoch (53 bits) and a 10-bit clock id. Entries created in the same
    tick share `created_at`, so the key's hash adds up to a second of offset and picks the clock id: two
    entries collide with odds of about one in 10^9.
    """
    digest = int.from_bytes(hashlib.sha256(entry_key.encode()).digest()[:8], "big")
    micros = int(created_at.timestamp() * 1_000_000) + digest % 1_000_000
    value = ((micros & ((1 << 53) - 1)) << 10) | ((digest >> 20) & 0x3FF)
    return "".join(_TID_ALPHABET[(value >> (60 - 5 * i)) & 31] for i in range(13))


def facets(text: str) -> list[dict[str, Any]]:
    """Link and hashtag facets, with byte offsets into the UTF-8 text as the lexicon requires.

    Computed when the post is sent, from its final text, so a text that changed since it was rendered (a budget's
    merge) never carries stale offsets. A tag facet covers the '#' and the tag (`tag` itself without the '#'), as
    Bluesky's own clients make it: every hashtag broadcaster writes (`broadcaster.render.hashtags`) is found whole.
    """
    out: list[dict[str, Any]] = []

    def span(start: int, end: int) -> dict[str, int]:
        return {"byteStart": len(text[:start].encode()), "byteEnd": len(text[:end].encode())}

    for match in URL_PATTERN.finditer(text):
        out.append({"index": span(match.start(), match.end()),
                    "features": [{"$type": "app.bsky.richtext.facet#link", "uri": match.group(0)}]})
    for found in _HASHTAG.finditer(text):
        tag = _TRAILING_PUNCTUATION.sub("", found.group(2))
        # The lexicon's limits on `tag` (Bluesky's clients count 64 UTF-16 units; the lexicon is what a PDS checks).
        if tag and grapheme_count(tag) <= MAX_TAG_GRAPHEMES and len(tag.encode()) <= MAX_TAG_BYTES:
            start = found.start(1)
            out.append({"index": span(start, start + 1 + len(tag)),
                        "features": [{"$type": "app.bsky.richtext.facet#tag", "tag": tag}]})
    return sorted(out, key=lambda f: int(f["index"]["byteStart"]))


def _ref(remote_id: str) -> dict[str, str]:
    ref = orjson.loads(remote_id)
    return {"uri": ref["uri"], "cid": ref["cid"]}


class BlueskyChannel(HttpChannel[BlueskyChannelConfig]):
    def __init__(
        self, config: BlueskyChannelConfig, http: HttpChannelClient, password: Secret, clock: Callable[[], datetime],
        sessions: KeyValueStore | None = None,
    ) -> None:
        super().__init__(config, http, clock)
        self.sessions = sessions
        self._password = password
        self.base = config.url.rstrip("/")
        self.profile: PlatformProfile = bluesky()
        self._access: str | None = None
        self._refresh: str | None = None
        self.did: str | None = None
        self.logins = 0  # createSession calls, which Bluesky limits per account

    async def start(self) -> None:
        """Pick up the session a previous run left, so a restart (or a crash loop) needs no new login."""
        self.reload_session()

    def reload_session(self) -> None:
        """The session stored last (at start-up, and when a standby takes over: the former leader may have renewed
        it since, which revoked the refresh token read before)."""
        saved = self.sessions.get(self.name) if self.sessions else None
        if saved:
            session = orjson.loads(saved)
            self._access, self._refresh, self.did = session["access"], session["refresh"], session["did"]

    async def _xrpc(self, method: str, nsid: str, *, token: str | None = None, json: Any = None,
                    params: dict[str, str] | None = None) -> HttpReply:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.http.request(self.name, method, f"{self.base}/xrpc/{nsid}", json=json, params=params,
                                       headers=headers, deadline_s=self.config.timeout_seconds)

    async def _login(self) -> None:
        self.logins += 1
        reply = await self._xrpc("POST", "com.atproto.server.createSession",
                                 json={"identifier": self.config.identifier, "password": self._password.reveal()})
        check_status(self.name, reply, self.clock())
        self._take_session(reply)

    def _take_session(self, reply: HttpReply) -> None:
        body = reply.object()
        access, refresh, did = body.get("accessJwt"), body.get("refreshJwt"), body.get("did")
        self._access, self._refresh, self.did = (
            (access, refresh, did) if all(isinstance(v, str) for v in (access, refresh, did)) else (None, None, None)
        )
        if not (self._access and self._refresh and self.did):
            raise PermanentDeliveryError(self.name, f"session answer without tokens: {reply.snippet()}")
        if self.sessions is not None:
            self.sessions.put(self.name, orjson.dumps(
                {"access": self._access, "refresh": self._refresh, "did": self.did}).decode())

    async def _renew(self) -> None:
        """Refresh the session; log in again only if the refresh token is no longer accepted."""
        if self._refresh:
            reply = await self._xrpc("POST", "com.atproto.server.refreshSession", token=self._refresh)
            if reply.status == 200:
                self._take_session(reply)
                return
        await self._login()

    async def _authed(self, method: str, nsid: str, **kwargs: Any) -> HttpReply:
        if self._access is None:
            await self._login()
        reply = await self._xrpc(method, nsid, token=self._access, **kwargs)
        if _expired(reply):
            await self._renew()
            reply = await self._xrpc(method, nsid, token=self._access, **kwargs)
        return reply

    async def _existing(self, rkey: str) -> str | None:
        """The stored record's reference if a post with this key is already in the repository."""
        reply = await self._authed("GET", "com.atproto.repo.getRecord",
                                   params={"repo": self.did or self.config.identifier, "collection": COLLECTION,
                                           "rkey": rkey})
        if reply.status == 200:
            body = reply.object()
            if _is_ref(body):
                return orjson.dumps({"uri": body["uri"], "cid": body["cid"]}).decode()
        if reply.status == 400 and reply.object().get("error") == "RecordNotFound":
            return None
        check_status(self.name, reply, self.clock())
        return None

    async def send(self, entry: OutboxEntry, thread: ThreadRefs) -> str | None:
        post = Post.from_payload(entry.payload)
        rkey = record_key(entry.key, entry.created_at)
        if entry.uncertain and (found := await self._existing(rkey)) is not None:
            return found  # an earlier attempt did land
        record: dict[str, Any] = {
            "$type": COLLECTION,
            "text": post.text,
            "createdAt": entry.created_at.isoformat().replace("+00:00", "Z"),
            # Every language the post holds (the lexicon allows three), so readers filtering by any see it.
            "langs": list(post.all_languages[:3]),
        }
        if spans := facets(post.text):
            record["facets"] = spans
        if thread.parent:
            record["reply"] = {"root": _ref(thread.root or thread.parent), "parent": _ref(thread.parent)}
        try:
            reply = await self._authed("POST", "com.atproto.repo.createRecord",
                                       json={"repo": self.did or self.config.identifier, "collection": COLLECTION,
                                             "rkey": rkey, "record": record})
            check_status(self.name, reply, self.clock())
        except TransientDeliveryError as exc:
            if not exc.maybe_delivered:
                raise
            # A 500 is also how a PDS answers a key that already exists: look before trying again.
            try:
                found = await self._existing(rkey)
            except TransientDeliveryError:
                raise exc from None
            if found is not None:
                return found
            raise
        body = reply.object()
        if not _is_ref(body):
            raise PermanentDeliveryError(self.name, f"createRecord answered without uri/cid: {reply.snippet()}")
        return orjson.dumps({"uri": body["uri"], "cid": body["cid"]}).decode()

    async def verify(self) -> str:
        """`createSession` with the app password. The session is dropped, not stored: refreshing the running
        broadcaster's stored session here would revoke its refresh token."""
        reply = await self._xrpc("POST", "com.atproto.server.createSession",
                                 json={"identifier": self.config.identifier, "password": self._password.reveal()})
        check_status(self.name, reply, self.clock())
        body = reply.json()
        handle = body.get("handle") if isinstance(body, dict) else None
        return f"app password of @{handle}" if isinstance(handle, str) else "app password accepted"

    async def delete(self, remote_id: str) -> None:
        reply = await self._authed("POST", "com.atproto.repo.deleteRecord",
                                   json={"repo": self.did or self.config.identifier, "collection": COLLECTION,
                                         "rkey": _rkey(remote_id)})
        check_status(self.name, reply, self.clock())


def _is_ref(body: dict[str, Any]) -> bool:
    """The answer names a record: a non-empty string uri and cid."""
    uri, cid = body.get("uri"), body.get("cid")
    return isinstance(uri, str) and isinstance(cid, str) and bool(uri) and bool(cid)


def _rkey(remote_id: str) -> str:
    return str(orjson.loads(remote_id)["uri"]).rsplit("/", 1)[-1]


def _expired(reply: HttpReply) -> bool:
    if reply.status not in (400, 401):
        return False
    body = reply.json()
    return isinstance(body, dict) and body.get("error") in ("ExpiredToken", "InvalidToken")
