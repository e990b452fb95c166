"""One scenario in this process, through the broadcaster's real pipeline; prints one `RESULT {json}` line.

`python -m bench.scenarios '{"scenario": "full", "k": 1, ...}'` (the orchestrator builds the arguments). Each
scenario runs in a process of its own so that its peak RSS is its own.

The broadcaster is assembled by `open_broadcaster` and driven by `Broadcaster.poll`, exactly as `serve` does
(the MQTT link and one drain loop per channel run as tasks). Stage times come from wrapping, from the outside,
the functions each stage calls; the end-to-end figure is the poll itself.

Scenarios:
- ``full``: a cold start (empty database), connected; one tick polls every feed: fetch to the last PUBACK.
- ``tick``: after a full tick, steady ticks in which 5 % of stations change level and 2 alerts change.
- ``emergency``: a NO_SERVICE alert appears; from the feed response to the PUBACK of its alert topic and of
  every affected station display, and to the 2xx of the micro-blog server; then it clears. Repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import cProfile
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import orjson

import broadcaster.pipeline as pipeline_module
import broadcaster.poller as poller_module
from bench import messages
from bench.city import FEEDS, CityFiles, Shape
from bench.rss import peak_rss_mb
from bench.servers import install
from broadcaster.channels.base import ThreadRefs
from broadcaster.channels.mqtt.link import Delivery
from broadcaster.config import Config, load_config
from broadcaster.contract import Topics
from broadcaster.outbox import OutboxEntry
from broadcaster.retained import Publication
from broadcaster.runner import open_broadcaster
from broadcaster.service import Broadcaster

P = ParamSpec("P")
R = TypeVar("R")

#: Stages in pipeline order. `render` is split: notices (compose + templates) and retained payloads (build,
#: serialise, diff against what the broker holds).
STAGES = ("fetch", "parse", "diff", "compose", "render_notices", "render_retained", "outbox", "publish")

_IN_TICK: contextvars.ContextVar[bool] = contextvars.ContextVar("in_tick", default=False)


class Stages:
    """Time spent in each stage while a measured tick runs (tasks started before it, the drain loops, are
    not counted: they are concurrent with the tick, not part of it)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.published = 0
        self.capture: list[Publication] | None = None
        #: When set, every stage's (name, start, seconds), in or out of a tick (the drain loops' commits block the
        #: same event loop): the emergency scenario keeps its rounds' timelines this way.
        self.trace: list[tuple[str, float, float]] | None = None

    def reset(self) -> None:
        self.totals = dict.fromkeys(STAGES, 0.0)
        self.published = 0

    def add(self, stage: str, seconds: float) -> None:
        if self.trace is not None:
            self.trace.append((stage, time.perf_counter() - seconds, seconds))
        if _IN_TICK.get():
            self.totals[stage] += seconds

    def sync(self, stage: str, fn: Callable[P, R]) -> Callable[P, R]:
        def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(stage, time.perf_counter() - started)

        return timed

    def coroutine(self, stage: str, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        async def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.add(stage, time.perf_counter() - started)

        return timed

    def context(self, stage: str, fn: Callable[P, contextlib.AbstractContextManager[R]]) -> Callable[
        P, contextlib.AbstractContextManager[R]
    ]:
        @contextlib.contextmanager
        def timed(*args: P.args, **kwargs: P.kwargs) -> Iterator[R]:
            started = time.perf_counter()
            try:
                with fn(*args, **kwargs) as value:
                    yield value
            finally:
                self.add(stage, time.perf_counter() - started)

        return timed


STAGE_CLOCK = Stages()


def instrument_module() -> None:
    """Time the pure stages where the service calls them (its module globals), once per process."""
    for module, name, stage in ((poller_module, "parse_gtfs_rt", "parse"),
                                (poller_module, "parse_passenger_flow", "parse"),
                                (poller_module, "check_freshness", "parse"),
                                (pipeline_module, "apply_snapshot", "diff"), (pipeline_module, "compose", "compose")):
        setattr(module, name, STAGE_CLOCK.sync(stage, getattr(module, name)))


def instrument(b: Broadcaster) -> None:
    """Time the stages that live on one broadcaster's parts."""
    s = STAGE_CLOCK
    setattr(b.poller.fetcher, "fetch", s.coroutine("fetch", b.poller.fetcher.fetch))  # noqa: B010 (wrapping a bound method)
    setattr(b.messages, "messages", s.sync("render_notices", b.messages.messages))  # noqa: B010
    setattr(b.planner, "plan", s.sync("render_retained", b.planner.plan))  # noqa: B010
    setattr(b.db, "transaction", s.context("outbox", b.db.transaction))  # noqa: B010
    publish_many = s.coroutine("publish", b.link.publish_many)

    async def counted(publications: list[Publication]) -> Delivery:
        if _IN_TICK.get():
            s.published += len(publications)
            if s.capture is not None:
                s.capture.extend(publications)
        return await publish_many(publications)

    setattr(b.link, "publish_many", counted)  # noqa: B010


# ------------------------------------------------------------------------------------------------------------
# Running a broadcaster


@dataclass
class Args:
    scenario: str
    k: float
    city: Path
    work: Path
    feeds_url: str
    mqtt_url: str
    run_id: str
    microblog_url: str = ""
    mastodon_token: str = ""
    reps: int = 1
    ticks: int = 3
    rounds: int = 20
    capture: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def write_config(args: Args, name: str, *, mastodon: bool = False) -> Config:
    """A config for this city: four feeds over HTTP, the bench broker, optionally a Mastodon channel."""
    www = f"{args.city.name}/www"  # the feed server serves the run's folder, the city's parent
    feed_kinds = {"alerts.pb": ["alerts"], "trips.pb": ["trip-updates"], "vehicles.pb": ["vehicle-positions"]}
    lines = [f"[network]\ngtfs = {json.dumps(str(args.city / 'gtfs'))}\n"]
    for file in FEEDS:
        feed: dict[str, Any] = {
            "name": file.split(".")[0], "url": f"{args.feeds_url}/{www}/{file}",
            "timeout_seconds": 30, "max_bytes": 256 * 1024 * 1024, "max_age_seconds": 86400,
        }
        if file in feed_kinds:
            feed |= {"kind": "gtfs-rt", "contains": feed_kinds[file]}
        else:
            feed |= {"kind": "passenger-flow"}
        lines.append("[[feeds]]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in feed.items()))
    state = {"directory": str(args.work / name), "resolve_after_missing": 1, "crowding_min_dwell_seconds": 0}
    lines.append("[state]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in state.items()))
    mqtt = {"url": args.mqtt_url, "topic_prefix": f"bench/{args.run_id}/{name}", "client_id": f"bench-{name}",
            "publish_timeout_seconds": 30}
    lines.append("[mqtt]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in mqtt.items()))
    if mastodon:
        lines.append(
            "[[channels]]\nname = \"mastodon\"\nkind = \"mastodon\"\n"
            f"url = {json.dumps(args.microblog_url)}\ntoken = {{ env = \"BENCH_MASTODON_TOKEN\" }}\n"
            "languages = [\"zh\", \"en\"]\nnotices = [\"alert_new\", \"alert_updated\", \"alert_resolved\"]\n"
        )
    path = args.work / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return load_config(path)


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Broadcaster]:
    """A connected broadcaster whose session-start publish is over, with its drain loops running."""
    async with open_broadcaster(config) as b:
        instrument(b)
        session_ready = asyncio.Event()
        on_connected = b.on_connected

        async def connected() -> None:
            await on_connected()
            session_ready.set()

        b.link.when_connected(connected)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(b.link.run(stop))]
        tasks += [asyncio.create_task(b.drain_loop(channel, stop)) for channel in b.channels]
        try:
            async with asyncio.timeout(60):
                await session_ready.wait()
            yield b
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await asyncio.gather(*tasks)


async def drained(b: Broadcaster) -> None:
    """Wait (two minutes at most) until every notice in the outbox has been delivered."""
    async with asyncio.timeout(120):
        while b.pending():  # noqa: ASYNC110 (the outbox has no event to wait on: poll it, briefly)
            await asyncio.sleep(0.005)


@dataclass
class TickResult:
    e2e_s: float
    stages: dict[str, float]
    published: int
    #: CPU time this process spent during the tick (the broadcaster's, drain loops included: what an operator
    #: pays per tick; the servers and the broker run in other processes).
    cpu_s: float = 0.0


async def measured_tick(b: Broadcaster, feeds: list[str] | None = None) -> TickResult:
    """Poll every feed (or the named ones) once, as one measured tick."""
    token = _IN_TICK.set(True)
    STAGE_CLOCK.reset()
    try:
        started = time.perf_counter()
        cpu_started = time.process_time()
        # One round, as at start-up and in `once`: the feeds are polled together and retained state is
        # published once for all of them.
        outcomes = await b.poll_round([f for f in b.config.feeds if feeds is None or f.name in feeds])
        for outcome in outcomes:
            if not outcome.ok:
                raise RuntimeError(f"poll of {outcome.feed} failed: {outcome.error}")
        e2e = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    finally:
        _IN_TICK.reset(token)
    return TickResult(e2e, dict(STAGE_CLOCK.totals), STAGE_CLOCK.published, cpu)


def install_variant(args: Args, variant: str, files: tuple[str, ...] = FEEDS) -> None:
    city = CityFiles(args.city, Shape.at(args.k))
    for name in files:
        install(city.variant(variant) / name, city.www / name)


def summary(ticks: list[TickResult]) -> dict[str, Any]:
    """The median tick (by end-to-end time), with every tick's end-to-end time."""
    ordered = sorted(ticks, key=lambda t: t.e2e_s)
    median = ordered[(len(ordered) - 1) // 2]
    return {
        "e2e_ms": median.e2e_s * 1000,
        "stages_ms": {stage: seconds * 1000 for stage, seconds in median.stages.items()},
        "other_ms": (median.e2e_s - sum(median.stages.values())) * 1000,
        "published": median.published,
        "cpu_ms": statistics.median(t.cpu_s for t in ticks) * 1000,
        "all_e2e_ms": [t.e2e_s * 1000 for t in ticks],
    }


# ------------------------------------------------------------------------------------------------------------
# Scenarios


async def full(args: Args) -> dict[str, Any]:
    install_variant(args, "base")
    ticks: list[TickResult] = []
    timelines: list[tuple[float, list[str]]] = []
    topics = 0
    for rep in range(args.reps):
        tick_result, rep_topics, timeline = await _cold_start(args, rep)
        ticks.append(tick_result)
        timelines.append((tick_result.e2e_s, timeline))
        topics = topics or rep_topics
    timelines.sort(key=lambda t: t[0])
    # Where a cold start's time goes, stage by stage from the first fetch: the four feeds' fetches and parses
    # overlap, and the publish waits for the last commit.
    return {**summary(ticks), "retained_topics": topics, "prefix": args.extra.get("prefix"),
            "timeline_median_rep": timelines[(len(timelines) - 1) // 2][1]}


async def _cold_start(args: Args, rep: int) -> tuple[TickResult, int, list[str]]:
    """One rep of `full`: a broadcaster of its own, gone when this returns. (A loop variable bound by `async with`
    outlived its block and kept the previous rep's broadcaster alive while the next one was built: the peak RSS
    was that of two broadcasters, 104 MB instead of 87 at k = 1.)"""
    config = write_config(args, f"s1-k{args.k:g}-r{rep}")
    topics = 0
    async with running(config) as b:
        STAGE_CLOCK.capture = [] if rep == 0 and args.capture else None
        STAGE_CLOCK.trace = []
        started = time.perf_counter()
        with _STEADY.profiling():
            result = await measured_tick(b)
        timeline = _timeline(STAGE_CLOCK.trace, started, {"poll round returned": started + result.e2e_s})
        STAGE_CLOCK.trace = None
        if STAGE_CLOCK.capture is not None and args.capture is not None:
            last = {p.topic: p for p in STAGE_CLOCK.capture if p.payload}
            topics = len(last)
            messages.save(args.capture, [messages.Message(p.topic, p.payload, p.expiry_s) for p in last.values()])
            args.extra["prefix"] = config.mqtt.topic_prefix
        STAGE_CLOCK.capture = None
        await drained(b)
        return result, topics or len(b.planner.published), timeline


async def tick(args: Args) -> dict[str, Any]:
    install_variant(args, "base")
    config = write_config(args, f"s2-k{args.k:g}")
    ticks: list[TickResult] = []
    # From the tick's start until the notices it queued are delivered too (`drained`): the measured tick ends
    # when the poll round returns, and a notice still going out then is the tick's work all the same.
    delivered_wall: list[float] = []
    delivered_cpu: list[float] = []
    async with running(config) as b:
        first = await measured_tick(b)
        await drained(b)
        timelines: list[tuple[float, list[str]]] = []
        for n in range(1, args.ticks + 1):
            install_variant(args, f"tick{n}")
            STAGE_CLOCK.trace = []
            started = time.perf_counter()
            cpu_started = time.process_time()
            with _STEADY.profiling():
                ticks.append(await measured_tick(b))
            timelines.append((ticks[-1].e2e_s, _timeline(STAGE_CLOCK.trace, started, {
                "poll round returned": started + ticks[-1].e2e_s})))
            STAGE_CLOCK.trace = None
            await drained(b)
            delivered_wall.append((time.perf_counter() - started) * 1000)
            delivered_cpu.append((time.process_time() - cpu_started) * 1000)
        topics = len(b.planner.published)
    timelines.sort(key=lambda t: t[0])
    return {**summary(ticks), "retained_topics": topics, "first_tick_ms": first.e2e_s * 1000,
            "delivered_ms": statistics.median(delivered_wall), "delivered_cpu_ms": statistics.median(delivered_cpu),
            "timeline_median_tick": timelines[(len(timelines) - 1) // 2][1]}


class SteadyProfile:
    """cProfile of the measured ticks alone (`--profile`): the tick scenario's steady ticks, the full scenario's
    cold-start ticks. The whole process's stats are mostly start-up (and, for `tick`, the first, full tick), and
    would hide where a measured tick's time goes."""

    def __init__(self) -> None:
        self.profiler: cProfile.Profile | None = None

    @contextlib.contextmanager
    def profiling(self) -> Iterator[None]:
        if self.profiler is None:
            yield
            return
        self.profiler.enable()
        try:
            yield
        finally:
            self.profiler.disable()


_STEADY = SteadyProfile()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: with fewer than 100 samples, p99 is the largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _timeline(trace: list[tuple[str, float, float]], t0: float, marks: dict[str, float]) -> list[str]:
    """One round, in order: each stage's start and length in ms from `t0` (the feed response in an emergency, the
    start of the poll round in a cold start or a steady tick), and the marks."""
    events = [(start, f"{(start - t0) * 1000:8.2f} ms  {stage} ({seconds * 1000:.2f} ms)")
              for stage, start, seconds in trace]
    events += [(at, f"{(at - t0) * 1000:8.2f} ms  ** {name}") for name, at in marks.items()]
    return [line for _, line in sorted(events)]


async def emergency(args: Args) -> dict[str, Any]:
    install_variant(args, "base")
    config = write_config(args, f"s3-k{args.k:g}", mastodon=True)
    topics = Topics(config.mqtt.topic_prefix)
    feed_done = [0.0]
    acked: dict[str, float] = {}
    posted: dict[str, float] = {}
    samples: dict[str, list[float]] = {"alert_topic_ms": [], "displays_ms": [], "all_retained_ms": [],
                                       "microblog_ms": [], "poll_ms": [], "cpu_ms": []}
    timelines: list[tuple[float, list[str]]] = []  # (display latency, where the round's time went)
    async with running(config) as b:
        fetch = b.poller.fetcher.fetch

        async def fetch_timed(*a: Any, **kw: Any) -> Any:
            result = await fetch(*a, **kw)
            feed_done[0] = time.perf_counter()
            return result

        def acknowledged(pub: Publication) -> None:
            acked[pub.topic] = time.perf_counter()

        setattr(b.poller.fetcher, "fetch", fetch_timed)  # noqa: B010
        setattr(b.link, "acknowledged", acknowledged)  # noqa: B010 (the link's seam for measurements)
        mastodon = next(c for c in b.channels if c.name == "mastodon")
        send = mastodon.send

        async def send_timed(entry: OutboxEntry, thread: ThreadRefs) -> str | None:
            remote = await send(entry, thread)
            posted[entry.notice_id + "/" + entry.version] = time.perf_counter()
            return remote

        setattr(mastodon, "send", send_timed)  # noqa: B010
        await measured_tick(b)
        await drained(b)
        for n in range(args.rounds):
            meta = orjson.loads((CityFiles(args.city, Shape.at(args.k)).variant(f"emergency{n}-on") / "meta.json")
                                .read_bytes())
            alert_topic = topics.line_alert(meta["line"], meta["alert_id"])
            displays = [topics.station_display(s) for s in meta["stations"]]
            install_variant(args, f"emergency{n}-on", ("alerts.pb",))
            acked.clear()
            posted.clear()
            STAGE_CLOCK.trace = []
            started = time.perf_counter()
            cpu_started = time.process_time()
            await measured_tick(b, ["alerts"])
            polled = time.perf_counter()
            await drained(b)
            samples["cpu_ms"].append((time.process_time() - cpu_started) * 1000)
            t0 = feed_done[0]
            key = next(k for k in posted if k.startswith(f"alert-{meta['alert_id']}/new-"))
            samples["alert_topic_ms"].append((acked[alert_topic] - t0) * 1000)
            samples["displays_ms"].append((max(acked[d] for d in displays) - t0) * 1000)
            samples["all_retained_ms"].append((max([acked[alert_topic], *(acked[d] for d in displays)]) - t0) * 1000)
            samples["microblog_ms"].append((posted[key] - t0) * 1000)
            samples["poll_ms"].append((polled - started) * 1000)
            last_display = max(acked[d] for d in displays)
            timelines.append((samples["displays_ms"][-1], _timeline(STAGE_CLOCK.trace, t0, {
                "feed response": t0, "alert topic acked": acked[alert_topic], "last display acked": last_display,
                "micro-blog 2xx": posted[key], "poll returned": polled})))
            STAGE_CLOCK.trace = None
            install_variant(args, f"emergency{n}-off", ("alerts.pb",))
            await measured_tick(b, ["alerts"])
            await drained(b)
        displays_per_round = len(displays)
    out: dict[str, Any] = {"rounds": args.rounds, "displays_per_round": displays_per_round}
    timelines.sort(key=lambda t: t[0])
    out["timeline_median_round"] = timelines[len(timelines) // 2][1]
    out["timeline_slowest_round"] = timelines[-1][1]
    for name, values in samples.items():
        out[name] = {"p50": percentile(values, 50), "p99": percentile(values, 99), "max": max(values)}
    return out


async def main(raw: dict[str, Any]) -> dict[str, Any]:
    converted: dict[str, Any] = {
        key: (Path(value) if key in ("city", "work", "capture") and value else value) for key, value in raw.items()
    }
    args = Args(**converted)
    instrument_module()
    runner = {"full": full, "tick": tick, "emergency": emergency}[args.scenario]
    started = time.perf_counter()
    result = await runner(args)
    result["wall_s"] = time.perf_counter() - started
    result["rss_mb"] = peak_rss_mb()
    result["scenario"] = args.scenario
    result["k"] = args.k
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    profile_to = os.environ.get("BENCH_PROFILE")  # a path: write cProfile stats of the whole scenario there
    arguments = json.loads(sys.argv[1])
    if profile_to and arguments["scenario"] in ("tick", "full"):
        # The tick scenario's stats cover its steady ticks only, the full scenario's its cold-start ticks
        # (SteadyProfile): the start-up of the process and of each broadcaster would hide them.
        _STEADY.profiler = cProfile.Profile()
        outcome = asyncio.run(main(arguments))
        _STEADY.profiler.dump_stats(profile_to)
    elif profile_to:
        with cProfile.Profile() as profiler:
            outcome = asyncio.run(main(arguments))
        profiler.dump_stats(profile_to)
    else:
        outcome = asyncio.run(main(arguments))
    print("RESULT " + json.dumps(outcome), flush=True)
