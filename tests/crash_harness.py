"""Crash loop: run `broadcaster run`, SIGKILL it at random moments while it drains, restart, many times; then
check that every queued post reached every platform exactly once and none is missing.

Used by tests/test_crash.py (a short loop in CI) and runnable for a longer soak:

    python tests/crash_harness.py --iterations 50 --seed 1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script: make tests/support importable
    sys.path.insert(0, str(HERE))

from rig import Rig  # noqa: E402
from support import LoopbackHttpServer, MosquittoBroker  # noqa: E402
from support.gtfs_rt_builders import alert_entity, selector  # noqa: E402
from support.microblog_server import MicroblogServer, Platform  # noqa: E402

PLATFORMS: tuple[Platform, ...] = ("mastodon", "bluesky", "weibo", "webhook")


@dataclass
class CrashReport:
    iterations: int = 0
    kills: int = 0
    killed_with_work_pending: int = 0
    notices: int = 0
    queued: dict[str, int] = field(default_factory=dict)  # outbox rows per channel
    delivered: dict[str, int] = field(default_factory=dict)  # distinct posts on the platform
    duplicates: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    not_sent: dict[str, int] = field(default_factory=dict)  # outbox rows still pending or parked
    repeat_deliveries: int = 0  # webhook deliveries of a key already delivered (allowed: receivers dedupe)

    def line(self) -> str:
        return (
            f"{self.iterations} iterations, {self.kills} SIGKILLs ({self.killed_with_work_pending} with posts still"
            f" queued), {self.notices} notices; per channel queued/delivered/duplicates/missing: "
            + ", ".join(
                f"{c} {self.queued.get(c, 0)}/{self.delivered.get(c, 0)}/{self.duplicates.get(c, 0)}/"
                f"{self.missing.get(c, 0)}"
                for c in PLATFORMS
            )
            + f"; webhook repeat deliveries (deduplicated by receivers): {self.repeat_deliveries}"
        )

    @property
    def clean(self) -> bool:
        return not any(self.duplicates.values()) and not any(self.missing.values()) and not any(
            self.not_sent.values()
        )


#: The loop posts far faster than a real account may (100 kills make 400 notices in two minutes): past the
#: platforms' default budgets (Mastodon: 300 in 3 h) notices are merged and held for hours by design, which
#: budget tests cover. Here the budgets and the test server's own limits are lifted, so every notice is posted.
SOAK_BUDGET = [{"posts": 1_000_000, "seconds": 300}]


def channel_tables(server: MicroblogServer) -> list[dict[str, object]]:
    return [
        {"name": "mastodon", "kind": "mastodon", "url": server.url, "token": {"env": "T_MASTODON"},
         "languages": ["zh", "en"], "timeout_seconds": 2, "budget": SOAK_BUDGET},
        {"name": "bluesky", "kind": "bluesky", "url": server.url, "identifier": server.bluesky_identifier,
         "password": {"env": "T_BLUESKY"}, "languages": ["en"], "timeout_seconds": 2, "budget": SOAK_BUDGET},
        {"name": "weibo", "kind": "weibo", "url": server.url, "access_token": {"env": "T_WEIBO"},
         "languages": ["zh"], "timeout_seconds": 2},
        {"name": "webhook", "kind": "webhook", "url": server.webhook_url("ops"), "secret": {"env": "T_HOOK"},
         "languages": ["zh"], "timeout_seconds": 2},
    ]


def environment(server: MicroblogServer) -> dict[str, str]:
    env = dict(os.environ)
    env.update(T_MASTODON=server.mastodon_token, T_BLUESKY=server.bluesky_password,
               T_WEIBO=server.weibo_access_token, T_HOOK=server.webhook_secret or "")
    return env


def serve_alerts(rig: Rig, count: int) -> None:
    rig.serve_rt(*(
        alert_entity(f"A-{i:03d}", header={"zh": f"第{i}号通告：设备检修", "en": f"Notice {i}: maintenance"},
                     informed=[selector(route_id=str(1 + i % 3))])
        for i in range(count)
    ))


def pending_posts(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE status = 'pending' AND channel != 'mqtt'")
                   .fetchone()[0])


def total_queued(db: Path) -> int:
    """Every post ever queued (any status): it grows when a run commits new notices."""
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE channel != 'mqtt'").fetchone()[0])
        except sqlite3.OperationalError:  # the first run is still creating the schema
            return 0


def wait_for_pending(process: subprocess.Popen[bytes], db: Path, *, previous_total: int, timeout: float) -> None:
    """Wait (bounded) until the running broadcaster has committed new posts; fail if it exits first."""
    deadline = time.monotonic() + timeout
    while total_queued(db) <= previous_total:
        if process.poll() is not None:
            raise RuntimeError(f"broadcaster exited by itself with status {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"broadcaster committed no new notice within {timeout:.0f} s")
        time.sleep(0.01)  # a bounded look at the database: the process is another program, with no event to await


def crash_loop(
    workdir: Path, http: LoopbackHttpServer, broker: MosquittoBroker, server: MicroblogServer, *,
    iterations: int, seed: int, alerts_per_iteration: int = 4,
) -> CrashReport:
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    rig = Rig(workdir, http, broker.url, f"crash/{seed}")
    serve_alerts(rig, alerts_per_iteration)
    rig.serve_flow({"S04": "FEW_SEATS_AVAILABLE"})
    config = rig.write_config(channels=channel_tables(server))
    db = workdir / "state" / "broadcaster.db"
    env = environment(server)
    report = CrashReport(iterations=iterations)
    # Every platform answers slowly (150 ms), so the drain takes a while and a kill often lands mid-request.
    for platform in PLATFORMS:
        server.hang(platform, 0.15, count=10_000)
        server.set_rate_limit(platform, None)
    for i in range(iterations):
        serve_alerts(rig, alerts_per_iteration * (i + 1))  # new notices keep arriving between crashes
        process = subprocess.Popen(
            [sys.executable, "-m", "broadcaster", "--log-level", "error", "run", "-c", str(config)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            # The kill lands at a random moment after this run has committed its new notices, so it catches the
            # drain (a start-up slowed by a loaded machine must not turn every kill into one before any work).
            wait_for_pending(process, db, previous_total=total_queued(db), timeout=30)
            try:
                process.wait(timeout=rng.uniform(0.0, 0.8))  # it should not exit on its own
                raise RuntimeError(f"broadcaster exited by itself with status {process.returncode}")
            except subprocess.TimeoutExpired:
                pass
            if pending_posts(db):
                report.killed_with_work_pending += 1
        finally:  # a failed iteration must not leave a broadcaster running after the test
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        report.kills += 1
    for platform in PLATFORMS:
        server.clear_faults(platform)
    # A final, uninterrupted run delivers what is left.
    finished = subprocess.run(
        [sys.executable, "-m", "broadcaster", "--log-level", "warning", "once", "-c", str(config)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    if finished.returncode != 0:
        with sqlite3.connect(db) as conn:
            stuck = conn.execute(
                "SELECT channel, status, COUNT(*), MIN(next_attempt_at), MAX(attempts), MAX(error) FROM outbox"
                " WHERE status != 'sent' GROUP BY channel, status"
            ).fetchall()
        raise RuntimeError(f"final 'once' failed: {finished.stderr[-2000:]}; not sent: {stuck}")
    return audit(db, server, report)


#: The outbox rows `audit_rows` matches with the platforms' posts, and the notices counted; SQL both engines speak.
POSTS_QUERY = "SELECT channel, key, status, remote_id, payload FROM outbox WHERE channel != 'mqtt'"
NOTICES_QUERY = "SELECT COUNT(DISTINCT notice_id || version) FROM outbox"


def audit(db: Path, server: MicroblogServer, report: CrashReport) -> CrashReport:
    """`audit_rows` on the outbox of the SQLite database `db`."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(POSTS_QUERY).fetchall()
        report.notices = int(conn.execute(NOTICES_QUERY).fetchone()[0])
    return audit_rows(rows, server, report)


