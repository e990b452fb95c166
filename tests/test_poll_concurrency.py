"""Two polls of one feed at once (the start-up round overlapping a scheduled poll, `once` beside a job): the
feed's record is read and written by one poll at a time, so an older answer never undoes a newer one."""

from __future__ import annotations

import asyncio

from rig import Rig, now_s, running
from support.gtfs_rt_builders import alert_entity, feed_bytes, selector


async def test_a_slow_older_answer_never_undoes_a_newer_one_of_the_same_feed(rig: Rig) -> None:
    t0 = now_s() - 60
    rig.serve_rt(timestamp=t0)
    signal = alert_entity("A-PC", header={"en": "Line 1 signal fault"}, informed=[selector(route_id="1")])
    async with running(rig.config()) as b:
        ops = b.config.feeds[0]
        assert (await b.poll(ops)).ok
        # The next request gets an older document (no alert), slowly; every later one the newest (with it).
        rig.server.push_response("/rt.pb", feed_bytes(timestamp=t0 + 10), delay_s=1.0)
        rig.serve_rt(signal, timestamp=t0 + 20)
        slow = asyncio.create_task(b.poll(ops))
        await asyncio.to_thread(rig.server.wait_for_requests, "/rt.pb", 2)
        fast = asyncio.create_task(b.poll(ops))
        async with asyncio.timeout(15):
            outcomes = await asyncio.gather(slow, fast)
        assert all(o.ok for o in outcomes)
        record = b.state.alerts["A-PC"]
        assert record.missing == 0  # the older document, applied last, would have counted it missing
        assert b.feeds["ops"].feed_timestamp is not None
        assert int(b.feeds["ops"].feed_timestamp.timestamp()) == t0 + 20
