"""The production Mosquitto configuration (config/mosquitto/): its settings, and a real broker started from a copy
of it (without the TLS listener) proving that display and commuter accounts cannot publish or overwrite retained
state while the broadcaster account can."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import MosquittoFactory
from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from support import MosquittoBroker
from support.mosquitto_passwd import write_password_file

from broadcaster.config import MqttConfig
from broadcaster.resources import data_dir

CONFIG_DIR = data_dir("config") / "mosquitto"
CONF = CONFIG_DIR / "mosquitto.conf"
ACL = CONFIG_DIR / "acl"
PASSWORDS = {"broadcaster": "bc-secret-1", "display": "display-secret-2", "commuter": "commuter-secret-3"}
NOT_AUTHORIZED = 0x87
TIMEOUT_S = 5.0
#: A full refresh of a 500-station city (docs/design.md, "Measured facts").
FULL_REFRESH_MESSAGES = 1020

# Settings the test broker provides itself (its own loopback port, work folder, log and user) or the test sets.
_PROVIDED = frozenset({
    "listener", "persistence", "persistence_location", "autosave_interval", "log_dest", "log_type", "user",
    "password_file", "acl_file", "pid_file", "connection_messages",
})


def directives(text: str) -> dict[str, list[str]]:
    """Active directives of a mosquitto.conf: name -> values, in order."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            found.setdefault(name, []).append(value.strip())
    return found


def tls_block(text: str) -> str:
    match = re.search(r"^# >>> TLS listener.*?^# <<< TLS listener$", text, re.MULTILINE | re.DOTALL)
    assert match, "the TLS listener block must be marked '# >>> TLS listener' ... '# <<< TLS listener'"
    return match.group()


def test_production_config_closes_the_broker_and_sizes_its_queues() -> None:
    text = CONF.read_text(encoding="utf-8")
    conf = directives(text)
    assert conf["allow_anonymous"] == ["false"]
    assert conf["per_listener_settings"] == ["false"]
    assert conf["password_file"] == ["/etc/mosquitto/passwd"]
    assert conf["acl_file"] == ["/etc/mosquitto/acl"]
    assert "message_size_limit" not in conf
    assert int(conf["max_packet_size"][0]) > MqttConfig().max_payload_bytes
    assert int(conf["max_queued_messages"][0]) >= 2 * FULL_REFRESH_MESSAGES
    assert conf["persistence"] == ["true"]
    assert 1 <= int(conf["autosave_interval"][0]) <= 300
    # Plain MQTT only on loopback; the world gets TLS.
    plain, tls = conf["listener"]
    assert plain == "1883 127.0.0.1"
    assert tls == "8883"
    block = directives(tls_block(text))
    assert block["listener"] == ["8883"]
    assert {"certfile", "keyfile", "tls_version"} <= block.keys()


def test_example_acl_lets_only_the_broadcaster_write() -> None:
    rules: dict[str, list[str]] = {}
    user = ""
    for line in ACL.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user":
            user = words[1]
        else:
            rules.setdefault(user, []).append(" ".join(words))
    assert rules == {
        "broadcaster": ["topic readwrite metro/v1/#"],
        "display": ["topic read metro/v1/#"],
        "commuter": ["topic read metro/v1/#"],
    }


# -- a broker started from the production config ------------------------------------------------------------------


def config_copy(conf_text: str, password_file: Path) -> str:
    """The production config without its TLS block and without what the test broker provides, plus the test's
    password file and the production ACL itself."""
    kept = []
    for line in conf_text.replace(tls_block(conf_text), "").splitlines():
        name = line.strip().partition(" ")[0]
        if name and not name.startswith("#") and name not in _PROVIDED:
            kept.append(line)
    kept += [f"password_file {password_file}", f"acl_file {ACL}"]
    return "\n".join(kept)


@pytest.fixture
def production_broker(tmp_path: Path, mosquitto_factory: MosquittoFactory) -> MosquittoBroker:
    passwd = write_password_file(tmp_path / "passwd", PASSWORDS)
    return mosquitto_factory(extra_config=config_copy(CONF.read_text(encoding="utf-8"), passwd))


