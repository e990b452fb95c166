"""A micro-blog test server: Mastodon, Bluesky (a PDS), Weibo and webhook receivers on one loopback port.

One uvicorn thread serves a small ASGI app (Starlette requests/responses, the pattern of `http_server.py`). Each
platform answers with its real HTTP semantics, checked against the platforms' sources and documentation:

Mastodon (``/api/v1``, ``/api/v2``; mastodon/mastodon ``statuses_controller.rb``, ``post_status_service.rb``,
``status_length_validator.rb``, ``api/base_controller.rb``, ``config/initializers/rack_attack.rb``,
``concerns/api/rate_limit_headers.rb``):

- ``GET /api/v2/instance``: ``configuration.statuses.max_characters`` and ``characters_reserved_per_url`` (23).
- ``GET /api/v1/accounts/verify_credentials`` (read-only, what `broadcaster check` asks): the account, or 401
  ``{"error": "The access token is invalid"}`` with Doorkeeper's ``WWW-Authenticate`` challenge; a token without
  ``read``, ``read:accounts`` or ``profile`` (`MicroblogServer.mastodon_token_scopes`) gets 403
  ``{"error": "This action is outside the authorized scopes"}``.
- ``POST /api/v1/statuses`` (url-encoded form or JSON; multipart is not supported here): ``Authorization: Bearer``
  required, else 401 ``{"error": "The access token is invalid"}``; an unknown ``in_reply_to_id`` is 404
  ``{"error": "The post you are trying to reply to does not appear to exist."}``; a repeated ``Idempotency-Key`` within
  3600 s (server clock) returns the first status unchanged and creates nothing (checked *before* validation, as
  ``with_idempotency`` does; a failed request stores no key); too long is 422
  ``{"error": "Validation failed: Text character limit of 500 exceeded"}``; blank text is 422
  ``{"error": "Validation failed: Text can't be blank"}``. Length is ``spoiler_text + text`` counted in *grapheme
  clusters* (``mb_chars.grapheme_length``, not code points), every ``http(s)://`` URL as 23 and ``@user@domain`` as
  ``@user`` (`mastodon_length`). Every response carries ``X-RateLimit-Limit/-Remaining/-Reset`` (reset in ISO 8601
  with microseconds, rack-attack's epoch-aligned windows; default 300 requests / 300 s); over the limit: 429
  ``{"error": "Too many requests"}``.

Bluesky (``/xrpc``; bluesky-social/atproto ``pds/src/api/com/atproto/{server,repo}/*.ts``, ``pds/src/repo/prepare.ts``,
``pds/src/auth-verifier.ts``, ``syntax`` TID/record-key rules, ``xrpc-server`` rate-limit headers):

- ``com.atproto.server.createSession``: wrong identifier or password is 401
  ``{"error": "AuthenticationRequired", "message": "Invalid identifier or password"}``; limited per identifier to
  30 / 300 s and 300 / day (429 ``{"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}``).
- ``com.atproto.server.refreshSession`` (Bearer refreshJwt) rotates the refresh token; a used one is 400
  ``{"error": "ExpiredToken", "message": "Token has been revoked"}``. ``getSession`` is there too.
- Access tokens (HS256 JWTs) expire after 7200 s of server clock, after ``bluesky_access_token_uses`` requests, or on
  `MicroblogServer.expire_bluesky_tokens`: 400 ``{"error": "ExpiredToken", "message": "Token has expired"}``. No
  token: 401 ``AuthMissing``; an unknown one: 400 ``InvalidToken``.
- ``com.atproto.repo.createRecord``: an ``rkey`` must pass the record-key syntax and, for ``app.bsky.feed.post``, be a
  TID (``^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$``), else 400 ``InvalidRequest``; the post record
  is validated like the lexicon does (``text`` <= 3000 UTF-8 bytes and <= 300 graphemes, ``createdAt`` datetime,
  ``langs`` <= 3, facets' ``byteStart``/``byteEnd`` >= 0), e.g. 400 ``{"error": "InvalidRequest", "message": "Invalid
  app.bsky.feed.post record: Record/text must not be longer than 300 graphemes"}``; a duplicate rkey is 500
  ``{"error": "InternalServerError", "message": "Internal Server Error"}`` (the PDS fails inside the repo write).
  Success: ``{"uri", "cid", "commit": {"cid", "rev"}, "validationStatus": "valid"}``. The CIDs are well-formed CIDv1
  (dag-cbor, sha-256) strings over canonical JSON, not the real DAG-CBOR hashes.
- A tag facet's ``tag`` is at most 64 graphemes and 640 bytes (``app.bsky.richtext.facet#tag``).
- Stricter than a real PDS, on purpose (`MicroblogServer.bluesky_strict` turns it off): facets must lie within the
  UTF-8 text, on character boundaries, with ``byteStart < byteEnd``; a tag facet must cover exactly ``#`` and its
  tag; a feature's ``$type`` must be link, mention or tag; ``reply.root``/``reply.parent`` must name an
  existing post with its current cid. A real PDS accepts such records and the app view silently drops them (or links
  a tag other than the one the reader sees).
- ``com.atproto.repo.getRecord``: 400 ``{"error": "RecordNotFound", "message": "Could not locate record: at://..."}``.
- Every response carries ``ratelimit-limit``, ``ratelimit-remaining``, ``ratelimit-reset`` (epoch seconds) and
  ``ratelimit-policy`` (``limit;w=window``); the default global limit is 3000 / 300 s.

Weibo (``POST /2/statuses/share.json``; open.weibo.com ``2/statuses/share`` and ``Error_code``): form fields
``access_token`` (or ``Authorization: OAuth2 <token>``), ``status``, ``rip``. Errors are
``{"error": ..., "error_code": N, "request": "/2/statuses/share.json"}``: 403 21301 ``auth by Null spi!`` (no token),
403 21332 ``invalid_access_token``, 403 21327 ``expired_token``, 400 10016 missing status, 400 20012 ``Text too long,
please input text less than 140 characters!``, 400 20019 ``repeat content!`` (same text as the account's previous
status), 403 10023 ``User requests out of rate limit!``, and, only when `MicroblogServer.weibo_safe_domain` is set,
400 10017 ``text not find domain!`` (the real share API requires a link to the app's safe domain). Length rule
(`weibo_length`): ASCII counts half, everything else one, rounded up, every URL 10 (a t.cn short link); limit 140.
``GET /2/account/get_uid.json`` (read-only, what `broadcaster check` asks): ``{"uid": N}``, or the same token errors.

Webhooks (``POST /hooks/{name}``): body and headers are recorded and 204 returned. With a secret, the header
``X-Broadcaster-Signature`` (name configurable) must be ``sha256=<hex HMAC-SHA256>`` over the raw body, or, when an
``X-Broadcaster-Timestamp`` header is present, over ``"<timestamp>." + body`` (`sign_webhook`); the delivery records
whether it verified. A dry run (``X-Broadcaster-Dry-Run: 1``, what `broadcaster check` sends) is answered 401 when
a secret is set and the signature does not verify, else 204, and is kept apart (`webhook_dry_runs`), not delivered.

Older Mastodon (`MicroblogServer.mastodon_key_after_create_s`): the key is looked up when a status request arrives
but stored only once the status is made, that many seconds later; a repeat of the key meanwhile makes a second
status (current Mastodon holds a lock instead).

Faults for every platform: `MicroblogServer.push_fault` (replays any given status, headers and body, optionally to
one path only, optionally truncated mid-body),
`MicroblogServer.hang`, `MicroblogServer.drip` (status line and headers at once, then the body a few bytes at a
time), `MicroblogServer.reset_connections` and `MicroblogServer.set_down`. The server clock
(`MicroblogServer.now`) is real UTC time plus whatever `MicroblogServer.advance` added, so an hour passes at once.
State is shared between the uvicorn thread and the test thread under one lock; accessors return frozen snapshots.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import html
import json
import re
import secrets
import socket
import struct
import threading
import time
import unicodedata
import urllib.parse
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Literal, Self, get_args

from starlette.requests import Request
from starlette.responses import Response

from .uvicorn_thread import ThreadedUvicorn

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from starlette.types import Receive, Scope, Send

Platform = Literal["mastodon", "bluesky", "weibo", "webhook"]
PLATFORMS: tuple[Platform, ...] = get_args(Platform)

# Default credentials, also the fixture's attributes.
MASTODON_TOKEN = "mastodon-test-token"
BLUESKY_HANDLE = "broadcaster.test"
BLUESKY_DID = "did:plc:metrobroadcasterdidtest2"
BLUESKY_PASSWORD = "abcd-efgh-ijkl-mnop"
WEIBO_ACCESS_TOKEN = "2.00broadcaster_weibo_test_token"
WEIBO_UID = 5_000_000_001
WEBHOOK_SECRET = "webhook-test-secret"
WEBHOOK_SIGNATURE_HEADER = "X-Broadcaster-Signature"
WEBHOOK_TIMESTAMP_HEADER = "X-Broadcaster-Timestamp"

MASTODON_IDEMPOTENCY_TTL_S = 3600
BLUESKY_POST = "app.bsky.feed.post"
WEIBO_SHARE_PATH = "/2/statuses/share.json"
WEIBO_GET_UID_PATH = "/2/account/get_uid.json"
WEBHOOK_DRY_RUN_HEADER = "X-Broadcaster-Dry-Run"


# -- what the tests read back ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the server saw it. Header names are lower case.

    ``status`` is None while the request is in flight, after a connection reset, or when the client left during a
    hang (a drip logs its status as soon as the status line is out); ``fault`` names the fault that answered it
    ("down", "reset", "hang", "drip", "fault", "truncated", "rate_limited", "slow_create") or is None.
    ``client_left`` is the ``time.monotonic()`` at which the server saw the client go away before its answer was
    complete (a hang or a drip it gave up on), else None.
    """

    platform: Platform
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    at: datetime
    monotonic: float
    status: int | None = None
    fault: str | None = None
    client_left: float | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class MastodonStatus:
    """A status the Mastodon API created."""

    id: str
    text: str
    spoiler_text: str
    in_reply_to_id: str | None
    visibility: str
    language: str | None
    sensitive: bool
    idempotency_key: str | None
    media_ids: tuple[str, ...]
    created_at: datetime
    uri: str
    url: str


@dataclass(frozen=True)
class StrongRef:
    """``com.atproto.repo.strongRef``: a record's at-uri and the cid of the version meant."""

    uri: str
    cid: str


