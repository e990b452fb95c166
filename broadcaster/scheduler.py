"""Triggers jobs on intervals and cron schedules (the only module that imports APScheduler).

The scheduler only *triggers*: delivery belongs to the service's drain loops, because APScheduler cancels
running coroutine jobs on shutdown. Jobs are coalesced and never overlap, so a slow feed cannot pile up polls.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, tzinfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

log = logging.getLogger(__name__)


def validate_cron(expression: str) -> None:
    """Raise ValueError with APScheduler's reason if `expression` is not a valid five-field cron."""
    if len(expression.split()) != 5:
        raise ValueError("must have five fields: minute hour day month weekday")
    CronTrigger.from_crontab(expression, timezone=UTC)


class CronSchedule:
    """A cron expression in a time zone, asked for its slots by the caller's clock (so tests need not wait)."""

    def __init__(self, expression: str, timezone: tzinfo) -> None:
        self._trigger = CronTrigger.from_crontab(expression, timezone=timezone)

    def next_slot(self, after: datetime) -> datetime:
        """The first slot strictly after `after`."""
        slot: datetime | None = self._trigger.get_next_fire_time(None, after + timedelta(microseconds=1))
        assert slot is not None  # a five-field cron always fires again
        return slot.astimezone(UTC)

    def latest_slot(self, last_run: datetime | None, now: datetime) -> datetime | None:
        """The most recent slot in (last_run, now], or None: missed slots are coalesced into this one."""
        if last_run is None:
            last_run = now - timedelta(days=1)
        latest = None
        slot = self.next_slot(last_run)
        while slot <= now:
            latest = slot
            slot = self.next_slot(slot)
        return latest


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

    def on_cron(self, job_id: str, expression: str, timezone: tzinfo, job: Callable[[], Awaitable[object]]) -> None:
        """Run `job` at each slot of a five-field cron in `timezone`; missed slots coalesce into one run."""
        self._scheduler.add_job(
            job, CronTrigger.from_crontab(expression, timezone=timezone), id=job_id, name=job_id,
            misfire_grace_time=None,  # however late (a suspended laptop, a long GC), run once, not a burst
        )

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
