"""CPU time of parsing the bench city's trip updates feed: a full parse against an incremental one (the feed's
`EntityCache` holding the previous body) when one entity changed, and when none did but the header's timestamp;
and what the first body costs through an empty cache (the facts and keys it records for the next parse).

    python -m bench.parse            # --k 1 --reps 50

CPU time (`time.process_time`), not wall time: the machine is shared. Prints milliseconds per parse.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from google.transit import gtfs_realtime_pb2 as pb

from bench.city import write_city
from broadcaster.feeds.gtfs_rt import EntityCache, parse_gtfs_rt
from broadcaster.feeds.network import load_network
from broadcaster.model import Network

_CARRIES = frozenset({"trip-updates"})


def _cpu_ms(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm up
    started = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - started) / reps * 1000


def _bodies(trips: bytes) -> tuple[bytes, bytes]:
    """The next tick's body with only its header timestamp moved, and one with one trip's delay changed too."""
    message = pb.FeedMessage.FromString(trips)
    message.header.timestamp += 30
    same_entities = message.SerializeToString()
    update = message.entity[len(message.entity) // 2].trip_update
    update.delay = update.delay + 60
    return same_entities, message.SerializeToString()


def measure(network: Network, previous: bytes, reps: int) -> dict[str, float]:
    same_entities, one_changed = _bodies(previous)

    def parse(body: bytes, cache: EntityCache | None = None) -> object:
        return parse_gtfs_rt("trips", body, network, carries=_CARRIES, default_language="zh", cache=cache)

    def alternating(body: bytes) -> Callable[[], object]:
        """Parses `previous` and `body` in turn through one cache, as the poller's on steady ticks: each parse
        finds the other body's entities in the cache, so it decodes only what differs."""
        cache = EntityCache()
        bodies = [previous, body]

        def run() -> object:
            bodies.reverse()
            return parse(bodies[0], cache)

        return run

    return {
        "full_ms": _cpu_ms(lambda: parse(one_changed), reps),
        "cold_ms": _cpu_ms(lambda: parse(one_changed, EntityCache()), reps),
        "one_changed_ms": _cpu_ms(alternating(one_changed), reps),
        "header_only_ms": _cpu_ms(alternating(same_entities), reps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = write_city(Path(tmp), args.k, ticks=0, emergencies=0)
        network = load_network(files.gtfs)
        previous = (files.variant("base") / "trips.pb").read_bytes()
    figures = measure(network, previous, args.reps)
    print(f"trips.pb at k = {args.k:g} ({len(previous):,} bytes), CPU ms per parse over {args.reps} repetitions:")
    print(f"  full parse                          {figures['full_ms']:7.2f}")
    print(f"  through an empty cache (first body) {figures['cold_ms']:7.2f}"
          f"  ({figures['cold_ms'] / figures['full_ms']:.2f}x)")
    print(f"  incremental, one entity changed     {figures['one_changed_ms']:7.2f}"
          f"  ({figures['one_changed_ms'] / figures['full_ms']:.2f}x)")
    print(f"  incremental, only the header moved  {figures['header_only_ms']:7.2f}"
          f"  ({figures['header_only_ms'] / figures['full_ms']:.2f}x)")


if __name__ == "__main__":
    main()
