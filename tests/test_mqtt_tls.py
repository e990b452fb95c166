"""The link's clients over TLS (`mqtts://`), against a real Mosquitto TLS listener: the buffered reads and joined
writes (broadcaster/channels/mqtt/reads.py, writes.py) go through `SSLSocket`, whose `recv` returns one TLS record
at a time and whose `send` either takes a whole buffer or asks for the very same bytes again. Bursts of publishes
are all acknowledged, large messages arrive whole, both ways at once."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import MosquittoBroker
from support.ports import free_port

from broadcaster.channels.mqtt.clients import new_client
from broadcaster.config import MqttConfig


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, str, Path]]:
    """A Mosquitto with a TLS listener on 127.0.0.1, its certificate made for this test (openssl)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    port = free_port()
    broker = MosquittoBroker(tmp_path / "mosquitto", persistence=False,
                             extra_config=f"listener {port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n")
    broker.start()
    try:
        yield broker, f"mqtts://127.0.0.1:{port}", cert
    finally:
        broker.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_bursts_and_large_messages_cross_tls_whole(
    tls_broker: tuple[MosquittoBroker, str, Path], protocol: str,
) -> None:
    _, url, cert = tls_broker
    config = MqttConfig(url=url, protocol=protocol, tls_ca_file=cert)  # type: ignore[arg-type]
    topic = f"tls-{uuid.uuid4().hex[:8]}"
    publisher = new_client(config, url, f"{topic}-pub", username=None, password=None)
    subscriber = new_client(config, url, f"{topic}-sub", username=None, password=None)
    large = [bytes([i]) * (150_000 + i) for i in range(12)]  # each many TLS records
    async with subscriber, publisher:
        await subscriber.subscribe(f"{topic}/large/#", qos=1)
        received: dict[str, str] = {}

        async def receive() -> None:
            async for message in subscriber.messages:
                assert isinstance(message.payload, bytes)
                received[str(message.topic)] = hashlib.sha256(message.payload).hexdigest()
                if len(received) == len(large):
                    return

        async with asyncio.timeout(60):
            reader = asyncio.create_task(receive())
            await asyncio.gather(
                *(publisher.publish(f"{topic}/burst/{i}", bytes([i % 256]) * (i % 3000), qos=1) for i in range(500)),
                *(publisher.publish(f"{topic}/large/{i}", payload, qos=1) for i, payload in enumerate(large)),
            )
            await reader
    assert received == {f"{topic}/large/{i}": hashlib.sha256(p).hexdigest() for i, p in enumerate(large)}


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@pytest.mark.parametrize("seed", range(2))
def test_joined_writes_retried_after_tls_asks_again_send_the_same_bytes_first(
    certificate: tuple[Path, Path], seed: int,
) -> None:
    """A TLS peer reading slowly, a small send buffer: `SSLSocket.send` asks again (SSLWantWriteError) many times,
    and more packets are queued before the retry, so the joined buffer is longer than the one refused. OpenSSL
    takes that only if it begins with the same bytes: the peer must receive exactly what paho queued."""
    import random
    import select
    import socket
    import ssl
    import struct
    import threading

    from paho.mqtt import client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from broadcaster.channels.mqtt import writes

    rnd = random.Random(seed)
    cert, key = certificate
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.load_verify_locations(cert)
    listener = socket.create_server(("127.0.0.1", 0))
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    raw.connect(listener.getsockname())
    accepted, _ = listener.accept()
    accepted.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    got = bytearray()

    failures: list[BaseException] = []

    def slow_peer() -> None:
        try:
            with server_context.wrap_socket(accepted, server_side=True) as peer:
                while data := peer.recv(rnd.choice([300, 5000, 30000])):
                    got.extend(data)
                peer.unwrap()  # answer the client's close, as TLS asks
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)

    thread = threading.Thread(target=slow_peer, daemon=True)
    thread.start()
    mine = client_context.wrap_socket(raw, server_hostname="127.0.0.1")
    mine.setblocking(False)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="tls-writes")
    client.on_socket_register_write = lambda *_: None
    assert writes.write_joined(client)
    client._sock = mine
    asked_again = 0
    real = client._sock_send

    errors: list[str] = []

    def counting(data: bytes | bytearray) -> int:
        nonlocal asked_again
        try:
            return real(data)
        except BlockingIOError:
            asked_again += 1
            raise
        except OSError as exc:
            errors.append(repr(exc))
            raise

    setattr(client, "_sock_send", counting)  # noqa: B010 (mypy: a method cannot be assigned)
    expected = bytearray()
    mid = 0

    def queue(count: int) -> None:
        nonlocal mid
        for _ in range(count):
            mid += 1
            body = struct.pack("!H", 1) + b"t" + struct.pack("!H", mid) + bytes([mid % 256]) * rnd.randint(0, 6000)
            length, encoded = len(body), bytearray()
            while True:
                byte, length = length % 128, length // 128
                encoded.append(byte | (0x80 if length else 0))
                if not length:
                    break
            packet = bytes([0x32]) + bytes(encoded) + body
            client._packet_queue(0x32, packet, mid, 1, paho.MQTTMessageInfo(mid))
            expected.extend(packet)

    try:
        queue(30)
        for _ in range(200_000):
            if not client.want_write():
                if mid > 100:
                    break
                queue(rnd.randint(1, 30))
            assert select.select([], [mine], [], 10)[1], "the socket never became writable again"
            before = asked_again
            assert client.loop_write() == 0, errors
            if asked_again > before:
                queue(rnd.randint(1, 5))  # more queued between "ask again" and the retry
        assert not client.want_write()
        assert asked_again > 0, "TLS never asked again: the test proves nothing"
    finally:
        if mine.fileno() != -1 and not failures:
            mine.setblocking(True)
            mine.unwrap()  # TLS's own close: the peer reads all that was sent, then the end
        mine.close()
        thread.join(timeout=20)
        listener.close()
    assert failures == []
    assert len(got) == len(expected)
    assert bytes(got) == bytes(expected)
