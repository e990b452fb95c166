"""Decide what is said: turn state changes into notices, each with a template context per language.

Pure: no I/O, no clock (`now` is passed in). Not every change is worth a notice: retained MQTT state carries
every change anyway, while notices (micro-blog posts, the MQTT notice stream) are for what a commuter should
hear about: alerts appearing, changing and clearing; delays that no alert explains; a station crossing into
or out of heavy crowding.

One job per module: `notice` (what compose hands on, and the version format), `context` (the variables every
notice shares), `changes` (which changes become notices; corrections) and `digest` (the scheduled summary).
Import from here.
"""

from broadcaster.compose.changes import alert_lines, compose, compose_correction, title_lines
from broadcaster.compose.digest import compose_digest, digest_fingerprint
from broadcaster.compose.notice import (
    CORRECTION_VERSION_PREFIX,
    DEFAULT_EMERGENCY,
    ComposePolicy,
    EmergencyRule,
    Notice,
    NoticeKind,
    Priority,
    TemplateContext,
    is_emergency,
)

__all__ = [
    "CORRECTION_VERSION_PREFIX",
    "DEFAULT_EMERGENCY",
    "ComposePolicy",
    "EmergencyRule",
    "Notice",
    "NoticeKind",
    "Priority",
    "TemplateContext",
    "alert_lines",
    "compose",
    "compose_correction",
    "compose_digest",
    "digest_fingerprint",
    "is_emergency",
    "title_lines",
]