def audit_rows(rows: Sequence[Sequence[Any]], server: MicroblogServer, report: CrashReport) -> CrashReport:
    """Match every outbox row (`POSTS_QUERY`) with the post it made on its platform.

    Mastodon posts are matched by Idempotency-Key, Bluesky posts by the record URI the outbox stored, Weibo
    statuses by text (each notice's text is unique: it names the notice and carries an "as of" stamp) and
    webhook deliveries by Idempotency-Key. A post no row accounts for is a duplicate.
    """
    expected: dict[str, list[str]] = {c: [] for c in PLATFORMS}
    for channel, key, status, remote_id, payload in rows:
        payload = bytes(payload)
        if status != "sent":
            report.not_sent[channel] = report.not_sent.get(channel, 0) + 1
        if channel == "bluesky":
            expected[channel].append(orjson.loads(remote_id)["uri"] if remote_id else "")
        elif channel == "weibo":
            expected[channel].append(orjson.loads(payload)["text"])
        else:
            expected[channel].append(key)
    posted: dict[str, Counter[str]] = {
        "mastodon": Counter(s.idempotency_key or "" for s in server.mastodon_statuses()),
        "bluesky": Counter(p.uri for p in server.bluesky_posts()),
        "weibo": Counter(s.text for s in server.weibo_statuses()),
        "webhook": Counter(d.header("idempotency-key") or "" for d in server.webhook_deliveries("ops")),
    }
    for channel in PLATFORMS:
        wanted = Counter(expected[channel])
        report.queued[channel] = len(expected[channel])
        report.delivered[channel] = sum(posted[channel].values())
        report.missing[channel] = sum((wanted - posted[channel]).values())
        extra = sum((posted[channel] - wanted).values())
        if channel == "webhook":
            # Webhooks are at-least-once by contract: receivers deduplicate on Idempotency-Key.
            report.repeat_deliveries = extra
        else:
            report.duplicates[channel] = extra
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = MosquittoBroker(work / "mosquitto")
        broker.start()
        http = LoopbackHttpServer()
        http.start()
        server = MicroblogServer()
        server.start()
        started = time.monotonic()
        try:
            report = crash_loop(work / "run", http, broker, server, iterations=args.iterations, seed=args.seed)
        finally:
            server.stop(force=True)
            http.stop(force=True)
            broker.stop()
    print(report.line())
    print(f"took {time.monotonic() - started:.0f} s; {'clean' if report.clean else 'NOT CLEAN'}")
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
