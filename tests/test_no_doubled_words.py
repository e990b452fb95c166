"""Rendered posts never double a name or a suffix, and a post carries its link once.

Seen: "火车站站客流" (`{{ station }}站` on a station named 火车站), "19号线：19号线因故障" and "Line 19: Line 19: ..."
(a feed header that already starts with the line's name), and the alert URL in every language block, so a
Bluesky thread got parts holding only a URL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import MappingProxyType
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from broadcaster.compose import ComposePolicy, Notice, compose
from broadcaster.config import BlueskyChannelConfig, ChannelConfig, MastodonChannelConfig, WeiboChannelConfig
from broadcaster.model import (
    Alert,
    CrowdingReading,
    FeedSnapshot,
    InformedEntity,
    Line,
    LocalizedText,
    Network,
    Occupancy,
    Severity,
    Station,
)
from broadcaster.render.engine import Renderer
from broadcaster.render.fit import thread_marker
from broadcaster.render.length import PlatformProfile, bluesky, find_urls, mastodon, weibo
from broadcaster.render.posts import RenderText, posts_for
from broadcaster.state import AlertChange, AlertChangeKind, NetworkState, StatePolicy, apply_snapshot

T0 = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
POLICY = ComposePolicy(timezone=ZoneInfo("Asia/Shanghai"))
RENDERER = Renderer()
URL = "https://metro.example/alerts/A-19"

cjk = st.text(alphabet=st.sampled_from("火车人民广场西路东门科技园机"), min_size=1, max_size=6)
#: Station names with and without the 站 a template would add ("火车站", "人民广场").
station_names = st.tuples(cjk, st.booleans()).map(lambda t: t[0] + ("站" if t[1] else ""))
line_numbers = st.integers(min_value=1, max_value=99)
header_rests = st.sampled_from([("因故障，列车晚点", "trains delayed by a fault"), ("临时停运", "service suspended"),
                                ("", "")])
header_joins = st.sampled_from([("：", ": "), ("", " "), ("，", ", ")])


def network(line: int, station: str) -> Network:
    lines = {"19": Line("19", str(line), LocalizedText.of(zh=f"{line}号线", en=f"Line {line}"))}
    stations = {"S1": Station("S1", LocalizedText.of(zh=station, en="Station One")),
                "S2": Station("S2", LocalizedText.of(zh="终点", en="Terminus"))}
    return Network(lines=MappingProxyType(lines), stations=MappingProxyType(stations),
                   line_stations=MappingProxyType({"19": {0: ("S1", "S2")}}),
                   stop_to_station=MappingProxyType({"S1": "S1", "S2": "S2"}), trip_to_line=MappingProxyType({}))


def render_all(notice: Notice) -> dict[str, list[str]]:
    """Every language at every detail level, as the built-in templates render them."""
    return {lang: [RENDERER.render(notice.kind.value, lang, {**ctx, "detail": d}) for d in (2, 1, 0)]
            for lang, ctx in notice.contexts.items()}


def alert(header_zh: str, header_en: str, url: str = "") -> Alert:
    return Alert("A-19", "TECHNICAL_PROBLEM", "SIGNIFICANT_DELAYS", Severity.WARNING,
                 LocalizedText.of(zh=header_zh, en=header_en), LocalizedText(),
                 LocalizedText.of(zh=url, en=url) if url else LocalizedText(), (InformedEntity(line_id="19"),), ())


@settings(max_examples=60, deadline=None)
@given(line=line_numbers, station=station_names, rest=header_rests, join=header_joins, named=st.booleans())
def test_no_rendered_alert_repeats_the_line_name(
    line: int, station: str, rest: tuple[str, str], join: tuple[str, str], named: bool
) -> None:
    zh_name, en_name = f"{line}号线", f"Line {line}"
    header_zh = (zh_name + join[0] if named else "") + (rest[0] or "运营调整")
    header_en = (en_name + join[1] if named else "") + (rest[1] or "service changes")
    net = network(line, station)
    record_alert = alert(header_zh, header_en)
    new = apply_snapshot(NetworkState(), FeedSnapshot("ops", T0, alerts=(record_alert,)), network=net, now=T0,
                         policy=StatePolicy())
    record = new.state.alerts["A-19"]
    changes = [AlertChange(kind, record) for kind in AlertChangeKind]
    for notice in compose(changes, network=net, now=T0, policy=POLICY):
        for lang, texts in render_all(notice).items():
            name = zh_name if lang == "zh" else en_name
            for text in texts:
                folded = text.casefold()
                for sep in ("：", ": ", "", " ", "，", ", ", "、"):
                    assert f"{name}{sep}{name}".casefold() not in folded, (notice.kind, text)


@settings(max_examples=60, deadline=None)
@given(station=station_names)
def test_no_rendered_crowding_notice_doubles_the_station_suffix(station: str) -> None:
    net = network(19, station)
    policy = StatePolicy(crowding_min_dwell=StatePolicy().crowding_min_dwell * 0)
    state = NetworkState()
    notices = []
    for level, percent in ((Occupancy.MANY_SEATS_AVAILABLE, 30), (Occupancy.FULL, 95),
                           (Occupancy.MANY_SEATS_AVAILABLE, 20)):
        reading = CrowdingReading("S1", level, T0, percent)
        step = apply_snapshot(state, FeedSnapshot("flow", T0, crowding=(reading,)),
                              network=net, now=T0, policy=policy)
        state = step.state
        notices += compose(step.changes, network=net, now=T0, policy=POLICY)
    assert len(notices) == 2  # into heavy crowding and out of it
    for notice in notices:
        for text in render_all(notice)["zh"]:
            assert "站站" not in text, text
            bare = station.removesuffix("站")
            assert f"{bare}站客流" in text, text


# -- one URL per post -------------------------------------------------------------------------------------------

DESCRIPTION = {"zh": "19号线科技园至人民广场区段信号设备故障，列车限速运行，预计晚点10分钟，请乘客合理安排出行。" * 3,
               "en": "A signal fault between Science Park and People's Square slows Line 19 trains; expect 10 min"
                     " delays and allow extra time. " * 3}


def alert_notice(description: bool) -> Notice:
    net = network(19, "火车站")
    a = alert("信号故障，列车晚点", "Signal fault, trains delayed", URL)
    if description:
        a = Alert(a.id, a.cause, a.effect, a.severity, a.header, LocalizedText.of(**DESCRIPTION), a.url, a.informed,
                  a.active_periods)
    step = apply_snapshot(NetworkState(), FeedSnapshot("ops", T0, alerts=(a,)), network=net, now=T0,
                          policy=StatePolicy())
    (notice,) = compose(step.changes, network=net, now=T0, policy=POLICY)
    return notice


def render(notice: Notice) -> RenderText:
    def at(lang: str, detail: int) -> str:
        return RENDERER.render(notice.kind.value, lang, {**notice.contexts[lang], "detail": detail})
    return at


SECRET = {"env": "X"}
MASTODON = MastodonChannelConfig.model_validate(
    {"name": "m", "kind": "mastodon", "url": "https://m.example", "token": SECRET, "languages": ["zh", "en"]})
CHANNELS: list[tuple[ChannelConfig, PlatformProfile]] = [
    (MASTODON, mastodon(500)),
    (MASTODON, mastodon(200)),
    (BlueskyChannelConfig.model_validate({"name": "b", "kind": "bluesky", "identifier": "x", "password": SECRET,
                                          "languages": ["zh", "en"]}), bluesky()),
    (WeiboChannelConfig.model_validate({"name": "w", "kind": "weibo", "access_token": SECRET,
                                        "languages": ["zh", "en"]}), weibo()),
]


def urls_in(text: str) -> list[str]:
    return [text[start:end] for start, end in find_urls(text)]


def test_a_two_language_post_carries_its_url_once_at_the_end_on_every_platform() -> None:
    for description in (False, True):
        notice = alert_notice(description)
        for channel, profile in CHANNELS:
            posts = posts_for(notice, channel, profile, render(notice), "zh")
            everything = "\n".join(p.text for p in posts)
            assert urls_in(everything) == [URL], (profile.name, everything)
            last = posts[-1].text
            marker = thread_marker(len(posts), len(posts)) if len(posts) > 1 else ""
            assert last.removesuffix(marker).rstrip().endswith(URL), (profile.name, last)
            for post in posts:
                body = post.text
                if len(posts) > 1:
                    body = body.removesuffix(thread_marker(post.part + 1, len(posts)))
                assert body.strip() != URL, (profile.name, [p.text for p in posts])  # never a part of a bare link


def test_a_long_bluesky_thread_never_has_a_part_of_only_a_url() -> None:
    notice = alert_notice(description=True)
    channel, profile = CHANNELS[2]
    full = render(notice)

    def at(lang: str, detail: int) -> str:
        return full(lang, 2)  # the description at every level: even the headline needs a thread

    posts = posts_for(notice, channel, profile, at, "zh")
    assert len(posts) > 1
    assert urls_in("\n".join(p.text for p in posts)) == [URL]
    for post in posts:
        assert post.text.removesuffix(thread_marker(post.part + 1, len(posts))).strip() != URL


@settings(max_examples=80, deadline=None)
@given(channel_index=st.integers(min_value=0, max_value=len(CHANNELS) - 1),
       zh_repeats=st.integers(min_value=0, max_value=8), en_repeats=st.integers(min_value=0, max_value=8),
       detail_floor=st.sampled_from([0, 2]))
def test_whatever_the_length_a_post_carries_the_link_once_and_never_alone(
    channel_index: int, zh_repeats: int, en_repeats: int, detail_floor: int
) -> None:
    """Descriptions from none to many sentences, on every platform: the link is once in the thread, at its end,
    and no part is only the link (a split keeps it with the text before it)."""
    channel, profile = CHANNELS[channel_index]
    notice = alert_notice(description=False)
    extra = {"zh": "列车限速运行，请乘客合理安排出行。" * zh_repeats,
             "en": "Trains run slowly; please allow extra time. " * en_repeats}
    rendered = render(notice)

    def at(lang: str, detail: int) -> str:
        text = rendered(lang, max(detail, detail_floor))
        head, _, rest = text.partition("\n")
        return f"{head}\n{extra[lang]}\n{rest}" if max(detail, detail_floor) >= 2 and extra[lang] else text

    posts = posts_for(notice, channel, profile, at, "zh")
    assert urls_in("\n".join(p.text for p in posts)) == [URL]
    for post in posts:
        body = post.text.removesuffix(thread_marker(post.part + 1, len(posts))) if len(posts) > 1 else post.text
        assert body.strip() != URL
        assert profile.fits(post.text)
    last = posts[-1].text
    assert last.removesuffix(thread_marker(len(posts), len(posts)) if len(posts) > 1 else "").endswith(URL)
