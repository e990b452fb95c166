"""Triggers jobs on intervals and cron schedules (the only module that imports APScheduler).

The scheduler only *triggers*: delivery belongs to the service's drain loops, because APScheduler cancels
running coroutine jobs on shutdown. Jobs are coalesced and never overlap, so a slow feed cannot pile up polls.
"""

from __future__ import annotations

import calendar
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

log = logging.getLogger(__name__)

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
#: APScheduler 3 numbers weekdays from Monday (0) and takes names; crontab(5) numbers them from Sunday (0 and 7).
#: Weekdays are therefore handed over as names, never as numbers.


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names for low, low + 1, ...


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, _MONTHS),
    _Field("weekday", 0, 7, (*_WEEKDAYS, "sun")),
)


@dataclass(frozen=True)
class CronExpression:
    """A five-field cron expression with crontab(5)'s meaning, each field expanded to the values it allows.

    Weekdays are 0-7 (0 and 7 are Sunday) or sun-sat; months 1-12 or jan-dec; names in any case. A field is a
    list of `*`, a value or a range `a-b`, each with an optional step `/n`. When both the day of month and the
    weekday are restricted (neither starts with `*`), a day matching either fires, as in crontab(5); when one
    starts with `*` (`*/2` too), a day must match both, as cron has always done.
    """

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday ... 6 = Saturday
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, expression: str) -> CronExpression:
        """Raises ValueError naming the field that is wrong (never quoting the expression: see config errors)."""
        fields = expression.split()
        if len(fields) != 5:
            raise ValueError(f"must have five fields: minute hour day-of-month month weekday (it has {len(fields)})")
        minutes, hours, days, months, weekdays = (
            frozenset(_expand(text, spec)) for text, spec in zip(fields, _FIELDS, strict=True)
        )
        parsed = cls(minutes, hours, days, months, frozenset(d % 7 for d in weekdays),
                     days_restricted=not fields[2].startswith("*"), weekdays_restricted=not fields[4].startswith("*"))
        if not parsed.weekdays_restricted and not any(
            day <= _longest_month(month) for month in parsed.months for day in parsed.days
        ):
            raise ValueError("never fires: no month in its month field has a day in its day-of-month field")
        return parsed

    def trigger(self, timezone: tzinfo) -> BaseTrigger:
        """The APScheduler trigger with these slots in `timezone`."""

        def listed(values: frozenset[int]) -> str:
            return ",".join(str(v) for v in sorted(values))

        def make(days: str, weekdays: str) -> CronTrigger:
            return CronTrigger(minute=listed(self.minutes), hour=listed(self.hours), day=days,
                               month=listed(self.months), day_of_week=weekdays, timezone=timezone)

        days = listed(self.days) if len(self.days) < 31 else "*"
        weekdays = ",".join(_WEEKDAYS[d] for d in sorted(self.weekdays)) if len(self.weekdays) < 7 else "*"
        if self.days_restricted and self.weekdays_restricted:  # either matches (APScheduler alone needs both)
            return OrTrigger([make(days, "*"), make("*", weekdays)])
        return make(days, weekdays)  # `*/2` in one of them: both must match, as in cron


def _longest_month(month: int) -> int:
    return calendar.monthrange(2024, month)[1]  # a leap year: 29 February exists


def _value(text: str, spec: _Field) -> int:
    lowered = text.lower()
    if spec.names and lowered in spec.names:
        return spec.low + spec.names.index(lowered)
    if not text.isdigit():
        names = f" or a name {spec.names[0]}-{spec.names[-2 if spec.name == 'weekday' else -1]}" if spec.names else ""
        raise ValueError(f"the {spec.name} field holds something that is not a number{names}")
    number = int(text)
    if not spec.low <= number <= spec.high:
        raise ValueError(f"the {spec.name} field is out of range: it allows {spec.low}-{spec.high}"
                         + (" (0 and 7 are Sunday)" if spec.name == "weekday" else ""))
    return number


def _expand(text: str, spec: _Field) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        if base == "*":
            low, high = spec.low, spec.high
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = _value(first, spec), _value(last, spec)
            if low > high:
                raise ValueError(f"the {spec.name} field has a range that runs backwards (write it as a list)")
        else:
            low = high = _value(base, spec)
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"the {spec.name} field has a step that is not a whole number above 0")
            step = int(step_text)
            if base != "*" and "-" not in base:
                high = spec.high  # "5/10" is "5-59/10", as cronie reads it
        out.update(range(low, high + 1, step))
    return out


def validate_cron(expression: str) -> None:
    """Raise ValueError naming the wrong field if `expression` is not a valid five-field crontab(5) expression."""
    CronExpression.parse(expression)


class CronSchedule:
    """A cron expression in a time zone, asked for its slots by the caller's clock (so tests need not wait)."""

    def __init__(self, expression: str, timezone: tzinfo) -> None:
        self._trigger = CronExpression.parse(expression).trigger(timezone)

    def next_slot(self, after: datetime) -> datetime:
        """The first slot strictly after `after`."""
        slot: datetime | None = self._trigger.get_next_fire_time(None, after + timedelta(microseconds=1))
        assert slot is not None  # a validated five-field cron always fires again
        return slot.astimezone(UTC)

    def next_slots(self, after: datetime, count: int) -> list[datetime]:
        """The first `count` slots strictly after `after`."""
        slots = [self.next_slot(after)]
        while len(slots) < count:
            slots.append(self.next_slot(slots[-1]))
        return slots

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
            job, CronExpression.parse(expression).trigger(timezone), id=job_id, name=job_id,
            misfire_grace_time=None,  # however late (a suspended laptop, a long GC), run once, not a burst
        )

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
