"""Fan-out: one broadcaster, a k = 1 city, thousands of display connections spread over a broker layer.

`python -m bench.fanout` (alone, about 2-4 minutes on 2 cores) or `python -m bench --fanout` (after the other
scenarios, into `latest.json`). For each broker layer (`--setups`):

- *single*: one Mosquitto (the baseline);
- *nats*: three nats-server nodes, JetStream and MQTT (`tests/support/nats_cluster.py`);
- *tree*: a Mosquitto core and two bridged edges (`tests/support/mosquitto_tree.py`);

the broadcaster (real pipeline, `mqtt.protocol = "3.1.1"`, `mqtt.urls` = the nodes it may publish to) publishes
the whole city, then `--displays` display connections (`bench/swarm.py`, in `--workers` processes) connect,
spread round-robin over the nodes a display may use, each subscribed to its station's display topic and the
status topic of every line serving it, as a station screen does. Then rounds, each a feed change:

- *line*: a NO_SERVICE alert appears on one line (then clears): every station of the line changes its display
  and the line's status changes;
- *network*: an alert naming every station appears (then clears): every display changes.

Each round measures, from the broadcaster's alerts fetch returning (the feed change seen, the emergency
scenario's origin) to each affected display's receipt of its display message: the last display (the headline),
and every display pooled; also the broadcaster's last PUBACK. Clocks: CLOCK_MONOTONIC in every process of one
machine. Around the rounds: the CPU time of the swarm, the brokers and the broadcaster (the swarm must not be the
bottleneck: its CPU is reported beside the latencies), and each broker's resident memory before and after the
displays connect (per-connection memory).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.transit import gtfs_realtime_pb2 as pb

from bench import paths
from bench.city import AlertSpec, City, CityFiles, Shape, write_city
from bench.scenarios import Args, install_variant, measured_tick, percentile, running, write_config
from bench.servers import install
from broadcaster.config import Config, load_config
from broadcaster.contract import Topics
from broadcaster.retained import Publication
from broadcaster.service import Broadcaster

SETUPS = ("single", "nats", "tree")
#: Mosquitto as the bench runs it (bench/__main__.py), and a queue deep enough for a display's whole state.
MOSQUITTO_CONFIG = "set_tcp_nodelay true\nmax_queued_messages 1000\n"
_CLOCK_TICK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------------------------
# Broker layers


@dataclass
class Layer:
    """A running broker layer: where the broadcaster publishes, where displays connect, its processes."""

    name: str
    publish_urls: list[str]
    display_endpoints: list[tuple[str, int]]
    pids: list[int]
    stop: Callable[[], None]
    notes: str = ""
    #: The displays' subscription QoS on this layer, when it must differ from `--qos` (see `_nats`).
    display_qos: int | None = None


def _single(work: Path, prefix: str, qos_override: int, mqtt_extra: str) -> Layer:
    paths.add_test_support()
    from support import MosquittoBroker

    broker = MosquittoBroker(work / "single", persistence=False, extra_config=MOSQUITTO_CONFIG)
    broker.start()
    process = broker._process  # the bench reads the broker's own CPU and memory
    assert process is not None
    return Layer("single", [broker.url], [(broker.host, broker.port)], [process.pid], broker.stop,
                 "one Mosquitto 2 (" + MOSQUITTO_CONFIG.strip().replace("\n", ", ") + ")")


def _nats(work: Path, prefix: str, qos_override: int, mqtt_extra: str) -> Layer:
    """Three nats-server nodes (JetStream, MQTT, streams replicated thrice); the broadcaster may publish to any
    (it takes the first), displays connect to all three."""
    paths.add_test_support()
    from support.nats_cluster import NatsCluster

    cluster = NatsCluster(work / "nats", size=3)
    for node in cluster.nodes:  # settings of the MQTT block to try (`--nats-mqtt`), e.g. "consumer_replicas: 3"
        text = node.config_path.read_text(encoding="utf-8")
        node.config_path.write_text(text.replace("mqtt {\n", "mqtt {\n" + mqtt_extra + "\n", 1), encoding="utf-8")
    cluster.start()
    pids = [node.process.pid for node in cluster.nodes if node.process is not None]
    endpoints = [(node.host, node.mqtt_port) for node in cluster.nodes]
    # A QoS 1 MQTT subscription is a durable JetStream consumer in NATS: replicated (NATS's default), 300 displays'
    # ~700 of them already timed out the JetStream API ("timeout for request type CC", SUBACK 0x80); on one node
    # and in memory (the launcher's setting) 3,000 displays worked at 223 KB per connection, with a network round
    # taking 22 s. A QoS 0 subscription is a plain NATS subscription, and retained messages still come from the
    # replicated retained stream: displays on NATS subscribe at `--nats-qos` (0), as docs/mqtt.md recommends.
    return Layer("nats", cluster.mqtt_urls, endpoints, pids, cluster.stop,
                 "three nats-server nodes, JetStream and MQTT, MQTT streams replicated on all three"
                 + (f"; mqtt block + {mqtt_extra!r}" if mqtt_extra else ""),
                 display_qos=qos_override)


def _tree(work: Path, prefix: str, qos_override: int, mqtt_extra: str) -> Layer:
    """A Mosquitto core and two edges bridging `{prefix}/v1/#` in (MQTT 5 bridges); the broadcaster publishes to
    the core, displays connect to the edges."""
    paths.add_test_support()
    from support.mosquitto_tree import MosquittoTree

    tree = MosquittoTree(work / "tree", prefix, core_config=MOSQUITTO_CONFIG, edge_config=MOSQUITTO_CONFIG)
    tree.start_all()
    pids = [node._process.pid for node in tree.nodes if node._process is not None]
    endpoints = [(edge.host, edge.port) for edge in tree.edges]
    return Layer("tree", tree.core_urls, endpoints, pids, tree.stop,
                 "a Mosquitto core and two edges bridging {prefix}/v1/# in (MQTT 5 bridges); displays on the edges")


LAYERS: dict[str, Callable[[Path, str, int, str], Layer]] = {"single": _single, "nats": _nats, "tree": _tree}


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICK  # utime, stime (fields 14 and 15)


# ------------------------------------------------------------------------------------------------------------
# The feed changes


@dataclass(frozen=True)
class Change:
    kind: str  # "line" or "network"
    alerts_feed: Path
    stations: tuple[str, ...]
    status: bool  # whether every affected display's line status changes too


def write_changes(city_files: CityFiles, out: Path, line_rounds: int,
                  network_rounds: int) -> list[tuple[Change, Change]]:
    """The alerts feed of each round, appearing and clearing, after the city's base feeds (same alerts, same
    active periods, later timestamps)."""
    base_message = pb.FeedMessage()
    base_message.ParseFromString((city_files.variant("base") / "alerts.pb").read_bytes())
    base = int(base_message.header.timestamp)
    city = City(city_files.shape)
    city.alerts_since = base - 3600
    every_station = tuple(city.station_names)
    out.mkdir(parents=True, exist_ok=True)
    rounds: list[tuple[Change, Change]] = []
    ts = base + 1000  # after the base feeds, before now (write_city starts half an hour ago)

    def feed(name: str, extra: AlertSpec | None) -> Path:
        path = out / f"{name}.pb"
        path.write_bytes(city.alerts_feed(ts, extra))
        return path

    for i in range(line_rounds + network_rounds):
        if i < line_rounds:
            alert = city.emergency_alert(i)
            kind, stations, status = "line", city.affected_stations(alert), True
        else:
            alert = AlertSpec(
                f"N{i:04d}", "SIGNIFICANT_DELAYS", "WEATHER", "WARNING", None, every_station,
                ("台风影响，全网列车限速运行", "Typhoon: trains run slower across the network"),
                ("受台风影响，全网列车限速运行，请预留出行时间。",
                 "Owing to the typhoon, trains run at reduced speed on every line; allow extra time."),
            )
            kind, stations, status = "network", every_station, False
        on = Change(kind, feed(f"{kind}{i}-on", alert), stations, status)
        ts += 1
        off = Change(kind, feed(f"{kind}{i}-off", None), stations, status)
        ts += 1
        rounds.append((on, off))
    return rounds


# ------------------------------------------------------------------------------------------------------------
# The swarm


@dataclass
class Worker:
    process: asyncio.subprocess.Process

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def expect(self, word: str, within_s: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(within_s):
            line = (await self.process.stdout.readline()).decode()
        if not line.startswith(word):
            raise RuntimeError(f"swarm worker said {line[:200]!r}, expected {word}")
        rest = line[len(word):].strip()
        return json.loads(rest) if rest else {}


def display_specs(city: City, topics: Topics, count: int, endpoints: int) -> list[tuple[int, str, list[str]]]:
    """Display i shows station i mod S and connects to node i mod E: every station's screens over every node."""
    stations = list(city.station_names)
    lines_of: dict[str, list[str]] = {}
    for line, members in city.line_stations.items():
        for station in members:
            lines_of.setdefault(station, []).append(line)
    specs = []
    for i in range(count):
        station = stations[i % len(stations)]
        subscribed = [topics.station_display(station), *(topics.line_status(line) for line in lines_of[station])]
        specs.append((i % endpoints, station, subscribed))
    return specs


