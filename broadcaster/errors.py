"""Every error broadcaster raises on purpose, with its data kept as attributes.

    BroadcasterError
    ├── ConfigError            the config file is wrong (.file, .key, .value)
    ├── NetworkDataError       the static GTFS is unusable (.source, .file, .line)
    ├── TemplateProblem        a template does not compile or render (.template, .line)
    ├── FeedError              a fetch or parse failed; the last good state is kept (.feed)
    │   ├── FetchError         transport: status, timeout, size cap (.status)
    │   ├── FeedFormatError    the bytes are not a valid feed (.reason)
    │   └── StaleFeedError     the feed's own timestamp is too old, in the future or going backwards
    ├── StoreError             the state database cannot be used (.path)
    │   └── DatabaseTooNew     its schema version is newer than this release knows (.version, .newest)
    ├── IdentityConflict       another installation is online on the broker with our MQTT client id
    ├── RequestInvalid         an operator request has invalid fields (.problems: field and message each)
    ├── UnknownNotice          an operator request names a notice that was never issued (.notice_id)
    ├── IdempotencyKeyReused   an idempotency key comes back with a different request (.key)
    ├── RequestFailed          an operator request queued for the running broadcaster failed or was not taken
    └── DeliveryError          a channel could not deliver a message (.channel)
        ├── TransientDeliveryError   try again later (.retry_after seconds or None, .maybe_delivered)
        └── PermanentDeliveryError   retrying will not help: park and report

Callers catch the narrowest type they can act on; nobody parses messages.

Not here, on purpose: the render sandbox's `TemplateLimitExceeded` and `UnsafeTemplateError` (render/sandbox/)
must be Jinja2's own `SecurityError` and `TemplateSyntaxError` for Jinja2 to handle them, and never leave the
render engine, which turns them into `TemplateProblem`; and module-private signals (`_InvalidAlert`, `_TooLarge`)
that never leave their module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


class BroadcasterError(Exception):
    """Base of every error raised on purpose."""


class ConfigError(BroadcasterError):
    """The configuration is invalid. `key` is a dotted path such as ``feeds[1].url``."""

    def __init__(self, file: Path | str, key: str, message: str, value: object = None) -> None:
        self.file = str(file)
        self.key = key
        self.value = value
        self.message = message
        where = f"{self.file}: {key}" if key else self.file
        super().__init__(f"{where}: {message}")


class NetworkDataError(BroadcasterError):
    """The operator's static GTFS cannot be read."""

    def __init__(self, source: Path | str, message: str, file: str | None = None, line: int | None = None):
        self.source = str(source)
        self.file = file
        self.line = line
        where = self.source + (f"/{file}" if file else "") + (f":{line}" if line is not None else "")
        super().__init__(f"{where}: {message}")


class TemplateProblem(BroadcasterError):
    """A template failed to compile or render; `line` is the template line when known."""

    def __init__(self, template: str, message: str, line: int | None = None) -> None:
        self.template = template
        self.line = line
        where = f"{template}:{line}" if line is not None else template
        super().__init__(f"template {where}: {message}")


class FeedError(BroadcasterError):
    """A feed could not be used this time. The previous good state stays in force."""

    def __init__(self, feed: str, message: str) -> None:
        self.feed = feed
        self.reason = message
        super().__init__(f"feed {feed!r}: {message}")


