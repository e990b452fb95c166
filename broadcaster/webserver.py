"""uvicorn inside the broadcaster's own event loop, for the admin API and the demo's pages."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn


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
