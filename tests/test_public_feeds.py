"""The public site's Atom feeds (docs/commuters.md, "Atom feeds") on real parts: a broadcaster run by
`runner.serve` with its `[public]` site on a loopback port, feeds and the broker from the rig, httpx as the
reader. Every feed read is checked against RFC 4287 (`support.atom_checker`)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import html
import json
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urljoin

import httpx
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from rig import NETWORK_DIR, Rig, SteppedClock, toml_value
from support import free_port
from support.atom_checker import atom_problems
from support.gtfs_rt_builders import alert_entity, selector
from support.tiny_network import tiny_network

from broadcaster.config import Config, load_config
from broadcaster.model import Alert, InformedEntity, LocalizedText, Severity
from broadcaster.outbox import Outbox, OutgoingMessage
from broadcaster.public.conditional import is_fresh, none_match, not_modified_since, strong_etag
from broadcaster.public.feed_items import NETWORK, RecentNotice, Scope, ScopeKind, Touches
from broadcaster.runner import open_broadcaster, serve
from broadcaster.service import Broadcaster, Clock

ATOM = "{http://www.w3.org/2005/Atom}"
SUSPENDED_L2 = {"zh": "2号线因设备故障暂停运营", "en": "Line 2 suspended: equipment fault"}
T = TypeVar("T")


def public_config(rig: Rig, port: int, **public: Any) -> Config:
    section: dict[str, Any] = {"listen": f"127.0.0.1:{port}", **public}
    path = rig.write_config()
    path.write_text(path.read_text(encoding="utf-8") + "\n[public]\n" + "".join(
        f"{k} = {toml_value(v)}\n" for k, v in section.items()), encoding="utf-8")
    return load_config(path)


def line2_alert(header: dict[str, str] | None = None, alert_id: str = "A-L2") -> Any:
    return alert_entity(alert_id, header=header or SUSPENDED_L2, informed=[selector(route_id="2")],
                        cause="TECHNICAL_PROBLEM", effect="NO_SERVICE", severity="SEVERE")


async def wait_until_serving(http: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10):
        while True:
            with contextlib.suppress(httpx.ConnectError):
                await http.get("/feeds/")
                return
            await asyncio.sleep(0.05)


@dataclass
class Site:
    b: Broadcaster
    http: httpx.AsyncClient
    base: str

    async def feed(self, path: str, **headers: str) -> httpx.Response:
        answer = await self.http.get(path, headers=headers)
        if answer.status_code == 200:
            assert atom_problems(answer.content) == [], path
        return answer


@contextlib.asynccontextmanager
async def running_site(
    rig: Rig, clock: Clock | None = None, config: Config | None = None, **public: Any
) -> AsyncIterator[Site]:
    """`broadcaster run`'s `serve` with the public site (`config`'s, else the rig's with `public`); its first poll
    round done."""
    if config is None:
        config = public_config(rig, free_port(), **public)
    assert config.public is not None
    port = config.public.port
    stop = asyncio.Event()
    async with open_broadcaster(config, clock=clock) as b:
        task = asyncio.create_task(serve(b, stop, grace=2))
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=5) as http:
                await wait_until_serving(http)
                await b.poll_round()  # what serve's first round does, awaited here
                yield Site(b, http, base)
        finally:
            stop.set()
            async with asyncio.timeout(15):
                await task


def entries(body: bytes) -> list[ET.Element]:
    return ET.fromstring(body).findall(f"{ATOM}entry")


def titles(body: bytes) -> list[str]:
    return [e.findtext(f"{ATOM}title") or "" for e in entries(body)]


def terms(entry: ET.Element) -> set[str]:
    return {c.get("term", "") for c in entry.findall(f"{ATOM}category")}


# -- what each feed holds --------------------------------------------------------------------------------------


async def test_an_alert_on_line_2_is_in_the_network_line_2_and_its_stations_feeds_and_every_feed_validates(
    rig: Rig,
) -> None:
    rig.serve_rt(line2_alert())
    async with running_site(rig) as site:
        network = await site.feed("/feeds/network.atom")
        line2 = await site.feed("/feeds/lines/2.atom")
        line1 = await site.feed("/feeds/lines/1.atom")
        s10 = await site.feed("/feeds/stations/S10.atom")  # on line 2 only
        s01 = await site.feed("/feeds/stations/S01.atom")  # on line 1 only
        english = await site.feed("/feeds/lines/2.atom?lang=en")
        assert [a.status_code for a in (network, line2, line1, s10, s01, english)] == [200] * 6
        headline = SUSPENDED_L2["zh"]
        for answer in (network, line2, s10):
            current = [e for e in entries(answer.content) if "alert" in terms(e)]
            assert [e.findtext(f"{ATOM}title") for e in current] == [headline]
            assert "emergency" in terms(current[0])
            links = [(link.get("rel"), link.get("href")) for link in current[0].findall(f"{ATOM}link")]
            assert links == [("alternate", f"{site.base}/?line=2&lang=zh")]  # the commuter page, line 2 picked
            notices = [e for e in entries(answer.content) if "alert_new" in terms(e)]
            assert len(notices) == 1
            assert headline in (notices[0].findtext(f"{ATOM}content") or "")
        assert entries(line1.content) == []
        assert entries(s01.content) == []
        assert SUSPENDED_L2["en"] in titles(english.content)
        assert ET.fromstring(english.content).get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
        assert line2.headers["content-type"] == "application/atom+xml; charset=utf-8"
        assert line2.headers["cache-control"] == "public, max-age=30"
        # Every feed the site has, in every language, validates (issue 17: "the per-line Atom feeds validate").
        for lang in ("zh", "en"):
            for folder, ids in (("lines", site.b.network.lines), ("stations", site.b.network.stations)):
                for scope_id in ids:
                    answer = await site.feed(f"/feeds/{folder}/{quote(scope_id, safe='')}.atom?lang={lang}")
                    assert answer.status_code == 200


async def test_a_resolved_alert_leaves_the_current_alerts_and_its_notices_stay(rig: Rig) -> None:
    rig.serve_rt(line2_alert())
    async with running_site(rig) as site:
        before = await site.feed("/feeds/lines/2.atom")
        alert_entry = next(e for e in entries(before.content) if "alert" in terms(e))
        rig.serve_rt()
        for _ in range(2):  # state.resolve_after_missing = 2 in the rig
            await site.b.poll_round()
        after = await site.feed("/feeds/lines/2.atom")
        kinds = [terms(e) for e in entries(after.content)]
        assert not any("alert" in k for k in kinds)
        assert any("alert_resolved" in k for k in kinds)
        assert any("alert_new" in k for k in kinds)
        ids = {e.findtext(f"{ATOM}id") for e in entries(after.content)}
        assert alert_entry.findtext(f"{ATOM}id") not in ids
        newest = max(e.findtext(f"{ATOM}updated") or "" for e in entries(after.content))
        assert ET.fromstring(after.content).findtext(f"{ATOM}updated") == newest


async def test_recent_notices_are_the_latest_few_within_the_window_and_current_alerts_stay(rig: Rig) -> None:
    clock = SteppedClock()
    rig.serve_rt(line2_alert())
    # feed_days = 0.01: a window of 14.4 minutes
    async with running_site(rig, clock, feed_notices=1, feed_days=0.01) as site:
        rig.serve_rt(line2_alert({"zh": "2号线恢复部分运营", "en": "Line 2 partly running again"}))
        await site.b.poll_round()
        kinds = [terms(e) for e in entries((await site.feed("/feeds/lines/2.atom")).content)]
        assert [k for k in kinds if "alert" not in k] == [{"alert_updated", "emergency"}]  # the newest notice only
        clock.offset += timedelta(minutes=16)  # past the window, which moves a minute at a time
        later = entries((await site.feed("/feeds/lines/2.atom")).content)
        assert [terms(e) for e in later] == [{"alert", "NO_SERVICE", "emergency"}]  # the alert is still current


async def test_entry_ids_and_the_etag_are_the_same_after_a_restart(rig: Rig) -> None:
    rig.serve_rt(line2_alert())
    base_url = "https://metro.example"  # the site's links name it, not the test's free port
    async with running_site(rig, base_url=base_url) as site:
        first = await site.feed("/feeds/network.atom")
    async with running_site(rig, base_url=base_url) as site:
        second = await site.feed("/feeds/network.atom")
    assert [e.findtext(f"{ATOM}id") for e in entries(first.content)] == [
        e.findtext(f"{ATOM}id") for e in entries(second.content)]
    assert len(entries(first.content)) == 2
    assert first.headers["etag"] == second.headers["etag"]


# -- HTTP ------------------------------------------------------------------------------------------------------


async def test_conditional_get_answers_304_until_the_content_changes(rig: Rig) -> None:
    rig.serve_rt(line2_alert())
    async with running_site(rig) as site:
        first = await site.feed("/feeds/lines/2.atom")
        etag, modified = first.headers["etag"], first.headers["last-modified"]
        assert etag == strong_etag(first.content)
        assert not etag.startswith("W/")
        again = await site.feed("/feeds/lines/2.atom", **{"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == "public, max-age=30"
        for header in (f'"other", {etag}', f"W/{etag}", "*"):
            assert (await site.feed("/feeds/lines/2.atom", **{"If-None-Match": header})).status_code == 304
        assert (await site.feed("/feeds/lines/2.atom", **{"If-None-Match": '"other"'})).status_code == 200
        assert (await site.feed("/feeds/lines/2.atom", **{"If-Modified-Since": modified})).status_code == 304
        # If-None-Match takes precedence: a stale tag gets the feed whatever the date says.
        stale = await site.feed("/feeds/lines/2.atom", **{"If-None-Match": '"old"', "If-Modified-Since": modified})
        assert stale.status_code == 200
        rig.serve_rt(line2_alert({"zh": "2号线恢复部分运营", "en": "Line 2 partly running again"}))
        await site.b.poll_round()
        changed = await site.feed("/feeds/lines/2.atom", **{"If-None-Match": etag})
        assert changed.status_code == 200
        assert changed.headers["etag"] != etag
        assert "2号线恢复部分运营" in titles(changed.content)
        # Line 1's feed did not change: its tag still holds.
        line1 = await site.feed("/feeds/lines/1.atom")
        assert (await site.feed("/feeds/lines/1.atom", **{"If-None-Match": line1.headers["etag"]})).status_code == 304


async def test_head_answers_the_headers_of_get_without_a_body(rig: Rig) -> None:
    rig.serve_rt(line2_alert())
    async with running_site(rig) as site:
        got = await site.http.get("/feeds/network.atom")
        head = await site.http.head("/feeds/network.atom")
        assert head.status_code == 200
        assert head.content == b""
        for name in ("etag", "last-modified", "content-type", "cache-control", "content-length"):
            assert head.headers[name] == got.headers[name], name


async def test_unknown_ids_and_languages_get_a_plain_404_and_links_are_absolute(rig: Rig) -> None:
    async with running_site(rig, base_url="https://metro.example/updates") as site:
        for path, says in (("/feeds/lines/99.atom", 'line "99"'), ("/feeds/stations/S99.atom", 'station "S99"'),
                           ("/feeds/lines/.atom", 'line ""'), ("/feeds/network.atom?lang=fr", '"fr"')):
            answer = await site.http.get(path)
            assert answer.status_code == 404, path
            assert answer.headers["content-type"].startswith("text/plain")
            assert says in answer.text
            assert "There is no" in answer.text
        feed = ET.fromstring((await site.feed("/feeds/stations/S04.atom?lang=en")).content)
        links = {(link.get("rel"), link.get("type"), link.get("hreflang")): link.get("href")
                 for link in feed.findall(f"{ATOM}link")}
        assert links[("self", "application/atom+xml", None)] == \
            "https://metro.example/updates/feeds/stations/S04.atom?lang=en"
        assert links[("alternate", "text/html", None)] == "https://metro.example/updates/?station=S04&lang=en"
        assert links[("alternate", "application/atom+xml", "zh")] == \
            "https://metro.example/updates/feeds/stations/S04.atom"
    async with running_site(rig) as site:  # no base_url: the request's own
        feed = ET.fromstring((await site.feed("/feeds/network.atom")).content)
        self_link = next(link for link in feed.findall(f"{ATOM}link") if link.get("rel") == "self")
        assert self_link.get("href") == f"{site.base}/feeds/network.atom"
        # Another Host: the same feed under that address, with its own tag (the body differs by the links only).
        other = await site.feed("/feeds/network.atom", Host="feeds.example:8443")
        assert b'href="http://feeds.example:8443/feeds/network.atom"' in other.content
        assert other.headers["etag"] == strong_etag(other.content)
        assert other.headers["etag"] != (await site.feed("/feeds/network.atom")).headers["etag"]


async def test_the_index_lists_every_feed_with_autodiscovery_links(rig: Rig) -> None:
    async with running_site(rig) as site:
        index = await site.http.get("/feeds/")
        assert index.status_code == 200
        assert index.headers["content-type"].startswith("text/html")
        assert f'<link rel="alternate" type="application/atom+xml" href="{site.base}/feeds/network.atom"' in index.text
        assert f'href="{site.base}/feeds/lines/2.atom?lang=en"' in index.text
        for station_id in site.b.network.stations:
            assert f'href="{site.base}/feeds/stations/{station_id}.atom"' in index.text
            assert f'href="{site.base}/feeds/stations/{station_id}.atom?lang=en"' in index.text
        assert f'href="{site.base}/feeds/index.opml"' in index.text
        opml = await site.http.get("/feeds/index.opml")
        assert opml.headers["content-type"] == "text/x-opml; charset=utf-8"
        outlines = ET.fromstring(opml.content).findall("body/outline/outline")
        network = site.b.network
        assert len(outlines) == (1 + len(network.lines) + len(network.stations)) * 2
        for outline in outlines:  # every subscription answers a valid feed
            url = outline.get("xmlUrl", "")
            assert url.startswith(site.base)
            assert (await site.feed(url.removeprefix(site.base))).status_code == 200


async def test_concurrent_readers_during_polls_get_whole_feeds_whose_etag_matches_the_body(rig: Rig) -> None:
    rig.serve_rt(line2_alert())
    async with running_site(rig) as site:
        stop = asyncio.Event()
        seen: set[str] = set()

        async def reader(path: str) -> int:
            reads = 0
            while not stop.is_set():
                answer = await site.feed(path)
                assert answer.status_code == 200
                assert answer.headers["etag"] == strong_etag(answer.content)
                seen.add(answer.headers["etag"])
                reads += 1
            return reads

        async def polls() -> None:
            for n in range(8):
                rig.serve_rt(line2_alert({"zh": f"2号线第{n}次调整", "en": f"Line 2 change {n}"}))
                await site.b.poll_round()
            stop.set()

        async with asyncio.timeout(30):
            results = await asyncio.gather(polls(), *(reader(p) for p in ["/feeds/network.atom",
                                                                          "/feeds/lines/2.atom"] * 3))
        assert sum(r for r in results[1:] if r is not None) >= 6
        assert len(seen) >= 3  # the readers saw the feeds change while they read


# -- conditional GET, the rules alone ---------------------------------------------------------------------------

ETAG = '"0123abcd"'


@pytest.mark.parametrize(("header", "matches"), [
    ('"0123abcd"', True), ('W/"0123abcd"', True), ('"x", "0123abcd"', True), ('"a,b" , W/"0123abcd"', True),
    ("*", True), (' * ', True), ('"x"', False), ('"0123abcd', False), ("0123abcd", False), ('"a,"0123abcd""', False),
    ("", False),
    # RFC 9110, 5.6.1.2: a recipient accepts and ignores empty list elements.
    ('"x",,"0123abcd"', True), (', "0123abcd"', True), ('"x", , W/"0123abcd",', True), (",,", False),
])
def test_if_none_match_lists_weak_tags_and_star(header: str, matches: bool) -> None:
    assert none_match(header, ETAG) is matches


@given(tags=st.lists(st.text(alphabet=st.characters(min_codepoint=0x23, max_codepoint=0x7e), max_size=12),
                     max_size=5), weak=st.lists(st.booleans(), min_size=5, max_size=5), spaces=st.sampled_from(
                         [",", ", ", " ,\t"]))
def test_if_none_match_finds_our_tag_exactly_when_listed(tags: list[str], weak: list[bool], spaces: str) -> None:
    listed = [f'{"W/" if w else ""}"{t}"' for t, w in zip(tags, weak, strict=False)]
    assert none_match(spaces.join(listed), '"0123abcd"') is ("0123abcd" in tags)


def test_if_modified_since_and_precedence() -> None:
    from datetime import UTC, datetime

    modified = datetime(2026, 12, 3, 8, 0, 0, 500_000, tzinfo=UTC)
    assert not_modified_since("Thu, 03 Dec 2026 08:00:00 GMT", modified)
    assert not not_modified_since("Thu, 03 Dec 2026 07:59:59 GMT", modified)
    assert not not_modified_since("yesterday", modified)
    assert is_fresh(None, "Thu, 03 Dec 2026 09:00:00 GMT", ETAG, modified)
    assert not is_fresh('"other"', "Thu, 03 Dec 2026 09:00:00 GMT", ETAG, modified)


# -- any id, any text: a broadcaster and its site in a thread of their own, for hypothesis --------------------


class SiteThread:
    """`serve` with the public site in a thread and event loop of its own; `call` runs a coroutine there."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.b: Broadcaster | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        try:
            async with open_broadcaster(self.config) as b:
                self.b, self._loop, self._stop = b, asyncio.get_running_loop(), asyncio.Event()
                task = asyncio.create_task(serve(b, self._stop, grace=2))
                async with httpx.AsyncClient(base_url=f"http://{self.config.public.listen}",  # type: ignore[union-attr]
                                             trust_env=False, timeout=5) as http:
                    await wait_until_serving(http)
                self._ready.set()
                await task
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._ready.set()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=20)

    @contextlib.contextmanager
    def running(self) -> Iterator[SiteThread]:
        self._thread.start()
        assert self._ready.wait(20), self._error
        assert self._error is None, self._error
        try:
            yield self
        finally:
            assert self._loop is not None
            assert self._stop is not None
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(20)


