"""Hashtags per line and station (docs/channels.md, "Hashtags"): valid on every platform, fitted within its length
rule, written as each platform writes them, and on Bluesky carried by facets that slice exactly the '#tag' bytes.

The platforms' rules are restated here from their sources, not imported from the code under test: Mastodon's
`Tag::Naming` (HASHTAG_NAME_PAT, HASHTAG_RE: a tag follows the start or white space) and Bluesky's rich-text tag
detection (@atproto/api TAG_REGEX, trailing punctuation stripped) with the facet lexicon's limits.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import regex
from hypothesis import event, given, settings
from hypothesis import strategies as st
from rig import Rig, poll_all, running
from support.gtfs_rt_builders import alert_entity, selector
from support.microblog_server import MicroblogServer, mastodon_length, weibo_length

from broadcaster.channels.bluesky import facets
from broadcaster.checking.offline import check_offline
from broadcaster.cli import main
from broadcaster.compose import Notice, NoticeKind, Priority
from broadcaster.config import HashtagsConfig, parse_config
from broadcaster.errors import ConfigError
from broadcaster.feeds.network import load_network
from broadcaster.model import Line, LocalizedText, Network, Severity, Station
from broadcaster.posts import Post
from broadcaster.render.hashtags import MAX_TAG_BYTES, MAX_TAG_GRAPHEMES, Hashtags, NoticeTags, clean_tag
from broadcaster.render.length import PlatformProfile, bluesky, grapheme_count, mastodon, weibo
from broadcaster.render.posts import PostStyle, merged_posts, styled_posts

# --- the platforms' rules, restated ------------------------------------------------------------------------------

# Mastodon app/models/concerns/tag/naming.rb. Ruby's [[:word:]] is Letter | Mark | Decimal_Number |
# Connector_Punctuation, [[:alpha:]] is Alphabetic.
_WORD = r"[\p{L}\p{M}\p{Nd}\p{Pc}]"
_SEPARATORS = "_\u00b7\u30fb\u200c"
_FIRST = rf"{_WORD}[{_WORD[1:-1]}{_SEPARATORS}]*[\p{{Alphabetic}}{_SEPARATORS}][{_WORD[1:-1]}{_SEPARATORS}]*{_WORD}"
_LAST = rf"{_WORD}*\p{{Alphabetic}}{_WORD}*"
MASTODON_NAME = regex.compile(rf"(?:{_FIRST}|{_LAST})", regex.IGNORECASE)
MASTODON_HASHTAG = regex.compile(rf"(?<=^|\s)[#＃]({_FIRST}|{_LAST})")
# Mastodon's HashtagNormalizer keeps only these ([[:alnum:]], Thai marks, the separators): what it would change.
MASTODON_INVALID = regex.compile(rf"[^\p{{Alphabetic}}\p{{Nd}}\u0e47-\u0e4e{_SEPARATORS}]")

# bluesky-social/atproto packages/api/src/rich-text/detection.ts
_INVISIBLE = "\u00ad\u2060\u200a\u200b\u200c\u200d\u20e2"
BLUESKY_TAG = regex.compile(
    rf"(^|\s)[#＃]((?!\ufe0f)[^\s{_INVISIBLE}]*[^0-9\s\p{{P}}{_INVISIBLE}]+[^\s{_INVISIBLE}]*)?")
TRAILING_PUNCTUATION = regex.compile(r"\p{P}+$")


def mastodon_tags(text: str) -> list[str]:
    return [match.group(1) for match in MASTODON_HASHTAG.finditer(text)]


def bluesky_detected_tags(text: str) -> list[str]:
    found = []
    for match in BLUESKY_TAG.finditer(text):
        tag = TRAILING_PUNCTUATION.sub("", (match.group(2) or "").strip())
        if tag:
            found.append(tag)
    return found


def tag_facets(text: str) -> list[tuple[str, str]]:
    """(the bytes a tag facet covers, decoded; its tag) for each tag facet of `text`."""
    encoded = text.encode()
    out = []
    for facet in facets(text):
        feature = facet["features"][0]
        if feature["$type"] == "app.bsky.richtext.facet#tag":
            index = facet["index"]
            out.append((encoded[index["byteStart"]:index["byteEnd"]].decode(), feature["tag"]))
    return out


# --- names as feeds and operators write them ----------------------------------------------------------------------

NAME_ALPHABET = st.one_of(
    st.sampled_from("人民广场西直门号线机场东站"),
    st.sampled_from("LineAirportExpréssß"),
    st.sampled_from("0123456789２"),
    st.sampled_from(" -·.'()（）,，。/&_#＃@!"),
    st.sampled_from(["\U0001f687", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f1e8\U0001f1f3", "\ufe0f"]),
    st.sampled_from(["e\u0301", "\u0915\u093f", "\u0947", "\u20e2", "\u200d", "\u00ad", "Ⅱ", "②"]),
    st.characters(codec="utf-8", exclude_categories=("Cs", "Co", "Cn")),
)
NAMES = st.lists(NAME_ALPHABET, min_size=0, max_size=90).map("".join)


# --- tags: valid on every platform ---------------------------------------------------------------------------------


@settings(max_examples=400)
@given(NAMES)
def test_a_tag_made_of_any_name_is_one_whole_tag_on_mastodon_and_bluesky(name: str) -> None:
    tag = clean_tag(name)
    if tag is None:
        assert not any(unicodedata.category(c)[0] == "L" for c in unicodedata.normalize("NFC", name))
        return
    assert MASTODON_NAME.fullmatch(tag), tag
    # Mastodon's normaliser indexes a tag without the marks [[:alnum:]] lacks (a virama): the text keeps them, as
    # riders spell the name, and a search for the tag as written is normalised the same way. Nothing else goes.
    assert all(unicodedata.category(c) in ("Mn", "Mc") for c in MASTODON_INVALID.findall(tag)), tag
    assert grapheme_count(tag) <= MAX_TAG_GRAPHEMES
    assert len(tag.encode()) <= MAX_TAG_BYTES
    post = f"2号线 信号故障\n#{tag} #Line2"
    assert mastodon_tags(post) == [tag, "Line2"]
    assert bluesky_detected_tags(post) == [tag, "Line2"]
    assert clean_tag(tag) == tag  # made once, the same for good


def test_tags_keep_letters_and_digits_and_drop_what_a_tag_cannot_hold() -> None:
    assert clean_tag("2号线") == "2号线"
    assert clean_tag("Line 2") == "Line2"
    assert clean_tag("St. Paul's (North)") == "StPaulsNorth"
    assert clean_tag("人民广场·南") == "人民广场南"
    assert clean_tag("_Airport_Express_") == "Airport_Express"
    assert clean_tag("Cafe\u0301") == "Café"  # composed, not dropped
    assert clean_tag("2") is None  # no letter: Mastodon takes "#2" for no tag
    assert clean_tag("🚇 ·") is None
    assert clean_tag("机" * 100) == "机" * MAX_TAG_GRAPHEMES


def test_marks_that_spell_a_letter_stay_in_a_tag() -> None:
    # Dropped, the Devanagari virama misspelt "स्टेशन" (station) as "सटेशन", and Arabic vowel marks went; Mastodon's
    # [[:word:]] and Bluesky's detection take them into the tag whole.
    for name in ("स्टेशन", "চট্টগ্রাম", "مَحَطَّة"):
        assert clean_tag(name) == name
        post = f"Line 2 delayed\n#{name} #Line2"
        assert mastodon_tags(post) == [name, "Line2"]
        assert bluesky_detected_tags(post) == [name, "Line2"]
    assert clean_tag("Metro\u20dd") == "Metro"  # an enclosing mark draws, it does not spell
    assert clean_tag("Line\ufe0f2") == "Line2"  # a variation selector dresses an emoji


def test_thai_tone_marks_stay_in_a_tag_as_mastodon_keeps_them() -> None:
    # Mastodon's Tag::HASHTAG_INVALID_CHARS_RE keeps U+0E47-U+0E4E beside [[:alnum:]]; dropped, "ห้าแยก" (Ha Yaek,
    # "five-way junction") would become "หาแยก" and "อนุสาวรีย์ชัยสมรภูมิ" (Victory Monument) lose its silent mark.
    for name in ("ห้าแยก", "อนุสาวรีย์ชัยสมรภูมิ", "สยาม"):
        assert clean_tag(name) == name
        post = f"สายสีเขียว ล่าช้า\n#{name} #Line2"
        assert mastodon_tags(post) == [name, "Line2"]
        assert bluesky_detected_tags(post) == [name, "Line2"]
        assert not MASTODON_INVALID.search(name)
    assert clean_tag("\u0e49ห้า") == "ห้า"  # a tone mark does not start a tag


@settings(max_examples=300)
@given(st.lists(NAMES, min_size=1, max_size=4), NAMES)
def test_every_tag_facet_slices_exactly_its_hashtag_out_of_the_utf8_text(names: list[str], before: str) -> None:
    tags = [tag for tag in map(clean_tag, names) if tag is not None]
    text = f"{before}\nhttps://metro.example/a\n" + " ".join(f"#{tag}" for tag in tags)
    found = tag_facets(text)
    for covered, tag in found:
        assert covered in (f"#{tag}", f"＃{tag}")
    assert [tag for _, tag in found][len(found) - len(tags):] == tags


# --- config --------------------------------------------------------------------------------------------------------

NETWORK_DIR = Path(__file__).resolve().parent.parent / "config" / "network"


def config_with(hashtags: dict[str, Any], channel: dict[str, Any] | None = None) -> Any:
    data: dict[str, Any] = {"network": {"gtfs": str(NETWORK_DIR)},
                            "feeds": [{"name": "ops", "kind": "gtfs-rt", "url": "http://127.0.0.1:9/rt.pb"}],
                            "hashtags": hashtags}
    if channel is not None:
        data["channels"] = [channel]
    return parse_config(data, Path("/etc/broadcaster/broadcaster.toml"))


@pytest.mark.parametrize(("hashtags", "key"), [
    ({"line": {"zh": "{shortname}号线"}}, "hashtags.line.zh"),
    ({"line": {"en": "Line{short_name!r}"}}, "hashtags.line.en"),
    ({"line": {"en": "Line{short_name:>3}"}}, "hashtags.line.en"),
    ({"line": {"en": "Line{0}"}}, "hashtags.line.en"),
    ({"station": {"en": "{short_name}"}}, "hashtags.station.en"),  # a station has no short name
    ({"station": {"zh": "{name"}}, "hashtags.station.zh"),
    ({"stations": {"S04": {"en": "{nom}"}}}, "hashtags.stations.S04.en"),
    ({"line": {"zh-Hans": "{short_name}号线"}}, "hashtags.line.zh-Hans"),
    ({"lines": {"2": {"zh": "二号线"}}, "colour": 1}, "hashtags.colour"),
])
def test_a_bad_pattern_is_refused_at_load_naming_its_key(hashtags: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_with(hashtags)
    message = str(caught.value)
    assert f": {key}: " in message, message
    assert "nom" not in message
    assert "shortname" not in message


def test_an_unknown_placeholder_says_which_ones_exist() -> None:
    with pytest.raises(ConfigError, match=r"unknown placeholder; use \{short_name\}, \{name\}, \{id\}"):
        config_with({"line": {"zh": "{shortname}号线"}})


def test_an_override_for_a_line_the_network_lacks_is_a_config_error() -> None:
    config = config_with({"lines": {"9": {"zh": "九号线"}}})
    with pytest.raises(ConfigError, match=r"hashtags\.lines\.9: is not in the network's GTFS"):
        Hashtags(config.hashtags, load_network(config.network.gtfs, config.network.default_language), config.source)


def test_run_once_and_preview_refuse_an_unknown_override_before_the_state_directory_is_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found late before: the lock taken, the database opened and the channels logged in, then a ConfigError.
    path = tmp_path / "broadcaster.toml"
    path.write_text(f'[network]\ngtfs = "{NETWORK_DIR.as_posix()}"\n[[feeds]]\nname = "ops"\nkind = "gtfs-rt"\n'
                    f'url = "http://127.0.0.1:9/rt.pb"\n[state]\ndirectory = "{(tmp_path / "state").as_posix()}"\n'
                    '[hashtags]\nstations = { S99 = { zh = "不存在" } }\n', encoding="utf-8")
    for command in ("once", "run", "preview"):
        assert main([command, "-c", str(path)]) == 2
        assert capsys.readouterr().err.startswith(f"broadcaster: {path}: hashtags.stations.S99: is not in the")
    assert not (tmp_path / "state").exists()


def test_check_offline_reports_an_override_for_a_station_the_network_lacks() -> None:
    config = config_with({"stations": {"S99": {"zh": "不存在"}}})
    with pytest.raises(ConfigError, match=r"hashtags\.stations\.S99: is not in the network's GTFS"):
        check_offline(config)


def test_defaults_and_the_per_channel_switch() -> None:
    config = config_with({}, {"name": "m", "kind": "mastodon", "url": "https://m.example", "token": {"env": "T"},
                              "hashtags": False})
    assert config.hashtags == HashtagsConfig()
    assert config.hashtags.line == {"zh": "{short_name}号线", "en": "Line{short_name}"}
    assert config.channels[0].hashtags is False


# --- a small network -------------------------------------------------------------------------------------------------


def network(line_names: dict[str, tuple[str, str, str]], station_names: dict[str, tuple[str, str]]) -> Network:
    lines = {i: Line(i, short, LocalizedText.of(zh=zh, en=en)) for i, (short, zh, en) in line_names.items()}
    stations = {i: Station(i, LocalizedText.of(zh=zh, en=en)) for i, (zh, en) in station_names.items()}
    empty: MappingProxyType[str, Any] = MappingProxyType({})
    return Network(MappingProxyType(lines), MappingProxyType(stations), empty, empty, empty)


METRO = network({"2": ("2", "2号线", "Line 2"), "3": ("3", "3号线", "Line 3")},
                {"S04": ("人民广场", "People's Square"), "S05": ("火车站", "Railway Station")})
DEFAULT_TAGS = Hashtags(HashtagsConfig(), METRO)


def notice(lines: tuple[str, ...] = ("2",), stations: tuple[str, ...] = (), *, kind: NoticeKind = NoticeKind.ALERT_NEW,
           notice_id: str = "alert-A") -> Notice:
    return Notice(notice_id, "v1", kind, Priority.NORMAL, datetime(2026, 12, 3, 8, tzinfo=UTC), lines, stations,
                  Severity.WARNING, {"zh": {}, "en": {}})


def texts(by_detail: dict[str, list[str]]) -> Any:
    """A RenderText giving, per language, the text at detail 2, 1, 0."""
    return lambda language, detail: by_detail[language][2 - detail]


MASTODON_STYLE = PostStyle(frozenset({"alert_new"}), ("zh", "en"), hashtags=True, tag_form="#{}")
WEIBO_STYLE = PostStyle(frozenset({"alert_new"}), ("zh",), hashtags=True, tag_form="#{}#")
BLUESKY_STYLE = PostStyle(frozenset({"alert_new"}), ("zh", "en"), hashtags=True, tag_form="#{}")


def test_names_become_the_configured_tags_per_language() -> None:
    tags = DEFAULT_TAGS.for_notice(("2",), ("S04",), ("zh", "en"))
    assert tags == NoticeTags(("2号线", "Line2"), ("人民广场", "PeoplesSquare"))
    custom = Hashtags(HashtagsConfig(line={"zh": "{name}"}, station={"en": "{name}Stn"},
                                     lines={"3": {"zh": "三号线"}}, stations={"S05": {"en": "{id}"}}), METRO)
    assert custom.for_notice(("2", "3"), ("S04", "S05"), ("zh", "en")) == NoticeTags(
        ("2号线", "三号线"), ("PeoplesSquareStn", "S05"))  # zh stations: no pattern, no tag
    assert custom.station_tag("S05", "zh") is None


def test_a_notice_on_line_2_posts_its_tags_in_each_platforms_form() -> None:
    render = texts({"zh": ["2号线：信号故障，列车晚点。详情见站内广播。", "2号线：信号故障，列车晚点。",
                           "2号线：信号故障"],
                    "en": ["Line 2: signal fault, trains delayed. Listen for announcements.",
                           "Line 2: signal fault, trains delayed.", "Line 2: signal fault"]})
    [toot] = styled_posts(notice(), MASTODON_STYLE, mastodon(), render, "zh", DEFAULT_TAGS)
    assert toot.text.endswith("\n#2号线 #Line2")
    assert mastodon_tags(toot.text) == ["2号线", "Line2"]
    assert toot.line_tags == ("2号线", "Line2")
    assert toot.tag_form == "#{}"
    [topic] = styled_posts(notice(), WEIBO_STYLE, weibo(), render, "zh", DEFAULT_TAGS)
    assert topic.text == "2号线：信号故障，列车晚点。详情见站内广播。\n#2号线#"
    [skeet] = styled_posts(notice(), BLUESKY_STYLE, bluesky(), render, "zh", DEFAULT_TAGS)
    assert tag_facets(skeet.text) == [("#2号线", "2号线"), ("#Line2", "Line2")]
    off = styled_posts(notice(), replace(MASTODON_STYLE, hashtags=False), mastodon(), render, "zh", DEFAULT_TAGS)
    assert "#" not in off[0].text
    assert off[0].tags == ()
    [hook] = styled_posts(notice(), replace(MASTODON_STYLE, tag_form=None), None, render, "zh", DEFAULT_TAGS)
    assert "#" not in hook.text
    assert hook.tags == ("2号线", "Line2")
    assert Post.from_payload(hook.to_payload()) == hook


def test_near_the_limit_station_tags_go_before_line_tags_and_the_facts_never() -> None:
    headline = "2号线人民广场站：信号故障，列车晚点，请改乘其他线路。" * 3  # 81 CJK characters
    render = texts({"zh": [headline + "详细说明" * 40, headline + "预计十点恢复。", headline]})
    profile = weibo(limit=len(headline) + len("\n#2号线# #3号线#") - 2)  # room for both line topics, none more
    [post] = styled_posts(notice(("2", "3"), ("S04", "S05")), WEIBO_STYLE, profile, render, "zh", DEFAULT_TAGS)
    assert post.text == f"{headline}\n#2号线# #3号线#"
    assert (post.line_tags, post.station_tags) == (("2号线", "3号线"), ())
    tighter = weibo(limit=profile.limit - 4)
    [post] = styled_posts(notice(("2", "3"), ("S04", "S05")), WEIBO_STYLE, tighter, render, "zh", DEFAULT_TAGS)
    assert post.text == f"{headline}\n#2号线#"
    assert post.line_tags == ("2号线",)
    [bare] = styled_posts(notice(("2", "3"), ("S04",)), WEIBO_STYLE, weibo(limit=len(headline)), render, "zh",
                          DEFAULT_TAGS)
    assert bare.text == headline
    assert bare.tags == ()
    roomy = weibo(limit=1000)
    [full] = styled_posts(notice(("2", "3"), ("S04", "S05")), WEIBO_STYLE, roomy, render, "zh", DEFAULT_TAGS)
    assert full.text.endswith("\n#2号线# #3号线# #人民广场# #火车站#")
    assert full.text.startswith(headline + "详细说明")  # the richest level, with every tag


def test_a_notice_too_long_for_one_post_is_a_thread_without_tags() -> None:
    long = "2号线信号故障，列车晚点，请改乘其他线路。" * 20
    render = texts({"zh": [long, long, long]})
    posts = styled_posts(notice(), WEIBO_STYLE, weibo(), render, "zh", DEFAULT_TAGS)
    assert len(posts) > 1
    assert all("#2号线#" not in p.text and p.tags == () for p in posts)


def test_a_budget_merge_carries_each_tag_once_in_one_tag_line() -> None:
    render_a = texts({"zh": ["2号线：信号故障。", "2号线：信号故障。", "2号线：信号故障"],
                      "en": ["Line 2: signal fault.", "Line 2: signal fault.", "Line 2: signal fault"]})
    render_b = texts({"zh": ["2号线人民广场站拥挤。", "2号线人民广场站拥挤。", "人民广场站拥挤"],
                      "en": ["Line 2: People's Square is crowded.", "Crowded.", "Crowded"]})
    [a] = styled_posts(notice(), BLUESKY_STYLE, bluesky(), render_a, "zh", DEFAULT_TAGS)
    [b] = styled_posts(notice(("2",), ("S04",), notice_id="crowding-S04"), BLUESKY_STYLE, bluesky(), render_b, "zh",
                       DEFAULT_TAGS)
    [merged] = merged_posts([a, b], bluesky(), "merged-1")
    assert merged.text.count("#2号线") == 1
    assert merged.text.count("#Line2") == 1
    assert merged.text.endswith("\n#2号线 #Line2 #人民广场 #PeoplesSquare")
    assert "信号故障" in merged.text
    assert "拥挤" in merged.text
    assert [tag for _, tag in tag_facets(merged.text)] == ["2号线", "Line2", "人民广场", "PeoplesSquare"]
    assert all(covered == f"#{tag}" for covered, tag in tag_facets(merged.text))
    tight = bluesky(max_graphemes=grapheme_count(merged.text) - 3)
    [briefer] = merged_posts([a, b], tight, "merged-1")  # the briefs, with every tag still
    assert briefer.text.startswith("2号线：信号故障\n\nLine 2: signal fault\n人民广场站拥挤")
    assert briefer.text.endswith("\n#2号线 #Line2 #人民广场 #PeoplesSquare")
    tighter = bluesky(max_graphemes=grapheme_count(briefer.text) - 1)
    [shorter] = merged_posts([a, b], tighter, "merged-1")
    assert shorter.text == briefer.text.removesuffix(" #PeoplesSquare")
    assert shorter.station_tags == ("人民广场",)


# --- properties: every post with tags fits its platform, every tag valid there ------------------------------------

LINE_NAMES = st.tuples(NAMES.map(lambda n: n[:6]), NAMES, NAMES)
PROFILES: list[tuple[str, PlatformProfile, PostStyle]] = [
    ("mastodon", mastodon(), MASTODON_STYLE),
    ("mastodon-cw", mastodon(), MASTODON_STYLE),  # an emergency: its content warning shares the limit
    ("bluesky", bluesky(), BLUESKY_STYLE),
    ("weibo", weibo(), WEIBO_STYLE),
    ("weibo-link", weibo(), replace(WEIBO_STYLE, link="https://metro.example/notices")),
]
BODY = st.tuples(st.text(alphabet=st.sampled_from([*list("信号故障列车晚点，。 Trains delayed.2"), "🚇", "\n"]),
                         min_size=1, max_size=40), st.integers(0, 12)).map(lambda drawn: drawn[0] * drawn[1])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["1", "2", "3"]), LINE_NAMES, min_size=1),
       st.dictionaries(st.sampled_from(["S1", "S2", "S3"]), st.tuples(NAMES, NAMES)),
       st.tuples(BODY, BODY, BODY), st.integers(1, 320), st.sampled_from(PROFILES))
def test_every_post_with_tags_fits_its_platform_and_its_tags_are_whole(
    lines: dict[str, tuple[str, str, str]], stations: dict[str, tuple[str, str]], bodies: tuple[str, str, str],
    headline_length: int, platform: tuple[str, PlatformProfile, PostStyle],
) -> None:
    name, profile, style = platform
    hashtags = Hashtags(HashtagsConfig(station={"zh": "{name}", "en": "{name}"}), network(lines, stations))
    every = hashtags.for_notice(tuple(lines), tuple(stations), style.languages)
    # The headline is any length around every platform's limit, so tags fit whole, in part or not at all.
    headline = ("2号线信号故障，Line 2 signal fault. " * 20)[:headline_length].strip() or "故障"
    render = texts({"zh": [bodies[0] + bodies[1] + headline, bodies[1] + headline, headline],
                    "en": [bodies[2] + bodies[0], bodies[2], bodies[2][:20] or "Fault"]})
    spoiler = "紧急 Urgent" if name == "mastodon-cw" else ""
    emergency = name == "mastodon-cw"
    the_notice = replace(notice(tuple(lines), tuple(stations)),
                         priority=Priority.EMERGENCY if emergency else Priority.NORMAL)
    style = replace(style, emergency_spoiler_text=spoiler or None)
    posts = styled_posts(the_notice, style, profile, render, "zh", hashtags)
    for post in posts:
        if name.startswith("mastodon"):
            assert mastodon_length(post.text, post.spoiler_text or "") <= 500
        elif name == "bluesky":
            assert grapheme_count(post.text) <= 300
            assert len(post.text.encode()) <= 3000
        else:
            assert weibo_length(post.text) <= 140
        assert every.all[: len(post.tags)] == post.tags  # only ever the last tags dropped: stations, then lines
        event("tags dropped" if post.tags != every.all else "every tag" if every else "no tags")
        if post.tags:
            assert len(posts) == 1
            line = post.text.rsplit("\n", 1)[1]
            assert line == " ".join(style.tag_form.format(tag) for tag in post.tags)  # type: ignore[union-attr]
            if name.startswith("mastodon"):
                assert mastodon_tags(line) == list(post.tags)
            if name == "bluesky":
                assert [tag for _, tag in tag_facets(line)] == list(post.tags)
                assert all(covered == f"#{tag}" for covered, tag in tag_facets(post.text)[-len(post.tags):])


# --- end to end: feeds -> broadcaster -> the loopback platforms ----------------------------------------------------


def e2e_channels(server: MicroblogServer, atom: Path) -> list[dict[str, Any]]:
    return [
        {"name": "mastodon", "kind": "mastodon", "url": server.url, "token": {"env": "T_MASTODON"},
         "languages": ["zh", "en"], "timeout_seconds": 2},
        {"name": "bluesky", "kind": "bluesky", "url": server.url, "identifier": server.bluesky_identifier,
         "password": {"env": "T_BLUESKY"}, "languages": ["zh", "en"], "timeout_seconds": 2},
        {"name": "weibo", "kind": "weibo", "url": server.url, "access_token": {"env": "T_WEIBO"},
         "languages": ["zh"], "timeout_seconds": 2},
        {"name": "webhook", "kind": "webhook", "url": server.webhook_url("ops"), "secret": {"env": "T_HOOK"},
         "languages": ["zh", "en"], "timeout_seconds": 2},
        {"name": "quiet-hook", "kind": "webhook", "url": server.webhook_url("quiet"), "languages": ["zh"],
         "timeout_seconds": 2, "hashtags": False},
        {"name": "timeline", "kind": "atom", "path": str(atom), "languages": ["zh", "en"]},
    ]


def line_2_alert(header: dict[str, str]) -> Any:  # a FeedEntity
    return alert_entity("A-L2", header=header, informed=[selector(route_id="2"), selector(stop_id="S04")],
                        cause="TECHNICAL_PROBLEM", effect="SIGNIFICANT_DELAYS", severity="WARNING")


async def posted_everywhere(rig: Rig, server: MicroblogServer, header: dict[str, str]) -> None:
    rig.serve_rt(line_2_alert(header))
    config = rig.config(channels=e2e_channels(server, rig.tmp_path / "timeline.atom"),
                        hashtags={"line": {"zh": "{short_name}号线", "en": "Line{short_name}"},
                                  "station": {"zh": "{name}", "en": "{name}"}})
    async with running(config) as b:
        await poll_all(b)
        async with asyncio.timeout(15):
            while b.pending() > 0:
                b.dispatcher.wake()
                for channel in b.channels:
                    await b.drain_due(channel)
                await asyncio.sleep(0.05)  # let the server thread answer; bounded by the timeout above
        assert not any(status == "parked" for _, status in b.history.depth())


async def test_a_notice_on_line_2_carries_its_tags_on_every_platform(rig: Rig, server: MicroblogServer) -> None:
    server.bluesky_strict = True  # a facet off by a byte, or naming another tag, is refused
    await posted_everywhere(rig, server, {"zh": "信号故障，列车晚点", "en": "Signal fault, trains delayed"})
    [status] = server.mastodon_statuses()
    assert status.text.endswith("\n#2号线 #Line2 #人民广场 #PeoplesSquare")
    assert mastodon_tags(status.text) == ["2号线", "Line2", "人民广场", "PeoplesSquare"]
    [skeet] = server.bluesky_posts()
    encoded = skeet.text.encode()
    tags = [(encoded[f["index"]["byteStart"]:f["index"]["byteEnd"]].decode(), f["features"][0]["tag"])
            for f in skeet.facets if f["features"][0]["$type"] == "app.bsky.richtext.facet#tag"]
    assert tags == [("#2号线", "2号线"), ("#Line2", "Line2"), ("#人民广场", "人民广场"),
                    ("#PeoplesSquare", "PeoplesSquare")]
    [topic] = server.weibo_statuses()
    assert topic.text.endswith("\n#2号线# #人民广场#")
    [delivery] = server.webhook_deliveries("ops")
    assert delivery.json()["tags"] == ["2号线", "Line2", "人民广场", "PeoplesSquare"]
    assert "#" not in delivery.json()["text"]
    [quiet] = server.webhook_deliveries("quiet")
    assert quiet.json()["tags"] == []
    atom = ET.parse(rig.tmp_path / "timeline.atom").getroot()
    terms = [c.get("term") for c in atom.iter("{http://www.w3.org/2005/Atom}category")]
    assert terms == ["alert_new", "2号线", "Line2", "人民广场", "PeoplesSquare"]


async def test_near_weibos_limit_the_station_topic_goes_first_and_the_facts_stay(
    rig: Rig, server: MicroblogServer,
) -> None:
    # The headline is "2号线：", this header and "\n（HH:MM发布）", 135 units; "\n#2号线#" costs 4 more and
    # " #人民广场#" 5.5: room for the line's topic and not the station's.
    header = ("受信号设备故障影响列车限速运行请乘客合理安排出行时间" * 5)[:125]
    await posted_everywhere(rig, server, {"zh": header, "en": "Signal fault"})
    [topic] = server.weibo_statuses()
    assert re.fullmatch(rf"2号线：{header}\n（\d\d:\d\d发布）\n#2号线#", topic.text), topic.text
    assert "#人民广场#" not in topic.text
    assert weibo_length(topic.text) <= 140
