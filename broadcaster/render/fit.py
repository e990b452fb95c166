"""Fit a notice to a platform: the most detailed rendering that fits, or a numbered thread of parts that all fit.

`fit` tries the template's detail levels from full to headline and keeps the first text the profile accepts.
When even the headline is too long (a long alert on Weibo), `split` cuts that text into a thread. Each part ends
with a marker " (i/n)" (appended, as Chinese micro-blogs usually number a thread), and every part, marker
included, fits the profile.

A part is as long as fits, unless a better break lies in its last half: line breaks, then after sentence
punctuation (。！？；.!?;), after clause punctuation (，、,:：), at spaces, then between any two characters, with
breaks before punctuation and inside Latin words or numbers last. A cut never falls inside a grapheme cluster,
a URL, a hashtag (``#tag`` or Weibo's ``#话题#``), an @mention or a name the caller protects (stations, lines);
only a unit longer than a whole part is cut, at a grapheme boundary. Pure code: the profile does the counting.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final

from broadcaster.render.length import PlatformProfile, find_urls, grapheme_boundaries

__all__ = ["fit", "split", "thread_marker"]

# Break tiers, best first. A cut in the last half of the longest part that fits takes the best tier found there.
_LINE: Final = 0
_SENTENCE: Final = 1
_CLAUSE: Final = 2
_SPACE: Final = 3
_ANYWHERE: Final = 4
_BEFORE_PUNCTUATION: Final = 5  # a part would start with '，' or '）'
_MID_WORD: Final = 6  # between two letters or digits of a Latin, Cyrillic... word

# The window: a preferred break is taken only if it keeps at least this share of the longest part that fits,
# so a headline's line break does not leave a three-word first part and a thread twice as long.
_MIN_FILL: Final = 0.5

_SENTENCE_MARKS: Final = frozenset("。！？；.!?;")
_CLAUSE_MARKS: Final = frozenset("，、,:：")
# ASCII marks end a sentence or clause only before white space: "3.5", "10:30" and "1,000" are not breaks.
_ASCII_MARKS: Final = frozenset(".!?;,:")
# Closing quotes and brackets stay with the punctuation before them: cut after '。」', not between.
_CLOSERS: Final = frozenset("」』”’）】》〉)]}\"'")
_NO_LINE_START: Final = _SENTENCE_MARKS | _CLAUSE_MARKS | _CLOSERS | frozenset("…%‰")

_WEIBO_TOPIC: Final = re.compile(r"#[^#\s]{1,64}#")
_HASHTAG: Final = re.compile(r"[#＃]\w+")
_MENTION: Final = re.compile(r"[@＠]\w[\w.-]*(?:@\w[\w-]*(?:\.\w[\w-]*)+)?")


def thread_marker(index: int, total: int) -> str:
    """The suffix of part `index` (from 1) of `total`, e.g. ``" (2/3)"``."""
    return f" ({index}/{total})"


def fit(
    render: Callable[[int], str],
    profile: PlatformProfile,
    *,
    detail_levels: Sequence[int] = (2, 1, 0),
    protect: Sequence[str] = (),
) -> list[str]:
    """The posts for one notice on one platform: one text if a detail level fits, else a numbered thread.

    Args:
        render: renders the notice's template at a detail level (2 full, 1 compact, 0 headline and link).
            It is called lazily, once per level tried, in the order of `detail_levels`.
        profile: the platform's length rules.
        detail_levels: the levels to try, most detailed first.
        protect: strings never to cut (station and line names), on top of URLs, hashtags and mentions.

    Returns:
        ``[text]`` for the first level whose text fits, unchanged; otherwise `split` of the last level's text.

    Raises:
        ValueError: no detail levels, or a part cannot hold even one grapheme and its marker.
    """
    if not detail_levels:
        raise ValueError("fit needs at least one detail level")
    text = ""
    for level in detail_levels:
        text = render(level)
        if profile.fits(text):
            return [text]
    return split(text, profile, protect=protect)


def split(text: str, profile: PlatformProfile, *, protect: Sequence[str] = ()) -> list[str]:
    """Cut `text` into a thread whose parts, each ending with `thread_marker`, all fit `profile`.

    Each part's body is a stretch of `text` with its outer white space stripped; the bodies, in order and with
    the white space at the cuts put back, are `text` again, and no body is empty. A part is as long as fits,
    unless a better break (see the module docstring) lies in its last half. A grapheme cluster is never cut.
    Only when a single URL, hashtag, mention or protected name is longer than a whole part is it cut, at the
    last grapheme boundary that fits: better a split name than a notice that cannot be posted.

    A text that fits once stripped is returned as the only part, without a marker; a blank text gives ``[]``.

    Raises:
        ValueError: a part cannot hold even one grapheme and its marker (the limit is far too small).
    """
    layout = _Layout.of(text, protect)
    start = layout.skip_blank(0)
    whole = text[start : layout.trim_end(start, layout.length)]
    if not whole:
        return []
    if profile.fits(whole):
        return [whole]  # a thread of one needs no marker
    digits = 1
    while True:
        # The marker's width depends on the number of parts: split with room for `digits`-digit numbers and
        # start again wider in the rare thread of ten parts or more.
        widest = thread_marker(10**digits - 1, 10**digits - 1)
        bodies = _bodies(text, layout, profile, widest)
        if len(str(len(bodies))) <= digits:
            break
        digits += 1
    total = len(bodies)
    parts = [body + thread_marker(index, total) for index, body in enumerate(bodies, start=1)]
    for part in parts:
        # Digits weigh the same everywhere, so a narrower marker cannot make a checked part longer.
        if not profile.fits(part):
            raise RuntimeError(f"split produced a part {profile.name} does not accept: {part!r}")
    return parts


@dataclass(frozen=True)
class _Layout:
    """Where a text may be cut: grapheme boundaries outside atomic units, each with its break tier."""

    text: str
    cuts: list[int]  # allowed cut offsets, ascending, ending with the length
    tiers: list[int]  # the tier of each cut
    graphemes: list[int]  # every grapheme boundary: the last-resort cuts inside a unit too long for a part

    @classmethod
    def of(cls, text: str, protect: Sequence[str]) -> _Layout:
        boundaries = grapheme_boundaries(text)
        inside = _inside_units(text, protect, boundaries)
        cuts = [offset for offset in boundaries[1:] if offset not in inside]
        return cls(text, cuts, [_tier(text, offset) for offset in cuts], boundaries)

    @property
    def length(self) -> int:
        return len(self.text)

    # White space is stripped a whole grapheme cluster at a time, so stripping never splits one either
    # (a space that carries a combining mark is not white space here).
    def _blank(self, index: int) -> bool:
        return self.text[self.graphemes[index] : self.graphemes[index + 1]].isspace()

    def skip_blank(self, offset: int) -> int:
        """The first grapheme boundary at or after `offset` (a boundary) that does not start white space."""
        index = bisect_left(self.graphemes, offset)
        while index < len(self.graphemes) - 1 and self._blank(index):
            index += 1
        return self.graphemes[index]

    def trim_end(self, start: int, end: int) -> int:
        """`end` (a boundary) moved back over the white space clusters that end the stretch from `start`."""
        index = bisect_left(self.graphemes, end)
        while index > 0 and self.graphemes[index - 1] >= start and self._blank(index - 1):
            index -= 1
        return self.graphemes[index]


def _units(text: str, protect: Sequence[str]) -> list[tuple[int, int]]:
    spans = list(find_urls(text))
    topics = [match.span() for match in _WEIBO_TOPIC.finditer(text)]
    spans.extend(topics)
    closing = {end - 1 for _, end in topics}  # the '#' closing a topic opens no hashtag
    spans.extend(match.span() for match in _HASHTAG.finditer(text) if match.start() not in closing)
    spans.extend(match.span() for match in _MENTION.finditer(text))
    for name in protect:
        if not name:
            continue
        start = text.find(name)
        while start >= 0:
            spans.append((start, start + len(name)))
            start = text.find(name, start + 1)
    return spans


def _inside_units(text: str, protect: Sequence[str], boundaries: list[int]) -> set[int]:
    """Offsets strictly inside a URL, hashtag, mention or protected name: no cut there."""
    inside: set[int] = set()
    for start, end in _units(text, protect):
        # Only grapheme boundaries are ever cut, so a unit that starts or ends inside a cluster is covered by
        # barring the boundaries strictly between its ends: it grows to whole clusters by itself.
        inside.update(boundaries[bisect_right(boundaries, start) : bisect_left(boundaries, end)])
    return inside


def _tier(text: str, offset: int) -> int:
    before = text[offset - 1]
    after = text[offset] if offset < len(text) else ""
    if before == "\n" or after == "\n" or offset == len(text):
        return _LINE
    if after in _NO_LINE_START:
        return _BEFORE_PUNCTUATION  # also keeps '。」' and '！？' together
    mark_at = offset - 1
    while mark_at > 0 and text[mark_at] in _CLOSERS:
        mark_at -= 1
    mark = text[mark_at]
    if mark not in _ASCII_MARKS or after.isspace():
        if mark in _SENTENCE_MARKS:
            return _SENTENCE
        if mark in _CLAUSE_MARKS:
            return _CLAUSE
    if before.isspace() or after.isspace():
        return _SPACE
    if _is_narrow_word_char(after) and (
        _is_narrow_word_char(before)
        # inside "3.5", "10:30" or "1,000"
        or (before in _ASCII_MARKS and offset >= 2 and _is_narrow_word_char(text[offset - 2]))
    ):
        return _MID_WORD
    return _ANYWHERE


def _is_narrow_word_char(char: str) -> bool:
    # CJK (wide) text breaks between any two characters; alphabetic scripts only between words.
    return char.isalnum() and unicodedata.east_asian_width(char) not in ("W", "F")


def _bodies(text: str, layout: _Layout, profile: PlatformProfile, marker: str) -> list[str]:
    def fits(start: int, end: int) -> bool:
        return profile.fits(text[start : layout.trim_end(start, end)] + marker)

    bodies: list[str] = []
    start = layout.skip_blank(0)
    while start < layout.length:
        first = bisect_right(layout.cuts, start)
        fits_from_start = partial(fits, start)
        longest = _last_fitting(layout.cuts, first, len(layout.cuts), fits_from_start)
        if longest is None:
            cut = _last_resort(text, layout, start, layout.cuts[first], fits_from_start, profile)
        else:
            cut = _preferred(layout, start, first, longest, fits_from_start)
        bodies.append(text[start : layout.trim_end(start, cut)])
        start = layout.skip_blank(cut)
    return bodies


def _last_fitting(offsets: list[int], low: int, high: int, fits: Callable[[int], bool]) -> int | None:
    """The index in ``offsets[low:high]`` of the last offset that fits, by bisection, or None if none does.

    Every profile's count grows with the text at grapheme and unit boundaries (each adds a non-negative amount),
    so what fits is a prefix of the candidates.
    """
    if low >= high or not fits(offsets[low]):
        return None
    while high - low > 1:
        middle = (low + high) // 2
        if fits(offsets[middle]):
            low = middle
        else:
            high = middle
    return low


def _preferred(layout: _Layout, start: int, first: int, longest: int, fits: Callable[[int], bool]) -> int:
    """The cut for a part from `start`: the best tier in the last half of what fits, the furthest of that tier."""
    end = layout.cuts[longest]
    if end == layout.length:
        return end  # the rest fits whole
    threshold = start + (end - start) * _MIN_FILL
    best_index = longest
    for index in range(longest, first - 1, -1):
        if layout.cuts[index] < threshold:
            break
        if layout.tiers[index] < layout.tiers[best_index]:
            best_index = index
    # The bisection proved the longest fits; a shorter cut fits too unless a count is not monotonic after all.
    return layout.cuts[best_index] if fits(layout.cuts[best_index]) else end


def _last_resort(
    text: str,
    layout: _Layout,
    start: int,
    unit_end: int,
    fits: Callable[[int], bool],
    profile: PlatformProfile,
) -> int:
    """Cut inside the unit that begins at `start` and is too long for a part, at its last grapheme that fits."""
    low = bisect_right(layout.graphemes, start)
    high = bisect_right(layout.graphemes, unit_end)
    index = _last_fitting(layout.graphemes, low, high, fits)
    if index is None:
        raise ValueError(
            f"{profile.name} (limit {profile.limit}) cannot hold {text[start : layout.graphemes[low]]!r} "
            "with a thread marker in one post"
        )
    return layout.graphemes[index]
