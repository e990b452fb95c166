"""The Atom timeline channel: keeps the latest posts in an Atom 1.0 file (RFC 4287) that any web server can serve.

Agencies publish service changes as feeds; an Atom file needs no account, so it is also the demo's timeline.
Each send reads the file, puts the post at the top (replacing an entry with the same id, so a re-send after a
crash never duplicates), keeps the newest `max_entries`, and replaces the file atomically (a temporary file in
the same folder, fsync, `os.replace`): a reader sees the old file or the new one, never half of one.

Characters XML 1.0 does not allow (most C0 controls, lone surrogates, U+FFFE/U+FFFF) are dropped as the file is
written, whatever the texts carry. The history is never thrown away: an existing file that cannot be read as an
Atom feed (hand-edited, truncated, written by something else) is moved aside as
``<name>.broken-<UTC time>``, kept byte for byte, reported as an error (and in `set_aside`), and a new feed is
started next to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import tempfile
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from broadcaster.channels.base import ThreadRefs
from broadcaster.config import AtomChannelConfig
from broadcaster.errors import PermanentDeliveryError, TransientDeliveryError
from broadcaster.posts import Post

if TYPE_CHECKING:
    from broadcaster.outbox import OutboxEntry
    from broadcaster.render.length import PlatformProfile

log = logging.getLogger(__name__)

ATOM_NS = "http://www.w3.org/2005/Atom"
THREAD_NS = "http://purl.org/syndication/thread/1.0"  # RFC 4685: in-reply-to
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
# Serialise Atom as the default namespace and RFC 4685 as "thr:", as feed readers expect to see them.
ET.register_namespace("", ATOM_NS)
ET.register_namespace("thr", THREAD_NS)

# Ids are name-based UUIDs (RFC 4122 version 5) under this namespace: stable across restarts and machines,
# and valid Atom ids (`urn:uuid:` IRIs) without owning a domain for a tag: URI.
_ID_NAMESPACE = uuid.UUID("5b0a3f4e-1c2d-4e8f-9a6b-7c3d2e1f0a9b")
_TITLE_MAX = 80
# Everything but XML 1.0's Char production (#x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-]).
_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """`text` without the characters an XML 1.0 document may not contain."""
    return _XML_ILLEGAL.sub("", text)


def _a(tag: str) -> str:
    return f"{{{ATOM_NS}}}{tag}"


def urn_uuid(name: str) -> str:
    """A stable Atom id for `name`: the same name gives the same `urn:uuid:` IRI on any machine, at any time
    (the public site's feeds name theirs too, so these names never start with "[")."""
    return f"urn:uuid:{uuid.uuid5(_ID_NAMESPACE, name)}"


def entry_id(channel: str, key: str) -> str:
    """The Atom id of the entry for outbox key `key`: the same key always gives the same id."""
    return urn_uuid(f"{channel}/entry/{key}")


def feed_id(channel: str) -> str:
    return urn_uuid(f"{channel}/feed")


def rfc3339(at: datetime) -> str:
    """`at` as an RFC 3339 date-time in UTC, to the second (Atom's Date construct)."""
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def headline(text: str, fallback: str) -> str:
    """The first non-blank line of `text` (else `fallback`), cut to a title's length."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), fallback)
    if len(first) > _TITLE_MAX:
        first = first[: _TITLE_MAX - 1].rstrip() + "…"
    return first


def _title(post: Post) -> str:
    first = headline(post.text, post.kind)
    if post.parts > 1:
        first = f"{first} ({post.part + 1}/{post.parts})"
    return first


def _text_element(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, _a(tag))
    element.text = xml_safe(text)
    return element


class AtomChannel:
    """Writes each post as an entry of the Atom file at `config.path`; the entry id is the remote id."""

    def __init__(self, config: AtomChannelConfig, *, clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.path = Path(config.path)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = asyncio.Lock()
        #: Files that could not be read and were moved aside, oldest first (see the module docstring).
        self.set_aside: list[Path] = []

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def ready(self) -> bool:
        return True  # a local file: nothing to wait for

    @property
    def profile(self) -> PlatformProfile | None:
        return None  # a feed reader shows any length

    async def start(self) -> None:
        """Create an empty feed if there is no file yet, so the feed's URL answers from the start."""
        async with self._lock:
            try:
                await asyncio.to_thread(self._create_if_missing, self._clock())
            except OSError as exc:
                log.warning("%s: cannot create %s: %s", self.name, self.path, exc.strerror)

    async def send(self, entry: OutboxEntry, thread: ThreadRefs) -> str | None:
        """Add the post of `entry` to the feed file and return its Atom entry id.

        Raises:
            PermanentDeliveryError: the payload is not a post.
            TransientDeliveryError: the file cannot be written (disk full, permissions): try again later.
        """
        try:
            post = Post.from_payload(entry.payload)
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentDeliveryError(self.name, f"outbox entry {entry.key} is not a post: {exc}") from exc
        eid = entry_id(self.name, entry.key)
        async with self._lock:
            try:
                await asyncio.to_thread(self._write, eid, post, thread, self._clock())
            except OSError as exc:
                raise TransientDeliveryError(self.name, f"cannot write {self.path}: {exc.strerror}") from exc
        return eid

    # -- the file ------------------------------------------------------------------------------------------------

    def _existing_entries(self, now: datetime) -> list[ET.Element]:
        """The entries of the current file; a file that cannot be read is moved aside first (never lost).

        Raises:
            OSError: the unreadable file cannot be moved aside (then nothing is written: the send is retried).
        """
        try:
            # Our own file, written by this class: not untrusted input.
            root = ET.parse(self.path).getroot()  # noqa: S314
        except FileNotFoundError:
            return []
        except ET.ParseError as exc:
            self._move_aside(f"it is not valid XML ({exc})", now)
            return []
        if root.tag != _a("feed"):
            self._move_aside(f"it is not an Atom feed (its root is <{root.tag}>)", now)
            return []
        return root.findall(_a("entry"))

    def _move_aside(self, why: str, now: datetime) -> None:
        stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.broken-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.broken-{stamp}-{n}")
        os.replace(self.path, aside)
        self.set_aside.append(aside)
        log.error("%s: %s cannot be read: %s; it is kept as %s and a new feed is started (its earlier entries are"
                  " in that file)", self.name, self.path, why, aside)

    def _build_entry(self, eid: str, post: Post, thread: ThreadRefs, now: datetime) -> ET.Element:
        entry = ET.Element(_a("entry"), {XML_LANG: xml_safe(post.language)})
        _text_element(entry, "id", eid)
        _text_element(entry, "title", _title(post))
        _text_element(entry, "updated", rfc3339(now))
        _text_element(entry, "published", rfc3339(now))
        ET.SubElement(entry, _a("category"), {"term": xml_safe(post.kind)})
        if post.emergency:
            ET.SubElement(entry, _a("category"), {"term": "emergency"})
        for tag in post.tags:  # the hashtags of its lines and stations: a reader may filter on them
            ET.SubElement(entry, _a("category"), {"term": xml_safe(tag), "label": xml_safe(f"#{tag}")})
        if thread.parent:
            ET.SubElement(entry, f"{{{THREAD_NS}}}in-reply-to", {"ref": xml_safe(thread.parent)})
        content = _text_element(entry, "content", post.text)
        content.set("type", "text")
        return entry

    def _write(self, eid: str, post: Post, thread: ThreadRefs, now: datetime) -> None:
        entries = [e for e in self._existing_entries(now) if e.findtext(_a("id")) != eid]
        entries.insert(0, self._build_entry(eid, post, thread, now))
        self._write_feed(entries[: self.config.max_entries], now)

    def _create_if_missing(self, now: datetime) -> None:
        if not self.path.exists():
            self._write_feed([], now)

    def _write_feed(self, entries: list[ET.Element], now: datetime) -> None:
        feed = ET.Element(_a("feed"))
        _text_element(feed, "id", feed_id(self.name))
        _text_element(feed, "title", self.config.title)
        newest = max((e.findtext(_a("updated")) or "" for e in entries), default="") or rfc3339(now)
        _text_element(feed, "updated", newest)
        author = ET.SubElement(feed, _a("author"))
        _text_element(author, "name", self.config.title)
        _text_element(feed, "generator", "broadcaster")
        feed.extend(entries)
        ET.indent(feed)
        data = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
        self._replace(data)

    def _replace(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the feed is for a web server to read
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable where the platform allows it
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
