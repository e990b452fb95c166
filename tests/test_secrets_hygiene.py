"""Secrets never leave the process except to their own platform: sentinel values for the MQTT password (environment),
the Mastodon token (secret file), the Bluesky password, the Weibo token and the webhook secret are planted, and
`broadcaster` runs as an operator runs it (debug logging, a good run, failing runs) against a password-protected
Mosquitto and the loopback platforms. Every output is then searched: stdout, stderr and log lines, every file in the
state folder (the SQLite database and its WAL), the Atom file, every MQTT message, and what the platforms published.
The requests to the platforms themselves carry the credentials by design and are not searched."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest
from conftest import MosquittoFactory
from rig import Rig
from support import LoopbackHttpServer, MosquittoBroker
from support.gtfs_rt_builders import alert_entity, selector
from support.microblog_fixture import serve_microblog
from support.microblog_server import MicroblogServer
from support.mosquitto_passwd import write_password_file

READER_PASSWORD = "reader-password"


@dataclass
class Sentinels:
    """Distinct, unguessable values: a hit can only be a leak."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def value(self, what: str) -> str:
        return f"SENTINEL-{what}-{self.tag}"

    @property
    def mqtt(self) -> str:
        return self.value("mqtt-password")

    @property
    def mqtt_wrong(self) -> str:
        return self.value("mqtt-wrong-password")

    @property
    def mastodon(self) -> str:
        return self.value("mastodon-token")

    @property
    def bluesky(self) -> str:
        return self.value("bluesky-app-password")

    @property
    def weibo(self) -> str:
        return self.value("weibo-token")

    @property
    def webhook(self) -> str:
        return self.value("webhook-secret")

    def all(self) -> list[str]:
        return [self.mqtt, self.mqtt_wrong, self.mastodon, self.bluesky, self.weibo, self.webhook]


@pytest.fixture
def sentinels() -> Sentinels:
    return Sentinels()


@pytest.fixture
def platforms(sentinels: Sentinels) -> Iterator[MicroblogServer]:
    yield from serve_microblog(mastodon_token=sentinels.mastodon, bluesky_password=sentinels.bluesky,
                               weibo_access_token=sentinels.weibo, webhook_secret=sentinels.webhook)


@pytest.fixture
def locked_broker(tmp_path: Path, mosquitto_factory: MosquittoFactory, sentinels: Sentinels) -> MosquittoBroker:
    """A broker that only lets in `broadcaster` (with the sentinel password) and the test's `reader`."""
    passwd = write_password_file(tmp_path / "mosquitto.passwd",
                                 {"broadcaster": sentinels.mqtt, "reader": READER_PASSWORD})
    return mosquitto_factory(extra_config=f"allow_anonymous false\npassword_file {passwd}\n")


@contextlib.asynccontextmanager
async def every_mqtt_message(broker: MosquittoBroker) -> AsyncIterator[list[bytes]]:
    """Everything published on the broker (as topic + payload) while the context is open."""
    seen: list[bytes] = []
    client = aiomqtt.Client(broker.host, broker.port, username="reader", password=READER_PASSWORD,
                            identifier=f"hygiene-{uuid.uuid4().hex[:8]}", protocol=aiomqtt.ProtocolVersion.V5)

    fence_topic = f"hygiene-fence/{uuid.uuid4().hex}"
    fenced = asyncio.Event()

    async def receive() -> None:
        async for message in client.messages:
            if message.topic.value == fence_topic:
                fenced.set()
                continue
            payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
            seen.append(message.topic.value.encode() + b" " + bytes(payload))

    async with client:
        async with asyncio.timeout(10):
            await client.subscribe("#", qos=1)
        task = asyncio.create_task(receive())
        try:
            yield seen
        finally:
            # Everything the broker accepted before this fence reaches us before it: the broker delivers to a
            # subscriber in the order it took the messages in.
            async with asyncio.timeout(10):
                await client.publish(fence_topic, b"", qos=1)
                await fenced.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def run_broadcaster(*args: str, env: dict[str, str], timeout: float = 90) -> tuple[int, bytes]:  # noqa: ASYNC109
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broadcaster", "--log-level", "debug", *args,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    async with asyncio.timeout(timeout):
        out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out


