"""Finding the real programs the tests run (mosquitto, nats-server, chromium): a missing one fails the tests
with how to install it, never skips them."""

from __future__ import annotations

import os
import shutil


def find_binary(name: str, env: str, known: tuple[str, ...], package: str, missing: type[Exception]) -> str:
    """`name`'s path: $`env`, then PATH, then the `known` locations (Debian puts servers in /usr/sbin, which is not
    on a normal user's PATH).

    Raises:
        missing: none of them is an executable file; the message says where it looked and what to install.
    """
    for candidate in (os.environ.get(env, ""), shutil.which(name) or "", *known):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise missing(f"{name} not found (looked at ${env}, PATH and {', '.join(known)}); install it, e.g. "
                  f"`apt-get install {package}`")
