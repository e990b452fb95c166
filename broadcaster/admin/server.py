"""`AdminServer`: the admin API on its configured address, served by uvicorn in this event loop
(broadcaster/webserver.py, shared with the public site and the demo's pages)."""

from __future__ import annotations

from starlette.types import ASGIApp

from broadcaster.admin.app import AdminApi
from broadcaster.config import AdminConfig
from broadcaster.service import Broadcaster
from broadcaster.webserver import ConfiguredSite


class AdminServer(ConfiguredSite):
    """The admin API on its configured address, in this event loop.

    `bind()` then `serve()` (a task of the caller's TaskGroup) until `shutdown()`; or `async with` for both.
    """

    name = "admin API"
    grace_seconds = 5

    def __init__(self, b: Broadcaster, config: AdminConfig) -> None:
        super().__init__(config.host, config.port, source=b.config.source, key="admin.listen")
        self.config = config
        self.api = AdminApi(b, config)  # reads the tokens: a missing secret is a ConfigError now
        self.b = b

    def app(self) -> ASGIApp:
        return self.api.app()