def leaks(sentinels: Sentinels, where: str, data: bytes) -> list[str]:
    found = []
    for value in sentinels.all():
        for form in {value.encode(), value.encode("utf-16-le")}:
            if form in data:
                at = data.index(form)
                found.append(f"{where}: {value} near {data[max(0, at - 80):at + len(form) + 20]!r}")
    return found


def serve_alert(rig: Rig, alert_id: str, text: str) -> None:
    rig.serve_rt(alert_entity(alert_id, header={"zh": f"{text}（中文）", "en": text},
                              informed=[selector(route_id="1")], effect="SIGNIFICANT_DELAYS"))


async def test_planted_secrets_appear_in_no_output(
    tmp_path: Path, http_server: LoopbackHttpServer, locked_broker: MosquittoBroker, platforms: MicroblogServer,
    sentinels: Sentinels,
) -> None:
    rig = Rig(tmp_path, http_server, locked_broker.url, f"hygiene-{sentinels.tag}")
    token_file = tmp_path / "secrets" / "mastodon_token"
    token_file.parent.mkdir()
    token_file.write_text(sentinels.mastodon + "\n", encoding="utf-8")
    atom = tmp_path / "public" / "notices.atom"
    channels = [
        {"name": "mastodon", "kind": "mastodon", "url": platforms.url, "token": {"file": str(token_file)},
         "languages": ["zh", "en"], "timeout_seconds": 2},
        {"name": "bluesky", "kind": "bluesky", "url": platforms.url, "identifier": platforms.bluesky_identifier,
         "password": {"env": "T_BLUESKY"}, "languages": ["en"], "timeout_seconds": 2},
        {"name": "weibo", "kind": "weibo", "url": platforms.url, "access_token": {"env": "T_WEIBO"},
         "languages": ["zh"], "timeout_seconds": 2},
        {"name": "webhook", "kind": "webhook", "url": platforms.webhook_url("ops"), "secret": {"env": "T_HOOK"},
         "languages": ["zh"], "timeout_seconds": 2},
        {"name": "atom", "kind": "atom", "path": str(atom)},
    ]
    config = rig.write_config(
        # Dotted keys: the rig writes [mqtt] values as JSON scalars.
        mqtt={"username.env": "T_MQTT_USER", "password.env": "T_MQTT_PASSWORD", "connect_timeout_seconds": 3},
        channels=channels,
    )
    env = {**os.environ, "T_MQTT_USER": "broadcaster", "T_MQTT_PASSWORD": sentinels.mqtt,
           "T_BLUESKY": sentinels.bluesky, "T_WEIBO": sentinels.weibo, "T_HOOK": sentinels.webhook}
    outputs: list[tuple[str, bytes]] = []

    async with every_mqtt_message(locked_broker) as mqtt_messages:
        # 1. A good run: every channel posts.
        serve_alert(rig, "A-1", "Line 1 running slowly")
        rig.serve_flow({"S04": "STANDING_ROOM_ONLY"})
        status, out = await run_broadcaster("once", "-c", str(config), env=env)
        outputs.append(("command: good run", out))
        assert status == 0, out.decode(errors="replace")
        assert platforms.mastodon_statuses()
        assert platforms.bluesky_posts()
        assert platforms.weibo_statuses()
        assert platforms.webhook_deliveries("ops")

        # 2. Every platform fails its own way: rejected token (401), expired token, down (503), a server error.
        serve_alert(rig, "A-2", "Line 2 suspended")
        platforms.push_fault("mastodon", 401, count=5)
        platforms.expire_weibo_token()
        platforms.expire_bluesky_tokens(refresh=True)
        platforms.set_down("bluesky")
        platforms.push_fault("webhook", 500, count=5)
        status, out = await run_broadcaster("once", "-c", str(config), "--wait", "3", env=env)
        outputs.append(("command: failing platforms", out))
        assert status == 1, out.decode(errors="replace")
        for platform in ("mastodon", "bluesky", "webhook"):
            platforms.clear_faults(platform)
        platforms.expire_weibo_token(expired=False)

        # 3. The broker refuses a wrong password; a feed fails too.
        http_server.set_route("/rt.pb", b"<html>oops</html>", status=500)
        status, out = await run_broadcaster("once", "-c", str(config),
                                            env={**env, "T_MQTT_PASSWORD": sentinels.mqtt_wrong})
        outputs.append(("command: broker refuses", out))
        assert status == 1, out.decode(errors="replace")
        assert b"unreachable" in out

        # 4. `check` and a run that delivers what was left.
        serve_alert(rig, "A-2", "Line 2 suspended")
        status, out = await run_broadcaster("check", "-c", str(config), env=env)
        outputs.append(("command: check", out))
        assert status == 0, out.decode(errors="replace")
        status, out = await run_broadcaster("once", "-c", str(config), env=env)
        outputs.append(("command: recovery run", out))
        assert status == 0, out.decode(errors="replace")

    outputs += [(f"MQTT message {i}", message) for i, message in enumerate(mqtt_messages)]
    assert len(mqtt_messages) > 5
    for path in sorted((tmp_path / "state").rglob("*")):
        if path.is_file():
            outputs.append((f"state file {path.name}", path.read_bytes()))
    assert any(name == "state file broadcaster.db" for name, _ in outputs)
    outputs.append(("atom file", atom.read_bytes()))
    outputs.append(("config file", config.read_bytes()))
    for status_ in platforms.mastodon_statuses():
        outputs.append(("mastodon status", (status_.text + status_.spoiler_text).encode()))
    outputs += [("bluesky post", post.text.encode()) for post in platforms.bluesky_posts()]
    outputs += [("weibo status", weibo.text.encode()) for weibo in platforms.weibo_statuses()]
    outputs += [("webhook body", delivery.body) for delivery in platforms.webhook_deliveries("ops")]

    found = [leak for where, data in outputs for leak in leaks(sentinels, where, data)]
    assert not found, "\n".join(found)
    # The searches were real: the logs mention each channel, and the debug level was on.
    logs = b"".join(data for where, data in outputs if where.startswith("command"))
    for name in (b"mastodon", b"bluesky", b"weibo", b"webhook", b"DEBUG"):
        assert name in logs


async def test_a_malformed_token_does_not_leak_through_the_http_error(
    tmp_path: Path, http_server: LoopbackHttpServer, mosquitto: MosquittoBroker, platforms: MicroblogServer,
    sentinels: Sentinels, topic_prefix: str,
) -> None:
    rig = Rig(tmp_path, http_server, mosquitto.url, topic_prefix)
    serve_alert(rig, "A-1", "Line 1 running slowly")
    rig.serve_flow({"S04": "STANDING_ROOM_ONLY"})
    config = rig.write_config(channels=[
        {"name": "mastodon", "kind": "mastodon", "url": platforms.url, "token": {"env": "T_MASTODON"},
         "languages": ["en"], "timeout_seconds": 2},
    ])
    env = {**os.environ, "T_MASTODON": sentinels.mastodon + " "}  # a stray trailing space
    _status, out = await run_broadcaster("once", "-c", str(config), env=env)
    outputs = [("output", out)] + [
        (path.name, path.read_bytes()) for path in (tmp_path / "state").rglob("*") if path.is_file()
    ]
    found = [leak for where, data in outputs for leak in leaks(sentinels, where, data)]
    assert not found, "\n".join(found)
