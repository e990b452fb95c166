"""The scenario clock: the simulated time of day the demo's scripted morning is at, optionally faster than real time.

Only the story runs on this clock; the broadcaster keeps real time, so every payload's `issued_at` and
`valid_until` mean what the MQTT contract says they mean. The clock loops over the script's day, can be paused
and set (the operator dashboard's buttons, and the tests, which never wait for the story to get somewhere).
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable
from datetime import time

DAY_SECONDS = 24 * 3600


def seconds_of(at: time) -> int:
    return at.hour * 3600 + at.minute * 60 + at.second


def time_of(seconds: float) -> time:
    s = int(seconds) % DAY_SECONDS
    return time(s // 3600, s // 60 % 60, s % 60)


class ScenarioClock:
    """Simulated seconds since midnight, advancing `speed` times as fast as `monotonic`, within [start, end)."""

    def __init__(
        self,
        at: time,
        *,
        speed: float = 1.0,
        loop: tuple[time, time] = (time(0, 0), time(23, 59, 59)),
        monotonic: Callable[[], float] = _time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._monotonic = monotonic
        self._loop_start = seconds_of(loop[0])
        self._loop_length = seconds_of(loop[1]) - self._loop_start
        if self._loop_length <= 0:
            raise ValueError("the loop must end after it starts")
        self._speed = speed
        self._paused = False
        self._anchor_sim = float(seconds_of(at))
        self._anchor_real = monotonic()

    def seconds(self) -> float:
        """Simulated seconds since midnight, wrapped into the loop."""
        sim = self._anchor_sim
        if not self._paused:
            sim += (self._monotonic() - self._anchor_real) * self._speed
        return self._loop_start + (sim - self._loop_start) % self._loop_length

    def now(self) -> time:
        return time_of(self.seconds())

    @property
    def speed(self) -> float:
        return self._speed

    @property
    def paused(self) -> bool:
        return self._paused

    def _rebase(self) -> None:
        self._anchor_sim = self.seconds()
        self._anchor_real = self._monotonic()

    def set(self, at: time) -> None:
        """Jump to `at` (the clock keeps running unless paused)."""
        self._anchor_sim = float(seconds_of(at))
        self._anchor_real = self._monotonic()

    def set_speed(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._rebase()
        self._speed = speed

    def pause(self) -> None:
        self._rebase()
        self._paused = True

    def resume(self) -> None:
        self._rebase()
        self._paused = False
