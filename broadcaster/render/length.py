"""Post length as each micro-blog measures it: one profile per platform that counts a text and says if it fits.

Every platform counts in its own unit, and a post one unit over the limit is rejected, so each profile follows
the platform's own code or specification rather than `len()`:

- Mastodon (`app/validators/status_length_validator.rb`): extended grapheme clusters (Ruby
  `each_grapheme_cluster.size`, formerly ActiveSupport `mb_chars.grapheme_length`; not code points) of
  ``spoiler_text + text``, where every URL in the text is first replaced by 23 ``x`` and every mention
  ``@user@domain`` by ``@user``; a blank text counts nothing.
- Bluesky (lexicon ``app.bsky.feed.post``, ``text``: ``maxGraphemes`` 300 and ``maxLength`` 3000): both limits
  hold at once, graphemes and UTF-8 bytes; links are not shortened.
- X (twitter-text ``config/v3.json`` and ``parseTweet``): after NFC, each code point weighs 200 except those in
  0-4351, 8192-8205, 8208-8223 and 8242-8247, which weigh 100; an emoji sequence weighs 200 as a whole and a URL
  23 x 100; the length is the weight / 100.
- Weibo (no published rule; Sina's web counter as ported "bug for bug" by the WeCase client): a UTF-16 code unit
  up to U+0080 is half a character and every other unit a whole one, a link counts as a t.cn short link of
  10 characters, and the total is rounded up.

URLs are found by one shared, conservative pattern (`URL_PATTERN`, `find_urls`): http(s) only, ASCII only, with a
dotted host; it ends at white space, at any non-ASCII character (so at '，' '。' '）'), and leaves trailing
punctuation out the way twitter-text does. Nothing here does I/O.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Final, Protocol

import regex

__all__ = [
    "URL_PATTERN",
    "BlueskyProfile",
    "MastodonProfile",
    "PlatformProfile",
    "WeiboProfile",
    "XProfile",
    "bluesky",
    "find_urls",
    "grapheme_boundaries",
    "grapheme_count",
    "graphemes",
    "mastodon",
    "weibo",
    "x_weighted",
]


class PlatformProfile(Protocol):
    """What a fitter needs from a platform: its limit and a count in the platform's own unit."""

    @property
    def name(self) -> str: ...

    @property
    def limit(self) -> int: ...

    def count(self, text: str) -> int:
        """The length of `text` in the platform's unit (characters, graphemes, weighted characters)."""
        ...

    def fits(self, text: str) -> bool:
        """Whether the platform accepts `text` as one post (every limit it has, not only `limit`)."""
        ...


# --- graphemes ---------------------------------------------------------------------------------------------------

# `regex` implements Unicode extended grapheme clusters (UAX #29, with emoji ZWJ sequences, flags and Indic
# conjuncts) for a newer Unicode than the standard library's `unicodedata`, which has no segmentation at all.
_GRAPHEME: Final = regex.compile(r"\X")


def graphemes(text: str) -> list[str]:
    """The extended grapheme clusters of `text`, in order."""
    return _GRAPHEME.findall(text)


def grapheme_count(text: str) -> int:
    return sum(1 for _ in _GRAPHEME.finditer(text))


def grapheme_boundaries(text: str) -> list[int]:
    """Every offset (in code points) where a grapheme cluster starts, followed by ``len(text)``."""
    starts = [match.start() for match in _GRAPHEME.finditer(text)]
    starts.append(len(text))
    return starts


# --- URLs --------------------------------------------------------------------------------------------------------

# Path characters as twitter-text allows them (ASCII only), parentheses apart: those only come in pairs.
_URL_PATH: Final = r"[A-Za-z0-9\-._~:/?#\[\]@!$&'*+,;=%]"
_URL_PARENS: Final = rf"\({_URL_PATH}*\)"
# A URL ends only in one of these or in a balanced ')', as twitter-text's path-ending rule says, so that
# "见 https://example.com/a。" and "(https://example.com/a)." leave the full stop and parenthesis out.
_URL_END: Final = rf"(?:[A-Za-z0-9=_#/+\-]|{_URL_PARENS})"

