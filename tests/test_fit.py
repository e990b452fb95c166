"""Fitting notices to platforms: detail levels first, then numbered threads whose every part fits.

Properties (Hypothesis) over mixed Chinese, English, emoji, URLs, hashtags, mentions and protected station
names: each part fits its profile, no part cuts a grapheme, URL, hashtag, mention or protected name, the parts'
bodies give the text back but for white space at the cuts, and `fit` keeps the first level that fits. Then long
real-looking alerts on the real limits, and the break preferences one by one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from itertools import pairwise
from string import ascii_letters, digits

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broadcaster.render.fit import fit, split, thread_marker
from broadcaster.render.length import (
    PlatformProfile,
    bluesky,
    find_urls,
    grapheme_boundaries,
    mastodon,
    weibo,
    x_weighted,
)

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
FLAG_CN = "\U0001f1e8\U0001f1f3"
STATIONS = ("西直门", "国贸", "天安门东", "1号线", "Line 2", "Xizhimen", "Dongzhimen")
MARKER = re.compile(r" \((\d+)/(\d+)\)\Z")

REAL_PROFILES: list[PlatformProfile] = [weibo(), bluesky(), mastodon(), x_weighted()]


# --- helpers ---------------------------------------------------------------------------------------------------


def bodies_of(parts: Sequence[str]) -> list[str]:
    """The parts without their markers, checking the markers count 1..n."""
    bodies = []
    for index, part in enumerate(parts, start=1):
        match = MARKER.search(part)
        assert match is not None, part
        assert (int(match[1]), int(match[2])) == (index, len(parts))
        bodies.append(part[: match.start()])
    return bodies


def locate(text: str, bodies: Sequence[str]) -> list[tuple[int, int]]:
    """Where each body sits in `text`: in order, with nothing but white space before, between and after them."""
    spans = []
    position = 0
    for body in bodies:
        assert body, "empty part"
        assert body == body.strip(), f"part not stripped: {body!r}"
        while position < len(text) and text[position].isspace():
            position += 1
        assert text.startswith(body, position), f"{body!r} is not the text at {position}: {text[position:]!r}"
        spans.append((position, position + len(body)))
        position += len(body)
    assert not text[position:].strip(), "the parts lost the end of the text"
    return spans


def assert_not_cut(text: str, spans: Sequence[tuple[int, int]], unit: tuple[int, int]) -> None:
    start, end = unit
    if not text[start:end].strip():
        return  # white space between parts is dropped, by design
    assert any(s <= start and end <= e for s, e in spans), f"{text[start:end]!r} was cut: {spans}"


def check_thread(text: str, parts: Sequence[str], profile: PlatformProfile, protect: Sequence[str] = ()) -> None:
    """Every rule a thread must keep, for `text` split for `profile`."""
    assert len(parts) >= 2
    for part in parts:
        assert profile.fits(part), f"{profile.name}: {profile.count(part)} > {profile.limit}: {part!r}"
    spans = locate(text, bodies_of(parts))
    for unit in pairwise(grapheme_boundaries(text)):
        assert_not_cut(text, spans, unit)
    for unit in find_urls(text):
        assert_not_cut(text, spans, unit)
    for name in protect:
        for match in re.finditer(re.escape(name), text):
            assert_not_cut(text, spans, match.span())


def assert_full(text: str, parts: Sequence[str], profile: PlatformProfile) -> None:
    """No part but the last could have taken the next grapheme of the text too."""
    spans = locate(text, bodies_of(parts))
    boundaries = grapheme_boundaries(text)
    for index in range(len(parts) - 1):
        start = spans[index][0]
        following = boundaries[boundaries.index(spans[index + 1][0]) + 1]
        longer = text[start:following] + thread_marker(index + 1, len(parts))
        assert not profile.fits(longer), f"part {index + 1} could have taken more: {longer!r}"


def levels(texts: dict[int, str], calls: list[int]) -> Callable[[int], str]:
    def render(detail: int) -> str:
        calls.append(detail)
        return texts[detail]

    return render


# --- strategies ------------------------------------------------------------------------------------------------

CJK = "北京地铁线路站台换乘列车运营临时调整因设备故障暂停服务请乘客注意安全出行"
PUNCTUATION = ["。", "，", "！", "？", "；", "、", "：", ". ", ", ", "! ", "（", "）", "「", "」", "……"]
EMOJI = [FAMILY, FLAG_CN, "\U0001f44d\U0001f3fd", "e\u0301", "\U0001f3f3\ufe0f\u200d\U0001f308", "1\ufe0f\u20e3", "🚇"]

UNIT_TOKENS = (" #北京地铁# ", " #地铁1号线# ", " #Metro ", " @北京地铁 ", " @metro_bj ", " @alice@example.social ")

words = st.text(alphabet=ascii_letters + digits, min_size=1, max_size=12)
# Hashtags, mentions and URLs come with spaces around them so that what the test generates is what the
# splitter sees as one unit (a URL glued to the next word is a longer URL).
tokens = st.one_of(
    st.text(alphabet=CJK, min_size=1, max_size=20),
    words,
    words.map(lambda word: f" {word} "),
    st.sampled_from([" ", "\n", "\n\n", "  "]),
    st.sampled_from(PUNCTUATION),
    st.sampled_from(EMOJI),
    st.sampled_from(STATIONS),
    words.map(lambda path: f" https://example.com/{path} "),
    st.sampled_from(UNIT_TOKENS),
)
texts = st.lists(tokens, min_size=1, max_size=200).map("".join).filter(lambda text: bool(text.strip()))
# Mostly threads of 2 to 20 parts.
long_texts = st.lists(tokens, min_size=20, max_size=200).map("".join).filter(lambda text: bool(text.strip()))

# Limits small enough to make threads, large enough that every unit above fits in one part with its marker.
profiles = st.one_of(
    st.integers(30, 140).map(weibo),
    st.integers(60, 300).map(lambda n: bluesky(max_graphemes=n, max_bytes=3 * n)),
    st.integers(60, 500).map(lambda n: mastodon(max_characters=n)),
    st.integers(60, 280).map(x_weighted),
)


# --- properties ------------------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=300)
@given(text=st.one_of(texts, long_texts), profile=profiles)
def test_split_parts_fit_keep_units_and_give_the_text_back(text: str, profile: PlatformProfile) -> None:
    parts = split(text, profile, protect=STATIONS)
    if len(parts) == 1:
        assert parts == [text.strip()]  # it fits whole: no marker
        assert profile.fits(parts[0])
        return
    check_thread(text, parts, profile, STATIONS)
    spans = locate(text, bodies_of(parts))
    for token in UNIT_TOKENS:
        for match in re.finditer(re.escape(token.strip()), text):
            assert_not_cut(text, spans, match.span())


@settings(deadline=None, max_examples=300)
@given(
    full=texts,
    compact=texts,
    headline=texts,
    profile=profiles,
    order=st.permutations([2, 1, 0]),
)
def test_fit_returns_the_first_level_that_fits(
    full: str, compact: str, headline: str, profile: PlatformProfile, order: list[int]
) -> None:
    rendered = {2: full, 1: compact, 0: headline}
    calls: list[int] = []
    result = fit(levels(rendered, calls), profile, detail_levels=order, protect=STATIONS)
    fitting = [level for level in order if profile.fits(rendered[level])]
    if fitting:
        assert result == [rendered[fitting[0]]]
        assert calls == order[: order.index(fitting[0]) + 1]  # no level rendered past the one that fits
    else:
        assert calls == order
        assert result == split(rendered[order[-1]], profile, protect=STATIONS)
        assert all(profile.fits(part) for part in result)


# --- long notices on the real limits ---------------------------------------------------------------------------

ALERT_ZH = (
    "【紧急】1号线、2号线：因西直门站信号设备故障，西直门站至国贸站区间列车暂停运营。\n"
    "受此影响，1号线天安门东站至国贸站方向列车晚点，最长约二十五分钟；2号线西直门站、东直门站双向列车限速运行，"
    "部分列车在西直门站清客。西直门站暂停换乘，请换乘旅客改经东直门站或国贸站换乘，国贸站、东直门站已增派工作人员"
    "引导。地面公交专线1路、2路已在西直门站、天安门东站、国贸站沿线设置临时停靠点，持当日车票可免费乘坐。"
    "抢修人员已到达现场，正在全力处置，预计十八时三十分前恢复运营，具体以现场公告为准。\n"
    "请乘客合理安排出行，提前预留时间，尽量避开西直门站、国贸站，途经天安门东站的乘客请注意站内广播。"
    "车站客流较大时将采取限流措施，请配合工作人员引导，有序排队进站，不要拥挤，注意脚下安全，照顾好老人和儿童。"
    "因故障给您带来的不便，我们深表歉意。如需退票，请于七日内持车票到任意车站客服中心办理，无需手续费。"
    "如有疑问，请拨打服务热线或关注官方微博获取最新消息，我们将持续发布恢复进展，感谢您的理解与支持。\n"
    "温馨提示：故障期间，1号线国贸站至天安门东站区间列车按小交路运行，行车间隔约八分钟；2号线其余区段列车正常运行，"
    "但西直门站、东直门站不停车通过。乘坐机场线的旅客请提前出发，经东直门站换乘的旅客请留意站内指引标识。"
    "车站内电梯、扶梯正常运行，需要帮助的乘客可联系车站工作人员或拨打车站求助电话。\n"
    "详情：https://www.bjsubway.example/notice/2024/0601-xizhimen.html（十七时零五分发布）"
)
STATION_NAMES = ("西直门站", "国贸站", "天安门东站", "东直门站", "1号线", "2号线")

ALERT_MIXED = (
    "URGENT 紧急: Line 2 / 2号线 suspended between Xizhimen 西直门 and Dongzhimen 东直门 due to a signal failure "
    "信号故障. Trains on Line 1 are delayed by up to 25 min 晚点约25分钟. Please use bus shuttle 1 公交接驳1路 "
    "from Xizhimen, and allow extra time 请预留出行时间. Staff are on site 工作人员已在现场; service is expected to "
    "resume by 18:30 预计18:30恢复. We apologise for the inconvenience 给您带来不便深表歉意. "
    "Refunds 退票: at any customer service centre within 7 days 七日内. Updates 最新消息: "
    "https://www.bjsubway.example/en/notice/0601 #北京地铁# @北京地铁 " * 2
)


def test_the_alert_is_long() -> None:
    assert len(ALERT_ZH) >= 600
    assert len(ALERT_MIXED) >= 900


@pytest.mark.parametrize("profile", REAL_PROFILES, ids=lambda p: p.name)
@pytest.mark.parametrize("alert", [ALERT_ZH, ALERT_MIXED], ids=["zh", "mixed"])
def test_a_long_alert_becomes_a_thread_on_every_platform(alert: str, profile: PlatformProfile) -> None:
    protect = (*STATION_NAMES, *STATIONS)
    parts = fit(lambda detail: alert, profile, protect=protect)  # even the headline level is this long
    if profile.fits(alert):
        assert parts == [alert]
        return
    check_thread(alert, parts, profile, protect)
    # Every part but the last is well filled: at least half of the limit.
    assert all(profile.count(part) >= profile.limit // 2 for part in parts[:-1])


@pytest.mark.parametrize("profile", REAL_PROFILES, ids=lambda p: p.name)
def test_parts_use_exactly_the_limit_when_nothing_better_breaks(profile: PlatformProfile) -> None:
    # 1500 Chinese characters without a single punctuation mark or space: every part but the last is full.
    text = (CJK * 40)[:1500]
    parts = split(text, profile)
    check_thread(text, parts, profile)
    assert_full(text, parts, profile)
    counts = [profile.count(part) for part in parts[:-1]]
    if profile.name == "x":
        # Every character weighs 2 and " (1/11)" 7: an odd marker leaves one unit no character can use.
        assert all(count >= profile.limit - 1 for count in counts)
    else:
        assert counts == [profile.limit] * len(counts)


@pytest.mark.parametrize("profile", REAL_PROFILES, ids=lambda p: p.name)
def test_protected_names_only_shorten_a_full_part_by_less_than_a_name(profile: PlatformProfile) -> None:
    # Station names every few characters: a part may end before a name that would not fit, never inside it.
    text = "".join(f"{name}{CJK[i % 20 : i % 20 + 3]}" for i, name in enumerate(STATION_NAMES * 60))
    parts = split(text, profile, protect=STATION_NAMES)
    check_thread(text, parts, profile, STATION_NAMES)
    longest_name = max(profile.count(name) for name in STATION_NAMES)
    assert all(profile.count(part) > profile.limit - longest_name for part in parts[:-1])


def test_ten_parts_or_more_get_wider_markers_that_still_fit() -> None:
    text = (CJK * 40)[:1500]
    profile = weibo()
    parts = split(text, profile)
    assert len(parts) == 11
    assert parts[0].endswith(" (1/11)")
    assert parts[-1].endswith(" (11/11)")
    check_thread(text, parts, profile)
    assert [profile.count(part) for part in parts[:-1]] == [140] * 10


# --- break preferences -----------------------------------------------------------------------------------------

TEN = "一二三四五六七八九十"


@pytest.mark.parametrize(
    ("text", "first_body"),
    [
        # weibo(limit=20): a body holds 17 characters beside " (1/2)"; the window is its last half.
        (f"{TEN}\n{TEN}。{TEN}", TEN),  # a line break beats a later full stop
        (f"{TEN}。{TEN}，{TEN}", f"{TEN}。"),  # a full stop beats a later comma
        (f"{TEN}，一二三四 {TEN}{TEN}", f"{TEN}，"),  # a comma beats a later space
        (f"{TEN} {TEN}{TEN}", TEN),  # a space beats the limit
        (f"{TEN}{TEN}{TEN}", TEN + "一二三四五六七"),  # nothing to prefer: exactly the limit
        (f"一二三。{TEN}{TEN}{TEN}", "一二三。" + TEN + "一二三"),  # a full stop too early is not taken
        (f"{TEN}。」{TEN}{TEN}", f"{TEN}。」"),  # a closing quote stays with its full stop
        (f"一二三四五六七八九十一二三四五六七，{TEN}", "一二三四五六七八九十一二三四五六"),  # no part starts with '，'
        ("售价3.5元" * 5, "售价3.5元" * 3 + "售价3.5"),  # "3.5" is neither a sentence end nor cut
    ],
)
def test_break_preferences(text: str, first_body: str) -> None:
    parts = split(text, weibo(limit=20))
    assert bodies_of(parts)[0] == first_body
    check_thread(text, parts, weibo(limit=20))


def test_english_breaks_between_words() -> None:
    text = "Line 2 is suspended between Xizhimen and Dongzhimen because of a signal failure at Xizhimen."
    parts = split(text, x_weighted(limit=40))
    check_thread(text, parts, x_weighted(limit=40))
    for body in bodies_of(parts):
        assert text.find(body + " ") >= 0 or text.endswith(body)  # every cut is at a space


@pytest.mark.parametrize(
    "unit",
    [
        "https://www.bjsubway.example/notice/2024/0601.html",
        "#北京地铁1号线西直门站#",
        # A hashtag or mention ends at a space or punctuation (or it takes the Chinese after it in).
        "#Line2Suspended ",
        "@alice@example.social ",
        "@北京地铁官方微博 ",
        FAMILY,
        FLAG_CN,
        "e\u0301\u0302",
    ],
)
@pytest.mark.parametrize("offset", range(0, 12, 3))
def test_units_are_never_cut(unit: str, offset: int) -> None:
    # The unit is placed where the limit falls, with no better break around it.
    text = TEN[:offset] + TEN * 3 + unit + TEN * 3
    for profile in (weibo(limit=40), bluesky(max_graphemes=60), mastodon(max_characters=50), x_weighted(limit=70)):
        parts = split(text, profile)
        check_thread(text, parts, profile)
        assert sum(body.count(unit.strip()) for body in bodies_of(parts)) == 1


def test_protected_names_are_never_cut() -> None:
    text = TEN * 3 + "天安门东" + TEN * 3
    for start in range(0, 8):
        shifted = TEN[:start] + text
        profile = weibo(limit=36)
        parts = split(shifted, profile, protect=["天安门东"])
        check_thread(shifted, parts, profile, ["天安门东"])


def test_a_unit_longer_than_a_part_is_cut_at_a_grapheme_as_a_last_resort() -> None:
    name = "北京地铁" * 20 + FAMILY  # 81 graphemes, protected, in a 30-character post
    text = f"{TEN}，{name}，{TEN}"
    profile = bluesky(max_graphemes=30)
    parts = split(text, profile, protect=[name])
    assert all(profile.fits(part) for part in parts)
    bodies = bodies_of(parts)
    assert "".join(bodies) == text
    boundaries = set(grapheme_boundaries(text))
    position = 0
    for body in bodies:
        position += len(body)
        assert position in boundaries  # cut at a grapheme, never inside the family emoji


def test_white_space_is_dropped_only_at_cuts() -> None:
    text = "  第一段说明文字第一段说明文字。  \n\n  第二段说明文字第二段说明文字。  "
    parts = split(text, weibo(limit=20))
    assert bodies_of(parts) == ["第一段说明文字第一段说明文字。", "第二段说明文字第二段说明文字。"]


# --- fit's contract --------------------------------------------------------------------------------------------


def test_fit_prefers_more_detail_and_degrades() -> None:
    rendered = {2: "地" * 200, 1: "地" * 141, 0: "地" * 140}
    calls: list[int] = []
    assert fit(levels(rendered, calls), weibo()) == ["地" * 140]
    assert calls == [2, 1, 0]
    calls.clear()
    assert fit(levels(rendered, calls), bluesky()) == ["地" * 200]
    assert calls == [2]


def test_fit_splits_the_last_level_when_nothing_fits() -> None:
    rendered = {2: "地" * 400, 1: "地" * 300, 0: "地" * 200}
    parts = fit(levels(rendered, []), weibo())
    assert parts == split("地" * 200, weibo())
    assert len(parts) == 2


def test_fit_needs_a_level() -> None:
    with pytest.raises(ValueError, match="detail level"):
        fit(lambda detail: "地铁", weibo(), detail_levels=())


def test_a_limit_too_small_for_any_part_is_an_error() -> None:
    # " (1/9)" alone is 3 Weibo characters: nothing else fits in 3.
    with pytest.raises(ValueError, match="cannot hold"):
        split("北京地铁", weibo(limit=3))


def test_thread_marker() -> None:
    assert thread_marker(2, 3) == " (2/3)"
    assert weibo().count(thread_marker(1, 3)) == 3
    assert x_weighted().count(thread_marker(10, 12)) == 8
