"""Who may write: the configured bearer tokens, and the throttle on failed authentications.

Writes need a bearer token from the config. The presented token is hashed and compared in constant time with
every configured token's hash (no early exit, no length leak); whatever is wrong (no header, another scheme,
an unknown token) the answer is the same 401. A client address that fails `max_failures` times within
`failure_window_seconds` gets 429 until its oldest failure leaves the window. The token itself is never
logged, stored or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from broadcaster.admin.answers import problem, unauthorised
from broadcaster.config import AdminConfig
from broadcaster.errors import ConfigError

log = logging.getLogger(__name__)

#: Shorter tokens are refused at start-up: a bearer token is the only thing between the Internet and a post
#: on every channel.
MIN_TOKEN_LENGTH = 16
#: How many client addresses the throttle remembers; past this, the least recently failing are forgotten.
MAX_TRACKED_ADDRESSES = 10_000


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class TokenRing:
    """The configured tokens, kept only as SHA-256 digests, each with its id."""

    def __init__(self, config: AdminConfig, source: Path | str) -> None:
        """Read every token now.

        Raises:
            ConfigError: a token's variable is unset, its file unreadable, or it is too short (`source` is the
                config file, for the message).
        """
        self._tokens: list[tuple[str, bytes]] = []
        for i, entry in enumerate(config.tokens):
            key = f"admin.tokens[{i}].token"
            try:
                secret = entry.token.load(Path(source).parent)
            except OSError as exc:
                raise ConfigError(source, key, f"cannot read {entry.token.file}: {exc.strerror}") from None
            if secret is None:
                raise ConfigError(source, key, f"environment variable {entry.token.env} is not set")
            if len(secret.reveal()) < MIN_TOKEN_LENGTH:
                raise ConfigError(source, key, f"the token is shorter than {MIN_TOKEN_LENGTH} characters")
            self._tokens.append((entry.id, _digest(secret.reveal().encode("utf-8"))))

    def identify(self, authorization: str | None) -> str | None:
        """The id of the token an Authorization header carries, or None for any other header (or none)."""
        presented = b""
        if authorization is not None:
            scheme, _, credentials = authorization.partition(" ")
            if scheme.lower() == "bearer":
                # Header values arrive decoded as latin-1; this gives back the bytes the client sent.
                presented = credentials.strip().encode("latin-1", "replace")
        digest = _digest(presented)
        found: str | None = None
        for token_id, expected in self._tokens:  # every token, always: no early exit
            if hmac.compare_digest(digest, expected) and presented and found is None:
                found = token_id
        return found


class FailureThrottle:
    """Counts failed authentications per client address in a sliding window."""

    def __init__(self, max_failures: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures

    def retry_after(self, address: str) -> float | None:
        """Seconds until `address` may try again, or None if it may now."""
        now = self._clock()
        failures = self._recent(address, now)
        if failures is None or len(failures) < self.max_failures:
            return None
        return failures[-self.max_failures] + self.window_s - now

    def failed(self, address: str) -> None:
        now = self._clock()
        failures = self._recent(address, now) or deque(maxlen=self.max_failures)
        self._failures.pop(address, None)
        failures.append(now)
        self._failures[address] = failures  # re-inserted: the dict's order is least recently failing first
        if len(self._failures) > MAX_TRACKED_ADDRESSES:
            del self._failures[next(iter(self._failures))]


class Gate:
    """The check in front of every endpoint that is not public: the throttle, then the token."""

    def __init__(self, config: AdminConfig, source: Path | str, clock: Callable[[], float] = time.monotonic) -> None:
        """Raises ConfigError as `TokenRing` does."""
        self.tokens = TokenRing(config, source)
        self.throttle = FailureThrottle(config.max_failures, config.failure_window_seconds, clock)

    def admit(self, request: Request) -> str | Response:
        """The id of the request's token, or the answer that refuses it (429 while throttled, else 401)."""
        address = request.client.host if request.client else "unknown"
        wait = self.throttle.retry_after(address)
        if wait is not None:
            return problem(429, "too_many_failures", "too many failed authentications from this address",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})
        token_id = self.tokens.identify(request.headers.get("authorization"))
        if token_id is None:
            self.throttle.failed(address)
            log.warning("admin API: refused %s %s from %s: no valid bearer token",
                        request.method, request.url.path, address)
            return unauthorised()
        return token_id
