"""One platform down for an hour: do the other platforms' posts slow down? Measured against a baseline in the same run.

`python -m bench.outage` runs one broadcaster with four HTTP channels (Mastodon, Bluesky, Weibo, a webhook) against
the tests' micro-blog server (`tests/support/microblog_server.py`), and a real Mosquitto, in three phases with the
same workload:

- ``baseline``: every platform up.
- ``down``: Mastodon answers 503 to everything (`MicroblogServer.set_down`).
- ``hang``: Mastodon reads every request and holds it until the client's deadline (`MicroblogServer.hang`), the
  worst case: it keeps a connection and the channel's attempt open for the whole deadline, again and again.

The workload is `--notices` operator notices (`Broadcaster.announce` with a `ManualNotice` on line 2: diff,
compose, render, commit, retained publish, then every channel), one every `--interval` seconds. Between two notices
the broadcaster's clock (`SteppedClock`) moves on by an hour divided by the number of notices, so each phase is an
hour of Mastodon's retries compressed: its backoff (1 s doubling to 5 min) comes due throughout, and its retry
fires at the moment the next notice is committed, the worst overlap for the others.

What is measured, per notice and per platform, is the time from the notice's commit (the outbox transaction
returned; `StateStore.committed` is stamped) to the return of that platform's `send` for the notice's last part,
i.e. its 2xx received and parsed. Both stamps are `time.perf_counter()` in the broadcaster's own process, wrapped
around the pipeline from the outside as `bench/scenarios.py` does. The server's request log would stamp the
request's *arrival* (`LoggedRequest.monotonic`), not the client's receipt of the 2xx, and would miss what matters
here: time the broadcaster's event loop spends on Mastodon's failures before it gets back to the others' replies.

The micro-blog server runs in a process of its own (a `multiprocessing` manager serving the real
`MicroblogServer`, whose fault switches are called through it), so it never competes with the broadcaster for the
GIL. Each phase starts a fresh broadcaster (its own state directory, so no Mastodon backlog carries over) and warms
it up with a few unmeasured notices (Bluesky's session, the HTTP connections) before Mastodon fails. `--rounds`
repeats the three phases, each round in another of their six orders, so drift on a shared machine does not fall
on one phase; the samples of a phase are pooled, and each round's ratio to its own baseline is kept to show the
noise.

Beside the latencies, each phase reports the broadcaster's CPU time per notice and how long each channel's drain
loop held the event loop per notice (`TimedSteps` around every drain loop). Every channel shares that one loop, so
this is the way a failing channel's work reaches the others' latency; it tells why a ratio moved, with far less
noise than the latencies themselves.

It prints a table (median and p95 per phase and platform, and the ratios of the outage phases to the baseline,
against the target: at most 10 % slower) and writes bench/results/outage-latest.json.

Options: `--notices 16` (per phase and round), `--rounds 6`, `--interval 0.2` (seconds between notices),
`--mastodon-deadline 2` (Mastodon's `timeout_seconds`, how long each hung request holds the channel; the
configuration's default is 15 s, a shorter one means more hung attempts per phase), `--out PATH`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bench import paths
from bench.__main__ import BROKER_CONFIG
from bench.report import _fmt
from bench.scenarios import percentile
from broadcaster.channels.base import NoticeChannel, ThreadRefs
from broadcaster.config import Config, load_config
from broadcaster.operator import ManualNotice
from broadcaster.outbox import OutboxEntry
from broadcaster.resources import data_dir
from broadcaster.service import Broadcaster

if TYPE_CHECKING:
    from support.microblog_server import LoggedRequest

PHASES = ("baseline", "down", "hang")
PHASE_LABELS = {"baseline": "baseline: all up", "down": "Mastodon 503 for 1 h", "hang": "Mastodon hangs for 1 h"}
#: The platforms whose latency must not change; Mastodon is the one that fails.
MEASURED = ("bluesky", "weibo", "webhook")
FAILING = "mastodon"
#: The requirement: the others' latency changes by no more than 10 %.
TARGET_RATIO = 1.10
SIMULATED_S = 3600.0
MAX_DEADLINE_S = 8.0
WARMUP = 3
#: Credentials the channels read from the environment (the micro-blog server's defaults).
SECRET_ENV = {"BENCH_MASTODON_TOKEN": "MASTODON_TOKEN", "BENCH_BLUESKY_PASSWORD": "BLUESKY_PASSWORD",
              "BENCH_WEIBO_TOKEN": "WEIBO_ACCESS_TOKEN", "BENCH_WEBHOOK_SECRET": "WEBHOOK_SECRET"}


# ------------------------------------------------------------------------------------------------------------
# The micro-blog server in a process of its own


class MicroblogControl(Protocol):
    """The part of `MicroblogServer` the bench calls through the manager's proxy."""

    def start(self) -> None: ...
    def webhook_url(self, name: str) -> str: ...
    def set_down(self, platform: str, down: bool = True) -> None: ...
    def hang(self, platform: str, seconds: float, *, count: int = 1, commit: bool = False) -> None: ...
    def clear_faults(self, platform: str) -> None: ...
    def requests(self, platform: str | None = None) -> list[LoggedRequest]: ...
    def stop(self, *, force: bool = True, timeout_s: float = 5.0) -> None: ...


