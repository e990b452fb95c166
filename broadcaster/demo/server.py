"""Serves the demo's web site with uvicorn in the demo's own event loop (the only module that imports uvicorn)."""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from starlette.types import ASGIApp

from broadcaster.webserver import InLoopServer


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host:port` (0: a free port), bound before the server starts so its port is known."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class WebServer:
    """`app` on an already bound socket, served until `stop`."""

    def __init__(self, app: ASGIApp, sock: socket.socket) -> None:
        self.sock = sock
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, loop="asyncio", http="h11", ws="none", lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = InLoopServer(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    async def start(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (a bound on start-up, not an I/O knob)
        self._task = asyncio.create_task(self._server.serve(sockets=[self.sock]), name="web server")
        waiter = asyncio.ensure_future(self._server.ready.wait())
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self._task.done():
            self._task.result()
            raise RuntimeError("the web server stopped during start-up")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        self._server.force_exit = True  # open keep-alive connections of a browser must not hold the exit
        task, self._task = self._task, None
        await task
        self.sock.close()
