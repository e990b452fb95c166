"""Reading the TOML file: parse, validate, resolve relative paths against the file's folder."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from broadcaster.config.channels import AtomChannelConfig
from broadcaster.config.messages import first_error
from broadcaster.config.root import Config
from broadcaster.config.sections import MqttConfig
from broadcaster.errors import ConfigError


def _resolve_paths(config: Config, base: Path) -> Config:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    def resolve_url(url: str) -> str:
        # file:// URLs may be relative to the config file ("file:samples/alerts.pb" or "file://samples/...").
        parts = urlsplit(url)
        if parts.scheme != "file":
            return url
        raw = (parts.netloc + parts.path) if parts.netloc not in ("", "localhost") else parts.path
        return resolve(Path(raw)).as_uri()

    feeds = tuple(f.model_copy(update={"url": resolve_url(f.url)}) for f in config.feeds)
    templates = config.templates
    if templates.directory is not None:
        templates = templates.model_copy(update={"directory": resolve(templates.directory)})
    channels = tuple(
        c.model_copy(update={"path": resolve(c.path)}) if isinstance(c, AtomChannelConfig) else c
        for c in config.channels
    )
    mqtt = config.mqtt
    if mqtt.tls_ca_file is not None:
        mqtt = mqtt.model_copy(update={"tls_ca_file": resolve(mqtt.tls_ca_file)})
    return config.model_copy(
        update={
            "network": config.network.model_copy(update={"gtfs": resolve(config.network.gtfs)}),
            "state": config.state.model_copy(update={"directory": resolve(config.state.directory)}),
            "feeds": feeds,
            "templates": templates,
            "mqtt": mqtt,
            "channels": channels,
        }
    )


def with_mqtt_url(config: Config, url: str) -> Config:
    """`config` with another broker URL, validated as if it stood in the file (errors name `--mqtt-url`)."""
    try:
        # The one URL given stands for `url` and `urls` alike: the broadcaster uses that broker alone.
        mqtt = MqttConfig.model_validate({**config.mqtt.model_dump(exclude={"urls"}), "url": url})
    except ValidationError as exc:
        message = exc.errors(include_url=False, include_input=False)[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(config.source, "--mqtt-url", message) from None  # never the URL: it may hold a password
    return config.model_copy(update={"mqtt": mqtt})


def load_config(path: Path) -> Config:
    """Read and validate a config file.

    Raises:
        ConfigError: naming the file, the dotted key (``feeds[0].url``) and the bad value.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(path, "", "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"TOML syntax error: {exc}") from None
    return parse_config(data, path)


def parse_config(data: dict[str, Any], path: Path) -> Config:
    """Validate already-parsed TOML data read from `path` (used for errors and relative paths)."""
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise first_error(path, data, exc) from None
    config = _resolve_paths(config, path.parent)
    return config.model_copy(update={"source": path.resolve()})
