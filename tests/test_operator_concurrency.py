"""Operator requests, polls and expiry running at once, on a real Mosquitto and a loopback Mastodon.

The operator's alerts and corrections are shared state: every change to them must be decided and committed
in one step, or two requests that overlap lose one of them (and the next expiry posts an all-clear for it).
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rig import Rig, SteppedClock, poll_all, running
from support import LoopbackHttpServer, MosquittoBroker, collect_retained
from support.microblog_server import MicroblogServer
from test_admin import SENTINEL, admin_config, api, bearer
from test_channels import SIGNAL, alert, channels, until

from broadcaster import desk
from broadcaster.config import DigestConfig
from broadcaster.model import Severity
from broadcaster.operator import OPERATOR_FEED, ManualNotice
from broadcaster.service import Broadcaster, PollOutcome


def mastodon_only(server: MicroblogServer) -> list[dict[str, Any]]:
    return [c for c in channels(server) if c["name"] == "mastodon"]


def streamed(b: Broadcaster) -> list[tuple[str, str]]:
    """(notice id, kind) of every notice committed for the MQTT notice stream, in order."""
    rows = b.db.conn.execute("SELECT payload FROM outbox WHERE channel = 'mqtt' ORDER BY created_at, key")
    return [(body["notice_id"], body["kind"]) for body in (orjson.loads(bytes(r[0])) for r in rows)]


def operator_ids_in_state(b: Broadcaster) -> set[str]:
    return {r.alert.id for r in b.state.alerts.values() if r.feed == OPERATOR_FEED}


async def test_twenty_concurrent_notices_through_the_api_all_stay_published_and_are_never_cleared(
    rig: Rig, server: MicroblogServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_ADMIN", SENTINEL)
    monkeypatch.setenv("T_ADMIN_OTHER", SENTINEL[::-1])
    until_at = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    bodies = [{"texts": {"zh": f"第{i:02d}号通知", "en": f"Notice N{i:02d}"}, "line_ids": ["1"], "severity": "INFO",
               "until": until_at} for i in range(20)]
    async with api(admin_config(rig, channels=mastodon_only(server))) as (b, http):
        await poll_all(b)
        answers = await asyncio.gather(*(http.post("/v1/notices", json=body, headers=bearer()) for body in bodies))
        assert [a.status_code for a in answers] == [201] * 20, [a.text for a in answers]
        ids = {a.json()["notice_id"] for a in answers}
        assert len(ids) == 20
        assert operator_ids_in_state(b) == {i.removeprefix("alert-") for i in ids}
        await b.expire_operator_notices()  # nothing has ended: nothing may resolve
        await b.expire_operator_notices()
        await poll_all(b)
        await until(lambda: b.pending() == 0, b)
        assert operator_ids_in_state(b) == {i.removeprefix("alert-") for i in ids}
        assert set(b.operator_alerts) == operator_ids_in_state(b)
        kinds = streamed(b)
        assert sorted(n for n, k in kinds if n in ids) == sorted(ids)  # each once, on the stream
        assert {k for n, k in kinds if n in ids} == {"alert_new"}  # never an update or an all-clear
        retained = await collect_retained(rig.mqtt_url, rig.topic("lines/1/alerts/#"))
    assert {t for t, p in retained.items() if p} == {rig.topic(f"lines/1/alerts/{i.removeprefix('alert-')}")
                                                     for i in ids}
    statuses = [s.text for s in server.mastodon_statuses()]
    assert len(statuses) == 20, statuses  # one post each, no all-clear
    for i in range(20):
        assert sum(f"N{i:02d}" in text for text in statuses) == 1, (i, statuses)


def notice(tag: str, *, until: datetime | None = None) -> ManualNotice:
    return ManualNotice(texts={"zh": f"通知{tag}", "en": f"Notice {tag}"}, line_ids=("1",), severity=Severity.INFO,
                        until=until)


FIXED = {"zh": "2号线部分列车晚点，并未停运", "en": "Line 2: some delays, not suspended"}


async def test_announce_correct_expire_and_polls_at_once_keep_every_change(rig: Rig) -> None:
    """Every operation of the desk at once with polls; each one's effect survives, once, and after a restart."""
    rig.serve_rt(alert(SIGNAL))
    clock = SteppedClock()
    config = rig.config()
    async with running(config, clock=clock) as b:
        await poll_all(b)
        ending = await b.announce(notice("ending", until=clock.now() + timedelta(minutes=10)))
        kept = await b.announce(notice("kept"))
        clock.offset += timedelta(minutes=20)  # `ending` is over
        rig.serve_rt(alert(SIGNAL), timestamp=int(clock.now().timestamp()))  # the feeds keep up with the clock
        rig.serve_flow({"S04": "FEW_SEATS_AVAILABLE"}, timestamp=int(clock.now().timestamp()))
        results = await asyncio.gather(
            *(b.announce(notice(f"new{i}")) for i in range(5)),
            b.expire_operator_notices(),
            b.correct("alert-A-L2", FIXED),
            b.correct(kept, {"zh": "更正：通知kept", "en": "Corrected: notice kept"}),
            *(b.poll(feed) for feed in config.feeds),
            b.expire_operator_notices(),
        )
        polls = [r for r in results if isinstance(r, PollOutcome)]
        assert [p.ok for p in polls] == [True, True]  # good polls: they ran the pipeline
        new_ids = {str(r) for r in results[:5]}
        expected = {i.removeprefix("alert-") for i in {*new_ids, kept}}
        await b.expire_operator_notices()
        await poll_all(b)
        assert operator_ids_in_state(b) == expected
        assert set(b.operator_alerts) == expected
        assert b.state.alerts["A-L2"].alert.header.texts == FIXED  # no poll undid the correction
        assert b.state.alerts[kept.removeprefix("alert-")].alert.header.get("en", "en") == "Corrected: notice kept"
        kinds = streamed(b)
        assert [k for n, k in kinds if n in new_ids] == ["alert_new"] * 5
        assert (ending, "alert_resolved") in kinds
        assert [k for n, k in kinds if n == "alert-A-L2"] == ["alert_new", "correction"]
        assert not any(k == "alert_resolved" and n != ending for n, k in kinds)
        await until(lambda: b.pending() == 0, b)
        before = len(kinds)
    async with running(config, clock=clock) as b:  # what was committed is what was decided
        assert set(b.operator_alerts) == expected
        await poll_all(b)
        await b.expire_operator_notices()
        assert streamed(b)[before:] == []
        assert b.state.alerts["A-L2"].alert.header.texts == FIXED
        retained = await collect_retained(rig.mqtt_url, rig.topic("lines/#"))
    alert_topics = {t.rsplit("/", 1)[1] for t, p in retained.items() if "/alerts/" in t and p}
    assert alert_topics == expected | {"A-L2"}