@contextlib.asynccontextmanager
async def swarm(layer: Layer, specs: list[tuple[int, str, list[str]]], workers: int, qos: int, tag: str,
                log: Path) -> AsyncIterator[tuple[list[Worker], list[dict[str, Any]]]]:
    """Start the swarm's worker processes; yield them once every display is subscribed with its state."""
    procs: list[Worker] = []
    with log.open("ab") as errors:
        try:
            for w in range(workers):
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.swarm", cwd=paths.ROOT, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=errors, limit=64 * 1024 * 1024,
                )
                worker = Worker(process)
                procs.append(worker)
                await worker.send(json.dumps({"endpoints": layer.display_endpoints, "qos": qos,
                                              "client_prefix": f"{tag}-w{w}-", "displays": specs[w::workers]}))
            ready = [await worker.expect("READY", 600) for worker in procs]
            yield procs, ready
        finally:
            for worker in procs:
                with contextlib.suppress(Exception):
                    await worker.send("QUIT")
            for worker in procs:
                try:
                    async with asyncio.timeout(30):
                        await worker.process.wait()
                except TimeoutError:
                    worker.process.kill()
                    await worker.process.wait()


# ------------------------------------------------------------------------------------------------------------
# One layer


@dataclass
class Rounds:
    last_display_ms: dict[str, list[float]] = field(default_factory=dict)
    median_display_ms: dict[str, list[float]] = field(default_factory=dict)
    every_display_ms: dict[str, list[float]] = field(default_factory=dict)
    last_status_ms: dict[str, list[float]] = field(default_factory=dict)
    last_puback_ms: dict[str, list[float]] = field(default_factory=dict)
    displays_per_round: dict[str, int] = field(default_factory=dict)
    missing: int = 0

    def add(self, kind: str, key: str, value: float) -> None:
        getattr(self, key).setdefault(kind, []).append(value)


