"""Failover soak: two `broadcaster run` instances on one PostgreSQL database, notices flowing to the loopback
platforms and MQTT, the leader SIGKILLed at random moments again and again (the new leader killed in its turn,
each killed one restarted as a standby). Afterwards every notice is on every platform exactly once, the MQTT
notice stream carries each notice one way only, every retained topic shows the latest state, and every takeover
was timed.

Used by tests/test_ha_failover_soak.py (20 kills in CI) and runnable for a longer soak (docs/ha.md):

    python tests/ha_soak.py --kills 100 --seed 1 [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script: make tests/support importable
    sys.path.insert(0, str(HERE))

from crash_harness import (  # noqa: E402
    NOTICES_QUERY,
    PLATFORMS,
    POSTS_QUERY,
    CrashReport,
    audit_rows,
    channel_tables,
    environment,
)
from rig import Rig, now_s  # noqa: E402
from support import LoopbackHttpServer, MessageRecorder, MosquittoBroker, collect_retained  # noqa: E402
from support.gtfs_rt_builders import alert_entity, selector  # noqa: E402
from support.ha_cluster import HaCluster, LeaseSettings, SharedDatabase, Takeover  # noqa: E402
from support.microblog_server import MicroblogServer  # noqa: E402
from support.postgres import PASSWORD, PostgresServer  # noqa: E402

if TYPE_CHECKING:
    from support.mqtt_client import ReceivedMessage

ARTIFACTS = HERE.parent / "test-artifacts"
#: The soak's lease: takeovers cost about 2 s instead of the default 15 s (the same code, shorter waits).
SOAK_LEASE = LeaseSettings(lease_seconds=2.0, renew_seconds=0.5, margin_seconds=0.5, statement_timeout_seconds=0.4)
#: How often the instances poll the feeds: a change is committed within about this long.
POLL_SECONDS = 0.5
LINES = ("1", "2", "3")


class AlertFeed:
    """The GTFS-RT alerts the soak serves. Every round adds alerts, revises one and drops one, so new, updated and
    resolved notices all flow; the feed's timestamp only ever grows."""

    def __init__(self, rig: Rig, rng: random.Random) -> None:
        self.rig = rig
        self.rng = rng
        self.revisions: dict[str, int] = {}  # served alert id -> its revision
        self.dropped: set[str] = set()
        self.made = 0
        self.timestamp = now_s()

    @staticmethod
    def line(alert_id: str) -> str:
        return LINES[int(alert_id.removeprefix("A-")) % len(LINES)]

    @staticmethod
    def header(alert_id: str, revision: int) -> dict[str, str]:
        number = int(alert_id.removeprefix("A-"))
        return {"zh": f"第{number}号通告（第{revision}版）：设备检修",
                "en": f"Notice {number}, revision {revision}: maintenance"}

    def step(self, *, new: int = 3) -> None:
        """One round's changes, served at once."""
        if len(self.revisions) > 4:
            revised = self.rng.choice(sorted(self.revisions))
            self.revisions[revised] += 1
            gone = self.rng.choice(sorted(set(self.revisions) - {revised}))
            del self.revisions[gone]
            self.dropped.add(gone)
        for _ in range(new):
            self.revisions[f"A-{self.made:04d}"] = 1
            self.made += 1
        self.serve()

    def serve(self) -> None:
        self.timestamp = max(self.timestamp + 1, now_s())  # never backwards, never the same for other content
        self.rig.serve_rt(*(
            alert_entity(alert_id, header=self.header(alert_id, revision),
                         informed=[selector(route_id=self.line(alert_id))])
            for alert_id, revision in sorted(self.revisions.items())
        ), timestamp=self.timestamp)


