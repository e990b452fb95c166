"""`PublicServer`: the commuters' web site on its configured address, served by uvicorn in this event loop
(broadcaster/webserver.py, shared with the admin API and the demo's pages)."""

from __future__ import annotations

from starlette.types import ASGIApp

from broadcaster.config import PublicConfig
from broadcaster.public.app import public_app
from broadcaster.service import Broadcaster
from broadcaster.webserver import ConfiguredSite


class PublicServer(ConfiguredSite):
    """The site on `config.listen`: `bind()`, then `serve()` (a task of the caller's TaskGroup) until
    `shutdown()`; or `async with` for both."""

    name = "public web site"
    #: Readers' requests are short reads; a few seconds lets the ones in flight finish at a stop.
    grace_seconds = 3

    def __init__(self, b: Broadcaster, config: PublicConfig) -> None:
        super().__init__(config.host, config.port, source=b.config.source, key="public.listen")
        self.config = config
        self.b = b

    def app(self) -> ASGIApp:
        return public_app(self.b, self.config)
