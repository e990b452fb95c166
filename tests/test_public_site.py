"""The commuters' web site (`[public]`): served by `broadcaster run` beside everything else, stopped with it, and
a bad or taken address refused before anything is polled or posted."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import httpx
import pytest
from rig import Rig, toml_value
from support import free_port

from broadcaster.config import Config, load_config
from broadcaster.errors import ConfigError
from broadcaster.runner import open_broadcaster, serve
from broadcaster.webserver import listening_socket


def public_config(rig: Rig, **public: Any) -> Config:
    """The rig's config with a [public] section (a free port unless `listen` says otherwise)."""
    section: dict[str, Any] = {"listen": "127.0.0.1:0", **public}
    path = rig.write_config()
    path.write_text(path.read_text(encoding="utf-8") + "\n[public]\n" + "".join(
        f"{k} = {toml_value(v)}\n" for k, v in section.items()), encoding="utf-8")
    return load_config(path)


async def test_serve_runs_the_public_site_and_stops_it_on_stop(rig: Rig) -> None:
    port = free_port()
    config = public_config(rig, listen=f"127.0.0.1:{port}")
    stop = asyncio.Event()
    async with open_broadcaster(config) as b:
        task = asyncio.create_task(serve(b, stop, grace=2))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=5) as http:
            async with asyncio.timeout(10):
                while True:
                    with contextlib.suppress(httpx.ConnectError):
                        answer = await http.get("/no-such-page")
                        break
                    await asyncio.sleep(0.05)
            assert answer.status_code == 404
            stop.set()
            async with asyncio.timeout(15):
                await task
            with pytest.raises(httpx.ConnectError):
                await http.get("/no-such-page")


async def test_a_taken_address_is_a_config_error_naming_the_key_before_anything_runs(rig: Rig) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        config = public_config(rig, listen=f"127.0.0.1:{taken.getsockname()[1]}")
        async with open_broadcaster(config) as b:
            with pytest.raises(ConfigError) as caught:
                await asyncio.wait_for(serve(b, asyncio.Event(), grace=1), 10)
            assert caught.value.key == "public.listen"
            assert b.poller.records == {} or all(r.last_ok_at is None for r in b.poller.records.values())


@pytest.mark.parametrize(
    ("public", "fragment"),
    [
        ({"listen": "8080"}, "must be host:port"),
        ({"listen": "127.0.0.1:70000"}, "must be host:port"),
        ({"base_url": "metro.example/updates"}, "base_url"),
        ({"base_url": "https://metro.example/u?x=1"}, "base_url"),
        ({"no_such_key": "x"}, "no_such_key"),
    ],
)
def test_bad_public_sections_name_the_key(rig: Rig, public: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        public_config(rig, **public)
    assert fragment in str(caught.value)
    assert "public" in str(caught.value)


async def test_every_connection_a_site_accepts_sends_without_waiting_for_nagle() -> None:
    """uvicorn writes an answer's head and body separately. On a socket without TCP_NODELAY, Nagle holds the body
    until the reader's delayed ACK (40 ms on Linux): every answer on a kept-alive connection (a reader polling its
    feeds, the page loading its files, the admin API) took ~45 ms instead of about one. asyncio sets TCP_NODELAY
    on an accepted connection only when the listening socket says it is TCP, which `listening_socket` must.
    (Checked on the socket, not by timing answers: the speed itself belongs to bench/.)"""
    listener = listening_socket("127.0.0.1", 0)
    accepted: asyncio.Queue[asyncio.Transport] = asyncio.Queue()

    class Keep(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            accepted.put_nowait(transport)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Keep, sock=listener)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        transport = await asyncio.wait_for(accepted.get(), 5)
        sock = transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        transport.close()
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
