"""`preview` runs the real pipeline (issue 13, item 2): on a throw-away copy of the state, with channels that
record, so what it shows agrees with what `run` would do next: a correction the operator made stays corrected,
an operator's notice is not taken for a feed's, a quiet window holds a post, and the state is left untouched."""

from __future__ import annotations

import hashlib
from contextlib import closing
from datetime import timedelta

from rig import Rig, poll_all, running
from support import collect_retained
from support.microblog_server import MicroblogServer
from test_channels import SIGNAL, alert, until
from test_operator import tables

from broadcaster import desk
from broadcaster.model import Severity
from broadcaster.operator import ManualNotice
from broadcaster.preview import preview, render_for_people
from broadcaster.store import Database

WRONG = {"zh": "2号线全线停运", "en": "Line 2 suspended"}
FIXED = {"zh": "2号线部分列车晚点，并未停运", "en": "Line 2: some delays, not suspended"}


async def test_preview_keeps_a_correction_and_the_operators_notice_as_run_does(
    rig: Rig, server: MicroblogServer
) -> None:
    rig.serve_rt(alert(WRONG, effect="NO_SERVICE", severity="SEVERE"))
    config = rig.config(channels=tables(server))
    async with running(config) as b:
        await poll_all(b)
        await b.correct("alert-A-L2", FIXED, author="duty-officer")
        await b.announce(ManualNotice(line_ids=("2",), texts={"zh": "末班车延后", "en": "Last trains later"},
                                      severity=Severity.INFO, author="duty-officer"))
        await until(lambda: b.pending() == 0, b)
        operator_alerts = set(b.operator_alerts)
    assert operator_alerts
    requests_before = len(server.requests())
    database = config.database_path
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    retained = await collect_retained(rig.mqtt_url, rig.topic("#"))
    report = await preview(config)  # the feed still says "suspended"
    assert await collect_retained(rig.mqtt_url, rig.topic("#")) == retained
    # As `run`: the correction holds while the feed sends the version it corrected, and the operator's notice is
    # not resolved for being absent from the feed; so nothing is to be posted at all.
    assert report.feeds == {"ops": "ok", "flow": "ok"}
    assert report.notices == [], report.notices
    assert [p for p in report.posts if p.channel != "mqtt"] == []
    assert not any(WRONG["en"] in str(body) or WRONG["zh"] in str(body) for body in report.mqtt.values())
    assert len(server.requests()) == requests_before
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before


async def test_preview_shows_a_post_a_quiet_window_would_hold_and_until_when(
    rig: Rig, server: MicroblogServer
) -> None:
    quiet = tables(server)
    quiet[0]["quiet"] = [{"start": "00:00", "end": "23:59"}]  # Mastodon is quiet all day
    rig.serve_rt(alert(SIGNAL))
    report = await preview(rig.config(channels=quiet))
    mastodon = [p for p in report.posts if p.channel == "mastodon"]
    bluesky = [p for p in report.posts if p.channel == "bluesky"]
    assert mastodon
    assert all(p.held_until is not None for p in mastodon)
    assert bluesky
    assert all(p.held_until is None for p in bluesky)
    assert {p.notice_id for p in mastodon} == {p.notice_id for p in bluesky}
    mastodon_rows = [line for line in render_for_people(report).splitlines() if "│ mastodon" in line]
    assert mastodon_rows
    assert all("held" in row for row in mastodon_rows)


async def test_preview_tells_a_runs_backlog_from_what_this_poll_would_post(rig: Rig, server: MicroblogServer) -> None:
    """Mastodon was down while the service ran: its post waits in the outbox. Preview shows that post, marked as
    queued earlier, and lists as notices only what its own poll produced (the feed now says more)."""
    config = rig.config(channels=tables(server)[:1])
    rig.serve_rt(alert(SIGNAL))
    server.set_down("mastodon")
    async with running(config) as b:
        await poll_all(b)
        await until(lambda: b.history.depth().get(("mqtt", "sent")) == 1, b)
    rig.serve_rt(alert(SIGNAL), alert(WRONG, alert_id="A-L3", effect="NO_SERVICE", severity="SEVERE"))
    report = await preview(config)
    mastodon = [p for p in report.posts if p.channel == "mastodon"]
    assert {(p.notice_id, p.queued_earlier) for p in mastodon} == {("alert-A-L2", True), ("alert-A-L3", False)}
    assert [n.split()[0] for n in report.notices] == ["alert-A-L3"]
    assert "queued" in render_for_people(report)  # the table folds "(queued earlier)" within its column


async def test_preview_ends_an_operator_notice_whose_time_has_passed_as_run_would(
    rig: Rig, server: MicroblogServer
) -> None:
    """`run` ends an operator notice when its `until` passes; preview, asked about a later time, shows that
    all-clear (before: it never ran the expiry, so the notice looked as if it would stay)."""
    config = rig.config(channels=tables(server)[:1])
    async with running(config) as b:
        now = b.clock.now()
        later = {"zh": "末班车延后", "en": "Last trains later"}
        notice_id = await b.announce(ManualNotice(line_ids=("2",), texts=later, severity=Severity.INFO,
                                                  until=now + timedelta(hours=1)))
        await until(lambda: b.pending() == 0, b)
    report = await preview(config, now=now + timedelta(hours=2))
    assert [n.split()[0] for n in report.notices] == [notice_id]
    assert any(p.channel == "mastodon" and p.notice_id == notice_id for p in report.posts)
    assert report.notices[0].split()[1].startswith("resolved")


async def test_preview_carries_out_a_queued_request_only_in_its_copy(rig: Rig, server: MicroblogServer) -> None:
    """A request the command line queued for the service shows in preview, and stays queued: neither the state
    database nor the audit log of the real state directory learns of it (found in review: preview's run of the
    request appended an `announce` line to the real audit log)."""
    config = rig.config(channels=tables(server)[:1])
    async with running(config) as b:
        request_id = desk.submit(b.db, "announce", {"texts": {"en": "Exit B closed"}, "line_ids": ["2"]})
    audit = config.state.directory / "audit.log"
    before = audit.read_bytes() if audit.exists() else b""
    report = await preview(config)
    assert any(n.startswith("alert-manual-") for n in report.notices)
    assert (audit.read_bytes() if audit.exists() else b"") == before
    with closing(Database(config.database_path)) as db:
        assert [r.id for r in desk.pending(db)] == [request_id]
