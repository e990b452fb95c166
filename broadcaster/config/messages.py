"""A validation error as the operator's one line: the file, the dotted key, what is wrong; never a value from
the file, which may be a secret written where it does not belong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from broadcaster.config.base import KeyedValueError
from broadcaster.config.channels import CHANNEL_KINDS
from broadcaster.errors import ConfigError


def _key_path(location: tuple[int | str, ...]) -> str:
    """pydantic's ('feeds', 1, 'url') -> 'feeds[1].url'."""
    out = ""
    for part in location:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _lookup(data: Any, location: tuple[int | str, ...]) -> Any:
    for part in location:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


#: Where secrets stand: (section, key) under `[mqtt]`, a channel or an admin token.
_SECRET_KEYS = frozenset({"username", "password", "token", "access_token", "secret"})


def _secret_location(location: tuple[int | str, ...]) -> tuple[int | str, ...] | None:
    """The location of the secret field `location` is at or inside, or None if it is not a secret's."""
    for end in range(len(location), 0, -1):
        head, key = location[: end - 1], location[end - 1]
        if key not in _SECRET_KEYS:
            continue
        if head in (("mqtt",), ("storage",)) or (
            len(head) == 2 and head[0] == "channels" and isinstance(head[1], int)) or (
            len(head) == 3 and head[:2] == ("admin", "tokens") and isinstance(head[2], int) and key == "token"
        ):
            return location[:end]
    return None


def _how_to_give(data: dict[str, Any], location: tuple[int | str, ...]) -> str:
    """How to write the secret at `location`: e.g. token = { env = "METRO_MASTODON_TOKEN" }."""
    key = str(location[-1])
    channel = _lookup(data, location[:2]) if location[0] == "channels" else None
    kind = channel.get("kind") if isinstance(channel, dict) else None
    owner = kind if kind in CHANNEL_KINDS else {"mqtt": "mqtt", "admin": "admin", "channels": "channel",
                                                 "storage": "storage"}.get(str(location[0]), "metro")
    name = f"{owner}_{key}"
    return (f'a secret never stands in the file: write {key} = {{ env = "METRO_{name.upper()}" }} or '
            f'{key} = {{ file = "/run/secrets/{name}" }}')


def _given(value: object) -> str:
    """What kind of value the file holds, in TOML's words (the value itself is never shown: it may be a secret)."""
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "a table"}
    return next((name for kind, name in kinds.items() if isinstance(value, kind)), "a date or time")


def first_error(path: Path, data: dict[str, Any], exc: ValidationError) -> ConfigError:
    """The first validation error as one line naming the file and the key, never echoing a value from the file:
    a value may be a secret written where it does not belong (a token in `token = "..."`, a password in a URL).
    """
    error = exc.errors(include_url=False, include_input=False)[0]
    # Drop pydantic's internal step names ('function-after[...]') and the channel kind it inserts after an
    # index ('channels', 0, 'mastodon', 'token'): the operator wrote channels[0].token.
    location: tuple[int | str, ...] = ()
    for part in error["loc"]:
        if isinstance(part, str) and ("[" in part or (location and isinstance(location[-1], int)
                                                      and part in CHANNEL_KINDS)):
            continue
        location += (part,)
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        location += ("kind",)
    keyed = error.get("ctx", {}).get("error")
    if isinstance(keyed, KeyedValueError):  # a rule spanning keys names the one that breaks it
        location += keyed.at
    key = _key_path(location)
    secret = _secret_location(location)
    if error["type"] == "extra_forbidden":
        hint = f"; {_how_to_give(data, secret)}" if secret and len(location) > len(secret) else ""
        return ConfigError(path, key, f"unknown key (check the spelling; see config/example.toml){hint}")
    if error["type"] == "missing":
        return ConfigError(path, key, "is required but missing")
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        kinds = ", ".join(sorted(CHANNEL_KINDS))
        return ConfigError(path, key, f"must be one of {kinds}")
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "tuple_type":
        message = "must be a list"  # a TOML array; pydantic says "a valid tuple", which no operator wrote
    if error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        message = "must be a table"  # pydantic says "instance of SecretRef", which no operator wrote
    if error["type"].endswith("_type") or error["type"].endswith("_parsing"):
        message += f" ({_given(_lookup(data, location))} was given)"
    if secret is not None:
        message += f"; {_how_to_give(data, secret)}"
    return ConfigError(path, key, message)
