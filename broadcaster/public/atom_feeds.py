"""The public site's Atom 1.0 feeds (RFC 4287; docs/commuters.md, "Atom feeds"): one for the whole network, one per
line and one per station, each in every language of the network, and an index page that lists them.

- `GET /feeds/network.atom`, `/feeds/lines/{line_id}.atom`, `/feeds/stations/{station_id}.atom`, with `?lang=xx`
  for a language other than the network's default. Ids are percent-encoded in the path (GTFS ids may hold any
  character, `/` included), and decoded back before they are looked up; an unknown id or language is a 404.
- `GET /feeds/`: an HTML list of every feed, with `<link rel="alternate" type="application/atom+xml">` so a reader
  pointed at the page finds them; `GET /feeds/index.opml`: the same list as OPML 2.0, for a reader to import.

One language per feed, because a feed reader shows one title per entry and cannot pick a language itself. Each
feed holds the current alerts touching its scope and the recent notices that touched it (`feed_items`). Entry
ids are name-based UUIDs of the alert's id and version, or the notice's id and version, and the language: stable
across restarts and machines. A feed is built from the broadcaster's state and database in one synchronous step
on the event loop (no await), so it is never half of one commit and half of the next; its `ETag` is the hash of
its bytes, so body and tag always agree.
"""

from __future__ import annotations

import html
import json
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from broadcaster import __version__
from broadcaster.channels.atom import ATOM_NS, XML_LANG, headline, rfc3339, urn_uuid, xml_safe
from broadcaster.channels.mqtt import MqttNoticeChannel
from broadcaster.compose import alert_lines, is_emergency
from broadcaster.config import PublicConfig
from broadcaster.errors import StoreError
from broadcaster.model import LocalizedText
from broadcaster.public.conditional import http_date, is_fresh, strong_etag
from broadcaster.public.feed_items import NETWORK, RecentNotice, Scope, ScopeKind, Touches, parse_notice
from broadcaster.service import Broadcaster, emergency_rule
from broadcaster.state import AlertRecord
from broadcaster.vocabulary import word

ATOM_TYPE = "application/atom+xml"
CONTENT_TYPE = "application/atom+xml; charset=utf-8"
OPML_PATH = "/feeds/index.opml"
#: How long a step's commit may follow a later step's (it waited for the pipeline's lock): far longer than any
#: wait the database allows (its busy timeout is 5 s).
LATE_COMMIT_MARGIN = timedelta(minutes=10)
#: The most notice-stream rows one feed reads: a line's or a station's recent notices are found among the
#: network's latest ones.
SCAN_LIMIT = 2000
#: Feed titles when `[public] feed_title` names none for a language.
DEFAULT_TITLES = {"zh": "运营信息", "en": "Service updates"}
# Names in the urn:uuid ids: "[public]" never starts an Atom channel's (channel names are [a-z0-9...]).
_ID_ROOT = "[public]"


def _a(tag: str) -> str:
    return f"{{{ATOM_NS}}}{tag}"


def _text(parent: ET.Element, tag: str, text: str, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, _a(tag), {k: xml_safe(v) for k, v in attributes.items()})
    element.text = xml_safe(text)
    return element


def _link(parent: ET.Element, rel: str, href: str, media_type: str, hreflang: str | None = None) -> None:
    attributes = {"rel": rel, "href": href, "type": media_type}
    if hreflang is not None:
        attributes["hreflang"] = hreflang
    ET.SubElement(parent, _a("link"), {k: xml_safe(v) for k, v in attributes.items()})


def feed_path(scope: Scope) -> str:
    """The site path of `scope`'s feed, its id percent-encoded whole (a `/` in it too)."""
    if scope.kind is ScopeKind.NETWORK:
        return "/feeds/network.atom"
    folder = "lines" if scope.kind is ScopeKind.LINE else "stations"
    return f"/feeds/{folder}/{quote(scope.id, safe='')}.atom"


def page_path(scope: Scope, lang: str) -> str:
    """The commuter page with `scope` picked (docs/commuters.md: `/?line=...`, `/?station=...`, `&lang=`)."""
    query: dict[str, str] = {}
    if scope.kind is not ScopeKind.NETWORK:
        query[scope.kind.value] = scope.id
    query["lang"] = lang
    return "/?" + urlencode(query, quote_via=quote, safe="")


@dataclass(frozen=True, slots=True)
class FeedDocument:
    """One feed as served: its bytes, their entity-tag and when its content last changed."""

    body: bytes
    etag: str
    last_modified: datetime


