"""Operator text goes through the feed text boundary (broadcaster/text.py): a notice with a vertical tab, a
right-to-left override, a live @mention, a script and 10,000 characters, sent through the admin API and through
the `broadcaster announce` process, comes out clean on MQTT, on the loopback platforms and in a timeline.atom
that still parses and still holds the earlier entries."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rig import Rig, poll_all, running
from support import MessageRecorder, collect_retained
from support.microblog_server import MicroblogServer
from test_admin import admin_config, api, bearer
from test_channels import channels, until

from broadcaster import desk
from broadcaster.operator import NoticeRequest
from broadcaster.text import TEXT_LIMIT, clean_text

ATOM = "{http://www.w3.org/2005/Atom}"
EVIL = ("Line 2 \x0bdelayed \u202eby a fault\u202c, ask @metro_ops <script>alert('pwned')</script>"
        + " More detail follows." * 500)  # about 10,600 characters
FIRST = {"en": "Exit B closed", "zh": "B口关闭"}


# The admin tokens' environment (T_ADMIN, T_ADMIN_OTHER) for every test here; the `rig` is conftest's.
pytestmark = pytest.mark.usefixtures("admin_tokens")


def outlets(rig: Rig, server: MicroblogServer) -> list[dict[str, Any]]:
    """Mastodon and Bluesky on the loopback server, and an Atom timeline."""
    return [*(c for c in channels(server) if c["name"] in ("mastodon", "bluesky")),
            {"name": "timeline", "kind": "atom", "path": str(rig.tmp_path / "timeline.atom")}]


#: What a template adds around the 2,000 characters of a header (the line's name, the time, a link).
TEMPLATE_ROOM = 200


def assert_clean(text: str, limit: int = TEXT_LIMIT + TEMPLATE_ROOM) -> None:
    assert len(text) <= limit, len(text)
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", text), repr(text[:200])
    assert "<script>" not in text
    assert "pwned" not in text
    assert not re.search("@(?!\u2060)metro_ops", text), "a live mention"


def strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def atom_entries(rig: Rig) -> list[str]:
    """The timeline's entries' texts; parsing fails on any XML-illegal character."""
    root = ET.parse(rig.tmp_path / "timeline.atom").getroot()
    return [e.findtext(f"{ATOM}content") or "" for e in root.findall(f"{ATOM}entry")]


def assert_everything_clean(rig: Rig, server: MicroblogServer, notices: list[Any], retained: dict[str, bytes]) -> None:
    for message in notices:
        for text in strings(orjson.loads(message.payload)):
            assert_clean(text)
    headers = []
    for payload in retained.values():
        for text in strings(orjson.loads(payload)):
            assert_clean(text)
        headers += [h for h in strings(orjson.loads(payload).get("header", {})) if "delayed" in h]
    assert headers, "the notice's retained alert"
    for header in headers:
        assert_clean(header, TEXT_LIMIT)  # cut at the boundary's limit, like a feed's header
        assert header.endswith("…")
    for status in server.mastodon_statuses():
        assert_clean(status.text)
    for post in server.bluesky_posts():
        assert_clean(post.text)
    entries = atom_entries(rig)
    for text in entries:
        assert_clean(text)
    assert any("B口关闭" in t or "Exit B closed" in t for t in entries), "the earlier entry is kept"
    assert any("delayed" in t for t in entries)


async def test_operator_text_through_the_admin_api_comes_out_clean_everywhere(
    rig: Rig, server: MicroblogServer
) -> None:
    config = admin_config(rig, channels=outlets(rig, server))
    async with (api(config) as (b, http),
                MessageRecorder(rig.mqtt_url, rig.topic("notices")) as stream):
        await poll_all(b)
        first = await http.post("/v1/notices", json={"texts": FIRST, "line_ids": ["2"]}, headers=bearer())
        assert first.status_code == 201, first.text
        await until(lambda: b.pending() == 0, b)
        evil = await http.post("/v1/notices", json={"texts": {"en": EVIL, "zh": EVIL}, "line_ids": ["2"]},
                               headers=bearer())
        assert evil.status_code == 201, evil.text
        fixed = await http.post(f"/v1/notices/{first.json()['notice_id']}/corrections",
                                json={"texts": {"en": "Exit B \x0bopen @metro_ops\u202e"}}, headers=bearer())
        assert fixed.status_code == 201, fixed.text
        await until(lambda: b.pending() == 0, b)
        notices = await stream.settle(quiet=0.5)
        retained = await collect_retained(rig.mqtt_url, rig.topic("#"))
    assert len(notices) == 3
    assert_everything_clean(rig, server, notices, retained)
    assert len(server.mastodon_statuses()) >= 3


async def test_operator_text_through_the_announce_command_comes_out_clean_everywhere(
    rig: Rig, server: MicroblogServer
) -> None:
    path = rig.write_config(channels=outlets(rig, server))
    async with MessageRecorder(rig.mqtt_url, rig.topic("notices")) as stream:
        for texts in (FIRST, {"en": EVIL, "zh": EVIL}):
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "broadcaster", "announce", "-c", str(path), "--line", "2",
                *(f"--text-{language}={text}" for language, text in texts.items()),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            async with asyncio.timeout(60):
                _, err = await process.communicate()
            assert process.returncode == 0, err.decode()
        notices = await stream.wait_for_count(2)
    retained = await collect_retained(rig.mqtt_url, rig.topic("#"))
    assert_everything_clean(rig, server, notices, retained)


#: Any text an operator may type (argv cannot carry NUL or lone surrogates; JSON can).
ANY_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=300) | st.sampled_from(
    [EVIL, "\x0b", "\u202e", "<p>x</p>", "@a @b", "\u200f", "&#8238;x", "a\u2028b"])


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_the_request_model_cleans_every_text_like_the_feed_boundary(text: str) -> None:
    """Whatever an operator sends is either refused (nothing left once cleaned) or becomes exactly what the feed
    boundary makes of it: the request model is that boundary."""
    expected = clean_text(text)
    try:
        request = NoticeRequest.model_validate({"texts": {"en": text}})
    except ValueError:
        assert expected == ""
        return
    assert request.texts["en"] == expected
    assert_clean(request.texts["en"], TEXT_LIMIT)
    assert clean_text(request.texts["en"]) == request.texts["en"]  # idempotent: the desk may clean it again


async def test_a_request_queued_raw_is_cleaned_when_the_desk_carries_it_out(rig: Rig) -> None:
    """A request already in the queue with raw text (an older `broadcaster` queued it, say) is cleaned by the
    running broadcaster that carries it out: the desk goes through the same model."""
    async with running(rig.config()) as b, MessageRecorder(rig.mqtt_url, rig.topic("notices")) as stream:
        await poll_all(b)
        first = desk.submit(b.db, "announce", {"texts": {"en": "Exit B\x0b closed @metro_ops\u202e"},
                                               "line_ids": ["2"], "author": "old-cli"})
        assert await b.process_requests() == 1
        notice_id = await desk.wait_for(b.db, first, 5)
        desk.submit(b.db, "correct", {"notice_id": notice_id, "texts": {"en": "<b>Exit B</b> open\x0b @metro_ops"},
                                      "author": "old-cli"})
        assert await b.process_requests() == 1
        notices = await stream.wait_for_count(2)
    for message in notices:
        for text in strings(orjson.loads(message.payload)):
            assert_clean(text)
