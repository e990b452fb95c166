"""The channels' HTTP status table and rate-limit headers, exhaustively, at the one narrow seam allowed:
httpx.MockTransport. Real platform behaviour is tested against the loopback micro-blog server."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from broadcaster.channels.http import RETRYABLE, HttpChannelClient, check_status, retry_after_seconds
from broadcaster.errors import PermanentDeliveryError, TransientDeliveryError

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def client_answering(status: int, headers: dict[str, str] | None = None) -> HttpChannelClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers or {}, content=b'{"error": "x"}')

    return HttpChannelClient(lambda: NOW, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("status", range(200, 600))
async def test_every_status_is_delivered_retried_or_parked(status: int) -> None:
    async with client_answering(status) as http:
        reply = await http.request("t", "POST", "https://example.test/x", deadline_s=5)
    assert reply.status == status
    if 200 <= status < 300:
        check_status("t", reply, NOW)
    elif status in RETRYABLE:
        with pytest.raises(TransientDeliveryError) as info:
            check_status("t", reply, NOW)
        assert info.value.maybe_delivered == (status >= 500 and status not in (503, 509))
    else:
        with pytest.raises(PermanentDeliveryError, match=f"HTTP {status}"):
            check_status("t", reply, NOW)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "120"}, 120.0),
        ({"retry-after": "Wed, 25 Nov 2026 08:05:00 GMT"}, 300.0),
        ({"retry-after": "Wed, 25 Nov 2026 07:55:00 GMT"}, 0.0),  # already passed: go now
        ({"x-ratelimit-reset": "2026-11-25T08:10:00.000Z"}, 600.0),  # Mastodon
        ({"ratelimit-reset": str(int(NOW.timestamp()) + 42)}, 42.0),  # Bluesky
        ({"retry-after": "30", "x-ratelimit-reset": "2026-11-25T09:00:00Z"}, 30.0),  # Retry-After wins
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_rate_limit_headers(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(headers, NOW) == seconds


async def test_transport_failures_are_transient_and_say_whether_the_request_may_have_landed() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def reset(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset by peer", request=request)

    async with HttpChannelClient(lambda: NOW, transport=httpx.MockTransport(refuse)) as http:
        with pytest.raises(TransientDeliveryError) as info:
            await http.request("t", "POST", "https://example.test/x", deadline_s=5)
    assert not info.value.maybe_delivered
    assert "cannot connect to example.test" in info.value.reason
    async with HttpChannelClient(lambda: NOW, transport=httpx.MockTransport(reset)) as http:
        with pytest.raises(TransientDeliveryError) as info:
            await http.request("t", "POST", "https://example.test/x", deadline_s=5)
    assert info.value.maybe_delivered
