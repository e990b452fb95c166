"""The broadcaster inside the demo: the pipeline `broadcaster run` runs, which the dashboard can stop and restart.

It runs `service.serve`, exactly what `broadcaster run` runs, but leaves signals to the demo (Ctrl-C stops the
whole demo, the dashboard's button only the broadcaster) and keeps a handle on the running `Broadcaster` for the
dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from broadcaster.config import Config
from broadcaster.demo.recorder import PostLog, RecordingChannel
from broadcaster.runner import open_broadcaster, serve
from broadcaster.service import Broadcaster

log = logging.getLogger(__name__)


class PipelineRunner:
    """Runs one broadcaster at a time over `config`; `start` and `stop` may be called again and again."""

    def __init__(self, config: Config, posts: PostLog, *, grace: float = 5.0) -> None:
        self.config = config
        self.posts = posts
        self.grace = grace
        self.broadcaster: Broadcaster | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ready_task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self, *, connect_timeout: float = 10.0) -> None:
        """Start the broadcaster and wait until it is connected to the broker (TimeoutError if it cannot)."""
        if self.running:
            return
        self._stop = asyncio.Event()
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(self._stop, ready), name="broadcaster")
        waiter = asyncio.ensure_future(ready.wait())
        try:
            async with asyncio.timeout(connect_timeout):
                await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self._task.done():
            self._task.result()  # re-raises why it could not start

    async def stop(self) -> None:
        """Stop the broadcaster: it finishes in-flight sends and publishes `offline` on its status topic."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        try:
            await task
        finally:
            self.broadcaster = None

    async def _run(self, stop: asyncio.Event, ready: asyncio.Event) -> None:
        async with open_broadcaster(self.config) as b:
            b.channels[:] = [RecordingChannel(channel, self.posts) for channel in b.channels]
            self.broadcaster = b

            def started() -> None:
                # Ready once connected (or after the connect timeout: the board then shows "unavailable").
                async def when_connected() -> None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.config.mqtt.connect_timeout_seconds):
                            await b.link.connected.wait()
                    ready.set()

                self._ready_task = asyncio.create_task(when_connected())

            await serve(b, stop, grace=self.grace, on_started=started)