URL_PATTERN: Final = re.compile(
    # twitter-text starts no URL right after a letter, digit, '@', '$' or '#' ("abchttps://..." is no link).
    r"(?<![A-Za-z0-9@＠$#＃])"
    r"https?://"
    r"(?:(?:[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?\.)+[A-Za-z][A-Za-z0-9-]*[A-Za-z0-9]"  # dotted name, TLD
    r"|(?:[0-9]{1,3}\.){3}[0-9]{1,3})"  # or IPv4
    r"(?::[0-9]{1,5})?"
    rf"(?:[/?#](?:{_URL_PATH}|{_URL_PARENS})*{_URL_END}|[/#])?",
    re.IGNORECASE,
)
"""The one URL pattern every profile and the fitter use: each match is exactly one http(s) URL.

Conservative on purpose: ASCII only (a URL ends at any non-ASCII character, so at CJK punctuation such as
'，' '。' '）'), a dotted host name or IPv4 address, no trailing punctuation. URLs without a scheme are not
matched (X would count a bare ``example.com`` as a 23-character link: templates should always write the scheme).
"""


def find_urls(text: str) -> list[tuple[int, int]]:
    """Spans ``(start, end)`` of the URLs `URL_PATTERN` finds in `text`, in order."""
    return [match.span() for match in URL_PATTERN.finditer(text)]


def _replace_spans(text: str, spans: list[tuple[int, int, str]]) -> str:
    pieces: list[str] = []
    position = 0
    for start, end, replacement in spans:
        pieces.append(text[position:start])
        pieces.append(replacement)
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ValueError(f"{key} must be positive, not {value!r}")


# --- Mastodon ----------------------------------------------------------------------------------------------------

# Mastodon's Account::MENTION_RE ([[:word:]] is Unicode letters, marks, digits and connectors, as `regex`'s \w).
_MASTODON_MENTION: Final = regex.compile(
    r"(?<![=/\w])@(([a-z0-9_]+(?:[a-z0-9_.-]+[a-z0-9_]+)?)(?:@[\w.-]+\w+)?)",
    regex.IGNORECASE,
)
# twitter-text's end_mention_match: a match followed by these is not a mention at all (Mastodon skips it).
_MASTODON_NOT_AFTER_MENTION: Final = regex.compile(r"[@＠]|[\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u024F\u1E00-\u1EFF]|://")


@dataclass(frozen=True)
class MastodonProfile:
    """Mastodon's status length: graphemes of the content warning plus the text, URLs 23, mentions local.

    `spoiler_text` is the content warning the posts will carry: it shares the limit with the text, so a profile
    made with ``dataclasses.replace(profile, spoiler_text=cw)`` fits texts that leave room for it.
    """

    limit: int = 500
    url_length: int = 23
    spoiler_text: str = ""
    name: str = "mastodon"

    def __post_init__(self) -> None:
        _check_positive(limit=self.limit, url_length=self.url_length)

    def countable_text(self, text: str) -> str:
        """The text as Mastodon measures it: URLs as ``url_length`` x's, ``@user@domain`` as ``@user``."""
        if not text.strip():  # Ruby's `blank?`: Mastodon counts a blank text as empty
            return ""
        entities: list[tuple[int, int, str]] = [(s, e, "x" * self.url_length) for s, e in find_urls(text)]
        for match in _MASTODON_MENTION.finditer(text):
            if _MASTODON_NOT_AFTER_MENTION.match(text, match.end()):
                continue
            entities.append((match.start(), match.end(), "@" + match.group(2)))
        entities.sort(key=lambda entity: entity[0])
        # twitter-text's remove_overlapping_entities: the earlier entity wins.
        kept: list[tuple[int, int, str]] = []
        for entity in entities:
            if kept and kept[-1][1] > entity[0]:
                continue
            kept.append(entity)
        return _replace_spans(text, kept)

    def count(self, text: str, spoiler_text: str | None = None) -> int:
        """Graphemes of ``spoiler_text + countable_text(text)``: Mastodon joins the two before counting.

        `spoiler_text` defaults to the profile's own; pass ``""`` to count the text alone.
        """
        spoiler = self.spoiler_text if spoiler_text is None else spoiler_text
        return grapheme_count(spoiler + self.countable_text(text))

    def fits(self, text: str, spoiler_text: str | None = None) -> bool:
        return self.count(text, spoiler_text) <= self.limit


