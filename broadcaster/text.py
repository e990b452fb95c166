"""Feed text neutralised at the feed boundary: plain, visible, notifying nobody, and of a sane size.

Texts from feeds (alert headers, descriptions and URLs; line and station names from the static GTFS) end up in
public posts, on station screens and in MQTT payloads. Whatever a feed carries, what leaves this module:

- has **no HTML**: tags are stripped (block tags and ``<br>`` become line breaks, ``<script>``/``<style>``
  contents are dropped) and entities decoded, because some agencies' feeds carry HTML although GTFS-Realtime
  says plain text. Entities are decoded *before* the next step, so ``&#8238;`` cannot smuggle a control in;
- has **no control characters** (C0 and C1 except the line break; tabs become spaces, CR LF and the Unicode
  line and paragraph separators become ``\\n``), **no bidi embeddings, overrides or isolates**
  (U+202A-U+202E, U+2066-U+2069: an unterminated RLO would reverse the rest of the post, the "as of" time and
  the link included), no BOM, zero-width space, invisible operators, deprecated format characters, interlinear
  annotations, lone surrogates or non-characters. Left-to-right and right-to-left *marks* (U+200E, U+200F,
  U+061C) only matter in right-to-left text and are kept there; elsewhere they only serve to disguise text, and
  are removed. ZWJ and ZWNJ stay: emoji sequences and several scripts need them;
- has its **@mentions defused**: a WORD JOINER (U+2060) goes after every ``@`` (or ``＠``, ``﹫``) that starts a
  name, so ``@metro_ops`` still reads "@metro_ops" but notifies nobody. WORD JOINER is default-ignorable (no
  glyph anywhere), forbids a line break (the name stays attached to its ``@``), and is no name character for any
  mention parser: Mastodon wants ``@[a-z0-9_]``, twitter-text ``[@＠][a-zA-Z0-9_]``, Weibo a letter, digit,
  CJK character, ``_`` or ``-``. Replacing ``@`` by the full-width ``＠`` would be no defence: twitter-text
  treats it as an at sign, and so do Chinese keyboards' users. ``@`` inside URLs (as
  `broadcaster.render.length.find_urls` finds them) and after an ASCII letter or digit (e-mail addresses, which
  no platform reads as mentions) are left alone, so links and addresses keep working;
- has **tidy white space** (runs of spaces collapsed, at most one blank line) and is **capped**: alert texts at
  `TEXT_LIMIT` (2,000) characters, names at `NAME_LIMIT` (200), URLs at `URL_LIMIT` (2,000). The cap protects
  memory, the database and MQTT payloads from a 10 kB (or 10 MB) description; fitting a post to a platform's
  limit is the render stage's job, and it uses the short text anyway. A cut text ends with "…" and never
  splits a combining sequence, an emoji sequence or a flag.
"""

from __future__ import annotations

import html
import re
import unicodedata
from html.parser import HTMLParser
from typing import Final

# The URL pattern the length rules use: an '@' that the platforms read as part of a link is left alone.
from broadcaster.render.length import find_urls

#: Characters kept of an alert header or description.
TEXT_LIMIT: Final = 2_000
#: Characters kept of a line or station name.
NAME_LIMIT: Final = 200
#: Characters of a URL; a longer one is dropped, not cut.
URL_LIMIT: Final = 2_000
#: How much raw input is looked at, as a multiple of the limit: HTML markup takes room the text does not.
_RAW_FACTOR: Final = 8

ELLIPSIS: Final = "…"
WORD_JOINER: Final = "\u2060"

# Removed everywhere (C0 but \t and \n, DEL, C1, bidi embeddings/overrides/isolates, BOM, ZWSP, invisible
# operators, deprecated format characters, interlinear annotations, object replacement, surrogates, non-characters).
_REMOVED: Final = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u202a-\u202e\u2061-\u2064\u2066-\u206f\ufeff\ufff9-\ufffc"
    "\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]"
)
_BIDI_MARKS: Final = re.compile("[\u200e\u200f\u061c]")
# Hebrew, Arabic, Syriac, Thaana, NKo, Samaritan, Mandaic and their presentation forms; Imperial Aramaic to Adlam.
_RIGHT_TO_LEFT: Final = re.compile("[\u0590-\u08ff\ufb1d-\ufdcf\ufdf0-\ufdff\ufe70-\ufefe\U00010800-\U00010fff"
                                   "\U0001e800-\U0001efff]")
_LINE_BREAKS: Final = re.compile("\r\n?|[\u0085\u2028\u2029\x0b\x0c]")
_SPACES: Final = re.compile(r"[ \t]+")
_SPACE_AROUND_BREAK: Final = re.compile(r" ?\n ?")
_BLANK_LINES: Final = re.compile(r"\n{3,}")
_HTML_TAG: Final = re.compile(r"<[A-Za-z!/?]")
_PARTIAL_TAG_AT_END: Final = re.compile(r"<[^>]*\Z")
# An at sign that may start a name: not after an ASCII letter or digit (an e-mail address), and followed by
# anything but white space or another at sign (platforms differ on what a name may start with: defuse them all).
_MENTION_AT: Final = re.compile(r"(?<![A-Za-z0-9_])[@＠﹫](?=[^\s@＠﹫\u2060])")
_SAFE_URL: Final = re.compile(r"https?://[^\s<>\"]+", re.IGNORECASE)


