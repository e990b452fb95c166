"""HTTP platform faults end to end: feeds -> broadcaster -> the loopback micro-blog server misbehaving on purpose.

A dripping answer, rate limits that name a date, a run of server errors and the four refusals that cannot be
retried, each against the platforms' real APIs (`support.microblog_server`). The guarantees: no request before
the platform allows it, no post twice, no channel held up by another's slow platform.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import pytest
from rig import Rig, SteppedClock, poll_all, running
from support.microblog_server import LoggedRequest, MicroblogServer, Platform
from test_channels import PLATFORMS, SIGNAL, alert, channels, counts

from broadcaster.service import Broadcaster

#: The channels' overall deadline per request (`timeout_seconds`) in these tests: short, so they stay fast.
DEADLINE_S = 1.5
UPDATE = {"zh": "信号故障，预计晚点15分钟", "en": "Signal fault, 15 min delays"}
#: The request that makes (or tries to make) a post, per platform.
POST_PATHS: dict[Platform, str] = {
    "mastodon": "/api/v1/statuses",
    "bluesky": "/xrpc/com.atproto.repo.createRecord",
    "weibo": "/2/statuses/share.json",
    "webhook": "/hooks/ops",
}


def fast_channels(server: MicroblogServer) -> list[dict[str, Any]]:
    tables = channels(server)
    for table in tables:
        table["timeout_seconds"] = DEADLINE_S
    return tables


def posts(server: MicroblogServer, platform: Platform) -> list[LoggedRequest]:
    return [r for r in server.requests(platform) if r.path == POST_PATHS[platform]]


def each(n: int) -> dict[str, int]:
    return dict.fromkeys(PLATFORMS, n)


async def settle(
    condition: Callable[[], bool],
    b: Broadcaster,
    timeout: float = 10.0,  # noqa: ASYNC109
    step: Callable[[], None] | None = None,
) -> None:
    """Wait (bounded) until `condition` holds, leaving delivery to the drain loops alone: unlike `until`, nothing
    here sends, so a channel stuck in a request cannot hold the others up through the test itself. `step` runs
    before each look (e.g. to move a stepped clock past a backoff)."""
    async with asyncio.timeout(timeout):
        while not condition():
            if step is not None:
                step()
            b.dispatcher.wake()
            await asyncio.sleep(0.02)  # let the drain loops and the server thread run; bounded above


def parked(b: Broadcaster) -> list[str]:
    return [channel for (channel, status), n in b.history.depth().items() if status == "parked" and n]


async def test_a_dripping_answer_is_abandoned_at_the_deadline_retried_once_and_holds_nobody_up(
    rig: Rig, server: MicroblogServer
) -> None:
    rig.serve_rt(alert(SIGNAL))
    async with running(rig.config(channels=fast_channels(server))) as b:
        # The status is created, then its answer comes two bytes every 50 ms for a minute: each read is quick,
        # so only the overall deadline can end the request.
        server.drip("mastodon", interval_s=0.05, commit=True)
        await poll_all(b)
        await settle(lambda: counts(server) == each(1) and b.pending() == 0, b, timeout=15)
        assert parked(b) == []
    dripped, *retries = posts(server, "mastodon")
    assert (dripped.status, dripped.fault) == (200, "drip")
    assert dripped.client_left is not None
    assert DEADLINE_S - 0.25 <= dripped.client_left - dripped.monotonic <= DEADLINE_S + 1.0
    assert retries
    assert all(r.fault is None and r.monotonic > dripped.client_left for r in retries)
    assert {r.header("idempotency-key") for r in posts(server, "mastodon")} == {dripped.header("idempotency-key")}
    assert len(server.mastodon_statuses()) == 1  # the retry found the committed status by its key
    for platform in ("bluesky", "weibo", "webhook"):  # the other channels delivered while Mastodon dripped
        delivered = [r for r in posts(server, platform) if r.status is not None and r.status < 300]
        assert delivered
        assert delivered[0].monotonic < dripped.client_left, platform


async def test_dripping_answers_after_commit_on_every_platform_leave_one_post_each(
    rig: Rig, server: MicroblogServer
) -> None:
    rig.serve_rt(alert(SIGNAL))
    async with running(rig.config(channels=fast_channels(server))) as b:
        await poll_all(b)
        await settle(lambda: counts(server) == each(1), b)  # the Bluesky session is open now
        for platform in PLATFORMS:
            server.drip(platform, interval_s=0.05, commit=True)
        rig.serve_rt(alert(UPDATE))
        await poll_all(b)
        await settle(lambda: counts(server) == each(2) and b.pending() == 0, b, timeout=15)
        assert parked(b) == []
    assert counts(server) == each(2)
    for platform in PLATFORMS:
        dripped = next(r for r in server.requests(platform) if r.fault == "drip")
        assert dripped.path == POST_PATHS[platform]
        assert dripped.client_left is not None, platform
        assert dripped.client_left - dripped.monotonic <= DEADLINE_S + 1.0, platform
    keys = [r.header("idempotency-key") for r in posts(server, "mastodon")]
    assert len(keys) == 3  # the first notice, the update's dripped attempt and its retry
    assert keys[1] == keys[2]
    hooks = [d.header("idempotency-key") for d in server.webhook_deliveries("ops")]
    assert len(hooks) == 3
    assert hooks[1] == hooks[2]  # the receiver can tell the retry is the same notice
    rkeys = [r.json()["rkey"] for r in posts(server, "bluesky")]
    assert len(rkeys) == 2  # the committed record was looked up, not written again
    assert [r.status for r in posts(server, "weibo")][-1] == 400  # "repeat content": the proof it had landed


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_as_an_http_date_is_not_retried_before_that_date(
    rig: Rig, server: MicroblogServer, status: int
) -> None:
    rig.serve_rt(alert(SIGNAL))
    async with running(rig.config(channels=fast_channels(server))) as b:
        # HTTP dates have whole seconds: this one is 1-2 s ahead, and the date itself is the earliest retry.
        allowed = parsedate_to_datetime(server.http_date(2))
        for platform in PLATFORMS:
            server.push_fault(platform, status, headers={"Retry-After": format_datetime(allowed, usegmt=True)})
        await poll_all(b)
        await settle(lambda: counts(server) == each(1) and b.pending() == 0, b, timeout=15)
        assert parked(b) == []
    for platform in PLATFORMS:
        log = server.requests(platform)
        limited = next(i for i, r in enumerate(log) if r.fault == "fault")
        assert_not_before(log[limited], log[limited + 1], allowed)
    for platform in ("mastodon", "webhook"):
        attempts = posts(server, platform)
        assert len(attempts) == 2
        assert len({r.header("idempotency-key") for r in attempts}) == 1
    assert len({r.body for r in posts(server, "weibo")}) == 1


async def test_a_mastodon_429_with_only_x_ratelimit_reset_waits_for_the_reset(
    rig: Rig, server: MicroblogServer
) -> None:
    rig.serve_rt(alert(SIGNAL))
    async with running(rig.config(channels=fast_channels(server))) as b:
        reset = server.now() + timedelta(seconds=2)
        stamp = reset.isoformat(timespec="microseconds").replace("+00:00", "Z")  # as rack-attack's headers say
        server.push_fault("mastodon", 429, headers={"X-RateLimit-Reset": stamp})
        await poll_all(b)
        await settle(lambda: counts(server) == each(1) and b.pending() == 0, b, timeout=15)
    limited, retry = posts(server, "mastodon")
    assert (limited.status, retry.status) == (429, 200)
    assert "retry-after" not in limited.headers
    assert_not_before(limited, retry, reset)
    assert limited.header("idempotency-key") == retry.header("idempotency-key")
    assert len(server.mastodon_statuses()) == 1


def assert_not_before(limited: LoggedRequest, following: LoggedRequest, allowed: datetime) -> None:
    """`following` reached the server no earlier than `allowed`, by the server clock and by the monotonic gap."""
    assert following.at >= allowed, (limited.platform, following.at, allowed)
    wait = (allowed - limited.at).total_seconds()
    gap = following.monotonic - limited.monotonic
    assert gap >= wait - 0.01, (limited.platform, gap, wait)  # 10 ms: wall and monotonic clocks read apart


async def test_a_run_of_server_errors_ends_in_one_post_with_the_same_key(rig: Rig, server: MicroblogServer) -> None:
    clock = SteppedClock()
    rig.serve_rt(alert(SIGNAL))
    async with running(rig.config(channels=fast_channels(server)), clock=clock) as b:
        await poll_all(b)
        await settle(lambda: counts(server) == each(1), b)  # the Bluesky session is open now
        for platform in PLATFORMS:
            for status in (500, 502, 504):
                server.push_fault(platform, status)
        rig.serve_rt(alert(UPDATE))
        await poll_all(b)

        def skip_backoff() -> None:
            clock.offset += timedelta(seconds=5)  # past any of the first backoffs (at most 4 s)

        await settle(lambda: counts(server) == each(2) and b.pending() == 0, b, step=skip_backoff)
        assert parked(b) == []
    assert counts(server) == each(2)
    for platform in PLATFORMS:
        answered = [r.status for r in server.requests(platform) if r.fault == "fault"]
        assert answered == [500, 502, 504], platform
    for platform in ("mastodon", "webhook"):
        update = posts(server, platform)[1:]
        assert len({r.header("idempotency-key") for r in update}) == 1, platform
    update_rkeys = {r.json()["rkey"] for r in posts(server, "bluesky")[1:]}
    assert len(update_rkeys) == 1
    assert len(server.mastodon_statuses()) == 2
    assert len(server.bluesky_posts()) == 2


async def test_refusals_400_401_422_are_parked_at_once_with_the_platforms_reason(
    rig: Rig, server: MicroblogServer, caplog: pytest.LogCaptureFixture
) -> None:
    rig.serve_rt(alert(SIGNAL))
    async with running(rig.config(channels=fast_channels(server))) as b:
        server.mastodon_max_characters = 20  # after start-up: the channel still believes 500, so Mastodon says 422
        server.bluesky_password = "revoked-app-password"  # 401 on createSession
        server.weibo_max_units = 10  # 400, error 20012
        server.push_fault("webhook", 401, body={"error": "signature not accepted"})
        with caplog.at_level(logging.ERROR, logger="broadcaster"):
            await poll_all(b)
            await settle(lambda: sorted(parked(b)) == sorted(PLATFORMS), b)
        assert b.pending() == 0
    assert counts(server) == each(0)
    reports = {
        "mastodon": ("HTTP 422", "Validation failed: Text character limit of 20 exceeded"),
        "bluesky": ("HTTP 401", "Invalid identifier or password"),
        "weibo": ("error 20012", "Text too long"),
        "webhook": ("HTTP 401", "signature not accepted"),
    }
    for platform, (status, reason) in reports.items():
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{platform}: parked notice")]
        assert len(lines) == 1, (platform, caplog.text)
        assert status in lines[0]
        assert reason in lines[0]
    tried = {platform: len(server.requests(platform)) for platform in ("bluesky", "weibo", "webhook")}
    assert tried == {"bluesky": 1, "weibo": 1, "webhook": 1}  # a refusal is not retried
    assert len(posts(server, "mastodon")) == 1
