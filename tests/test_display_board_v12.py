"""The demo's station board (display.js) in headless Chromium, on what MQTT contract v1.2 adds: a line at level
`changes` is not drawn as good service, and a batch run's `online` counts only until its `valid_until`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiomqtt
import orjson
from playwright.async_api import Page, expect
from test_demo_browser import chromium, demo, display_payload, page  # noqa: F401 (fixtures)

from broadcaster.demo.app import Demo


def with_detour(payload: bytes) -> bytes:
    body = orjson.loads(payload)
    body["lines"][0].update({"level": "changes", "status_text": {"zh": "运营调整", "en": "Service changes"}})
    return orjson.dumps(body)


async def test_the_board_shows_service_changes_and_a_batch_status_until_its_valid_until(
    demo: Demo, page: Page  # noqa: F811 (fixtures)
) -> None:
    station = "batch-test"
    now = datetime.now(UTC)
    batch = {"schema": "broadcaster.mqtt.broadcaster-status/1", "status": "online", "client_id": "cron",
             "since": now.isoformat(), "version": "0.1.0", "mode": "batch",
             "valid_until": (now + timedelta(seconds=3)).isoformat()}
    async with asyncio.timeout(10), aiomqtt.Client(
        demo.broker.host, demo.broker.tcp_port, identifier="test-publisher", protocol=aiomqtt.ProtocolVersion.V311,
    ) as client:
        await client.publish(f"metro/v1/stations/{station}/display",
                             with_detour(display_payload(station, now + timedelta(minutes=30))), qos=1, retain=True)
        await client.publish("metro/v1/broadcaster/status", orjson.dumps(batch), qos=1, retain=True)
    await page.goto(demo.urls.display.rsplit("/", 1)[0] + f"?station={station}")
    board = page.get_by_test_id("board")
    line = page.locator('[data-testid="line-status"][data-line="9"]')
    await expect(line).to_contain_text("Service changes", timeout=10_000)
    await expect(line).to_have_attribute("data-level", "changes")
    await expect(line).to_have_class("line warn")  # not the green of good service
    await expect(board).to_have_attribute("data-state", "ok")  # a batch run's online shows the data
    # No new message: once the batch's valid_until passes, the board says so by itself.
    await expect(board).to_have_attribute("data-state", "unavailable", timeout=8_000)
    await expect(page.get_by_test_id("unavailable")).to_contain_text("The last scheduled update has expired")
