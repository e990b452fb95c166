"""The HTTP admin API: operator notices and corrections, health, status and Prometheus metrics (docs/admin.md).

A Starlette app served by uvicorn in the broadcaster's own event loop (the only module outside the demo that
imports either), started by `service.serve` when the config has an `[admin]` section. Every handler is a
coroutine, so it runs on the loop's thread and may use the broadcaster's database connection directly.

Writes need a bearer token from the config. The presented token is hashed and compared in constant time with
every configured token's hash (no early exit, no length leak); whatever is wrong (no header, another scheme,
an unknown token) the answer is the same 401. A client address that fails `max_failures` times within
`failure_window_seconds` gets 429 until its oldest failure leaves the window. Each write is recorded by
`Broadcaster.audit` under the token's id; the token itself is never logged, stored or echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Literal, Self, TypeVar

import orjson
import uvicorn
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broadcaster import __version__
from broadcaster.channels.mqtt import MqttNoticeChannel
from broadcaster.config import AdminConfig
from broadcaster.errors import ConfigError, StoreError
from broadcaster.metrics import CONTENT_TYPE, FeedHealth, Health
from broadcaster.operator import ManualNotice
from broadcaster.outbox import PARKED
from broadcaster.service import Broadcaster
from broadcaster.webserver import InLoopServer

log = logging.getLogger(__name__)

#: Shorter tokens are refused at start-up: a bearer token is the only thing between the Internet and a post
#: on every channel.
MIN_TOKEN_LENGTH = 16
MAX_BODY_BYTES = 64 * 1024
#: How many client addresses the throttle remembers; past this, the least recently failing are forgotten.
MAX_TRACKED_ADDRESSES = 10_000
START_TIMEOUT_SECONDS = 10.0
SHUTDOWN_GRACE_SECONDS = 5


# ------------------------------------------------------------------------------------------------------------
# Request bodies (also the OpenAPI description's schemas)

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Effect = Literal[
    "NO_SERVICE", "REDUCED_SERVICE", "SIGNIFICANT_DELAYS", "DETOUR", "ADDITIONAL_SERVICE", "MODIFIED_SERVICE",
    "OTHER_EFFECT", "UNKNOWN_EFFECT", "STOP_MOVED", "NO_EFFECT", "ACCESSIBILITY_ISSUE",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


BodyT = TypeVar("BodyT", bound=_Body)


class NoticeRequest(_Body):
    """An operator's notice, as `broadcaster announce` takes it."""

    texts: Annotated[dict[str, Text], Field(min_length=1, description="language -> text, e.g. {\"zh\": ..., "
                                                                     "\"en\": ...}; configured languages only")]
    line_ids: Annotated[list[Identifier], Field(max_length=100, description="GTFS route ids it concerns")] = []
    station_ids: Annotated[list[Identifier], Field(max_length=500, description="GTFS stop ids it concerns")] = []
    severity: Annotated[Literal["INFO", "WARNING", "SEVERE"],
                        Field(description="SEVERE (or an emergency effect) jumps the queue")] = "WARNING"
    effect: Annotated[Effect, Field(description="GTFS-RT effect; sets the line status")] = "OTHER_EFFECT"
    until: Annotated[AwareDatetime | None,
                     Field(description="when it ends (RFC 3339 with an offset); none: until corrected")] = None


class CorrectionRequest(_Body):
    """The corrected text of an earlier notice."""

    texts: Annotated[dict[str, Text], Field(min_length=1, description="language -> corrected text")]


class NoticeCreated(_Body):
    notice_id: str


class CorrectionCreated(_Body):
    notice_id: str
    version: str


class Problem(_Body):
    """Every error answer: a stable code, a sentence for people and, for 422, each bad field."""

    error: str
    message: str
    errors: list[dict[str, str]] = []


# ------------------------------------------------------------------------------------------------------------
# Authentication and throttling


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


# ------------------------------------------------------------------------------------------------------------
# The application


