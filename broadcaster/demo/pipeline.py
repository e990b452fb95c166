"""The broadcaster inside the demo: the pipeline `broadcaster run` runs, which the dashboard can stop and restart.

It opens the pipeline with `open_broadcaster`, keeps the MQTT link, one drain loop per channel and one poll job
per feed, like `service.run_forever`, but leaves signals to the demo (Ctrl-C stops the whole demo, the
dashboard's button only the broadcaster) and keeps a handle on the running `Broadcaster` for the dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from broadcaster.config import Config, FeedConfig
from broadcaster.demo.recorder import PostLog, RecordingChannel
from broadcaster.scheduler import JobScheduler
from broadcaster.service import Broadcaster, open_broadcaster

log = logging.getLogger(__name__)


def _poll_job(b: Broadcaster, feed: FeedConfig) -> Callable[[], Awaitable[None]]:
    async def poll() -> None:
        try:
            await b.poll(feed)
        except Exception:
            log.exception("poll of feed %r failed unexpectedly", feed.name)

    return poll


class PipelineRunner:
    """Runs one broadcaster at a time over `config`; `start` and `stop` may be called again and again."""

    def __init__(self, config: Config, posts: PostLog, *, grace: float = 5.0) -> None:
        self.config = config
        self.posts = posts
        self.grace = grace
        self.broadcaster: Broadcaster | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

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
            scheduler = JobScheduler()
            for feed in self.config.feeds:
                scheduler.every(f"poll:{feed.name}", feed.poll_seconds, _poll_job(b, feed))
            link_stop = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(b.link.run(link_stop))
                drains = [tg.create_task(b.drain_loop(channel, stop)) for channel in b.channels]
                scheduler.start()
                self.broadcaster = b
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.mqtt.connect_timeout_seconds):
                        await b.link.connected.wait()
                ready.set()
                await stop.wait()
                scheduler.shutdown()
                await asyncio.wait(drains, timeout=self.grace)
                link_stop.set()
