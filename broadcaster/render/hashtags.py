"""Hashtags for the lines and stations a notice touches, made from the network's names by the `[hashtags]` patterns.

A tag is made valid for every platform at once, so a rider follows the same `#2号线` on Mastodon, Bluesky and Weibo:

- it keeps letters of any script (CJK included), decimal digits, `_`, and the combining marks that spell a
  letter (nonspacing and spacing marks: Devanagari vowel signs and virama, Thai tone marks, Arabic vowel marks;
  accents written apart are first composed, NFC); everything else is taken out: white space, punctuation (`.`,
  `-`, `·`, `'`, brackets, CJK punctuation), symbols and emoji with their variation selectors, enclosing marks,
  invisible characters. Mastodon's `Tag::HASHTAG_RE` takes all of these into one tag (`[[:word:]]`), and
  Bluesky's tag detection takes them in whole;
- `_` and marks do not start it, and `_` does not end it (Bluesky's clients strip a trailing one);
- it holds at least one letter: Mastodon needs one (`#2` is no tag), Bluesky needs a character that is not a digit;
- at most 64 grapheme clusters and 640 bytes of UTF-8 (the `app.bsky.richtext.facet#tag` lexicon), cut at a
  grapheme boundary.

A name from which no letter is left gives no tag. Pure code: no I/O.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import regex

from broadcaster.config import Config, HashtagsConfig
from broadcaster.errors import ConfigError
from broadcaster.model import Network
from broadcaster.render.length import graphemes

__all__ = [
    "MAX_TAG_BYTES", "MAX_TAG_GRAPHEMES", "Hashtags", "NoticeTags", "clean_tag", "hashtags_of",
    "require_known_overrides", "tag_token",
]

#: The `app.bsky.richtext.facet#tag` lexicon: `tag` has maxGraphemes 64 and maxLength 640 (bytes of UTF-8).
MAX_TAG_GRAPHEMES: Final = 64
MAX_TAG_BYTES: Final = 640

#: Variation selectors: marks by category, but they dress an emoji (taken out) rather than spell a word, and
#: Bluesky's tag detection will not start a tag with U+FE0F.
_VARIATION_SELECTOR: Final = regex.compile(r"\p{Variation_Selector}")


def _kept(char: str) -> bool:
    category = unicodedata.category(char)
    if category[0] == "L" or category == "Nd" or char == "_":
        return True
    # Every mark that spells a letter stays, or a name is misspelt: Thai tone marks ("ห้า" is not "หา"), the
    # Devanagari virama ("स्टेशन" is not "सटेशन"), Arabic vowel marks. Mastodon's [[:word:]] and Bluesky's
    # tag detection both take them into the tag.
    return category in ("Mn", "Mc") and _VARIATION_SELECTOR.match(char) is None


def _leading(char: str) -> bool:
    """A character that may not start a tag (it would join the '#' or be stripped by a client)."""
    return char == "_" or unicodedata.category(char)[0] == "M"


def clean_tag(raw: str) -> str | None:
    """`raw` as a hashtag every platform accepts whole (see the module docstring), or None if nothing is left."""
    kept = "".join(char for char in unicodedata.normalize("NFC", raw) if _kept(char))
    start = 0
    while start < len(kept) and _leading(kept[start]):
        start += 1
    clusters = graphemes(kept[start:])[:MAX_TAG_GRAPHEMES]
    while clusters and len("".join(clusters).encode()) > MAX_TAG_BYTES:
        clusters.pop()
    tag = "".join(clusters).rstrip("_")
    if not any(unicodedata.category(char)[0] == "L" for char in tag):
        return None
    return tag


def tag_token(tag: str, form: str) -> str:
    """The tag as it stands in a post: `form` is a pattern such as ``"#{}"`` (Mastodon, Bluesky) or ``"#{}#"``
    (a Weibo topic)."""
    return form.format(tag)


@dataclass(frozen=True, slots=True)
class NoticeTags:
    """The tags of one post: its lines' first, then its stations', without repeats (case-insensitive)."""

    lines: tuple[str, ...] = ()
    stations: tuple[str, ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        return self.lines + self.stations

    def __bool__(self) -> bool:
        return bool(self.lines or self.stations)

    def first(self, count: int) -> NoticeTags:
        """The first `count` tags: what is left when the rest are dropped (stations go before lines)."""
        return NoticeTags(self.lines[:count], self.stations[: max(0, count - len(self.lines))])

    @classmethod
    def union(cls, tag_sets: Iterable[NoticeTags]) -> NoticeTags:
        """Every set's tags once: all line tags first, then station tags that are not also a line tag."""
        sets = list(tag_sets)
        lines = _unique(tag for tags in sets for tag in tags.lines)
        return cls(lines, _unique((tag for tags in sets for tag in tags.stations), taken=lines))


