"""Loopback ports for the tests' servers, chosen where nothing else on the machine will take them.

A port the kernel hands out for ``bind(0)`` comes from the ephemeral range, the same range it draws every
outgoing connection's local port from. A server the tests kill and start again on the same port (a NATS node, a
Mosquitto broker, PostgreSQL, an HA instance) leaves that port free while it is down, and any connection another
test worker opens meanwhile may be given it: the restart then fails with "address already in use" (CI saw this
once, a NATS node's client port taken in the nine seconds the node was down).

So the tests' ports come from below the ephemeral range, where the kernel never picks a local port on its own,
and each process draws from a slice of that range it holds a lock on (`flock`, released when the process ends),
so no two processes pick the same port either: not two xdist workers, not a worker xdist started in place of a
crashed one, not a subprocess that imports these helpers. Each candidate is still bound once to check that
nothing holds it now.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
import threading
import warnings
from pathlib import Path

# Below 10000 sit many well-known services' ports (databases, brokers, dev servers on a developer's machine).
_LOWEST = 10_000
_DEFAULT_EPHEMERAL = (32_768, 60_999)  # Linux's default, used when /proc does not say
_SLICE_SIZE = 1_000  # ports per process: a worker starts a few hundred servers at most


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(part) for part in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL
    return low, high


def _pool() -> range:
    """Ports the kernel does not hand out on its own: below the ephemeral range, or above it if below is too small."""
    low, high = _ephemeral_range()
    if low - _LOWEST >= 2 * _SLICE_SIZE:
        return range(_LOWEST, low)
    if 65_535 - high >= 2 * _SLICE_SIZE:
        return range(high + 1, 65_536)
    warnings.warn(f"the ephemeral port range {low}-{high} leaves no room for the tests' servers: a server restarted"
                  " on its port may find it taken by an outgoing connection", stacklevel=2)
    return range(_LOWEST, 65_536)


def _worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0


def _claim_slice(pool: range) -> range:
    """A slice of `pool` no other live process holds, locked for as long as this one lives. The search starts at
    the xdist worker's own slice, so workers rarely meet on a lock."""
    slices = len(pool) // _SLICE_SIZE
    folder = Path(tempfile.gettempdir()) / f"broadcaster-test-ports-{os.getuid()}"
    folder.mkdir(exist_ok=True)
    for step in range(slices):
        start = pool.start + (_worker_index() + step) % slices * _SLICE_SIZE
        fd = os.open(folder / f"{start}.lock", os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by subprocesses
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        _held.append(fd)  # kept open: closing it would release the lock
        return range(start, start + _SLICE_SIZE)
    raise RuntimeError(f"all {slices} slices of ports {pool.start}-{pool.stop - 1} are held by other processes")


def _nothing_holds(host: str, port: int) -> bool:
    # No SO_REUSEADDR: a port with a connection still in TIME_WAIT counts as taken, which only makes us skip it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


_held: list[int] = []
_lock = threading.Lock()
_slice: range | None = None  # claimed on the first call
_next = 0


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on right now, that no outgoing connection will be given later, and that no
    other process of the test run will pick."""
    global _slice, _next
    with _lock:
        if _slice is None:
            _slice = _claim_slice(_pool())
            # Anywhere in the slice: a process that ends and a new one that claims its slice do not walk the same
            # ports in the same order. Then each call moves on, so a port handed out is not handed out again.
            _next = random.randrange(len(_slice))
        for _ in range(len(_slice)):
            port = _slice.start + _next % len(_slice)
            _next += 1
            if _nothing_holds(host, port):
                return port
    raise RuntimeError(f"no free port in {_slice.start}-{_slice.stop - 1} on {host}")