HOSTILE = ["]]>", "<script>alert(1)</script>", "&amp;", "\x00\x01\x1b[31m", "\u202e", "שלום עולם", "مرحبا",
           "🚇🚨👩‍👩‍👧", "地铁二号线", "\ufffe\uffff", "\r\n", "'\"", "ｆｕｌｌ"]
texts = st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=12)), min_size=1, max_size=6).map("".join)


def _fetch(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", trust_env=False, timeout=5)


def test_any_alert_text_gives_valid_feeds_that_carry_it(rig: Rig) -> None:
    port = free_port()
    with SiteThread(public_config(rig, port)).running() as site:
        assert site.b is not None
        b = site.b

        @settings(max_examples=25, deadline=None)
        @given(zh=texts, en=texts)
        @example(zh="]]><script>alert(1)</script>", en="\u202eשלום 🚇\x00")
        def check(zh: str, en: str) -> None:
            rig.serve_rt(line2_alert({"zh": zh, "en": en}))
            site.call(b.poll_round())
            record = b.state.alerts.get("A-L2")
            for lang in ("zh", "en"):
                answer = _fetch(port, f"/feeds/lines/2.atom?lang={lang}")
                assert answer.status_code == 200
                assert atom_problems(answer.content) == []
                if record is None:
                    continue  # the feed's text cleaned to nothing: the alert was refused at the boundary
                current = [e for e in entries(answer.content) if "alert" in terms(e)]
                assert len(current) == 1
                header = record.alert.header.get(lang, "zh").replace("\r\n", "\n").replace("\r", "\n")
                content = current[0].findtext(f"{ATOM}content") or ""
                assert content.startswith(header.strip()) or not header.strip()
                assert current[0].find(f"{ATOM}content/*") is None  # text, never markup

        check()


def test_any_id_survives_the_url_both_ways(rig: Rig) -> None:
    # The site answers an unknown id with the id it decoded, JSON-quoted: what went in percent-encoded is what
    # the route looked up, whatever characters a GTFS id holds ("/", "?", "#", "%", controls, any script).
    port = free_port()
    with SiteThread(public_config(rig, port)).running():

        @settings(max_examples=60, deadline=None)
        @given(scope_id=st.text(min_size=1, max_size=20).filter(lambda s: s not in {"1", "2", "3"}))
        @example(scope_id="a/b?c#d%2F é")
        @example(scope_id="x.atom")
        def check(scope_id: str) -> None:
            for folder, what in (("lines", "line"), ("stations", "station")):
                answer = _fetch(port, f"/feeds/{folder}/{quote(scope_id, safe='')}.atom")
                assert answer.status_code == 404
                assert f"There is no {what} {json.dumps(scope_id, ensure_ascii=False)} in this network." in answer.text

        check()
        assert _fetch(port, f"/feeds/lines/{quote('2', safe='')}.atom").status_code == 200


# -- which feeds a notice or an alert belongs to ---------------------------------------------------------------


def _notice(lines: tuple[str, ...], stations: tuple[str, ...]) -> RecentNotice:
    return RecentNotice("n", "1", "alert_new", "normal", lines, stations, {"en": "x"}, datetime.now(UTC))


@pytest.mark.parametrize(("lines", "stations", "reaches"), [
    (("L1",), (), {"L1", "S01", "S02", "S03"}),  # line-wide: every station of the line
    (("L1", "L2"), ("S02",), {"L1", "L2", "S02"}),  # at one station: that station only
    (("L1", "L2"), ("S04",), {"L1", "L2", "S01", "S02", "S03", "S04"}),  # L1 whole, L2 at S04
    ((), ("S03",), {"S03"}),  # a station's crowding
    ((), (), set()),  # the network's only
])
def test_a_notice_reaches_its_lines_its_stations_and_the_stations_of_a_whole_line(
    lines: tuple[str, ...], stations: tuple[str, ...], reaches: set[str]
) -> None:
    touches = Touches(tiny_network())
    scopes = [Scope(ScopeKind.LINE, i) for i in ("L1", "L2")] + [
        Scope(ScopeKind.STATION, i) for i in ("S01", "S02", "S03", "S04")]
    assert {s.id for s in scopes if touches.notice(_notice(lines, stations), s)} == reaches
    assert touches.notice(_notice(lines, stations), NETWORK)


def test_an_alert_reaches_the_stations_of_a_line_it_names_whole_and_the_stations_it_names() -> None:
    touches = Touches(tiny_network())
    alert = Alert("a", "OTHER_CAUSE", "DETOUR", Severity.WARNING, LocalizedText.of(en="x"), LocalizedText(),
                  LocalizedText(), (InformedEntity(line_id="L2"), InformedEntity(station_id="S01")), ())
    reached = {i for i in ("L1", "L2") if touches.alert(alert, Scope(ScopeKind.LINE, i))}
    reached |= {i for i in ("S01", "S02", "S03", "S04") if touches.alert(alert, Scope(ScopeKind.STATION, i))}
    assert reached == {"L2", "S01", "S02", "S04"}


# -- the checker itself catches each rule broken ---------------------------------------------------------------

VALID = """<?xml version='1.0' encoding='utf-8'?>
<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="en">
<id>urn:uuid:5b0a3f4e-1c2d-4e8f-9a6b-7c3d2e1f0a9b</id><title>t</title><updated>2026-12-03T08:00:00Z</updated>
<author><name>a</name></author><link rel="self" href="https://metro.example/feeds/network.atom"/>
<entry><id>urn:uuid:00000000-0000-5000-8000-000000000001</id><title>e</title>
<updated>2026-12-03T08:00:00+08:00</updated><content type="text">c</content><category term="alert"/></entry>
</feed>"""


@pytest.mark.parametrize(("broken", "problem"), [
    (("<title>t</title>", "<title>t</title><title>u</title>"), "2 atom:title"),
    (("<updated>2026-12-03T08:00:00Z</updated>", ""), "0 atom:updated"),
    (("<updated>2026-12-03T08:00:00Z</updated>", "<updated>2026-12-03 08:00:00</updated>"), "RFC 3339"),
    (("<updated>2026-12-03T08:00:00Z</updated>", "<updated>2026-12-03T08:00:00</updated>"), "RFC 3339"),
    (("<updated>2026-12-03T08:00:00Z</updated>", "<updated>2026-02-30T08:00:00Z</updated>"), "not a real date"),
    (("<author><name>a</name></author>", ""), "no atom:author"),
    (("<id>urn:uuid:5b0a3f4e-1c2d-4e8f-9a6b-7c3d2e1f0a9b</id>", "<id>feed-1</id>"), "absolute IRI"),
    (('<link rel="self" href="https://metro.example/feeds/network.atom"/>', ""), "0 rel=self"),
    (('href="https://metro.example/feeds/network.atom"', 'href="/feeds/network.atom"'), "absolute IRI"),
    (("<content type=\"text\">c</content>", ""), "no atom:content and no alternate link"),
    (("<content type=\"text\">c</content>", "<content type=\"text\"><b>c</b></content>"), "child elements"),
    (("<content type=\"text\">c</content>", "<content type=\"rich\">c</content>"), "media type"),
    (("<title>e</title>", "<title type=\"markdown\">e</title>"), "not text, html or xhtml"),
    (("<category term=\"alert\"/>", "<category/>"), "without term"),
    (('xml:lang="en"', 'xml:lang="en_GB"'), "language tag"),
    (("<title>e</title>", "<title>\x01</title>"), "not allowed in XML"),
    (("</entry>", "</entry><entry><id>urn:uuid:00000000-0000-5000-8000-000000000001</id><title>f</title>"
      "<updated>2026-12-03T08:00:00Z</updated><content>d</content></entry>"), "repeats"),
    (("<feed ", "<rss "), "not well-formed"),
])
def test_the_atom_checker_finds_each_broken_rule(broken: tuple[str, str], problem: str) -> None:
    assert atom_problems(VALID.encode()) == []
    old, new = broken
    assert old in VALID
    problems = atom_problems(VALID.replace(old, new, 1).encode())
    assert any(problem in p for p in problems), problems


async def test_a_notice_committed_late_with_an_earlier_time_still_reaches_the_feeds(rig: Rig) -> None:
    # Two steps race for the pipeline's lock: the one that began first (its rows carry that time) may commit
    # second, after a reader saw the other's. Its notice must not be skipped for being older than the newest.
    rig.serve_rt(line2_alert())
    async with running_site(rig) as site:
        first = await site.feed("/feeds/lines/2.atom")  # the rows known so far are read
        newest = max(r.created_at for r in site.b.history.recent("mqtt", datetime(2000, 1, 1, tzinfo=UTC), 10))
        issued = newest - timedelta(seconds=20)
        body = {"issued_at": issued.isoformat(), "seq": 1, "valid_until": None, "schema": "broadcaster.mqtt.notice/1",
                "notice_id": "line-2", "version": "late-1", "kind": "line_status", "priority": "normal",
                "alert_id": None, "lines": ["2"], "stations": [], "text": {"zh": "2号线列车晚点", "en": "Line 2 late"}}
        with site.b.db.transaction() as conn:
            Outbox.enqueue(conn, [OutgoingMessage("line-2", "late-1", "mqtt", orjson.dumps(body), 2)], issued)
        after = await site.feed("/feeds/lines/2.atom")
        assert after.headers["etag"] != first.headers["etag"]
        assert "2号线列车晚点" in titles(after.content)


ODD_LINE, ODD_STATION = "M/2 #?%é", "S/10 ?#&%"


def network_with_odd_ids(target: Path) -> Path:
    """The example network with line "2" and station "S10" renamed to ids no URL may hold as they are."""
    target.mkdir()
    for source in NETWORK_DIR.iterdir():
        with source.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
            fields = list(rows[0]) if rows else []
        for row in rows:
            if source.name in ("routes.txt", "trips.txt") and row.get("route_id") == "2":
                row["route_id"] = ODD_LINE
            if source.name == "translations.txt" and row["table_name"] == "routes" and row["record_id"] == "2":
                row["record_id"] = ODD_LINE
            for column in ("stop_id", "parent_station"):
                if row.get(column) == "S10":
                    row[column] = ODD_STATION
        with (target / source.name).open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return target


async def test_a_line_and_a_station_with_odd_ids_have_feeds_at_their_encoded_urls(rig: Rig) -> None:
    odd = network_with_odd_ids(rig.tmp_path / "odd-network")
    rig.serve_rt(alert_entity("A-ODD", header={"zh": "线路调整", "en": "Service change"},
                              informed=[selector(route_id=ODD_LINE)], effect="DETOUR"))
    port = free_port()
    config = public_config(rig, port)
    text = config.source.read_text(encoding="utf-8").replace(NETWORK_DIR.as_posix(), odd.as_posix())
    config.source.write_text(text, encoding="utf-8")
    async with running_site(rig, config=load_config(config.source)) as site:
        assert ODD_LINE in site.b.network.lines
        assert ODD_STATION in site.b.network.stations
        index = (await site.http.get("/feeds/")).text
        for scope, folder in ((ODD_LINE, "lines"), (ODD_STATION, "stations")):
            path = f"/feeds/{folder}/{quote(scope, safe='')}.atom"
            assert f'href="{site.base}{path}"' in index
            feed = await site.feed(path)
            assert feed.status_code == 200
            assert "线路调整" in titles(feed.content)
            links = ET.fromstring(feed.content).findall(f"{ATOM}link")
            assert f"{site.base}{path}" in [link.get("href") for link in links if link.get("rel") == "self"]


async def test_behind_a_proxy_at_a_path_the_index_links_stay_under_base_url(rig: Rig) -> None:
    """The reader is given https://metro.example/updates/feeds/: every link it finds there (autodiscovery, the
    list, the OPML) must resolve under base_url, not at the proxy host's root, where nothing of ours is."""
    base_url = "https://metro.example/updates"
    async with running_site(rig, base_url=base_url) as site:
        index = await site.http.get("/feeds/")
        hrefs = re.findall(r'href="([^"]*)"', index.text)
        assert len(hrefs) > 2 * (1 + len(site.b.network.lines) + len(site.b.network.stations))
        for href in hrefs:
            resolved = urljoin(f"{base_url}/feeds/", html.unescape(href))
            assert resolved.startswith(f"{base_url}/"), href


async def test_behind_a_proxy_at_a_path_feeds_without_its_slash_redirects_under_base_url(rig: Rig) -> None:
    # Starlette's slash redirect went to http://<the request's host>/feeds/, the proxy host's root.
    base_url = "https://metro.example/updates"
    async with running_site(rig, base_url=base_url) as site:
        answer = await site.http.get("/feeds", follow_redirects=False)
        assert answer.status_code in (301, 307, 308)
        assert answer.headers["location"] == f"{base_url}/feeds/"


async def test_a_reader_sending_only_if_modified_since_gets_a_late_committed_notice(rig: Rig) -> None:
    """Readers that keep only Last-Modified send If-Modified-Since alone: a change of the feed must move it
    forward, even when the new entry is dated before the newest one (a step that committed late)."""
    clock = SteppedClock()
    rig.serve_rt(line2_alert())
    async with running_site(rig, clock) as site:
        first = await site.feed("/feeds/lines/2.atom")
        modified = first.headers["last-modified"]
        newest = max(r.created_at for r in site.b.history.recent("mqtt", datetime(2000, 1, 1, tzinfo=UTC), 10))
        issued = newest - timedelta(seconds=20)
        body = {"issued_at": issued.isoformat(), "seq": 1, "valid_until": None, "schema": "broadcaster.mqtt.notice/1",
                "notice_id": "line-2", "version": "late-1", "kind": "line_status", "priority": "normal",
                "alert_id": None, "lines": ["2"], "stations": [], "text": {"zh": "2号线列车晚点", "en": "Line 2 late"}}
        with site.b.db.transaction() as conn:
            Outbox.enqueue(conn, [OutgoingMessage("line-2", "late-1", "mqtt", orjson.dumps(body), 2)], issued)
        clock.offset += timedelta(seconds=2)  # Last-Modified has whole seconds: the change is in a later one
        after = await site.feed("/feeds/lines/2.atom", **{"If-Modified-Since": modified})
        assert after.status_code == 200
        assert "2号线列车晚点" in titles(after.content)
        assert parsedate_to_datetime(after.headers["last-modified"]) > parsedate_to_datetime(modified)
        again = await site.feed("/feeds/lines/2.atom", **{"If-Modified-Since": after.headers["last-modified"]})
        assert again.status_code == 304