class _ServerProcess(BaseManager):
    """Hosts one `MicroblogServer` (and its uvicorn thread) in a child process."""


@contextlib.contextmanager
def microblog_process() -> Iterator[MicroblogControl]:
    """A started micro-blog server in a process of its own; stopped (held requests released) on exit."""
    paths.add_test_support()
    from support.microblog_server import MicroblogServer

    _ServerProcess.register("MicroblogServer", MicroblogServer)
    with _ServerProcess(ctx=multiprocessing.get_context("spawn")) as manager:
        # Logins are not what is measured: a dozen fresh broadcasters must not meet Bluesky's 30 per 5 minutes.
        server: MicroblogControl = getattr(manager, "MicroblogServer")(bluesky_login_limit=10_000)  # noqa: B009
        server.start()
        try:
            yield server
        finally:
            with contextlib.suppress(Exception):  # the manager ends the process whatever happens here
                server.stop(force=True)


# ------------------------------------------------------------------------------------------------------------
# The broadcaster and its stopwatch


def write_config(folder: Path, mqtt_url: str, server: MicroblogControl, mastodon_deadline_s: float) -> Config:
    """Four HTTP channels on the micro-blog server, the bench broker, the example network.

    The one feed is never polled (the workload is operator notices); a config needs one.
    """
    paths.add_test_support()
    from rig import toml_value
    from support.microblog_server import BLUESKY_HANDLE

    base = server.webhook_url("ops").rsplit("/hooks/", 1)[0]  # the proxy calls methods; `url` is a property
    channels: list[dict[str, Any]] = [
        {"name": "mastodon", "kind": "mastodon", "url": base, "token": {"env": "BENCH_MASTODON_TOKEN"},
         "languages": ["zh", "en"], "timeout_seconds": mastodon_deadline_s},
        {"name": "bluesky", "kind": "bluesky", "url": base, "identifier": BLUESKY_HANDLE,
         "password": {"env": "BENCH_BLUESKY_PASSWORD"}, "languages": ["en"]},
        {"name": "weibo", "kind": "weibo", "url": base, "access_token": {"env": "BENCH_WEIBO_TOKEN"},
         "languages": ["zh"]},
        {"name": "webhook", "kind": "webhook", "url": server.webhook_url("ops"),
         "secret": {"env": "BENCH_WEBHOOK_SECRET"}, "languages": ["zh", "en"]},
    ]
    tables: dict[str, Any] = {
        "network": {"gtfs": str(data_dir("config") / "network")},
        "feeds": [{"name": "ops", "kind": "gtfs-rt", "url": f"{base}/unused.pb"}],
        "state": {"directory": str(folder / "state")},
        "mqtt": {"url": mqtt_url, "topic_prefix": f"bench/outage/{folder.name}", "client_id": f"bo-{folder.name}"},
        "channels": channels,
    }
    lines = []
    for name, value in tables.items():
        for table in value if isinstance(value, list) else [value]:
            header = f"[[{name}]]" if isinstance(value, list) else f"[{name}]"
            lines.append(header + "\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items()))
    path = folder / "broadcaster.toml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return load_config(path)


class TimedSteps(Coroutine[Any, Any, None]):
    """A coroutine that adds up how long each of its steps holds the event loop: what its task costs the others."""

    def __init__(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._coro = coro
        self._name = name

    def _step(self, step: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return step()
        finally:
            LOOP_S[self._name] += time.perf_counter() - started

    def send(self, value: Any) -> Any:
        return self._step(lambda: self._coro.send(value))

    def throw(self, *exc: Any) -> Any:
        return self._step(lambda: self._coro.throw(*exc))

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, None]:
        return self  # type: ignore[return-value]  # the task drives it step by step, as a coroutine

    def __next__(self) -> Any:
        return self.send(None)


#: Channel name -> seconds its drain loop held the event loop, since the measured notices began.
LOOP_S: defaultdict[str, float] = defaultdict(float)


def time_drain_loops() -> None:
    """Run every drain loop in `TimedSteps` (for this process): the loop time each channel takes from the others."""
    drain_loop = Broadcaster.drain_loop

    def timed(self: Broadcaster, channel: NoticeChannel, stop: asyncio.Event) -> Coroutine[Any, Any, None]:
        return TimedSteps(drain_loop(self, channel, stop), channel.name)

    setattr(Broadcaster, "drain_loop", timed)  # noqa: B010 (instrumenting the class from outside, as scenarios.py)


@dataclass
class Stopwatch:
    """When each notice was committed, and when each channel's send of it returned (its last part)."""

    committed_at: float = 0.0
    acked: dict[tuple[str, str], float] = field(default_factory=dict)  # (channel, notice id) -> perf_counter
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def attach(self, b: Broadcaster) -> None:
        committed = b.pipeline.store.committed

        def stamped() -> None:
            committed()
            self.committed_at = time.perf_counter()

        setattr(b.pipeline.store, "committed", stamped)  # noqa: B010 (wrapping a bound method from outside)
        for channel in b.channels:
            if channel.name in MEASURED:
                setattr(channel, "send", self._timed(channel.name, channel.send))  # noqa: B010

    def _timed(self, name: str, send: Callable[[OutboxEntry, ThreadRefs], Any]) -> Callable[..., Any]:
        async def timed(entry: OutboxEntry, thread: ThreadRefs) -> str | None:
            remote: str | None = await send(entry, thread)
            self.acked[(name, entry.notice_id)] = time.perf_counter()
            self.progress.set()
            return remote

        return timed

    async def announce(self, b: Broadcaster, notice: ManualNotice, timeout_s: float = 10.0) -> dict[str, float]:
        """Announce `notice`; return each measured platform's latency in ms once all of them have it."""
        notice_id = await b.announce(notice)
        committed = self.committed_at
        keys = [(name, notice_id) for name in MEASURED]
        async with asyncio.timeout(timeout_s):
            while not all(key in self.acked for key in keys):
                self.progress.clear()
                await self.progress.wait()
        return {name: (self.acked[(name, notice_id)] - committed) * 1000 for name in MEASURED}


def notice(phase: str, round_no: int, n: int) -> ManualNotice:
    """A short notice (one post on every platform), unique so that Weibo never sees repeat content."""
    return ManualNotice(
        texts={"zh": f"2号线列车晚点，请预留出行时间（{phase} {round_no}-{n}）",
               "en": f"Line 2 trains are delayed; please allow extra time ({phase} {round_no}-{n})"},
        line_ids=("2",), author="bench",
    )


@dataclass
class PhaseRun:
    latencies_ms: dict[str, list[float]]
    mastodon_requests: int
    mastodon_answers: dict[str, int]
    cpu_s: float  # the broadcaster process's CPU time over the measured notices
    loop_s: dict[str, float]  # channel -> time its drain loop held the event loop over the measured notices
    wall_s: float


async def run_phase(phase: str, round_no: int, config: Config, server: MicroblogControl, notices: int,
                    interval_s: float) -> PhaseRun:
    """A fresh broadcaster: warm up, break Mastodon as `phase` says, then the measured notices over a simulated hour."""
    from rig import SteppedClock, running

    started = time.perf_counter()
    clock = SteppedClock()
    step = timedelta(seconds=SIMULATED_S / notices)
    latencies: dict[str, list[float]] = {name: [] for name in MEASURED}
    watch = Stopwatch()
    async with running(config, clock=clock) as b:
        watch.attach(b)
        for n in range(WARMUP):
            await watch.announce(b, notice(f"warm-up {phase}", round_no, n))
        seen = len(server.requests(FAILING))
        if phase == "down":
            server.set_down(FAILING)
        elif phase == "hang":
            server.hang(FAILING, 3600, count=1_000_000)  # every request, until the client gives up
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        cpu = time.process_time()
        LOOP_S.clear()
        for n in range(notices):
            clock.offset += step
            for name, ms in (await watch.announce(b, notice(phase, round_no, n))).items():
                latencies[name].append(ms)
            next_at += interval_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))  # pacing: one notice per interval
        cpu = time.process_time() - cpu
        loop_s = dict(LOOP_S)
    server.clear_faults(FAILING)  # after the stop, so the backlog is not posted while it stops
    attempts = server.requests(FAILING)[seen:]
    answers = Counter(r.fault or str(r.status) for r in attempts)
    return PhaseRun(latencies, len(attempts), dict(answers), cpu, loop_s, time.perf_counter() - started)


