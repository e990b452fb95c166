"""The commuter page (docs/commuters.md): `/` and what it reads besides the broker.

The page itself is static (broadcaster/public/static/): the rider's picks live in their browser, and the live
state comes from the broker over MQTT over WebSocket, never through this server. Two small JSON documents tell it
the rest, built once from the loaded configuration: `page/network.json` (lines and stations with their names in
every language, which line serves which station) and `page/config.json` (topic prefix, the broker's WebSocket URL
and its public read-only account, titles). Nothing secret is in either: the broadcaster's own MQTT account never is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from broadcaster.config import PublicConfig
from broadcaster.model import Network
from broadcaster.service import Broadcaster

STATIC = Path(__file__).resolve().parent / "static"
#: The network and the settings change only with a restart; a few minutes of caching spares the server at a peak.
JSON_CACHING = {"Cache-Control": "public, max-age=300"}
#: The page's files change with an upgrade: revalidate them on every load.
PAGE_CACHING = {"Cache-Control": "no-cache"}
#: The page runs only its own files and talks only to this site and a WebSocket broker (ws: and wss:, since the
#: broker is another origin and, in the demo opened on a phone, another host than configured); nobody frames it.
PAGE_HEADERS = {
    **PAGE_CACHING,
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self' ws: wss:; worker-src 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
DEFAULT_TITLE = "Metro service updates"


def network_document(network: Network, languages: tuple[str, ...], default_language: str) -> dict[str, Any]:
    """Lines (in the network's order, each with its stations in order) and stations (each with its lines)."""
    lines = [{"id": line.id, "short_name": line.short_name, "names": line.names.as_dict(), "color": line.color,
              "stations": list(network.stations_of(line.id))} for line in network.lines.values()]
    stations = [{"id": station.id, "names": station.names.as_dict(), "lines": list(network.lines_at(station.id))}
                for station in network.stations.values()]
    return {"languages": list(languages), "default_language": default_language, "lines": lines,
            "stations": stations}


def page_config_document(b: Broadcaster, config: PublicConfig) -> dict[str, Any]:
    """What the page needs to reach the broker. Only public values: the broadcaster's own account is not here."""
    languages = b.config.network.languages
    return {
        "topic_prefix": b.config.mqtt.topic_prefix,
        "mqtt_websocket_url": config.mqtt_websocket_url,
        "mqtt_username": config.mqtt_username,
        "mqtt_password": config.mqtt_password,
        "title": {language: config.page_title.get(language, DEFAULT_TITLE) for language in languages},
    }


def page_routes(b: Broadcaster, config: PublicConfig) -> list[BaseRoute]:
    """`/` (the page), `sw.js` (for notifications on phones), `page/*.json` and `page/static/*`."""
    network_json = orjson.dumps(network_document(b.network, b.config.network.languages,
                                                 b.config.network.default_language))
    config_json = orjson.dumps(page_config_document(b, config))

    async def page(_: Request) -> Response:
        return FileResponse(STATIC / "commuter.html", headers=PAGE_HEADERS)

    async def service_worker(_: Request) -> Response:
        return FileResponse(STATIC / "sw.js", media_type="text/javascript", headers=PAGE_CACHING)

    async def network(_: Request) -> Response:
        return Response(network_json, media_type="application/json", headers=JSON_CACHING)

    async def page_config(_: Request) -> Response:
        return Response(config_json, media_type="application/json", headers=JSON_CACHING)

    return [
        Route("/", page),
        Route("/sw.js", service_worker),
        Route("/page/network.json", network),
        Route("/page/config.json", page_config),
        Mount("/page/static", StaticFiles(directory=STATIC), name="page-static"),
    ]