@dataclass
class Session:
    """One paho client on a background network thread, with blocking, bounded helpers."""

    client: Client
    acks: dict[int, ReasonCode] = field(default_factory=dict)
    messages: list[MQTTMessage] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> ReasonCode | None:
        """Publish at QoS 1 and return the PUBACK's reason code (paho says "Success" for MQTT 3.1.1's PUBACK)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published()
        with self.changed:
            self.changed.wait_for(lambda: info.mid in self.acks, TIMEOUT_S)
            return self.acks.get(info.mid)

    def retained(self, topic_filter: str, settle_s: float = 0.5) -> dict[str, bytes]:
        """The retained messages the broker replays on subscribing to `topic_filter`."""
        with self.changed:
            self.messages.clear()
        result, _ = self.client.subscribe(topic_filter, qos=1)
        assert result == 0
        with self.changed:
            while self.changed.wait(settle_s):
                pass
            found = {m.topic: bytes(m.payload) for m in self.messages if m.retain}
        self.client.unsubscribe(topic_filter)
        return found


@contextmanager
def session(
    broker: MosquittoBroker, user: str | None, password: str | None = None, *,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5, will: tuple[str, bytes] | None = None,
) -> Iterator[Session]:
    client = Client(CallbackAPIVersion.VERSION2, client_id=f"acl-{user}-{uuid.uuid4().hex[:8]}", protocol=protocol)
    s = Session(client)
    connected = threading.Event()
    refused: list[ReasonCode] = []

    def on_connect(c: Client, _: object, flags: ConnectFlags, code: ReasonCode, props: Properties | None) -> None:
        if code.is_failure:
            refused.append(code)
        connected.set()

    def on_publish(c: Client, _: object, mid: int, code: ReasonCode, props: Properties | None) -> None:
        with s.changed:
            s.acks[mid] = code
            s.changed.notify_all()

    def on_message(c: Client, _: object, message: MQTTMessage) -> None:
        with s.changed:
            s.messages.append(message)
            s.changed.notify_all()

    def on_disconnect(c: Client, _: object, flags: DisconnectFlags, code: ReasonCode, props: Properties | None) -> None:
        connected.set()

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    if user is not None:
        client.username_pw_set(user, password if password is not None else PASSWORDS[user])
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    try:
        assert connected.wait(TIMEOUT_S), "no CONNACK"
        if refused or not client.is_connected():
            raise ConnectionRefusedError(str(refused[0]) if refused else "disconnected")
        yield s
    finally:
        client.disconnect()
        client.loop_stop()


def accepted(code: ReasonCode | None) -> bool:
    """A PUBACK reason code below 0x80 is a success (0x10 "no matching subscribers" included)."""
    return code is not None and not code.is_failure


STATE = "metro/v1/stations/S01/crowding"
STATUS = "metro/v1/broadcaster/status"


def test_displays_and_commuters_cannot_publish_or_overwrite_retained_state(
    production_broker: MosquittoBroker,
) -> None:
    broker = production_broker
    with session(broker, "broadcaster") as bc:
        assert accepted(bc.publish(STATE, b'{"level":"FEW_SEATS_AVAILABLE"}'))
        assert accepted(bc.publish(STATUS, b'{"status":"online"}'))
    expected = {STATE: b'{"level":"FEW_SEATS_AVAILABLE"}', STATUS: b'{"status":"online"}'}

    for user in ("display", "commuter"):
        with session(broker, user) as reader:
            assert reader.retained("metro/v1/#") == expected  # they can read everything
            # MQTT 5: every write is refused with "not authorized", and nothing changes.
            assert reader.publish(STATE, b'{"level":"CRUSHED_STANDING_ROOM_ONLY"}') == NOT_AUTHORIZED
            assert reader.publish(STATE, b"") == NOT_AUTHORIZED  # an empty retained message would clear it
            assert reader.publish(STATUS, b'{"status":"offline"}') == NOT_AUTHORIZED
            assert reader.publish("metro/v1/lines/9/status", b'{"status":"suspended"}') == NOT_AUTHORIZED
            assert reader.publish("metro/v1/notices", b'{"text":"fake"}', retain=False) == NOT_AUTHORIZED
        # MQTT 3.1.1 has no reason codes: the broker acknowledges the publish (paho reports "Success") and
        # silently drops it. Only the retained state, read below, tells.
        with session(broker, user, protocol=MQTTProtocolVersion.MQTTv311) as old:
            assert accepted(old.publish(STATE, b'{"level":"EMPTY"}'))
            assert accepted(old.publish("metro/v1/lines/9/status", b'{"status":"suspended"}'))
        # A Last Will on the status topic, set by a display that then vanishes, is not published either.
        with session(broker, user, will=(STATUS, b'{"status":"offline"}')) as vanishing:
            sock = vanishing.client.socket()
            assert sock is not None
            sock.close()  # no DISCONNECT: the broker would send the Will
        with session(broker, "commuter") as observer:
            assert observer.retained("metro/v1/#") == expected

    # The broadcaster can overwrite and clear its own state, and its Last Will does reach the status topic (so the
    # displays' vanishing above was a real test of the ACL, not of a Will that never fires).
    with session(broker, "broadcaster") as bc:
        assert accepted(bc.publish(STATE, b'{"level":"STANDING_ROOM_ONLY"}'))
        assert accepted(bc.publish(STATUS, b""))
    with session(broker, "display") as display:
        assert display.retained("metro/v1/#") == {STATE: b'{"level":"STANDING_ROOM_ONLY"}'}
    with session(broker, "broadcaster", will=(STATUS, b'{"status":"offline"}')) as bc:
        sock = bc.client.socket()
        assert sock is not None
        sock.close()
    with session(broker, "display") as display:
        assert display.retained("metro/v1/#") == {
            STATE: b'{"level":"STANDING_ROOM_ONLY"}', STATUS: b'{"status":"offline"}'
        }


def test_anonymous_and_wrong_passwords_are_refused(production_broker: MosquittoBroker) -> None:
    for user, password in ((None, None), ("display", "wrong"), ("nobody", "x")):
        with pytest.raises(ConnectionRefusedError), session(production_broker, user, password):
            pass

