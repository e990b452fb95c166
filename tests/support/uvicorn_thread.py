"""What the loopback test servers share: a listening socket bound before uvicorn starts, and a quiet config."""

from __future__ import annotations

import socket

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
