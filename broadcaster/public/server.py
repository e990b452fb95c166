"""`PublicServer`: the commuters' web site on its configured address, served by uvicorn in this event loop
(broadcaster/webserver.py, shared with the admin API and the demo's pages)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Self

from broadcaster.config import PublicConfig
from broadcaster.errors import ConfigError
from broadcaster.public.app import public_app
from broadcaster.service import Broadcaster
from broadcaster.webserver import WebServer, listening_socket

log = logging.getLogger(__name__)

#: Readers' requests are short reads; a few seconds lets the ones in flight finish at a stop.
SHUTDOWN_GRACE_SECONDS = 3


class PublicServer:
    """The site on `config.listen`: `bind()`, then `serve()` (a task of the caller's TaskGroup) until
    `shutdown()`; or `async with` for both."""

    def __init__(self, b: Broadcaster, config: PublicConfig) -> None:
        self.config = config
        self.b = b
        self._web: WebServer | None = None

    def bind(self) -> None:
        """Listen on `config.listen` (port 0: a free port).

        Raises:
            ConfigError: the address cannot be listened on (taken, or not this machine's).
        """
        try:
            sock = listening_socket(self.config.host, self.config.port)
        except OSError as exc:
            raise ConfigError(self.b.config.source, "public.listen", f"{self.config.listen!r}: cannot listen: "
                                                           f"{exc.strerror or exc}", self.config.listen) from None
        self._web = WebServer(public_app(self.b, self.config), sock, grace_seconds=SHUTDOWN_GRACE_SECONDS,
                              name="public web site")

    @property
    def web(self) -> WebServer:
        assert self._web is not None, "bind() first"
        return self._web

    @property
    def url(self) -> str:
        host = self.config.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.web.port}"

    async def serve(self) -> None:
        await self.web.serve()

    async def wait_started(self, task: asyncio.Task[None]) -> None:
        """Return once the site accepts requests; raise if `task` (running `serve()`) ended instead."""
        await self.web.wait_started(task)
        log.info("public web site listening on %s", self.url)

    def shutdown(self) -> None:
        if self._web is not None:
            self._web.shutdown()

    async def __aenter__(self) -> Self:
        self.bind()
        await self.web.start()
        log.info("public web site listening on %s", self.url)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(Exception):
            await self.web.stop()
