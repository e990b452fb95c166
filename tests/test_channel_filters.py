"""Channel filters (issue 17): a channel takes only the notices about its `lines` and `stations`, at or above its
`min_severity`, or only emergencies; a network-wide notice reaches every channel; a filtered channel's digest
covers only its lines; `check` refuses unknown ids; `preview` shows where each notice goes.

The end-to-end tests run the real pipeline against one loopback Mastodon server per account and a real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rig import Rig, payloads, poll_all, running
from support import MessageRecorder
from support.gtfs_rt_builders import alert_entity, selector
from support.microblog_fixture import MicroblogServer, serve_microblog
from support.tiny_network import tiny_network
from test_channels import until
from test_config import FEED, write_config
from test_operator import local

from broadcaster.cli import main
from broadcaster.compose import Notice, NoticeKind, Priority
from broadcaster.compose.routing import route_of
from broadcaster.config import DigestConfig, WebhookChannelConfig, load_config
from broadcaster.errors import ConfigError
from broadcaster.model import Network, Severity
from broadcaster.operator import ManualNotice
from broadcaster.preview import preview, render_for_people
from broadcaster.runner import open_broadcaster

NETWORK = tiny_network()
T = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def notice(kind: NoticeKind = NoticeKind.ALERT_NEW, *, lines: tuple[str, ...] = (), stations: tuple[str, ...] = (),
           severity: Severity = Severity.WARNING, emergency: bool = False,
           audience: frozenset[str] | None = None) -> Notice:
    return Notice(f"n-{kind.value}", "v1", kind, Priority.EMERGENCY if emergency else Priority.NORMAL, T, lines,
                  stations, severity, {}, emergency=emergency, audience=audience)


def hook(**filters: Any) -> WebhookChannelConfig:
    return WebhookChannelConfig(name="h", kind="webhook", url="https://h.example", **filters)


# -- The rule, against a straightforward reference -------------------------------------------------------------

def reference_takes(channel: WebhookChannelConfig, n: Notice, network: Network) -> bool:
    """The documented rule (docs/channels.md), written out plainly, walking lines to their stations."""
    if n.kind.value not in channel.notices:
        return False
    if n.audience is not None:
        return True  # routed already (a digest slot, a late correction): only the kind counts
    if channel.min_severity is not None and n.severity < Severity[channel.min_severity] and not n.emergency:
        return False  # an emergency passes whatever severity the feed gave it
    if channel.emergencies_only and not n.emergency:
        return False
    if not channel.lines and not channel.stations:
        return True
    if not n.line_ids and not n.station_ids:
        return True  # network-wide
    for station in n.station_ids:
        if station in channel.stations:
            return True
    for line in n.line_ids:
        if line in channel.lines:
            return True
        line_wide = not n.station_ids
        if line_wide and any(station in network.stations_of(line) for station in channel.stations):
            return True
    return False


LINES = sorted(NETWORK.lines)
STATIONS = sorted(NETWORK.stations)
SEVERITIES = [Severity.UNKNOWN_SEVERITY, Severity.INFO, Severity.WARNING, Severity.SEVERE]


def _ids(pool: list[str]) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(st.sampled_from(pool), unique=True, max_size=len(pool)).map(tuple)


channels_st = st.builds(
    hook,
    notices=st.lists(st.sampled_from([k.value for k in NoticeKind]), unique=True, min_size=1).map(tuple),
    lines=_ids(LINES), stations=_ids(STATIONS),
    min_severity=st.none() | st.sampled_from(["INFO", "WARNING", "SEVERE"]),
    emergencies_only=st.booleans(),
)
notices_st = st.builds(notice, st.sampled_from(list(NoticeKind)), lines=_ids(LINES), stations=_ids(STATIONS),
                       severity=st.sampled_from(SEVERITIES), emergency=st.booleans(),
                       audience=st.none() | st.just(frozenset({"h", "mqtt"})))


@settings(max_examples=400, deadline=None)
@given(channel=channels_st, n=notices_st)
def test_the_filter_takes_exactly_what_the_documented_rule_says(channel: WebhookChannelConfig, n: Notice) -> None:
    assert route_of(channel, NETWORK).takes(n) == reference_takes(channel, n, NETWORK)


@settings(max_examples=200, deadline=None)
@given(channel=channels_st, severity=st.sampled_from(SEVERITIES), emergency=st.booleans())
def test_a_network_wide_notice_passes_every_line_and_station_filter(
    channel: WebhookChannelConfig, severity: Severity, emergency: bool
) -> None:
    everywhere = notice(lines=(), stations=(), severity=severity, emergency=emergency)
    unfiltered = channel.model_copy(update={"lines": (), "stations": ()})
    assert route_of(channel, NETWORK).takes(everywhere) == route_of(unfiltered, NETWORK).takes(everywhere)


def test_the_rule_on_the_cases_an_operator_asks_about() -> None:
    line_1 = route_of(hook(lines=("L1",)), NETWORK)
    assert line_1.takes(notice(lines=("L1",)))
    assert not line_1.takes(notice(lines=("L2",)))
    assert line_1.takes(notice(lines=("L1", "L2")))  # an alert on both lines
    assert line_1.takes(notice())  # network-wide: "the whole network stops" reaches a line's riders
    interchange = route_of(hook(stations=("S02",)), NETWORK)  # S02 is served by L1 and L2
    assert interchange.takes(notice(lines=("L2",)))  # line-wide: every station of L2, S02 included
    assert interchange.takes(notice(lines=("L1",), stations=("S02",)))
    assert not interchange.takes(notice(lines=("L1",), stations=("S01",)))  # another station of L1
    assert not route_of(hook(stations=("S04",)), NETWORK).takes(notice(lines=("L1",)))  # S04: L2 only
    severe = route_of(hook(min_severity="SEVERE"), NETWORK)
    assert not severe.takes(notice(severity=Severity.WARNING))
    assert severe.takes(notice(severity=Severity.SEVERE))
    # A line suspended (NO_SERVICE) is an emergency whatever severity the feed gave it, often none at all: a
    # channel for serious matters must not miss it.
    warnings = route_of(hook(min_severity="WARNING"), NETWORK)
    assert warnings.takes(notice(severity=Severity.UNKNOWN_SEVERITY, emergency=True))
    assert severe.takes(notice(severity=Severity.WARNING, emergency=True))
    assert not warnings.takes(notice(severity=Severity.UNKNOWN_SEVERITY))
    emergencies = route_of(hook(emergencies_only=True), NETWORK)
    assert emergencies.takes(notice(severity=Severity.WARNING, emergency=True))  # NO_SERVICE at WARNING
    assert not emergencies.takes(notice(severity=Severity.SEVERE, emergency=False))
    assert not emergencies.takes(notice(NoticeKind.DIGEST, severity=Severity.INFO))


# -- Config: clear errors naming the key -------------------------------------------------------------------------

@pytest.mark.parametrize(("setting", "key", "message"), [
    ('min_severity = "HIGH"', "channels[0].min_severity", "Input should be 'INFO', 'WARNING' or 'SEVERE'"),
    ('min_severity = "severe"', "channels[0].min_severity", "Input should be 'INFO', 'WARNING' or 'SEVERE'"),
    ('lines = "1"', "channels[0].lines", "must be a list (a string was given)"),
    ("stations = [4]", "channels[0].stations[0]", "Input should be a valid string (a number was given)"),
    ('lines = ["1", "2", "1"]', "channels[0].lines", "lines[2] repeats lines[0]"),
    ('stations = ["S04", "S04"]', "channels[0].stations", "stations[1] repeats stations[0]"),
    ('lines = [""]', "channels[0].lines[0]", "String should have at least 1 character"),
    ('emergencies_only = "sometimes"', "channels[0].emergencies_only", "Input should be a valid boolean"),
])
def test_a_bad_filter_value_is_refused_naming_the_key(tmp_path: Path, setting: str, key: str, message: str) -> None:
    path = write_config(tmp_path, FEED + '\n[[channels]]\nname = "h"\nkind = "webhook"\nurl = "https://h.example"\n'
                        + setting + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == key
    assert caught.value.message.startswith(message), caught.value.message


UNKNOWN = ('\n[[channels]]\nname = "l1"\nkind = "webhook"\nurl = "https://h.example"\nlines = ["1"]\n'
           '\n[[channels]]\nname = "odd"\nkind = "webhook"\nurl = "https://h.example"\nlines = ["3", "9"]\n'
           'stations = ["S04", "S04-1A"]\n')


def test_check_reports_each_unknown_line_and_station_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, FEED + UNKNOWN)
    assert main(["check", "--offline", "-c", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert f"broadcaster: {path}: channels[1].lines[1]: no line of the network has this id (route ids: 1, 2, 3)" \
        in err
    assert any(line.startswith(f"broadcaster: {path}: channels[1].stations[1]: no station of the network has this"
                               " id (name stations, not their platforms; station ids: S01, S02") for line in err)
    assert len([line for line in err if "of the network has this id" in line]) == 2


def test_run_once_and_preview_refuse_a_config_naming_an_unknown_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, FEED + UNKNOWN)
    for command in ("once", "run", "preview"):
        assert main([command, "-c", str(path)]) == 2
        assert capsys.readouterr().err.startswith(f"broadcaster: {path}: channels[1].lines[1]: no line of the")
    async def start() -> None:
        async with open_broadcaster(load_config(path)):
            pass

    with pytest.raises(ConfigError) as caught:
        asyncio.run(start())
    assert caught.value.key == "channels[1].lines[1]"
    assert not (tmp_path / "state").exists()  # refused before the state directory was touched


def test_check_shows_each_channels_filter_where_samples_go_and_a_line_no_channel_hears(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    only = ('\n[[channels]]\nname = "l1"\nkind = "webhook"\nurl = "https://h.example"\nlines = ["1"]\n'
            'notices = ["alert_new", "alert_resolved"]\n'
            '\n[[channels]]\nname = "urgent"\nkind = "webhook"\nurl = "https://h.example"\nemergencies_only = true\n'
            '\n[[channels]]\nname = "l2"\nkind = "webhook"\nurl = "https://h.example"\nlines = ["2"]\n')
    assert main(["check", "--offline", "-c", str(write_config(tmp_path, FEED + only))]) == 0
    out = capsys.readouterr().out
    assert "channel 'l1' takes: alert_new, alert_resolved; lines 1" in out
    assert "channel 'urgent' takes: " in out
    assert "; the whole network; emergencies only" in out
    # The samples are on line 1 and its first station.
    assert "sample alert_new (alert-sample-1) goes to: l1, urgent\n" in out  # SEVERE: an emergency by default
    assert "sample crowding (crowding-S01) goes to: NO CHANNEL (only the MQTT notice stream)" in out
    assert "sample digest (digest-digest) goes to: l2\n" in out  # a digest of its own line; l1 takes no digest
    assert "warning: no channel posts an ordinary alert (WARNING) about line '3' (3)" in out
    assert "about line '1'" not in out
    assert "about line '2'" not in out


# -- End to end: per-line accounts, an emergencies-only account, digests -----------------------------------------

ACCOUNTS = ("l1", "l2", "l3", "urgent")


@contextlib.contextmanager
def mastodon_accounts(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, MicroblogServer]]:
    """One loopback Mastodon instance per account, each with its own token in T_<ACCOUNT>."""
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in ACCOUNTS:
            servers[name] = stack.enter_context(contextlib.contextmanager(serve_microblog)(
                mastodon_token=f"token-{name}"))
            monkeypatch.setenv(f"T_{name.upper()}", f"token-{name}")
        yield servers


def per_line_channels(servers: dict[str, MicroblogServer]) -> list[dict[str, Any]]:
    def account(name: str, **filters: Any) -> dict[str, Any]:
        return {"name": name, "kind": "mastodon", "url": servers[name].url, "token": {"env": f"T_{name.upper()}"},
                "languages": ["zh", "en"], "timeout_seconds": 2, "digest_mode": "always", **filters}

    return [account("l1", lines=["1"]), account("l2", lines=["2"]), account("l3", lines=["3"]),
            account("urgent", emergencies_only=True)]


def texts(server: MicroblogServer) -> list[str]:
    return [status.text for status in server.mastodon_statuses()]


LINE_1 = alert_entity("A-L1", header={"zh": "甲线信号故障", "en": "Signal fault A"}, informed=[selector(route_id="1")],
                      cause="TECHNICAL_PROBLEM", effect="SIGNIFICANT_DELAYS", severity="WARNING")
LINE_2 = alert_entity("A-L2", header={"zh": "乙线车辆故障", "en": "Train fault B"}, informed=[selector(route_id="2")],
                      cause="TECHNICAL_PROBLEM", effect="SIGNIFICANT_DELAYS", severity="WARNING")
LINE_3_STOPS = alert_entity("A-L3", header={"zh": "丙线停运", "en": "Service C suspended"},
                            informed=[selector(route_id="3")], cause="TECHNICAL_PROBLEM", effect="NO_SERVICE",
                            severity="WARNING")  # an emergency by its effect, not by its severity
INTERCHANGE = alert_entity("A-S04", header={"zh": "丁站电梯维修", "en": "Lift works D"},
                           informed=[selector(stop_id="S04")], cause="MAINTENANCE", effect="ACCESSIBILITY_ISSUE",
                           severity="INFO")  # S04 is served by lines 1 and 2


async def test_each_notice_is_posted_only_where_it_belongs_digests_included(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    with mastodon_accounts(monkeypatch) as servers:
        config = rig.config(channels=per_line_channels(servers), digests=[{"name": "lines"}])
        rig.serve_rt(LINE_1, LINE_2, LINE_3_STOPS, INTERCHANGE)
        async with running(config) as b, MessageRecorder(rig.mqtt_url, rig.topic("notices")) as stream:
            await poll_all(b)
            await b.announce(ManualNotice({"zh": "全网暂停运营", "en": "The whole network is closed"},
                                          severity=Severity.SEVERE, effect="NO_SERVICE"))  # names no line
            targets = await b.digest(config.digests[0], local(8, 0))
            await until(lambda: b.pending() == 0, b)
            streamed = await stream.wait_for(lambda got: len(got) >= 6)  # 4 alerts, the announcement, 1 digest
        posted = {name: texts(server) for name, server in servers.items()}

    def about(name: str, marker: str) -> bool:
        return any(marker in text for text in posted[name])

    expected = {"l1": {"甲线", "丁站", "全网暂停"}, "l2": {"乙线", "丁站", "全网暂停"}, "l3": {"丙线", "全网暂停"},
                "urgent": {"丙线", "全网暂停"}}
    for name, markers in expected.items():
        for marker in ("甲线", "乙线", "丙线", "丁站", "全网暂停"):
            assert about(name, marker) == (marker in markers), (name, marker, posted[name])
    assert targets == ["l1", "l2", "l3", "mqtt"]  # not "urgent": it takes no digest
    digests = {name: [t for t in posted[name] if "运营快报" in t] for name in ACCOUNTS}
    assert digests["urgent"] == []  # a digest is no emergency
    for name, line, others in (("l1", "1号线", ("2号线", "3号线")), ("l2", "2号线", ("1号线", "3号线")),
                               ("l3", "3号线", ("1号线", "2号线"))):
        [digest] = digests[name]
        assert line in digest, digest
        assert not any(other in digest for other in others), digest
    assert len(posted["l1"]) == 4
    assert len(posted["l2"]) == 4
    assert len(posted["l3"]) == 3
    assert len(posted["urgent"]) == 2
    # The MQTT notice stream is not filtered: it carries every notice and the whole network's digest.
    kinds = sorted(p["kind"] for p in payloads(streamed))
    assert kinds.count("alert_new") == 5
    assert kinds.count("digest") == 1


async def test_on_change_digests_judge_each_channels_own_lines(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    with mastodon_accounts(monkeypatch) as servers:
        tables = [{**table, "digest_mode": "on-change"} for table in per_line_channels(servers)[:3]]
        config = rig.config(channels=tables, digests=[{"name": "lines", "channels": ["l1", "l2", "l3"]}])
        digest: DigestConfig = config.digests[0]
        async with running(config) as b:
            await poll_all(b)
            assert await b.digest(digest, local(8, 0)) == ["l1", "l2", "l3"]
            assert await b.digest(digest, local(8, 15)) == []  # nothing changed anywhere
            rig.serve_rt(LINE_2)
            await poll_all(b)
            assert await b.digest(digest, local(8, 30)) == ["l2"]  # only line 2 changed
            marks = dict(b.digests.marks)
            await until(lambda: b.pending() == 0, b)
        async with running(config) as b:  # the marks survive a restart
            assert b.digests.marks == marks
            await poll_all(b)
            assert await b.digest(digest, local(8, 45)) == []
            await until(lambda: b.pending() == 0, b)
        digests = {name: [t for t in texts(server) if "运营快报" in t] for name, server in servers.items()}
    assert len(digests["l1"]) == 1
    assert len(digests["l3"]) == 1
    assert len(digests["l2"]) == 2
    assert "乙线车辆故障" in digests["l2"][1]
    assert "1号线" not in digests["l2"][1]


async def test_a_correction_of_a_resolved_emergency_goes_where_the_emergency_went(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    with mastodon_accounts(monkeypatch) as servers:
        config = rig.config(channels=per_line_channels(servers))
        rig.serve_rt(LINE_3_STOPS)
        async with running(config) as b:
            await poll_all(b)
            rig.serve_rt()
            for _ in range(config.state.resolve_after_missing):
                await poll_all(b)
            assert "A-L3" not in b.pipeline.state.alerts  # resolved: the correction is a notice of its own
            await b.correct("alert-A-L3", {"zh": "丙线更正：仅部分区段停运", "en": "Correction C: part only"})
            await until(lambda: b.pending() == 0, b)
        corrected = {name: any("丙线更正" in text for text in texts(server)) for name, server in servers.items()}
    assert corrected == {"l1": False, "l2": False, "l3": True, "urgent": True}


async def test_a_channel_that_posted_an_alert_hears_its_updates_and_all_clear_whatever_its_filter(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An alert that moves from line 1 to line 2 and is downgraded: line 1's account, and an account taking only
    SEVERE notices, posted it, so they hear how it ends; line 2's account hears of it from the update on."""
    with mastodon_accounts(monkeypatch) as servers:
        tables = per_line_channels(servers)[:2]
        tables.append({**per_line_channels(servers)[3], "emergencies_only": False, "min_severity": "SEVERE"})
        config = rig.config(channels=tables)

        def moving(route_id: str, severity: str) -> Any:
            return alert_entity("A-MOVE", header={"zh": f"戊线故障{severity}", "en": f"Fault E {severity}"},
                                informed=[selector(route_id=route_id)], cause="TECHNICAL_PROBLEM",
                                effect="SIGNIFICANT_DELAYS", severity=severity)

        async with running(config) as b:
            rig.serve_rt(moving("1", "SEVERE"))
            await poll_all(b)
            rig.serve_rt(moving("2", "WARNING"))  # now on line 2 only, and less severe
            await poll_all(b)
            rig.serve_rt()
            for _ in range(config.state.resolve_after_missing):
                await poll_all(b)
            await until(lambda: b.pending() == 0, b)
        statuses = {name: server.mastodon_statuses() for name, server in servers.items()}
    kinds = {name: ["end" if s.text.startswith("【恢复】") else "SEVERE" if "SEVERE" in s.text else "WARNING"
                    for s in statuses[name]] for name in ("l1", "l2", "urgent")}
    assert kinds == {"l1": ["SEVERE", "WARNING", "end"], "l2": ["WARNING", "end"],
                     "urgent": ["SEVERE", "WARNING", "end"]}
    for name in ("l1", "urgent"):  # one thread: the update and the all-clear answer the first post
        _first, *replies = statuses[name]
        assert all(reply.in_reply_to_id is not None for reply in replies), name


