"""The HTTP client shared by the micro-blog and webhook channels (the channels' only httpx import).

It owns one `httpx.AsyncClient` (one connection pool, one TLS context), puts an overall deadline on every
request (httpx timeouts are per network operation, so a server that drips its answer would never time out
otherwise), and turns transport failures and HTTP statuses into the two delivery errors:

- `TransientDeliveryError`: 408, 425, 429, 5xx, timeouts and broken connections. `retry_after` comes from
  `Retry-After` (seconds or an HTTP date), Mastodon's `X-RateLimit-Reset` (ISO 8601) or Bluesky's
  `ratelimit-reset` (epoch seconds), read strictly and clamped to `MAX_SERVER_WAIT_S` (`retry_after_seconds`).
  `maybe_delivered` is set when the request may have been processed.
- `PermanentDeliveryError`: any other 4xx; retrying the same request will fail again.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar

import httpx
import orjson

from broadcaster import __version__
from broadcaster.errors import PermanentDeliveryError, TransientDeliveryError
from broadcaster.outbox import MAX_SERVER_WAIT_S

if TYPE_CHECKING:
    from broadcaster.render.length import PlatformProfile

log = logging.getLogger(__name__)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


ConfigT = TypeVar("ConfigT", bound=_Named)

#: Statuses worth retrying: the server was busy, limited us, or failed on its side.
RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504, 507, 509, 522, 524})


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None

    def object(self) -> dict[str, Any]:
        """The body as a JSON object; {} when it is not one (a list, a string, not JSON): a platform's answer is
        data, so a field read from it is checked, never assumed."""
        body = self.json()
        return body if isinstance(body, dict) else {}

    def snippet(self, limit: int = 200) -> str:
        """The start of the body on one line, for error messages."""
        return " ".join(self.body[:limit].decode("utf-8", "replace").split())


def retry_after_seconds(headers: Mapping[str, str], now: datetime) -> float | None:
    """How long the server asked us to wait, from the first rate-limit header it sent in a form we can read; None if
    none. Every form is read strictly (ASCII digits, a real instant) and the result lies in [0, MAX_SERVER_WAIT_S]:
    a header can neither stop the service nor hold a channel for longer than that (docs/channels.md)."""
    for name, parse in _WAIT_HEADERS:
        value = headers.get(name)
        wait = parse(value.strip(" \t"), now) if value else None
        if wait is not None:
            return min(max(wait, 0.0), MAX_SERVER_WAIT_S)
    return None


#: Longer numbers are past any ceiling anyway; int() of thousands of digits raises.
_MAX_DIGITS = 12
_DIGITS = re.compile(r"[0-9]+")  # re's [0-9] is ASCII only (str.isdigit() takes "²" and "٣")
_EPOCH = re.compile(r"([0-9]+)(?:\.[0-9]{1,9})?")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_IMF_FIXDATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), ([0-9]{2}) (" + "|".join(_MONTHS) + r") ([0-9]{4})"
    r" ([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT"
)
_ISO_INSTANT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})"
)
#: A bare number below this cannot be an epoch time (it is before 2001): it is a delta in seconds.
_EPOCH_FLOOR = 1_000_000_000


def _seconds_until(when: datetime, now: datetime) -> float:
    return (when - now).total_seconds()


def _retry_after(value: str, now: datetime) -> float | None:
    """RFC 9110 section 10.2.3: delta-seconds (1*DIGIT) or an HTTP-date; the obsolete date forms are not read
    (no server of ours sends them: our own backoff applies instead)."""
    if _DIGITS.fullmatch(value):
        return MAX_SERVER_WAIT_S if len(value.lstrip("0")) > _MAX_DIGITS else float(int(value))
    match = _IMF_FIXDATE.fullmatch(value)
    if match is None:
        return None
    day, month, year, hour, minute, second = match.groups()
    try:
        when = datetime(int(year), _MONTHS.index(month) + 1, int(day), int(hour), int(minute), int(second),
                        tzinfo=UTC)
    except ValueError:  # 32 Dec, 25:00, year 0
        return None
    return _seconds_until(when, now)


def _epoch_or_delta(value: str, now: datetime) -> float | None:
    match = _EPOCH.fullmatch(value)
    if match is None:
        return None
    if len(match.group(1).lstrip("0")) > _MAX_DIGITS:
        return MAX_SERVER_WAIT_S
    number = float(value)
    return number if number < _EPOCH_FLOOR else number - now.timestamp()


def _ratelimit_reset(value: str, now: datetime) -> float | None:
    """Mastodon's X-RateLimit-Reset is an ISO 8601 instant (with a zone: one without names no instant); other
    servers send epoch seconds, or seconds from now."""
    if _ISO_INSTANT.fullmatch(value):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:  # 30 February
            return None
        return _seconds_until(when, now)
    return _epoch_or_delta(value, now)


#: Which header is read first, and how: the standard one, then Mastodon's, then Bluesky's (epoch seconds).
_WAIT_HEADERS: tuple[tuple[str, Callable[[str, datetime], float | None]], ...] = (
    ("retry-after", _retry_after),
    ("x-ratelimit-reset", _ratelimit_reset),
    ("ratelimit-reset", _epoch_or_delta),
)


def check_status(channel: str, reply: HttpReply, now: datetime) -> None:
    """Raise the delivery error a non-2xx reply means."""
    if 200 <= reply.status < 300:
        return
    reason = f"HTTP {reply.status}: {reply.snippet()}" if reply.body else f"HTTP {reply.status}"
    if reply.status in RETRYABLE:
        # A 5xx may come after the server did the work; a 429 or 503 means it did not.
        maybe = reply.status >= 500 and reply.status not in (503, 509)
        raise TransientDeliveryError(
            channel, reason, retry_after=retry_after_seconds(reply.headers, now), maybe_delivered=maybe
        )
    raise PermanentDeliveryError(channel, reason)


class HttpChannelClient:
    """One pooled HTTP client for every HTTP channel; use as `async with`."""

    def __init__(
        self, clock: Callable[[], datetime] | None = None, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.clock = clock or (lambda: datetime.now(UTC))
        self._transport = transport  # tests of the status table only; real runs use the network
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        self._client = httpx.AsyncClient(
            headers={"User-Agent": f"broadcaster/{__version__}"},
            timeout=httpx.Timeout(30.0),
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
            follow_redirects=False,  # a POST that redirects is a misconfigured URL, not something to follow
            transport=self._transport,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def request(
        self,
        channel: str,
        method: str,
        url: str,
        *,
        deadline_s: float,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> HttpReply:
        """Send one request and read the whole answer within `deadline_s`.

        Raises:
            TransientDeliveryError: no answer in time, or the connection failed (with `maybe_delivered` when the
                request may already have been received).
        """
        if self._client is None:
            raise RuntimeError("HttpChannelClient used outside 'async with'")
        body = orjson.dumps(json) if json is not None else content
        all_headers = dict(headers or {})
        if json is not None:
            all_headers["Content-Type"] = "application/json"
        try:
            async with asyncio.timeout(deadline_s):
                response = await self._client.request(
                    method, url, content=body, data=data, headers=all_headers, params=params
                )
                raw = await response.aread()
        except TimeoutError:
            raise TransientDeliveryError(
                channel, f"no complete answer from {_host(url)} within {deadline_s:g} s", maybe_delivered=True
            ) from None
        except httpx.LocalProtocolError:
            # The request itself is malformed (an illegal header value): the library's message quotes the header,
            # which may be a credential, so it is not passed on. Retrying cannot help.
            raise PermanentDeliveryError(
                channel, f"the request to {_host(url)} could not be built: a header value is not allowed"
                " (check the channel's credentials)"
            ) from None
        except httpx.ConnectError as exc:
            raise TransientDeliveryError(channel, f"cannot connect to {_host(url)}: {_reason(exc)}") from exc
        except httpx.TransportError as exc:
            # The request may have been sent before the connection broke.
            raise TransientDeliveryError(
                channel, f"connection to {_host(url)} failed: {_reason(exc)}", maybe_delivered=True
            ) from exc
        return HttpReply(response.status_code, {k.lower(): v for k, v in response.headers.items()}, raw)


def _host(url: str) -> str:
    return httpx.URL(url).host or url


def _reason(exc: httpx.TransportError) -> str:
    return str(exc) or type(exc).__name__


class HttpChannel(Generic[ConfigT]):
    """What every HTTP channel shares: its settings, the pooled client, the clock, and no start-up work unless
    it overrides `start`. Subclasses add `send` (and `profile`, their length rule)."""

    profile: PlatformProfile | None = None

    def __init__(self, config: ConfigT, http: HttpChannelClient, clock: Callable[[], datetime]) -> None:
        self.config = config
        self.http = http
        self.clock = clock

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def ready(self) -> bool:
        return True  # an HTTP channel learns it is down by trying; the outbox backs off

    async def start(self) -> None:
        """Nothing to learn up front."""
