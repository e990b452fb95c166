"""Turn one notice into the posts one channel publishes: languages joined, fitted to the platform's length
rule by degrading detail, and split into a numbered thread only as a last resort; and fold queued posts into
one when a posting budget asks for it.

Render knows a channel only as a `PostStyle`: which notices it posts, in which languages, and the platform's
touches (visibility, content warning, a required link). `post_style` reads it from the channel's configuration
(config is a lower layer, read by every stage); render never imports the channels (tests/test_layering.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from broadcaster.compose import Notice, NoticeKind, Priority
from broadcaster.config import ChannelConfig, MastodonChannelConfig, WeiboChannelConfig
from broadcaster.posts import MERGED_KIND, Post
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


@dataclass(frozen=True, slots=True)
class PostStyle:
    """What render needs to know of one channel to make its posts."""

    #: The notice kinds (values of `NoticeKind`) the channel posts.
    notices: frozenset[str]
    #: The languages of its posts, in order; () means the network's default language.
    languages: tuple[str, ...] = ()
    #: One post per language (Mastodon's `languages_per_status = "separate"`), rather than all in one.
    separate_languages: bool = False
    #: Visibility per notice kind, and for the rest (Mastodon); None: the platform's default.
    visibility: Mapping[str, str] = field(default_factory=dict)
    default_visibility: str | None = None
    #: The content warning of an emergency's posts (Mastodon), which shares the length limit.
    emergency_spoiler_text: str | None = None
    #: A link every post ends with (Weibo refuses a share without a link on the app's safe domain).
    link: str | None = None


def post_style(channel: ChannelConfig) -> PostStyle:
    """The style of `channel`'s posts, read from its configuration."""
    style = PostStyle(frozenset(channel.notices), tuple(channel.languages or ()))
    if isinstance(channel, MastodonChannelConfig):
        visibility = {str(kind): str(value) for kind, value in channel.visibility.items()}
        style = replace(style, separate_languages=channel.languages_per_status == "separate",
                        visibility=visibility, default_visibility=channel.default_visibility,
                        emergency_spoiler_text=channel.emergency_spoiler_text or None)
    if isinstance(channel, WeiboChannelConfig) and channel.link:
        style = replace(style, link=channel.link)
    return style


def language_groups(style: PostStyle, languages: Sequence[str]) -> list[tuple[str, ...]]:
    """The languages of each post of the thread: all in one, or (Mastodon's `languages_per_status =
    "separate"`: a status has one language) one status per language."""
    if style.separate_languages:
        return [(lang,) for lang in languages]
    return [tuple(languages)]


def posts_for(
    notice: Notice, channel: ChannelConfig, profile: PlatformProfile | None, render: RenderText,
    default_language: str,
) -> list[Post]:
    """Every post `channel` makes of `notice`, in thread order; [] when the channel does not post this kind."""
    return styled_posts(notice, post_style(channel), profile, render, default_language)


def styled_posts(
    notice: Notice, style: PostStyle, profile: PlatformProfile | None, render: RenderText, default_language: str,
) -> list[Post]:
    """Every post a channel of `style` makes of `notice`, in thread order; [] when it does not post this kind.

    A standalone post that is not an emergency also carries its brief form (`Post.brief`: the templates at
    the headline detail), rendered now, so that a posting budget's merge later joins template texts and
    never re-reads the rendered ones.
    """
    if notice.kind.value not in style.notices:
        return []
    languages = style.languages or (default_language,)
    emergency = notice.priority is Priority.EMERGENCY
    visibility = style.visibility.get(notice.kind.value, style.default_visibility)
    spoiler = None
    if emergency and style.emergency_spoiler_text:
        spoiler = style.emergency_spoiler_text
        if isinstance(profile, MastodonProfile):
            profile = replace(profile, spoiler_text=spoiler)  # the content warning shares the limit
    suffix = ""
    if style.link:
        suffix = "\n" + style.link
        if isinstance(profile, WeiboProfile):
            profile = replace(profile, limit=profile.limit - profile.count(suffix))
    parts = [(text + suffix, langs) for group in language_groups(style, languages)
             for text, langs in post_parts(notice, group, profile, render)]
    target = reply_target(notice)
    mergeable = len(parts) == 1 and target is None and not emergency

    def brief(langs: tuple[str, ...]) -> str | None:
        return _join(notice, langs, render, HEADLINE).text + suffix if mergeable else None

    return [
        Post(notice.id, notice.kind.value, text, langs[0], part=i, parts=len(parts), reply_to_notice=target,
             emergency=emergency, spoiler_text=spoiler, visibility=visibility, languages=langs,
             brief=brief(langs))
        for i, (text, langs) in enumerate(parts)
    ]


def merged_posts(posts: Sequence[Post], profile: PlatformProfile | None, notice_id: str) -> list[Post]:
    """One post (or as few as the length rule allows) saying what `posts` said, under `notice_id`.

    Only texts rendered from the templates at commit are joined: each post's full text, one paragraph each,
    if that fits; else each post's brief form (`Post.brief`; a post queued before briefs existed offers the first
    line of its text, as merges did then, so an old backlog still merges short).
    """
    def brief(post: Post) -> str:
        if post.brief is not None:
            return post.brief.strip()
        lines = post.text.strip().splitlines()
        return lines[0] if lines else ""

    def joined(detail: int) -> str:
        if detail == FULL:
            return "\n\n".join(p.text.strip() for p in posts)
        return "\n".join(brief(p) for p in posts)

    texts = [joined(FULL)] if profile is None else fit(joined, profile, detail_levels=(FULL, HEADLINE))
    first = posts[0]
    languages = tuple(dict.fromkeys(language for p in posts for language in p.all_languages))
    return [
        Post(notice_id, MERGED_KIND, text, first.language, part=i, parts=len(texts), visibility=first.visibility,
             languages=languages)
        for i, text in enumerate(texts)
    ]
