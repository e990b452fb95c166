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
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson
import uvicorn
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broadcaster import __version__, desk, idempotency
from broadcaster.channels.atom import AtomChannel
from broadcaster.config import AdminConfig
from broadcaster.errors import ConfigError, IdempotencyKeyReused, RequestInvalid, StoreError, UnknownNotice
from broadcaster.metrics import CONTENT_TYPE, FeedHealth, Health
from broadcaster.operator import (
    CorrectionRequest,
    ManualNotice,
    NoticeRequest,
    correction_request,
    notice_request,
)
from broadcaster.service import Broadcaster
from broadcaster.store import iso
from broadcaster.webserver import InLoopServer

log = logging.getLogger(__name__)

#: Shorter tokens are refused at start-up: a bearer token is the only thing between the Internet and a post
#: on every channel.
MIN_TOKEN_LENGTH = 16
MAX_BODY_BYTES = 64 * 1024
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: How many client addresses the throttle remembers; past this, the least recently failing are forgotten.
MAX_TRACKED_ADDRESSES = 10_000
START_TIMEOUT_SECONDS = 10.0
SHUTDOWN_GRACE_SECONDS = 5


# ------------------------------------------------------------------------------------------------------------
# Answers (with the request models of broadcaster.operator, the OpenAPI description's schemas)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class SetAsideCollector(Collector):
    """`broadcaster_atom_files_set_aside_total{channel}`: Atom timelines moved aside because they could not be
    read (`AtomChannel.set_aside`), since start-up. Anything above 0 wants an operator's look."""

    def __init__(self, atoms: Sequence[AtomChannel]) -> None:
        self._atoms = list(atoms)

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        return [self._family(counting=True)]

    def _family(self, *, counting: bool = False) -> CounterMetricFamily:
        family = CounterMetricFamily("broadcaster_atom_files_set_aside",
                                     "Atom timeline files that could not be read and were moved aside.",
                                     labels=["channel"])
        for atom in self._atoms if counting else ():
            family.add_metric([atom.name], len(atom.set_aside))
        return family


def atom_channels(b: Broadcaster) -> list[AtomChannel]:
    return [c for c in b.channels if isinstance(c, AtomChannel)]


