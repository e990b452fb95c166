"""Builds the configured notice channels, reading their secrets from the environment or secret files."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from broadcaster.channels.atom import AtomChannel
from broadcaster.channels.base import PostingChannel
from broadcaster.channels.bluesky import BlueskyChannel
from broadcaster.channels.http import HttpChannelClient
from broadcaster.channels.mastodon import MastodonChannel
from broadcaster.channels.webhook import WebhookChannel
from broadcaster.channels.weibo import WeiboChannel
from broadcaster.config import (
    AtomChannelConfig,
    BlueskyChannelConfig,
    ChannelConfig,
    Config,
    MastodonChannelConfig,
    Secret,
    SecretRef,
    WebhookChannelConfig,
    WeiboChannelConfig,
)
from broadcaster.errors import ConfigError
from broadcaster.render.length import PlatformProfile, bluesky, mastodon, weibo
from broadcaster.secretfiles import is_header_safe
from broadcaster.store import KeyValueStore


def _secret(config: Config, index: int, key: str, ref: SecretRef, *, header: bool = False) -> Secret:
    """A channel's secret; errors name the config key and never the value."""
    where = f"channels[{index}].{key}"
    secret = ref.require(config.source, where)
    if header and not is_header_safe(secret.reveal()):
        # An HTTP library refusing such a header quotes it whole, token included: refuse it here instead.
        raise ConfigError(config.source, where, "contains spaces or characters an HTTP header cannot carry")
    return secret


def default_profile(c: ChannelConfig) -> PlatformProfile | None:
    """The channel's length rule as configured, without asking the platform (for `preview`)."""
    if isinstance(c, MastodonChannelConfig):
        return mastodon(c.max_characters)
    if isinstance(c, BlueskyChannelConfig):
        return bluesky()
    if isinstance(c, WeiboChannelConfig):
        return weibo()
    return None


def build_channel(
    config: Config, index: int, http: HttpChannelClient, clock: Callable[[], datetime],
    sessions: KeyValueStore | None = None,
) -> PostingChannel:
    """The channel for `config.channels[index]`.

    Raises:
        ConfigError: a secret it needs is missing.
    """
    c: ChannelConfig = config.channels[index]
    if isinstance(c, MastodonChannelConfig):
        return MastodonChannel(c, http, _secret(config, index, "token", c.token, header=True), clock)
    if isinstance(c, BlueskyChannelConfig):
        return BlueskyChannel(c, http, _secret(config, index, "password", c.password), clock, sessions)
    if isinstance(c, WeiboChannelConfig):
        return WeiboChannel(c, http, _secret(config, index, "access_token", c.access_token), clock)
    if isinstance(c, WebhookChannelConfig):
        secret = _secret(config, index, "secret", c.secret) if c.secret is not None else None
        return WebhookChannel(c, http, secret, clock)
    if isinstance(c, AtomChannelConfig):
        return AtomChannel(c, clock=clock)
    raise AssertionError(f"unknown channel config {type(c).__name__}")
