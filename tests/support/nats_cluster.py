"""A real NATS cluster on loopback: N `nats-server` processes (default 3), routed together, each with JetStream and
MQTT enabled, for the broker-layer tests and the fan-out bench.

    with NatsCluster(tmp_path) as cluster:
        cluster.mqtt_urls  # ["mqtt://127.0.0.1:p0", ...], one per node
        cluster.kill(0)    # SIGKILL node 0
        cluster.start(0)   # back on the same ports with the same store: it rejoins the cluster

NATS speaks MQTT 3.1.1 only (clients must connect with protocol 3.1.1). Its MQTT layer keeps retained messages,
sessions and QoS 1 messages in JetStream streams; `stream_replicas` makes them replicated over the nodes, so a
retained message survives the loss of the node it was published on. Readiness is an event, not a sleep: each
node's monitoring endpoint `/healthz` answering 200 (routes up, JetStream meta leader known), then its MQTT port
answering an MQTT CONNECT with an accepted CONNACK, every wait bounded by `startup_timeout_s`.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import IO, TYPE_CHECKING, Self

from .binaries import find_binary
from .ports import free_port

if TYPE_CHECKING:
    from pathlib import Path

# Debian installs the server in /usr/sbin, which is not on a normal user's PATH.
_KNOWN_LOCATIONS = ("/usr/sbin/nats-server", "/usr/local/bin/nats-server", "/usr/bin/nats-server")


class NatsServerNotFound(RuntimeError):
    """No nats-server binary on this machine."""


def find_nats_server() -> str:
    """The nats-server binary: $NATS_SERVER, then PATH, then the usual locations."""
    return find_binary("nats-server", "NATS_SERVER", _KNOWN_LOCATIONS, "nats-server", NatsServerNotFound)


def mqtt_connect_probe(host: str, port: int, client_id: str, *, timeout_s: float) -> int | None:
    """Send an MQTT 3.1.1 CONNECT (clean session) and return the CONNACK's return code (0: accepted), None when the
    answer is not a CONNACK. Raises OSError when the socket fails or times out."""
    ident = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"  # protocol name, level 4 (3.1.1), clean session, keep-alive 60 s
    payload = len(ident).to_bytes(2, "big") + ident
    body = variable + payload
    packet = b"\x10" + bytes([len(body)]) + body  # the body is < 128 bytes: one length byte
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(packet)
        answer = b""
        while len(answer) < 4:
            chunk = sock.recv(4 - len(answer))
            if not chunk:
                return None
            answer += chunk
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    return answer[3] if answer[:2] == b"\x20\x02" else None


class NatsNode:
    """One node's ports, config, store directory and process."""

    host = "127.0.0.1"

    def __init__(self, index: int, workdir: Path) -> None:
        self.index = index
        self.name = f"n{index}"
        self.workdir = workdir
        self.client_port = free_port(self.host)
        self.cluster_port = free_port(self.host)
        self.http_port = free_port(self.host)
        self.mqtt_port = free_port(self.host)
        self.config_path = workdir / "nats.conf"
        self.log_path = workdir / "nats.log"
        self.store_dir = workdir / "jetstream"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{self.host}:{self.mqtt_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def write_config(self, routes: list[int] | None, cluster_name: str, replicas: int) -> None:
        """Write the node's config; `routes` None for a lone node (no cluster block: JetStream runs standalone)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        route_list = ", ".join(f'"nats-route://{self.host}:{port}"' for port in routes or [])
        cluster = f"""\
cluster {{
  name: "{cluster_name}"
  listen: "{self.host}:{self.cluster_port}"
  routes: [{route_list}]
}}
""" if routes is not None else ""
        self.config_path.write_text(
            f"""\
server_name: "{self.name}"
listen: "{self.host}:{self.client_port}"
http: "{self.host}:{self.http_port}"
jetstream {{
  store_dir: "{self.store_dir}"
  max_memory_store: 64MB
  max_file_store: 256MB
}}
{cluster}mqtt {{
  listen: "{self.host}:{self.mqtt_port}"
  # Retained messages, sessions and QoS 1 messages live in JetStream streams; replicate them over the nodes.
  stream_replicas: {replicas}
  # Each QoS 1 subscription of an MQTT client is a JetStream consumer. Replicated on three nodes, creating one
  # takes about a second on a small machine and a reconnecting display waits for it; kept on the node the client
  # is on and in memory, it is immediate. A consumer dies with its node; the client, reconnecting elsewhere,
  # makes a new one (clean sessions: nothing is lost that the retained state does not bring back).
  consumer_replicas: 1
  consumer_memory_storage: true
}}
""",
            encoding="utf-8",
        )

    def start(self, binary: str) -> None:
        if self.running:
            raise RuntimeError(f"nats node {self.name} is already running")
        self.close_log()
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [binary, "-c", str(self.config_path)], stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
        )

    def wait_until_ready(self, deadline: float) -> None:
        """Return once the node is healthy (`/healthz`: routes up, JetStream meta leader known) and its MQTT
        listener answers a CONNECT with CONNACK accepted; bounded by `deadline`."""
        self._wait_healthy(deadline)
        self._wait_mqtt_connack(deadline)

    def _wait_healthy(self, deadline: float) -> None:
        # The full check, not `?js-enabled-only=true`: that one answers 200 before the JetStream meta leader is
        # elected, and an MQTT client connecting then waits 4 s for its session stream and is refused.
        url = f"http://{self.host}:{self.http_port}/healthz"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise RuntimeError(f"nats node {self.name} exited with status {code}:\n{self.log_text()}")
            try:
                with opener.open(url, timeout=max(0.1, min(1.0, deadline - time.monotonic()))) as answer:
                    if answer.status == 200:
                        return
                    last = f"HTTP {answer.status}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            # The endpoint is polled: nats-server offers no readiness signal to block on. The deadline bounds it.
            time.sleep(0.05)
        raise TimeoutError(f"nats node {self.name} not healthy in time ({last}):\n{self.log_text()[-4000:]}")

    def _wait_mqtt_connack(self, deadline: float) -> None:
        # The first MQTT client of the account makes the node create the MQTT streams; a probe does that here so
        # the test's own clients find them. A refused or unanswered CONNECT is retried until the deadline.
        last = "no answer yet"
        while time.monotonic() < deadline:
            try:
                answer = mqtt_connect_probe(self.host, self.mqtt_port, f"ready-{self.name}",
                                            timeout_s=max(0.1, deadline - time.monotonic()))
            except OSError as exc:
                answer = None
                last = str(exc)
            if answer == 0:
                return
            if answer is not None:
                last = f"CONNACK return code {answer}"
            time.sleep(0.05)
        raise TimeoutError(f"nats node {self.name}: MQTT not ready in time ({last}):\n{self.log_text()[-4000:]}")

    def signal(self, sig: signal.Signals, timeout_s: float) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout_s)
        self.process = None
        self.close_log()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class NatsCluster:
    """`size` routed nats-server nodes with JetStream and MQTT on free loopback ports, their stores in `workdir`.

    `start()` starts every node and waits until each is healthy; `kill(i)` SIGKILLs node i, `start(i)` starts it
    again (same ports, same store), `stop()` stops them all (SIGTERM). A context manager starts and stops it.
    """

    def __init__(
        self, workdir: Path, *, size: int = 3, replicas: int | None = None, startup_timeout_s: float = 30.0,
        cluster_name: str = "broadcaster-test",
    ) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.binary = find_nats_server()
        self.startup_timeout_s = startup_timeout_s
        self.nodes = [NatsNode(i, workdir / f"n{i}") for i in range(size)]
        # Replicated streams need at least that many nodes; a one-node "cluster" keeps one copy.
        self.replicas = min(size, 3) if replicas is None else replicas
        routes = [node.cluster_port for node in self.nodes]
        for node in self.nodes:
            node.write_config([port for port in routes if port != node.cluster_port] if size > 1 else None,
                              cluster_name, self.replicas)

    @property
    def mqtt_urls(self) -> list[str]:
        return [node.mqtt_url for node in self.nodes]

    def mqtt_url(self, index: int) -> str:
        return self.nodes[index].mqtt_url

    def start(self, index: int | None = None) -> None:
        """Start node `index` (every stopped node when None) and wait until it is healthy."""
        chosen = self.nodes if index is None else [self.nodes[index]]
        for node in chosen:
            if not node.running:
                node.start(self.binary)
        deadline = time.monotonic() + self.startup_timeout_s
        try:
            for node in chosen:
                node.wait_until_ready(deadline)
        except BaseException:
            if index is None:
                self.stop()
            raise

    def kill(self, index: int) -> None:
        """SIGKILL node `index`: no goodbye to its clients or its routes, as in a power cut."""
        self.nodes[index].signal(signal.SIGKILL, timeout_s=10)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every node (SIGTERM, SIGKILL after `timeout_s`)."""
        for node in self.nodes:
            node.signal(signal.SIGTERM, timeout_s)

    def log_text(self) -> str:
        return "\n".join(f"--- {node.name} ---\n{node.log_text()}" for node in self.nodes)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        states = ", ".join(f"{n.name}={'up' if n.running else 'down'}" for n in self.nodes)
        return f"<NatsCluster {states}>"
