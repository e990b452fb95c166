"""Turn one notice into the posts one channel publishes: languages joined, fitted to the platform's length
rule by degrading detail (with room for the hashtags of its lines and stations, dropped before any fact), and
split into a numbered thread only as a last resort; and fold queued posts into one when a posting budget asks
for it.

Render knows a channel only as a `PostStyle`: which notices it posts, in which languages, and the platform's
touches (visibility, content warning, a required link). `post_style` reads it from the channel's configuration
(config is a lower layer, read by every stage); render never imports the channels (tests/test_layering.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from broadcaster.compose import Notice, NoticeKind, Priority
from broadcaster.config import BlueskyChannelConfig, ChannelConfig, MastodonChannelConfig, WeiboChannelConfig
from broadcaster.posts import MERGED_KIND, Post
from broadcaster.render.engine import tidy
from broadcaster.render.fit import fit, thread_marker
from broadcaster.render.hashtags import Hashtags, NoticeTags, tag_token
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
    #: Whether its posts carry the hashtags of the notice's lines and stations (`[hashtags]`, when configured).
    hashtags: bool = False
    #: How a tag stands in the text, as the last line (``"#{}"``; Weibo's topics ``"#{}#"``); None: the tags are
    #: not written into the text, only carried beside it (webhook, Atom).
    tag_form: str | None = None


def post_style(channel: ChannelConfig) -> PostStyle:
    """The style of `channel`'s posts, read from its configuration."""
    style = PostStyle(frozenset(channel.notices), tuple(channel.languages or ()), hashtags=channel.hashtags)
    if isinstance(channel, MastodonChannelConfig | BlueskyChannelConfig):
        style = replace(style, tag_form="#{}")  # Mastodon links a tag itself; the Bluesky channel adds its facet
    if isinstance(channel, WeiboChannelConfig):
        style = replace(style, tag_form="#{}#")  # a Weibo topic
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
    default_language: str, hashtags: Hashtags | None = None,
) -> list[Post]:
    """Every post `channel` makes of `notice`, in thread order; [] when the channel does not post this kind."""
    return styled_posts(notice, post_style(channel), profile, render, default_language, hashtags)


def tag_line(tags: NoticeTags, form: str) -> str:
    """The tags as the post's last line: ``#2号线 #Line2`` (or ``#2号线# #Line2#`` on Weibo)."""
    return " ".join(tag_token(tag, form) for tag in tags.all)


def with_tags(text: str, tags: NoticeTags, form: str | None) -> str:
    """`text` ending with its tag line, when the tags are written into the text."""
    return f"{text}\n{tag_line(tags, form)}" if tags and form is not None else text


def without_tags(post: Post) -> str:
    """The post's text without the tag line `with_tags` added."""
    tags = NoticeTags(post.line_tags, post.station_tags)
    if not tags or post.tag_form is None:
        return post.text
    return post.text.removesuffix("\n" + tag_line(tags, post.tag_form))


def fit_with_tags(
    render: Callable[[int], str], levels: Sequence[int], profile: PlatformProfile, tags: NoticeTags, form: str,
    suffix: str = "",
) -> tuple[str, NoticeTags] | None:
    """The richest level whose text, with `suffix` and the tag line after it, fits `profile` as one post, with as
    many tags as fit: when even the last level does not fit with every tag, the last tag is dropped and the levels
    are tried again, so station tags go first, then line tags, and the facts never. None when no level fits with
    even one tag (the caller posts the text without tags, split if need be)."""
    for count in range(len(tags.all), 0, -1):
        kept = tags.first(count)
        for level in levels:
            text = render(level) + suffix
            if profile.fits(with_tags(text, kept, form)):
                return text, kept
    return None


