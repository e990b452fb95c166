"""The Atom timeline channel: a valid RFC 4287 feed, re-sends replace, newest first, atomic replacement."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broadcaster.channels.atom import ATOM_NS, THREAD_NS, XML_LANG, AtomChannel, entry_id
from broadcaster.channels.base import ThreadRefs
from broadcaster.config import AtomChannelConfig
from broadcaster.errors import PermanentDeliveryError, TransientDeliveryError
from broadcaster.outbox import OutboxEntry, idempotency_key
from broadcaster.posts import Post

A = f"{{{ATOM_NS}}}"
T0 = datetime(2026, 11, 25, 0, 15, tzinfo=UTC)


class StepClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def make_channel(path: Path, *, max_entries: int = 50) -> AtomChannel:
    config = AtomChannelConfig(kind="atom", name="timeline", path=path, title="临江地铁 Linjiang Metro",
                               max_entries=max_entries)
    return AtomChannel(config, clock=StepClock())


def make_entry(notice_id: str, text: str, *, version: str = "v1", part: int = 0, parts: int = 1,
               language: str = "zh", payload: bytes | None = None) -> OutboxEntry:
    post = Post(notice_id, "alert_new", text, language, part=part, parts=parts)
    return OutboxEntry(
        idempotency_key(notice_id, version, "timeline", part), notice_id, version, "timeline", part, 1,
        payload if payload is not None else post.to_payload(), T0, 0, T0,
    )


def parse(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def entries(path: Path) -> list[ET.Element]:
    return parse(path).findall(f"{A}entry")


async def test_a_post_makes_a_valid_atom_feed(tmp_path: Path) -> None:
    path = tmp_path / "public" / "timeline.atom"
    channel = make_channel(path)
    entry = make_entry("alert-A1", "2号线：信号设备故障，列车晚点\nLine 2: Signal fault: trains delayed")

    remote_id = await channel.send(entry, ThreadRefs())

    assert remote_id == entry_id("timeline", entry.key)
    assert remote_id is not None
    assert remote_id.startswith("urn:uuid:")
    feed = parse(path)
    assert feed.tag == f"{A}feed"
    # RFC 4287 4.1.1: a feed has exactly one id, title and updated, and an author (here at feed level).
    for required in ("id", "title", "updated"):
        assert len(feed.findall(f"{A}{required}")) == 1, required
    assert feed.findtext(f"{A}title") == "临江地铁 Linjiang Metro"
    assert feed.findtext(f"{A}author/{A}name")
    (item,) = feed.findall(f"{A}entry")
    assert item.findtext(f"{A}id") == remote_id
    assert item.findtext(f"{A}title") == "2号线：信号设备故障，列车晚点"
    assert item.get(XML_LANG) == "zh"
    content = item.find(f"{A}content")
    assert content is not None
    assert content.get("type") == "text"
    assert content.text == "2号线：信号设备故障，列车晚点\nLine 2: Signal fault: trains delayed"
    updated = item.findtext(f"{A}updated")
    assert updated is not None
    assert datetime.fromisoformat(updated).tzinfo is not None
    assert feed.findtext(f"{A}updated") == updated
    assert path.read_bytes().startswith(b"<?xml version='1.0' encoding='utf-8'?>")


async def test_a_resend_replaces_its_entry(tmp_path: Path) -> None:
    path = tmp_path / "timeline.atom"
    channel = make_channel(path)
    first = make_entry("alert-A1", "first")
    await channel.send(first, ThreadRefs())
    await channel.send(make_entry("alert-A2", "second"), ThreadRefs())

    again = await channel.send(first, ThreadRefs())  # the acknowledgement was lost: the drain loop sends again

    items = entries(path)
    assert [e.findtext(f"{A}content") for e in items] == ["first", "second"]
    assert items[0].findtext(f"{A}id") == again
    assert len({e.findtext(f"{A}id") for e in items}) == 2


async def test_keeps_the_newest_max_entries_newest_first(tmp_path: Path) -> None:
    path = tmp_path / "timeline.atom"
    channel = make_channel(path, max_entries=3)
    for i in range(5):
        await channel.send(make_entry(f"n{i}", f"post {i}"), ThreadRefs())
    assert [e.findtext(f"{A}content") for e in entries(path)] == ["post 4", "post 3", "post 2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timeline.atom"], "temporary files left behind"  # noqa: ASYNC240


async def test_thread_parts_and_replies(tmp_path: Path) -> None:
    path = tmp_path / "timeline.atom"
    channel = make_channel(path)
    root = await channel.send(make_entry("alert-A1", "part one", part=0, parts=2, language="en"), ThreadRefs())
    await channel.send(make_entry("alert-A1", "part two", part=1, parts=2, language="en"),
                       ThreadRefs(root=root, parent=root))
    newest = entries(path)[0]
    assert newest.findtext(f"{A}title") == "part two (2/2)"
    assert newest.get(XML_LANG) == "en"
    reply = newest.find(f"{{{THREAD_NS}}}in-reply-to")
    assert reply is not None
    assert reply.get("ref") == root


async def test_a_corrupt_file_starts_a_new_feed(tmp_path: Path) -> None:
    path = tmp_path / "timeline.atom"
    path.write_text("<feed><entry>cut sh", encoding="utf-8")
    await make_channel(path).send(make_entry("n1", "hello"), ThreadRefs())
    assert [e.findtext(f"{A}content") for e in entries(path)] == ["hello"]


async def test_a_payload_that_is_not_a_post_is_permanent(tmp_path: Path) -> None:
    channel = make_channel(tmp_path / "timeline.atom")
    with pytest.raises(PermanentDeliveryError):
        await channel.send(make_entry("n1", "x", payload=b'{"schema": "broadcaster.mqtt.notice/1"}'), ThreadRefs())


async def test_an_unwritable_path_is_transient(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("", encoding="utf-8")
    channel = make_channel(blocker / "timeline.atom")
    with pytest.raises(TransientDeliveryError):
        await channel.send(make_entry("n1", "x"), ThreadRefs())


async def test_start_creates_an_empty_feed_once(tmp_path: Path) -> None:
    path = tmp_path / "timeline.atom"
    channel = make_channel(path)
    await channel.start()
    feed = parse(path)
    assert feed.tag == f"{A}feed"
    assert feed.findall(f"{A}entry") == []
    assert feed.findtext(f"{A}updated")
    await channel.send(make_entry("n1", "hello"), ThreadRefs())
    await channel.start()  # a restart keeps what is there
    assert [e.findtext(f"{A}content") for e in entries(path)] == ["hello"]
