"""Digest cron expressions mean what standard cron means: weekdays 0 and 7 are Sunday, 1-5 Monday to Friday.

Every test asks the real trigger (`CronSchedule`, APScheduler underneath) for all its slots across a whole week
and compares them with what crontab(5) says.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broadcaster.resources import data_dir
from broadcaster.scheduler import CronSchedule, validate_cron

ZONE = ZoneInfo("Asia/Shanghai")
#: A Sunday, local midnight.
SUNDAY = datetime(2026, 12, 6, tzinfo=ZONE)
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def week_of_slots(expression: str, start: datetime = SUNDAY, days: int = 7) -> list[datetime]:
    """Every slot of `expression` in [start, start + days), local time."""
    schedule = CronSchedule(expression, ZONE)
    end = start + timedelta(days=days)
    slots = []
    slot = schedule.next_slot(start - timedelta(microseconds=1))
    while slot < end:
        slots.append(slot.astimezone(ZONE))
        slot = schedule.next_slot(slot)
    return slots


def weekdays(slots: list[datetime]) -> set[str]:
    return {DAYS[s.weekday()] for s in slots}


@pytest.mark.parametrize(("expression", "expected"), [
    ("0 8 * * 1-5", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
    ("0 8 * * mon-fri", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
    ("0 8 * * MON-FRI", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
    ("0 8 * * 6,0", {"Sat", "Sun"}),
    ("0 8 * * sat,sun", {"Sat", "Sun"}),
    ("0 8 * * 0", {"Sun"}),
    ("0 8 * * 7", {"Sun"}),
    ("0 8 * * 1", {"Mon"}),
    ("0 8 * * 6", {"Sat"}),
    ("0 8 * * */2", {"Sun", "Tue", "Thu", "Sat"}),  # 0, 2, 4, 6
    ("0 8 * * 1-5/2", {"Mon", "Wed", "Fri"}),
    ("0 8 * * 5-7", {"Fri", "Sat", "Sun"}),
    ("0 8 * * *", set(DAYS)),
])
def test_weekdays_over_a_whole_week_are_those_of_standard_cron(expression: str, expected: set[str]) -> None:
    slots = week_of_slots(expression)
    assert weekdays(slots) == expected
    assert len(slots) == len(expected)  # once a day, at 08:00
    assert {s.strftime("%H:%M") for s in slots} == {"08:00"}


def test_the_documented_rush_hour_example_fires_60_times_monday_to_friday_mornings() -> None:
    slots = week_of_slots("*/15 7-9 * * 1-5")
    assert weekdays(slots) == {"Mon", "Tue", "Wed", "Thu", "Fri"}
    assert len(slots) == 5 * 3 * 4
    assert {s.strftime("%H:%M") for s in slots} == {f"{h:02}:{m:02}" for h in (7, 8, 9) for m in (0, 15, 30, 45)}


def test_day_of_month_and_weekday_both_restricted_fire_on_either_as_crontab_says() -> None:
    # crontab(5): "If both fields are restricted (not *), the command runs when either field matches."
    slots = week_of_slots("0 8 1 * 1", start=datetime(2026, 12, 1, tzinfo=ZONE), days=14)  # Tue 1 Dec
    assert [s.strftime("%a %d") for s in slots] == ["Tue 01", "Mon 07", "Mon 14"]


# -- a property: any weekday field means the set crontab(5) gives it -------------------------------------------

_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _cron_weekdays(field: str) -> set[int]:
    """The reference meaning of a weekday field (0 = Sunday ... 6 = Saturday, 7 = Sunday), written from crontab(5)."""
    out: set[int] = set()
    for part in field.split(","):
        base, _, step = part.partition("/")
        if base == "*":
            low, high = 0, 7
        elif "-" in base:
            a, b = base.split("-")
            low, high = (int(a) if a.isdigit() else _NAMES.index(a)), (int(b) if b.isdigit() else _NAMES.index(b))
        else:
            low = high = int(base) if base.isdigit() else _NAMES.index(base)
        out |= {d % 7 for d in range(low, high + 1, int(step) if step else 1)}
    return out


_single = st.one_of(st.integers(0, 7).map(str), st.sampled_from(_NAMES))
_range = st.tuples(st.integers(0, 7), st.integers(0, 7)).filter(lambda r: r[0] <= r[1]).map(lambda r: f"{r[0]}-{r[1]}")
_stepped = st.tuples(st.one_of(st.just("*"), _range), st.integers(1, 7)).map(lambda p: f"{p[0]}/{p[1]}")
_part = st.one_of(_single, _range, _stepped)
weekday_fields = st.lists(_part, min_size=1, max_size=4).map(",".join)


@settings(max_examples=60, deadline=None)
@given(field=weekday_fields)
def test_any_weekday_field_fires_on_the_days_crontab_names(field: str) -> None:
    expected = {DAYS[(d - 1) % 7] for d in _cron_weekdays(field)}  # 0 (Sunday) -> DAYS[6]
    assert weekdays(week_of_slots(f"30 6 * * {field}")) == expected


# -- a property: any whole expression fires exactly when crontab(5) says, minute by minute over five weeks ---------


def _expand_reference(field: str, low: int, high: int, names: tuple[str, ...] = ()) -> set[int]:
    """crontab(5)'s reading of one field, written out plainly (names map to low, low + 1, ...)."""

    def value(text: str) -> int:
        return low + names.index(text) if text in names else int(text)

    out: set[int] = set()
    for part in field.split(","):
        base, _, step = part.partition("/")
        first, last = (low, high) if base == "*" else (value(base.split("-")[0]), value(base.split("-")[-1]))
        if step and "-" not in base and base != "*":
            last = high
        out |= set(range(first, last + 1, int(step) if step else 1))
    return out