# -- preview: where each notice goes, and a notice no channel takes ----------------------------------------------

def test_preview_shows_the_channels_of_each_notice_and_one_that_no_channel_takes(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    tables: list[dict[str, Any]] = [{"name": name, "kind": "webhook", "url": "https://h.example", "lines": [line]}
              for name, line in (("line-1", "1"), ("line-2", "2"))]
    tables.append({"name": "urgent", "kind": "webhook", "url": "https://h.example", "emergencies_only": True})
    rig.serve_rt(LINE_1, LINE_3_STOPS, INTERCHANGE,
                 alert_entity("A-L3B", header={"zh": "丙线限速", "en": "Slow C"}, informed=[selector(route_id="3")],
                              cause="WEATHER", effect="SIGNIFICANT_DELAYS", severity="WARNING"))
    config = rig.config(channels=tables)
    report = asyncio.run(preview(config))
    routes = {notice.split()[0]: channels for notice, channels in report.routes.items()}
    assert routes == {"alert-A-L1": ["line-1"], "alert-A-L3": ["urgent"], "alert-A-S04": ["line-1", "line-2"],
                      "alert-A-L3B": []}
    assert [n.split()[0] for n in report.unrouted()] == ["alert-A-L3B"]
    text = render_for_people(report)
    assert "where each notice goes" in text
    [line] = [line for line in text.splitlines() if "alert-A-L3B" in line and "->" in line]
    assert line.endswith("-> NO CHANNEL takes it; only the MQTT notice stream carries it")
    assert main(["preview", "-c", str(rig.config_path)]) == 0
    err = capsys.readouterr().err
    assert "broadcaster: notice alert-A-L3B " in err
    assert "reaches no channel" in err
    assert "alert-A-L1 " not in err


async def test_taking_a_notices_posts_down_touches_only_the_channels_that_carried_it(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A correction with `delete_originals` queues a deletion only where the notice was posted; that deletion is
    no post of the notice, so the accounts that never carried it do not hear its all-clear afterwards."""
    with mastodon_accounts(monkeypatch) as servers:
        config = rig.config(channels=per_line_channels(servers))
        rig.serve_rt(LINE_1)
        async with running(config) as b:
            await poll_all(b)
            await until(lambda: b.pending() == 0, b)
            await b.correct("alert-A-L1", {"zh": "甲线更正：仅限速", "en": "Correction A: slow only"},
                            delete_originals=True)
            await until(lambda: b.pending() == 0, b)
            rig.serve_rt()
            for _ in range(config.state.resolve_after_missing):
                await poll_all(b)
            await until(lambda: b.pending() == 0, b)
            queued = {name: b.history.issued(name, "alert-A-L1") for name in ACCOUNTS}
        posted = {name: texts(server) for name, server in servers.items()}
        deleted = {name: server.deleted()[0] for name, server in servers.items()}
    assert posted["l2"] == posted["l3"] == posted["urgent"] == []
    assert len(posted["l1"]) == 2  # the correction and the all-clear stay up; the alert itself was taken down
    assert any(text.startswith("【恢复】") for text in posted["l1"])
    assert len(deleted["l1"]) == 1
    assert deleted["l2"] == deleted["l3"] == deleted["urgent"] == []
    assert queued == {"l1": True, "l2": False, "l3": False, "urgent": False}


async def test_an_account_hears_how_an_alert_goes_on_only_for_the_episode_it_posted(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A feed reuses an alert id: first on line 1, resolved, later on line 2. Line 1's account posted the first
    episode only, so the second episode's update and all-clear are not its to post (nor to thread under the
    first episode's post); line 2's account posts the whole second episode."""
    with mastodon_accounts(monkeypatch) as servers:
        config = rig.config(channels=per_line_channels(servers)[:2])

        def reused(route_id: str, header: str) -> Any:
            return alert_entity("A-REUSED", header={"zh": header, "en": header}, informed=[selector(route_id=route_id)],
                                cause="TECHNICAL_PROBLEM", effect="SIGNIFICANT_DELAYS", severity="WARNING")

        async with running(config) as b:
            # The first episode on line 1; the second on line 2, with an update.
            for episode in ([reused("1", "己线故障")], [reused("2", "庚线故障"), reused("2", "庚线故障加剧")]):
                for version in episode:
                    rig.serve_rt(version)
                    await poll_all(b)
                rig.serve_rt()
                for _ in range(config.state.resolve_after_missing):
                    await poll_all(b)
                await until(lambda: b.pending() == 0, b)
            await b.correct("alert-A-REUSED", {"zh": "庚线更正", "en": "Correction G"})  # of the second episode
            await until(lambda: b.pending() == 0, b)
        posted = {name: texts(server) for name, server in servers.items()}
    assert not any("庚线" in text for text in posted["l1"]), posted["l1"]
    assert len(posted["l1"]) == 2  # the first episode: its alert and its all-clear
    assert len(posted["l2"]) == 4  # the second: its alert, update and all-clear, and the correction
    assert "庚线更正" in posted["l2"][-1]


def test_a_filtered_digest_names_the_lines_that_run_normally_in_every_language() -> None:
    """docs/channels.md: for a filtered channel the built-in digest says which lines run normally, not "all
    lines": a rider reading line 1's account in English must not take it for the whole network."""
    from zoneinfo import ZoneInfo

    from broadcaster.compose import ComposePolicy, compose_digest
    from broadcaster.messages import render_text
    from broadcaster.render import Renderer
    from broadcaster.state import NetworkState

    policy = ComposePolicy(timezone=ZoneInfo("Asia/Shanghai"))
    renderer = Renderer()
    for lines in (("L1",), ("L1", "L2")):
        digest = compose_digest(NetworkState(), name="d", network=NETWORK, slot=T, policy=policy, lines=lines)
        for language in ("zh", "en"):
            text = render_text(renderer, digest, language)
            names = [NETWORK.lines[line].names.get(language) for line in lines]
            assert all(name in text for name in names), (language, text)
            assert "all lines" not in text, text
            assert "全网" not in text, text
    whole = compose_digest(NetworkState(), name="d", network=NETWORK, slot=T, policy=policy)
    assert "good service on all lines" in render_text(renderer, whole, "en")


async def test_a_correction_of_a_digest_the_notice_stream_never_had_goes_where_the_digest_went(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A digest whose `channels` leave the MQTT notice stream out: its correction still goes only to the account
    that posted it, not to every account as if it were a network-wide notice."""
    with mastodon_accounts(monkeypatch) as servers:
        config = rig.config(channels=per_line_channels(servers), digests=[{"name": "lines", "channels": ["l1"]}])
        async with running(config) as b:
            await poll_all(b)
            assert await b.digest(config.digests[0], local(8, 0)) == ["l1"]
            await until(lambda: b.pending() == 0, b)
            await b.correct("digest-lines", {"zh": "快报更正", "en": "Digest corrected"})
            await until(lambda: b.pending() == 0, b)
        corrected = {name: any("快报更正" in text for text in texts(server)) for name, server in servers.items()}
    assert corrected == {"l1": True, "l2": False, "l3": False, "urgent": False}