class FetchError(FeedError):
    """The transport failed: connection, HTTP status, deadline or size cap."""

    def __init__(self, feed: str, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(feed, message)


class FeedFormatError(FeedError):
    """The body is not a valid feed of the declared kind."""


class StaleFeedError(FeedError):
    """The feed's own timestamp is unusable: too old, in the future, or older than what we already have."""


class StoreError(BroadcasterError):
    """The state database cannot be opened or written."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {message}")


class DatabaseTooNew(StoreError):
    """The database was migrated by a newer release: this one cannot know what changed, so it reads nothing.

    The command line exits 2 (the operator picked the wrong release), as for a configuration error."""

    def __init__(self, path: Path | str, version: int, newest: int) -> None:
        self.version = version
        self.newest = newest
        way_back = (  # PostgreSQL keeps no copy: the operator's backup is the way back
            "restore the backup taken before that release migrated it" if str(path).startswith("postgresql://")
            else f"put back the copy that release kept beside it ({Path(path).name}.before-v{version}, the database"
                 " as it was before)")
        super().__init__(path, (
            f"the database is at schema version {version}, newer than this release knows (up to {newest}): run"
            f" the release that migrated it, or {way_back} to run this one"))


class Fenced(StoreError):
    """A leader-only transaction found the lease held by another instance, or by this one under another epoch
    (a takeover happened): nothing of the transaction was written. The instance must stop acting as leader."""

    def __init__(self, path: Path | str, expected: object, found: object) -> None:
        self.expected = expected
        self.found = found
        super().__init__(path, f"fenced: this instance holds {expected}, the lease row says {found}; nothing written")


class LeaseHeld(BroadcasterError):
    """A one-shot run (`once`) on a deployment with `[ha]` could not take the leader lease: another instance leads
    (or the database could not be asked), and a run beside it would be a second leader."""

    def __init__(self, instance: str) -> None:
        super().__init__(f"instance {instance} could not take the leader lease: another instance leads (or the"
                         " database did not answer); nothing was polled or sent")


class LeaseLost(BroadcasterError):
    """This instance led and lost its lease (or could not renew it in time, broadcaster/ha): it stopped sending
    at once and exits with status 75, to come back as a standby."""

    def __init__(self, instance: str) -> None:
        super().__init__(f"instance {instance} lost the leader lease; stopped sending, exiting to restart as a"
                         " standby")


class IdentityConflict(BroadcasterError):
    """Another broadcaster (another state directory) is online with our MQTT client id.

    Starting anyway would take its broker session over, and the two would then knock each other off in turn,
    both posting from two outboxes.
    """

    def __init__(self, client_id: str, instance: str, since: str, will_delay_seconds: int) -> None:
        self.client_id = client_id
        self.instance = instance
        super().__init__(
            f"another broadcaster is online on the broker with mqtt.client_id {client_id!r} (instance {instance},"
            f" online since {since}); refusing to start a second one. Give each installation its own client_id;"
            f" if that one was stopped or killed, the broker reports it offline within {will_delay_seconds} s"
            " (mqtt.will_delay_seconds) and this one can then start"
        )


class RequestInvalid(BroadcasterError):
    """An operator request (command line or admin API) is refused; `problems` names each bad field.

    Each problem is ``{"field": ..., "message": ...}`` with the field as a path of the request body
    (``texts.en``, ``line_ids[1]``, ``until``): the admin API answers them as its 422 ``errors``, the command
    line prints them against its flags.
    """

    def __init__(self, problems: Sequence[Mapping[str, str]]) -> None:
        self.problems: tuple[dict[str, str], ...] = tuple(dict(p) for p in problems)
        super().__init__("; ".join(f"{p['field']}: {p['message']}" for p in self.problems))


class UnknownNotice(BroadcasterError):
    """A correction names a notice that was never issued."""

    def __init__(self, notice_id: str) -> None:
        self.notice_id = notice_id
        super().__init__(f"no notice {notice_id!r} was ever issued")


class IdempotencyKeyReused(BroadcasterError):
    """An idempotency key (admin API `Idempotency-Key`, `--idempotency-key`) came with a different request."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__("this idempotency key was used for a different request within the last 24 hours;"
                         " use a new key for a new request")


class RequestFailed(BroadcasterError):
    """The broadcaster could not carry out an operator request (`announce`, `correct` on the command line)."""


class DeliveryError(BroadcasterError):
    """A channel failed to deliver one message."""

    def __init__(self, channel: str, message: str) -> None:
        self.channel = channel
        self.reason = message
        super().__init__(f"channel {channel!r}: {message}")


class TransientDeliveryError(DeliveryError):
    """Worth retrying; `retry_after` is the earliest sensible retry in seconds, when the peer said so.

    `maybe_delivered` is True when the attempt may have reached the platform (a timeout, a connection that
    broke after sending, a 500): sending again could duplicate the post unless the platform deduplicates.
    """

    def __init__(
        self, channel: str, message: str, retry_after: float | None = None, *, maybe_delivered: bool = False
    ) -> None:
        self.retry_after = retry_after
        self.maybe_delivered = maybe_delivered
        super().__init__(channel, message)


class PermanentDeliveryError(DeliveryError):
    """Retrying the same message will fail again: the outbox parks it and reports it."""
