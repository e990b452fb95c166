"""What start-up built is kept out of the cyclic garbage collector's reach while the broadcaster runs (issue 16).

A full collection scanned the whole start-up heap (network, templates, state, payload cache) every so often,
33-54 ms with the event loop stopped: the emergency scenario's slowest rounds (p99 69-80 ms; 30-37 ms frozen,
`python -m bench --scales 1 --reps 1 --rounds 60`). Timing is the bench's business; this checks the mechanism,
and that it is undone when the broadcaster closes (tests open many in one process).
"""

from __future__ import annotations

import gc

from rig import Rig

from broadcaster.runner import YOUNG_COLLECTION_EVERY, open_broadcaster


async def test_start_up_objects_are_frozen_while_running_and_released_after(rig: Rig) -> None:
    before = gc.get_freeze_count()
    thresholds = gc.get_threshold()
    async with open_broadcaster(rig.config()):
        # the network and everything else built at start-up, not a handful of objects
        assert gc.get_freeze_count() > before + 1000
        # young objects collected every YOUNG_COLLECTION_EVERY allocations, not CPython's 700
        assert gc.get_threshold() == (YOUNG_COLLECTION_EVERY, *thresholds[1:])
    assert gc.get_freeze_count() == before
    assert gc.get_threshold() == thresholds