@dataclass(frozen=True)
class BlueskyPost:
    """An ``app.bsky.feed.post`` record the PDS stored."""

    uri: str
    cid: str
    rkey: str
    text: str
    created_at: str
    langs: tuple[str, ...]
    facets: tuple[Mapping[str, Any], ...]
    reply_root: StrongRef | None
    reply_parent: StrongRef | None
    record: Mapping[str, Any]
    indexed_at: datetime


@dataclass(frozen=True)
class WeiboStatus:
    """A status the Weibo share API created."""

    id: int
    idstr: str
    text: str
    rip: str | None
    created_at: datetime


@dataclass(frozen=True)
class WebhookDelivery:
    """One POST to ``/hooks/{name}``. ``signature_valid`` is None when no secret is set or no signature was sent."""

    name: str
    body: bytes
    headers: Mapping[str, str]
    signature_valid: bool | None
    at: datetime

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)


# -- counting as the platforms do --------------------------------------------------------------------------------

# Grapheme_Cluster_Break classes (UAX #29); Python's unicodedata lacks the property, so it is derived below.
_CR, _LF, _CONTROL, _EXTEND, _ZWJ, _RI, _PREPEND, _SPACING, _L, _V, _T, _LV, _LVT, _OTHER = range(14)

_EXT_PICT_RANGES = (
    (0x00A9, 0x00A9), (0x00AE, 0x00AE), (0x203C, 0x203C), (0x2049, 0x2049), (0x2122, 0x2122), (0x2139, 0x2139),
    (0x2194, 0x2199), (0x21A9, 0x21AA), (0x231A, 0x231B), (0x2328, 0x2328), (0x2388, 0x2388), (0x23CF, 0x23CF),
    (0x23E9, 0x23F3), (0x23F8, 0x23FA), (0x24C2, 0x24C2), (0x25AA, 0x25AB), (0x25B6, 0x25B6), (0x25C0, 0x25C0),
    (0x25FB, 0x25FE), (0x2600, 0x2605), (0x2607, 0x2612), (0x2614, 0x2685), (0x2690, 0x2705), (0x2708, 0x2712),
    (0x2714, 0x2714), (0x2716, 0x2716), (0x271D, 0x271D), (0x2721, 0x2721), (0x2728, 0x2728), (0x2733, 0x2734),
    (0x2744, 0x2744), (0x2747, 0x2747), (0x274C, 0x274C), (0x274E, 0x274E), (0x2753, 0x2755), (0x2757, 0x2757),
    (0x2763, 0x2767), (0x2795, 0x2797), (0x27A1, 0x27A1), (0x27B0, 0x27B0), (0x27BF, 0x27BF), (0x2934, 0x2935),
    (0x2B05, 0x2B07), (0x2B1B, 0x2B1C), (0x2B50, 0x2B50), (0x2B55, 0x2B55), (0x3030, 0x3030), (0x303D, 0x303D),
    (0x3297, 0x3297), (0x3299, 0x3299), (0x1F000, 0x1F0FF), (0x1F10D, 0x1F10F), (0x1F12F, 0x1F12F),
    (0x1F16C, 0x1F171), (0x1F17E, 0x1F17F), (0x1F18E, 0x1F18E), (0x1F191, 0x1F19A), (0x1F1AD, 0x1F1E5),
    (0x1F201, 0x1F20F), (0x1F21A, 0x1F21A), (0x1F22F, 0x1F22F), (0x1F232, 0x1F23A), (0x1F23C, 0x1F23F),
    (0x1F249, 0x1F3FA), (0x1F400, 0x1F53D), (0x1F546, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F774, 0x1F77F),
    (0x1F7D5, 0x1F7FF), (0x1F80C, 0x1F80F), (0x1F848, 0x1F84F), (0x1F85A, 0x1F85F), (0x1F888, 0x1F88F),
    (0x1F8AE, 0x1F8FF), (0x1F90C, 0x1F93A), (0x1F93C, 0x1F945), (0x1F947, 0x1FAFF), (0x1FC00, 0x1FFFD),
)  # fmt: skip
_PREPEND_CHARS = frozenset(
    [*range(0x0600, 0x0606), 0x06DD, 0x070F, 0x0890, 0x0891, 0x08E2, 0x0D4E, 0x110BD, 0x110CD, 0x111C2, 0x111C3,
     0x1193F, 0x11941, 0x11A3A, *range(0x11A84, 0x11A8A), 0x11D46]
)  # fmt: skip
# Spacing combining marks (Mc) that are Grapheme_Extend, hence Extend rather than SpacingMark.
_EXTEND_MC = frozenset(
    [0x09BE, 0x09D7, 0x0B3E, 0x0B57, 0x0BBE, 0x0BD7, 0x0CC2, 0x0CD5, 0x0CD6, 0x0D3E, 0x0D57, 0x0DCF, 0x0DDF, 0x1B35,
     0x302E, 0x302F, 0x1133E, 0x11357, 0x114B0, 0x114BD, 0x115AF, 0x11930, 0x1D165, *range(0x1D16E, 0x1D173)]
)  # fmt: skip
# Mc characters whose Grapheme_Cluster_Break is Other.
_NOT_SPACING_MC = frozenset(
    [0x102B, 0x102C, 0x1038, *range(0x1062, 0x1065), *range(0x1067, 0x106E), 0x1083, *range(0x1087, 0x108D), 0x108F,
     *range(0x109A, 0x109D), 0x1A61, 0x1A63, 0x1A64, 0xAA7B, 0xAA7D, 0x11720, 0x11721]
)  # fmt: skip


# Indic_Conjunct_Break (GB9c, Unicode 15.1): consonants and viramas ("linkers") of six scripts.
_INCB_LINKERS = frozenset([0x094D, 0x09CD, 0x0ACD, 0x0B4D, 0x0C4D, 0x0D4D])
_INCB_CONSONANT_RANGES = (
    (0x0915, 0x0939), (0x0958, 0x095F), (0x0978, 0x097F), (0x0995, 0x09A8), (0x09AA, 0x09B0), (0x09B2, 0x09B2),
    (0x09B6, 0x09B9), (0x09DC, 0x09DD), (0x09DF, 0x09DF), (0x09F0, 0x09F1), (0x0A95, 0x0AA8), (0x0AAA, 0x0AB0),
    (0x0AB2, 0x0AB3), (0x0AB5, 0x0AB9), (0x0AF9, 0x0AF9), (0x0B15, 0x0B28), (0x0B2A, 0x0B30), (0x0B32, 0x0B33),
    (0x0B35, 0x0B39), (0x0B5C, 0x0B5D), (0x0B5F, 0x0B5F), (0x0B71, 0x0B71), (0x0C15, 0x0C28), (0x0C2A, 0x0C39),
    (0x0C58, 0x0C5A), (0x0D15, 0x0D3A),
)  # fmt: skip


def _incb_consonant(code: int) -> bool:
    return 0x0915 <= code <= 0x0D3A and any(low <= code <= high for low, high in _INCB_CONSONANT_RANGES)


@functools.lru_cache(maxsize=4096)
def _grapheme_class(code: int) -> int:
    if code == 0x0D:
        return _CR
    if code == 0x0A:
        return _LF
    if code == 0x200D:
        return _ZWJ
    if 0x1F1E6 <= code <= 0x1F1FF:
        return _RI
    if code in _PREPEND_CHARS:
        return _PREPEND
    if 0x1100 <= code <= 0x115F or 0xA960 <= code <= 0xA97C:
        return _L
    if 0x1160 <= code <= 0x11A7 or 0xD7B0 <= code <= 0xD7C6:
        return _V
    if 0x11A8 <= code <= 0x11FF or 0xD7CB <= code <= 0xD7FB:
        return _T
    if 0xAC00 <= code <= 0xD7A3:
        return _LV if (code - 0xAC00) % 28 == 0 else _LVT
    if code == 0x200C or 0x1F3FB <= code <= 0x1F3FF or 0xE0020 <= code <= 0xE007F or code in (0xFF9E, 0xFF9F):
        return _EXTEND
    if code in (0x0E33, 0x0EB3):
        return _SPACING
    category = unicodedata.category(chr(code))
    if category in ("Mn", "Me") or code in _EXTEND_MC:
        return _EXTEND
    if category == "Mc":
        return _OTHER if code in _NOT_SPACING_MC else _SPACING
    if category in ("Cc", "Cf", "Zl", "Zp"):
        return _CONTROL
    return _OTHER


@functools.lru_cache(maxsize=4096)
def _extended_pictographic(code: int) -> bool:
    return any(low <= code <= high for low, high in _EXT_PICT_RANGES)


def _breaks(prev: int, cls: int, pictographic: bool, regional_run: int, emoji_state: int) -> bool:
    if prev == _CR and cls == _LF:  # GB3
        return False
    if prev in (_CONTROL, _CR, _LF) or cls in (_CONTROL, _CR, _LF):  # GB4, GB5
        return True
    if prev == _L and cls in (_L, _V, _LV, _LVT):  # GB6
        return False
    if prev in (_LV, _V) and cls in (_V, _T):  # GB7
        return False
    if prev in (_LVT, _T) and cls == _T:  # GB8
        return False
    if cls in (_EXTEND, _ZWJ, _SPACING) or prev == _PREPEND:  # GB9, GB9a, GB9b
        return False
    if prev == _ZWJ and pictographic and emoji_state == 2:  # GB11
        return False
    if prev == _RI and cls == _RI:  # GB12, GB13: flags pair up
        return regional_run % 2 == 0
    return True


def iter_graphemes(text: str) -> Iterator[str]:
    """Split `text` into extended grapheme clusters (UAX #29 of Unicode 15.1, as Intl.Segmenter does)."""
    start = 0
    prev = _OTHER
    regional_run = 0  # regional indicators immediately before this character
    emoji_state = 0  # 1: inside ExtPict Extend*, 2: just after ExtPict Extend* ZWJ
    conjunct_state = 0  # 1: after an Indic consonant (and extenders), 2: ... and a linker since
    for index, char in enumerate(text):
        code = ord(char)
        cls = _grapheme_class(code)
        pictographic = _extended_pictographic(code)
        consonant = _incb_consonant(code)
        joins = consonant and conjunct_state == 2  # GB9c
        if index and not joins and _breaks(prev, cls, pictographic, regional_run, emoji_state):
            yield text[start:index]
            start = index
        if consonant:
            conjunct_state = 1
        elif code in _INCB_LINKERS and conjunct_state:
            conjunct_state = 2
        elif cls not in (_EXTEND, _ZWJ):
            conjunct_state = 0
        regional_run = regional_run + 1 if cls == _RI else 0
        if pictographic:
            emoji_state = 1
        elif cls == _ZWJ and emoji_state == 1:
            emoji_state = 2
        elif not (cls == _EXTEND and emoji_state == 1):
            emoji_state = 0
        prev = cls
    if text:
        yield text[start:]