async def test_concurrent_announcements_from_the_desk_queue_are_each_committed_once(rig: Rig) -> None:
    """`broadcaster announce` requests carried out while the admin API announces too."""
    async with running(rig.config()) as b:
        await poll_all(b)
        for i in range(3):
            desk.submit(b.db, "announce", {"texts": {"en": f"Queued {i}"}, "line_ids": ["1"]})
        done, *ids = await asyncio.gather(b.process_requests(), *(b.announce(notice(f"api{i}")) for i in range(3)))
        assert done == 3
        queued = [r[0] for r in b.db.conn.execute("SELECT result FROM requests ORDER BY id")]
        await b.expire_operator_notices()
        assert operator_ids_in_state(b) == {str(i).removeprefix("alert-") for i in [*ids, *queued]}
        assert len(operator_ids_in_state(b)) == 6


OPERATIONS = ("announce", "announce", "announce", "expire", "expire", "correct-feed", "correct-operator", "poll-ops",
              "poll-flow", "digest-morning", "digest-evening")


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(OPERATIONS))
def test_any_interleaving_of_desk_operations_polls_and_digests_keeps_every_effect(
    order: list[str], http_server: LoopbackHttpServer, mosquitto: MosquittoBroker
) -> None:
    """The same operations as above (and two digests), started in an order hypothesis picks."""
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp), http_server, mosquitto.url, f"test/interleave-{uuid.uuid4().hex[:8]}")
        asyncio.run(_interleave(rig, order))


async def _interleave(rig: Rig, order: list[str]) -> None:
    clock = SteppedClock()
    rig.serve_rt(alert(SIGNAL))
    rig.serve_flow({"S04": "FEW_SEATS_AVAILABLE"})
    config = rig.config()
    async with running(config, clock=clock) as b:
        await poll_all(b)
        ending = await b.announce(notice("ending", until=clock.now() + timedelta(minutes=10)))
        kept = await b.announce(notice("kept"))
        clock.offset += timedelta(minutes=20)
        rig.serve_rt(alert(SIGNAL), timestamp=int(clock.now().timestamp()))
        rig.serve_flow({"S04": "FEW_SEATS_AVAILABLE"}, timestamp=int(clock.now().timestamp()))
        slot = datetime.combine(clock.now().astimezone(config.zone).date(), datetime.min.time().replace(hour=12),
                                tzinfo=config.zone)
        announced: list[str] = []

        async def announce() -> None:
            announced.append(await b.announce(notice(f"n{len(announced)}-{uuid.uuid4().hex[:6]}")))

        operations: dict[str, Callable[[], Awaitable[object]]] = {
            "announce": announce,
            "expire": b.expire_operator_notices,
            "correct-feed": lambda: b.correct("alert-A-L2", FIXED),
            "correct-operator": lambda: b.correct(kept, {"en": "Corrected: notice kept"}),
            "poll-ops": lambda: b.poll(config.feeds[0]),
            "poll-flow": lambda: b.poll(config.feeds[1]),
            "digest-morning": lambda: b.digest(DigestConfig(name="morning"), slot),
            "digest-evening": lambda: b.digest(DigestConfig(name="evening"), slot),
        }
        await asyncio.gather(*(operations[name]() for name in order))
        await b.expire_operator_notices()
        expected = {i.removeprefix("alert-") for i in {*announced, kept}}
        assert len(announced) == 3
        assert operator_ids_in_state(b) == expected
        assert set(b.operator_alerts) == expected
        assert b.state.alerts["A-L2"].alert.header.texts == FIXED
        assert b.state.alerts[kept.removeprefix("alert-")].alert.header.get("en") == "Corrected: notice kept"
        kinds = streamed(b)
        assert [k for n, k in kinds if n in announced] == ["alert_new"] * 3
        assert [n for n, k in kinds if k == "alert_resolved"] == [ending]
        assert {k.split(":")[0] for k in b.digests.marks} == {"morning", "evening"}
