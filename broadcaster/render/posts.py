"""Turn one notice into the posts one channel publishes: languages joined, fitted to the platform's length
rule by degrading detail, and split into a numbered thread only as a last resort."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from broadcaster.channels.base import Post
from broadcaster.compose import Notice, NoticeKind, Priority
from broadcaster.config import ChannelConfig, MastodonChannelConfig, WeiboChannelConfig
from broadcaster.render.fit import fit
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


def post_texts(
    notice: Notice, languages: Sequence[str], profile: PlatformProfile | None, render: RenderText
) -> list[str]:
    """The text of each post: one when it fits at some detail level, else a numbered thread."""

    def at(detail: int) -> str:
        return "\n\n".join(render(lang, detail) for lang in languages)

    if profile is None:
        return [at(FULL)]
    return fit(at, profile, detail_levels=DETAIL_LEVELS, protect=protected_names(notice))


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
    texts = [text + suffix for text in post_texts(notice, languages, profile, render)]
    target = reply_target(notice)
    return [
        Post(notice.id, notice.kind.value, text, languages[0], part=i, parts=len(texts), reply_to_notice=target,
             emergency=emergency, spoiler_text=spoiler, visibility=visibility)
        for i, text in enumerate(texts)
    ]
