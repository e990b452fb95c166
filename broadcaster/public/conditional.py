"""Conditional GET for the public site (RFC 9110, section 13): a strong `ETag` from the body's hash, `Last-Modified`,
and whether a request's `If-None-Match` / `If-Modified-Since` let the answer be `304 Not Modified`.

Feed readers poll every few minutes; a 304 costs them and us a few hundred bytes instead of the whole feed.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
from datetime import UTC, datetime

# An entity-tag (RFC 9110, 8.8.3): an optional weakness indicator, then a quoted string of etagc (no DQUOTE, so a
# comma may sit inside one: the list is read tag by tag, never split on commas). Empty list elements before it are
# skipped, as RFC 9110 (5.6.1.2) asks of a recipient: `"a", , "b"` lists two tags.
_ENTITY_TAG = re.compile(r'[\s,]*(?:W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


def strong_etag(body: bytes) -> str:
    """A strong entity-tag for `body`: equal bytes give the same tag, on any machine and after a restart."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def http_date(at: datetime) -> str:
    """`at` as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), to the second."""
    return email.utils.format_datetime(at.astimezone(UTC).replace(microsecond=0), usegmt=True)


def _opaque(tag: str) -> str:
    return tag.removeprefix("W/")


def none_match(header: str, etag: str) -> bool:
    """Whether `If-None-Match: header` matches `etag`, so a GET is answered 304 (RFC 9110, 13.1.2): `*` matches
    any current representation; otherwise a listed entity-tag matches by weak comparison (opaque tags equal,
    either may be weak). A header that is not a list of entity-tags matches nothing."""
    if header.strip() == "*":
        return True
    mine = _opaque(etag)
    position, found = 0, False
    while position < len(header):
        if header[position:].strip(" \t,") == "":
            break
        match = _ENTITY_TAG.match(header, position)
        if match is None:
            return False  # not a valid list: evaluate the request as if the condition were absent
        found = found or match.group(1) == mine
        position = match.end()
    return found


def not_modified_since(header: str, last_modified: datetime) -> bool:
    """Whether `If-Modified-Since: header` says the client's copy is current (RFC 9110, 13.1.3): the
    representation was last modified no later than that date. An invalid date is ignored (False)."""
    try:
        since = email.utils.parsedate_to_datetime(header.strip())
    except (TypeError, ValueError, IndexError):
        return False
    if since.tzinfo is None:  # RFC 9110: HTTP dates are in GMT; -0000 parses as naive
        since = since.replace(tzinfo=UTC)
    return last_modified.replace(microsecond=0) <= since


def is_fresh(if_none_match: str | None, if_modified_since: str | None, etag: str, last_modified: datetime) -> bool:
    """Whether a GET or HEAD with these headers gets 304: `If-None-Match` when present, and only then
    `If-Modified-Since` (RFC 9110, 13.2.2: the first takes precedence)."""
    if if_none_match is not None:
        return none_match(if_none_match, etag)
    if if_modified_since is not None:
        return not_modified_since(if_modified_since, last_modified)
    return False