def _problem(status: int, error: str, message: str, *, errors: Sequence[Mapping[str, str]] = (),
             headers: Mapping[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": error, "message": message}
    if errors:
        body["errors"] = list(errors)
    return JSONResponse(body, status, headers=dict(headers or {}))


UNAUTHORISED_HEADERS = {"WWW-Authenticate": 'Bearer realm="broadcaster"'}


def _unauthorised() -> JSONResponse:
    # The one answer for every authentication failure: nothing in it says what was wrong.
    return _problem(401, "unauthorized", "a valid bearer token is required", headers=UNAUTHORISED_HEADERS)


def _field(location: Sequence[int | str]) -> str:
    """pydantic's ('texts', 'fr') -> 'texts.fr'; ('line_ids', 0) -> 'line_ids[0]'."""
    out = ""
    for part in location:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out or "(body)"


def _validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for error in exc.errors(include_url=False):
        message = {"missing": "is required", "extra_forbidden": "is not a known field"}.get(
            error["type"], error["msg"].removeprefix("Value error, "))
        out.append({"field": _field(error["loc"]), "message": message})
    return out


def _iso(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat() if at is not None else None


def _feed(feed: FeedHealth, *, detail: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": feed.name, "kind": feed.kind, "healthy": feed.healthy, "age_seconds": feed.age_seconds,
        "last_ok_at": _iso(feed.last_ok_at), "consecutive_failures": feed.consecutive_failures,
    }
    if detail:  # error texts name internal URLs and paths: only for authenticated callers
        out["last_error"] = feed.last_error
        out["problems"] = list(feed.problems)
    return out


def _health_body(health: Health, *, detail: bool) -> dict[str, Any]:
    return {
        "healthy": health.healthy,
        "mqtt": {"connected": health.mqtt_connected, "delivering": health.mqtt_delivering},
        "feeds": [_feed(f, detail=detail) for f in health.feeds],
        "outbox": {
            channel: {"pending": d.pending, "parked": d.parked, "oldest_pending_seconds": d.oldest_pending_seconds}
            for channel, d in health.outbox.items()
        },
    }


Endpoint = Callable[[Request], Awaitable[Response]]


class AdminApi:
    """The routes, over one running broadcaster."""

    def __init__(self, b: Broadcaster, config: AdminConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.b = b
        self.config = config
        self.tokens = TokenRing(config, b.config.source)
        self.throttle = FailureThrottle(config.max_failures, config.failure_window_seconds, clock)
        self.public = frozenset(config.public)

    def app(self) -> Starlette:
        routes = [
            Route("/v1/health", self._guard("/v1/health", self.health), methods=["GET"]),
            Route("/metrics", self._guard("/metrics", self.metrics), methods=["GET"]),
            Route("/openapi.json", self._guard("/openapi.json", self.openapi), methods=["GET"]),
            Route("/v1/status", self._guard("/v1/status", self.status), methods=["GET"]),
            Route("/v1/notices", self._guard("/v1/notices", self.announce), methods=["POST"]),
            Route("/v1/notices/{notice_id:path}/corrections", self._guard("corrections", self.correct),
                  methods=["POST"]),
        ]
        return Starlette(routes=routes, exception_handlers={404: self._not_found, 405: self._not_allowed})

    @staticmethod
    async def _not_found(request: Request, exc: Exception) -> Response:
        return _problem(404, "not_found", f"no such endpoint: {request.url.path}")

    @staticmethod
    async def _not_allowed(request: Request, exc: Exception) -> Response:
        return _problem(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}")

    # -- authentication ----------------------------------------------------------------------------------

    def _guard(self, name: str, handler: Callable[[Request, str | None], Awaitable[Response]]) -> Endpoint:
        """`handler` behind the bearer-token check, unless `name` is public; it receives the token id."""
        public = name in self.public

        async def endpoint(request: Request) -> Response:
            if public:
                return await handler(request, None)
            address = request.client.host if request.client else "unknown"
            wait = self.throttle.retry_after(address)
            if wait is not None:
                return _problem(429, "too_many_failures", "too many failed authentications from this address",
                                headers={"Retry-After": str(max(1, math.ceil(wait)))})
            token_id = self.tokens.identify(request.headers.get("authorization"))
            if token_id is None:
                self.throttle.failed(address)
                log.warning("admin API: refused %s %s from %s: no valid bearer token",
                            request.method, request.url.path, address)
                return _unauthorised()
            return await handler(request, token_id)

        return endpoint

    # -- reading -----------------------------------------------------------------------------------------

    async def health(self, request: Request, token_id: str | None) -> Response:
        health = self.b.health()
        return JSONResponse(_health_body(health, detail=False), 200 if health.healthy else 503)

    async def metrics(self, request: Request, token_id: str | None) -> Response:
        return Response(self.b.metrics.render(), 200, media_type=CONTENT_TYPE)

    async def openapi(self, request: Request, token_id: str | None) -> Response:
        return JSONResponse(openapi_document(self.public))

    async def status(self, request: Request, token_id: str | None) -> Response:
        health = self.b.health()
        body = _health_body(health, detail=True)
        body["mqtt"].update(url=self.b.config.mqtt.url, sessions=self.b.link.sessions,
                            last_error=self.b.link.last_error)
        by_channel: dict[str, dict[str, int]] = {}
        for (channel, status), count in self.b.outbox.depth().items():
            by_channel.setdefault(channel, {})[status] = count
        body["outbox_by_status"] = by_channel
        rows = self.b.db.conn.execute(
            "SELECT key, channel, notice_id, version, part, attempts, created_at, error FROM outbox"
            " WHERE status = ? ORDER BY created_at DESC LIMIT 50", (PARKED,),
        )
        body["parked"] = [
            {"key": r[0], "channel": r[1], "notice_id": r[2], "version": r[3], "part": r[4], "attempts": r[5],
             "created_at": r[6], "error": r[7]}
            for r in rows
        ]
        body["version"] = __version__
        return JSONResponse(body, 200)

    # -- writing -----------------------------------------------------------------------------------------

    async def _json(self, request: Request) -> Any | Response:
        size = 0
        chunks: list[bytes] = []
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return _problem(413, "too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        try:
            return orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            return _problem(400, "invalid_json", f"the body is not JSON: {exc}")

    def _texts_problems(self, texts: Mapping[str, str]) -> list[dict[str, str]]:
        languages = self.b.config.network.languages
        return [{"field": f"texts.{lang}", "message": f"not a configured language ({', '.join(languages)})"}
                for lang in texts if lang not in languages]

    async def _validated(
        self, request: Request, model: type[BodyT], action: str, token_id: str, subject: str
    ) -> BodyT | Response:
        """The request's JSON body as `model`, or the response refusing it (audited like every refusal)."""
        body = await self._json(request)
        if isinstance(body, Response):
            return body
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            return self._refused(action, token_id, subject, _validation_errors(exc))

    def _refused(self, action: str, token_id: str, subject: str, errors: Sequence[Mapping[str, str]]) -> Response:
        self.b.audit(f"{action}-refused", token_id, subject, {"errors": list(errors)})
        return _problem(422, "invalid_request", "the request has invalid fields", errors=errors)

    async def announce(self, request: Request, token_id: str | None) -> Response:
        assert token_id is not None
        notice = await self._validated(request, NoticeRequest, "announce", token_id, "")
        if isinstance(notice, Response):
            return notice
        network = self.b.network
        problems = self._texts_problems(notice.texts)
        problems += [{"field": f"line_ids[{i}]", "message": f"unknown line {line!r}"}
                     for i, line in enumerate(notice.line_ids) if line not in network.lines]
        problems += [{"field": f"station_ids[{i}]", "message": f"unknown station {station!r}"}
                     for i, station in enumerate(notice.station_ids) if station not in network.stations]
        if notice.until is not None and notice.until <= self.b.clock.now():
            problems.append({"field": "until", "message": "is in the past"})
        if problems:
            return self._refused("announce", token_id, "", problems)
        request_body = {**notice.model_dump(mode="json"), "author": token_id}
        try:
            manual = ManualNotice.from_request(request_body, network)
        except ValueError as exc:
            return self._refused("announce", token_id, "", [{"field": "(body)", "message": str(exc)}])
        try:
            notice_id = await self.b.announce(manual)  # returns once committed to the outbox
        except StoreError as exc:
            log.error("admin API: announce by %s not committed: %s", token_id, exc)
            return _problem(503, "store_unavailable", "the notice could not be committed; try again")
        return JSONResponse({"notice_id": notice_id}, 201)

    async def correct(self, request: Request, token_id: str | None) -> Response:
        assert token_id is not None
        notice_id = str(request.path_params["notice_id"])
        correction = await self._validated(request, CorrectionRequest, "correct", token_id, notice_id)
        if isinstance(correction, Response):
            return correction
        problems = self._texts_problems(correction.texts)
        if problems:
            return self._refused("correct", token_id, notice_id, problems)
        if not self._known(notice_id):
            return _problem(404, "unknown_notice", f"no notice {notice_id!r} was ever issued")
        try:
            version = await self.b.correct(notice_id, correction.texts, author=token_id)
        except StoreError as exc:
            log.error("admin API: correction of %s by %s not committed: %s", notice_id, token_id, exc)
            return _problem(503, "store_unavailable", "the correction could not be committed; try again")
        return JSONResponse({"notice_id": notice_id, "version": version}, 201)

    def _known(self, notice_id: str) -> bool:
        if notice_id.startswith("alert-") and notice_id.removeprefix("alert-") in self.b.state.alerts:
            return True
        # Every notice goes to the MQTT stream, so its rows there say whether it was ever issued.
        row = self.b.db.conn.execute(
            "SELECT 1 FROM outbox WHERE channel = ? AND notice_id = ? LIMIT 1", (MqttNoticeChannel.name, notice_id)
        ).fetchone()
        return row is not None


# ------------------------------------------------------------------------------------------------------------
# OpenAPI


def _schemas() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in (NoticeRequest, CorrectionRequest, NoticeCreated, CorrectionCreated, Problem):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": dict(schema)}}}


def openapi_document(public: frozenset[str]) -> dict[str, Any]:
    """The API's OpenAPI 3.1 description; `public` names the endpoints served without a token."""
    problem = _json_content(_ref("Problem"))
    refused = {
        "401": {"description": "no valid bearer token (the same answer whatever is wrong)", **problem},
        "429": {"description": "too many failed authentications from this address; see Retry-After", **problem},
    }

    def operation(path: str, summary: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
        if path in public:
            return {"summary": summary, "security": [], **more, "responses": responses}
        return {"summary": summary, "security": [{"bearer": []}], **more, "responses": {**responses, **refused}}

    health = {"type": "object", "description": "healthy, mqtt.connected, feeds[], outbox{channel: depth}"}
    paths = {
        "/v1/health": {"get": operation(
            "/v1/health", "Health: every feed fresh and the broker connected",
            {"200": {"description": "healthy", **_json_content(health)},
             "503": {"description": "a feed is failing or stale, or the broker is unreachable",
                     **_json_content(health)}})},
        "/metrics": {"get": operation(
            "/metrics", "Prometheus metrics (text exposition format)",
            {"200": {"description": "the metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}})},
        "/openapi.json": {"get": operation(
            "/openapi.json", "This description", {"200": {"description": "OpenAPI 3.1", **_json_content({})}})},
        "/v1/status": {"get": operation(
            "/v1/status", "Feeds with their errors, the broker link, the outbox per channel and status, parked posts",
            {"200": {"description": "the status", **_json_content({"type": "object"})}})},
        "/v1/notices": {"post": operation(
            "/v1/notices", "Issue an operator notice on every channel; answers once it is committed to the outbox",
            {"201": {"description": "committed", **_json_content(_ref("NoticeCreated"))},
             "400": {"description": "the body is not JSON", **problem},
             "413": {"description": "the body is too large", **problem},
             "422": {"description": "invalid fields, each named", **problem},
             "503": {"description": "the database could not commit it", **problem}},
            requestBody={"required": True, **_json_content(_ref("NoticeRequest"))})},
        "/v1/notices/{notice_id}/corrections": {"post": operation(
            "corrections", "Correct an earlier notice everywhere it went; answers once it is committed",
            {"201": {"description": "committed", **_json_content(_ref("CorrectionCreated"))},
             "400": {"description": "the body is not JSON", **problem},
             "404": {"description": "no such notice was ever issued", **problem},
             "413": {"description": "the body is too large", **problem},
             "422": {"description": "invalid fields, each named", **problem},
             "503": {"description": "the database could not commit it", **problem}},
            parameters=[{"name": "notice_id", "in": "path", "required": True, "schema": {"type": "string"},
                         "description": "e.g. alert-A-L2 (from the notice stream, /v1/status or POST /v1/notices)"}],
            requestBody={"required": True, **_json_content(_ref("CorrectionRequest"))})},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "broadcaster admin API", "version": __version__,
                 "description": "Operator notices and corrections, health, status and metrics (docs/admin.md)."},
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a token from the config's [admin] tokens"}},
        },
    }


# ------------------------------------------------------------------------------------------------------------
# The server


class AdminServer:
    """The admin API on its configured address, in this event loop.

    `bind()` then `serve()` (a task of the caller's TaskGroup) until `shutdown()`; or `async with` for both.
    """

    def __init__(self, b: Broadcaster, config: AdminConfig) -> None:
        self.config = config
        self.api = AdminApi(b, config)  # reads the tokens: a missing secret is a ConfigError now
        self.b = b
        self._server = InLoopServer(uvicorn.Config(
            self.api.app(), log_config=None, log_level="warning", access_log=False, lifespan="off", http="h11",
            ws="none", server_header=False, timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        ))
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    def bind(self) -> None:
        """Listen on `config.listen` (port 0: a free port).

        Raises:
            ConfigError: the address cannot be listened on (taken, or not this machine's).
        """
        host, port = self.config.host, self.config.port
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise ConfigError(self.b.config.source, "admin.listen", f"{self.config.listen!r}: cannot listen: "
                                                          f"{exc.strerror or exc}", self.config.listen) from None
        sock.setblocking(False)
        self._sock = sock

    @property
    def port(self) -> int:
        assert self._sock is not None, "bind() first"
        port: int = self._sock.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        host = self.config.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    async def serve(self) -> None:
        """Serve until `shutdown()`; requests in flight get `SHUTDOWN_GRACE_SECONDS` to finish."""
        assert self._sock is not None, "bind() first"
        try:
            await self._server.serve(sockets=[self._sock])
        finally:
            self._sock.close()

    async def wait_started(self, task: asyncio.Task[None]) -> None:
        """Return once the server accepts requests; raise if `task` (running `serve()`) ended instead."""
        waiter = asyncio.ensure_future(self._server.ready.wait())
        try:
            async with asyncio.timeout(START_TIMEOUT_SECONDS):
                await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task.done():
            task.result()
            raise RuntimeError("the admin API stopped during start-up")
        log.info("admin API listening on %s", self.url)

    def shutdown(self) -> None:
        self._server.should_exit = True

    async def __aenter__(self) -> Self:
        self.bind()
        self._task = asyncio.create_task(self.serve(), name="admin API")
        try:
            await self.wait_started(self._task)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        self.shutdown()
        if self._task is not None:
            task, self._task = self._task, None
            with contextlib.suppress(Exception):
                await task
