"""The demo's dashboard records what each channel delivered (broadcaster/demo/recorder.py): its `RecordingChannel`
wraps every channel of the running pipeline, MQTT's notice stream too."""

from __future__ import annotations

from rig import Rig, linked_only, poll_all
from support.gtfs_rt_builders import alert_entity, selector

from broadcaster.demo.recorder import PostLog, RecordingChannel


async def test_the_recording_channel_records_the_mqtt_notices_it_delivers(rig: Rig) -> None:
    """The MQTT notice channel delivers in batches (`send_batch`); passed through the wrapper, the dispatcher
    delivered through it and the wrapper's recording `send` never ran: the dashboard showed no MQTT notice."""
    rig.serve_rt(*[alert_entity(f"A-{i}", header={"en": f"Line {i} suspended"}, informed=[selector(route_id=str(i))],
                                effect="NO_SERVICE") for i in (1, 2, 3)])
    rig.serve_flow({})
    async with linked_only(rig.config()) as b:
        posts = PostLog()
        b.channels[:] = [RecordingChannel(channel, posts) for channel in b.channels]
        mqtt = next(channel for channel in b.channels if channel.name == "mqtt")
        await poll_all(b)
        sent = await b.drain_due(mqtt)
        assert sent >= 3
        assert len(posts.latest("mqtt")) == sent