@dataclass
class SoakReport:
    kills: int = 0
    seed: int = 0
    lease: dict[str, float] = field(default_factory=dict)
    takeovers: list[dict[str, Any]] = field(default_factory=list)
    killed_with_work_pending: int = 0
    notices: int = 0
    #: Per CrashReport count (queued, delivered, duplicates, missing, not_sent), per platform.
    posts: dict[str, dict[str, int]] = field(default_factory=dict)
    mqtt_notices: int = 0
    mqtt_missing: list[str] = field(default_factory=list)  # notices in the outbox never seen on the stream
    mqtt_phantoms: list[str] = field(default_factory=list)  # on the stream, but never committed
    mqtt_conflicting: list[str] = field(default_factory=list)  # one notice, two different payloads
    channels_disagree: dict[str, int] = field(default_factory=dict)  # notices missing from a channel's outbox
    retained_topics: int = 0
    retained_wrong: list[str] = field(default_factory=list)
    unexpected_exits: dict[str, list[int]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def takeover_seconds(self) -> list[float]:
        return [t["seconds"] for t in self.takeovers]

    @property
    def duplicates(self) -> int:
        return sum(self.posts.get("duplicates", {}).values())

    @property
    def losses(self) -> int:
        return (sum(self.posts.get("missing", {}).values()) + sum(self.posts.get("not_sent", {}).values())
                + len(self.mqtt_missing) + sum(self.channels_disagree.values()))

    @property
    def clean(self) -> bool:
        return (self.duplicates == 0 and self.losses == 0 and not self.mqtt_phantoms and not self.mqtt_conflicting
                and not self.retained_wrong and not self.unexpected_exits)

    def line(self) -> str:
        times = self.takeover_seconds
        published = [t["first_publish_seconds"] for t in self.takeovers if t.get("first_publish_seconds")]
        took = (f"takeover median {statistics.median(times):.2f} s, max {max(times):.2f} s"
                if times else "no takeover")
        if published:
            took += (f" (the new leader's first MQTT publish: median {statistics.median(published):.2f} s,"
                     f" max {max(published):.2f} s)")
        return (f"{self.kills} SIGKILLs of the leader ({self.killed_with_work_pending} with posts queued), {took}"
                f" (lease {self.lease.get('lease_seconds')} s, renew {self.lease.get('renew_seconds')} s, margin"
                f" {self.lease.get('margin_seconds')} s); {self.notices} notices, {sum(self.posts['queued'].values())}"
                f" posts checked on {len(PLATFORMS)} platforms: {self.duplicates} duplicates, {self.losses} lost;"
                f" MQTT: {self.mqtt_notices} notices, {len(self.mqtt_phantoms)} never committed,"
                f" {len(self.mqtt_conflicting)} conflicting; {self.retained_topics} retained topics,"
                f" {len(self.retained_wrong)} wrong; {self.seconds:.0f} s")

    def to_json(self) -> dict[str, Any]:
        times = self.takeover_seconds
        return {**asdict(self), "duplicates": self.duplicates, "losses": self.losses, "clean": self.clean,
                "takeover_median_seconds": statistics.median(times) if times else None,
                "takeover_max_seconds": max(times) if times else None}


def write_instance_config(http: LoopbackHttpServer, broker_url: str, prefix: str, server: MicroblogServer,
                          directory: Path) -> Path:
    """One instance's config: the rig's feeds (polled every POLL_SECONDS) and the four platforms."""
    rig = Rig(directory, http, broker_url, prefix)
    return rig.write_config(channels=channel_tables(server), feeds={"poll_seconds": POLL_SECONDS})


async def soak(
    workdir: Path, http: LoopbackHttpServer, broker: MosquittoBroker, server: MicroblogServer,
    postgres: PostgresServer, database: str, *, kills: int, seed: int, lease: LeaseSettings = SOAK_LEASE,
) -> SoakReport:
    """Run the soak and audit what reached the platforms and the broker."""
    started = time.monotonic()
    rng = random.Random(seed)
    prefix = f"ha-soak/{seed}-{database}"
    feed = AlertFeed(Rig(workdir, http, broker.url, prefix), rng)
    feed.rig.serve_flow({"S04": "FEW_SEATS_AVAILABLE"})
    feed.step()
    # Every platform answers after 100 ms, so a kill often lands mid-request. Mastodon and Bluesky make the post
    # at once and only hold the answer (the old leader's post landed, the new leader must not post it again: the
    # Idempotency-Key and the record key do not depend on the instance); Weibo and the webhook make it only if
    # the sender is still there when the answer is due.
    for platform in PLATFORMS:
        server.set_rate_limit(platform, None)
        server.hang(platform, 0.1, count=100_000, commit=platform in ("mastodon", "bluesky"))
    report = SoakReport(seed=seed, lease=asdict(lease))
    cluster = HaCluster(
        workdir, lambda _, d: write_instance_config(http, broker.url, prefix, server, d),
        database_url=postgres.url(database), password=PASSWORD, lease=lease, env=environment(server))
    async with cluster, SharedDatabase(postgres.conninfo(database)) as db, \
            MessageRecorder(broker.url, f"{prefix}/#", retain_as_published=True, timeout=10) as recorder:
        await cluster.start_all()
        leader, _ = await cluster.wait_for_leader(timeout=60)
        total = 0
        restarts: dict[str, float] = {}  # instance -> when it was restarted, until it answers as a standby
        for _ in range(kills):
            # New notices keep arriving; the standby (the instance killed last time) starts up meanwhile.
            feed.step()
            await standbys_ready(cluster, leader, restarts, report)  # the kill must find a standby ready
            total = await db.wait_for_commit(cluster, total, timeout=30)
            await asyncio.sleep(rng.uniform(0.0, 0.6))  # a random moment of the drain
            pending = (await db.outbox_counts())[1]
            killed_at = await cluster.kill(leader)
            await cluster.start(leader)  # as its supervisor would: it comes back as a standby
            restarts[leader] = time.monotonic()
            new_leader, answer = await cluster.wait_for_leader(timeout=30)
            report.takeovers.append({**asdict(Takeover(leader, new_leader, answer.at - killed_at, pending)),
                                     "killed_at": killed_at})
            report.killed_with_work_pending += pending > 0
            report.kills += 1
            leader = new_leader
        await standbys_ready(cluster, leader, restarts, report)
        await db.wait_until_drained(timeout=60)
        try:
            await converged(recorder, feed, prefix, leader, timeout=30)
        except AssertionError as exc:  # reported with the rest of the audit, not instead of it
            report.retained_wrong.append(str(exc))
        report.unexpected_exits = cluster.unexpected_exits()
        messages = (await recorder.settle(quiet=1.0, timeout=30))
        first_publishes(report, messages, f"{prefix}/v1/broadcaster/status")
        await audit(report, db, server, messages, prefix)
        retained = await collect_retained(broker.url, f"{prefix}/v1/#", timeout=30)
        report.retained_topics = len(retained)
        roles = {name: role or "offline" for name, role in (await cluster.roles()).items()}
        report.retained_wrong += retained_problems(retained, messages, feed, prefix, roles)
    report.seconds = time.monotonic() - started
    return report


def first_publishes(report: SoakReport, messages: list[ReceivedMessage], status_topic: str) -> None:
    """For each takeover, the seconds from the kill to the new leader's `online` on the status topic (its first
    publish: it opens its session with it, before the full retained republish)."""
    for takeover in report.takeovers:
        killed_at = takeover.pop("killed_at")
        takeover["first_publish_seconds"] = next(
            (m.received_at - killed_at for m in messages if m.topic == status_topic and m.received_at > killed_at
             and orjson.loads(m.payload or b"{}").get("leader") == takeover["new_leader"]
             and orjson.loads(m.payload).get("status") == "online"), None)


async def standbys_ready(cluster: HaCluster, leader: str, restarts: dict[str, float], report: SoakReport) -> None:
    """Wait until every restarted instance but the leader answers as a standby; note how long its start took."""
    for name in cluster.instances:
        if name != leader and (restarted_at := restarts.pop(name, None)) is not None:
            ready = await cluster.wait_for_role(name, "standby", timeout=60)
            report.takeovers[-1]["restart_to_standby"] = ready.at - restarted_at


def latest_alerts(messages: list[ReceivedMessage], prefix: str) -> dict[str, bytes]:
    """The last payload seen on every alert topic."""
    return {m.topic: m.payload for m in messages if m.topic.startswith(f"{prefix}/v1/lines/")
            and "/alerts/" in m.topic}


def alert_problems(alerts: dict[str, bytes], feed: AlertFeed, prefix: str) -> list[str]:
    """Alert topics that do not show the feed's latest state: each served alert's latest revision, nothing else."""
    problems = []
    for alert_id, revision in feed.revisions.items():
        topic = f"{prefix}/v1/lines/{feed.line(alert_id)}/alerts/{alert_id}"
        payload = alerts.get(topic, b"")
        if not payload:
            problems.append(f"{topic}: missing")
        elif orjson.loads(payload)["header"].get("en") != feed.header(alert_id, revision)["en"]:
            problems.append(f"{topic}: {orjson.loads(payload)['header']} is not revision {revision}")
    served = {f"{prefix}/v1/lines/{feed.line(a)}/alerts/{a}" for a in feed.revisions}
    problems += [f"{topic}: still shown, the alert was dropped" for topic, payload in alerts.items()
                 if payload and topic not in served]
    return problems


async def converged(recorder: MessageRecorder, feed: AlertFeed, prefix: str, leader: str, timeout: float) -> None:  # noqa: ASYNC109
    """Wait until the published alert topics show the feed's latest state."""
    try:
        await recorder.wait_for(lambda ms: not alert_problems(latest_alerts(list(ms), prefix), feed, prefix),
                                timeout=timeout)
    except TimeoutError:
        problems = alert_problems(latest_alerts(recorder.messages, prefix), feed, prefix)
        raise AssertionError(f"the alert topics did not converge within {timeout} s (leader {leader}):"
                             f" {problems[:10]}") from None


def presence_topic(prefix: str, instance: str) -> str:
    return f"{prefix}/v1/broadcaster/status/instances/{instance}"


def retained_problems(retained: dict[str, bytes], messages: list[ReceivedMessage], feed: AlertFeed, prefix: str,
                      roles: dict[str, str]) -> list[str]:
    """What a fresh subscriber reads that is not the latest state, given each instance's role now (`roles`).

    Alert topics: exactly the served alerts, each at its latest revision. Line statuses: the served alerts of
    the line. Every topic with a `seq`: the highest `seq` published on it during the whole soak (a former leader's
    late publish would bring back an older one). The status topic: online, naming the leader. Each instance's
    presence topic: its role (a Will of a killed run must not land after the restarted run said `standby`)."""
    problems = alert_problems({t: p for t, p in retained.items() if "/alerts/" in t}, feed, prefix)
    for line in LINES:
        topic = f"{prefix}/v1/lines/{line}/status"
        wanted = sorted(a for a in feed.revisions if feed.line(a) == line)
        if topic not in retained:
            problems.append(f"{topic}: missing")
        elif sorted(orjson.loads(retained[topic])["alert_ids"]) != wanted:
            problems.append(f"{topic}: alert_ids {orjson.loads(retained[topic])['alert_ids']}, served {wanted}")
    highest: dict[str, int] = defaultdict(int)
    for m in messages:
        if m.payload and m.payload.startswith(b"{") and (seq := orjson.loads(m.payload).get("seq")) is not None:
            highest[m.topic] = max(highest[m.topic], int(seq))
    for topic, payload in retained.items():
        seq = orjson.loads(payload).get("seq") if payload.startswith(b"{") else None
        if seq is not None and int(seq) != highest[topic]:
            problems.append(f"{topic}: seq {seq}, but {highest[topic]} was published")
    leaders = [name for name, role in roles.items() if role == "leader"]
    status = orjson.loads(retained.get(f"{prefix}/v1/broadcaster/status", b"{}"))
    if status.get("status") != "online" or [status.get("leader")] != leaders:
        problems.append(f"broadcaster/status: {status}, the instances' roles: {roles}")
    for name, role in roles.items():
        presence = orjson.loads(retained.get(presence_topic(prefix, name), b"{}"))
        if presence.get("role") != role:
            problems.append(f"{presence_topic(prefix, name)}: {presence}, the instance is {role}")
    return problems


async def audit(report: SoakReport, db: SharedDatabase, server: MicroblogServer, messages: list[ReceivedMessage],
                prefix: str) -> None:
    """Every post on its platform exactly once (crash_harness.audit_rows), every notice on every channel's
    outbox, and the MQTT notice stream: each committed notice seen, one payload per notice, none uncommitted."""
    rows = await db.rows(POSTS_QUERY)
    (count,), = await db.rows(NOTICES_QUERY)
    notices = await db.rows("SELECT DISTINCT channel, notice_id, version FROM outbox")
    mqtt_rows = await db.rows("SELECT payload FROM outbox WHERE channel = 'mqtt'")
    report.notices = int(count)
    posts = audit_rows(rows, server, CrashReport(kills=report.kills))
    report.posts = {"queued": posts.queued, "delivered": posts.delivered, "duplicates": posts.duplicates,
                    "missing": posts.missing, "not_sent": posts.not_sent,
                    "repeat_deliveries": {"webhook": posts.repeat_deliveries}}
    by_channel: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for channel, notice_id, version in notices:
        by_channel[channel].add((notice_id, version))
    every = set().union(*by_channel.values()) if by_channel else set()
    report.channels_disagree = {c: len(every - seen) for c, seen in by_channel.items() if every - seen}
    committed = {_notice_key(bytes(p)): bytes(p) for (p,) in mqtt_rows}
    seen: dict[str, set[bytes]] = defaultdict(set)
    for m in messages:
        if m.topic == f"{prefix}/v1/notices":
            seen[_notice_key(m.payload)].add(m.payload)
    report.mqtt_notices = len(seen)
    report.mqtt_missing = sorted(set(committed) - set(seen))
    report.mqtt_phantoms = sorted(set(seen) - set(committed))
    report.mqtt_conflicting = sorted(k for k, payloads in seen.items() if len(payloads) > 1)


def _notice_key(payload: bytes) -> str:
    notice = orjson.loads(payload)
    return f"{notice['notice_id']}@{notice['version']}"


def record(report: SoakReport, name: str = "ha-soak.json") -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


async def _main(kills: int, seed: int, keep: Path | None) -> SoakReport:
    with tempfile.TemporaryDirectory() as tmp:
        work = keep or Path(tmp)  # with --keep the instances' logs and configs stay there
        broker = MosquittoBroker(work / "mosquitto")
        broker.start()
        http = LoopbackHttpServer()
        http.start()
        server = MicroblogServer()
        server.start()
        postgres = PostgresServer().start()
        try:
            return await soak(work / "run", http, broker, server, postgres, postgres.create_database("soak"),
                              kills=kills, seed=seed)
        finally:
            postgres.remove()
            server.stop(force=True)
            http.stop(force=True)
            broker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="a new directory for the instances' logs, kept afterwards")
    args = parser.parse_args()
    report = asyncio.run(_main(args.kills, args.seed, args.keep))
    print(report.line())
    print(f"recorded in {record(report, f'ha-soak-{args.kills}.json')}; {'clean' if report.clean else 'NOT CLEAN'}")
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
