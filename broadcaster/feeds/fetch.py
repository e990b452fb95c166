"""Fetch a feed's bytes over HTTP(S) or from a file: conditional requests, an overall deadline, a size cap."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import stat
import time
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Self
from urllib.parse import parse_qsl, urlsplit, urlunsplit
from urllib.request import url2pathname

import anyio.lowlevel
import httpx

from broadcaster.errors import FetchError

if TYPE_CHECKING:
    from types import TracebackType

_MAX_REDIRECTS = 5
_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")


@dataclass(frozen=True)
class FetchResult:
    """What one fetch returned.

    Attributes:
        body: The complete body, or None when the source is unchanged since the validators passed in.
        etag: The validator to send next time: the server's; on a 304 without one, the one passed in.
        last_modified: Likewise for ``Last-Modified``.
        status: The HTTP status (200 or 304 for files too).
        elapsed_s: Wall time of the whole fetch, connection and body included.
    """

    body: bytes | None
    etag: str | None
    last_modified: str | None
    status: int
    elapsed_s: float

    @property
    def not_modified(self) -> bool:
        return self.body is None


class FeedFetcher:
    """Fetches feeds through one shared HTTP client; use as ``async with FeedFetcher(user_agent=...) as f``.

    One client for every feed keeps connections alive and builds the TLS context once (a client per request
    manages ~20 requests/s, docs/design.md, "Measured facts").
    """

    def __init__(self, *, user_agent: str, max_connections: int = 8) -> None:
        self._user_agent = user_agent
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        if self._client is not None:
            raise RuntimeError("FeedFetcher is already open")
        # httpx's first request loads anyio's asyncio backend, 20-40 ms of imports on the event loop; done here, at
        # start-up, it does not delay the first poll, which may be a new leader's in the middle of an emergency.
        # (Before the client exists: a cancellation here leaves nothing open.)
        await anyio.lowlevel.checkpoint()
        self._client = httpx.AsyncClient(
            headers={"User-Agent": self._user_agent},
            limits=self._limits,
            follow_redirects=True,
            max_redirects=_MAX_REDIRECTS,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def fetch(
        self,
        feed: str,
        url: str,
        *,
        timeout_s: float,
        max_bytes: int,
        etag: str | None = None,
        last_modified: str | None = None,
    ) -> FetchResult:
        """Fetch `url` unless it is unchanged since `etag` / `last_modified`.

        Args:
            feed: The feed's name, carried by every error.
            url: ``http://``, ``https://`` or ``file://``. Credentials in the URL are used but never shown.
            timeout_s: Deadline for the whole fetch: connecting, waiting and reading the body.
            max_bytes: Largest body accepted; the transfer stops as soon as it is exceeded.
            etag: The validator from the previous result, sent as ``If-None-Match``.
            last_modified: The ``Last-Modified`` from the previous result, sent as ``If-Modified-Since``.

        Returns:
            The body, or ``body=None`` when the source has not changed.

        Raises:
            FetchError: Connection failure, non-2xx status (``.status``), deadline or size cap exceeded.
        """
        if self._client is None:
            raise RuntimeError("FeedFetcher.fetch() called outside 'async with FeedFetcher(...)'")
        shown = display_url(url)
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError as exc:
            raise FetchError(feed, "invalid URL: it cannot be parsed") from exc
        started = time.monotonic()
        try:
            # httpx's timeouts bound each network operation, not the total: a server dripping a byte at a time
            # would never trip them. This deadline covers the whole fetch.
            async with asyncio.timeout(timeout_s):
                if scheme in ("http", "https"):
                    return await self._fetch_http(
                        self._client, feed, url, shown, started, timeout_s, max_bytes, etag, last_modified
                    )
                if scheme == "file":
                    return await self._fetch_file(feed, url, started, max_bytes, etag, last_modified)
        except TimeoutError as exc:
            raise FetchError(feed, f"no complete response from {shown} within {timeout_s:g}s") from exc
        raise FetchError(feed, f"unsupported URL scheme {scheme!r} in {shown}")

    async def _fetch_http(
        self,
        client: httpx.AsyncClient,
        feed: str,
        url: str,
        shown: str,
        started: float,
        timeout_s: float,
        max_bytes: int,
        etag: str | None,
        last_modified: str | None,
    ) -> FetchResult:
        headers: dict[str, str] = {}
        if etag is not None:
            headers["If-None-Match"] = etag
        if last_modified is not None:
            headers["If-Modified-Since"] = last_modified
        try:
            async with client.stream("GET", url, headers=headers, timeout=timeout_s) as response:
                status = response.status_code
                if status == 304:
                    # A 304 may leave its validators out (RFC 9110, 15.4.5): they are still the ones sent.
                    return FetchResult(None, response.headers.get("etag", etag),
                                       response.headers.get("last-modified", last_modified), status,
                                       time.monotonic() - started)
                # A new body's validators are its own: one sent without any has none, and the ones sent belong to
                # the body before it (a new process sending them could be answered 304 for that older body).
                new_etag = response.headers.get("etag")
                new_last_modified = response.headers.get("last-modified")
                if not response.is_success:
                    raise FetchError(feed, f"HTTP {status} from {shown}", status=status)
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise FetchError(feed, f"{shown} announces {declared} bytes, over the {max_bytes}-byte cap")
                # Chunks joined once at the end: one copy of the body, where a growing bytearray copied it as it
                # grew and `bytes()` once more (a 1.3 MB trip-update body a tick at k = 1).
                chunks: list[bytes] = []
                received = 0
                async for chunk in response.aiter_bytes():
                    chunks.append(chunk)
                    received += len(chunk)
                    if received > max_bytes:
                        raise FetchError(feed, f"body from {shown} exceeds the {max_bytes}-byte cap")
        except httpx.HTTPError as exc:
            raise FetchError(feed, _describe(exc, url, shown)) from exc
        except httpx.InvalidURL as exc:
            raise FetchError(feed, f"invalid URL {shown}: {_one_line(str(exc), url, shown)}") from exc
        return FetchResult(b"".join(chunks), new_etag, new_last_modified, status, time.monotonic() - started)

    async def _fetch_file(
        self,
        feed: str,
        url: str,
        started: float,
        max_bytes: int,
        etag: str | None,
        last_modified: str | None,
    ) -> FetchResult:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise FetchError(feed, f"file URL with a remote host: {display_url(url)}")
        path = Path(url2pathname(parts.path))
        try:
            body, new_etag, new_last_modified = await asyncio.to_thread(
                _read_file, path, max_bytes, etag, last_modified
            )
        except _TooLarge as exc:
            raise FetchError(feed, f"{path} is {exc.size} bytes, over the {max_bytes}-byte cap") from None
        except FileNotFoundError as exc:
            raise FetchError(feed, f"cannot read {path}: no such file") from exc
        except OSError as exc:
            raise FetchError(feed, f"cannot read {path}: {exc.strerror or exc}") from exc
        status = 304 if body is None else 200
        return FetchResult(body, new_etag, new_last_modified, status, time.monotonic() - started)


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        self.size = size
        super().__init__(size)


def _read_file(
    path: Path, max_bytes: int, etag: str | None, last_modified: str | None
) -> tuple[bytes | None, str, str]:
    """Read a regular file unless unchanged; runs in a worker thread."""
    if not stat.S_ISREG(path.stat().st_mode):
        # Opening a FIFO would block the thread until a writer appears.
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    with path.open("rb") as file:
        info = os.fstat(file.fileno())
        current_etag = f'"{info.st_mtime_ns:x}-{info.st_size:x}"'
        current_last_modified = formatdate(info.st_mtime, usegmt=True)
        # As in HTTP, the entity tag wins; the one-second date is only a fallback.
        unchanged = etag == current_etag if etag is not None else last_modified == current_last_modified
        if unchanged:
            return None, current_etag, current_last_modified
        if info.st_size > max_bytes:
            raise _TooLarge(info.st_size)
        body = file.read(max_bytes + 1)  # the file may have grown since fstat
        if len(body) > max_bytes:
            raise _TooLarge(len(body))
    return body, current_etag, current_last_modified


def display_url(url: str) -> str:
    """`url` fit for messages and logs: no userinfo, query values masked, no fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(f"{name}=***" if value else name for name, value in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _describe(exc: httpx.HTTPError, url: str, shown: str) -> str:
    reason = _one_line(_os_reason(exc) or str(exc), url, shown) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out fetching {shown} ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {shown}: {reason}"
    if isinstance(exc, httpx.TooManyRedirects):
        return f"more than {_MAX_REDIRECTS} redirects from {shown}"
    return f"{type(exc).__name__} fetching {shown}: {reason}"


def _os_reason(exc: BaseException) -> str | None:
    """The operating system's words for the failure ("Connection refused"), found down the cause chain.

    httpx reports a refused connection as "All connection attempts failed"; the errno below says more.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    reason = None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            # asyncio words a refusal "Connect call failed (...)"; the errno's own text is clearer.
            code = current.errno
            reason = os.strerror(code) if isinstance(code, int) and code > 0 else current.strerror
        current = current.__cause__ or current.__context__
    return reason


def _one_line(text: str, url: str, shown: str) -> str:
    """First line of a library message, with the raw URL and any other userinfo scrubbed."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return _USERINFO.sub("", first.replace(url, shown))
