"""A Mosquitto bridge tree on loopback ports: core broker(s) and edge brokers, real processes.

The broadcaster publishes to a core; each edge runs one MQTT 5 bridge (``bridge_protocol_version mqttv50``) per
core, each subscribing on its core to ``{prefix}/v1/#`` and carrying it *in* to the edge, where displays
subscribe. With ``cores=2`` (the layout docs/mqtt.md, "Broker layer", recommends) the broadcaster has
``mqtt.urls = [core1, core2]`` and publishes to whichever it is on; every edge hears both, so nothing depends on
which core a bridge or the broadcaster happens to be connected to. Nothing is bridged back from the edges: the
broadcaster never connects to one.

Nodes are numbered cores first, then edges: with one core, node 0 is the core and nodes 1 and 2 the edges.
`kill(i)` is a SIGKILL, `start(i)` starts a node again on its port and returns once every bridge carries messages
again, `stop()` ends them all. Cores and edges keep no persistence by default (the recommended setting: a core
restarted from disk would replay a stale state into the edges, an edge restarted from nothing gets the cores'
state through its bridges). Every wait is bounded and waits on an event: a probe message published on a core
arriving on an edge through the bridge (on the ``_tree/probe/`` topics, bridged besides the prefix).

Used by tests/test_broker_bridge_tree.py and usable from bench/ (synchronous API; from async code call the
waiting methods through `asyncio.to_thread`).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import TYPE_CHECKING, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from support.mosquitto import MosquittoBroker

if TYPE_CHECKING:
    from pathlib import Path

#: Topics the tree bridges besides the prefix, for its own readiness probes.
PROBE_ROOT = "_tree/probe"


class TreeNotReady(RuntimeError):
    """A bridge did not carry a probe within the timeout."""


class MosquittoTree:
    """`cores` core brokers and `edges` edge brokers, each edge bridging ``{prefix}/v1/#`` in from every core.

    `core_persistence` / `edge_persistence` keep a node's retained store on disk across clean stops (a `kill`
    still loses what was not saved); `wipe(i)` removes a stopped node's database.
    `bridge_extra` is appended to every bridge section (e.g. ``"notifications false"``).
    """

    def __init__(
        self,
        workdir: Path,
        prefix: str,
        *,
        cores: int = 1,
        edges: int = 2,
        core_persistence: bool = False,
        edge_persistence: bool = False,
        core_config: str = "",
        edge_config: str = "",
        bridge_extra: str = "",
        ready_timeout_s: float = 15.0,
    ) -> None:
        if cores < 1 or edges < 1:
            raise ValueError("a tree needs at least one core and one edge")
        self.prefix = prefix
        self.ready_timeout_s = ready_timeout_s
        self.cores = [
            MosquittoBroker(workdir / f"core{n + 1}", persistence=core_persistence, extra_config=core_config)
            for n in range(cores)
        ]
        self.edges = [
            MosquittoBroker(
                workdir / f"edge{n + 1}",
                persistence=edge_persistence,
                extra_config="\n".join([edge_config, *(self._bridge_section(n + 1, m + 1, core, bridge_extra)
                                                          for m, core in enumerate(self.cores))]),
            )
            for n in range(edges)
        ]
        self.nodes: list[MosquittoBroker] = [*self.cores, *self.edges]

    def _bridge_section(self, edge_number: int, core_number: int, core: MosquittoBroker, extra: str) -> str:
        lines = [
            f"connection edge{edge_number}-to-core{core_number}",
            f"address {core.host}:{core.port}",
            "bridge_protocol_version mqttv50",
            f"remote_clientid {self.prefix}-edge{edge_number}-core{core_number}",
            # Mosquitto 2.0's MQTT 5 bridge sends no Session Expiry Interval, so the core ends its session when
            # the link drops whatever this says; after a reconnect the bridge subscribes again and the core
            # replays its retained messages (docs/mqtt.md, "A Mosquitto bridge tree").
            "cleansession false",
            # Reconnect after a second, not Mosquitto 2.0's default of 5 s rising to 30 s.
            "restart_timeout 1",
            "keepalive_interval 5",
            f"topic {self.prefix}/v1/# in 1",
            f"topic {PROBE_ROOT}/# in 1",
            extra,
        ]
        return "\n".join(lines)

    # -- addresses ---------------------------------------------------------------------------------------------

    @property
    def core(self) -> MosquittoBroker:
        return self.cores[0]

    @property
    def urls(self) -> list[str]:
        """Every node's URL, by node number."""
        return [node.url for node in self.nodes]

    @property
    def core_urls(self) -> list[str]:
        return [core.url for core in self.cores]

    @property
    def edge_urls(self) -> list[str]:
        return [edge.url for edge in self.edges]

    def url(self, i: int) -> str:
        return self.nodes[i].url

    def is_core(self, i: int) -> bool:
        return i < len(self.cores)

    # -- life cycle --------------------------------------------------------------------------------------------

    def start_all(self) -> None:
        """Start the cores, then the edges; return once every edge's bridge carries messages."""
        for node in self.nodes:
            if not node.running:
                node.start()
        self.wait_bridged()

    def start(self, i: int) -> None:
        """Start node `i` again on its port; return once the bridges that depend on it carry messages."""
        self.nodes[i].start()
        self.wait_bridged()

    def kill(self, i: int) -> None:
        """SIGKILL node `i`: nothing saved since its last clean stop survives."""
        self.nodes[i].kill()

    def stop_node(self, i: int) -> None:
        """Stop node `i` cleanly (it saves its persistence database)."""
        self.nodes[i].stop()

    def wipe(self, i: int) -> None:
        """Remove stopped node `i`'s persistence database: it starts again with no retained messages."""
        node = self.nodes[i]
        if node.running:
            raise RuntimeError(f"node {i} is running: stop or kill it before wiping it")
        for path in (node.workdir / "data").glob("*"):
            path.unlink()

    def stop(self) -> None:
        """Stop every node that runs, edges first (so no bridge logs a lost core on the way out)."""
        for node in reversed(self.nodes):
            node.stop()

    def wait_bridged(self, timeout_s: float | None = None) -> None:
        """Wait until each running edge receives a probe from each running core: every bridge carries messages."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.ready_timeout_s)
        for edge_number, edge in enumerate(self.edges, start=1):
            for core_number, core in enumerate(self.cores, start=1):
                if edge.running and core.running:
                    _wait_for_probe(core, edge, f"{PROBE_ROOT}/edge{edge_number}/core{core_number}", deadline)

    def log_text(self) -> str:
        return "\n".join(f"== node {i} ({node.url})\n{node.log_text()}" for i, node in enumerate(self.nodes))

    def __enter__(self) -> Self:
        try:
            self.start_all()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _wait_for_probe(core: MosquittoBroker, edge: MosquittoBroker, topic: str, deadline: float) -> None:
    """Subscribe on `edge`, publish probes on `core` until one arrives; `TreeNotReady` at `deadline`.

    Non-retained probes, so nothing stays behind.
    """
    arrived = threading.Event()
    subscribed = threading.Event()
    listener = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"tree-listen-{uuid.uuid4().hex[:10]}")
    listener.on_subscribe = lambda *_args: subscribed.set()
    listener.on_message = lambda *_args: arrived.set()
    listener.on_connect = lambda client, *_args: client.subscribe(topic, qos=0)
    listener.connect(edge.host, edge.port, keepalive=10)
    listener.loop_start()
    try:
        if not subscribed.wait(max(0.0, deadline - time.monotonic())):
            raise TreeNotReady(f"could not subscribe on edge {edge.url}")
        publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"tree-probe-{uuid.uuid4().hex[:10]}")
        publisher.connect(core.host, core.port, keepalive=10)
        publisher.loop_start()
        try:
            # A probe every 50 ms until the bridge carries one: the bridge's (re)connection is the event awaited.
            while not arrived.wait(0.05):
                if time.monotonic() > deadline:
                    raise TreeNotReady(f"edge {edge.url} received no probe from core {core.url} through its bridge")
                publisher.publish(topic, b"", qos=0)
        finally:
            publisher.disconnect()  # before loop_stop: it wakes the network thread, which then ends at once
            publisher.loop_stop()
    finally:
        listener.disconnect()
        listener.loop_stop()