def broadcaster_config(args: Args, layer: Layer, name: str) -> Config:
    """The bench's config (scenarios.write_config), speaking MQTT 3.1.1 to the layer's publishing nodes."""
    write_config(args, name)  # writes {work}/{name}.toml, with `url`: swap it for the layer's `urls`
    path = args.work / f"{name}.toml"
    text = path.read_text(encoding="utf-8")
    old = f"url = {json.dumps(args.mqtt_url)}\n"
    assert old in text
    text = text.replace(old, f"urls = {json.dumps(layer.publish_urls)}\nprotocol = \"3.1.1\"\n", 1)
    path.write_text(text, encoding="utf-8")
    return load_config(path)


async def _round(b: Broadcaster, workers: list[Worker], change: Change, target: Path, clock: dict[str, float],
                 rounds: Rounds | None) -> None:
    """Arm the swarm, install the changed alerts feed, poll it; record when each affected display received it."""
    for worker in workers:
        await worker.send("ARM " + json.dumps({"stations": change.stations, "status": change.status}))
    for worker in workers:
        await worker.expect("ARMED", 30)
    clock.clear()
    install(change.alerts_feed, target)
    await measured_tick(b, ["alerts"])
    done = [await worker.expect("DONE", 60) for worker in workers]
    if rounds is None:
        return
    t0 = clock["feed"]
    shown = [at for d in done for at in d["display_at"]]
    received = [(at - t0) * 1000 for at in shown if at is not None]
    rounds.missing += len(shown) - len(received)
    if not received:
        return
    rounds.add(change.kind, "last_display_ms", max(received))
    rounds.add(change.kind, "median_display_ms", statistics.median(received))
    rounds.every_display_ms.setdefault(change.kind, []).extend(received)
    rounds.displays_per_round[change.kind] = len(shown)
    if change.status:
        status = [(at - t0) * 1000 for d in done for at in d["status_at"] if at is not None]
        if status:
            rounds.add(change.kind, "last_status_ms", max(status))
    if "acked" in clock:
        rounds.add(change.kind, "last_puback_ms", (clock["acked"] - t0) * 1000)


