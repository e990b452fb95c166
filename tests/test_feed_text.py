"""Feed text neutralised at the boundary (broadcaster/text.py): no controls, bidi overrides, HTML or live mentions,
and a sane size; then, end to end, hostile feed text still makes posts within every platform's limit."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import regex
from hypothesis import example, given, settings
from hypothesis import strategies as st
from support.gtfs_rt_builders import T0, alert_entity, feed_bytes, selector
from support.tiny_network import tiny_network

from broadcaster.compose import ComposePolicy, Notice, compose
from broadcaster.feeds.gtfs_rt import parse_gtfs_rt
from broadcaster.feeds.network import load_network
from broadcaster.render import Renderer
from broadcaster.render.length import PlatformProfile, bluesky, find_urls, mastodon, weibo, x_weighted
from broadcaster.render.posts import post_texts
from broadcaster.state import NetworkState, StatePolicy, apply_snapshot
from broadcaster.text import (
    ELLIPSIS,
    NAME_LIMIT,
    TEXT_LIMIT,
    URL_LIMIT,
    WORD_JOINER,
    clean_name,
    clean_text,
    clean_url,
)

WJ = WORD_JOINER
RLO, PDF, LRI, PDI, LRM, RLM = "\u202e", "\u202c", "\u2066", "\u2069", "\u200e", "\u200f"

# What may never come out: C0 controls but the line break, DEL and C1, bidi embeddings/overrides/isolates, BOM,
# zero-width space, invisible operators, deprecated format characters, interlinear annotations, surrogates.
FORBIDDEN = regex.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b\u202a-\u202e\u2061-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]"
)
RIGHT_TO_LEFT = regex.compile(r"[\p{Bidi_Class=R}\p{Bidi_Class=AL}]")
# How the platforms find mentions: Mastodon's Account::MENTION_RE, twitter-text's at sign and name, and Weibo's
# at sign followed by a name character (letters, digits, CJK, '_' or '-').
MENTION_PARSERS = {
    "mastodon": regex.compile(r"(?<![=/\w])@[a-z0-9_]", regex.IGNORECASE),
    "twitter-text": regex.compile(r"(?<![A-Za-z0-9_!#$%&*@＠])[@＠][A-Za-z0-9_]"),
    "weibo": regex.compile(r"(?<![A-Za-z0-9_])[@＠﹫][\w-]"),
}


def live_mentions(text: str) -> list[str]:
    """Mentions some platform would notify: at signs that start a name outside every URL."""
    urls = find_urls(text)
    found = []
    for platform, parser in MENTION_PARSERS.items():
        for match in parser.finditer(text):
            if not any(start <= match.start() < end for start, end in urls):
                found.append(f"{platform}: {text[max(0, match.start() - 5):match.end() + 5]!r}")
    return found


# -- tables --------------------------------------------------------------------------------------------------------

CLEANED = {
    "plain text is untouched": ("Signal fault at People's Square", "Signal fault at People's Square"),
    "Chinese is untouched": ("受信号故障影响，1号线列车限速运行。", "受信号故障影响，1号线列车限速运行。"),
    "outer white space": ("  delayed \n", "delayed"),
    "runs of spaces and tabs": ("a  \t b", "a b"),
    "CR LF and separators": ("one\r\ntwo\rthree\u2028four\u2029five", "one\ntwo\nthree\nfour\nfive"),
    "blank lines": ("a\n\n\n\n\nb", "a\n\nb"),
    "NUL, BEL, ESC, DEL, C1": ("a\x00b\x07c\x1b[31md\x7fe\x85f\x9bg", "abc[31mde\nfg"),
    "right-to-left override": (f"Line 1 {RLO}detaler{PDF} now", "Line 1 detaler now"),
    "isolates": (f"{LRI}abc{PDI}", "abc"),
    "marks in left-to-right text": (f"ab{LRM}c{RLM}", "abc"),
    "marks kept in Hebrew": (f"שלום{RLM} 1", f"שלום{RLM} 1"),
    "BOM and zero-width space": ("\ufeffa\u200bb", "ab"),
    "emoji ZWJ sequence kept": ("👩\u200d👩\u200d👧", "👩\u200d👩\u200d👧"),
    "html tags": ("<p>Line <b>1</b>: delays</p><p>Allow time</p>", "Line 1: delays\nAllow time"),
    "html line breaks": ("a<br>b<br/>c", "a\nb\nc"),
    "html entities": ("Fish &amp; chips &lt;3 &#x4e2d;&#25991; &nbsp;", "Fish & chips <3 中文"),
    "script and style dropped": ("a<script>alert(1)</script><style>p{}</style>b", "ab"),
    "html comment dropped": ("a<!-- secret -->b", "ab"),
    "entity smuggling an override": ("x&#8238;y&#x202E;z", "xyz"),
    "text that only looks like a tag": ("1 < 2 and 3 > 2", "1 < 2 and 3 > 2"),
    "mention": ("call @metro_ops now", f"call @{WJ}metro_ops now"),
    "remote mention": ("@ops@mastodon.example", f"@{WJ}ops@mastodon.example"),
    "full-width at sign": ("联系＠地铁客服", f"联系＠{WJ}地铁客服"),
    "mention after CJK": ("请联系@客服", f"请联系@{WJ}客服"),
    "mention hidden by a zero-width space": ("@\u200bmetro", f"@{WJ}metro"),
    "mention hidden by tags": ("@<b>metro</b>", f"@{WJ}metro"),
    "e-mail address kept": ("write to ops@metro.example", "write to ops@metro.example"),
    "at sign in a URL kept": ("see https://social.example/@metro", "see https://social.example/@metro"),
    "lonely at sign": ("meet @ 9", "meet @ 9"),
    "html list": ("<ul><li>a</li><li>b</li></ul>", "a\nb"),
    "at sign before a combining mark": ("@\u0301x", f"@{WJ}\u0301x"),
}


@pytest.mark.parametrize(("raw", "expected"), CLEANED.values(), ids=CLEANED.keys())
def test_clean_text(raw: str, expected: str) -> None:
    assert clean_text(raw) == expected


def test_defusing_twice_changes_nothing() -> None:
    once = clean_text("@a @b ＠c")
    assert clean_text(once) == once
    assert once.count(WJ) == 3


NAMES = {
    "one line": ("Xishan\nPark", "Xishan Park"),
    "html": ("<b>West</b> Nanjing Road", "West Nanjing Road"),
    "override": (f"{RLO}kraP", "kraP"),
    "mention": ("@station", f"@{WJ}station"),
}


@pytest.mark.parametrize(("raw", "expected"), NAMES.values(), ids=NAMES.keys())
def test_clean_name(raw: str, expected: str) -> None:
    assert clean_name(raw) == expected


URLS = {
    "https": (" https://metro.example/a?b=1&amp;c=2 ", "https://metro.example/a?b=1&c=2"),
    "http": ("http://metro.example", "http://metro.example"),
    "at sign kept": ("https://social.example/@metro", "https://social.example/@metro"),
    "javascript": ("javascript:alert(1)", ""),
    "data": ("data:text/html,<script>", ""),
    "no scheme": ("metro.example/a", ""),
    "two words": ("https://a.example b", ""),
    "override inside": (f"https://a.example/{RLO}gpj.exe", "https://a.example/gpj.exe"),
    "too long": ("https://a.example/" + "x" * URL_LIMIT, ""),
}


@pytest.mark.parametrize(("raw", "expected"), URLS.values(), ids=URLS.keys())
def test_clean_url(raw: str, expected: str) -> None:
    assert clean_url(raw) == expected


# -- the cap -------------------------------------------------------------------------------------------------------

CAPPED = {
    "ascii": "word " * 3000,
    "no spaces": "x" * 10_000,
    "chinese": "列车限速运行，" * 2000,
    "combining marks": "e\u0301" * 5000,
    "flags": "🇨🇳" * 5000,
    "zwj emoji": "👩\u200d👩\u200d👧" * 2000,
    "html": "<div class='x'><p>" + "delay " * 4000 + "</p></div>",
}


@pytest.mark.parametrize("raw", CAPPED.values(), ids=CAPPED.keys())
def test_ten_kilobyte_descriptions_are_capped_at_a_cluster_boundary(raw: str) -> None:
    text = clean_text(raw)
    assert len(text) <= TEXT_LIMIT
    assert text.endswith(ELLIPSIS)
    body = text.removesuffix(ELLIPSIS)
    clusters = regex.findall(r"\X", raw.replace("<div class='x'><p>", ""))
    # The kept text is a whole number of the input's grapheme clusters.
    assert body == "".join(clusters[: len(regex.findall(r"\X", body))])


def test_names_are_capped_at_200_characters() -> None:
    assert len(clean_name("Station " * 100)) <= NAME_LIMIT


def test_a_fifty_megabyte_text_is_cleaned_quickly() -> None:
    raw = "<p>" + "延误 " * 10_000_000
    started = time.perf_counter()
    text = clean_text(raw)
    assert time.perf_counter() - started < 0.5
    assert len(text) <= TEXT_LIMIT


# -- properties ----------------------------------------------------------------------------------------------------

TRICKY = [
    "@", "＠", "﹫", "@metro", "ops@x.example", "https://a.example/@b", "<b>", "</p>", "<br>", "&amp;", "&#8238;",
    "&#x202e;", "<script>", "</script>", "<!--", "-->", RLO, PDF, LRI, PDI, LRM, RLM, "\u061c", "\u200b", "\ufeff",
    "\u2060", "\u200d", "\x00", "\x1b", "\x85", "\r\n", "\r", "\t", "\u2028", " ", "\n\n\n", "שלום", "中文", "e\u0301",
    "🇨🇳", "_", "-", "a", "1",
]
feed_texts = st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=8)), max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(feed_texts)
@example(f"x{RLO}@{LRM}metro")
@example("@" + "\u0301" * 5)
def test_cleaned_text_is_neutral(raw: str) -> None:
    text = clean_text(raw)
    assert len(text) <= TEXT_LIMIT
    assert not FORBIDDEN.search(text), repr(text)
    assert text == text.strip()
    assert "\n\n\n" not in text
    assert "  " not in text
    if LRM in text or RLM in text or "\u061c" in text:
        assert RIGHT_TO_LEFT.search(text)
    assert not live_mentions(text), live_mentions(text)


@settings(max_examples=300, deadline=None)
@given(feed_texts.filter(lambda raw: "<" not in raw and "&" not in raw))
def test_cleaning_is_idempotent_without_html(raw: str) -> None:
    once = clean_text(raw)
    assert clean_text(once) == once


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(categories=["L", "N", "P"], exclude_characters="@＠﹫<&"), max_size=300))
def test_ordinary_text_passes_unchanged(raw: str) -> None:
    if RIGHT_TO_LEFT.search(raw) is None:
        assert clean_text(raw) == raw


@settings(max_examples=200, deadline=None)
@given(feed_texts)
def test_cleaned_names_are_one_neutral_line(raw: str) -> None:
    name = clean_name(raw)
    assert len(name) <= NAME_LIMIT
    assert "\n" not in name
    assert not FORBIDDEN.search(name)
    assert not live_mentions(name)


@settings(max_examples=200, deadline=None)
@given(feed_texts)
def test_a_cleaned_url_is_one_plain_link_or_nothing(raw: str) -> None:
    url = clean_url(raw)
    assert url == "" or (url.lower().startswith(("http://", "https://")) and not regex.search(r"\s", url))
    assert not FORBIDDEN.search(url)


# -- at the feed boundary, and on to the platforms ------------------------------------------------------------

NETWORK = tiny_network()
HOSTILE_HEADER = f"<b>Line 1</b>: {RLO}syaled{PDF} — ask @metro_ops\x07"
HOSTILE_DESCRIPTION = "<p>" + "Signal fault &amp; slow trains. " * 330 + "</p><script>x()</script>"  # ~10.6 kB


def hostile_feed() -> bytes:
    return feed_bytes(alert_entity(
        "A1",
        header={"en": HOSTILE_HEADER, "zh": f"1号线{RLO}延误{PDF}，请联系＠地铁客服"},
        description={"en": HOSTILE_DESCRIPTION, "zh": "<div>列车限速运行。" * 700 + "</div>"},
        url={"en": "javascript:alert(document.cookie)", "zh": "https://metro.example/a?x=1&amp;y=2"},
        informed=[selector(route_id="L1")],
    ))


def test_gtfs_rt_texts_are_neutralised_at_the_boundary() -> None:
    snapshot = parse_gtfs_rt("ops", hostile_feed(), NETWORK, carries=frozenset({"alerts"}), default_language="zh")
    assert snapshot.alerts is not None
    (alert,) = snapshot.alerts
    assert alert.header.as_dict() == {
        "en": f"Line 1: syaled — ask @{WJ}metro_ops",
        "zh": f"1号线延误，请联系＠{WJ}地铁客服",
    }
    description = alert.description.as_dict()
    assert len(HOSTILE_DESCRIPTION) > 10_000
    assert all(len(text) <= TEXT_LIMIT and text.endswith(ELLIPSIS) for text in description.values())
    assert "<" not in description["en"]
    assert "x()" not in description["en"]
    assert description["en"].startswith("Signal fault & slow trains.")
    assert alert.url.as_dict() == {"zh": "https://metro.example/a?x=1&y=2"}


def test_a_header_that_is_only_markup_leaves_the_alert_out() -> None:
    body = feed_bytes(alert_entity("A2", header={"en": "<br/>\u202e\u202c "}, informed=[selector(route_id="L1")]))
    snapshot = parse_gtfs_rt("ops", body, NETWORK, carries=frozenset({"alerts"}), default_language="zh")
    assert snapshot.alerts == ()
    assert snapshot.problems == ("alert 'A2' skipped: no header text",)


def test_station_and_line_names_from_static_gtfs_are_neutralised(tmp_path: Path) -> None:
    (tmp_path / "routes.txt").write_text(
        f"route_id,route_short_name,route_long_name,route_type\nA,{RLO}1,<b>Alpha</b> Line @ops,1\n", encoding="utf-8"
    )
    (tmp_path / "stops.txt").write_text(
        f"stop_id,stop_name,stop_lat,stop_lon\nP1,Park{RLO}\x07 &amp; Ride,1.0,1.0\n", encoding="utf-8"
    )
    (tmp_path / "translations.txt").write_text(
        "table_name,field_name,language,translation,record_id\nstops,stop_name,zh,公园\u200b<i>站</i>,P1\n",
        encoding="utf-8",
    )
    network = load_network(tmp_path, default_language="en")
    assert network.lines["A"].short_name == "1"
    assert network.lines["A"].names.as_dict() == {"en": f"Alpha Line @{WJ}ops"}
    assert network.stations["P1"].names.as_dict() == {"en": "Park & Ride", "zh": "公园站"}


PROFILES: list[PlatformProfile] = [mastodon(), bluesky(), weibo(), x_weighted()]


def render_notice(renderer: Renderer, notice: Notice, language: str, detail: int) -> str:
    return renderer.render(notice.kind.value, language, {**notice.contexts[language], "detail": detail})


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_hostile_feed_text_makes_neutral_posts_within_every_platform_limit(profile: PlatformProfile) -> None:
    now = datetime.fromtimestamp(T0, UTC)
    snapshot = parse_gtfs_rt("ops", hostile_feed(), NETWORK, carries=frozenset({"alerts"}), default_language="zh")
    transition = apply_snapshot(NetworkState(), snapshot, network=NETWORK, now=now, policy=StatePolicy())
    notices = compose(transition.changes, network=NETWORK, now=now, policy=ComposePolicy(ZoneInfo("Asia/Shanghai")))
    assert notices
    renderer = Renderer()
    for notice in notices:
        render = functools.partial(render_notice, renderer, notice)
        for languages in (["zh"], ["en"], ["zh", "en"]):
            posts = post_texts(notice, languages, profile, render)
            for post in posts:
                assert profile.fits(post), (profile.name, profile.count(post), post[:80])
                assert not FORBIDDEN.search(post)
                assert not live_mentions(post)
                assert "<b>" not in post
                assert "<script" not in post
