"""Platform length counting: known cases per platform, each checked against the platform's own rule or tests.

Sources of the expected values: Mastodon's ``spec/validators/status_length_validator_spec.rb`` and its validator
(graphemes, URLs 23, remote mentions counted as the local part); the Bluesky lexicon ``app.bsky.feed.post``
(300 graphemes, 3000 bytes); twitter-text's ``conformance/validate.yml``, section
``WeightedTweetsWithDiscountedEmojiCounterTest`` (the v3 configuration); WeCase's port of Sina's counter and
its doctests for Weibo. The other values are worked out by hand from those rules, in the comments.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import pytest

from broadcaster.render.length import (
    URL_PATTERN,
    BlueskyProfile,
    MastodonProfile,
    PlatformProfile,
    WeiboProfile,
    XProfile,
    bluesky,
    find_urls,
    grapheme_boundaries,
    grapheme_count,
    graphemes,
    mastodon,
    weibo,
    x_weighted,
)

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # 👨‍👩‍👧‍👦: 7 code points, 25 bytes
RAINBOW_FLAG = "\U0001f3f3\ufe0f\u200d\U0001f308"  # 🏳️‍🌈
FLAG_CN = "\U0001f1e8\U0001f1f3"  # 🇨🇳: two regional indicators
FLAG_ENGLAND = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"  # tag sequence
THUMBS_UP_MEDIUM = "\U0001f44d\U0001f3fd"  # 👍🏽
KEYCAP_ONE = "1\ufe0f\u20e3"  # 1️⃣
E_ACUTE_DECOMPOSED = "e\u0301"
HANGUL_JAMO = "\u1100\u1161\u11a8"  # 각 as three conjoining jamo: one grapheme

# twitter-text conformance: 160 CJK characters (a Tang poem, with full-width punctuation).
POEM = (
    "故人西辞黄鹤楼，烟花三月下扬州。孤帆远影碧空尽，唯见长江天际流。朱雀桥边野草花，乌衣巷口夕阳斜。"
    "旧时王谢堂前燕，飞入寻常百姓家。朝辞白帝彩云间，千里江陵一日还。两岸猿声啼不住，轻舟已过万重山。"
    "泪湿罗巾梦不成，夜深前殿按歌声。红颜未老恩先断，斜倚薰笼坐到明。独在异乡为异客，每逢佳节倍思亲。"
    "遥知兄弟登高处，遍插茱萸少一人。"
)


def test_every_profile_is_a_platform_profile() -> None:
    profiles: list[PlatformProfile] = [mastodon(), bluesky(), x_weighted(), weibo()]  # checked by mypy too
    assert [(p.name, p.limit) for p in profiles] == [("mastodon", 500), ("bluesky", 300), ("x", 280), ("weibo", 140)]
    assert isinstance(profiles[0], MastodonProfile)
    assert isinstance(profiles[1], BlueskyProfile)
    assert isinstance(profiles[2], XProfile)
    assert isinstance(profiles[3], WeiboProfile)


@pytest.mark.parametrize(
    "make",
    [
        lambda: mastodon(max_characters=0),
        lambda: mastodon(url_length=-1),
        lambda: bluesky(max_graphemes=0),
        lambda: bluesky(max_bytes=0),
        lambda: x_weighted(limit=0),
        lambda: weibo(limit=-140),
    ],
)
def test_limits_must_be_positive(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        make()


# --- graphemes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "clusters"),
    [
        ("", []),
        ("abc", ["a", "b", "c"]),
        ("北京地铁", ["北", "京", "地", "铁"]),
        (FAMILY + FLAG_CN, [FAMILY, FLAG_CN]),
        (f"a{E_ACUTE_DECOMPOSED}b", ["a", E_ACUTE_DECOMPOSED, "b"]),
        (f"{THUMBS_UP_MEDIUM}{KEYCAP_ONE}", [THUMBS_UP_MEDIUM, KEYCAP_ONE]),
        ("a\r\nb", ["a", "\r\n", "b"]),
        (HANGUL_JAMO, [HANGUL_JAMO]),
        (RAINBOW_FLAG + FLAG_ENGLAND, [RAINBOW_FLAG, FLAG_ENGLAND]),
    ],
)
def test_graphemes_are_extended_clusters(text: str, clusters: list[str]) -> None:
    assert graphemes(text) == clusters
    assert grapheme_count(text) == len(clusters)
    boundaries = grapheme_boundaries(text)
    assert boundaries[-1] == len(text)
    assert [text[start:end] for start, end in pairwise(boundaries)] == clusters


# --- URLs ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "urls"),
    [
        ("see https://example.com/a?b=1 now", ["https://example.com/a?b=1"]),
        ("详情见https://example.com/a?b=1。谢谢", ["https://example.com/a?b=1"]),  # ends at CJK punctuation
        ("https://example.com，下一句", ["https://example.com"]),
        ("（https://example.com/x）", ["https://example.com/x"]),  # full-width parenthesis is not ASCII
        ("(https://example.com/a).", ["https://example.com/a"]),  # trailing ')' and '.' are not the URL's
        ("https://en.wikipedia.org/wiki/Foo_(bar) x", ["https://en.wikipedia.org/wiki/Foo_(bar)"]),  # balanced
        ("Go to https://example.com/a!? Now.", ["https://example.com/a"]),
        ("https://example.com/路线", ["https://example.com/"]),  # non-ASCII ends it: shorter is safer
        ("HTTP://Example.COM/x http://t.co", ["HTTP://Example.COM/x", "http://t.co"]),
        ("http://192.168.0.1/x", ["http://192.168.0.1/x"]),
        ("https://example.com:8443/a#top", ["https://example.com:8443/a#top"]),
        (
            "Is it https://example.com? Yes: https://example.com/?q=1&",
            ["https://example.com", "https://example.com/?q=1"],
        ),
        ("a/(https://example.org/a)", ["https://example.org/a"]),  # a '(' before the URL balances nothing
        ("abchttps://example.com", []),  # twitter-text: no URL right after a letter
        ("https://localhost/x", []),  # no dotted host
        ("ftp://example.com", []),
        ("example.com", []),  # no scheme: not found (see find_urls)
    ],
)
def test_find_urls(text: str, urls: list[str]) -> None:
    assert [text[start:end] for start, end in find_urls(text)] == urls
    assert [match.group() for match in URL_PATTERN.finditer(text)] == urls


# --- Mastodon --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("", 0),
        ("   \n ", 0),  # blank text counts nothing (Ruby `blank?`)
        ("hello", 5),
        ("北京地铁，停运。", 8),
        (FAMILY, 1),  # graphemes, not code points (7) nor UTF-16 units (11)
        (FLAG_CN + FLAG_ENGLAND + RAINBOW_FLAG, 3),
        (E_ACUTE_DECOMPOSED * 3, 3),
        (THUMBS_UP_MEDIUM + KEYCAP_ONE, 2),
        ("见 https://example.com/a/very/long/path/that/goes/on", 2 + 23),
        ("详情：https://example.com/a。", 3 + 23 + 1),
        ("http://t.co", 23),  # a short URL still counts 23
        ("@alice@example.social 你好", 6 + 1 + 2),  # remote mention counts as @alice
        ("@alice 你好", 6 + 1 + 2),
        ("cc @bob@mastodon.example.org, @carol", 3 + 4 + 2 + 6),
        ("mail a@b.example.com", 20),  # '@' after a letter is no mention
        ("@alice@bob@carol", 16),  # followed by '@': Mastodon's extractor skips it
    ],
)
def test_mastodon_counts(text: str, count: int) -> None:
    assert mastodon().count(text) == count


def test_mastodon_spec_cases() -> None:
    profile = mastodon()
    # "counts URLs as 23 characters flat"
    assert profile.fits("a" * 476 + " http://" + "b" * 30 + ".com/example")
    assert profile.count("a" * 476 + " http://" + "b" * 30 + ".com/example") == 500
    # "counts only the front part of remote usernames"
    assert profile.fits("a" * 475 + " @alice@" + "b" * 30 + ".com")
    # "adds an error when text and content warning are over 500 characters total"
    assert profile.count("b" * 251, spoiler_text="a" * 250) == 501
    assert not profile.fits("b" * 251, spoiler_text="a" * 250)
    assert not profile.fits("a" * 501)
    assert not profile.fits("", spoiler_text="a" * 501)


def test_mastodon_limits_and_content_warning() -> None:
    assert mastodon().fits("地" * 500)
    assert not mastodon().fits("地" * 501)
    assert mastodon().fits(FAMILY * 500)  # 3500 code points, 500 graphemes
    assert mastodon(max_characters=1000).fits("地" * 1000)
    assert mastodon(url_length=30).count("https://example.com") == 30
    # A profile carrying the posts' content warning leaves room for it; "" counts the text alone.
    warned = MastodonProfile(spoiler_text="紧急通知")
    assert warned.count("地铁") == 6
    assert warned.count("地铁", spoiler_text="") == 2
    assert warned.fits("地" * 496)
    assert not warned.fits("地" * 497)


# --- Bluesky ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("", 0),
        ("hello world", 11),
        ("北京地铁，停运。", 8),
        (FAMILY, 1),
        (FLAG_CN + FLAG_ENGLAND, 2),
        (RAINBOW_FLAG, 1),
        (E_ACUTE_DECOMPOSED, 1),
        (HANGUL_JAMO, 1),
        (THUMBS_UP_MEDIUM + KEYCAP_ONE, 2),
        ("https://example.com/alerts/1", 28),  # links count in full
        ("@alice.bsky.social #地铁", 22),
    ],
)
def test_bluesky_counts_graphemes(text: str, count: int) -> None:
    assert bluesky().count(text) == count


def test_bluesky_has_two_limits() -> None:
    profile = bluesky()
    assert profile.fits("地" * 300)  # 900 bytes
    assert not profile.fits("地" * 301)
    assert profile.fits("a" * 300)
    assert not profile.fits("a" * 301)
    assert profile.byte_length(FAMILY) == 25
    assert profile.fits(FAMILY * 120)  # 120 graphemes, exactly 3000 bytes
    assert not profile.fits(FAMILY * 121)  # 121 graphemes but 3025 bytes
    assert not profile.fits("e" + "\u0301" * 2999)  # one grapheme of 5999 bytes
    assert bluesky(max_graphemes=10, max_bytes=30).fits("地" * 10)
    assert not bluesky(max_graphemes=10, max_bytes=29).fits("地" * 10)


# --- X (twitter-text v3) ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count"),
    [
        # twitter-text conformance, WeightedTweetsWithDiscountedEmojiCounterTest:
        ("Hi http://test.co", 26),
        ("http://test.co", 23),
        ("285 chars-" + "xxxxxxxxxx-" * 25, 285),
        ("https://www.twitter.com/aloha " * 10, 240),
        (POEM, 320),
        ("the" + POEM, 323),
        ("A\u0301B", 2),  # normalised to 'ÁB'
        ("A\ufb2c", 4),  # U+FB2C is decomposed by NFC into three code points below 4352
        ("H\U0001f431\u263a" + FAMILY, 7),
        ("\U0001f637\U0001f47e\U0001f621\U0001f525\U0001f4a9", 10),
        ("\U0001f64b\U0001f3fd\U0001f468\u200d\U0001f3a4", 4),
        (
            "This is a tweet with general punctuation characters: "
            "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u200b "
            "‐ ‑ ‒ – — ― ‖  ‗ ‘ ’ ‚ ‛ “ ” „ ‟ ′ ″ ‴ ‵ ‶ ‷",
            110,
        ),
        (FAMILY * 140, 280),
        ("Unicode 10.0 emoji: \U0001f92a; \U0001f9d5; \U0001f9d5\U0001f3fe; " + FLAG_ENGLAND, 34),
        ("\U0001f637" * 160, 320),
        # Worked out from the v3 weights:
        ("北京地铁", 8),
        ("，。！？", 8),  # full-width punctuation is outside the light ranges
        ("Line 1 停运", 7 + 4),
        ("\u00a9", 1),  # © alone is text (weight 100); with VS16 it is an emoji (200)
        ("\u00a9\ufe0f", 2),
        ("1", 1),
        (KEYCAP_ONE, 2),  # a keycap is one emoji, not 1 + 2 + 2
        (FLAG_CN + RAINBOW_FLAG, 4),
        ("\u2764\ufe0f", 2),
        ("详情：https://example.com/alerts/12345", 6 + 23),
        ("Привет", 6),  # Cyrillic is below 4352
    ],
)
def test_x_weighted_counts(text: str, count: int) -> None:
    assert x_weighted().count(text) == count


def test_x_limit() -> None:
    assert x_weighted().fits("地" * 140)
    assert not x_weighted().fits("地" * 141)
    assert x_weighted().fits("a" * 280)
    assert not x_weighted().fits("285 chars-" + "xxxxxxxxxx-" * 25)
    assert x_weighted(limit=25000).fits("a" * 25000)


# --- Weibo -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count"),
    [
        # WeCase's doctests of its port of Sina's counter:
        ("Test", 2),
        ("我司CEO与我司吉祥物...好大一坨！", 16),
        # Worked out from the same rule (half units over UTF-16, rounded up; links 20 half units):
        ("", 0),
        ("a", 1),
        ("ab", 1),
        ("abc", 2),
        ("北京地铁", 4),
        ("，。！？", 4),  # full-width punctuation: one each
        (",.!?", 2),  # half-width: half each
        ("é", 1),  # only ASCII (up to U+0080) is half width
        ("ée", 2),
        ("\U0001f600", 2),  # an astral emoji is two UTF-16 units of two halves each
        (FAMILY, 11),  # 4 emoji x 4 + 3 ZWJ x 2 = 22 halves
        ("详情：https://example.com/alerts/12345", 3 + 10),
        ("go https://example.com/x", 12),  # 3 + 20 = 23 halves
        ("https://example.com/" + "a" * 200, 50),  # 220 bytes: 220 - 140 + 20 = 100 halves
        ("#北京地铁# @北京地铁", 10),  # 1 + 8 + 1 + 1 + 1 + 8 halves
    ],
)
def test_weibo_counts(text: str, count: int) -> None:
    assert weibo().count(text) == count


def test_weibo_limit() -> None:
    assert weibo().fits("地" * 140)
    assert not weibo().fits("地" * 141)
    assert weibo().fits("a" * 280)
    assert not weibo().fits("a" * 281)  # 140.5 rounds up to 141
    assert weibo().fits("地" * 130 + "https://example.com/a/long/link")
    assert not weibo().fits("地" * 131 + "https://example.com/a/long/link")
    assert weibo(limit=2000).fits("地" * 2000)