# ------------------------------------------------------------------------------------------------------------
# Results


def summarise(runs: dict[str, list[PhaseRun]], meta: dict[str, Any]) -> dict[str, Any]:
    """Median and p95 per phase and platform (the rounds pooled), the outage phases' ratios to the baseline, and
    the verdicts; with what Mastodon was asked, and the CPU time and each drain loop's event-loop time per notice."""
    phases: dict[str, Any] = {}
    for phase, phase_runs in runs.items():
        phases[phase] = {}
        for name in MEASURED:
            values = [ms for run in phase_runs for ms in run.latencies_ms[name]]
            phases[phase][name] = {"median_ms": percentile(values, 50), "p95_ms": percentile(values, 95),
                                   "samples": len(values), "all_ms": values}
        answers = sum((Counter(run.mastodon_answers) for run in phase_runs), Counter[str]())
        phases[phase]["mastodon"] = {"requests": sum(run.mastodon_requests for run in phase_runs),
                                     "answers": dict(answers)}
        notices = sum(len(run.latencies_ms[MEASURED[0]]) for run in phase_runs)
        phases[phase]["cpu_ms_per_notice"] = sum(run.cpu_s for run in phase_runs) * 1000 / notices
        phases[phase]["loop_ms_per_notice"] = {
            name: sum(run.loop_s.get(name, 0.0) for run in phase_runs) * 1000 / notices
            for name in ("mqtt", FAILING, *MEASURED)
        }
    ratios: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    for phase in PHASES[1:]:
        ratios[phase] = {}
        for name in MEASURED:
            ratio = {stat: phases[phase][name][f"{stat}_ms"] / phases["baseline"][name][f"{stat}_ms"]
                     for stat in ("median", "p95")}
            # Each round against the baseline of the same round: their spread shows how noisy the machine was.
            ratio["median_by_round"] = [
                percentile(run.latencies_ms[name], 50) / percentile(base.latencies_ms[name], 50)
                for run, base in zip(runs[phase], runs["baseline"], strict=True)
            ]
            ratios[phase][name] = ratio
        targets[phase] = {"target": TARGET_RATIO}
        for stat in ("median", "p95"):
            worst = max(ratio[stat] for ratio in ratios[phase].values())
            targets[phase] |= {f"worst_{stat}_ratio": worst, f"{stat}_met": worst <= TARGET_RATIO}
    return {"target_ratio": TARGET_RATIO, "targets": targets, "ratios": ratios, "phases": phases, "meta": meta}


