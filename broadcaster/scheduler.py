"""Triggers jobs on intervals and cron schedules (the only module that imports APScheduler).

The scheduler only *triggers*: delivery belongs to the service's drain loops, because APScheduler cancels
running coroutine jobs on shutdown. Jobs are coalesced and never overlap, so a slow feed cannot pile up polls.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

log = logging.getLogger(__name__)


class JobScheduler:
    """A thin wrapper so that the rest of the code never sees APScheduler's types."""

    def __init__(self) -> None:
        self._scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
        )

    def every(self, job_id: str, seconds: float, job: Callable[[], Awaitable[object]], *, now: bool = True) -> None:
        """Run `job` every `seconds`, the first time at once when `now`."""
        trigger = IntervalTrigger(seconds=seconds, timezone=UTC)
        if now:  # next_run_time=None would add the job paused, so only pass it to start at once
            self._scheduler.add_job(job, trigger, id=job_id, name=job_id, next_run_time=datetime.now(UTC))
        else:
            self._scheduler.add_job(job, trigger, id=job_id, name=job_id)

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