def mastodon(max_characters: int = 500, url_length: int = 23) -> MastodonProfile:
    """A Mastodon instance: `max_characters` and `url_length` are its ``configuration.statuses`` values
    (``max_characters``, ``characters_reserved_per_url``) from ``/api/v2/instance``."""
    return MastodonProfile(limit=max_characters, url_length=url_length)


# --- Bluesky -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlueskyProfile:
    """Bluesky's post text: at most `limit` graphemes and at most `max_bytes` bytes of UTF-8, both checked."""

    limit: int = 300
    max_bytes: int = 3000
    name: str = "bluesky"

    def __post_init__(self) -> None:
        _check_positive(limit=self.limit, max_bytes=self.max_bytes)

    def count(self, text: str) -> int:
        """Graphemes; links count in full (their facets do not shorten the text)."""
        return grapheme_count(text)

    @staticmethod
    def byte_length(text: str) -> int:
        return len(text.encode("utf-8"))

    def fits(self, text: str) -> bool:
        # A long ZWJ or combining-mark run is one grapheme but many bytes: the byte limit can bind first.
        return self.byte_length(text) <= self.max_bytes and self.count(text) <= self.limit


def bluesky(max_graphemes: int = 300, max_bytes: int = 3000) -> BlueskyProfile:
    """Bluesky's ``app.bsky.feed.post`` text limits (the parameters exist for tests and other AT Protocol apps)."""
    return BlueskyProfile(limit=max_graphemes, max_bytes=max_bytes)


# --- X (twitter-text v3) -----------------------------------------------------------------------------------------

_X_SCALE: Final = 100
_X_DEFAULT_WEIGHT: Final = 200
_X_LIGHT_RANGES: Final = ((0, 4351), (8192, 8205), (8208, 8223), (8242, 8247))  # weight 100 each
_X_URL_WEIGHT_PER_CHAR: Final = _X_SCALE
# The emoji sequences twemoji-parser finds, as Unicode now defines them: keycaps, flags, subdivision flags, and
# pictographs with an optional VS16 or skin tone, joined by ZWJ.
_X_EMOJI: Final = regex.compile(
    r"[#*0-9]\uFE0F?\u20E3"
    r"|\p{Regional_Indicator}{2}"
    r"|\U0001F3F4[\U000E0020-\U000E007E]+\U000E007F"
    r"|\p{Extended_Pictographic}(?:\uFE0F|\p{Emoji_Modifier})?"
    r"(?:\u200D\p{Extended_Pictographic}(?:\uFE0F|\p{Emoji_Modifier})?)*"
)
# twemoji-parser takes these as emoji only with VS16; alone they are text and weigh 100 (the others weigh 200
# either way, so their text and emoji forms cost the same).
_X_TEXT_STYLE: Final = frozenset({"\u00a9", "\u00ae"})


def _x_code_point_weight(code_point: int) -> int:
    for low, high in _X_LIGHT_RANGES:
        if low <= code_point <= high:
            return 100
    return _X_DEFAULT_WEIGHT


def _x_plain_weight(text: str) -> int:
    weight = 0
    for cluster in _GRAPHEME.findall(text):
        emoji = _X_EMOJI.match(cluster)
        if emoji is not None and emoji.group() not in _X_TEXT_STYLE:
            weight += _X_DEFAULT_WEIGHT
            rest = cluster[emoji.end() :]
        else:
            rest = cluster
        weight += sum(_x_code_point_weight(ord(char)) for char in rest)
    return weight


