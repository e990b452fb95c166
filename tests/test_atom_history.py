"""The Atom timeline never writes an XML-illegal character and never throws its history away: an existing file
it cannot read is moved aside (kept byte for byte, reported as an error), and the new file is written."""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rig import Rig
from test_admin import admin_config, api, bearer, parse_metrics
from test_channels import until

from broadcaster.channels.atom import AtomChannel
from broadcaster.channels.base import ThreadRefs
from broadcaster.config import AtomChannelConfig
from broadcaster.outbox import OutboxEntry
from broadcaster.posts import Post

ATOM = "{http://www.w3.org/2005/Atom}"
NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def channel(path: Path) -> AtomChannel:
    return AtomChannel(AtomChannelConfig(name="timeline", kind="atom", path=path), clock=lambda: NOW)


def entry(key: str, text: str) -> OutboxEntry:
    post = Post(f"alert-{key}", "alert_new", text, "en")
    return OutboxEntry(key, post.notice_id, "v1", "timeline", 0, 0, post.to_payload(), NOW, 0, NOW)


def contents(path: Path) -> list[str]:
    root = ET.parse(path).getroot()
    return [e.findtext(f"{ATOM}content") or "" for e in root.findall(f"{ATOM}entry")]


def send(atom: AtomChannel, *entries: OutboxEntry) -> None:
    """Start the channel and send each entry, as a drain loop would, in an event loop of its own."""

    async def run() -> None:
        await atom.start()
        for outgoing in entries:
            await atom.send(outgoing, ThreadRefs())

    asyncio.run(run())


def test_xml_illegal_characters_never_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "timeline.atom"
    send(channel(path), entry("a", "Exit B closed"), entry("b", "bad\x0b \x00tab\x1f \ufffe end"),
         entry("c", "Exit B open"))
    assert contents(path) == ["Exit B open", "bad tab  end", "Exit B closed"]


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_any_text_gives_a_parsable_file(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("atom") / "timeline.atom"
    send(channel(path), entry("x", text))
    assert len(contents(path)) == 1


@pytest.mark.parametrize("broken", [
    b'<?xml version="1.0"?>\n<feed xmlns="http://www.w3.org/2005/Atom"><entry><content>a\x0bb</content></entry>'
    b"</feed>",
    b'<?xml version="1.0"?>\n<feed xmlns="http://www.w3.org/2005/Atom"><entry><content>trunc',
    b"<html><body>not a feed</body></html>",
])
def test_a_timeline_that_cannot_be_read_is_kept_aside_not_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, broken: bytes
) -> None:
    path = tmp_path / "timeline.atom"
    path.write_bytes(broken)
    atom = channel(path)
    caplog.set_level(logging.WARNING)
    send(atom, entry("new", "Exit B closed"))
    aside = list(tmp_path.glob("timeline.atom.broken-*"))
    assert len(aside) == 1, list(tmp_path.iterdir())
    assert aside[0].read_bytes() == broken  # kept, byte for byte
    assert contents(path) == ["Exit B closed"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors
    assert str(aside[0]) in errors[0].getMessage()
    assert atom.set_aside == [aside[0]]
    send(atom, entry("next", "Exit B open"))  # from now on an ordinary file
    assert len(list(tmp_path.glob("timeline.atom.broken-*"))) == 1
    assert contents(path) == ["Exit B open", "Exit B closed"]


# The admin tokens' environment (T_ADMIN, T_ADMIN_OTHER) for every test here; the `rig` is conftest's.
pytestmark = pytest.mark.usefixtures("admin_tokens")


async def test_a_timeline_set_aside_shows_in_the_metrics_and_the_status(rig: Rig) -> None:
    path = rig.tmp_path / "timeline.atom"
    broken = b'<?xml version="1.0"?>\n<feed xmlns="http://www.w3.org/2005/Atom"><entry><content>a\x0bb'
    await asyncio.to_thread(path.write_bytes, broken)
    config = admin_config(rig, channels=[{"name": "timeline", "kind": "atom", "path": str(path)}])
    async with api(config) as (b, http):
        before = parse_metrics((await http.get("/metrics")).text)
        assert before['broadcaster_atom_files_set_aside_total{channel="timeline"}'] == 0
        answer = await http.post("/v1/notices", json={"texts": {"zh": "B口关闭"}}, headers=bearer())
        assert answer.status_code == 201
        await until(lambda: b.pending() == 0, b)
        after = parse_metrics((await http.get("/metrics")).text)
        status = (await http.get("/v1/status", headers=bearer())).json()
    assert after['broadcaster_atom_files_set_aside_total{channel="timeline"}'] == 1
    [aside] = status["atom_set_aside"]["timeline"]
    assert Path(aside).name.startswith("timeline.atom.broken-")
    assert await asyncio.to_thread(Path(aside).read_bytes) == broken
    [entry_text] = await asyncio.to_thread(contents, path)
    assert entry_text.startswith("B口关闭")
