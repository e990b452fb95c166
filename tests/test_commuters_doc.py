"""docs/commuters.md stays true: its public ACL and broker limits, taken from the document itself, run on a real
Mosquitto that lets the public read and refuses its writes; the page logs in with the public account through that
broker; and the minimal subscriber example, run as written, prints a real broadcaster's line status."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_commuter_page as page_tests
from conftest import MosquittoFactory
from paho.mqtt.enums import MQTTProtocolVersion
from playwright.async_api import Page, expect
from rig import Rig, poll_all, running
from support import LoopbackHttpServer, MosquittoBroker
from support.mosquitto_passwd import write_password_file
from test_commuter_page import WITHIN_MS, Site, card, screenshot
from test_mosquitto_production import NOT_AUTHORIZED, accepted, session

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "commuters.md"
BROADCASTER_PASSWORD = "bc-secret-for-the-doc-test"
PUBLIC = ("public", "public")

# The page tests' fixtures: a running site (on this module's `broker`, with this module's `settings`), a phone.
chromium, phone, site = page_tests.chromium, page_tests.phone, page_tests.site


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def marked_block(name: str) -> str:
    """The lines between `# >>> {name}` and `# <<< {name}` in docs/commuters.md, markers included."""
    match = re.search(rf"^# >>> {name}$.*?^# <<< {name}$", doc_text(), re.MULTILINE | re.DOTALL)
    assert match, f"docs/commuters.md must mark its {name!r} block with '# >>> {name}' ... '# <<< {name}'"
    return match.group()


def subscriber_example() -> str:
    section = doc_text().split("### A minimal subscriber", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the minimal subscriber section must hold a ```python block"
    return match.group(1)


@pytest.fixture
def broker(tmp_path: Path, mosquitto_factory: MosquittoFactory) -> MosquittoBroker:
    """A broker closed to anonymous clients, with the document's ACL and limits, and a WebSocket listener."""
    acl = tmp_path / "acl"
    acl.write_text(marked_block("public acl") + "\n", encoding="utf-8")
    passwd = write_password_file(tmp_path / "passwd", {"broadcaster": BROADCASTER_PASSWORD, PUBLIC[0]: PUBLIC[1]})
    return mosquitto_factory(websockets=True, extra_config="\n".join([
        "per_listener_settings false", "allow_anonymous false", f"password_file {passwd}", f"acl_file {acl}",
        marked_block("public limits")]))


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """The broadcaster logs in with its own account; the page with the public one."""
    monkeypatch.setenv("T_DOC_MQTT_USER", "broadcaster")
    monkeypatch.setenv("T_DOC_MQTT_PASSWORD", BROADCASTER_PASSWORD)
    return {"mqtt": {"username": {"env": "T_DOC_MQTT_USER"}, "password": {"env": "T_DOC_MQTT_PASSWORD"}},
            "public": {"mqtt_username": PUBLIC[0], "mqtt_password": PUBLIC[1]}}


def test_the_documented_acl_lets_the_public_read_and_refuses_its_writes(broker: MosquittoBroker) -> None:
    topic = "metro/v1/lines/2/status"
    with session(broker, "broadcaster", BROADCASTER_PASSWORD) as bc:
        assert accepted(bc.publish(topic, b"the real status"))
    with session(broker, *PUBLIC) as public:
        assert public.retained("metro/v1/#") == {topic: b"the real status"}
        assert public.publish(topic, b"a fake suspension") == NOT_AUTHORIZED
        assert public.publish(topic, b"") == NOT_AUTHORIZED  # nor clear it
        assert public.publish("metro/v1/broadcaster/status", b"offline") == NOT_AUTHORIZED
        assert public.publish("metro/v1/notices", b"fake", retain=False) == NOT_AUTHORIZED
    with session(broker, *PUBLIC, protocol=MQTTProtocolVersion.MQTTv311) as old_client:
        old_client.publish(topic, b"a fake over 3.1.1")  # dropped without a word: 3.1.1 has no reason codes
        assert old_client.retained("metro/v1/#") == {topic: b"the real status"}
    with session(broker, "broadcaster", BROADCASTER_PASSWORD) as bc:
        assert bc.retained("metro/v1/#") == {topic: b"the real status"}
    # No anonymous clients, and the public account needs its (published) password.
    with pytest.raises(ConnectionRefusedError), session(broker, None):
        pass
    with pytest.raises(ConnectionRefusedError), session(broker, "public", "guess"):
        pass


async def test_the_page_logs_in_with_the_public_account_on_the_documented_broker(site: Site, phone: Page) -> None:
    async with httpx.AsyncClient(base_url=site.url, trust_env=False, timeout=5) as http:
        served = (await http.get("page/config.json")).text + (await http.get("page/network.json")).text
    assert '"mqtt_username":"public"' in served
    assert BROADCASTER_PASSWORD not in served
    assert "broadcaster" not in served  # the broadcaster's own account name neither
    await phone.goto(site.url + "?line=2")
    await expect(phone.get_by_test_id("connection")).to_have_attribute("data-state", "connected", timeout=WITHIN_MS)
    status = card(phone, "line", "2").get_by_test_id("line-status")
    await expect(status).to_have_attribute("data-level", "good", timeout=WITHIN_MS)
    assert re.search(r"New client connected .* as commuter-\w+ \(p2, c1, k20, u'public'\)", site.broker.log_text())
    await screenshot(phone, "11-public-account-zh")


async def test_the_minimal_subscriber_example_prints_a_real_broadcasters_line_status(
    tmp_path: Path, http_server: LoopbackHttpServer, broker: MosquittoBroker, settings: dict[str, dict[str, Any]]
) -> None:
    rig = Rig(tmp_path, http_server, broker.url, "metro")
    rig.serve_rt()
    rig.serve_flow({"S04": "FEW_SEATS_AVAILABLE"})
    example = tmp_path / "line_status.py"
    example.write_text(subscriber_example(), encoding="utf-8")
    async with running(rig.config(mqtt=settings["mqtt"])) as b:
        assert all(await poll_all(b))
        env = {**os.environ, "MQTT_HOST": broker.host, "MQTT_PORT": str(broker.port), "MQTT_TLS": "0", "LINE": "2"}
        process = await asyncio.create_subprocess_exec(sys.executable, str(example), env=env,
                                                       stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert process.stdout is not None
            async with asyncio.timeout(10):
                first = await process.stdout.readline()
        finally:
            process.kill()
            _, errors = await process.communicate()
        assert first.decode().strip() == "Line 2: Good service", errors.decode()