def grapheme_count(text: str) -> int:
    """User-perceived characters, as Bluesky (Intl.Segmenter) and Mastodon (``grapheme_length``) count them."""
    return sum(1 for _ in iter_graphemes(text))


# twitter-text validates URLs much more thoroughly; a protocol URL up to whitespace is what matters here.
_URL_RE = re.compile(r"https?://[^\s<>\"]+", re.IGNORECASE)
_URL_TRAILING = ".,;:!?)]}'\""
# Account::MENTION_RE: a mention is not preceded by a word character or a slash.
_MENTION_RE = re.compile(
    r"(?<![\w/])@([a-z0-9_]+(?:[a-z0-9_.-]+[a-z0-9_]+)?)(?:@[a-z0-9.\-]+[a-z0-9]+)?", re.IGNORECASE
)


def _urls(text: str) -> Iterator[tuple[int, int]]:
    for match in _URL_RE.finditer(text):
        end = match.end()
        while end > match.start() and text[end - 1] in _URL_TRAILING:
            end -= 1
        yield match.start(), end


def mastodon_length(text: str, spoiler_text: str = "", *, url_length: int = 23) -> int:
    """What Mastodon's StatusLengthValidator counts: graphemes of spoiler + text, URLs as 23, ``@u@host`` as ``@u``."""
    pieces: list[str] = []
    position = 0
    for start, end in _urls(text):
        pieces += [text[position:start], "x" * url_length]
        position = end
    pieces.append(text[position:])
    countable = _MENTION_RE.sub(lambda match: "@" + match.group(1), "".join(pieces))
    return grapheme_count(spoiler_text + countable)


def weibo_length(text: str, *, url_units: int | None = 10) -> int:
    """Weibo's 140-unit rule: an ASCII character is half a unit, any other one unit, rounded up; a URL `url_units`."""
    halves = 0
    position = 0
    if url_units is not None:
        for start, end in _urls(text):
            halves += _weibo_halves(text[position:start]) + 2 * url_units
            position = end
    return (halves + _weibo_halves(text[position:]) + 1) // 2


def _weibo_halves(text: str) -> int:
    return sum(1 if ord(char) < 0x80 else 2 for char in text)


# -- atproto syntax ----------------------------------------------------------------------------------------------

_S32 = "234567abcdefghijklmnopqrstuvwxyz"
_TID_RE = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$")
_RECORD_KEY_RE = re.compile(r"^[a-zA-Z0-9_~.:-]{1,512}$")
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_LANGUAGE_RE = re.compile(r"^([A-Za-z]{2,3}|i|x)(-[A-Za-z0-9]{1,8})*$")
_AT_URI_RE = re.compile(r"^at://([^/]+)/([^/]+)/([^/]+)$")


def is_valid_tid(value: str) -> bool:
    """``@atproto/syntax`` ensureValidTid: 13 base32-sortable characters, the first with the high bit clear."""
    return _TID_RE.fullmatch(value) is not None


def make_tid(micros: int, clock_id: int = 0) -> str:
    """A TID: 53 bits of microseconds since the epoch and a 10-bit clock id, base32-sortable."""

    def encode(number: int, width: int) -> str:
        digits = ""
        while number:
            number, digit = divmod(number, 32)
            digits = _S32[digit] + digits
        return digits.rjust(width, "2")

    return encode(micros, 11) + encode(clock_id & 0x3FF, 2)


def _record_key_error(rkey: str) -> str | None:
    if not 1 <= len(rkey) <= 512:
        return "record key must be 1 to 512 characters"
    if not _RECORD_KEY_RE.fullmatch(rkey):
        return "record key syntax not valid (regex)"
    if rkey in (".", ".."):
        return 'record key can not be "." or ".."'
    return None


def _cid_for(value: object) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    raw = bytes([0x01, 0x71, 0x12, 0x20]) + hashlib.sha256(canonical).digest()  # CIDv1, dag-cbor, sha2-256
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


def sign_webhook(secret: str, body: bytes, timestamp: str | None = None) -> str:
    """The signature header value the webhook receiver accepts: ``sha256=<hex>`` over body or ``timestamp.body``."""
    message = body if timestamp is None else timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


# -- internals ---------------------------------------------------------------------------------------------------


class _Rejected(Exception):
    """A handler's error answer, raised so deep validation can stop at once."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


@dataclass(frozen=True)
class _Fault:
    status: int
    headers: Mapping[str, str]
    body: bytes | None  # None: the platform's usual error body for the status
    path: str | None = None  # None: any request to the platform
    truncate: bool = False  # announce the whole body, send half of it, then drop the connection

    def applies_to(self, path: str) -> bool:
        return self.path is None or self.path == path


@dataclass(frozen=True)
class _Hang:
    seconds: float
    commit: bool


@dataclass(frozen=True)
class _Drip:
    interval_s: float
    seconds: float
    chunk_bytes: int
    commit: bool


@dataclass
class _Window:
    """A fixed-window counter. ``aligned`` windows start at multiples of the period (rack-attack); otherwise at the
    first hit (rate-limiter-flexible, as the atproto xrpc-server uses)."""

    limit: int
    period_s: float
    aligned: bool
    start: float | None = None
    count: int = 0

    def hit(self, now: float) -> tuple[bool, int, float]:
        """Count one request at epoch `now`; return (allowed, remaining, reset epoch)."""
        if self.aligned:
            period = int(self.period_s)
            start = float(int(now) - int(now) % period)
            reset = now + (period - int(now) % period)
        else:
            if self.start is None or now >= self.start + self.period_s:
                self.start, self.count = now, 0
            start = self.start
            reset = start + self.period_s
        if self.start != start:
            self.start, self.count = start, 0
        self.count += 1
        return self.count <= self.limit, max(0, self.limit - self.count), reset


@dataclass(frozen=True)
class _RateInfo:
    limit: int
    remaining: int
    reset: float
    window_s: float


@dataclass
class _BlueskyToken:
    kind: Literal["access", "refresh"]
    expires_at: datetime
    uses: int = 0
    expired: bool = False
    revoked: bool = False


@dataclass
class _PlatformFaults:
    down: bool = False
    resets: int = 0
    hangs: deque[_Hang] = field(default_factory=deque)
    drips: deque[_Drip] = field(default_factory=deque)
    faults: deque[_Fault] = field(default_factory=deque)


_XRPC_ERROR_NAMES = {
    400: "InvalidRequest",
    401: "AuthenticationRequired",
    403: "Forbidden",
    404: "XRPCNotSupported",
    413: "PayloadTooLarge",
    429: "RateLimitExceeded",
    500: "InternalServerError",
    501: "MethodNotImplemented",
    502: "UpstreamFailure",
    503: "NotEnoughResources",
    504: "UpstreamTimeout",
}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _json(status: int, payload: object, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status_code=status, headers=dict(headers or {}), media_type="application/json; charset=utf-8")


def _xrpc_error(status: int, error: str, message: str, headers: Mapping[str, str] | None = None) -> _Rejected:
    return _Rejected(_json(status, {"error": error, "message": message}, headers))


def _iso_ms(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _iso_us(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}Z"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _mastodon_html(text: str) -> str:
    """Mastodon's plain-text formatting: escaped, linkified, paragraphs on blank lines, ``<br />`` on newlines."""

    def linkify(line: str) -> str:
        out: list[str] = []
        position = 0
        for start, end in _urls(line):
            url = html.escape(line[start:end])
            out += [html.escape(line[position:start]), f'<a href="{url}" rel="nofollow noopener" target="_blank">']
            out += [url, "</a>"]
            position = end
        out.append(html.escape(line[position:]))
        return "".join(out)

    paragraphs = [p for p in re.split(r"\n{2,}", text.strip()) if p]
    return "".join("<p>" + "<br />".join(linkify(line) for line in p.split("\n")) + "</p>" for p in paragraphs)


def _rails_boolean(value: object) -> bool:
    if value is None or value == "":
        return False
    return value not in (False, 0, "0", "f", "F", "false", "FALSE", "False", "off", "OFF", "Off")


_CHINA = timezone(timedelta(hours=8), "CST")


def _weibo_time(moment: datetime) -> str:
    return moment.astimezone(_CHINA).strftime("%a %b %d %H:%M:%S +0800 %Y")


def _platform_for(path: str) -> Platform | None:
    if path.startswith("/api/"):
        return "mastodon"
    if path.startswith("/xrpc/"):
        return "bluesky"
    if path.startswith("/2/"):
        return "weibo"
    if path.startswith("/hooks/"):
        return "webhook"
    return None


# -- the server --------------------------------------------------------------------------------------------------


