"""Any answer a platform can give, through the real channel classes against the loopback platform server.

The server replays a hypothesis-chosen answer (any status, any headers, including the rate-limit ones at and past
their legal extremes, any body, cut off mid-body) for one request of a post; the rest of the conversation is the
real platform's. Whatever comes back, a channel returns a receipt or raises one of the two delivery errors, and a
transient one never asks for a wait beyond MAX_SERVER_WAIT_S: anything else would stop a drain loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.microblog_server import MicroblogServer, Platform

from broadcaster.channels.base import ThreadRefs
from broadcaster.channels.bluesky import BlueskyChannel
from broadcaster.channels.http import HttpChannelClient
from broadcaster.channels.mastodon import MastodonChannel
from broadcaster.channels.webhook import WebhookChannel
from broadcaster.channels.weibo import WeiboChannel
from broadcaster.config import (
    BlueskyChannelConfig,
    MastodonChannelConfig,
    Secret,
    SecretRef,
    WebhookChannelConfig,
    WeiboChannelConfig,
)
from broadcaster.errors import PermanentDeliveryError, TransientDeliveryError
from broadcaster.outbox import MAX_SERVER_WAIT_S, OutboxEntry, idempotency_key
from broadcaster.posts import Post

RATE_HEADERS = ("Retry-After", "X-RateLimit-Reset", "ratelimit-reset", "X-RateLimit-Remaining", "ratelimit-policy")
#: Legal header values at their edges (RFC 9110 field-value: visible ASCII, obs-text, inner spaces).
EXTREME_VALUES = (
    "99999999999999", "9" * 4000, "0", "-1", "²", "inf", "nan", "1e400", "2026-12-03T10:00:30",
    "9999-12-31T23:59:59.999999Z", "Fri, 31 Dec 9999 23:59:59 GMT", "Thu, 01 Jan 1970 00:00:00 GMT",
    "17962932000000000000", "\xff\xfe", "a b\tc",
)
HEADER_VALUE = st.one_of(
    st.sampled_from(EXTREME_VALUES),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    # Visible ASCII and obs-text, no leading or trailing space (a server's HTTP library strips those anyway).
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"), min_size=1,
            max_size=30),
)
#: One wait header always, and maybe more headers (a second wait header, the others).
HEADERS = st.builds(
    lambda wait, more: {**more, wait[0]: wait[1]},
    st.tuples(st.sampled_from(RATE_HEADERS[:3]), HEADER_VALUE),
    st.dictionaries(st.sampled_from((*RATE_HEADERS, "Content-Type", "X-Other")), HEADER_VALUE, max_size=3),
)
JSON_BODY = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["id", "idstr", "error", "error_code", "uri", "cid", "did", "accessJwt", "refreshJwt",
                         "message", "configuration"]), inner, max_size=4),
    max_leaves=8,
)
BODY = st.one_of(
    st.none(),  # the platform's own error body for the status
    st.binary(max_size=64),
    JSON_BODY.map(lambda v: json.dumps(v).encode()),  # (json: orjson refuses integers past 64 bits)
    st.sampled_from([b'{"error_code": 10023, "error": "User requests out of rate limit!"}',
                     b'{"error_code": 20019, "error": "repeat content!"}', b'{"id": 7}', b'{"id": ""}',
                     b'{"error": "ExpiredToken"}', b"[]", b'"text"', b"\xff\xfe"]),
)
#: Mostly the statuses that are retried (and so read the wait headers), then any other.
STATUS = st.one_of(st.sampled_from([429, 503, 500, 502, 504, 408, 425, 507, 509, 522, 524]),
                   st.sampled_from([200, 201, 202, 301, 400, 401, 403, 404, 409, 413, 422]),
                   st.integers(min_value=200, max_value=599))


@pytest.fixture(scope="module")
def platform_server() -> Iterator[MicroblogServer]:
    """One server for every example of this module (starting one per example would take most of the time)."""
    server = MicroblogServer(bluesky_login_limit=10**6, bluesky_login_daily_limit=10**6)
    server.start()
    try:
        for platform in ("mastodon", "bluesky", "weibo", "webhook"):
            server.set_rate_limit(platform, None)
        yield server
    finally:
        server.stop(force=True)


AnyChannel = MastodonChannel | BlueskyChannel | WeiboChannel | WebhookChannel
KEY = SecretRef(env="UNUSED")  # the channels get their secrets directly


def channel_for(platform: Platform, server: MicroblogServer, http: HttpChannelClient) -> AnyChannel:
    clock = lambda: datetime.now(UTC)  # noqa: E731
    if platform == "mastodon":
        return MastodonChannel(MastodonChannelConfig(name="mastodon", kind="mastodon", url=server.url,
                                                     token=KEY), http, Secret(server.mastodon_token), clock)
    if platform == "bluesky":
        config = BlueskyChannelConfig(name="bluesky", kind="bluesky", url=server.url,
                                      identifier=server.bluesky_identifier, password=KEY)
        return BlueskyChannel(config, http, Secret(server.bluesky_password), clock)
    if platform == "weibo":
        return WeiboChannel(WeiboChannelConfig(name="weibo", kind="weibo", url=server.url, access_token=KEY),
                            http, Secret(server.weibo_access_token), clock)
    assert server.webhook_secret is not None
    return WebhookChannel(WebhookChannelConfig(name="webhook", kind="webhook", url=server.webhook_url("ops"),
                                               secret=KEY), http, Secret(server.webhook_secret), clock)


_serial = iter(range(10**9))


def entry_for(platform: str, uncertain: bool) -> OutboxEntry:
    """A fresh notice each time (Weibo refuses a text equal to the account's previous status)."""
    n = next(_serial)
    post = Post(notice_id=f"n-{n}", kind="alert", text=f"Line 2: signal fault, trains delayed ({n})", language="en")
    now = datetime.now(UTC)
    return OutboxEntry(idempotency_key(f"n-{n}", "v1", platform, 0), f"n-{n}", "v1", platform, 0, 1,
                       post.to_payload(), now, 0, now, uncertain)


#: The requests of one post (after a fresh start) that the replayed answer may meet, per platform; the others are
#: answered by the real platform.
PATHS: dict[Platform, tuple[str, ...]] = {
    "mastodon": ("/api/v2/instance", "/api/v1/statuses"),
    "bluesky": ("/xrpc/com.atproto.server.createSession", "/xrpc/com.atproto.repo.createRecord"),
    "weibo": ("/2/statuses/share.json",),
    "webhook": ("/hooks/ops",),
}
#: With an uncertain entry Bluesky looks the record up first.
LOOKUP = "/xrpc/com.atproto.repo.getRecord"


async def one_post(platform: Platform, server: MicroblogServer, uncertain: bool) -> str | None:
    async with HttpChannelClient() as http:
        channel = channel_for(platform, server, http)
        await channel.start()
        return await channel.send(entry_for(platform, uncertain), ThreadRefs())


@pytest.mark.parametrize("platform", ["mastodon", "bluesky", "weibo", "webhook"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(status=STATUS, headers=HEADERS, body=BODY, truncate=st.booleans(), data=st.data())
def test_any_answer_gives_a_receipt_or_a_delivery_error_with_a_bounded_wait(
    platform_server: MicroblogServer, platform: Platform, status: int, headers: dict[str, str],
    body: bytes | None, truncate: bool, data: st.DataObject,
) -> None:
    server = platform_server
    uncertain = platform == "bluesky" and data.draw(st.booleans(), label="uncertain")
    path = data.draw(st.sampled_from((*PATHS[platform], LOOKUP) if uncertain else PATHS[platform]), label="path")
    if status in (204, 205, 304):
        body = b""  # these statuses have no body (the server's HTTP library refuses one)
    seen = len(server.requests(platform))
    server.push_fault(platform, status, headers, body, path=path, truncate=truncate)
    refusal: TransientDeliveryError | PermanentDeliveryError | None = None
    try:
        asyncio.run(one_post(platform, server, uncertain))
    except (TransientDeliveryError, PermanentDeliveryError) as exc:  # anything else fails the test
        refusal = exc
    finally:
        server.clear_faults(platform)
    if isinstance(refusal, TransientDeliveryError):
        assert refusal.retry_after is None or 0.0 <= refusal.retry_after <= MAX_SERVER_WAIT_S
    replayed = [r for r in server.requests(platform)[seen:] if r.fault in ("fault", "truncated")]
    assert [r.path for r in replayed] == [path]  # the channel really met the chosen answer, once