def _reference_slots(expression: str, start: datetime, days: int) -> list[datetime]:
    """Every minute in [start, start + days) that crontab(5) says the expression fires at."""
    minute, hour, day, month, weekday = expression.split()
    months = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    minutes, hours = sorted(_expand_reference(minute, 0, 59)), sorted(_expand_reference(hour, 0, 23))
    days_of_month, in_months = _expand_reference(day, 1, 31), _expand_reference(month, 1, 12, months)
    weekdays = {d % 7 for d in _expand_reference(weekday, 0, 7, _NAMES)}
    either = not day.startswith("*") and not weekday.startswith("*")
    slots = []
    for offset in range(days):
        date = start + timedelta(days=offset)
        day_ok = date.day in days_of_month
        weekday_ok = (date.weekday() + 1) % 7 in weekdays  # Python: Monday 0; cron: Sunday 0
        if date.month in in_months and ((day_ok or weekday_ok) if either else (day_ok and weekday_ok)):
            slots += [date.replace(hour=h, minute=m) for h in hours for m in minutes]
    return slots


def _field(low: int, high: int, names: tuple[str, ...] = (), *, star: bool = True) -> st.SearchStrategy[str]:
    single = st.integers(low, high).map(str)
    if names:
        single = st.one_of(single, st.sampled_from(names))
    ranged = st.tuples(st.integers(low, high), st.integers(low, high)).filter(lambda r: r[0] <= r[1])
    parts = [single, ranged.map(lambda r: f"{r[0]}-{r[1]}"),
             st.tuples(ranged, st.integers(1, 9)).map(lambda p: f"{p[0][0]}-{p[0][1]}/{p[1]}")]
    listed = st.lists(st.one_of(*parts), min_size=1, max_size=3).map(",".join)
    if not star:
        return listed
    return st.one_of(st.just("*"), st.integers(1, 9).map(lambda n: f"*/{n}"), listed)


expressions = st.tuples(
    st.lists(st.integers(0, 59).map(str), min_size=1, max_size=2).map(",".join),  # few slots a day, so the
    st.lists(st.integers(0, 23).map(str), min_size=1, max_size=2).map(",".join),  # real trigger stays quick
    _field(1, 31),
    st.one_of(st.just("*"), st.just("1-3"), _field(1, 12, ("jan", "feb", "mar"), star=False)),
    _field(0, 7, _NAMES),
).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(expression=expressions)
def test_any_expression_fires_exactly_when_crontab_says_over_five_weeks(expression: str) -> None:
    try:
        validate_cron(expression)
    except ValueError:
        return  # e.g. "31 2": never fires; refused, as the test below shows
    start = datetime(2026, 1, 25, tzinfo=ZONE)  # late January, all of February, early March
    assert week_of_slots(expression, start, days=35) == _reference_slots(expression, start, days=35)


@pytest.mark.parametrize(("expression", "fragment"), [
    ("* * * *", "five fields"),
    ("60 * * * *", "minute"),
    ("0 24 * * *", "hour"),
    ("0 8 32 * *", "day of month"),
    ("0 8 * 13 *", "month"),
    ("0 8 * * 8", "weekday"),
    ("0 8 * * mon-xyz", "weekday"),
    ("0 8 * * 5-1", "weekday"),
    ("*/0 * * * *", "minute"),
    ("0 8 30 2 *", "never"),
])
def test_an_invalid_cron_is_refused_naming_the_field(expression: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        validate_cron(expression)


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broadcaster", "check", "--offline", "-c", str(config)],
                          capture_output=True, text=True, timeout=60)


def _config(tmp_path: Path, cron: str) -> Path:
    network = (data_dir("config") / "network").as_posix()
    path = tmp_path / "cron.toml"
    path.write_text(
        f'timezone = "Asia/Shanghai"\n[network]\ngtfs = "{network}"\n'
        '[[feeds]]\nname = "ops"\nkind = "gtfs-rt"\nurl = "file:///nonexistent/rt.pb"\n'
        f'[[digests]]\nname = "rush"\ncron = "{cron}"\n', encoding="utf-8")
    return path


def test_check_prints_each_digests_next_slots_with_weekday_names_in_the_operators_zone(tmp_path: Path) -> None:
    result = _check(_config(tmp_path, "0 8 * * 6,0"))
    lines = [line for line in result.stdout.splitlines() if line.startswith("digest 'rush'")]
    assert lines, result.stdout + result.stderr
    slots = lines[0].split("next:", 1)[1]
    assert "Asia/Shanghai" in lines[0]
    named = [part.split()[0] for part in slots.split(",")]
    assert len(named) == 5
    assert set(named) <= {"Sat", "Sun"}, lines[0]
    assert "08:00" in slots


def test_check_with_an_invalid_cron_exits_2_naming_the_key(tmp_path: Path) -> None:
    result = _check(_config(tmp_path, "0 8 * * 9"))
    assert result.returncode == 2, result.stderr
    assert "digests[0].cron" in result.stderr
    assert "weekday" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_example_config_and_docs_rush_hour_cron_is_monday_to_friday() -> None:
    root = Path(__file__).resolve().parent.parent
    docs = (root / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert '`cron = "*/15 7-9 * * 1-5"`' in docs
    assert "Monday to Friday" in docs
