"""An emergency's retained topics go out with its commit (issue 16): its line's status and alert topics and the
displays of the stations it touches are published at once, even when the caller defers the round that plans every
topic of the network (a poll round publishes once, after all its feeds). Anything else waits for that round."""

from __future__ import annotations

import orjson
from rig import Rig, running
from support import collect_retained
from test_channels import alert

SUSPENDED = {"zh": "2号线全线停运", "en": "Line 2 suspended"}
DELAYED = {"zh": "2号线列车晚点", "en": "Line 2 delayed"}


async def test_an_emergency_is_on_its_displays_before_the_round_publishes(rig: Rig) -> None:
    rig.serve_rt(alert(SUSPENDED, effect="NO_SERVICE", severity="SEVERE"))
    async with running(rig.config()) as b:
        feed = next(f for f in b.config.feeds if f.name == "ops")
        assert (await b.poll(feed, publish=False)).ok
        retained = await collect_retained(rig.mqtt_url, rig.topic("#"))
        alert_topic = rig.topic("lines/2/alerts/A-L2")
        assert orjson.loads(retained[alert_topic])["header"] == SUSPENDED
        displays = [orjson.loads(p) for t, p in retained.items() if t.endswith("/display") and p]
        on_line_2 = [d for d in displays if any(line["line"]["id"] == "2" for line in d["lines"])]
        assert on_line_2
        assert all(any(a["header"] == SUSPENDED for a in d["alerts"]) for d in on_line_2)


async def test_a_routine_alert_waits_for_the_round(rig: Rig) -> None:
    rig.serve_rt(alert(DELAYED))
    async with running(rig.config()) as b:
        feed = next(f for f in b.config.feeds if f.name == "ops")
        assert (await b.poll(feed, publish=False)).ok
        retained = await collect_retained(rig.mqtt_url, rig.topic("lines/2/#"))
        assert rig.topic("lines/2/alerts/A-L2") not in retained
        await b.publisher.publish_retained()
        retained = await collect_retained(rig.mqtt_url, rig.topic("lines/2/#"))
        assert orjson.loads(retained[rig.topic("lines/2/alerts/A-L2")])["header"] == DELAYED
