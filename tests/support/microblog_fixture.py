"""`serve_microblog`, behind the ``microblog`` fixture (tests/conftest.py): a started `MicroblogServer` of the
test's own, stopped (hangs released) afterwards."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .microblog_server import MicroblogServer

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["MicroblogServer", "serve_microblog"]


def serve_microblog(**options: Any) -> Iterator[MicroblogServer]:
    """Start a server with `MicroblogServer` options, yield it, and stop it whatever happened.

    Credentials are attributes: ``mastodon_token``, ``bluesky_identifier`` / ``bluesky_password`` /
    ``bluesky_did``, ``weibo_access_token``, ``webhook_secret``; ``url`` is the base URL of every platform.
    """
    server = MicroblogServer(**options)
    server.start()
    try:
        yield server
    finally:
        server.stop(force=True)
