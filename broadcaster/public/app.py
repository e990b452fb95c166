"""The commuters' web site as one Starlette app: the feeds' routes and the page's routes, nothing else."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from broadcaster.config import PublicConfig
from broadcaster.public.atom_feeds import feed_routes
from broadcaster.public.page import page_routes
from broadcaster.service import Broadcaster


def public_app(b: Broadcaster, config: PublicConfig) -> Starlette:
    """The site for broadcaster `b`: every route reads `b`'s state as it is at the request, changes nothing."""
    routes: list[BaseRoute] = []
    routes += feed_routes(b, config)
    routes += page_routes(b, config)
    return Starlette(routes=routes)
