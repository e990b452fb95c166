"""Where a secret file named in the config is found, and how it is read.

A config names a secret file either by an absolute path or by a bare name. A bare name is looked up where
service managers put secrets, then beside the config file:

1. ``$CREDENTIALS_DIRECTORY/<name>``: systemd's credentials (``LoadCredential=mastodon_token:/etc/...`` in the
   unit; the directory is private to the service and exists only while it runs);
2. ``/run/secrets/<name>``: Docker and Podman secrets, Kubernetes secret volumes mounted there;
3. ``<config folder>/<name>``, like every other relative path in the config.

The first file that exists wins. When none does, the last candidate is returned so that the error names a real
place. A secret's value is the file's text without surrounding white space or a byte-order mark: a token file
saved with a trailing space or a Windows line ending must not turn into an invalid HTTP header, whose error
message would then carry the token into a log line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final

#: Where Docker, Podman and Kubernetes (by convention) mount secrets.
CONTAINER_SECRETS_DIR: Final = Path("/run/secrets")
#: What a bearer token may be made of (RFC 6750's b64token, generously: visible ASCII, no spaces).
_HEADER_TOKEN: Final = re.compile(r"[\x21-\x7e]+")


def secret_file_candidates(
    name: Path,
    *,
    config_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    secrets_dir: Path = CONTAINER_SECRETS_DIR,
) -> list[Path]:
    """The places `name` is looked for, in order (one place for an absolute path)."""
    if name.is_absolute():
        return [name]
    env = os.environ if environ is None else environ
    candidates = []
    credentials = env.get("CREDENTIALS_DIRECTORY")
    if credentials:
        candidates.append(Path(credentials) / name)
    candidates.append(secrets_dir / name)
    candidates.append((config_dir if config_dir is not None else Path.cwd()) / name)
    return candidates


def resolve_secret_file(
    name: Path,
    *,
    config_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    secrets_dir: Path = CONTAINER_SECRETS_DIR,
) -> Path:
    """The first of `secret_file_candidates` that is a file, else the last candidate."""
    candidates = secret_file_candidates(name, config_dir=config_dir, environ=environ, secrets_dir=secrets_dir)
    return next((path for path in candidates if path.is_file()), candidates[-1])


def read_secret_file(path: Path) -> str:
    """The secret in `path`: its UTF-8 text without a byte-order mark or surrounding white space.

    Raises:
        OSError: the file cannot be read (the caller names the config key).
    """
    return path.read_text(encoding="utf-8").lstrip("\ufeff").strip()


def is_header_safe(token: str) -> bool:
    """Whether `token` can go into an HTTP header as it is. A token that cannot makes the HTTP library raise an
    error quoting the whole header, token included, so check at start-up and report the config key instead."""
    return _HEADER_TOKEN.fullmatch(token) is not None
