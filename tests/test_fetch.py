"""FeedFetcher against a real loopback HTTP server and real files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from typing import TYPE_CHECKING

import pytest
from support import free_port

from broadcaster.config import FeedConfig
from broadcaster.errors import FeedError, FetchError
from broadcaster.feeds.fetch import FeedFetcher, FetchResult, display_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from support import LoopbackHttpServer

LAST_MODIFIED = "Wed, 25 Nov 2026 10:00:00 GMT"


@pytest.fixture
async def fetcher() -> AsyncIterator[FeedFetcher]:
    async with FeedFetcher(user_agent="broadcaster-test/1") as fetcher:
        yield fetcher


async def fetch(
    fetcher: FeedFetcher,
    url: str,
    *,
    timeout_s: float = 2.0,
    max_bytes: int = 1_000_000,
    etag: str | None = None,
    last_modified: str | None = None,
) -> FetchResult:
    """The fetch under test with roomy defaults, for the feed named "alerts"."""
    return await fetcher.fetch(
        "alerts", url, timeout_s=timeout_s, max_bytes=max_bytes, etag=etag, last_modified=last_modified
    )


async def test_200_returns_body_and_validators(fetcher: FeedFetcher, http_server: LoopbackHttpServer) -> None:
    http_server.set_route("/alerts.pb", b"\x0a\x03abc", etag='"v1"', last_modified=LAST_MODIFIED)

    result = await fetch(fetcher, http_server.url("/alerts.pb"))

    assert result.body == b"\x0a\x03abc"
    assert (result.status, result.etag, result.last_modified) == (200, '"v1"', LAST_MODIFIED)
    assert not result.not_modified
    assert 0 <= result.elapsed_s < 2
    [request] = http_server.requests
    assert request.header("user-agent") == "broadcaster-test/1"
    assert request.header("if-none-match") is None
    assert request.header("if-modified-since") is None


async def test_304_by_etag(fetcher: FeedFetcher, http_server: LoopbackHttpServer) -> None:
    http_server.set_route("/a", b"body", etag='"v1"')
    first = await fetch(fetcher, http_server.url("/a"))

    second = await fetch(fetcher, http_server.url("/a"), etag=first.etag)

    assert (second.body, second.status, second.etag) == (None, 304, '"v1"')
    assert second.not_modified
    assert http_server.requests[-1].header("if-none-match") == '"v1"'


async def test_changed_etag_returns_the_new_body(fetcher: FeedFetcher, http_server: LoopbackHttpServer) -> None:
    http_server.set_route("/a", b"new", etag='"v2"')

    result = await fetch(fetcher, http_server.url("/a"), etag='"v1"')

    assert (result.body, result.etag) == (b"new", '"v2"')


async def test_a_new_body_without_validators_has_none(fetcher: FeedFetcher, http_server: LoopbackHttpServer) -> None:
    """The validators sent belong to the body before: kept for a new body, a new process sending them could be
    answered 304 for that older body (tests/test_stored_snapshots.py)."""
    http_server.set_route("/a", b"new")

    result = await fetch(fetcher, http_server.url("/a"), etag='"v1"', last_modified=LAST_MODIFIED)

    assert (result.body, result.status, result.etag, result.last_modified) == (b"new", 200, None, None)


async def test_a_304_without_validators_keeps_the_ones_sent(
    fetcher: FeedFetcher, http_server: LoopbackHttpServer
) -> None:
    http_server.push_response("/a", status=304)

    result = await fetch(fetcher, http_server.url("/a"), etag='"v1"', last_modified=LAST_MODIFIED)

    assert (result.body, result.status, result.etag, result.last_modified) == (None, 304, '"v1"', LAST_MODIFIED)


async def test_304_by_last_modified(fetcher: FeedFetcher, http_server: LoopbackHttpServer) -> None:
    http_server.set_route("/a", b"body", last_modified=LAST_MODIFIED)

    result = await fetch(fetcher, http_server.url("/a"), last_modified=LAST_MODIFIED)

    assert (result.body, result.status, result.last_modified, result.etag) == (None, 304, LAST_MODIFIED, None)
    assert http_server.requests[-1].header("if-modified-since") == LAST_MODIFIED


@pytest.mark.parametrize("status", [404, 503])
async def test_error_status_raises_with_status(
    fetcher: FeedFetcher, http_server: LoopbackHttpServer, status: int
) -> None:
    http_server.set_route("/a", b"nope", status=status)

    with pytest.raises(FetchError) as caught:
        await fetch(fetcher, http_server.url("/a"))

    assert caught.value.status == status
    assert caught.value.feed == "alerts"
    assert caught.value.reason == f"HTTP {status} from {http_server.url('/a')}"
    assert isinstance(caught.value, FeedError)


async def test_redirect_is_followed(fetcher: FeedFetcher, http_server: LoopbackHttpServer) -> None:
    http_server.set_route("/new", b"moved here")
    http_server.set_route("/old", b"", status=301, headers={"location": "/new"})

    result = await fetch(fetcher, http_server.url("/old"))

    assert result.body == b"moved here"


async def test_oversize_by_content_length_fails_before_reading(
    fetcher: FeedFetcher, http_server: LoopbackHttpServer
) -> None:
    # Sending all of this would take 20 s; the announced length alone must be enough to refuse it.
    http_server.set_route("/big", b"x" * 20_000, drip_bytes_per_s=1000)
    started = time.monotonic()

    with pytest.raises(FetchError, match="announces 20000 bytes, over the 10000-byte cap") as caught:
        await fetch(fetcher, http_server.url("/big"), max_bytes=10_000, timeout_s=5)

    assert time.monotonic() - started < 1.0
    assert caught.value.status is None


async def test_oversize_while_streaming_chunked_stops_early(
    fetcher: FeedFetcher, http_server: LoopbackHttpServer
) -> None:
    # No Content-Length; the whole body would take 5 s, the cap is crossed after about 0.1 s.
    http_server.set_route("/big", b"x" * 500_000, drip_bytes_per_s=100_000, chunked=True)
    started = time.monotonic()

    with pytest.raises(FetchError, match="exceeds the 10000-byte cap"):
        await fetch(fetcher, http_server.url("/big"), max_bytes=10_000, timeout_s=5)

    assert time.monotonic() - started < 1.5
    assert "content-length" not in http_server.requests[-1].headers


async def test_a_50_mib_body_announced_by_its_length_is_refused_before_reading(
    fetcher: FeedFetcher, http_server: LoopbackHttpServer
) -> None:
    http_server.set_route("/huge", b"\x0a" * (50 * 1024 * 1024))
    cap = FeedConfig.model_fields["max_bytes"].default
    with pytest.raises(FetchError, match=f"announces 52428800 bytes, over the {cap}-byte cap"):
        await fetch(fetcher, http_server.url("/huge"), max_bytes=cap, timeout_s=30)


async def test_a_50_mib_chunked_body_is_cut_off_at_the_default_cap_without_holding_it(
    fetcher: FeedFetcher, http_server: LoopbackHttpServer
) -> None:
    body = b"\x0a" * (50 * 1024 * 1024)  # built before measuring: the server's copy is not the fetcher's
    http_server.set_route("/huge", body, chunked=True)
    cap = FeedConfig.model_fields["max_bytes"].default
    tracemalloc.start()  # process-wide, so the loopback server's chunks count too: an upper bound
    try:
        with pytest.raises(FetchError, match=f"exceeds the {cap}-byte cap"):
            await fetch(fetcher, http_server.url("/huge"), max_bytes=cap, timeout_s=30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < cap * 1.5, f"peak {peak / 2**20:.1f} MiB while fetching"  # never the whole 50 MiB


@pytest.mark.parametrize("chunked", [False, True])
async def test_body_exactly_at_the_cap_is_accepted(
    fetcher: FeedFetcher, http_server: LoopbackHttpServer, chunked: bool
) -> None:
    http_server.set_route("/a", b"y" * 40_000, chunked=chunked)

    result = await fetch(fetcher, http_server.url("/a"), max_bytes=40_000)

    assert result.body == b"y" * 40_000


async def test_slow_drip_hits_the_overall_deadline(fetcher: FeedFetcher, http_server: LoopbackHttpServer) -> None:
    # Every piece arrives within 0.05 s, so no per-read timeout fires; only the overall deadline can.
    http_server.set_route("/slow", b"z" * 10_000, drip_bytes_per_s=2_000)
    started = time.monotonic()

    with pytest.raises(FetchError, match=r"no complete response from .* within 0.5s") as caught:
        await fetch(fetcher, http_server.url("/slow"), timeout_s=0.5)

    assert time.monotonic() - started < 1.5
    assert caught.value.status is None


async def test_slow_headers_hit_the_deadline(fetcher: FeedFetcher, http_server: LoopbackHttpServer) -> None:
    http_server.set_route("/late", b"z", delay_s=3)
    started = time.monotonic()

    with pytest.raises(FetchError, match=r"within 0\.3s"):
        await fetch(fetcher, http_server.url("/late"), timeout_s=0.3)

    assert time.monotonic() - started < 1.3


async def test_fetcher_still_works_after_an_aborted_fetch(
    fetcher: FeedFetcher, http_server: LoopbackHttpServer
) -> None:
    http_server.set_route("/slow", b"z" * 10_000, drip_bytes_per_s=2_000)
    http_server.set_route("/ok", b"fine")
    with pytest.raises(FetchError):
        await fetch(fetcher, http_server.url("/slow"), timeout_s=0.2)

    assert (await fetch(fetcher, http_server.url("/ok"))).body == b"fine"


async def test_connection_refused(fetcher: FeedFetcher) -> None:
    url = f"http://127.0.0.1:{free_port()}/feed"

    with pytest.raises(
        FetchError, match=r"^feed 'alerts': cannot connect to http://127\.0\.0\.1:\d+/feed: Connection refused$"
    ) as caught:
        await fetch(fetcher, url)

    assert caught.value.status is None
    assert "\n" not in str(caught.value)


async def test_credentials_are_used_but_never_shown(fetcher: FeedFetcher, http_server: LoopbackHttpServer) -> None:
    http_server.set_route("/a", b"", status=503)
    port = http_server.port

    with pytest.raises(FetchError) as caught:
        await fetch(fetcher, f"http://operator:hunter2@127.0.0.1:{port}/a?api_key=s3cret&format=pb")
    with pytest.raises(FetchError) as refused:
        await fetch(fetcher, f"http://operator:hunter2@127.0.0.1:{free_port()}/a?api_key=s3cret")

    assert http_server.requests[-1].header("authorization") == "Basic b3BlcmF0b3I6aHVudGVyMg=="
    assert caught.value.reason == f"HTTP 503 from http://127.0.0.1:{port}/a?api_key=***&format=***"
    for error in (caught.value, refused.value):
        assert "hunter2" not in str(error)
        assert "operator" not in str(error)
        assert "s3cret" not in str(error)


def test_display_url() -> None:
    assert (
        display_url("https://u:p@example.org:8443/x/y.pb?key=1&flag#frag")
        == "https://example.org:8443/x/y.pb?key=***&flag"
    )
    assert display_url("http://[::1") == "<invalid URL>"


async def test_unsupported_scheme(fetcher: FeedFetcher) -> None:
    with pytest.raises(FetchError, match="unsupported URL scheme 'ftp'"):
        await fetch(fetcher, "ftp://example.org/feed.pb")


async def test_fetch_outside_the_context_is_a_bug() -> None:
    fetcher = FeedFetcher(user_agent="x")

    with pytest.raises(RuntimeError, match="outside"):
        await fetch(fetcher, "file:///dev/null")


async def test_file_url_and_not_modified(fetcher: FeedFetcher, tmp_path: Path) -> None:
    path = tmp_path / "flow.json"
    path.write_bytes(b'{"v": 1}')

    first = await fetch(fetcher, path.as_uri())
    second = await fetch(fetcher, path.as_uri(), etag=first.etag)
    path.write_bytes(b'{"v": 22}')
    third = await fetch(fetcher, path.as_uri(), etag=first.etag)

    assert (first.body, first.status) == (b'{"v": 1}', 200)
    assert first.etag is not None
    assert first.last_modified is not None
    assert (second.body, second.status, second.etag) == (None, 304, first.etag)
    assert third.body == b'{"v": 22}'
    assert third.etag != first.etag


async def test_file_url_touched_with_same_size_is_modified(fetcher: FeedFetcher, tmp_path: Path) -> None:
    path = tmp_path / "flow.json"
    path.write_bytes(b"aaaa")
    first = await fetch(fetcher, path.as_uri())
    path.write_bytes(b"bbbb")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))

    result = await fetch(fetcher, path.as_uri(), etag=first.etag)

    assert result.body == b"bbbb"


async def test_file_url_not_modified_by_last_modified(fetcher: FeedFetcher, tmp_path: Path) -> None:
    path = tmp_path / "f.pb"
    path.write_bytes(b"x")
    first = await fetch(fetcher, path.as_uri())

    result = await fetch(fetcher, path.as_uri(), last_modified=first.last_modified)

    assert result.body is None


async def test_file_url_missing(fetcher: FeedFetcher, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="no such file") as caught:
        await fetch(fetcher, (tmp_path / "absent.pb").as_uri())

    assert caught.value.status is None


async def test_file_url_directory(fetcher: FeedFetcher, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="not a regular file"):
        await fetch(fetcher, tmp_path.as_uri())


async def test_file_url_over_the_cap(fetcher: FeedFetcher, tmp_path: Path) -> None:
    path = tmp_path / "big.pb"
    path.write_bytes(b"x" * 2_001)

    with pytest.raises(FetchError, match="2001 bytes, over the 2000-byte cap"):
        await fetch(fetcher, path.as_uri(), max_bytes=2_000)


async def test_file_url_with_a_remote_host_is_refused(fetcher: FeedFetcher) -> None:
    with pytest.raises(FetchError, match="remote host"):
        await fetch(fetcher, "file://server/share/feed.pb")


_FIRST_FETCH_PROBE = """
import asyncio, sys
from broadcaster.feeds.fetch import FeedFetcher

async def main() -> None:
    before = "anyio._backends._asyncio" in sys.modules
    async with FeedFetcher(user_agent="probe"):
        print(before, "anyio._backends._asyncio" in sys.modules)

asyncio.run(main())
"""


def test_opening_the_fetcher_loads_what_the_first_request_would() -> None:
    """httpx's first request imports anyio's asyncio backend (20-40 ms on the event loop): the fetcher does it when
    it opens, so the first poll of a fresh process (a new leader's, perhaps in an emergency) does not wait for it.
    A process of its own: this one has long imported it."""
    probe = subprocess.run([sys.executable, "-c", _FIRST_FETCH_PROBE], capture_output=True, text=True, timeout=60,
                           check=True)
    assert probe.stdout.split() == ["False", "True"]
