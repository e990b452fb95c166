"""What the loopback test servers share: a socket bound before uvicorn starts, a quiet config, and uvicorn in a
thread of its own that starts and stops promptly."""

from __future__ import annotations

import asyncio
import socket
import threading

import uvicorn
from starlette.types import ASGIApp


def bind_loopback(host: str = "127.0.0.1") -> socket.socket:
    """A socket listening-ready on a free port, bound by us so the port is known before uvicorn starts and nobody
    can take it. IPPROTO_TCP explicitly: with proto 0 asyncio skips TCP_NODELAY on accepted sockets, and every
    response (headers and body are separate writes) then waits ~40 ms for a delayed ACK."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


def quiet_config(app: ASGIApp) -> uvicorn.Config:
    """uvicorn pinned to asyncio and h11 (no websockets/uvloop/httptools imports, nor their deprecation
    warnings), without access logs or lifespan, quick to shut down."""
    return uvicorn.Config(
        app, log_level="warning", access_log=False, loop="asyncio", http="h11", ws="none", lifespan="off",
        interface="asgi3", timeout_graceful_shutdown=1,
    )


class ThreadedUvicorn(uvicorn.Server):
    """uvicorn serving `app` on a loopback socket of its own, in a daemon thread, for a test server to wrap.

    `start` returns once it serves (an Event set by its startup, no polling); `stop` is thread-safe and leaves at
    once when asked to rather than polling a flag every 0.1 s. `stopping` is set when shutdown begins, so handlers
    holding a request (a hang, a drip) can let go of it.
    """

    def __init__(self, app: ASGIApp, *, host: str, name: str) -> None:
        super().__init__(quiet_config(app))
        self.socket = bind_loopback(host)
        self.port: int = self.socket.getsockname()[1]
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None
        self._exit_requested: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-{self.port}", daemon=True)

    def _run(self) -> None:
        try:
            self.run(sockets=[self.socket])
        finally:
            self._ready.set()  # a thread that dies during startup must not leave start() waiting for the deadline

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # Created before `started` turns true, so `request_exit` always finds them once start() returns.
        self.loop = asyncio.get_running_loop()
        self._exit_requested = asyncio.Event()
        self.stopping = asyncio.Event()
        try:
            await super().startup(sockets)
        finally:
            self._ready.set()

    async def main_loop(self) -> None:
        assert self._exit_requested is not None
        await self.on_tick(0)  # sets the Date/Server default headers
        await self._exit_requested.wait()

    def start(self, timeout_s: float) -> None:
        """Serve, or raise (stopped again) if uvicorn is not up within `timeout_s`."""
        self._thread.start()
        if not self._ready.wait(timeout_s):
            self.stop(force=True)
            raise RuntimeError(f"uvicorn did not start within {timeout_s}s")
        if not self.started:
            self.stop(force=True)
            raise RuntimeError("uvicorn exited during startup")

    def request_exit(self, *, force: bool) -> None:
        """Thread-safe: begin shutdown; with `force`, do not wait for requests in flight."""
        self.should_exit = True
        self.force_exit = force
        loop, exit_requested, stopping = self.loop, self._exit_requested, self.stopping
        if loop is not None and exit_requested is not None and stopping is not None:
            loop.call_soon_threadsafe(exit_requested.set)
            loop.call_soon_threadsafe(stopping.set)

    def stop(self, *, force: bool, timeout_s: float = 5.0) -> None:
        """Shut down and join the thread, within `timeout_s` twice over (the second time forcing it)."""
        self.request_exit(force=force)
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.force_exit = True
            self._thread.join(timeout_s)
        self.socket.close()
        if self._thread.is_alive():
            raise RuntimeError(f"uvicorn thread did not stop within {2 * timeout_s}s")
