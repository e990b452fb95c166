"""The Starlette app: the routes, each behind the token check unless public, and the reading endpoints (health,
status, Prometheus metrics, the OpenAPI description).

Every handler is a coroutine, so it runs on the loop's thread and may use the broadcaster's state directly.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broadcaster import __version__
from broadcaster.admin.answers import problem
from broadcaster.admin.auth import Gate
from broadcaster.admin.openapi import openapi_document
from broadcaster.admin.requests import OperatorRequests
from broadcaster.channels.atom import AtomChannel
from broadcaster.config import AdminConfig
from broadcaster.errors import StoreError
from broadcaster.ha.role import Role
from broadcaster.metrics import CONTENT_TYPE, FeedHealth, Health
from broadcaster.service import Broadcaster
from broadcaster.store import iso

Endpoint = Callable[[Request], Awaitable[Response]]
#: An endpoint's work once the request is admitted; it receives the token's id (None on a public endpoint).
Handler = Callable[[Request, str | None], Awaitable[Response]]


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
        # The reason names the database's path: only for authenticated callers.
        "database": {"ok": health.database_ok, "sync_running_seconds": round(health.database_sync_seconds, 3)}
        | ({"error": health.database_doubt or health.database_error} if detail else {}),
    }


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
        """Raises ConfigError: a token cannot be read (`TokenRing`)."""
        self.b = b
        self.config = config
        self.gate = Gate(config, b.config.source, clock)
        self.public = frozenset(config.public)
        self.requests = OperatorRequests(b)
        with contextlib.suppress(ValueError):  # an earlier AdminApi over this broadcaster registered it already
            b.metrics.registry.register(SetAsideCollector(atom_channels(b)))

    def app(self) -> Starlette:
        routes = [
            Route("/v1/health", self._guard("/v1/health", self.health), methods=["GET"]),
            Route("/metrics", self._guard("/metrics", self.metrics), methods=["GET"]),
            Route("/openapi.json", self._guard("/openapi.json", self.openapi), methods=["GET"]),
            Route("/v1/status", self._guard("/v1/status", self.status), methods=["GET"]),
            Route("/v1/notices", self._guard("/v1/notices", self.requests.announce), methods=["POST"]),
            Route("/v1/notices/{notice_id:path}/corrections", self._guard("corrections", self.requests.correct),
                  methods=["POST"]),
        ]
        return Starlette(routes=routes, exception_handlers={404: self._not_found, 405: self._not_allowed})

    @staticmethod
    async def _not_found(request: Request, exc: Exception) -> Response:
        return problem(404, "not_found", f"no such endpoint: {request.url.path}")

    @staticmethod
    async def _not_allowed(request: Request, exc: Exception) -> Response:
        return problem(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}")

    def _guard(self, name: str, handler: Handler) -> Endpoint:
        """`handler` behind the gate, unless `name` is public; it receives the token id."""
        public = name in self.public

        async def endpoint(request: Request) -> Response:
            if public:
                return await handler(request, None)
            admitted = self.gate.admit(request)
            if isinstance(admitted, Response):
                return admitted
            return await handler(request, admitted)

        return endpoint

    # -- reading -----------------------------------------------------------------------------------------

    async def health(self, request: Request, token_id: str | None) -> Response:
        health = self.b.health()
        body = self._with_role(_health_body(health, detail=False))
        if self.b.leadership.role is Role.STANDBY:
            # A standby is healthy when it could take over: the database answered (read_health read the outbox
            # from it) and its broker presence session is up. Its feeds and `mqtt` are the leader's business, so a
            # load balancer can send operators to any ready instance (their requests are queued for the leader).
            body["healthy"] = health.database_error is None and self.b.ready_to_lead()
        return JSONResponse(body, 200 if body["healthy"] else 503)

    def _with_role(self, body: dict[str, Any]) -> dict[str, Any]:
        """`role` (leader or standby, broadcaster/ha) and `instance`: which instance a load balancer reached."""
        body["role"] = self.b.leadership.role.value
        body["instance"] = self.b.leadership.instance
        return body

    async def metrics(self, request: Request, token_id: str | None) -> Response:
        return Response(self.b.metrics.render(), 200, media_type=CONTENT_TYPE)

    async def openapi(self, request: Request, token_id: str | None) -> Response:
        return JSONResponse(openapi_document(self.public))

    async def status(self, request: Request, token_id: str | None) -> Response:
        health = self.b.health()
        body = self._with_role(_health_body(health, detail=True))
        mqtt = self.b.config.mqtt
        # `url`: the first configured broker, as in v1.0; `broker`: the one the link is with now (mqtt.urls).
        body["mqtt"].update(url=mqtt.brokers[0], sessions=self.b.link.sessions, last_error=self.b.link.last_error,
                            broker=health.mqtt_broker, brokers=list(health.mqtt_brokers), protocol=mqtt.protocol)
        by_channel: dict[str, dict[str, int]] = {}
        parked: list[dict[str, Any]] = []
        if health.database_error is None:  # else `database.error` says why the outbox is not shown
            try:
                for (channel, status), count in self.b.history.depth().items():
                    by_channel.setdefault(channel, {})[status] = count
                parked = [
                    {"key": r.key, "channel": r.channel, "notice_id": r.notice_id, "version": r.version,
                     "part": r.part, "attempts": r.attempts, "created_at": iso(r.created_at), "error": r.error}
                    for r in self.b.history.parked(limit=50)
                ]
            except (StoreError, sqlite3.Error) as exc:
                body["healthy"] = False
                body["database"].update(ok=False, error=health.database_doubt or f"the outbox could not be read: {exc}")
        body["outbox_by_status"] = by_channel
        body["parked"] = parked
        body["atom_set_aside"] = {a.name: [str(p) for p in a.set_aside] for a in atom_channels(self.b)}
        body["version"] = __version__
        body["schema_version"] = self.b.db.schema_version
        return JSONResponse(body, 200)
