"""uvicorn inside the broadcaster's own event loop, for the admin API, the public site and the demo's pages (the
only module that imports uvicorn).

All bind their socket first (so its port is known, and a taken address is an error before anything runs),
then serve an ASGI app on it until told to stop. `ConfiguredSite` is that for an address from the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import uvicorn
from starlette.types import ASGIApp

from broadcaster.errors import ConfigError

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 10.0


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on `host:port` (0: a free port; an address with a colon: IPv6).

    Raises:
        OSError: the address cannot be listened on (taken, or not this machine's).
    """
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without it Nagle
    # holds each answer's body (written after its head) until the client's delayed ACK, ~40 ms per answer.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class InLoopServer(uvicorn.Server):
    """uvicorn without its own signal handling (the broadcaster owns SIGINT/SIGTERM, the demo stops its pages
    itself), with an event set once it is serving."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


class WebServer:
    """`app` on an already listening socket, in this event loop.

    Either `serve()` as a task of the caller's (a TaskGroup's), `wait_started(task)`, and `shutdown()`; or
    `start()` and `stop()`, which own the task. The socket is closed when serving ends.
    """

    def __init__(self, app: ASGIApp, sock: socket.socket, *, grace_seconds: int, name: str = "web server") -> None:
        """`grace_seconds`: how long requests in flight may take to finish after `shutdown()`."""
        self.sock = sock
        self.name = name
        # No logging configuration of uvicorn's own (the process has one), no Server header.
        self._server = InLoopServer(uvicorn.Config(
            app, log_config=None, log_level="warning", access_log=False, lifespan="off", http="h11", ws="none",
            server_header=False, timeout_graceful_shutdown=grace_seconds,
        ))
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    async def serve(self) -> None:
        """Serve until `shutdown()`."""
        try:
            await self._server.serve(sockets=[self.sock])
        finally:
            self.sock.close()

    async def wait_started(self, task: asyncio.Task[None], timeout: float = START_TIMEOUT_SECONDS) -> None:  # noqa: ASYNC109 (a bound on start-up, not an I/O knob)
        """Return once the server accepts requests; raise if `task` (running `serve()`) ended instead."""
        waiter = asyncio.ensure_future(self._server.ready.wait())
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task.done():
            task.result()
            raise RuntimeError(f"the {self.name} stopped during start-up")

    def shutdown(self, *, force: bool = False) -> None:
        """Stop taking requests; those in flight finish within the grace period, or at once with `force`."""
        self._server.should_exit = True
        if force:
            self._server.force_exit = True

    async def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:  # noqa: ASYNC109 (as wait_started)
        """Serve in a task of its own, returning once requests are accepted (stopped again if they are not)."""
        self._task = asyncio.create_task(self.serve(), name=self.name)
        try:
            await self.wait_started(self._task, timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.stop(force=True)
            raise

    async def stop(self, *, force: bool = False) -> None:
        """`shutdown()` and wait until the task `start()` made has ended (raising what ended it)."""
        if self._task is None:
            return
        self.shutdown(force=force)
        task, self._task = self._task, None
        await task


class ConfiguredSite:
    """An ASGI app on an address from the operator's config, in this event loop: `bind()`, then `serve()` (a task
    of the caller's TaskGroup) until `shutdown()`; or `async with` for both. The admin API and the public site
    are ones; they say which app, which config key names the address, and how long a stop waits."""

    #: For the log and for errors: "admin API", "public web site".
    name = "web site"
    #: How long requests in flight may take to finish after `shutdown()`.
    grace_seconds = 5

    def __init__(self, host: str, port: int, *, source: Path | str, key: str) -> None:
        """`host:port` to listen on, written at `key` (`admin.listen`) of the config file `source`."""
        self.host = host
        self._port = port
        self._source = source
        self._key = key
        self._web: WebServer | None = None

    def app(self) -> ASGIApp:
        raise NotImplementedError

    def bind(self) -> None:
        """Listen on the address (port 0: a free port).

        Raises:
            ConfigError: the address cannot be listened on (taken, or not this machine's).
        """
        listen = f"{f'[{self.host}]' if ':' in self.host else self.host}:{self._port}"
        try:
            sock = listening_socket(self.host, self._port)
        except OSError as exc:
            raise ConfigError(self._source, self._key, f"{listen!r}: cannot listen: {exc.strerror or exc}",
                              listen) from None
        self._web = WebServer(self.app(), sock, grace_seconds=self.grace_seconds, name=self.name)

    @property
    def web(self) -> WebServer:
        assert self._web is not None, "bind() first"
        return self._web

    @property
    def port(self) -> int:
        return self.web.port

    @property
    def url(self) -> str:
        return f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{self.port}"

    async def serve(self) -> None:
        """Serve until `shutdown()`; requests in flight get `grace_seconds` to finish."""
        await self.web.serve()

    async def wait_started(self, task: asyncio.Task[None]) -> None:
        """Return once the site accepts requests; raise if `task` (running `serve()`) ended instead."""
        await self.web.wait_started(task)
        log.info("%s listening on %s", self.name, self.url)

    def shutdown(self) -> None:
        if self._web is not None:
            self._web.shutdown()

    async def __aenter__(self) -> Self:
        self.bind()
        await self.web.start()
        log.info("%s listening on %s", self.name, self.url)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(Exception):
            await self.web.stop()