@dataclass(frozen=True)
class XProfile:
    """X's weighted length (twitter-text v3): CJK and emoji count 2, Latin 1, URLs 23."""

    limit: int = 280
    url_length: int = 23
    name: str = "x"

    def __post_init__(self) -> None:
        _check_positive(limit=self.limit, url_length=self.url_length)

    def count(self, text: str) -> int:
        """The weighted length. twitter-text normalises to NFC first, so 'A' + U+0301 counts as one 'Á'.

        Differences from twitter-text, all rare: an emoji ZWJ sequence that twemoji does not know counts 2 here
        (there: the sum of its parts), and URLs are found by `find_urls`, not by twitter-text's TLD list.
        """
        normalized = unicodedata.normalize("NFC", text)
        weight = 0
        position = 0
        for start, end in find_urls(normalized):
            weight += _x_plain_weight(normalized[position:start]) + self.url_length * _X_URL_WEIGHT_PER_CHAR
            position = end
        weight += _x_plain_weight(normalized[position:])
        return weight // _X_SCALE  # every weight is a multiple of 100

    def fits(self, text: str) -> bool:
        return self.count(text) <= self.limit


def x_weighted(limit: int = 280) -> XProfile:
    """X (formerly Twitter) with twitter-text's v3 configuration; `limit` is ``maxWeightedTweetLength``."""
    return XProfile(limit=limit)


# --- Weibo -------------------------------------------------------------------------------------------------------

# Sina's counter took URLs up to 140 bytes as one t.cn link; a longer one adds its excess bytes (half units).
_WEIBO_LONG_URL_BYTES: Final = 140


def _weibo_half_units(text: str) -> int:
    # Sina's web counter is JavaScript: it sees UTF-16 code units, and tests them against [^\x00-\x80], so
    # U+0080 is "half width" too and an astral character (most emoji) is two whole characters.
    units = 0
    for char in text:
        code_point = ord(char)
        if code_point <= 0x80:
            units += 1
        elif code_point > 0xFFFF:
            units += 4
        else:
            units += 2
    return units


@dataclass(frozen=True)
class WeiboProfile:
    """Weibo's character count: full width 1, half width 1/2 (rounded up at the end), links 10.

    Weibo publishes no counting rule, so this is Sina's own web counter as the WeCase client re-implemented it
    "bug for bug" (``tweetLength``), with these definitions:

    - The text is measured in half units over its UTF-16 code units: a unit <= U+0080 (ASCII) is 1, any other is
      2. So a CJK character or full-width punctuation is 1 character, two ASCII characters are 1, Latin-1 and
      other non-ASCII letters (é, ß, Cyrillic) count as full width, and an astral emoji is 2 characters.
    - A URL (`find_urls`, https too: Sina's counter predates https links) counts as a t.cn short link,
      `url_length` characters (10, as docs/design.md, "Platform length rules", says; the short link is 20
      ASCII characters), plus half a character per byte beyond 140 for a very long URL.
    - The result is the half units divided by two, rounded up.
    """

    limit: int = 140
    url_length: int = 10
    name: str = "weibo"

    def __post_init__(self) -> None:
        _check_positive(limit=self.limit, url_length=self.url_length)

    def _url_half_units(self, url: str) -> int:
        size = _weibo_half_units(url)
        short = 2 * self.url_length
        return short if size <= _WEIBO_LONG_URL_BYTES else size - _WEIBO_LONG_URL_BYTES + short

    def count(self, text: str) -> int:
        half_units = 0
        position = 0
        for start, end in find_urls(text):
            half_units += _weibo_half_units(text[position:start]) + self._url_half_units(text[start:end])
            position = end
        half_units += _weibo_half_units(text[position:])
        return (half_units + 1) // 2

    def fits(self, text: str) -> bool:
        return self.count(text) <= self.limit


def weibo(limit: int = 140) -> WeiboProfile:
    """Weibo's 140-character post (an account with a longer allowance passes its own `limit`)."""
    return WeiboProfile(limit=limit)
