"""The `[storage]` section: where the state database lives. Without it, SQLite in the state directory."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field

from broadcaster.config.base import SecretRef, Section, require_host_and_port


def _postgres_url(url: str) -> str:
    """postgresql://user@host:port/database, no password: it is a secret, given as storage.password."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("must start with postgresql:// (SQLite needs no [storage] section)")
    # Up to the last "@" of the whole URL, not of the host part: a password holding "/" or "?" splits the URL
    # before its "@", and the rest would pass for a path or a query (see _mqtt_url).
    user_info = url.partition("://")[2].rpartition("@")[0]
    if ":" in user_info or "password" in parts.query.lower():
        raise ValueError('must not carry a password; give it as storage.password, { env = "VAR" } or'
                         ' { file = "/run/secrets/..." }')
    require_host_and_port(parts)
    if parts.path.strip("/") == "":
        raise ValueError("names no database: postgresql://user@host:5432/broadcaster")
    return url


PostgresUrl = Annotated[str, AfterValidator(_postgres_url)]


class StorageConfig(Section):
    """A PostgreSQL database shared by every instance (docs/configuration.md, "[storage]")."""

    url: PostgresUrl
    #: The database user's password; None: none (a trusted or certificate login), or libpq's PGPASSFILE.
    password: SecretRef | None = None
    #: How long one statement or commit may take before the connection is cut and the call fails (the watchdog).
    statement_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5