class AtomFeeds:
    """Builds the feeds of broadcaster `b` as they are now, and serves them."""

    def __init__(self, b: Broadcaster, config: PublicConfig) -> None:
        self.b = b
        self.config = config
        self.network = b.network
        self.touches = Touches(b.network)
        self.languages = b.config.network.languages
        self.default_language = b.config.network.default_language
        self.emergency = emergency_rule(b.config)
        #: An empty feed's `updated`: nothing it lists changed since the site started.
        self.started = b.clock.now()
        # Documents are built with this in place of the site's URL, put in per request: a reader's Host (when
        # base_url is unset) never causes a build. Random, so no feed text can hold it.
        self._base_token = f"urn:x-site:{uuid.uuid4().hex}".encode()
        self._notices: tuple[object, list[RecentNotice]] = (None, [])
        self._rows: list[tuple[str, datetime, RecentNotice | None]] = []  # (outbox key, queued at, notice)
        #: The documents last built, with what they were built from (the state's alerts, the notices' list).
        self._documents: dict[tuple[Scope, str], tuple[object, object, FeedDocument]] = {}

    # -- what a feed holds --------------------------------------------------------------------------------------

    def scope(self, kind: ScopeKind, scope_id: str) -> Scope | None:
        """The scope for an id from a URL, or None when the network has no such line or station."""
        known = self.network.lines if kind is ScopeKind.LINE else self.network.stations
        return Scope(kind, scope_id) if scope_id in known else None

    def recent_notices(self) -> tuple[object, list[RecentNotice]]:
        """The notice stream's latest rows within `feed_days` (at most `SCAN_LIMIT`), newest first, and a marker
        that changes when they may have: a row was queued, or a minute passed (the window moved on).

        Rows are never rewritten, so only the ones queued lately are read again and the new ones parsed: reading
        and parsing all of them takes tens of milliseconds, on the event loop the emergencies go through.
        """
        minute = int(self.b.clock.now().timestamp() // 60)
        since = datetime.fromtimestamp(minute * 60, UTC) - timedelta(days=self.config.feed_days)
        marker = (minute, self.b.history.last_row())
        if self._notices[0] != marker:
            known = self._rows
            # A row carries the time its step began: a step that began earlier may commit after a later one (it
            # waited for the pipeline's lock). Read again from a margin before the newest row known.
            after = max(since, known[0][1] - LATE_COMMIT_MARGIN) if known else since
            keys = {key for key, _, _ in known}
            fresh = [(r.key, r.created_at, parse_notice(r))
                     for r in self.b.history.recent(MqttNoticeChannel.name, after, SCAN_LIMIT) if r.key not in keys]
            rows = sorted(fresh + known, key=lambda row: row[1], reverse=True) if fresh else known
            rows = [row for row in rows if row[1] >= since][:SCAN_LIMIT]
            notices = self._notices[1]
            if [key for key, _, _ in rows] != [key for key, _, _ in known]:  # else the same list: no feed rebuilt
                notices = [n for _, _, n in rows if n is not None]
            self._rows, self._notices = rows, (marker, notices)
        return self._notices

    def title(self, scope: Scope, lang: str) -> str:
        site = self.config.feed_title.get(lang) or DEFAULT_TITLES.get(lang) or DEFAULT_TITLES["en"]
        if scope.kind is ScopeKind.NETWORK:
            return site
        if scope.kind is ScopeKind.LINE:
            line = self.network.lines[scope.id]
            return f"{line.names.get(lang, self.default_language) or line.short_name} · {site}"
        return f"{self.network.stations[scope.id].names.get(lang, self.default_language) or scope.id} · {site}"

    # -- the document -------------------------------------------------------------------------------------------

    def document(self, scope: Scope, lang: str, base: str) -> FeedDocument:
        """`scope`'s feed in `lang`, its links under `base` (the site's absolute URL, no trailing slash).

        Synchronous on purpose: the state and the database are read in one step of the event loop, so a feed is
        never half one commit and half the next. Built again only when its inputs changed: the state's alerts
        (immutable, replaced by each commit that changes them) or the recent notices.
        """
        alerts_now = self.b.state.alerts
        _, recent = self.recent_notices()
        cached = self._documents.get((scope, lang))
        if cached is not None and cached[0] is alerts_now and cached[1] is recent:
            template = cached[2]
        else:
            built = self._build(scope, lang, self._base_token.decode(), alerts_now.values(), recent)
            template = self._dated(built, cached[2] if cached is not None else None)
            self._documents[(scope, lang)] = (alerts_now, recent, template)
        body = template.body.replace(self._base_token, html.escape(xml_safe(base), quote=True).encode())
        return FeedDocument(body, strong_etag(body), template.last_modified)

    def _dated(self, built: FeedDocument, previous: FeedDocument | None) -> FeedDocument:
        """`built` with a `Last-Modified` that moves forward whenever its bytes change. Its newest entry's date
        does not always: an entry committed late is dated before the newest, a resolved alert leaves, a notice
        leaves the window. A reader that sends only `If-Modified-Since` would get 304 for a changed feed. A feed
        first built since the start counts as changed then (it may have changed while the site was down)."""
        if previous is not None and previous.body == built.body:
            return previous
        changed = self.b.clock.now() if previous is not None else self.started
        return FeedDocument(built.body, built.etag, max(built.last_modified, changed))

    def _build(self, scope: Scope, lang: str, base: str, current: Iterable[AlertRecord],
               recent: list[RecentNotice]) -> FeedDocument:
        alerts = self.touches.current(current, scope)
        notices = self.touches.recent(recent, scope, self.config.feed_notices)
        entries = ([self._alert_entry(r, lang, base) for r in alerts]
                   + [self._notice_entry(n, lang, base) for n in notices])
        updated = max([r.updated_at for r in alerts] + [n.issued_at for n in notices], default=self.started)
        feed = ET.Element(_a("feed"), {XML_LANG: lang})
        _text(feed, "id", urn_uuid(f"{_ID_ROOT}/feed/{lang}/{scope.kind.value}\x1f{scope.id}"))
        title = self.title(scope, lang)
        _text(feed, "title", title)
        _text(feed, "updated", rfc3339(updated))
        author = ET.SubElement(feed, _a("author"))
        _text(author, "name", self.config.feed_title.get(lang) or title)
        _text(feed, "generator", "broadcaster", version=__version__)
        _link(feed, "self", base + self.feed_url(scope, lang), ATOM_TYPE)
        _link(feed, "alternate", base + page_path(scope, lang), "text/html")
        for other in self.languages:
            if other != lang:
                _link(feed, "alternate", base + self.feed_url(scope, other), ATOM_TYPE, hreflang=other)
        feed.extend(entries)
        ET.indent(feed)
        body = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
        return FeedDocument(body, strong_etag(body), updated)

    def feed_url(self, scope: Scope, lang: str) -> str:
        """The path (and query) of `scope`'s feed in `lang`: the default language needs no `?lang=`."""
        path = feed_path(scope)
        return path if lang == self.default_language else f"{path}?lang={quote(lang)}"

    def _places(self, lines: Sequence[str], stations: Sequence[str], lang: str) -> str:
        names = [self.network.lines[i].names.get(lang, self.default_language) or self.network.lines[i].short_name
                 for i in lines if i in self.network.lines]
        names += [self.network.stations[i].names.get(lang, self.default_language) or i
                  for i in stations if i in self.network.stations]
        return " · ".join(names)

    def _localized(self, text: LocalizedText, lang: str) -> str:
        return text.get(lang, self.default_language)

    def _page_of(self, lines: Sequence[str], stations: Sequence[str]) -> Scope:
        """Where the commuter page shows an entry: its first line, else its first station, else the network."""
        for kind, ids, known in ((ScopeKind.LINE, lines, self.network.lines),
                                 (ScopeKind.STATION, stations, self.network.stations)):
            found = next((i for i in ids if i in known), None)
            if found is not None:
                return Scope(kind, found)
        return NETWORK

    def _alert_entry(self, record: AlertRecord, lang: str, base: str) -> ET.Element:
        alert = record.alert
        entry = ET.Element(_a("entry"), {XML_LANG: lang})
        _text(entry, "id", urn_uuid(f"{_ID_ROOT}/alert/{lang}/{alert.id}\x1f{record.version}"))
        header = self._localized(alert.header, lang) or word(alert.effect, lang)
        _text(entry, "title", headline(header, alert.effect))
        _text(entry, "updated", rfc3339(record.updated_at))
        _text(entry, "published", rfc3339(record.first_seen))
        _text(entry, "category", "", term="alert")
        _text(entry, "category", "", term=alert.effect, label=word(alert.effect, lang))
        if is_emergency(record, self.emergency):
            _text(entry, "category", "", term="emergency")
        lines = alert_lines(alert, self.network)
        url = self._localized(alert.url, lang)
        if not url.startswith(("https://", "http://")):  # the operator's page about it, else the commuter page
            url = base + page_path(self._page_of(lines, alert.station_ids), lang)
        _link(entry, "alternate", url, "text/html")
        parts = [header, self._localized(alert.description, lang), self._places(lines, alert.station_ids, lang)]
        _text(entry, "content", "\n\n".join(p for p in parts if p), type="text")
        return entry

    def _notice_entry(self, notice: RecentNotice, lang: str, base: str) -> ET.Element:
        entry = ET.Element(_a("entry"), {XML_LANG: lang})
        _text(entry, "id", urn_uuid(f"{_ID_ROOT}/notice/{lang}/{notice.notice_id}\x1f{notice.version}"))
        text = notice.texts.get(lang) or notice.texts.get(self.default_language) or next(
            iter(notice.texts.values()), "") or notice.kind
        _text(entry, "title", headline(text, notice.kind))
        _text(entry, "updated", rfc3339(notice.issued_at))
        _text(entry, "published", rfc3339(notice.issued_at))
        _text(entry, "category", "", term=notice.kind)
        if notice.priority == "emergency":
            _text(entry, "category", "", term="emergency")
        _link(entry, "alternate", base + page_path(self._page_of(notice.lines, notice.stations), lang), "text/html")
        _text(entry, "content", text, type="text")
        return entry

    # -- HTTP ---------------------------------------------------------------------------------------------------

    def base(self, request: Request) -> str:
        return (self.config.base_url or str(request.base_url)).rstrip("/")

    def language(self, request: Request) -> str | None:
        lang = request.query_params.get("lang", self.default_language)
        return lang if lang in self.languages else None

    async def serve_feed(self, request: Request, scope: Scope | None, asked: str) -> Response:
        if scope is None:
            return _not_found(f"There is no {asked} in this network.")
        lang = self.language(request)
        if lang is None:
            return _not_found(f"There is no feed in the language {_quoted(request.query_params['lang'])}; "
                              f"this site has {', '.join(self.languages)}.")
        # The notices it lists are outbox rows: like the dispatcher, show none a power cut could still take back,
        # and none at all once the database is in doubt (store/wal_sync.py).
        try:
            await self.b.outbox.on_disk()
        except StoreError:
            return PlainTextResponse("The feed is unavailable for now.\n", status_code=503,
                                     headers={"X-Content-Type-Options": "nosniff", "Retry-After": "60"})
        document = self.document(scope, lang, self.base(request))  # synchronous: read right after on_disk
        headers = {
            "ETag": document.etag,
            "Last-Modified": http_date(document.last_modified),
            "Cache-Control": f"public, max-age={self.config.feed_max_age_seconds}",
            "Content-Language": lang,
            "X-Content-Type-Options": "nosniff",
        }
        if is_fresh(request.headers.get("if-none-match"), request.headers.get("if-modified-since"),
                    document.etag, document.last_modified):
            return Response(status_code=304, headers=headers)
        return Response(document.body, headers=headers, media_type=CONTENT_TYPE)

    async def network_feed(self, request: Request) -> Response:
        return await self.serve_feed(request, NETWORK, "network")

    async def line_feed(self, request: Request) -> Response:
        line_id = str(request.path_params["line_id"])
        return await self.serve_feed(request, self.scope(ScopeKind.LINE, line_id), f"line {_quoted(line_id)}")

    async def station_feed(self, request: Request) -> Response:
        station_id = str(request.path_params["station_id"])
        return await self.serve_feed(request, self.scope(ScopeKind.STATION, station_id),
                                     f"station {_quoted(station_id)}")

    async def to_index(self, request: Request) -> Response:
        # Starlette's own slash redirect is built from the request's URL: behind a proxy at a path it would send
        # the reader to the proxy host's root, where nothing of ours is.
        return RedirectResponse(self.base(request) + "/feeds/", status_code=308)

    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.index_html(self.base(request)), headers={
            "Cache-Control": f"public, max-age={self.config.feed_max_age_seconds}"})

    def index_html(self, base: str) -> str:
        """Every feed in every language, as links under `base` (as the feeds' own): the network's and the lines'
        also for autodiscovery. Not root-relative: behind a proxy at a path (`base_url` with one), `/feeds/...`
        would leave the site."""
        def item(scope: Scope, lang: str) -> tuple[str, str]:
            return html.escape(base + self.feed_url(scope, lang)), html.escape(self.title(scope, lang))

        opml = html.escape(base + OPML_PATH)

        head: list[str] = []
        sections: list[str] = []
        for lang in self.languages:
            scopes = [NETWORK, *(Scope(ScopeKind.LINE, i) for i in self.network.lines)]
            head += ['<link rel="alternate" type="application/atom+xml" href="{}" title="{}" hreflang="{}">'.format(
                *item(s, lang), html.escape(lang)) for s in scopes]
            scopes += [Scope(ScopeKind.STATION, i) for i in self.network.stations]
            rows = "\n".join('<li><a href="{}" type="application/atom+xml">{}</a></li>'.format(*item(s, lang))
                             for s in scopes)
            sections.append(f'<section lang="{html.escape(lang)}"><h2>{html.escape(self.title(NETWORK, lang))}'
                            f"</h2>\n<ul>\n{rows}\n</ul></section>")
        lang = html.escape(self.default_language)
        return ("<!DOCTYPE html>\n"
                f'<html lang="{lang}"><head><meta charset="utf-8">'
                '<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(self.title(NETWORK, self.default_language))} (Atom)</title>\n"
                f'<link rel="outline" type="text/x-opml" href="{opml}" title="OPML">\n'
                + "\n".join(head) + "\n</head><body>\n" + "\n".join(sections)
                + f'\n<p><a href="{opml}" type="text/x-opml">OPML</a></p>\n</body></html>\n')

    async def opml(self, request: Request) -> Response:
        return Response(self.opml_document(self.base(request)), media_type="text/x-opml; charset=utf-8", headers={
            "Cache-Control": f"public, max-age={self.config.feed_max_age_seconds}"})

    def opml_document(self, base: str) -> bytes:
        """Every feed as an OPML 2.0 subscription list (one outline per language), for a reader to import."""
        root = ET.Element("opml", {"version": "2.0"})
        ET.SubElement(ET.SubElement(root, "head"), "title").text = xml_safe(self.title(NETWORK, self.default_language))
        body = ET.SubElement(root, "body")
        scopes = [NETWORK, *(Scope(ScopeKind.LINE, i) for i in self.network.lines),
                  *(Scope(ScopeKind.STATION, i) for i in self.network.stations)]
        for lang in self.languages:
            group = ET.SubElement(body, "outline", {"text": xml_safe(f"{self.title(NETWORK, lang)} ({lang})")})
            for scope in scopes:
                title = xml_safe(self.title(scope, lang))
                ET.SubElement(group, "outline", {
                    "type": "rss", "version": "ATOM", "text": title, "title": title, "language": lang,
                    "xmlUrl": base + self.feed_url(scope, lang), "htmlUrl": base + page_path(scope, lang)})
        ET.indent(root)
        data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        return data