def _unique(tags: Iterable[str], taken: Sequence[str] = ()) -> tuple[str, ...]:
    """`tags` in order without repeats; Mastodon and Bluesky match tags without regard to case, so neither do we."""
    seen = {tag.casefold() for tag in taken}
    out: list[str] = []
    for tag in tags:
        if tag.casefold() not in seen:
            seen.add(tag.casefold())
            out.append(tag)
    return tuple(out)


class Hashtags:
    """Every line's and station's tag per language, made once from the network by the configured patterns."""

    def __init__(self, config: HashtagsConfig, network: Network, source: Path = Path("<memory>")) -> None:
        """Raises ConfigError when an override names a line or station the network does not have."""
        _require_known(config, network, source)
        self._lines: dict[tuple[str, str], str] = {}
        self._stations: dict[tuple[str, str], str] = {}
        for line in network.lines.values():
            for language, pattern in {**config.line, **config.lines.get(line.id, {})}.items():
                tag = clean_tag(pattern.format(short_name=line.short_name, name=line.names.get(language), id=line.id))
                if tag is not None:
                    self._lines[(line.id, language)] = tag
        for station in network.stations.values():
            for language, pattern in {**config.station, **config.stations.get(station.id, {})}.items():
                tag = clean_tag(pattern.format(name=station.names.get(language), id=station.id))
                if tag is not None:
                    self._stations[(station.id, language)] = tag

    def line_tag(self, line_id: str, language: str) -> str | None:
        return self._lines.get((line_id, language))

    def station_tag(self, station_id: str, language: str) -> str | None:
        return self._stations.get((station_id, language))

    def for_notice(self, line_ids: Sequence[str], station_ids: Sequence[str], languages: Sequence[str]) -> NoticeTags:
        """The tags of a post in `languages` about these lines and stations: each line's tags in every language
        (``#2号线 #Line2``), then each station's."""
        lines = _unique(self._tags(self._lines, line_ids, languages))
        return NoticeTags(lines, _unique(self._tags(self._stations, station_ids, languages), taken=lines))

    @staticmethod
    def _tags(table: Mapping[tuple[str, str], str], ids: Sequence[str], languages: Sequence[str]) -> Iterable[str]:
        for item in ids:
            for language in languages:
                tag = table.get((item, language))
                if tag is not None:
                    yield tag


def require_known_overrides(config: Config, network: Network) -> None:
    """Refuse `[hashtags]` overrides for a line or station the network does not have (cheap: run, once and
    preview ask before they lock or open anything, as for channel filters).

    Raises:
        ConfigError: naming the key, `hashtags.stations.S99`.
    """
    if config.hashtags is not None:
        _require_known(config.hashtags, network, config.source)


def _require_known(config: HashtagsConfig, network: Network, source: Path) -> None:
    for key, ids, known in (("lines", config.lines, network.lines), ("stations", config.stations, network.stations)):
        unknown = sorted(set(ids) - set(known))
        if unknown:
            raise ConfigError(source, f"hashtags.{key}.{unknown[0]}", "is not in the network's GTFS")


def hashtags_of(config: Config, network: Network) -> Hashtags | None:
    """The configured hashtags over `network`, or None when the config has no `[hashtags]`.

    Raises:
        ConfigError: an override names a line or station the network does not have.
    """
    return Hashtags(config.hashtags, network, config.source) if config.hashtags is not None else None
