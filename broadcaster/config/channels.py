"""The notice channels' sections (`[[channels]]`): what every channel has, and each kind's own settings."""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from broadcaster.config.base import ChannelName, LanguageCode, PositiveSeconds, SecretRef, Section, within

NoticeKindName = Literal[
    "alert_new", "alert_updated", "alert_resolved", "line_status", "crowding", "digest", "correction"
]
NOTICE_KINDS: tuple[NoticeKindName, ...] = (
    "alert_new", "alert_updated", "alert_resolved", "line_status", "crowding", "digest", "correction"
)


class QuietWindow(Section):
    """Local times between which a channel posts nothing routine (emergencies still go)."""

    start: time
    end: time

    def contains(self, at: time) -> bool:
        return within(self.start, self.end, at)


#: A GTFS id as a channel filter names it (a route id in `lines`, a station's stop id in `stations`).
FilterId = Annotated[str, Field(min_length=1, max_length=200)]
SeverityName = Literal["INFO", "WARNING", "SEVERE"]


def _no_repeats(ids: tuple[str, ...], field: str) -> tuple[str, ...]:
    """Refuse an id listed twice, naming both places (never the id: errors repeat no value from the file)."""
    first_at: dict[str, int] = {}
    for i, value in enumerate(ids):
        if value in first_at:
            raise ValueError(f"{field}[{i}] repeats {field}[{first_at[value]}]")
        first_at[value] = i
    return ids


class BudgetLimit(Section):
    """At most `posts` posts in any `seconds`-long window."""

    posts: Annotated[int, Field(ge=1)]
    seconds: PositiveSeconds


class _ChannelBase(Section):
    """Settings every notice channel has."""

    name: ChannelName
    #: Languages posted, in order; several are joined in one post, separated by a blank line.
    languages: tuple[LanguageCode, ...] | None = None  # None: the network's default language
    #: Which notice kinds this channel posts.
    notices: tuple[NoticeKindName, ...] = NOTICE_KINDS
    #: Only notices about these lines (GTFS route ids) or `stations` (station ids); both empty: every notice.
    #: A notice that names no line and no station concerns the whole network and passes (docs/channels.md).
    lines: tuple[FilterId, ...] = ()
    stations: tuple[FilterId, ...] = ()
    #: Only notices at least this severe (a digest, a crowding notice and an all-clear of delays are INFO).
    min_severity: SeverityName | None = None
    #: Only the notices the `[emergency]` rule makes emergencies: the alert, its updates, all-clear and correction.
    emergencies_only: bool = False
    timeout_seconds: PositiveSeconds = 15
    #: The account's posting budget; None: the platform's published limits (docs/channels.md).
    budget: tuple[BudgetLimit, ...] | None = None
    #: Digests: "always" posts every slot (a heartbeat); "on-change" skips a slot when nothing changed.
    digest_mode: Literal["always", "on-change"] = "on-change"
    #: No routine posts outside service hours (digests are skipped, other notices wait for the morning);
    #: emergencies still go.
    quiet_outside_service_hours: bool = False
    #: More quiet windows, local time.
    quiet: tuple[QuietWindow, ...] = ()
    #: Whether its posts carry the `[hashtags]` of the lines and stations a notice touches (when configured).
    hashtags: bool = True

    @field_validator("lines")
    @classmethod
    def _distinct_lines(cls, lines: tuple[str, ...]) -> tuple[str, ...]:
        return _no_repeats(lines, "lines")

    @field_validator("stations")
    @classmethod
    def _distinct_stations(cls, stations: tuple[str, ...]) -> tuple[str, ...]:
        return _no_repeats(stations, "stations")


class MastodonChannelConfig(_ChannelBase):
    kind: Literal["mastodon"]
    url: Annotated[str, Field(pattern=r"^https?://")]  # the instance, e.g. https://mastodon.example
    token: SecretRef
    #: Used when the instance does not say its max_characters (GET /api/v2/instance).
    max_characters: Annotated[int, Field(ge=50)] = 500
    #: Visibility per notice kind; kinds not named use `default_visibility`.
    visibility: dict[NoticeKindName, Literal["public", "unlisted", "private", "direct"]] = Field(default_factory=dict)
    default_visibility: Literal["public", "unlisted", "private", "direct"] = "public"
    #: Content warning on emergency notices (empty: none).
    emergency_spoiler_text: str = ""
    #: A status has one language: "combined" posts every language in one status (tagged with the first);
    #: "separate" posts one status per language, each tagged with its own, threaded in `languages` order.
    languages_per_status: Literal["combined", "separate"] = "combined"


class BlueskyChannelConfig(_ChannelBase):
    kind: Literal["bluesky"]
    url: Annotated[str, Field(pattern=r"^https?://")] = "https://bsky.social"  # the account's PDS
    identifier: str  # handle or DID
    password: SecretRef  # an app password


class WeiboChannelConfig(_ChannelBase):
    kind: Literal["weibo"]
    url: Annotated[str, Field(pattern=r"^https?://")] = "https://api.weibo.com"
    access_token: SecretRef
    #: A link on the app's registered safe domain: statuses/share refuses a status without one (error 10017),
    #: so it ends every post, and the length rule leaves room for it.
    link: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None


class WebhookChannelConfig(_ChannelBase):
    kind: Literal["webhook"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    #: Signs each body with HMAC-SHA256 (docs/channels.md); None sends unsigned.
    secret: SecretRef | None = None
    #: `broadcaster check` POSTs a signed dry run (header `X-Broadcaster-Dry-Run: 1`) that the receiver answers
    #: with 2xx without acting on it; only for receivers that support it, so off by default.
    check_dry_run: bool = False


class AtomChannelConfig(_ChannelBase):
    kind: Literal["atom"]
    #: The Atom file written on every post (relative to the config file); serve it with any web server.
    path: Path
    title: str = "Service updates"
    max_entries: Annotated[int, Field(ge=1, le=1000)] = 50


ChannelConfig = Annotated[
    MastodonChannelConfig | BlueskyChannelConfig | WeiboChannelConfig | WebhookChannelConfig | AtomChannelConfig,
    Field(discriminator="kind"),
]


#: The `kind` of each channel config above.
CHANNEL_KINDS = frozenset({"mastodon", "bluesky", "weibo", "webhook", "atom"})