def _quoted(text: str) -> str:
    """`text` as a JSON string (quoted, controls, quotes and backslashes escaped), for a plain-text answer."""
    return json.dumps(text, ensure_ascii=False)


def _not_found(message: str) -> Response:
    return PlainTextResponse(message + "\n", status_code=404, headers={"X-Content-Type-Options": "nosniff"})


def _id_route(folder: str, param: str, endpoint: Callable[[Request], Awaitable[Response]]) -> Route:
    """`/feeds/{folder}/{id}.atom`, where the id (percent-encoded whole, decoded by the server) may hold any
    character: a "/" (hence `path`), and a line break, which Starlette's `.*` would not match."""
    route = Route(f"/feeds/{folder}/{{{param}:path}}.atom", endpoint, methods=["GET"])
    route.path_regex = re.compile(route.path_regex.pattern.removesuffix("$") + r"\Z", re.DOTALL)
    return route


def feed_routes(b: Broadcaster, config: PublicConfig) -> list[BaseRoute]:
    """The feeds' routes for the public site (`public_app`)."""
    feeds = AtomFeeds(b, config)
    return [
        Route("/feeds", feeds.to_index, methods=["GET"]),
        Route("/feeds/", feeds.index, methods=["GET"]),
        Route(OPML_PATH, feeds.opml, methods=["GET"]),
        Route("/feeds/network.atom", feeds.network_feed, methods=["GET"]),
        _id_route("lines", "line_id", feeds.line_feed),
        _id_route("stations", "station_id", feeds.station_feed),
    ]


__all__ = ["AtomFeeds", "FeedDocument", "feed_path", "feed_routes", "page_path"]
