"""The demo's pages in real headless Chromium: the station display board follows the scripted morning over
MQTT-over-WebSocket, and says "information unavailable" when it must.

The scenario clock is paused and set by the test, so nothing waits for the story; every wait is a bounded
Playwright expectation. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import asyncio
import time as _time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import aiomqtt
import httpx
import orjson
import pytest
from playwright.async_api import Page, expect
from support.browser import ARTIFACTS, ChromiumNotFound, chromium_page, find_chromium

from broadcaster.demo.app import Demo, DemoOptions
from broadcaster.demo.script import SIGNAL_FAULT

STATION = "peoples-square"
CHANGE_WITHIN_MS = 5_000  # "within a few seconds" of the simulated event


@pytest.fixture
def chromium() -> str:
    try:
        return find_chromium()
    except ChromiumNotFound as exc:
        # A missing browser is a broken test environment (.ci/run installs it), not a reason to skip.
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
async def demo() -> AsyncIterator[Demo]:
    async with Demo(DemoOptions(port=0, speed=1, start=time(7, 30), poll_seconds=0.5)) as running:
        running.clock.pause()
        yield running


@pytest.fixture
async def page(chromium: str, tmp_path: Path) -> AsyncIterator[Page]:
    async with chromium_page(chromium, tmp_path / "chromium-profile") as p:
        yield p


async def until_board_shows(page: Page, line_id: str, status: str) -> float:
    """Seconds until the board shows `line_id` as `status` (fails after CHANGE_WITHIN_MS)."""
    started = _time.monotonic()
    await expect(page.locator(f'[data-testid="line-status"][data-line="{line_id}"]')).to_have_attribute(
        "data-status", status, timeout=CHANGE_WITHIN_MS)
    return _time.monotonic() - started


async def test_the_board_follows_the_signal_fault_and_goes_unavailable_when_the_broadcaster_stops(
    demo: Demo, page: Page
) -> None:
    timings: dict[str, float] = {}
    demo.clock.set(time(7, 35))
    await page.goto(demo.urls.display)
    board = page.get_by_test_id("board")
    await expect(board).to_have_attribute("data-state", "ok", timeout=10_000)
    await expect(page.get_by_test_id("station-zh")).to_have_text("人民广场")
    await expect(page.get_by_test_id("station-en")).to_have_text("People's Square")
    timings["first line status"] = await until_board_shows(page, "2", "normal")
    line_2 = page.locator('[data-testid="line-status"][data-line="2"]')
    await expect(line_2).to_contain_text("运营正常")
    await expect(line_2).to_contain_text("Good service")
    await expect(page.locator('[data-testid="line-status"][data-line="1"]')).to_have_attribute("data-status", "normal")

    demo.clock.set(time(7, 45))  # the signal fault has started
    timings["fault starts"] = await until_board_shows(page, "2", "delayed")
    await expect(line_2).to_contain_text("列车延误")
    await expect(line_2).to_contain_text("Delays")
    fault = page.locator(f'[data-testid="alert"][data-alert="{SIGNAL_FAULT}"]')
    await expect(fault).to_contain_text("信号设备故障，列车晚点", timeout=CHANGE_WITHIN_MS)
    await expect(fault).to_contain_text("Signal fault: trains delayed")
    await expect(page.locator('[data-testid="line-status"][data-line="1"]')).to_have_attribute("data-status", "normal")

    demo.clock.set(time(8, 17))  # updated, and People's Square restricts entry at the peak of the rush
    started = _time.monotonic()
    await expect(fault).to_contain_text("晚点约15分钟", timeout=CHANGE_WITHIN_MS)
    timings["fault updated"] = _time.monotonic() - started
    await expect(page.get_by_test_id("crowding")).to_contain_text("限流", timeout=CHANGE_WITHIN_MS)
    await expect(page.get_by_test_id("alerts")).to_contain_text("人民广场站客流较大", timeout=CHANGE_WITHIN_MS)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "display-board.png")

    demo.clock.set(time(8, 45))  # cleared, delays gone
    timings["fault clears"] = await until_board_shows(page, "2", "normal")
    await expect(fault).to_have_count(0, timeout=CHANGE_WITHIN_MS)
    await expect(line_2).to_contain_text("运营正常")

    started = _time.monotonic()
    await demo.runner.stop()
    await expect(board).to_have_attribute("data-state", "unavailable", timeout=CHANGE_WITHIN_MS)
    timings["broadcaster stopped"] = _time.monotonic() - started
    unavailable = page.get_by_test_id("unavailable")
    await expect(unavailable).to_contain_text("信息暂不可用")
    await expect(unavailable).to_contain_text("Information unavailable")
    await expect(page.get_by_test_id("lines")).to_be_hidden()
    await page.screenshot(path=ARTIFACTS / "display-board-unavailable.png")
    print("board reaction times (s):", {k: round(v, 2) for k, v in timings.items()})


def display_payload(station_id: str, valid_until: datetime) -> bytes:
    now = datetime.now(UTC)
    return orjson.dumps({
        "schema": "broadcaster.mqtt.station-display/1", "seq": 1, "issued_at": now.isoformat(),
        "valid_until": valid_until.isoformat(),
        "station": {"id": station_id, "names": {"zh": "测试站", "en": "Test Station"}},
        "lines": [{"line": {"id": "9", "short_name": "9", "names": {"zh": "9号线", "en": "Line 9"}, "color": "777777"},
                   "status": "normal", "status_text": {"zh": "运营正常", "en": "Good service"}}],
        "alerts": [], "crowding": None, "text": {}, "tts": {},
    })


async def test_the_board_treats_a_payload_past_its_valid_until_as_unknown(demo: Demo, page: Page) -> None:
    # A 3.1.1 broker keeps retained messages forever, so the board must go by the payload's own valid_until.
    station = "expiry-test"
    topic = f"metro/v1/stations/{station}/display"
    valid_until = datetime.now(UTC) + timedelta(seconds=2)
    async with asyncio.timeout(10), aiomqtt.Client(
        demo.broker.host, demo.broker.tcp_port, identifier="test-publisher", protocol=aiomqtt.ProtocolVersion.V311,
    ) as client:
        await client.publish(topic, display_payload(station, valid_until), qos=1, retain=True)
    await page.goto(demo.urls.display.rsplit("/", 1)[0] + f"?station={station}")
    board = page.get_by_test_id("board")
    await expect(page.locator('[data-testid="line-status"][data-line="9"]')).to_contain_text("运营正常",
                                                                                            timeout=10_000)
    await expect(board).to_have_attribute("data-state", "ok")
    # No new message arrives: the board turns "unavailable" on its own once valid_until has passed.
    await expect(board).to_have_attribute("data-state", "unavailable", timeout=6_000)
    await expect(page.get_by_test_id("unavailable")).to_contain_text("The data has expired")


async def test_the_dashboard_shows_feeds_outbox_and_posts_and_the_timeline_is_atom(demo: Demo, page: Page) -> None:
    demo.clock.set(time(7, 45))
    await page.goto(demo.urls.dashboard)
    await expect(page.get_by_test_id("broadcaster-state")).to_have_text("broadcaster online", timeout=10_000)
    await expect(page.get_by_test_id("sim-time")).to_have_text("07:45:00")
    feeds = page.locator("#feeds")
    await expect(feeds).to_contain_text("operations")
    await expect(feeds.locator(".chip.ok")).to_have_count(2, timeout=CHANGE_WITHIN_MS)
    channels = page.locator("#channels")
    await expect(channels).to_contain_text("信号设备故障，列车晚点", timeout=CHANGE_WITHIN_MS)
    await expect(channels).to_contain_text("/140")  # Weibo's count against its limit
    await expect(page.get_by_test_id("outbox")).to_contain_text("timeline")

    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(demo.urls.timeline)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/atom+xml")
    assert "信号设备故障，列车晚点" in response.text


async def test_the_dashboard_links_the_commuter_page_which_follows_line_2_through_the_embedded_broker(
    demo: Demo, page: Page
) -> None:
    demo.clock.set(time(7, 45))  # the signal fault has started
    await page.goto(demo.urls.dashboard)
    link = page.get_by_test_id("commuter-link")
    await expect(link).to_have_attribute("href", demo.urls.commuter, timeout=10_000)
    await page.goto(demo.urls.commuter + "?line=2")  # the page is the broadcaster's [public] site, on amqtt here
    await expect(page.get_by_test_id("title")).to_have_text("临江地铁出行提醒")
    await expect(page.locator('[data-testid="line-status"][data-line="2"]')).to_have_attribute(
        "data-level", "disrupted", timeout=CHANGE_WITHIN_MS)
    await expect(page.locator(f'[data-testid="alert"][data-alert="{SIGNAL_FAULT}"]')).to_contain_text(
        "信号设备故障，列车晚点")