def _stamp(b: Broadcaster, clock: dict[str, float]) -> None:
    """Stamp the alerts fetch's return (t0) and each PUBACK, on the machine-wide monotonic clock."""
    fetch = b.poller.fetcher.fetch

    async def fetch_timed(*a: Any, **kw: Any) -> Any:
        result = await fetch(*a, **kw)
        clock["feed"] = time.monotonic()
        return result

    def acknowledged(pub: Publication) -> None:  # retained topics and notices alike go through `publish_many`
        clock["acked"] = time.monotonic()

    setattr(b.poller.fetcher, "fetch", fetch_timed)  # noqa: B010 (wrapping a bound method)
    setattr(b.link, "acknowledged", acknowledged)  # noqa: B010 (the link's seam for measurements)


def _figures(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "max": max(values), "n": len(values)}


async def run_layer(layer: Layer, args: Args, options: dict[str, Any],
                    changes: list[tuple[Change, Change]]) -> dict[str, Any]:
    config = broadcaster_config(args, layer, f"fanout-{layer.name}")
    topics = Topics(config.mqtt.topic_prefix)
    city = City(Shape.at(args.k))
    specs = display_specs(city, topics, int(options["displays"]), len(layer.display_endpoints))
    qos = int(options["qos"]) if layer.display_qos is None else layer.display_qos
    clock: dict[str, float] = {}
    rounds = Rounds()
    result: dict[str, Any] = {"layer": layer.name, "notes": layer.notes, "nodes": len(layer.pids),
                              "display_nodes": len(layer.display_endpoints),
                              "publish_urls": layer.publish_urls, "displays": len(specs),
                              "subscriptions": sum(len(s[2]) for s in specs), "qos": qos}
    install_variant(args, "base")
    target = CityFiles(args.city, Shape.at(args.k)).www / "alerts.pb"
    async with running(config) as b:
        _stamp(b, clock)
        await measured_tick(b)
        result["retained_topics"] = len(b.planner.published)
        rss_before = [_proc_rss_mb(pid) for pid in layer.pids]
        async with swarm(layer, specs, int(options["workers"]), qos, f"fan-{args.run_id}-{layer.name}",
                         args.work / "swarm.log") as (workers, ready):
            rss_after = [_proc_rss_mb(pid) for pid in layer.pids]
            result["swarm_ready"] = ready
            result["broker_rss_mb_before"] = rss_before
            result["broker_rss_mb_after"] = rss_after
            result["broker_kb_per_connection"] = (sum(rss_after) - sum(rss_before)) * 1024 / len(specs)
            await _round(b, workers, changes[0][0], target, clock, None)  # warm-up: caches, first-use paths
            await _round(b, workers, changes[0][1], target, clock, None)
            swarm_cpu_before = await _swarm_cpu(workers)
            broker_cpu_before = sum(_proc_cpu_s(pid) for pid in layer.pids)
            own_cpu_before = time.process_time()
            started = time.monotonic()
            for on, off in changes[1:]:
                await _round(b, workers, on, target, clock, rounds)
                await _round(b, workers, off, target, clock, rounds)
            wall = time.monotonic() - started
            sizes: dict[str, list[int]] = {}
            swarm_cpu = await _swarm_cpu(workers, sizes) - swarm_cpu_before
            result["payload_bytes"] = {key: {"messages": n, "mean": total / n if n else 0, "max": largest}
                                       for key, (n, total, largest) in sizes.items()}
            broker_cpu = sum(_proc_cpu_s(pid) for pid in layer.pids) - broker_cpu_before
            own_cpu = time.process_time() - own_cpu_before
            result["broker_rss_mb_after_rounds"] = [_proc_rss_mb(pid) for pid in layer.pids]
    n_rounds = 2 * len(changes[1:])
    result["rounds"] = n_rounds
    result["missing_receipts"] = rounds.missing
    result["rounds_wall_s"] = wall
    result["cpu_s"] = {"swarm": swarm_cpu, "brokers": broker_cpu, "broadcaster": own_cpu}
    result["cpu_ms_per_round"] = {name: s * 1000 / n_rounds for name, s in result["cpu_s"].items()}
    result["cpu_share_of_wall"] = {name: s / wall for name, s in result["cpu_s"].items()}
    for kind in rounds.last_display_ms:
        result[kind] = {
            "displays_per_round": rounds.displays_per_round.get(kind),
            "last_display_ms": _figures(rounds.last_display_ms[kind]),
            "median_display_ms": _figures(rounds.median_display_ms[kind]),
            "every_display_ms": _figures(rounds.every_display_ms[kind]),
            **({"last_status_ms": _figures(rounds.last_status_ms[kind])} if rounds.last_status_ms.get(kind) else {}),
            **({"last_puback_ms": _figures(rounds.last_puback_ms[kind])} if rounds.last_puback_ms.get(kind) else {}),
        }
    return result


