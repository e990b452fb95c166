"""Peak resident memory of this process."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """The high-water mark of this process's resident set, in MiB.

    Linux's `VmHWM` belongs to the address space, which `exec` replaces; `ru_maxrss` does not start again at
    exec: a child of a large parent would report at least the parent's size at the fork.
    """
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
