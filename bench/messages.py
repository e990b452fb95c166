"""A list of MQTT messages on disk: what the broadcaster published, for the baselines to publish again."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

_HEAD = struct.Struct("!HIi")  # topic length, payload length, expiry (-1: none)


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    expiry_s: int | None


def save(path: Path, messages: list[Message]) -> None:
    parts: list[bytes] = []
    for m in messages:
        topic = m.topic.encode()
        parts += [_HEAD.pack(len(topic), len(m.payload), -1 if m.expiry_s is None else m.expiry_s), topic, m.payload]
    path.write_bytes(b"".join(parts))


def load(path: Path) -> list[Message]:
    data = path.read_bytes()
    out: list[Message] = []
    at = 0
    while at < len(data):
        topic_len, payload_len, expiry = _HEAD.unpack_from(data, at)
        at += _HEAD.size
        topic = data[at : at + topic_len].decode()
        at += topic_len
        out.append(Message(topic, data[at : at + payload_len], None if expiry < 0 else expiry))
        at += payload_len
    return out


def retopic(messages: list[Message], old_prefix: str, new_prefix: str) -> list[Message]:
    """The same messages under another topic prefix (fresh retained topics for each baseline run)."""
    return [Message(new_prefix + m.topic.removeprefix(old_prefix), m.payload, m.expiry_s) for m in messages]