def clean_text(raw: str, *, limit: int = TEXT_LIMIT) -> str:
    """A feed's free text (alert header or description) made safe to publish; see the module docstring."""
    return _clean(raw, limit, multiline=True)


def clean_name(raw: str, *, limit: int = NAME_LIMIT) -> str:
    """A line or station name: as `clean_text`, on one line and capped at `NAME_LIMIT`."""
    return _clean(raw, limit, multiline=False)


def clean_url(raw: str) -> str:
    """A feed's URL, or "" when it is not one plain http(s) URL of at most `URL_LIMIT` characters.

    A URL is not cut (a cut URL leads somewhere else) and not defused (an ``@`` in a URL is no mention).
    """
    text = _strip_invisible(html.unescape(raw[: URL_LIMIT * 2]) if "&" in raw else raw[: URL_LIMIT * 2]).strip()
    if len(text) > URL_LIMIT or not _SAFE_URL.fullmatch(text):
        return ""
    return text


def _clean(raw: str, limit: int, *, multiline: bool) -> str:
    text = raw[: limit * _RAW_FACTOR]
    if "<" in text and _HTML_TAG.search(text):
        text = _strip_html(text, truncated=len(raw) > len(text))
    elif "&" in text:
        text = html.unescape(text)
    text = _strip_invisible(_LINE_BREAKS.sub("\n", text))
    text = _SPACES.sub(" ", text)
    if multiline:
        text = _BLANK_LINES.sub("\n\n", _SPACE_AROUND_BREAK.sub("\n", text))
    else:
        text = _SPACES.sub(" ", text.replace("\n", " "))
    text = _defuse_mentions(text.strip())
    return _cap(text, limit)


def _strip_invisible(text: str) -> str:
    text = _REMOVED.sub("", text)
    if _BIDI_MARKS.search(text) and not _RIGHT_TO_LEFT.search(text):
        text = _BIDI_MARKS.sub("", text)
    return text.replace("\t", " ")


def _defuse_mentions(text: str) -> str:
    if "@" not in text and "＠" not in text and "﹫" not in text:
        return text
    urls = find_urls(text)

    def defuse(match: re.Match[str]) -> str:
        at = match.start()
        if any(start <= at < end for start, end in urls):
            return match.group()
        return match.group() + WORD_JOINER

    return _MENTION_AT.sub(defuse, text)


# -- HTML --------------------------------------------------------------------------------------------------------

_BLOCK_TAGS: Final = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "footer", "h1", "h2", "h3", "h4",
    "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tr", "ul",
})
_HIDDEN_TAGS: Final = frozenset({"script", "style", "template", "head", "title"})


class _TextExtractor(HTMLParser):
    """The text of an HTML fragment: entities decoded, block tags as line breaks, scripts and styles dropped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def _break(self, tag: str) -> None:
        # <br> is a line break each time; the edges of blocks (</p><p>, <li>) make one between them.
        if tag == "br" or (self.parts and self.parts[-1] != "\n"):
            self.parts.append("\n")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN_TAGS:
            self._hidden += 1
        elif tag in _BLOCK_TAGS:
            self._break(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:
            self._break(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN_TAGS:
            self._hidden = max(0, self._hidden - 1)
        elif tag in _BLOCK_TAGS:
            self._break(tag)

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def _strip_html(text: str, *, truncated: bool) -> str:
    if truncated:
        text = _PARTIAL_TAG_AT_END.sub("", text)
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


# -- the cap -----------------------------------------------------------------------------------------------------


def _continues_cluster(char: str) -> bool:
    """True for characters that belong to the grapheme cluster before them (or join it to the next one)."""
    code = ord(char)
    return (
        unicodedata.category(char) in ("Mn", "Mc", "Me")
        or code in (0x200C, 0x200D)  # ZWNJ, ZWJ
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0x1F3FB <= code <= 0x1F3FF  # emoji skin tones
        or 0xE0020 <= code <= 0xE007F  # emoji tag sequences
        or 0xE0100 <= code <= 0xE01EF  # variation selectors supplement
    )


def _is_regional_indicator(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def _cap(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else cut (preferably at a space or punctuation in the last fifth)
    and ended with "…", never inside a grapheme cluster."""
    if len(text) <= limit:
        return text
    cut = limit - len(ELLIPSIS)
    window = text[cut - cut // 5 : cut]
    for marks in (" \n", "。！？；.!?;", "，、,:："):
        at = max(window.rfind(mark) for mark in marks)
        if at > 0:
            cut = cut - cut // 5 + at + (0 if marks == " \n" else 1)
            break
    # Back off to a cluster boundary: before combining marks, after no ZWJ, and not between a flag's two halves.
    while cut > 0 and (_continues_cluster(text[cut]) or text[cut - 1] == "\u200d"):
        cut -= 1
    run = 0
    while run < cut and _is_regional_indicator(text[cut - 1 - run]):
        run += 1
    if run % 2 and _is_regional_indicator(text[cut]):
        cut -= 1
    return text[:cut].rstrip() + ELLIPSIS
