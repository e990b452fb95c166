"""Loopback ports for the tests' servers, chosen where nothing else on the machine will take them.

A port the kernel hands out for ``bind(0)`` comes from the ephemeral range, the same range it draws every
outgoing connection's local port from. A server the tests kill and start again on the same port (a NATS node, a
Mosquitto broker, PostgreSQL, an HA instance) leaves that port free while it is down, and any connection another
test worker opens meanwhile may be given it: the restart then fails with "address already in use" (CI saw this
once, a NATS node's client port taken in the nine seconds the node was down).

So the tests' ports come from below the ephemeral range, where the kernel never picks a local port on its own,
and each xdist worker draws from its own slice of that range, so two workers never pick the same port either.
Each candidate is still bound once to check that nothing holds it now.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from pathlib import Path

# Below 10000 sit many well-known services' ports (databases, brokers, dev servers on a developer's machine).
_LOWEST = 10_000
_DEFAULT_EPHEMERAL = (32_768, 60_999)  # Linux's default, used when /proc does not say


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(part) for part in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL
    return low, high


def _pool() -> range:
    """Ports the kernel does not hand out on its own: below the ephemeral range, or above it if below is too small."""
    low, high = _ephemeral_range()
    if low - _LOWEST >= 2_000:
        return range(_LOWEST, low)
    if 65_535 - high >= 2_000:
        return range(high + 1, 65_536)
    return range(_LOWEST, 65_536)  # an unusual machine: fall back to the bind check alone


def _worker_slice(pool: range) -> range:
    """This xdist worker's share of `pool` (the whole pool outside xdist)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    size = len(pool) // max(count, 1)
    start = pool.start + (index % max(count, 1)) * size
    return range(start, start + size)


def _nothing_holds(host: str, port: int) -> bool:
    # No SO_REUSEADDR: a port with a connection still in TIME_WAIT counts as taken, which only makes us skip it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


_SLICE = _worker_slice(_pool())
_lock = threading.Lock()
# A random start, so that separate processes in one worker (a harness, a subprocess) rarely walk the same ports;
# then each call moves on, so a port just handed out is not handed out again while its server starts.
_next = random.randrange(len(_SLICE))


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on right now and that no outgoing connection will be given later."""
    global _next
    with _lock:
        for _ in range(len(_SLICE)):
            port = _SLICE.start + _next % len(_SLICE)
            _next += 1
            if _nothing_holds(host, port):
                return port
    raise RuntimeError(f"no free port in {_SLICE.start}-{_SLICE.stop - 1} on {host}")