def styled_posts(
    notice: Notice, style: PostStyle, profile: PlatformProfile | None, render: RenderText, default_language: str,
    hashtags: Hashtags | None = None,
) -> list[Post]:
    """Every post a channel of `style` makes of `notice`, in thread order; [] when it does not post this kind.

    A standalone post that is not an emergency also carries its brief form (`Post.brief`: the templates at
    the headline detail), rendered now, so that a posting budget's merge later joins template texts and
    never re-reads the rendered ones.

    With `hashtags`, each post carries the tags of the notice's lines and stations in its languages, fitted by
    `fit_with_tags`; a notice that needs a thread even without them is posted without tags.
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
    full_profile = profile
    suffix = ""
    if style.link:
        suffix = "\n" + style.link
        if isinstance(profile, WeiboProfile):
            profile = replace(profile, limit=profile.limit - profile.count(suffix))
    parts = [part for group in language_groups(style, languages)
             for part in _group_parts(notice, group, style, (profile, full_profile), render, suffix, hashtags)]
    target = reply_target(notice)
    mergeable = len(parts) == 1 and target is None and not emergency

    def brief(langs: tuple[str, ...]) -> str | None:
        return _join(notice, langs, render, HEADLINE).text + suffix if mergeable else None

    return [
        Post(notice.id, notice.kind.value, text, langs[0], part=i, parts=len(parts), reply_to_notice=target,
             emergency=emergency, spoiler_text=spoiler, visibility=visibility, languages=langs,
             brief=brief(langs), line_tags=tags.lines, station_tags=tags.stations,
             tag_form=style.tag_form if tags else None)
        for i, (text, langs, tags) in enumerate(parts)
    ]


def _group_parts(
    notice: Notice, group: tuple[str, ...], style: PostStyle,
    profiles: tuple[PlatformProfile | None, PlatformProfile | None], render: RenderText, suffix: str,
    hashtags: Hashtags | None,
) -> list[tuple[str, tuple[str, ...], NoticeTags]]:
    """The posts of one language group: each text (link `suffix` and tag line included), languages and tags.

    `profiles` is the length rule with room left for the suffix (what the text alone is fitted to) and the
    platform's whole rule (what the text with its suffix and tags must fit).
    """
    profile, full_profile = profiles
    tags = NoticeTags()
    if hashtags is not None and style.hashtags:
        tags = hashtags.for_notice(notice.line_ids, notice.station_ids, group)
    if tags and style.tag_form is not None and full_profile is not None:
        found = fit_with_tags(lambda detail: _join(notice, group, render, detail).text, DETAIL_LEVELS, full_profile,
                              tags, style.tag_form, suffix)
        if found is not None:
            text, kept = found
            return [(with_tags(text, kept, style.tag_form), group, kept)]
        tags = NoticeTags()  # not even one tag fits beside the shortest text: the facts go without (split if need be)
    return [(with_tags(text + suffix, tags, style.tag_form), langs, tags)
            for text, langs in post_parts(notice, group, profile, render)]


def merged_posts(posts: Sequence[Post], profile: PlatformProfile | None, notice_id: str) -> list[Post]:
    """One post (or as few as the length rule allows) saying what `posts` said, under `notice_id`.

    Only texts rendered from the templates at commit are joined: each post's full text, one paragraph each,
    if that fits; else each post's brief form (`Post.brief`; a post queued before briefs existed offers the first
    line of its text, as merges did then, so an old backlog still merges short). The posts' hashtags are taken off
    their texts and carried once, as one tag line fitted like a notice's (`fit_with_tags`).
    """
    def brief(post: Post) -> str:
        if post.brief is not None:
            return post.brief.strip()
        lines = without_tags(post).strip().splitlines()
        return lines[0] if lines else ""

    def joined(detail: int) -> str:
        if detail == FULL:
            return "\n\n".join(without_tags(p).strip() for p in posts)
        return "\n".join(brief(p) for p in posts)

    tags = NoticeTags.union(NoticeTags(p.line_tags, p.station_tags) for p in posts)
    form = next((p.tag_form for p in posts if p.tag_form is not None), None)
    found = None
    if tags and form is not None and profile is not None:
        found = fit_with_tags(joined, (FULL, HEADLINE), profile, tags, form)
    if found is not None:
        texts, tags = [with_tags(found[0], found[1], form)], found[1]
    elif profile is None:
        texts = [with_tags(joined(FULL), tags, form)]
    else:
        texts = fit(joined, profile, detail_levels=(FULL, HEADLINE))
        if form is not None:
            tags = NoticeTags()  # not even one tag fits in the text: the facts go without
    first = posts[0]
    languages = tuple(dict.fromkeys(language for p in posts for language in p.all_languages))
    return [
        Post(notice_id, MERGED_KIND, text, first.language, part=i, parts=len(texts), visibility=first.visibility,
             languages=languages, line_tags=tags.lines, station_tags=tags.stations,
             tag_form=form if tags else None)
        for i, text in enumerate(texts)
    ]