class AdminApi:
    """The routes, over one running broadcaster."""

    def __init__(self, b: Broadcaster, config: AdminConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.b = b
        self.config = config
        self.tokens = TokenRing(config, b.config.source)
        self.throttle = FailureThrottle(config.max_failures, config.failure_window_seconds, clock)
        self.public = frozenset(config.public)
        self._keyed = asyncio.Lock()  # requests with an Idempotency-Key, one at a time
        with contextlib.suppress(ValueError):  # an earlier AdminApi over this broadcaster registered it already
            b.metrics.registry.register(SetAsideCollector(atom_channels(b)))

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
        body["parked"] = [
            {"key": r.key, "channel": r.channel, "notice_id": r.notice_id, "version": r.version, "part": r.part,
             "attempts": r.attempts, "created_at": iso(r.created_at), "error": r.error}
            for r in self.b.outbox.parked(limit=50)
        ]
        body["atom_set_aside"] = {a.name: [str(p) for p in a.set_aside] for a in atom_channels(self.b)}
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

    def _refused(self, action: str, token_id: str, subject: str, errors: Sequence[Mapping[str, str]]) -> Response:
        self.b.audit(f"{action}-refused", token_id, subject, {"errors": list(errors)})
        return _problem(422, "invalid_request", "the request has invalid fields", errors=errors)

    async def _once(self, request: Request, token_id: str, action: str, subject: str,
                    handler: Callable[[Any, str, Remember | None], Awaitable[Response]]) -> Response:
        """`handler` on the request's JSON body, at most once per `Idempotency-Key` (docs/admin.md).

        Without the header every request is carried out. With it, the first successful answer is stored with a
        fingerprint of the request and given again, for 24 hours, to every request with the same key and the
        same body (`Idempotent-Replayed: true`); another body gets 422. Keyed requests run one at a time, so
        concurrent duplicates wait for the first and get its answer. The answer is remembered in the transaction
        that commits the notice: a crash can lose neither one without the other, so a retry never makes a second.
        """
        body = await self._json(request)
        if isinstance(body, Response):
            return body
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is None:
            return await handler(body, token_id, None)
        if not idempotency.valid_key(key):
            return _problem(400, "invalid_idempotency_key", f"{IDEMPOTENCY_HEADER}: {idempotency.KEY_RULE}")
        scope, fingerprint = f"api:{token_id}", idempotency.fingerprint(action, subject, body)
        async with self._keyed:
            earlier = idempotency.recall(self.b.db.conn, scope, key, self.b.clock.now())
            if earlier is not None:
                if earlier.fingerprint != fingerprint:
                    return _problem(422, "idempotency_key_reused", str(IdempotencyKeyReused(key)))
                return Response(earlier.body, earlier.status or 200, media_type="application/json",
                                headers={"Idempotent-Replayed": "true"})

            def remember(conn: sqlite3.Connection, response: Response) -> None:
                idempotency.remember(conn, scope, key, fingerprint, self.b.clock.now(),
                                     status=response.status_code, body=bytes(response.body))

            return await handler(body, token_id, remember)

    async def announce(self, request: Request, token_id: str | None) -> Response:
        assert token_id is not None
        return await self._once(request, token_id, "announce", "", self._announce)

    async def _announce(self, body: Any, token_id: str, remember: Remember | None) -> Response:
        try:
            notice = notice_request(body, network=self.b.network, languages=self.b.config.network.languages,
                                    now=self.b.clock.now())
        except RequestInvalid as exc:
            return self._refused("announce", token_id, "", exc.problems)
        try:
            notice_id = await self.b.announce(  # once committed, with the answer remembered in that transaction
                ManualNotice.of(notice, author=token_id),
                on_commit=None if remember is None else lambda conn, id_: remember(conn, _notice_created(id_)),
            )
        except StoreError as exc:
            log.error("admin API: announce by %s not committed: %s", token_id, exc)
            return _problem(503, "store_unavailable", "the notice could not be committed; try again")
        return _notice_created(notice_id)

    async def correct(self, request: Request, token_id: str | None) -> Response:
        assert token_id is not None
        notice_id = str(request.path_params["notice_id"])

        async def carry_out(body: Any, token: str, remember: Remember | None) -> Response:
            return await self._correct(body, token, notice_id, remember)

        return await self._once(request, token_id, "correct", notice_id, carry_out)

    async def _correct(self, body: Any, token_id: str, notice_id: str, remember: Remember | None) -> Response:
        try:
            correction = correction_request(body, languages=self.b.config.network.languages)
        except RequestInvalid as exc:
            return self._refused("correct", token_id, notice_id, exc.problems)
        if not desk.notice_known(self.b.db, notice_id):
            return _problem(404, "unknown_notice", str(UnknownNotice(notice_id)))
        try:
            answer = None if remember is None else lambda conn, v: remember(conn, _correction_created(notice_id, v))
            version = await self.b.correct(notice_id, correction.texts, author=token_id, on_commit=answer)
        except StoreError as exc:
            log.error("admin API: correction of %s by %s not committed: %s", notice_id, token_id, exc)
            return _problem(503, "store_unavailable", "the correction could not be committed; try again")
        return _correction_created(notice_id, version)


#: Records an answer to an `Idempotency-Key` inside the transaction that commits the request's notice.
Remember = Callable[[sqlite3.Connection, Response], None]


def _notice_created(notice_id: str) -> Response:
    return JSONResponse({"notice_id": notice_id}, 201)


def _correction_created(notice_id: str, version: str) -> Response:
    return JSONResponse({"notice_id": notice_id, "version": version}, 201)


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
    key = {"name": IDEMPOTENCY_HEADER, "in": "header", "required": False,
           "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
           "description": "a retry with the same key and body gets the first answer for 24 h (Idempotent-Replayed:"
                          " true); the same key with another body gets 422 idempotency_key_reused"}
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
             "400": {"description": "the body is not JSON, or the Idempotency-Key is malformed", **problem},
             "413": {"description": "the body is too large", **problem},
             "422": {"description": "invalid fields, each named; or an Idempotency-Key reused with another body",
                     **problem},
             "503": {"description": "the database could not commit it", **problem}},
            parameters=[key], requestBody={"required": True, **_json_content(_ref("NoticeRequest"))})},
        "/v1/notices/{notice_id}/corrections": {"post": operation(
            "corrections", "Correct an earlier notice everywhere it went; answers once it is committed",
            {"201": {"description": "committed", **_json_content(_ref("CorrectionCreated"))},
             "400": {"description": "the body is not JSON, or the Idempotency-Key is malformed", **problem},
             "404": {"description": "no such notice was ever issued", **problem},
             "413": {"description": "the body is too large", **problem},
             "422": {"description": "invalid fields, each named; or an Idempotency-Key reused with another body",
                     **problem},
             "503": {"description": "the database could not commit it", **problem}},
            parameters=[{"name": "notice_id", "in": "path", "required": True, "schema": {"type": "string"},
                         "description": "e.g. alert-A-L2 (from the notice stream, /v1/status or POST /v1/notices)"},
                        key],
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
