"""A real HTTP server on loopback: uvicorn in a thread serving programmable routes from a Starlette app."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Self

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .uvicorn_thread import ThreadedUvicorn

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from starlette.types import Receive, Scope, Send


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it. Header names are lower case; repeated headers are joined by ", "."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class RouteSpec:
    """What the server answers on one path."""

    body: bytes
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/octet-stream"
    etag: str | None = None
    last_modified: str | None = None
    drip_bytes_per_s: float | None = None
    delay_s: float = 0.0
    chunked: bool = False


class LoopbackHttpServer:
    """Serves `set_route` responses on 127.0.0.1 and records every request in `requests`.

    Unknown paths answer 404. `push_response` queues one-shot answers that are used, in order, before
    the standing route (e.g. a 429 then a 200). Conditional requests are honoured: a matching
    ``If-None-Match`` or a not-older ``If-Modified-Since`` gets 304. ``drip_bytes_per_s`` sends the body
    slowly in small pieces; ``chunked`` sends it without Content-Length.
    """

    host = "127.0.0.1"

    def __init__(self, *, startup_timeout_s: float = 10.0) -> None:
        self.startup_timeout_s = startup_timeout_s
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._routes: dict[str, RouteSpec] = {}
        self._one_shot: dict[str, deque[RouteSpec]] = {}
        self._requests: list[RecordedRequest] = []
        self._uvicorn: ThreadedUvicorn | None = None

    # -- programming the server ---------------------------------------------------------------------------

    def set_route(
        self,
        path: str,
        body: bytes,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
        etag: str | None = None,
        last_modified: str | None = None,
        drip_bytes_per_s: float | None = None,
        delay_s: float = 0,
        *,
        chunked: bool = False,
    ) -> None:
        """Answer every request for `path` (query string ignored) with this response until changed."""
        spec = RouteSpec(
            body,
            status,
            dict(headers or {}),
            content_type,
            etag,
            last_modified,
            drip_bytes_per_s,
            delay_s,
            chunked,
        )
        with self._lock:
            self._routes[path] = spec

    def push_response(
        self,
        path: str,
        body: bytes = b"",
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
        delay_s: float = 0,
    ) -> None:
        """Queue a one-shot answer for `path`, used before the standing route (FIFO)."""
        spec = RouteSpec(body, status, dict(headers or {}), content_type, delay_s=delay_s)
        with self._lock:
            self._one_shot.setdefault(path, deque()).append(spec)

    def remove_route(self, path: str) -> None:
        with self._lock:
            self._routes.pop(path, None)
            self._one_shot.pop(path, None)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, path: str) -> list[RecordedRequest]:
        return [request for request in self.requests if request.path == path]

    def wait_for_requests(self, path: str, count: int, timeout_s: float = 10.0) -> None:
        """Block (from another thread than the server's) until `count` requests for `path` have arrived."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len([r for r in self._requests if r.path == path]) >= count,
                                          timeout=timeout_s):
                raise TimeoutError(f"fewer than {count} requests for {path} within {timeout_s} s")

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    @property
    def port(self) -> int:
        return self._uvicorn.port if self._uvicorn is not None else 0

    def url(self, path: str = "/") -> str:
        if not path.startswith("/"):
            path = "/" + path
        return f"http://{self.host}:{self.port}{path}"

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind a free port, start uvicorn in a daemon thread and return once it serves."""
        if self._uvicorn is not None:
            raise RuntimeError("server already started")
        self._uvicorn = ThreadedUvicorn(self._app, host=self.host, name="http-server")
        try:
            self._uvicorn.start(self.startup_timeout_s)
        except RuntimeError:
            self._uvicorn = None
            raise

    def stop(self, *, force: bool = False, timeout_s: float = 5.0) -> None:
        """Stop uvicorn and join its thread.

        By default requests in flight get uvicorn's graceful shutdown (one second), then are cancelled;
        ``force=True`` cancels them at once (what the fixture does at teardown).
        """
        server = self._uvicorn
        if server is not None:
            server.stop(force=force, timeout_s=timeout_s)  # handlers still see it while they let go of requests
            self._uvicorn = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(force=True)

    # -- the ASGI application --------------------------------------------------------------------------------

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off and ws is "none", but be explicit
            return
        request = Request(scope, receive)
        body = await request.body()
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        path = request.url.path
        with self._lock:
            self._requests.append(RecordedRequest(request.method, path, request.url.query, headers, body))
            self._arrived.notify_all()
            queued = self._one_shot.get(path)
            spec = queued.popleft() if queued else self._routes.get(path)
        if spec is None:
            response: Response = Response(b"not found\n", status_code=404, media_type="text/plain")
        else:
            if spec.delay_s > 0:
                await asyncio.sleep(spec.delay_s)
            response = _respond(spec, headers)
        await response(scope, receive, send)


def _respond(spec: RouteSpec, request_headers: Mapping[str, str]) -> Response:
    validators = {}
    if spec.etag is not None:
        validators["etag"] = spec.etag
    if spec.last_modified is not None:
        validators["last-modified"] = spec.last_modified
    if _not_modified(spec, request_headers):
        return Response(status_code=304, headers={**spec.headers, **validators})
    headers = {**spec.headers, **validators}
    if spec.drip_bytes_per_s is None and not spec.chunked:
        return Response(spec.body, status_code=spec.status, headers=headers, media_type=spec.content_type)
    if not spec.chunked:
        headers["content-length"] = str(len(spec.body))
    return StreamingResponse(
        _pieces(spec.body, spec.drip_bytes_per_s),
        status_code=spec.status,
        headers=headers,
        media_type=spec.content_type,
    )


async def _pieces(body: bytes, bytes_per_s: float | None) -> AsyncIterator[bytes]:
    if bytes_per_s is None:
        step = 16 * 1024
        for start in range(0, len(body), step):
            yield body[start : start + step]
        return
    # Twenty pieces a second: slow overall, yet each piece arrives long before any per-read timeout.
    interval = 0.05
    step = max(1, int(bytes_per_s * interval))
    for start in range(0, len(body), step):
        if start:
            await asyncio.sleep(step / bytes_per_s)
        yield body[start : start + step]


def _not_modified(spec: RouteSpec, request_headers: Mapping[str, str]) -> bool:
    if spec.status != 200:
        return False
    if_none_match = request_headers.get("if-none-match")
    if if_none_match is not None:
        # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2); weak comparison.
        if spec.etag is None:
            return False
        wanted = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in wanted or spec.etag.removeprefix("W/") in wanted
    if_modified_since = request_headers.get("if-modified-since")
    if if_modified_since is not None and spec.last_modified is not None:
        try:
            return parsedate_to_datetime(spec.last_modified) <= parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
    return False
