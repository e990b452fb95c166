"""What every config section shares: strictness, the shared value types and validators, and secrets."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from datetime import time
from pathlib import Path
from typing import Annotated
from urllib.parse import SplitResult

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from broadcaster.errors import ConfigError


class Secret:
    """A secret value whose repr and str are masked, so it never reaches a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


class Section(BaseModel):
    # Unknown keys are errors: a typo ("pol_seconds") must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveSeconds = Annotated[float, Field(gt=0)]

ChannelName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


def _language_code(value: str) -> str:
    """A configured language is a primary language subtag, the form texts are keyed by (a feed's "zh-Hans-CN"
    becomes "zh"): any other value would match no text, and it names template files ({kind}.{language}.j2).
    The message never shows the value: a value in the file may be a secret written in the wrong place."""
    if not re.fullmatch(r"[a-z]{2,3}", value):
        raise ValueError('must be a language code: two or three lower-case letters, such as "zh" or "en"')
    return value


LanguageCode = Annotated[str, AfterValidator(_language_code)]


def within(start: time, end: time, at: time) -> bool:
    """True from `start` (inclusive) to `end` (exclusive); when `end` comes first the window runs past midnight."""
    if start <= end:
        return start <= at < end
    return at >= start or at < end


class KeyedValueError(ValueError):
    """A rule spanning keys, broken at one of them: `at` is that key's place inside the section the validator
    checks (("channels", 0, "languages", 1) under the root), so the operator's message names it exactly."""

    def __init__(self, at: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.at = at


def require_host_and_port(parts: SplitResult) -> None:
    """A server URL's host is named and its port, if any, is a number from 0 to 65535 (the broker's, the
    database's)."""
    if not parts.hostname:
        raise ValueError("names no host")
    try:
        parts.port  # noqa: B018  # raises on a port that is no number or out of range
    except ValueError:
        raise ValueError("has a port that is no number from 0 to 65535") from None


def require_unique(values: Sequence[str], field: str, section: str) -> None:
    """Refuse the first value met a second time, naming both places: "the name of feeds[2] is used twice
    (feeds[0] has it too)"."""
    first_at: dict[str, int] = {}
    for i, value in enumerate(values):
        if value in first_at:
            raise ValueError(f"the {field} of {section}[{i}] is used twice ({section}[{first_at[value]}] has it too)")
        first_at[value] = i


class SecretRef(Section):
    """Where a secret comes from: an environment variable or a file (systemd credentials, Docker secrets)."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' or 'file'")
        return self

    def load(self, config_dir: Path | None = None) -> Secret | None:
        """The secret's value without surrounding white space, or None when the variable is unset.

        A relative file name is looked for in `$CREDENTIALS_DIRECTORY` (systemd), then `/run/secrets`
        (containers), then `config_dir`. A named file that cannot be read raises OSError.
        """
        from broadcaster.secretfiles import read_secret_file, resolve_secret_file

        if self.env is not None:
            value = os.environ.get(self.env)
            return Secret(value.strip()) if value is not None else None
        assert self.file is not None
        return Secret(read_secret_file(resolve_secret_file(self.file, config_dir=config_dir)))

    def require(self, source: Path, key: str) -> Secret:
        """The secret's value, or a ConfigError naming the config key (never the value) when it cannot be had."""
        try:
            secret = self.load(source.parent)
        except OSError as exc:
            raise ConfigError(source, key, f"cannot read {self.file}: {exc.strerror}") from None
        if secret is None:
            raise ConfigError(source, key, f"environment variable {self.env} is not set")
        return secret