async def _swarm_cpu(workers: list[Worker], sizes: dict[str, list[int]] | None = None) -> float:
    """The swarm's CPU seconds so far; with `sizes`, also the payload sizes its workers received, merged."""
    total = 0.0
    for worker in workers:
        await worker.send("STATS")
        stats = await worker.expect("STATS", 30)
        total += stats["user_s"] + stats["system_s"]
        for key, (count, size, largest) in stats["sizes"].items():
            merged = sizes.setdefault(key, [0, 0, 0]) if sizes is not None else [0, 0, 0]
            merged[0] += count
            merged[1] += size
            merged[2] = max(merged[2], largest)
    return total


# ------------------------------------------------------------------------------------------------------------
# Running it


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text(encoding="ascii").split()[:3])


async def main(raw: dict[str, Any]) -> dict[str, Any]:
    """Every setup of `raw["setups"]` in turn, on the city and feed server the caller started."""
    args = Args(scenario="fanout", k=1.0, city=Path(raw["city"]), work=Path(raw["work"]), feeds_url=raw["feeds_url"],
                mqtt_url="mqtt://127.0.0.1:1", run_id=raw["run_id"])
    changes = write_changes(CityFiles(args.city, Shape.at(1.0)), args.work / "fanout-changes",
                            int(raw["line_rounds"]) + 1, int(raw["network_rounds"]))  # the first: a warm-up
    out: dict[str, Any] = {"setups": {}, "skipped": {}, "load_before": _load()}
    started = time.monotonic()
    for name in raw["setups"]:
        factory = LAYERS.get(name)
        if factory is None:
            out["skipped"][name] = "no launcher for this broker layer on this branch"
            continue
        print(f"bench: fan-out on {name} ({raw['displays']} displays) ...", end=" ", flush=True)
        layer = factory(args.work / f"fanout-{name}", f"bench/{args.run_id}/fanout-{name}", int(raw["nats_qos"]),
                        str(raw.get("nats_mqtt", "")))
        try:
            result = await run_layer(layer, args, raw, changes)
        finally:
            layer.stop()
        result["load_after"] = _load()
        out["setups"][name] = result
        print(f"{result['rounds_wall_s']:.1f} s", flush=True)
    out["wall_s"] = time.monotonic() - started
    out["load_after"] = _load()
    return out