def table(document: dict[str, Any]) -> str:
    """Per phase and platform: median and p95, and the ratios to the baseline against the target, as Markdown."""
    target = document["target_ratio"]

    def verdict(ratio: float) -> str:
        return "met" if ratio <= target else "**missed**"

    lines = [
        f"| phase | platform | median ms | p95 ms | median / baseline | p95 / baseline | <= {target:.2f} "
        "| median / baseline, each round |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for phase in PHASES:
        for name in MEASURED:
            stats = document["phases"][phase][name]
            cells = [PHASE_LABELS[phase], name, _fmt(stats["median_ms"]), _fmt(stats["p95_ms"])]
            if phase == "baseline":
                cells += ["1.00", "1.00", "", ""]
            else:
                ratio = document["ratios"][phase][name]
                cells += [_fmt(ratio["median"], 2), _fmt(ratio["p95"], 2),
                          f"{verdict(ratio['median'])} / {verdict(ratio['p95'])}",
                          " ".join(f"{r:.2f}" for r in ratio["median_by_round"])]
            lines.append("| " + " | ".join(cells) + " |")
    meta = document["meta"]
    lines += ["", f"{meta['notices']} notices per phase and round, {meta['rounds']} round(s), one every "
              f"{meta['interval_s']:g} s; the broadcaster's clock steps {SIMULATED_S / meta['notices']:g} s per notice "
              f"(an hour per phase). Mastodon's deadline {meta['mastodon_deadline_s']:g} s.", ""]
    for phase in PHASES:
        found = document["phases"][phase]
        answers = ", ".join(f"{count} {answer}" for answer, count in found["mastodon"]["answers"].items())
        loop = ", ".join(f"{name} {ms:.1f}" for name, ms in found["loop_ms_per_notice"].items())
        lines.append(f"- {PHASE_LABELS[phase]}: Mastodon asked {found['mastodon']['requests']} times ({answers}); "
                     f"per notice, CPU {found['cpu_ms_per_notice']:.1f} ms, event loop held by each drain (ms): "
                     f"{loop}")
    for phase, check in document["targets"].items():
        lines.append(f"- target, {PHASE_LABELS[phase]}: medians {verdict(check['worst_median_ratio'])} (worst "
                     f"{check['worst_median_ratio']:.2f}), p95s {verdict(check['worst_p95_ratio'])} (worst "
                     f"{check['worst_p95_ratio']:.2f})")
    return "\n".join(lines)


async def measure(args: argparse.Namespace, work: Path, mqtt_url: str, server: MicroblogControl) -> dict[str, Any]:
    """Every round of the three phases (each round in another order), summarised."""
    time_drain_loops()
    runs: dict[str, list[PhaseRun]] = {phase: [] for phase in PHASES}
    orders = list(itertools.permutations(PHASES))
    for round_no in range(args.rounds):
        for phase in orders[round_no % len(orders)]:
            print(f"bench.outage: round {round_no + 1}, {phase} ...", end=" ", flush=True)
            config = write_config(work / f"{phase}-{round_no}", mqtt_url, server, args.mastodon_deadline)
            run = await run_phase(phase, round_no, config, server, args.notices, args.interval)
            runs[phase].append(run)
            print(f"{run.wall_s:.1f} s", flush=True)
    meta = {"notices": args.notices, "rounds": args.rounds, "interval_s": args.interval,
            "mastodon_deadline_s": args.mastodon_deadline, "simulated_s_per_phase": SIMULATED_S,
            "warmup_notices": WARMUP}
    return summarise(runs, meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.outage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--notices", type=int, default=16, help="measured notices per phase and round")
    parser.add_argument("--rounds", type=int, default=6, help="times the three phases run (pooled)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between two notices")
    parser.add_argument("--mastodon-deadline", type=float, default=2.0,
                        help="Mastodon's timeout_seconds: how long each hung request holds the channel")
    parser.add_argument("--out", type=Path, default=paths.RESULTS / "outage-latest.json")
    args = parser.parse_args(argv)
    if args.notices < 1 or args.rounds < 1:
        parser.error("--notices and --rounds must be at least 1")
    if not 0 < args.mastodon_deadline <= MAX_DEADLINE_S:
        parser.error(f"--mastodon-deadline must be in (0, {MAX_DEADLINE_S:g}]: a phase ends by stopping its"
                     " broadcaster, which waits at most 10 s for the request Mastodon is holding")

    paths.add_test_support()
    from support import MosquittoBroker
    from support import microblog_server as defaults

    for env, name in SECRET_ENV.items():
        os.environ[env] = getattr(defaults, name)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-outage-"))
    # Mastodon's retries log warnings, as in production; to a file, where they cost what they cost there.
    logging.basicConfig(level=logging.WARNING, filename=work / "outage.log",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    broker = MosquittoBroker(work / "mosquitto", persistence=False, extra_config=BROKER_CONFIG)
    broker.start()
    try:
        with microblog_process() as server:
            document = asyncio.run(measure(args, work, broker.url, server))
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    document["meta"] |= {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"), "wall_s": time.perf_counter() - started,
        "python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print()
    print(table(document))
    print(f"\nbench.outage: wrote {args.out} in {document['meta']['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
