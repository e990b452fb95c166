"""The demo as one object: brings up the broker, the web site and the broadcaster, in that order, and
takes them down in reverse. `run_demo` is what `broadcaster demo` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import tempfile
import time as _time
from dataclasses import dataclass
from datetime import UTC, datetime, time
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO

from broadcaster.config import Config
from broadcaster.contract import Topics
from broadcaster.demo import feeds
from broadcaster.demo.broker import EmbeddedBroker, free_port
from broadcaster.demo.clock import ScenarioClock
from broadcaster.demo.pipeline import PipelineRunner
from broadcaster.demo.recorder import PostLog
from broadcaster.demo.scenario import Scenario
from broadcaster.demo.script import MORNING, Script
from broadcaster.demo.settings import NETWORK_DIR, TOPIC_PREFIX, DemoEndpoints, timeline_path, write_config
from broadcaster.demo.status import dashboard_status
from broadcaster.demo.web import build_app
from broadcaster.feeds.network import load_network
from broadcaster.model import Network
from broadcaster.webserver import WebServer, listening_socket

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080
EXAMPLE_STATION = "peoples-square"


@dataclass(frozen=True, slots=True)
class DemoOptions:
    host: str = "127.0.0.1"
    #: The web site's port; the broker listens on port + 1 (MQTT) and port + 2 (MQTT over WebSocket).
    #: 0 picks free ports for all three.
    port: int = DEFAULT_PORT
    speed: float = 30.0
    start: time | None = None  # None: the script's own start
    poll_seconds: float = 1.0
    state_dir: Path | None = None  # None: a temporary folder, removed on exit
    script: Script = MORNING


@dataclass(frozen=True, slots=True)
class DemoUrls:
    dashboard: str
    display: str
    timeline: str
    commuter: str
    mqtt: str
    mqtt_websocket: str


def _line(network: Network, line_id: str) -> dict[str, Any]:
    line = network.lines[line_id]
    return {"id": line.id, "short_name": line.short_name, "names": line.names.as_dict(), "color": line.color}


class Demo:
    """Everything `broadcaster demo` runs, as an async context manager."""

    def __init__(self, options: DemoOptions | None = None) -> None:
        self.options = options or DemoOptions()
        self.network = load_network(NETWORK_DIR, "zh")
        self.scenario = Scenario(self.network, self.options.script)
        script = self.options.script
        self.clock = ScenarioClock(self.options.start or script.start, speed=self.options.speed, loop=script.loop)
        self.posts = PostLog()
        self._stack = contextlib.AsyncExitStack()
        self._state_dir: Path | None = None
        self._config: Config | None = None
        self._runner: PipelineRunner | None = None
        self._web: WebServer | None = None
        self._broker: EmbeddedBroker | None = None
        self._public_port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        o = self.options
        sock = listening_socket(o.host, o.port)
        self._stack.callback(sock.close)
        web_port: int = sock.getsockname()[1]
        broker = EmbeddedBroker(o.host, tcp_port=o.port + 1 if o.port else 0, ws_port=o.port + 2 if o.port else 0)
        await broker.start()
        self._stack.push_async_callback(broker.stop)
        self._broker = broker
        loopback = "127.0.0.1" if o.host in ("0.0.0.0", "") else o.host  # noqa: S104 (comparing, not binding)
        broker_host = f"[{loopback}]" if ":" in loopback else loopback

        if o.state_dir is None:
            state_dir = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="broadcaster-demo-")))
        else:
            state_dir = o.state_dir
        self._state_dir = state_dir
        # The commuter page is the broadcaster's own [public] site, served by `serve` as in production.
        self._public_port = o.port + 3 if o.port else free_port(o.host or "0.0.0.0")  # noqa: S104
        self._config = write_config(DemoEndpoints(
            feeds_base_url=f"http://{loopback}:{web_port}/feeds", mqtt_url=f"mqtt://{broker_host}:{broker.tcp_port}",
            state_dir=state_dir, poll_seconds=o.poll_seconds,
            public_listen=f"{o.host or '0.0.0.0'}:{self._public_port}",  # noqa: S104
            mqtt_websocket_url=f"ws://{loopback}:{broker.ws_port}/",
        ))

        # A browser's open keep-alive connections must not hold the exit: the stop is forced.
        web = WebServer(build_app(self), sock, grace_seconds=1)
        await web.start()
        self._stack.push_async_callback(web.stop, force=True)
        self._web = web

        runner = PipelineRunner(self._config, self.posts)
        self._runner = runner
        self._stack.push_async_callback(runner.stop)
        await runner.start()

    @property
    def config(self) -> Config:
        assert self._config is not None, "the demo is not running"
        return self._config

    @property
    def runner(self) -> PipelineRunner:
        assert self._runner is not None, "the demo is not running"
        return self._runner

    @property
    def broker(self) -> EmbeddedBroker:
        assert self._broker is not None, "the demo is not running"
        return self._broker

    @property
    def web_port(self) -> int:
        assert self._web is not None, "the demo is not running"
        return self._web.port

    @property
    def urls(self) -> DemoUrls:
        host = "127.0.0.1" if self.options.host in ("0.0.0.0", "") else self.options.host  # noqa: S104
        base = f"http://{host}:{self.web_port}"
        return DemoUrls(
            dashboard=f"{base}/",
            display=f"{base}/display/{EXAMPLE_STATION}",
            timeline=f"{base}/timeline.atom",
            commuter=f"http://{host}:{self._public_port}/",
            mqtt=f"mqtt://{host}:{self.broker.tcp_port}",
            mqtt_websocket=f"ws://{host}:{self.broker.ws_port}/",
        )

    # -- what the web site asks (web.DemoSite) ---------------------------------------------------------------

    @property
    def timeline_path(self) -> Path:
        assert self._state_dir is not None
        return timeline_path(self._state_dir)

    def gtfs_realtime(self) -> bytes:
        return feeds.gtfs_realtime(self.scenario.at(self.clock.now()), int(_time.time()))

    def passenger_flow(self) -> bytes:
        return feeds.passenger_flow(self.scenario.at(self.clock.now()), int(_time.time()))

    def site_config(self) -> dict[str, Any]:
        topics = Topics(TOPIC_PREFIX)
        stations = []
        for station in self.network.stations.values():
            stations.append({
                "id": station.id,
                "names": station.names.as_dict(),
                "lines": [_line(self.network, line_id) for line_id in self.network.lines_at(station.id)],
                "topic": topics.station_display(station.id),
            })
        return {
            "timezone": self.config.timezone,
            "topic_prefix": TOPIC_PREFIX,
            "status_topic": topics.status,
            "mqtt_ws_port": self.broker.ws_port,
            "mqtt_tcp_port": self.broker.tcp_port,
            "commuter_port": self._public_port,
            "stations": stations,
            "lines": [_line(self.network, line_id) for line_id in self.network.lines],
        }

    def status(self) -> dict[str, Any]:
        runner = self.runner
        return dashboard_status(
            config=self.config, clock=self.clock, scenario=self.scenario,
            b=runner.broadcaster if runner.running else None, posts=self.posts, now=datetime.now(UTC),
        )

    def control_scenario(self, *, at: time | None, speed: float | None, paused: bool | None) -> None:
        if at is not None:
            self.clock.set(at)
        if speed is not None:
            self.clock.set_speed(speed)
        if paused is True:
            self.clock.pause()
        elif paused is False:
            self.clock.resume()

    async def control_broadcaster(self, *, running: bool) -> None:
        if running:
            await self.runner.start()
        else:
            await self.runner.stop()


def print_banner(demo: Demo, out: TextIO, *, hint: bool = True) -> None:
    urls = demo.urls
    if hint:
        print("broadcaster demo: Linjiang Metro (临江地铁), a simulated morning at "
              f"{demo.clock.speed:g}x speed. Open in a browser:", file=out)
    for name, url in (("operator dashboard", urls.dashboard), ("station display", urls.display),
                      ("Atom timeline", urls.timeline), ("commuter page", urls.commuter),
                      ("MQTT (3.1.1)", urls.mqtt),
                      ("MQTT over WebSocket", urls.mqtt_websocket)):
        print(f"  {name:<21}{url}", file=out)  # name, two spaces or more, URL: easy to read and to parse
    if hint and demo.options.host in ("0.0.0.0", ""):  # noqa: S104 (comparing, not binding)
        print("Listening on every address: from another machine, use this machine's address instead of 127.0.0.1.",
              file=out)
    if hint:
        print("Watch every topic: mosquitto_sub -h {} -p {} -v -t 'metro/v1/#'. Press Ctrl-C to stop.".format(
            urls.mqtt.split("//")[1].rsplit(":", 1)[0], demo.broker.tcp_port), file=out)
    out.flush()


async def run_demo(options: DemoOptions, out: TextIO, *, hint: bool = True) -> int:
    """Run the demo until SIGINT or SIGTERM; returns the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with Demo(options) as demo:
            print_banner(demo, out, hint=hint)
            await stop.wait()
            print("broadcaster demo: stopping", file=out)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return 0
