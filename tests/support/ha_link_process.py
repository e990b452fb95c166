"""One instance's MQTT link in a process of its own, for tests that SIGKILL it: its sockets die with it, unannounced,
as a crashed machine's do, so the broker fires its Wills.

    python tests/support/ha_link_process.py CONFIG_JSON

CONFIG_JSON holds the `MqttConfig` fields under "mqtt", and "ha_instance", "installation". Commands on stdin, one a
line: `lead` (become_leader), `step_down`, `notice TEXT` (publish TEXT on the notice stream). Each leader session
publishes the retained topic `lines/L1/status` naming the instance. Events on stdout, one a line: `present`
(the presence session is up), `session N` (the N-th leader session is up and republished), `stepped_down`,
`published`, `refused REASON` (a notice the link would not publish).
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from broadcaster.channels.mqtt import MqttLink
from broadcaster.config import MqttConfig
from broadcaster.errors import TransientDeliveryError
from broadcaster.retained import Publication


def say(event: str) -> None:
    sys.stdout.write(event + "\n")
    sys.stdout.flush()


async def main(spec: dict[str, object]) -> None:
    config = MqttConfig.model_validate(spec["mqtt"])
    link = MqttLink(config, instance=str(spec["installation"]), ha_instance=str(spec["ha_instance"]))

    async def republish() -> None:
        body = orjson.dumps({"instance": link.ha_instance, "session": link.sessions})
        await link.publish(Publication(link.topics.line_status("L1"), body, retain=True))
        say(f"session {link.sessions}")

    link.when_connected(republish)
    stop = asyncio.Event()
    run = asyncio.create_task(link.run(stop))
    assert link.presence is not None
    await link.presence.present.wait()
    say("present")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        command, _, rest = line.partition(" ")
        if command == "lead":
            await link.become_leader()
        elif command == "step_down":
            await link.step_down()
            say("stepped_down")
        elif command == "notice":
            try:
                await link.publish(Publication(link.topics.notices, rest.encode(), retain=False))
                say("published")
            except TransientDeliveryError as exc:
                say(f"refused {exc.reason}")
    stop.set()
    await run


if __name__ == "__main__":
    asyncio.run(main(orjson.loads(sys.argv[1])))
