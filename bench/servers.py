"""The bench's HTTP side, in a process of its own so that it never competes with the broadcaster for the GIL.

`python -m bench.servers ROOT` serves the files under ROOT over HTTP/1.1 on loopback (keep-alive, ETag from
the file's mtime and size, 304 on If-None-Match) and starts the tests' micro-blog server
(`tests/support/microblog_server.py`: Mastodon, Bluesky, Weibo, webhooks with real API semantics). It prints one
JSON line with both base URLs, then runs until its standard input closes.

A scenario changes what a feed says by replacing the file (`install`), which is atomic.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import threading
from pathlib import Path

import orjson

from bench import paths

_MAX_HEADER = 64 * 1024


def install(source: Path, target: Path) -> None:
    """Replace `target` with a copy of `source` atomically: the server never serves half a file."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


class FileServer:
    """A small HTTP/1.1 file server for GET requests: enough for feeds, quick, and with nothing in between."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _answer(self, target: str, if_none_match: str | None) -> bytes:
        path = (self.root / target.split("?", 1)[0].lstrip("/")).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        with path.open("rb") as f:
            info = os.fstat(f.fileno())
            etag = f'"{info.st_mtime_ns:x}-{info.st_size:x}"'
            if if_none_match == etag:
                return f"HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nContent-Length: 0\r\n\r\n".encode()
            body = f.read()
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
            f"ETag: {etag}\r\n\r\n"
        )
        return head.encode() + body

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
                    writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    await writer.drain()
                    return
                writer.write(self._answer(parts[1], headers.get("if-none-match")))
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def start(self) -> tuple[asyncio.Server, int]:
        # IPPROTO_TCP explicitly: with proto 0 asyncio skips TCP_NODELAY on accepted sockets (~40 ms per reply).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        server = await asyncio.start_server(self.handle, sock=sock, limit=_MAX_HEADER)
        return server, sock.getsockname()[1]


async def _main(root: Path) -> None:
    paths.add_test_support()
    from support.microblog_server import MicroblogServer

    microblog = MicroblogServer()
    microblog.start()
    try:
        server, port = await FileServer(root).start()
        async with server:
            info = {"feeds": f"http://127.0.0.1:{port}", "microblog": microblog.url,
                    "mastodon_token": microblog.mastodon_token}
            print(orjson.dumps(info).decode(), flush=True)
            done = asyncio.Event()
            loop = asyncio.get_running_loop()
            # Standard input closing (the parent exiting, however it exits) stops the servers.
            def wait_for_eof() -> None:
                sys.stdin.read()
                loop.call_soon_threadsafe(done.set)

            threading.Thread(target=wait_for_eof, daemon=True).start()
            await done.wait()
    finally:
        microblog.stop(force=True)


if __name__ == "__main__":
    asyncio.run(_main(Path(sys.argv[1])))
