"""Posts carrying several languages say so: Bluesky's `langs` lists each language a post holds; Mastodon (one
language per status) posts one status per language, threaded, with `languages_per_status = "separate"`; by
default it keeps one combined status tagged with the first language. Against the loopback platform server."""

from __future__ import annotations

from rig import Rig, poll_all, running
from support.microblog_server import MicroblogServer
from test_channels import SIGNAL, alert, channels, until
from test_no_doubled_words import CHANNELS, alert_notice, render

from broadcaster.render.posts import posts_for


async def test_bluesky_tags_a_two_language_post_with_both_languages(rig: Rig, server: MicroblogServer) -> None:
    rig.serve_rt(alert(SIGNAL))
    tables = [t for t in channels(server, {"bluesky": ["zh", "en"]}) if t["kind"] == "bluesky"]
    async with running(rig.config(channels=tables)) as b:
        await poll_all(b)
        await until(lambda: len(server.bluesky_posts()) == 1, b)
    (post,) = server.bluesky_posts()
    assert "信号故障" in post.text
    assert "Signal fault" in post.text
    assert post.langs == ("zh", "en")


async def test_mastodon_combined_by_default_is_one_status_tagged_with_the_first_language(
    rig: Rig, server: MicroblogServer
) -> None:
    rig.serve_rt(alert(SIGNAL))
    tables = [t for t in channels(server) if t["kind"] == "mastodon"]
    async with running(rig.config(channels=tables)) as b:
        await poll_all(b)
        await until(lambda: len(server.mastodon_statuses()) == 1, b)
    (status,) = server.mastodon_statuses()
    assert "信号故障" in status.text
    assert "Signal fault" in status.text
    assert status.language == "zh"


async def test_mastodon_separate_posts_one_status_per_language_in_a_thread(rig: Rig, server: MicroblogServer) -> None:
    rig.serve_rt(alert(SIGNAL))
    tables = [t for t in channels(server) if t["kind"] == "mastodon"]
    tables[0]["languages_per_status"] = "separate"
    async with running(rig.config(channels=tables)) as b:
        await poll_all(b)
        await until(lambda: len(server.mastodon_statuses()) == 2, b)
        await until(lambda: b.pending() == 0, b)
    first, second = server.mastodon_statuses()
    assert (first.language, second.language) == ("zh", "en")
    assert "信号故障" in first.text
    assert "Signal fault" not in first.text
    assert "Signal fault" in second.text
    assert "信号故障" not in second.text
    assert first.in_reply_to_id is None
    assert second.in_reply_to_id == first.id


def test_each_part_of_a_split_bluesky_thread_lists_the_languages_it_holds() -> None:
    notice = alert_notice(description=True)
    channel, profile = CHANNELS[2]

    rendered = render(notice)

    def full(lang: str, detail: int) -> str:
        return rendered(lang, 2)  # the description at every level: even the headline needs a thread

    posts = posts_for(notice, channel, profile, full, "zh")
    assert len(posts) > 2
    assert posts[-1].languages == ("en",)  # the English tail, with the link
    assert {lang for p in posts for lang in p.languages} == {"zh", "en"}
    for post in posts:
        has_cjk = any("\u4e00" <= ch <= "\u9fff" for ch in post.text)
        has_latin = any(ch.isascii() and ch.isalpha() for ch in post.text.split("https://")[0])
        assert ("zh" in post.languages) == has_cjk, post.text
        assert ("en" in post.languages) == has_latin, post.text
