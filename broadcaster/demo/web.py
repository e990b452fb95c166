"""The demo's web site (Starlette): the city's feeds, the station display board, the operator dashboard, the
Atom timeline, and a small JSON API behind the pages. Every page and script is served from the package: no CDN.
"""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
#: The MQTT-over-WebSocket client is the commuter page's (broadcaster/public/static/); the board shares it.
MQTT_CLIENT = Path(__file__).resolve().parent.parent / "public" / "static" / "mqtt.js"
NO_STORE = {"Cache-Control": "no-store"}


class DemoSite(Protocol):
    """What the web site needs from the running demo."""

    @property
    def timeline_path(self) -> Path: ...

    def gtfs_realtime(self) -> bytes: ...

    def passenger_flow(self) -> bytes: ...

    def site_config(self) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...

    def control_scenario(self, *, at: time | None, speed: float | None, paused: bool | None) -> None: ...

    async def control_broadcaster(self, *, running: bool) -> None: ...


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def build_app(site: DemoSite) -> Starlette:
    async def gtfs_rt(_: Request) -> Response:
        return Response(site.gtfs_realtime(), media_type="application/x-protobuf", headers=NO_STORE)

    async def passenger_flow(_: Request) -> Response:
        return Response(site.passenger_flow(), media_type="application/json", headers=NO_STORE)

    async def dashboard(_: Request) -> Response:
        return FileResponse(STATIC / "dashboard.html", headers=NO_STORE)

    async def display(_: Request) -> Response:
        return FileResponse(STATIC / "display.html", headers=NO_STORE)

    async def mqtt_client(_: Request) -> Response:
        return FileResponse(MQTT_CLIENT, media_type="text/javascript", headers=NO_STORE)

    async def timeline(_: Request) -> Response:
        path = site.timeline_path
        if not path.is_file():
            return Response("no posts yet\n", status_code=404, media_type="text/plain")
        return FileResponse(path, media_type="application/atom+xml", headers=NO_STORE)

    async def config(_: Request) -> Response:
        return JSONResponse(site.site_config(), headers=NO_STORE)

    async def status(_: Request) -> Response:
        return JSONResponse(site.status(), headers=NO_STORE)

    async def scenario(request: Request) -> Response:
        body = await request.json()
        if not isinstance(body, dict):
            return _bad_request("expected a JSON object")
        try:
            at = time.fromisoformat(body["at"]) if body.get("at") else None
            speed = float(body["speed"]) if body.get("speed") is not None else None
        except (TypeError, ValueError) as exc:
            return _bad_request(str(exc))
        paused = body.get("paused")
        if paused is not None and not isinstance(paused, bool):
            return _bad_request("paused: expected true or false")
        if speed is not None and not 0 < speed <= 3600:
            return _bad_request("speed: expected a number above 0 and at most 3600")
        site.control_scenario(at=at, speed=speed, paused=paused)
        return JSONResponse(site.status()["scenario"])

    async def broadcaster(request: Request) -> Response:
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("running"), bool):
            return _bad_request('expected {"running": true} or {"running": false}')
        await site.control_broadcaster(running=body["running"])
        return JSONResponse(site.status()["broadcaster"])

    return Starlette(routes=[
        Route("/", dashboard),
        Route("/display", display),
        Route("/display/{station_id}", display),
        Route("/timeline.atom", timeline),
        Route("/feeds/gtfs-rt.pb", gtfs_rt),
        Route("/feeds/passenger-flow.json", passenger_flow),
        Route("/api/config", config),
        Route("/api/status", status),
        Route("/api/scenario", scenario, methods=["POST"]),
        Route("/api/broadcaster", broadcaster, methods=["POST"]),
        Route("/static/mqtt.js", mqtt_client),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])
