"""A strict checker of Atom 1.0 documents: the RFC 4287 rules feed readers rely on, each problem named.

`atom_problems(data)` returns every problem found (an empty list: the feed is valid by these rules):

- the bytes are well-formed XML 1.0 in UTF-8, with no character XML forbids, and the root is atom:feed;
- the feed has exactly one atom:id, atom:title and atom:updated, at most one subtitle, rights, icon, logo and
  generator, and an atom:author unless every entry has one (4.1.1);
- a link rel="self" (RFC 4287 recommends it, readers need it to know where the feed lives), absolute;
- every entry has exactly one id, title and updated, at most one content, summary and published, content or a
  link rel="alternate" (4.1.2), and a summary when its content has a src;
- ids are absolute IRIs (4.2.6), unique among the feed's entries; dates are RFC 3339 date-times with a time zone
  (3.3); links have an href, and no two alternates share type and hreflang (4.2.7.2);
- text constructs (title, subtitle, summary, rights) and content have a valid type, and a text one holds no
  elements (3.1; 4.1.3); persons have exactly one name (3.2); categories a term (4.2.2); xml:lang values are
  language tags.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime

ATOM = "http://www.w3.org/2005/Atom"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
XHTML_DIV = "{http://www.w3.org/1999/xhtml}div"

_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})$")
_ABSOLUTE_IRI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"{}|\\^`]+$")
_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*$")
_MIME = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(?:\s*;.*)?$")
_TEXT_CONSTRUCTS = ("title", "subtitle", "summary", "rights")


def _a(tag: str) -> str:
    return f"{{{ATOM}}}{tag}"


class _Check:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def counts(
        self, element: ET.Element, where: str, exactly_one: tuple[str, ...], at_most_one: tuple[str, ...]
    ) -> None:
        for tag in exactly_one:
            n = len(element.findall(_a(tag)))
            if n != 1:
                self.add(where, f"{n} atom:{tag}, must be exactly one")
        for tag in at_most_one:
            n = len(element.findall(_a(tag)))
            if n > 1:
                self.add(where, f"{n} atom:{tag}, must be at most one")

    def date(self, element: ET.Element, tag: str, where: str) -> None:
        for found in element.findall(_a(tag)):
            text = (found.text or "").strip()
            if not _RFC3339.match(text):
                self.add(where, f"atom:{tag} {text!r} is not an RFC 3339 date-time with a time zone")
                continue
            try:
                datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                self.add(where, f"atom:{tag} {text!r} is not a real date")

    def iri(self, value: str, where: str, what: str) -> None:
        if not _ABSOLUTE_IRI.match(value):
            self.add(where, f"{what} {value!r} is not an absolute IRI")

    def text_construct(self, element: ET.Element, where: str) -> None:
        kind = element.get("type", "text")
        if kind not in ("text", "html", "xhtml"):
            self.add(where, f"type {kind!r} is not text, html or xhtml")
        elif kind in ("text", "html") and len(element):
            self.add(where, f"a {kind} construct holds child elements")
        elif kind == "xhtml" and [c.tag for c in element] != [XHTML_DIV]:
            self.add(where, "an xhtml construct must hold exactly one xhtml:div")

    def content(self, element: ET.Element, where: str) -> None:
        kind = element.get("type", "text")
        if kind in ("text", "html", "xhtml"):
            self.text_construct(element, where)
        elif not _MIME.match(kind):
            self.add(where, f"content type {kind!r} is neither text/html/xhtml nor a media type")
        src = element.get("src")
        if src is not None:
            self.iri(src, where, "content src")

    def person(self, element: ET.Element, where: str) -> None:
        n = len(element.findall(_a("name")))
        if n != 1:
            self.add(where, f"{n} atom:name, must be exactly one")

    def links(self, element: ET.Element, where: str) -> list[ET.Element]:
        links = element.findall(_a("link"))
        alternates: set[tuple[str | None, str | None]] = set()
        for link in links:
            href = link.get("href")
            if not href:
                self.add(where, "an atom:link without href")
                continue
            if link.get("rel", "alternate") == "alternate":
                key = (link.get("type"), link.get("hreflang"))
                if key in alternates:
                    self.add(where, f"two alternate links with type and hreflang {key}")
                alternates.add(key)
        return links

    def languages(self, root: ET.Element) -> None:
        for element in root.iter():
            lang = element.get(XML_LANG)
            if lang is not None and lang != "" and not _LANGUAGE_TAG.match(lang):
                self.add(element.tag, f"xml:lang {lang!r} is not a language tag")

    def entry(self, entry: ET.Element, where: str) -> None:
        self.counts(entry, where, ("id", "title", "updated"), ("content", "summary", "published", "rights",
                                                                "source"))
        for tag in ("updated", "published"):
            self.date(entry, tag, where)
        for found in entry.findall(_a("id")):
            self.iri((found.text or "").strip(), where, "atom:id")
        for tag in _TEXT_CONSTRUCTS:
            for found in entry.findall(_a(tag)):
                self.text_construct(found, f"{where} atom:{tag}")
        contents = entry.findall(_a("content"))
        for content in contents:
            self.content(content, f"{where} atom:content")
            if content.get("src") is not None and entry.find(_a("summary")) is None:
                self.add(where, "content with src needs an atom:summary")
        links = self.links(entry, where)
        if not contents and not any(link.get("rel", "alternate") == "alternate" for link in links):
            self.add(where, "no atom:content and no alternate link")
        for author in entry.findall(_a("author")) + entry.findall(_a("contributor")):
            self.person(author, f"{where} person")
        for category in entry.findall(_a("category")):
            if not category.get("term"):
                self.add(where, "an atom:category without term")


def atom_problems(data: bytes) -> list[str]:
    """Every RFC 4287 problem of the Atom document `data` (see the module docstring); [] when there is none."""
    check = _Check()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [f"document: not UTF-8 ({exc})"]
    illegal = _ILLEGAL.search(text)
    if illegal:
        check.add("document", f"character {illegal.group()!r} is not allowed in XML 1.0")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        return [*check.problems, f"document: not well-formed XML ({exc})"]
    if root.tag != _a("feed"):
        return [*check.problems, f"document: root is {root.tag}, not atom:feed"]
    check.counts(root, "feed", ("id", "title", "updated"), ("subtitle", "rights", "icon", "logo", "generator"))
    check.date(root, "updated", "feed")
    for found in root.findall(_a("id")):
        check.iri((found.text or "").strip(), "feed", "atom:id")
    for tag in _TEXT_CONSTRUCTS:
        for found in root.findall(_a(tag)):
            check.text_construct(found, f"feed atom:{tag}")
    links = check.links(root, "feed")
    selves = [link for link in links if link.get("rel") == "self"]
    if len(selves) != 1:
        check.add("feed", f"{len(selves)} rel=self links, must be one")
    for link in selves:
        check.iri(link.get("href", ""), "feed", "the self link")
    for author in root.findall(_a("author")) + root.findall(_a("contributor")):
        check.person(author, "feed person")
    entries = root.findall(_a("entry"))
    if not root.findall(_a("author")):
        for n, entry in enumerate(entries):
            if entry.find(_a("author")) is None:
                check.add(f"entry {n}", "no atom:author, and the feed has none")
    seen: set[str] = set()
    for n, entry in enumerate(entries):
        check.entry(entry, f"entry {n}")
        entry_id = (entry.findtext(_a("id")) or "").strip()
        if entry_id in seen:
            check.add(f"entry {n}", f"id {entry_id} repeats an earlier entry's")
        seen.add(entry_id)
    check.languages(root)
    return check.problems