class MicroblogServer:
    """Mastodon, Bluesky, Weibo and webhook endpoints on one free 127.0.0.1 port (see the module docstring).

    Configuration attributes may be changed between requests (``server.mastodon_max_characters = 100``).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        mastodon_max_characters: int = 500,
        mastodon_token: str = MASTODON_TOKEN,
        bluesky_handle: str = BLUESKY_HANDLE,
        bluesky_did: str = BLUESKY_DID,
        bluesky_password: str = BLUESKY_PASSWORD,
        bluesky_login_limit: int = 30,
        bluesky_login_window_s: float = 300,
        bluesky_login_daily_limit: int = 300,
        bluesky_access_token_ttl_s: float = 7200,
        bluesky_access_token_uses: int | None = None,
        bluesky_strict: bool = True,
        weibo_access_token: str = WEIBO_ACCESS_TOKEN,
        weibo_max_units: int = 140,
        weibo_url_units: int | None = 10,
        weibo_safe_domain: str | None = None,
        webhook_secret: str | None = WEBHOOK_SECRET,
        webhook_signature_header: str = WEBHOOK_SIGNATURE_HEADER,
        webhook_timestamp_header: str = WEBHOOK_TIMESTAMP_HEADER,
        clock: Callable[[], datetime] | None = None,
        startup_timeout_s: float = 10.0,
    ) -> None:
        self.mastodon_max_characters = mastodon_max_characters
        self.mastodon_token = mastodon_token
        #: The token's OAuth scopes; a bot token made with only ``write:statuses`` cannot read its account.
        self.mastodon_token_scopes: tuple[str, ...] = ("read", "write")
        self.bluesky_handle = bluesky_handle
        self.bluesky_identifier = bluesky_handle
        self.bluesky_did = bluesky_did
        self.bluesky_password = bluesky_password
        self.bluesky_access_token_ttl_s = bluesky_access_token_ttl_s
        self.bluesky_access_token_uses = bluesky_access_token_uses
        self.bluesky_strict = bluesky_strict
        self.weibo_access_token = weibo_access_token
        self.weibo_max_units = weibo_max_units
        self.weibo_url_units = weibo_url_units
        self.weibo_safe_domain = weibo_safe_domain
        self.webhook_secret = webhook_secret
        self.webhook_signature_header = webhook_signature_header
        self.webhook_timestamp_header = webhook_timestamp_header
        self.startup_timeout_s = startup_timeout_s
        #: Older Mastodon: None, or the seconds a status takes to be made, the Idempotency-Key stored only then.
        self.mastodon_key_after_create_s: float | None = None
        self._clock = clock or (lambda: datetime.now(UTC))
        self._offset = timedelta()

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._log: list[LoggedRequest] = []
        self._faults = {platform: _PlatformFaults() for platform in PLATFORMS}
        self._limits: dict[Platform, _Window | None] = {
            "mastodon": _Window(300, 300, aligned=True),
            "bluesky": _Window(3000, 300, aligned=False),
            "weibo": None,
            "webhook": None,
        }
        self._bluesky_login_limit = (bluesky_login_limit, bluesky_login_window_s, bluesky_login_daily_limit)
        self._login_windows: dict[str, tuple[_Window, _Window]] = {}

        self._mastodon_by_id: dict[str, MastodonStatus] = {}
        self._mastodon_last_id = 0
        self._idempotency: dict[str, tuple[str, datetime]] = {}
        self._bluesky_records: dict[tuple[str, str], tuple[str, dict[str, Any], datetime]] = {}
        self._bluesky_posts: list[BlueskyPost] = []
        self._bluesky_deleted: list[BlueskyPost] = []
        self._mastodon_deleted: list[MastodonStatus] = []
        self._bluesky_tokens: dict[str, _BlueskyToken] = {}
        self._bluesky_secret = secrets.token_bytes(32)
        self._bluesky_last_tid_us = 0
        self._bluesky_logins = 0
        self._weibo: list[WeiboStatus] = []
        self._weibo_expired = False
        self._webhooks: dict[str, list[WebhookDelivery]] = {}
        self._webhook_dry_runs: dict[str, list[WebhookDelivery]] = {}

        self._server: ThreadedUvicorn | None = None

    # -- clock -------------------------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The server clock: the injected (default: real UTC) clock plus everything `advance` added."""
        with self._lock:
            return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the server clock forward: idempotency keys, tokens and rate-limit windows age at once."""
        with self._lock:
            self._offset += timedelta(seconds=seconds)

    def http_date(self, seconds_from_now: float = 0) -> str:
        """An HTTP-date on the server clock, e.g. for a ``Retry-After`` fault."""
        return format_datetime(self.now() + timedelta(seconds=seconds_from_now), usegmt=True)

    # -- faults ------------------------------------------------------------------------------------------------

    def push_fault(
        self,
        platform: Platform,
        status: int = 500,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | Mapping[str, Any] | None = None,
        count: int = 1,
        *,
        path: str | None = None,
        truncate: bool = False,
    ) -> None:
        """Answer the next `count` requests to `platform` (to `path` only, if given) with this response instead
        (FIFO with earlier faults): the replay mode, for any answer a platform might give.

        The response carries exactly `headers` (no rate-limit headers are added; any legal value, e.g.
        ``Retry-After: 99999999999999``). A `body` of None means the platform's usual error body for `status`; a
        mapping is sent as JSON. With `truncate` the headers announce the whole body, half of it is sent and the
        connection is dropped (a proxy or server dying mid-answer). Nothing happens on the platform.
        """
        if isinstance(body, str):
            raw: bytes | None = body.encode()
        elif body is None or isinstance(body, bytes):
            raw = body
        else:
            raw = json.dumps(body, ensure_ascii=False).encode()
        with self._lock:
            self._faults[platform].faults.extend(
                _Fault(status, dict(headers or {}), raw, path, truncate) for _ in range(count)
            )

    def hang(self, platform: Platform, seconds: float, *, count: int = 1, commit: bool = False) -> None:
        """Read the next `count` requests, then hold each response for `seconds` (other requests go on).

        Without `commit` nothing happens if the client gives up first; if it waits, the request is then handled
        normally (a slow platform). With `commit` the request takes effect at once and only the answer is held
        (the "did my post go through?" case).
        """
        with self._lock:
            self._faults[platform].hangs.extend(_Hang(seconds, commit) for _ in range(count))

    def drip(
        self,
        platform: Platform,
        interval_s: float,
        *,
        count: int = 1,
        commit: bool = False,
        seconds: float = 60.0,
        chunk_bytes: int = 2,
    ) -> None:
        """Answer the next `count` requests with the status line and headers at once, then the body `chunk_bytes`
        at a time every `interval_s`: JSON whitespace for `seconds`, then the real body (other requests go on).

        Every chunk resets a client's per-read timeout, so only an overall deadline stops it. With `commit` the
        request takes effect at once and its real answer is dripped (a 204 becomes a 200, to have a body); without,
        nothing happens and the answer is the platform's usual 503 (a struggling server). A client that stays to
        the end gets a well-formed answer; one that leaves is noted in ``LoggedRequest.client_left``.
        """
        if interval_s <= 0 or chunk_bytes <= 0 or seconds < 0:
            raise ValueError("drip needs interval_s > 0, chunk_bytes > 0 and seconds >= 0")
        with self._lock:
            self._faults[platform].drips.extend(_Drip(interval_s, seconds, chunk_bytes, commit) for _ in range(count))

    def clear_faults(self, platform: Platform) -> None:
        """Forget every programmed fault, hang, drip and reset of `platform`, and bring it back up."""
        with self._lock:
            self._faults[platform] = _PlatformFaults()

    def reset_connections(self, platform: Platform, count: int = 1) -> None:
        """Close the connection of the next `count` requests (after reading them) without any response."""
        with self._lock:
            self._faults[platform].resets += count

    def set_down(self, platform: Platform, down: bool = True) -> None:
        """While down, every request to `platform` is answered 503 with the platform's usual error body."""
        with self._lock:
            self._faults[platform].down = down

    def set_rate_limit(self, platform: Platform, limit: int | None, period_s: float = 300) -> None:
        """Program the platform's request limit (None: unlimited) and start counting afresh.

        Defaults: Mastodon 300 / 300 s (epoch-aligned windows), Bluesky 3000 / 300 s, Weibo and webhooks none.
        """
        with self._lock:
            self._limits[platform] = None if limit is None else _Window(limit, period_s, aligned=platform == "mastodon")

    def expire_bluesky_tokens(self, *, refresh: bool = False) -> None:
        """Expire every access token issued so far (and, with `refresh`, every refresh token)."""
        with self._lock:
            for token in self._bluesky_tokens.values():
                if token.kind == "access" or refresh:
                    token.expired = True

    def expire_weibo_token(self, expired: bool = True) -> None:
        """Make the Weibo access token answer 21327 ``expired_token`` (or work again)."""
        with self._lock:
            self._weibo_expired = expired

    # -- reading back ------------------------------------------------------------------------------------------

    def wait_for(self, condition: Callable[[list[LoggedRequest]], bool], timeout_s: float = 5.0) -> list[LoggedRequest]:
        """Block until `condition` holds for the request log (e.g. a client left a drip); TimeoutError after
        `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not condition(seen := self.requests()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"the request log did not reach the condition within {timeout_s}s")
                self._changed.wait(remaining)
            return seen

    def requests(self, platform: Platform | None = None) -> list[LoggedRequest]:
        """The request log, oldest first; each entry has the server-clock time and ``time.monotonic()``."""
        with self._lock:
            return [entry for entry in self._log if platform is None or entry.platform == platform]

    def wait_for_requests(
        self, platform: Platform | None = None, count: int = 1, timeout_s: float = 5.0
    ) -> list[LoggedRequest]:
        """Block until at least `count` requests (to `platform`) have arrived; TimeoutError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while len(seen := self.requests(platform)) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(seen)} of {count} requests to {platform or 'any platform'} arrived")
                self._changed.wait(remaining)
            return seen

    def mastodon_statuses(self) -> list[MastodonStatus]:
        with self._lock:
            return list(self._mastodon_by_id.values())

    def bluesky_posts(self) -> list[BlueskyPost]:
        with self._lock:
            return list(self._bluesky_posts)

    def deleted(self) -> tuple[list[MastodonStatus], list[BlueskyPost]]:
        """Mastodon statuses and Bluesky posts deleted so far (they no longer appear in the lists above)."""
        with self._lock:
            return list(self._mastodon_deleted), list(self._bluesky_deleted)

    @property
    def bluesky_login_count(self) -> int:
        """Successful ``createSession`` calls so far."""
        with self._lock:
            return self._bluesky_logins

    def weibo_statuses(self) -> list[WeiboStatus]:
        with self._lock:
            return list(self._weibo)

    def webhook_deliveries(self, name: str) -> list[WebhookDelivery]:
        with self._lock:
            return list(self._webhooks.get(name, []))

    def webhook_dry_runs(self, name: str) -> list[WebhookDelivery]:
        """The dry runs (``X-Broadcaster-Dry-Run: 1``, signature valid) that reached ``/hooks/{name}``."""
        with self._lock:
            return list(self._webhook_dry_runs.get(name, []))

    # -- addresses ---------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.port if self._server is not None else 0

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:41234`` (Mastodon instance, PDS and Weibo API base alike)."""
        return f"http://{self.host}:{self.port}"

    def webhook_url(self, name: str) -> str:
        return f"{self.url}/hooks/{urllib.parse.quote(name, safe='')}"

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind a free port, start uvicorn in a daemon thread and return once it serves (or raise by the deadline)."""
        if self._server is not None:
            raise RuntimeError("server already started")
        self._server = ThreadedUvicorn(self._app, host=self.host, name="microblog-server")
        try:
            self._server.start(self.startup_timeout_s)
        except RuntimeError:
            self._server = None
            raise

    def stop(self, *, force: bool = True, timeout_s: float = 5.0) -> None:
        """Stop uvicorn (held requests are released at once) and join its thread, within `timeout_s` twice over."""
        server = self._server
        if server is not None:
            server.stop(force=force, timeout_s=timeout_s)  # handlers still see it while they let go of requests
            self._server = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(force=True)

    # -- the ASGI application ----------------------------------------------------------------------------------

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        path = request.url.path
        platform = _platform_for(path)
        if platform is None:
            await Response(b"not found\n", status_code=404, media_type="text/plain")(scope, receive, send)
            return
        with self._changed:
            entry = LoggedRequest(
                platform, request.method, path, request.url.query, headers, body, self.now(), time.monotonic()
            )
            index = len(self._log)
            self._log.append(entry)
            self._changed.notify_all()
            faults = self._faults[platform]
            down = faults.down
            reset = not down and faults.resets > 0
            if reset:
                faults.resets -= 1
            held = faults.hangs.popleft() if not (down or reset) and faults.hangs else None
            dripping = faults.drips.popleft() if not (down or reset or held) and faults.drips else None
            canned = None if down or reset or held or dripping else self._take_fault(faults.faults, path)
            slow_create = (
                platform == "mastodon" and self.mastodon_key_after_create_s is not None and canned is None
                and not (down or reset or held or dripping) and request.method == "POST" and path == "/api/v1/statuses"
            )

        tag: str | None = None
        if reset:
            self._finish(index, None, "reset")
            await self._reset_connection(receive)
            return
        if down:
            response, tag = self._error_response(platform, 503, {}, None, path), "down"
        elif canned is not None:
            response = self._error_response(platform, canned.status, canned.headers, canned.body, path)
            tag = "fault"
            if canned.truncate:
                self._finish(index, response.status_code, "truncated")
                await self._truncated(receive, send, response)
                return
        elif slow_create:
            response, tag = await self._mastodon_create_slowly(index, request.url.query, headers, body), "slow_create"
        elif dripping is not None:
            call = (platform, request.method, path, request.url.query, headers, body)
            if dripping.commit:
                response = self._handle(*call)[0]
            else:
                response = self._error_response(platform, 503, {}, None, path)
            status = 200 if response.status_code == 204 else response.status_code
            self._finish(index, status, "drip")  # the status line is about to go out
            await self._drip(index, receive, send, status, response, dripping)
            return
        elif held is not None:
            tag = "hang"
            call = (platform, request.method, path, request.url.query, headers, body)
            committed = self._handle(*call)[0] if held.commit else None
            self._finish(index, None, tag)  # visible as held while it is (and, with commit, after it took effect)
            if not await self._hold(receive, held.seconds) and not self._stopping():
                self._note_left(index)
                return  # the client left; a committed request stays done
            response = committed if committed is not None else self._handle(*call)[0]
        else:
            response, limited = self._handle(platform, request.method, path, request.url.query, headers, body)
            tag = "rate_limited" if limited else None
        # Logged before sending, so a client that has its answer also finds it in the log.
        self._finish(index, response.status_code, tag)
        await response(scope, receive, send)

    @staticmethod
    def _take_fault(faults: deque[_Fault], path: str) -> _Fault | None:
        """The first programmed fault for `path`, taken off the queue (under the lock)."""
        for fault in faults:
            if fault.applies_to(path):
                faults.remove(fault)
                return fault
        return None

    async def _truncated(self, receive: Receive, send: Send, response: Response) -> None:
        """Announce `response`'s whole body, send half of it, and drop the connection."""
        data = bytes(response.body)
        raw_headers = [(name, value) for name, value in response.raw_headers if name.lower() != b"content-length"]
        raw_headers.append((b"content-length", str(len(data) + 1).encode()))  # never complete, even when empty
        await send({"type": "http.response.start", "status": response.status_code, "headers": raw_headers})
        await send({"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True})
        await self._reset_connection(receive)

    async def _mastodon_create_slowly(
        self, index: int, query: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        """Older Mastodon (and other Mastodon-API servers): the Idempotency-Key is looked up when the request
        arrives but stored only once the status is made, `mastodon_key_after_create_s` later. A request with the
        same key arriving meanwhile makes a second status. The work goes on if the client leaves."""
        assert self.mastodon_key_after_create_s is not None
        with self._lock:
            key = headers.get("idempotency-key") or None
            known = self._known_idempotency(key) if key is not None else None
            if known is not None:
                return _json(200, self._mastodon_status_json(known), {})
        self._finish(index, None, "slow_create")  # visible as in progress
        await asyncio.sleep(self.mastodon_key_after_create_s)
        return self._handle("mastodon", "POST", "/api/v1/statuses", query, headers, body, key_checked=True)[0]

    def _known_idempotency(self, key: str) -> MastodonStatus | None:
        cached = self._idempotency.get(key)
        if cached is not None and (self.now() - cached[1]).total_seconds() < MASTODON_IDEMPOTENCY_TTL_S:
            return self._mastodon_by_id.get(cached[0])
        return None

    def _stopping(self) -> bool:
        server = self._server
        return server is not None and server.stopping is not None and server.stopping.is_set()

    def _note_left(self, index: int) -> None:
        with self._changed:
            self._log[index] = replace(self._log[index], client_left=time.monotonic())
            self._changed.notify_all()

    async def _drip(
        self, index: int, receive: Receive, send: Send, status: int, response: Response, drip: _Drip
    ) -> None:
        """Send `response` as `status`: headers now, then whitespace and the body a chunk per interval, until done,
        the client leaves, or the server stops (then the rest goes at once, so the answer is still complete)."""
        server = self._server
        assert server is not None
        assert server.stopping is not None
        padding = b" " * (drip.chunk_bytes * max(1, int(drip.seconds / drip.interval_s + 0.999)))
        data = padding + bytes(response.body)
        raw_headers = [(name, value) for name, value in response.raw_headers if name.lower() != b"content-length"]
        raw_headers.append((b"content-length", str(len(data)).encode()))
        gone = asyncio.ensure_future(self._disconnected(receive))
        stopping = asyncio.ensure_future(server.stopping.wait())
        try:
            await send({"type": "http.response.start", "status": status, "headers": raw_headers})
            sent = 0
            while sent < len(data):
                if stopping.done():
                    await send({"type": "http.response.body", "body": data[sent:], "more_body": False})
                    return
                chunk = data[sent : sent + drip.chunk_bytes]
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": sent < len(data)})
                if sent == len(data):
                    return
                pause = asyncio.ensure_future(asyncio.sleep(drip.interval_s))
                await asyncio.wait({pause, gone, stopping}, return_when=asyncio.FIRST_COMPLETED)
                pause.cancel()
                await asyncio.gather(pause, return_exceptions=True)
                if gone.done() and not stopping.done():
                    self._note_left(index)
                    return
        finally:
            for task in (gone, stopping):
                task.cancel()
            await asyncio.gather(gone, stopping, return_exceptions=True)

    def _finish(self, index: int, status: int | None, fault: str | None) -> None:
        with self._changed:
            self._log[index] = replace(self._log[index], status=status, fault=fault)
            self._changed.notify_all()

    async def _hold(self, receive: Receive, seconds: float) -> bool:
        """Wait `seconds`; False if the client disconnected or the server began stopping first."""
        server = self._server
        assert server is not None
        assert server.stopping is not None
        waiters = {
            asyncio.ensure_future(asyncio.sleep(seconds)): "slept",
            asyncio.ensure_future(self._disconnected(receive)): "gone",
            asyncio.ensure_future(server.stopping.wait()): "stopping",
        }
        done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return {waiters[task] for task in done} == {"slept"}

    @staticmethod
    async def _disconnected(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _reset_connection(self, receive: Receive) -> None:
        # ASGI has no "drop the connection"; uvicorn's h11 cycle (the bound `receive`) holds the transport.
        transport = getattr(getattr(receive, "__self__", None), "transport", None)
        if not isinstance(transport, asyncio.Transport):
            raise RuntimeError("cannot reach the connection's transport: uvicorn internals changed")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        transport.abort()
        # Let uvicorn notice the loss, so it does not try to answer 500 after we return.
        await asyncio.wait_for(self._disconnected(receive), timeout=5)

    def _error_response(
        self, platform: Platform, status: int, headers: Mapping[str, str], body: bytes | None, path: str
    ) -> Response:
        if body is not None:
            content_type = "application/json; charset=utf-8" if body[:1] in (b"{", b"[") else "text/plain"
            return Response(body, status_code=status, headers=dict(headers), media_type=content_type)
        if platform == "webhook" or status < 400:
            return Response(b"", status_code=status, headers=dict(headers))
        if platform == "mastodon":
            return _json(status, {"error": _phrase(status)}, headers)
        if platform == "bluesky":
            return _json(
                status, {"error": _XRPC_ERROR_NAMES.get(status, "Unknown"), "message": _phrase(status)}, headers
            )
        code, message = {
            403: (10023, "User requests out of rate limit!"),
            429: (10023, "User requests out of rate limit!"),
            503: (10002, "Service unavailable"),
        }.get(status, (10001, "System error"))
        return _json(status, {"error": message, "error_code": code, "request": path}, headers)

    # -- dispatch ----------------------------------------------------------------------------------------------

    def _handle(
        self, platform: Platform, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes,
        *, key_checked: bool = False,
    ) -> tuple[Response, bool]:
        """Answer one request under the lock; also say whether the platform's rate limit refused it."""
        with self._lock:
            window = self._limits[platform]
            rate: _RateInfo | None = None
            if window is not None:
                allowed, remaining, reset = window.hit(self.now().timestamp())
                rate = _RateInfo(window.limit, remaining, reset, window.period_s)
                if not allowed:
                    return self._rate_limited(platform, rate, path), True
            try:
                if platform == "mastodon":
                    return self._mastodon(method, path, query, headers, body, rate, key_checked=key_checked), False
                if platform == "bluesky":
                    return self._bluesky(method, path, query, headers, body, rate), False
                if platform == "weibo":
                    return self._weibo_share(method, path, query, headers, body), False
                return self._webhook(method, path, headers, body), False
            except _Rejected as rejected:
                return rejected.response, False

    def _rate_limited(self, platform: Platform, rate: _RateInfo, path: str) -> Response:
        if platform == "mastodon":
            return _json(429, {"error": "Too many requests"}, self._mastodon_rate_headers(rate))
        if platform == "bluesky":
            return _json(429, {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}, _bluesky_headers(rate))
        if platform == "weibo":
            return _json(403, {"error": "User requests out of rate limit!", "error_code": 10023, "request": path})
        retry_after = max(1, int(rate.reset - self.now().timestamp() + 0.999))
        return Response(b"", status_code=429, headers={"Retry-After": str(retry_after)})

    # -- Mastodon ----------------------------------------------------------------------------------------------

    @staticmethod
    def _mastodon_rate_headers(rate: _RateInfo | None) -> dict[str, str]:
        if rate is None:
            return {}
        return {
            "X-RateLimit-Limit": str(rate.limit),
            "X-RateLimit-Remaining": str(rate.remaining),
            "X-RateLimit-Reset": _iso_us(datetime.fromtimestamp(rate.reset, UTC)),
        }

    def _mastodon(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes, rate: _RateInfo | None,
        *, key_checked: bool = False,
    ) -> Response:
        extra = self._mastodon_rate_headers(rate)
        if method == "GET" and path == "/api/v2/instance":
            return _json(200, self._mastodon_instance(), extra)
        if method == "POST" and path == "/api/v1/statuses":
            return self._mastodon_create(query, headers, body, extra, key_checked=key_checked)
        if method == "DELETE" and path.startswith("/api/v1/statuses/"):
            # Mastodon answers with the deleted status (source text included, for "delete and redraft").
            self._mastodon_authorize(headers, extra)
            gone = self._mastodon_by_id.pop(path.removeprefix("/api/v1/statuses/"), None)
            if gone is None:
                return _json(404, {"error": "Record not found"}, extra)
            self._mastodon_deleted.append(gone)
            return _json(200, {**self._mastodon_status_json(gone), "text": gone.text}, extra)
        if method == "GET" and path.startswith("/api/v1/statuses/"):
            status = self._mastodon_by_id.get(path.removeprefix("/api/v1/statuses/"))
            if status is None:
                return _json(404, {"error": "Record not found"}, extra)
            return _json(200, self._mastodon_status_json(status), extra)
        if method == "GET" and path == "/api/v1/accounts/verify_credentials":
            self._mastodon_authorize(headers, extra)
            # doorkeeper_authorize! :read, :'read:accounts', :profile (accounts/credentials_controller.rb)
            if not {"read", "read:accounts", "profile"} & set(self.mastodon_token_scopes):
                return _json(403, {"error": "This action is outside the authorized scopes"}, extra)
            return _json(200, self._mastodon_account(), extra)
        return _json(404, {"error": "Not Found"}, extra)

    def _mastodon_authorize(self, headers: Mapping[str, str], extra: Mapping[str, str]) -> None:
        if headers.get("authorization", "") != f"Bearer {self.mastodon_token}":
            description = "The access token is invalid"
            challenge = f'Bearer realm="Doorkeeper", error="invalid_token", error_description="{description}"'
            raise _Rejected(_json(401, {"error": description}, {**extra, "WWW-Authenticate": challenge}))

    def _mastodon_instance(self) -> dict[str, Any]:
        return {
            "domain": f"{self.host}:{self.port}",
            "title": "Broadcaster test instance",
            "version": "4.3.0",
            "source_url": "https://github.com/mastodon/mastodon",
            "description": "A loopback Mastodon for tests.",
            "languages": ["en", "zh"],
            "registrations": {"enabled": False, "approval_required": False, "message": None},
            "contact": {"email": "", "account": None},
            "rules": [],
            "configuration": {
                "urls": {"streaming": f"ws://{self.host}:{self.port}"},
                "accounts": {"max_featured_tags": 10, "max_pinned_statuses": 5},
                "statuses": {
                    "max_characters": self.mastodon_max_characters,
                    "max_media_attachments": 4,
                    "characters_reserved_per_url": 23,
                },
                "media_attachments": {
                    "supported_mime_types": ["image/jpeg", "image/png"],
                    "image_size_limit": 16_777_216,
                    "image_matrix_limit": 33_177_600,
                },
                "polls": {"max_options": 4, "max_characters_per_option": 50},
                "translation": {"enabled": False},
            },
        }

    def _mastodon_account(self) -> dict[str, Any]:
        return {
            "id": "1",
            "username": "broadcaster",
            "acct": "broadcaster",
            "display_name": "Metro broadcaster",
            "url": f"{self.url}/@broadcaster",
            "bot": True,
        }

    def _mastodon_create(
        self, query: str, headers: Mapping[str, str], body: bytes, extra: Mapping[str, str], *,
        key_checked: bool = False,
    ) -> Response:
        self._mastodon_authorize(headers, extra)
        params = _mastodon_params(query, headers, body, extra)
        now = self.now()
        reply_to = str(params.get("in_reply_to_id") or "") or None
        if reply_to is not None and reply_to not in self._mastodon_by_id:
            error = "The post you are trying to reply to does not appear to exist."
            return _json(404, {"error": error}, extra)
        key = headers.get("idempotency-key") or None
        if key is not None and not key_checked:  # (a slow create looked it up when the request arrived)
            cached = self._idempotency.get(key)
            if cached is not None and (now - cached[1]).total_seconds() < MASTODON_IDEMPOTENCY_TTL_S:
                return _json(200, self._mastodon_status_json(self._mastodon_by_id[cached[0]]), extra)
        text = str(params.get("status") or "")
        spoiler_text = str(params.get("spoiler_text") or "")
        media = params.get("media_ids") or []
        media_ids = tuple(str(item) for item in (media if isinstance(media, list) else [media]))
        visibility = str(params.get("visibility") or "public")
        if visibility not in ("public", "unlisted", "private", "direct"):
            return _json(422, {"error": "Validation failed: Visibility is not included in the list"}, extra)
        if not text.strip() and not media_ids:
            return _json(422, {"error": "Validation failed: Text can't be blank"}, extra)
        if mastodon_length(text, spoiler_text) > self.mastodon_max_characters:
            message = f"Validation failed: Text character limit of {self.mastodon_max_characters} exceeded"
            return _json(422, {"error": message}, extra)
        language = str(params.get("language") or "") or None
        if language is not None and not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z]{2,4})?", language):
            language = None
        status_id = self._next_mastodon_id(now)
        status = MastodonStatus(
            id=status_id,
            text=text,
            spoiler_text=spoiler_text,
            in_reply_to_id=reply_to,
            visibility=visibility,
            language=language,
            sensitive=_rails_boolean(params.get("sensitive")) or bool(spoiler_text),
            idempotency_key=key,
            media_ids=media_ids,
            created_at=now,
            uri=f"{self.url}/users/broadcaster/statuses/{status_id}",
            url=f"{self.url}/@broadcaster/{status_id}",
        )
        self._mastodon_by_id[status_id] = status
        if key is not None:
            self._idempotency[key] = (status_id, now)
        return _json(200, self._mastodon_status_json(status), extra)

    def _next_mastodon_id(self, now: datetime) -> str:
        # Mastodon ids are snowflakes: milliseconds since the epoch shifted left 16 bits, plus a sequence.
        candidate = int(now.timestamp() * 1000) << 16
        self._mastodon_last_id = max(candidate, self._mastodon_last_id + 1)
        return str(self._mastodon_last_id)

    def _mastodon_status_json(self, status: MastodonStatus) -> dict[str, Any]:
        reply = self._mastodon_by_id.get(status.in_reply_to_id or "")
        return {
            "id": status.id,
            "created_at": _iso_ms(status.created_at),
            "in_reply_to_id": status.in_reply_to_id,
            "in_reply_to_account_id": "1" if reply is not None else None,
            "sensitive": status.sensitive,
            "spoiler_text": status.spoiler_text,
            "visibility": status.visibility,
            "language": status.language,
            "uri": status.uri,
            "url": status.url,
            "replies_count": sum(1 for s in self._mastodon_by_id.values() if s.in_reply_to_id == status.id),
            "reblogs_count": 0,
            "favourites_count": 0,
            "edited_at": None,
            "content": _mastodon_html(status.text),
            "reblog": None,
            "application": {"name": "broadcaster", "website": None},
            "account": self._mastodon_account(),
            "media_attachments": [],
            "mentions": [],
            "tags": [],
            "emojis": [],
            "card": None,
            "poll": None,
        }

    # -- Bluesky -----------------------------------------------------------------------------------------------

    def _bluesky(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes, rate: _RateInfo | None
    ) -> Response:
        nsid = path.removeprefix("/xrpc/")
        extra = _bluesky_headers(rate)
        handlers: dict[tuple[str, str], Callable[[], Response]] = {
            ("POST", "com.atproto.server.createSession"): lambda: self._bluesky_create_session(headers, body),
            ("POST", "com.atproto.server.refreshSession"): lambda: self._bluesky_refresh(headers, extra),
            ("GET", "com.atproto.server.getSession"): lambda: self._bluesky_get_session(headers, extra),
            ("POST", "com.atproto.repo.createRecord"): lambda: self._bluesky_create_record(headers, body, extra),
            ("GET", "com.atproto.repo.getRecord"): lambda: self._bluesky_get_record(query, extra),
            ("POST", "com.atproto.repo.deleteRecord"): lambda: self._bluesky_delete_record(headers, body, extra),
        }
        handler = handlers.get((method, nsid))
        if handler is None:
            if any(known == nsid for _, known in handlers):
                return _json(405, {"error": "InvalidRequest", "message": "Incorrect HTTP method"}, extra)
            return _json(501, {"error": "MethodNotImplemented", "message": "Method Not Implemented"}, extra)
        return handler()

    def _bluesky_delete_record(self, headers: Mapping[str, str], body: bytes, extra: Mapping[str, str]) -> Response:
        """Like a PDS: deleting a record that is not there succeeds too (deletes are idempotent)."""
        self._bluesky_token(headers, "access", extra)
        data = _xrpc_input(headers, body, ("repo", "collection", "rkey"), extra)
        key = (str(data["collection"]), str(data["rkey"]))
        if self._bluesky_records.pop(key, None) is not None:
            uri = f"at://{self.bluesky_did}/{key[0]}/{key[1]}"
            self._bluesky_deleted += [p for p in self._bluesky_posts if p.uri == uri]
            self._bluesky_posts = [p for p in self._bluesky_posts if p.uri != uri]
        return _json(200, {}, extra)

    def _issue_jwt(self, kind: Literal["access", "refresh"], now: datetime) -> str:
        lifetime = self.bluesky_access_token_ttl_s if kind == "access" else 90 * 86400
        expires = now + timedelta(seconds=lifetime)
        header = {"typ": "at+jwt" if kind == "access" else "refresh+jwt", "alg": "HS256"}
        payload: dict[str, Any] = {
            "scope": f"com.atproto.{kind}",
            "sub": self.bluesky_did,
            "aud": f"did:web:{self.host}",
            "iat": int(now.timestamp()),
            "exp": int(expires.timestamp()),
        }
        if kind == "refresh":
            payload["jti"] = secrets.token_urlsafe(24)
        else:
            payload["jti"] = secrets.token_urlsafe(8)  # two tokens issued in the same second must still differ
        signing_input = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(payload).encode())
        signature = hmac.new(self._bluesky_secret, signing_input.encode(), hashlib.sha256).digest()
        token = signing_input + "." + _b64url(signature)
        self._bluesky_tokens[token] = _BlueskyToken(kind, expires)
        return token

    def _bluesky_token(
        self, headers: Mapping[str, str], kind: Literal["access", "refresh"], extra: Mapping[str, str]
    ) -> _BlueskyToken:
        authorization = headers.get("authorization", "")
        if not authorization.startswith("Bearer "):
            raise _xrpc_error(401, "AuthMissing", "Authentication Required", extra)
        token = self._bluesky_tokens.get(authorization.removeprefix("Bearer ").strip())
        if token is None:
            raise _xrpc_error(400, "InvalidToken", "Token could not be verified", extra)
        if token.kind != kind:
            raise _xrpc_error(401, "InvalidToken", "Bad token scope", extra)
        if token.revoked:
            raise _xrpc_error(400, "ExpiredToken", "Token has been revoked", extra)
        token.uses += 1
        uses = self.bluesky_access_token_uses
        worn_out = kind == "access" and uses is not None and token.uses > uses
        if token.expired or worn_out or self.now() >= token.expires_at:
            raise _xrpc_error(400, "ExpiredToken", "Token has expired", extra)
        return token

    def _session_body(self, access: str, refresh: str) -> dict[str, Any]:
        return {
            "did": self.bluesky_did,
            "handle": self.bluesky_handle,
            "email": "broadcaster@example.test",
            "emailConfirmed": True,
            "active": True,
            "accessJwt": access,
            "refreshJwt": refresh,
        }

    def _bluesky_create_session(self, headers: Mapping[str, str], body: bytes) -> Response:
        data = _xrpc_input(headers, body, ("identifier", "password"), {})
        identifier = str(data["identifier"]).lower()
        limit, window_s, daily = self._bluesky_login_limit
        windows = self._login_windows.setdefault(
            identifier, (_Window(limit, window_s, aligned=False), _Window(daily, 86400, aligned=False))
        )
        now = self.now().timestamp()
        results = [(window, *window.hit(now)) for window in windows]
        refused = [result for result in results if not result[1]]
        # Like the xrpc-server: report the limit that refused, else the one closest to running out.
        window, allowed, remaining, reset = refused[0] if refused else min(results, key=lambda result: result[2])
        extra = _bluesky_headers(_RateInfo(window.limit, remaining, reset, window.period_s))
        if not allowed:
            raise _xrpc_error(429, "RateLimitExceeded", "Rate Limit Exceeded", extra)
        known = {self.bluesky_handle.lower(), self.bluesky_did.lower(), "broadcaster@example.test"}
        if identifier not in known or data["password"] != self.bluesky_password:
            raise _xrpc_error(401, "AuthenticationRequired", "Invalid identifier or password", extra)
        self._bluesky_logins += 1
        clock = self.now()
        return _json(
            200, self._session_body(self._issue_jwt("access", clock), self._issue_jwt("refresh", clock)), extra
        )

    def _bluesky_refresh(self, headers: Mapping[str, str], extra: Mapping[str, str]) -> Response:
        token = self._bluesky_token(headers, "refresh", extra)
        token.revoked = True
        clock = self.now()
        return _json(
            200, self._session_body(self._issue_jwt("access", clock), self._issue_jwt("refresh", clock)), extra
        )

    def _bluesky_get_session(self, headers: Mapping[str, str], extra: Mapping[str, str]) -> Response:
        self._bluesky_token(headers, "access", extra)
        body = {"did": self.bluesky_did, "handle": self.bluesky_handle, "active": True, "emailConfirmed": True}
        return _json(200, body, extra)

    def _bluesky_create_record(self, headers: Mapping[str, str], body: bytes, extra: Mapping[str, str]) -> Response:
        self._bluesky_token(headers, "access", extra)
        data = _xrpc_input(headers, body, ("repo", "collection", "record"), extra)
        repo, collection = str(data["repo"]), str(data["collection"])
        if repo.lower() not in (self.bluesky_did.lower(), self.bluesky_handle.lower()):
            raise _xrpc_error(400, "InvalidRequest", f"Could not find repo: {repo}", extra)
        record = data["record"]
        if not isinstance(record, dict):
            raise _xrpc_error(400, "InvalidRequest", "Input/record must be an object", extra)
        record = dict(record)
        record.setdefault("$type", collection)
        if data.get("validate") is not False and record["$type"] != collection:
            message = f"Invalid $type: expected {collection}, got {record['$type']}"
            raise _xrpc_error(400, "InvalidRequest", message, extra)
        if collection == BLUESKY_POST and data.get("validate") is not False:
            self._validate_post(record, extra)
        rkey = data.get("rkey")
        now = self.now()
        if rkey is None or rkey == "":
            rkey = self._next_tid(now)
        rkey = str(rkey)
        if (problem := _record_key_error(rkey)) is not None:
            raise _xrpc_error(400, "InvalidRequest", problem, extra)
        if collection == BLUESKY_POST and not is_valid_tid(rkey):
            message = f"Invalid record key for {collection}: must be a valid TID (13 base32-sortable characters)"
            raise _xrpc_error(400, "InvalidRequest", message, extra)
        if (collection, rkey) in self._bluesky_records:
            # The PDS only learns about the clash inside the repo write, which throws a plain error.
            raise _xrpc_error(500, "InternalServerError", "Internal Server Error", extra)
        cid = _cid_for(record)
        uri = f"at://{self.bluesky_did}/{collection}/{rkey}"
        self._bluesky_records[(collection, rkey)] = (cid, record, now)
        if collection == BLUESKY_POST:
            self._bluesky_posts.append(_bluesky_post(uri, cid, rkey, record, now))
        commit = {"cid": _cid_for({"commit": uri, "at": now.isoformat()}), "rev": self._next_tid(now)}
        return _json(200, {"uri": uri, "cid": cid, "commit": commit, "validationStatus": "valid"}, extra)

    def _next_tid(self, now: datetime) -> str:
        micros = max(int(now.timestamp() * 1_000_000), self._bluesky_last_tid_us + 1)
        self._bluesky_last_tid_us = micros
        return make_tid(micros)

    def _validate_post(self, record: Mapping[str, Any], extra: Mapping[str, str]) -> None:
        def invalid(detail: str) -> _Rejected:
            return _xrpc_error(400, "InvalidRequest", f"Invalid {BLUESKY_POST} record: {detail}", extra)

        for required in ("text", "createdAt"):
            if required not in record:
                raise invalid(f'Record must have the property "{required}"')
        text = record["text"]
        if not isinstance(text, str):
            raise invalid("Record/text must be a string")
        encoded = text.encode()
        if len(encoded) > 3000:
            raise invalid("Record/text must not be longer than 3000 characters")
        if grapheme_count(text) > 300:
            raise invalid("Record/text must not be longer than 300 graphemes")
        created_at = record["createdAt"]
        if not isinstance(created_at, str) or not _DATETIME_RE.fullmatch(created_at):
            raise invalid("createdAt must be an valid atproto datetime (both RFC-3339 and ISO-8601)")
        langs = record.get("langs", [])
        if not isinstance(langs, list):
            raise invalid("Record/langs must be an array")
        if len(langs) > 3:
            raise invalid("Record/langs must not have more than 3 elements")
        for position, lang in enumerate(langs):
            if not isinstance(lang, str) or not _LANGUAGE_RE.fullmatch(lang):
                raise invalid(f"Record/langs/{position} must be a well-formed BCP 47 language tag")
        facets = record.get("facets", [])
        if not isinstance(facets, list):
            raise invalid("Record/facets must be an array")
        for position, facet in enumerate(facets):
            self._validate_facet(facet, f"Record/facets/{position}", encoded, invalid)
        reply = record.get("reply")
        if reply is not None:
            if not isinstance(reply, dict):
                raise invalid("Record/reply must be an object")
            for part in ("root", "parent"):
                self._validate_reply_ref(reply.get(part), f"Record/reply/{part}", invalid)

    def _validate_facet(self, facet: object, where: str, text: bytes, invalid: Callable[[str], _Rejected]) -> None:
        if not isinstance(facet, dict):
            raise invalid(f"{where} must be an object")
        index, features = facet.get("index"), facet.get("features")
        if not isinstance(index, dict):
            raise invalid(f'{where} must have the property "index"')
        if not isinstance(features, list):
            raise invalid(f'{where} must have the property "features"')
        bounds: list[int] = []
        for name in ("byteStart", "byteEnd"):
            value = index.get(name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise invalid(f'{where}/index must have the property "{name}"')
            if value < 0:
                raise invalid(f"{where}/index/{name} can not be less than 0")
            bounds.append(value)
        start, end = bounds
        if self.bluesky_strict:
            if not start < end <= len(text):
                raise invalid(f"{where}/index: byte range {start}..{end} is outside the {len(text)}-byte text")
            if any(0x80 <= text[at] < 0xC0 for at in (start, end) if at < len(text)):
                raise invalid(f"{where}/index: byte range {start}..{end} cuts a UTF-8 character")
        required = {"app.bsky.richtext.facet#link": "uri", "app.bsky.richtext.facet#mention": "did"}
        required["app.bsky.richtext.facet#tag"] = "tag"
        for number, feature in enumerate(features):
            kind = feature.get("$type") if isinstance(feature, dict) else None
            needed = required.get(str(kind))
            if isinstance(feature, dict) and needed is not None and not isinstance(feature.get(needed), str):
                raise invalid(f'{where}/features/{number} must have the property "{needed}"')
            if isinstance(feature, dict) and kind == "app.bsky.richtext.facet#tag":
                self._validate_tag(str(feature["tag"]), text[start:end], f"{where}/features/{number}", invalid)
            elif self.bluesky_strict and needed is None:
                raise invalid(f"{where}/features/{number}/$type is not one of {', '.join(sorted(required))}")

    def _validate_tag(self, tag: str, covered: bytes, where: str, invalid: Callable[[str], _Rejected]) -> None:
        """The lexicon's limits on a tag (`app.bsky.richtext.facet#tag`: maxGraphemes 64, maxLength 640 bytes) and,
        strictly, that the facet covers the '#' and the tag itself (the app view would link what the bytes say)."""
        if len(tag.encode()) > 640:
            raise invalid(f"{where}/tag must not be longer than 640 characters")
        if grapheme_count(tag) > 64:
            raise invalid(f"{where}/tag must not be longer than 64 graphemes")
        if self.bluesky_strict and covered not in (f"#{tag}".encode(), f"＃{tag}".encode()):
            raise invalid(f"{where}: the facet covers {covered.decode(errors='replace')!r}, not the hashtag #{tag}")

    def _validate_reply_ref(self, ref: object, where: str, invalid: Callable[[str], _Rejected]) -> None:
        if not isinstance(ref, dict):
            raise invalid(f'Record/reply must have the property "{where.rsplit("/", 1)[1]}"')
        uri, cid = ref.get("uri"), ref.get("cid")
        if not isinstance(uri, str) or not uri.startswith("at://"):
            raise invalid(f"{where}/uri must be a valid at-uri")
        if not isinstance(cid, str) or not cid.startswith("b"):
            raise invalid(f"{where}/cid must be a cid string")
        if not self.bluesky_strict:
            return
        match = _AT_URI_RE.fullmatch(uri)
        stored = None
        if match is not None and match.group(1).lower() in (self.bluesky_did.lower(), self.bluesky_handle.lower()):
            stored = self._bluesky_records.get((match.group(2), match.group(3)))
        if stored is None:
            raise invalid(f"{where} refers to a record that does not exist: {uri}")
        if stored[0] != cid:
            raise invalid(f"{where}/cid {cid} is not the current cid of {uri}")

    def _bluesky_get_record(self, query: str, extra: Mapping[str, str]) -> Response:
        params = dict(urllib.parse.parse_qsl(query))
        for required in ("repo", "collection", "rkey"):
            if required not in params:
                raise _xrpc_error(400, "InvalidRequest", f'Params must have the property "{required}"', extra)
        repo, collection, rkey = params["repo"], params["collection"], params["rkey"]
        uri = f"at://{self.bluesky_did}/{collection}/{rkey}"
        stored = None
        if repo.lower() in (self.bluesky_did.lower(), self.bluesky_handle.lower()):
            stored = self._bluesky_records.get((collection, rkey))
        if stored is None or ("cid" in params and params["cid"] != stored[0]):
            raise _xrpc_error(400, "RecordNotFound", f"Could not locate record: {uri}", extra)
        return _json(200, {"uri": uri, "cid": stored[0], "value": stored[1]}, extra)

    # -- Weibo -------------------------------------------------------------------------------------------------

    def _weibo_share(self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes) -> Response:
        def error(status: int, code: int, message: str) -> Response:
            return _json(status, {"error": message, "error_code": code, "request": path})

        if path == WEIBO_GET_UID_PATH:
            return self._weibo_get_uid(method, query, headers, error)
        if path != WEIBO_SHARE_PATH:
            return error(400, 10020, "Request api not found!")
        if method != "POST":
            return error(400, 10021, "HTTP method is not suported for this request!")
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        params.update(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        token = params.get("access_token") or headers.get("authorization", "").removeprefix("OAuth2 ").strip()
        if not token:
            return error(403, 21301, "auth by Null spi!")
        if token != self.weibo_access_token:
            return error(403, 21332, "invalid_access_token")
        if self._weibo_expired:
            return error(403, 21327, "expired_token")
        text = params.get("status", "")
        if not text.strip():
            return error(400, 10016, "Miss required parameter (status) , see doc for more info!")
        if weibo_length(text, url_units=self.weibo_url_units) > self.weibo_max_units:
            return error(400, 20012, f"Text too long, please input text less than {self.weibo_max_units} characters!")
        if self.weibo_safe_domain is not None:
            hosts = {urllib.parse.urlsplit(text[start:end]).hostname or "" for start, end in _urls(text)}
            domain = self.weibo_safe_domain.lower()
            if not any(host == domain or host.endswith("." + domain) for host in hosts):
                return error(400, 10017, "text not find domain!")
        if self._weibo and self._weibo[-1].text == text:
            return error(400, 20019, "repeat content!")
        now = self.now()
        status_id = 4_900_000_000_000_000 + len(self._weibo) + 1
        status = WeiboStatus(status_id, str(status_id), text, params.get("rip"), now)
        self._weibo.append(status)
        return _json(
            200,
            {
                "created_at": _weibo_time(now),
                "id": status.id,
                "mid": status.idstr,
                "idstr": status.idstr,
                "text": text,
                "source": '<a href="https://weibo.com" rel="nofollow">broadcaster</a>',
                "favorited": False,
                "truncated": False,
                "in_reply_to_status_id": "",
                "in_reply_to_user_id": "",
                "in_reply_to_screen_name": "",
                "geo": None,
                "reposts_count": 0,
                "comments_count": 0,
                "attitudes_count": 0,
                "user": {"id": WEIBO_UID, "idstr": str(WEIBO_UID), "screen_name": "broadcaster"},
            },
        )

    def _weibo_get_uid(
        self, method: str, query: str, headers: Mapping[str, str], error: Callable[[int, int, str], Response]
    ) -> Response:
        """``GET /2/account/get_uid.json``: the token's user id, read-only; the share API's token errors."""
        if method != "GET":
            return error(400, 10021, "HTTP method is not suported for this request!")
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        token = params.get("access_token") or headers.get("authorization", "").removeprefix("OAuth2 ").strip()
        if not token:
            return error(403, 21301, "auth by Null spi!")
        if token != self.weibo_access_token:
            return error(403, 21332, "invalid_access_token")
        if self._weibo_expired:
            return error(403, 21327, "expired_token")
        return _json(200, {"uid": WEIBO_UID})

    # -- webhooks ----------------------------------------------------------------------------------------------

    def _webhook(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        name = urllib.parse.unquote(path.removeprefix("/hooks/"))
        if not name or "/" in name:
            return Response(b"", status_code=404)
        if method != "POST":
            return Response(b"", status_code=405, headers={"Allow": "POST"})
        signature = headers.get(self.webhook_signature_header.lower())
        valid: bool | None = None
        if self.webhook_secret is not None and signature is not None:
            expected = sign_webhook(self.webhook_secret, body, headers.get(self.webhook_timestamp_header.lower()))
            valid = hmac.compare_digest(signature.strip(), expected)
        delivery = WebhookDelivery(name, body, dict(headers), valid, self.now())
        if headers.get(WEBHOOK_DRY_RUN_HEADER.lower()) == "1":
            # A receiver that supports dry runs checks the signature and acts on nothing.
            if self.webhook_secret is not None and not valid:
                return Response(b"", status_code=401)
            self._webhook_dry_runs.setdefault(name, []).append(delivery)
            return Response(b"", status_code=204)
        self._webhooks.setdefault(name, []).append(delivery)
        return Response(b"", status_code=204)


def _bluesky_headers(rate: _RateInfo | None) -> dict[str, str]:
    if rate is None:
        return {}
    return {
        "ratelimit-limit": str(rate.limit),
        "ratelimit-remaining": str(rate.remaining),
        "ratelimit-reset": str(int(rate.reset)),
        "ratelimit-policy": f"{rate.limit};w={int(rate.window_s)}",
    }


def _xrpc_input(
    headers: Mapping[str, str], body: bytes, required: tuple[str, ...], extra: Mapping[str, str]
) -> dict[str, Any]:
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise _xrpc_error(400, "InvalidRequest", f"Wrong request encoding (Content-Type): {content_type}", extra)
    try:
        data = json.loads(body)
    except ValueError:
        raise _xrpc_error(400, "InvalidRequest", "Request body is not valid JSON", extra) from None
    if not isinstance(data, dict):
        raise _xrpc_error(400, "InvalidRequest", "Input must be an object", extra)
    for name in required:
        if name not in data:
            raise _xrpc_error(400, "InvalidRequest", f'Input must have the property "{name}"', extra)
    return data


def _mastodon_params(query: str, headers: Mapping[str, str], body: bytes, extra: Mapping[str, str]) -> dict[str, Any]:
    """Rails-style params: the query string, then a url-encoded or JSON body (``key[]`` collects a list)."""
    params: dict[str, Any] = {}

    def add(pairs: list[tuple[str, str]]) -> None:
        for key, value in pairs:
            if key.endswith("[]"):
                params.setdefault(key[:-2], []).append(value)
            else:
                params[key] = value

    add(urllib.parse.parse_qsl(query, keep_blank_values=True))
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if not body:
        return params
    if content_type == "application/json":
        try:
            data = json.loads(body)
        except ValueError:
            raise _Rejected(_json(400, {"error": "Error occurred while parsing request parameters"}, extra)) from None
        if isinstance(data, dict):
            params.update(data)
    elif content_type == "application/x-www-form-urlencoded":
        add(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    else:
        raise _Rejected(_json(415, {"error": f"the test server does not parse {content_type or 'this body'}"}, extra))
    return params


def _bluesky_post(uri: str, cid: str, rkey: str, record: Mapping[str, Any], now: datetime) -> BlueskyPost:
    reply = record.get("reply") if isinstance(record.get("reply"), dict) else None

    def ref(part: str) -> StrongRef | None:
        value = reply.get(part) if reply is not None else None
        if not isinstance(value, dict):
            return None
        return StrongRef(str(value.get("uri")), str(value.get("cid")))

    langs = record.get("langs") or []
    facets = record.get("facets") or []
    return BlueskyPost(
        uri=uri,
        cid=cid,
        rkey=rkey,
        text=str(record.get("text", "")),
        created_at=str(record.get("createdAt", "")),
        langs=tuple(str(lang) for lang in langs),
        facets=tuple(dict(facet) for facet in facets if isinstance(facet, dict)),
        reply_root=ref("root"),
        reply_parent=ref("parent"),
        record=record,
        indexed_at=now,
    )