def table(result: dict[str, Any]) -> str:
    """The fan-out figures as Markdown: per layer and kind of change, the last display's and every display's."""
    lines = [
        "| layer | change | displays | last display p50 / p99 ms | every display p50 / p99 ms "
        "| last PUBACK p50 ms | CPU per round: swarm / brokers / broadcaster ms | broker KB per connection |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in result["setups"].items():
        cpu = s["cpu_ms_per_round"]
        for kind in ("line", "network"):
            if kind not in s:
                continue
            f = s[kind]
            puback = f.get("last_puback_ms", {}).get("p50")
            lines.append(
                f"| {name} ({s['nodes']} node{'s' if s['nodes'] > 1 else ''}) | {kind} | {f['displays_per_round']:,} "
                f"of {s['displays']:,} | {f['last_display_ms']['p50']:.1f} / {f['last_display_ms']['p99']:.1f} "
                f"| {f['every_display_ms']['p50']:.1f} / {f['every_display_ms']['p99']:.1f} "
                f"| {'-' if puback is None else f'{puback:.1f}'} "
                f"| {cpu['swarm']:.0f} / {cpu['brokers']:.0f} / {cpu['broadcaster']:.0f} "
                f"| {s['broker_kb_per_connection']:.1f} |"
            )
    for name, why in result.get("skipped", {}).items():
        lines.append(f"| {name} | skipped: {why} | | | | | | |")
    lines.append("")
    lines.append(f"Load average before / after: {result['load_before']} / {result['load_after']}; times from the "
                 "alerts fetch returning to each display's receipt; p99 nearest-rank over rounds (line, network) "
                 "or over every display of every round.")
    return "\n".join(lines)


def _standalone(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.split("\n\n")[0])
    add_options(parser)
    parser.add_argument("--out", type=Path, default=paths.RESULTS / "fanout-latest.json")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    options = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    print(f"bench: fan-out work folder {work}", flush=True)
    city = write_city(work / "k1", 1.0, ticks=0, emergencies=0)
    with _servers(work) as urls:
        raw = {**options_dict(options), "city": str(city.root), "work": str(work / "state"),
               "feeds_url": urls["feeds"], "run_id": os.urandom(4).hex()}
        result = asyncio.run(main(raw))
    result["meta"] = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
                      "options": options_dict(options)}
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(table(result))
    print(f"\nbench: wrote {options.out}")
    if not options.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


def add_options(parser: argparse.ArgumentParser) -> None:
    """The fan-out's options (also `python -m bench --fanout`'s)."""
    parser.add_argument("--displays", type=int, default=3000, help="display connections (default 3000)")
    parser.add_argument("--workers", type=int, default=2, help="swarm processes (default 2)")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1, help="the displays' subscription QoS")
    parser.add_argument("--nats-qos", type=int, choices=(0, 1), default=0,
                        help="the displays' subscription QoS on NATS (a QoS 1 subscription is a JetStream consumer)")
    parser.add_argument("--nats-mqtt", default="", help="lines added to the NATS nodes' mqtt block, e.g. "
                        "'consumer_replicas: 3' (separate several with newlines)")
    parser.add_argument("--line-rounds", type=int, default=10, help="line emergencies (each appears and clears)")
    parser.add_argument("--network-rounds", type=int, default=5, help="network-wide alerts (appear and clear)")
    parser.add_argument("--setups", default=",".join(SETUPS), type=lambda s: s.split(","),
                        help="broker layers: single, nats, tree")


def options_dict(options: argparse.Namespace) -> dict[str, Any]:
    return {"displays": options.displays, "workers": options.workers, "qos": options.qos, "nats_qos": options.nats_qos,
            "nats_mqtt": options.nats_mqtt,
            "line_rounds": options.line_rounds, "network_rounds": options.network_rounds, "setups": options.setups}


@contextlib.contextmanager
def _servers(root: Path) -> Iterator[dict[str, str]]:
    servers = subprocess.Popen(
        [sys.executable, "-m", "bench.servers", str(root)], cwd=paths.ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert servers.stdout is not None
        yield json.loads(servers.stdout.readline())
    finally:
        if servers.stdin is not None:
            servers.stdin.close()
        try:
            servers.wait(timeout=15)
        except subprocess.TimeoutExpired:
            servers.kill()
            servers.wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):  # from `python -m bench --fanout`
        print("RESULT " + json.dumps(asyncio.run(main(json.loads(sys.argv[1])))), flush=True)
    else:
        raise SystemExit(_standalone())
