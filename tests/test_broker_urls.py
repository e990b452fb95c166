"""Several brokers (`mqtt.urls`): the link connects to the first that answers, fails over to the next when it
loses one, republishes the whole retained state on each, says which one it is on, and does not flap back."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ADMIN_TOKEN, MosquittoFactory
from hypothesis import given, settings
from hypothesis import strategies as st
from rig import Rig, poll_all, running
from support import LoopbackHttpServer, MessageRecorder, collect_retained, collect_retained_until, free_port
from support.fault_proxy import FaultProxy
from support.gtfs_rt_builders import alert_entity, selector
from test_config_secrets import base_document

from broadcaster.admin.server import AdminServer
from broadcaster.config import AdminConfig, AdminToken, SecretRef, broker_label, parse_config, with_mqtt_url
from broadcaster.errors import ConfigError, IdentityConflict
from broadcaster.runner import open_broadcaster, run_once
from broadcaster.status import status_report

SECRET = "hunter2-sentinel-pass"


def metric_line(text: str, url: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f'broadcaster_mqtt_broker{{url="{url}"}}'))


async def test_the_link_fails_over_to_the_next_broker_republishes_everything_and_does_not_flap_back(
    tmp_path: Path, http_server: LoopbackHttpServer, mosquitto_factory: MosquittoFactory, topic_prefix: str,
    admin_tokens: None,
) -> None:
    first, second = mosquitto_factory(), mosquitto_factory()
    rig = Rig(tmp_path, http_server, first.url, topic_prefix)
    rig.serve_rt(alert_entity("A-1", header={"en": "Line 1 running slowly"}, informed=[selector(route_id="1")],
                              effect="SIGNIFICANT_DELAYS"))
    rig.serve_flow({"S04": "FULL"})
    config = rig.config(mqtt={"urls": [first.url, second.url]})
    async with running(config) as b:
        assert b.link.broker == first.url  # the first that answers
        await poll_all(b)
        on_first = await collect_retained(first.url, rig.topic("#"))
        assert rig.topic("lines/1/alerts/A-1") in on_first
        assert len(on_first) > 20

        killed = time.monotonic()
        first.kill()  # SIGKILL: the link loses its broker
        async with asyncio.timeout(15):
            await b.link.wait_for_session(2)
        assert b.link.broker == second.url
        connected = time.monotonic()
        # The republish follows the session's start: read until it is all there (bounded), not once.
        on_second = await collect_retained_until(second.url, rig.topic("#"), lambda r: set(r) >= set(on_first),
                                                 settle=0.2)
        assert set(on_second) == set(on_first)  # the whole retained state, on a broker that had none of it
        print(f"failover: session on the second broker {connected - killed:.2f} s after the SIGKILL, its whole"
              f" retained state ({len(on_second)} topics) read {time.monotonic() - killed:.2f} s after it"
              " (including the reader's 0.2 s settle)")
        assert b'"online"' in on_second[rig.topic("broadcaster/status")]

        # Which broker is in use: the admin API's /v1/status, metrics, and `broadcaster status`.
        admin = AdminConfig(listen="127.0.0.1:0", tokens=(AdminToken(id="desk", token=SecretRef(env="T_ADMIN")),))
        async with (AdminServer(b, admin) as server,
                    httpx.AsyncClient(base_url=server.url, timeout=10, trust_env=False) as http):
            answer = await http.get("/v1/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert answer.status_code == 200
        expected = {"connected": True, "broker": broker_label(second.url), "url": first.url, "protocol": "5",
                    "brokers": [broker_label(first.url), broker_label(second.url)], "sessions": 2}
        assert {key: answer.json()["mqtt"].get(key) for key in expected} == expected
        metrics = b.metrics.render().decode()
        assert metric_line(metrics, broker_label(second.url)).endswith(" 1.0")
        assert metric_line(metrics, broker_label(first.url)).endswith(" 0.0")
        report = status_report(config)
        assert report.broker is not None
        assert report.broker["url"] == broker_label(second.url)
        assert f"broker: {broker_label(second.url)} (MQTT 5)" in report.as_text()

        # The first broker comes back: the link stays where it is, and goes on publishing there.
        first.start()
        async with MessageRecorder(first.url, rig.topic("#")) as on_first_again:
            rig.serve_flow({"S04": "MANY_SEATS_AVAILABLE"})
            await poll_all(b)
            await wait_for_crowding(second.url, rig.topic("stations/S04/crowding"))
            assert await on_first_again.settle(quiet=1.5, timeout=10) == []
        assert b.link.sessions == 2
        assert b.link.broker == second.url

        # Until the second one fails: then back to the first, with everything.
        second.kill()
        async with asyncio.timeout(15):
            await b.link.wait_for_session(3)
        assert b.link.broker == first.url
        back = await collect_retained_until(first.url, rig.topic("#"), lambda r: set(r) >= set(on_first))
        assert set(back) == set(on_first)
        assert b'MANY_SEATS_AVAILABLE' in back[rig.topic("stations/S04/crowding")]
        assert metric_line(b.metrics.render().decode(), broker_label(first.url)).endswith(" 1.0")


async def wait_for_crowding(url: str, topic: str) -> None:
    """Wait until `topic` on the broker at `url` says MANY_SEATS_AVAILABLE."""
    async with MessageRecorder(url, topic) as recorder:
        await recorder.wait_for(lambda ms: any(b"MANY_SEATS_AVAILABLE" in m.payload for m in ms), timeout=10)


async def test_a_first_broker_that_does_not_answer_is_skipped(
    tmp_path: Path, http_server: LoopbackHttpServer, mosquitto_factory: MosquittoFactory, topic_prefix: str,
) -> None:
    down, up = mosquitto_factory(), mosquitto_factory()
    down.kill()
    rig = Rig(tmp_path, http_server, up.url, topic_prefix)
    rig.serve_rt()
    rig.serve_flow({"S04": "FULL"})
    async with running(rig.config(mqtt={"urls": [down.url, up.url]})) as b:
        assert b.link.broker == up.url
        await poll_all(b)
        assert rig.topic("stations/S04/crowding") in await collect_retained(up.url, rig.topic("#"))


# -- the config: mqtt.urls -------------------------------------------------------------------------------------

GOOD = st.sampled_from(["mqtt://10.0.0.1:1883", "mqtt://10.0.0.2", "mqtts://broker.example:8883",
                        "mqtt://[::1]:1884", "mqtts://b3.example"])
BAD = st.sampled_from([
    "http://broker.example:1883", "tcp://10.0.0.9:1883", "broker.example:1883", "",
    f"mqtt://metro:{SECRET}@broker.example:1883", f"mqtts://{SECRET}@broker.example", "mqtt://", "mqtt://h:99999",
])
ENTRY = st.one_of(GOOD.map(lambda url: ("good", url)), BAD.map(lambda url: ("bad", url)))


def load(urls: list[str], tmp_path: Path, **mqtt: Any) -> Any:
    document = copy.deepcopy(base_document())
    del document["mqtt"]["url"]
    document["mqtt"].update(urls=urls, **mqtt)
    return parse_config(document, tmp_path / "broadcaster.toml")


@settings(max_examples=150, deadline=None)
@given(entries=st.lists(ENTRY, max_size=6))
def test_a_bad_broker_list_is_refused_naming_the_entry_and_never_its_password(
    entries: list[tuple[str, str]], tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tmp_path = tmp_path_factory.getbasetemp()
    urls = [url for _, url in entries]
    bad = [i for i, (kind, _) in enumerate(entries) if kind == "bad"]
    seen: dict[str, int] = {}
    repeated = None
    for i, url in enumerate(urls):
        if i not in bad and broker_label(url) in seen and repeated is None:
            repeated = i
        seen.setdefault(broker_label(url) if i not in bad else f"bad{i}", i)
    expected = "mqtt.urls" if not urls else f"mqtt.urls[{bad[0]}]" if bad else (
        f"mqtt.urls[{repeated}]" if repeated is not None else None)
    if expected is None:
        assert load(urls, tmp_path).mqtt.brokers == tuple(urls)
        return
    with pytest.raises(ConfigError) as caught:
        load(urls, tmp_path)
    assert caught.value.key == expected
    assert SECRET not in str(caught.value)
    assert caught.value.message  # says what is wrong
    if repeated is not None and not bad:
        assert f"same broker as mqtt.urls[{seen[broker_label(urls[repeated])]}]" in caught.value.message


def test_url_and_urls_are_one_or_the_other_and_a_list_of_one_is_the_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(["mqtt://10.0.0.1"], tmp_path, url="mqtt://10.0.0.2")
    assert caught.value.key == "mqtt.urls"
    assert "mqtt.url" in caught.value.message
    one = load(["mqtt://10.0.0.1:1883"], tmp_path).mqtt
    document = base_document()
    document["mqtt"]["url"] = "mqtt://10.0.0.1:1883"
    alone = parse_config(document, tmp_path / "broadcaster.toml").mqtt
    assert one.brokers == alone.brokers == ("mqtt://10.0.0.1:1883",)


def test_the_command_lines_broker_replaces_the_whole_list(tmp_path: Path) -> None:
    config = load(["mqtt://10.0.0.1", "mqtt://10.0.0.2"], tmp_path)
    assert with_mqtt_url(config, "mqtt://10.0.0.9:1883").mqtt.brokers == ("mqtt://10.0.0.9:1883",)


async def test_a_batch_run_that_reaches_no_broker_names_the_configured_ones(
    tmp_path: Path, http_server: LoopbackHttpServer, topic_prefix: str, caplog: pytest.LogCaptureFixture,
) -> None:
    dead = [f"mqtt://127.0.0.1:{free_port()}", f"mqtt://127.0.0.1:{free_port()}"]
    rig = Rig(tmp_path, http_server, dead[0], topic_prefix)
    rig.serve_rt()
    rig.serve_flow({"S04": "FULL"})
    config = rig.config(mqtt={"urls": dead, "connect_timeout_seconds": 1.5})
    with caplog.at_level(logging.ERROR, logger="broadcaster.runner"):
        assert await run_once(config, drain_timeout=1) == 1
    failure = next(r.getMessage() for r in caplog.records if "unreachable" in r.getMessage())
    assert all(url in failure for url in dead), failure  # the brokers it tried, not mqtt.url's unused default
    assert "127.0.0.1:1883" not in failure


async def test_the_start_up_identity_check_asks_the_next_broker_when_the_first_does_not_answer(
    tmp_path: Path, http_server: LoopbackHttpServer, mosquitto_factory: MosquittoFactory, topic_prefix: str,
) -> None:
    """A second installation with our client id, online on the second broker while the first is down, is found
    before anything is polled or posted, not only once `run` has moved on to the second broker."""
    down, up = mosquitto_factory(), mosquitto_factory()
    down.kill()
    rig = Rig(tmp_path, http_server, up.url, topic_prefix)
    rig.serve_rt()
    rig.serve_flow({"S04": "FULL"})
    async with running(rig.config(state={"directory": str(tmp_path / "state-first")})) as first:
        second_config = rig.config(state={"directory": str(tmp_path / "state-second")},
                                   mqtt={"urls": [down.url, up.url]})
        async with open_broadcaster(second_config) as second:
            with pytest.raises(IdentityConflict) as refused:
                await second.link.check_identity()
        assert refused.value.instance == first.link.instance
        assert first.link.sessions == 1


async def test_a_will_the_lost_broker_fires_later_through_a_bridge_does_not_leave_displays_offline(
    tmp_path: Path, http_server: LoopbackHttpServer, mosquitto_factory: MosquittoFactory, topic_prefix: str,
) -> None:
    """The route to the first broker dies while that broker lives on: the link fails over to the second, and the
    first, bridged to the second, publishes our `offline` Will once its keepalive and Will Delay have run out,
    overwriting the `online` the link left there. The link is online on the second broker: it says so again."""
    first = mosquitto_factory()
    rig = Rig(tmp_path, http_server, first.url, topic_prefix)
    status_topic = rig.topic("broadcaster/status")
    second = mosquitto_factory(extra_config="\n".join([
        "connection to-first", f"address 127.0.0.1:{first.port}", f"topic {rig.topic('#')} both 1",
        "bridge_protocol_version mqttv50", "cleansession true", "restart_timeout 1",
    ]))
    rig.serve_rt()
    rig.serve_flow({"S04": "FULL"})
    async with FaultProxy("127.0.0.1", first.port) as route:
        config = rig.config(mqtt={"urls": [route.url, second.url], "keepalive_seconds": 5, "will_delay_seconds": 4})
        async with running(config) as b, MessageRecorder(second.url, status_topic) as on_second:
            await on_second.wait_for(lambda ms: any(b'"online"' in m.payload for m in ms), timeout=10)  # bridged
            route.blackhole()
            async with asyncio.timeout(30):
                await b.link.wait_for_session(2)
            assert b.link.broker == second.url
            # The first broker's Will reaches the second through the bridge...
            await on_second.wait_for(lambda ms: any(b'"offline"' in m.payload for m in ms), timeout=30)
            # ...and the link, online there, answers it.
            await on_second.wait_for(lambda ms: b'"online"' in ms[-1].payload, timeout=10)
            assert b'"online"' in (await collect_retained(second.url, status_topic))[status_topic]


@pytest.mark.parametrize("url", [f"mqtt://metro:1234?{SECRET}@broker.example", f"mqtts://metro:99/{SECRET}@broker.example",
                                 f"mqtt://metro:1883#{SECRET}@broker.example"])
def test_credentials_are_refused_even_where_a_password_makes_them_look_like_a_port_and_a_path(
    url: str, tmp_path: Path,
) -> None:
    """A password starting with digits and holding `?`, `/` or `#` splits the URL before its `@`: the rest looked
    like a query, path or fragment, the URL passed, and went into logs and /v1/status whole."""
    with pytest.raises(ConfigError) as in_urls:
        load(["mqtt://10.0.0.1", url], tmp_path)
    assert in_urls.value.key == "mqtt.urls[1]"
    document = base_document()
    document["mqtt"]["url"] = url
    with pytest.raises(ConfigError) as in_url:
        parse_config(document, tmp_path / "broadcaster.toml")
    assert in_url.value.key == "mqtt.url"
    with pytest.raises(ConfigError) as on_the_command_line:
        with_mqtt_url(load(["mqtt://10.0.0.1"], tmp_path), url)
    assert on_the_command_line.value.key == "--mqtt-url"
    for caught in (in_urls, in_url, on_the_command_line):
        assert SECRET not in str(caught.value)
        assert "credentials" in caught.value.message
