"""Turn one notice into the posts one channel publishes: languages joined, fitted to the platform's length
rule by degrading detail, and split into a numbered thread only as a last resort."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from broadcaster.channels.base import Post
from broadcaster.compose import Notice, NoticeKind, Priority
from broadcaster.config import ChannelConfig, MastodonChannelConfig, WeiboChannelConfig
from broadcaster.render.engine import tidy
from broadcaster.render.fit import fit, thread_marker
from broadcaster.render.length import MastodonProfile, PlatformProfile, WeiboProfile

#: Detail levels a template sees as `detail`: everything, without the description, headline only.
FULL, COMPACT, HEADLINE = 2, 1, 0
DETAIL_LEVELS = (FULL, COMPACT, HEADLINE)

RenderText = Callable[[str, int], str]  # (language, detail) -> text


def reply_target(notice: Notice) -> str | None:
    """The notice id whose thread this notice continues: updates and all-clears answer the first post."""
    if notice.kind in (NoticeKind.ALERT_UPDATED, NoticeKind.ALERT_RESOLVED, NoticeKind.CORRECTION):
        return notice.id
    context = next(iter(notice.contexts.values()), {})
    if notice.kind is NoticeKind.CROWDING and context.get("crowded") is False:
        return notice.id  # "crowding has eased" answers "very crowded"
    if notice.kind is NoticeKind.LINE_STATUS and context.get("status_code") != "delayed":
        return notice.id  # "good service resumed" (or "delays have cleared") answers "delays"
    return None


def protected_names(notice: Notice) -> list[str]:
    """Line and station names in the notice: a thread split never cuts through one."""
    names: set[str] = set()
    for context in notice.contexts.values():
        for key in ("line", "station", "lines", "stations"):
            value = context.get(key)
            if isinstance(value, str) and value:
                names.add(value)
            elif isinstance(value, list):
                names.update(v for v in value if isinstance(v, str) and v)
    return sorted(names, key=len, reverse=True)


def notice_urls(notice: Notice, languages: Sequence[str]) -> list[str]:
    """The distinct links of the notice in these languages (usually one: the alert's URL)."""
    found = (notice.contexts[lang].get("url") for lang in languages if lang in notice.contexts)
    return list(dict.fromkeys(url.strip() for url in found if isinstance(url, str) and url.strip()))


def without_urls(text: str, urls: Sequence[str]) -> str:
    """`text` with the links taken out: a line that is only a link goes, a link inside a line is cut out."""
    kept = []
    for line in text.splitlines():
        if line.strip() in urls:
            continue
        for url in urls:
            line = line.replace(url, "")
        kept.append(line.rstrip())
    return tidy("\n".join(kept))


@dataclass(frozen=True, slots=True)
class _Joined:
    """Language blocks joined into one post: its text and where each language's block lies in it."""

    text: str
    spans: tuple[tuple[str, int, int], ...]  # (language, start, end)


def _join(notice: Notice, languages: Sequence[str], render: RenderText, detail: int) -> _Joined:
    """The blocks of `languages` at `detail`, separated by a blank line. A post of several blocks carries the
    notice's link once, on its own last line, rather than once per block (a split would give a part of only a
    link)."""
    urls = notice_urls(notice, languages) if len(languages) > 1 else []
    text, spans = "", []
    for lang in languages:
        block = render(lang, detail)
        if urls:
            block = without_urls(block, urls)
        if text:
            text += "\n\n"
        spans.append((lang, len(text), len(text) + len(block)))
        text += block
    if urls:
        text += "\n" + "\n".join(urls)
    return _Joined(text, tuple(spans))


def _link_tail(joined: str, urls: Sequence[str]) -> list[str]:
    """The link with the few characters before it, kept whole by a split: no part holds only the link."""
    if not urls:
        return []
    before = joined[: len(joined) - len("\n".join(urls))].rstrip("\n")
    return [before[-12:] + joined[len(before):]] if before else []


def post_parts(
    notice: Notice, languages: Sequence[str], profile: PlatformProfile | None, render: RenderText
) -> list[tuple[str, tuple[str, ...]]]:
    """Each post's text and the languages it holds: one post when it fits at some detail level, else a
    numbered thread whose parts each name the languages of the blocks they carry."""
    everything = tuple(languages)
    if profile is None:
        return [(_join(notice, languages, render, FULL).text, everything)]
    urls = notice_urls(notice, languages) if len(languages) > 1 else []
    headline = _join(notice, languages, render, HEADLINE)
    protect = protected_names(notice) + _link_tail(headline.text, urls)
    texts = fit(lambda detail: _join(notice, languages, render, detail).text, profile,
                detail_levels=DETAIL_LEVELS, protect=protect)
    if len(texts) == 1:
        return [(texts[0], everything)]  # a level that fits, whole
    # A thread: `fit` split the headline level's text, in order.
    return list(zip(texts, _languages_of_parts(texts, headline, everything), strict=True))


def _languages_of_parts(parts: Sequence[str], joined: _Joined, fallback: tuple[str, ...]) -> list[tuple[str, ...]]:
    """For each part of a split of `joined`, the languages whose blocks it overlaps. The parts' bodies are
    stretches of the text in order, so each is looked for after the previous one."""
    out: list[tuple[str, ...]] = []
    cursor = 0
    for index, part in enumerate(parts, start=1):
        body = part.removesuffix(thread_marker(index, len(parts)))
        start = joined.text.find(body, cursor)
        if start < 0:
            out.append(fallback)  # not a stretch of the text after all: claim every language
            continue
        cursor = start + len(body)
        found = tuple(lang for lang, begin, end in joined.spans if begin < cursor and end > start)
        out.append(found or fallback)
    return out


def post_texts(
    notice: Notice, languages: Sequence[str], profile: PlatformProfile | None, render: RenderText
) -> list[str]:
    """The text of each post: one when it fits at some detail level, else a numbered thread."""
    return [text for text, _ in post_parts(notice, languages, profile, render)]


def language_groups(channel: ChannelConfig, languages: Sequence[str]) -> list[tuple[str, ...]]:
    """The languages of each post of the thread: all in one, or (Mastodon's `languages_per_status =
    "separate"`: a status has one language) one status per language."""
    if isinstance(channel, MastodonChannelConfig) and channel.languages_per_status == "separate":
        return [(lang,) for lang in languages]
    return [tuple(languages)]


def posts_for(
    notice: Notice, channel: ChannelConfig, profile: PlatformProfile | None, render: RenderText,
    default_language: str,
) -> list[Post]:
    """Every post `channel` makes of `notice`, in thread order; [] when the channel does not post this kind."""
    if notice.kind.value not in channel.notices:
        return []
    languages = channel.languages or (default_language,)
    emergency = notice.priority is Priority.EMERGENCY
    visibility = spoiler = None
    if isinstance(channel, MastodonChannelConfig):
        visibility = channel.visibility.get(notice.kind.value, channel.default_visibility)
        spoiler = (channel.emergency_spoiler_text or None) if emergency else None
        if spoiler and isinstance(profile, MastodonProfile):
            profile = replace(profile, spoiler_text=spoiler)  # the content warning shares the limit
    suffix = ""
    if isinstance(channel, WeiboChannelConfig) and channel.link:
        # Weibo refuses a share without a link on the app's safe domain: every part ends with it.
        suffix = "\n" + channel.link
        if isinstance(profile, WeiboProfile):
            profile = replace(profile, limit=profile.limit - profile.count(suffix))
    parts = [(text + suffix, langs) for group in language_groups(channel, languages)
             for text, langs in post_parts(notice, group, profile, render)]
    target = reply_target(notice)
    return [
        Post(notice.id, notice.kind.value, text, langs[0], part=i, parts=len(parts), reply_to_notice=target,
             emergency=emergency, spoiler_text=spoiler, visibility=visibility, languages=langs)
        for i, (text, langs) in enumerate(parts)
    ]
