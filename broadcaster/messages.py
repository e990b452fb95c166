"""A notice becomes its outbox rows here, once, at commit: the MQTT notice and each posting channel's posts.

The operator's templates are rendered for every language and detail level a post needs; a template that fails
falls back to the plain facts, so the notice still goes out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from datetime import timedelta

from broadcaster.channels.base import PostingChannel
from broadcaster.channels.mqtt import MqttNoticeChannel
from broadcaster.compose import Notice
from broadcaster.compose.routing import Route, route_of
from broadcaster.config import ChannelConfig, Config
from broadcaster.errors import TemplateProblem
from broadcaster.outbox import OutgoingMessage
from broadcaster.payloads import PayloadBuilder
from broadcaster.render import Renderer
from broadcaster.render.hashtags import Hashtags
from broadcaster.render.posts import FULL, posts_for, reply_target
from broadcaster.retained import SequenceClock, serialise, with_envelope

log = logging.getLogger(__name__)


def fallback_text(notice: Notice, language: str) -> str:
    """Last resort when no template renders: the facts, plainly, so the notice still goes out."""
    ctx = notice.contexts.get(language, {})
    for key in ("header", "line", "station"):
        value = ctx.get(key)
        if isinstance(value, str) and value:
            return f"{value} ({ctx.get('as_of', '')})"
    return f"{notice.kind.value} ({ctx.get('as_of', '')})"


def render_text(renderer: Renderer, notice: Notice, language: str, detail: int = FULL) -> str:
    """The notice's text in one language at one detail level, falling back rather than failing."""
    context = {**notice.contexts[language], "detail": detail}
    try:
        return renderer.render(notice.template_base, language, context, builtin=notice.kind.value)
    except TemplateProblem as problem:
        log.error("%s; sending the plain fallback text", problem)
        return fallback_text(notice, language)


class MessageRenderer:
    """Renders notices into outbox rows for the MQTT notice channel and every posting channel."""

    def __init__(
        self,
        config: Config,
        renderer: Renderer,
        builder: PayloadBuilder,
        seq: SequenceClock,
        posting: Sequence[tuple[PostingChannel, ChannelConfig]],
        hashtags: Hashtags | None = None,
        followed: Callable[[str, str, Collection[str]], bool] = lambda channel, notice_id, kinds: False,
    ) -> None:
        self.renderer = renderer
        self._hashtags = hashtags
        self._builder = builder
        self._seq = seq
        self._posting = list(posting)
        #: Each posting channel's filter (lines, stations, severity); the MQTT notice stream takes every notice.
        self.routes: dict[str, Route] = {channel.name: route_of(channel_config, builder.network)
                                         for channel, channel_config in self._posting}
        #: Whether a channel was queued the latest notice about an id, of one of these kinds, that the MQTT notice
        #: stream carried (`OutboxHistory.followed`): a channel that posted an alert hears its update and
        #: all-clear whatever its filter says of them now; one that posted only an earlier episode under the same
        #: id does not.
        self._followed = followed
        self._ttl = timedelta(seconds=config.mqtt.retained_ttl_seconds)
        self._default_language = config.network.default_language

    def _takes(self, channel: str, notice: Notice) -> bool:
        route = self.routes[channel]
        if route.takes(notice):
            return True
        continues = reply_target(notice) is not None and notice.kind.value in route.notices
        return continues and self._followed(channel, notice.id, route.notices)

    def messages(self, notice: Notice) -> list[OutgoingMessage]:
        """The outbox rows for one notice: the MQTT notice, and the post(s) of each posting channel whose filter
        takes it (`Route.takes`) or that posted the notice this one continues (an update, an all-clear, a
        correction: the alert may have moved to another line or changed its severity), limited to the notice's
        audience when it names one (a digest goes only to the channels its slot is due on). A channel that does
        not take it gets no row."""
        rendered: dict[tuple[str, int], str] = {}

        def render(language: str, detail: int) -> str:
            if (language, detail) not in rendered:
                rendered[(language, detail)] = render_text(self.renderer, notice, language, detail)
            return rendered[(language, detail)]

        def wanted(channel: str) -> bool:
            return notice.audience is None or channel in notice.audience

        messages: list[OutgoingMessage] = []
        if wanted(MqttNoticeChannel.name):
            texts = {lang: render(lang, FULL) for lang in notice.contexts}
            body = serialise(self._builder.notice(notice, texts))
            payload = with_envelope(body, self._seq.next(), notice.issued_at, notice.issued_at + self._ttl)
            messages.append(
                OutgoingMessage(notice.id, notice.version, MqttNoticeChannel.name, payload, int(notice.priority)))
        for channel, channel_config in self._posting:
            if not wanted(channel.name) or not self._takes(channel.name, notice):
                continue
            posts = posts_for(notice, channel_config, channel.profile, render, self._default_language,
                              self._hashtags)
            messages += [
                OutgoingMessage(notice.id, notice.version, channel.name, post.to_payload(), int(notice.priority),
                                part=post.part, starts_thread=post.reply_to_notice is None and post.part == 0)
                for post in posts
            ]
        return messages
