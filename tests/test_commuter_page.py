"""The commuter page (docs/commuters.md) in real headless Chromium on a phone-sized screen, against a real
broadcaster (`runner.serve` with a `[public]` section, feeds on a loopback server) and a real Mosquitto with a
WebSocket listener.

Notifications are observed through one narrow seam: an init script wraps `window.Notification` so every
notification the page shows is recorded (and still handed to the real constructor). Every wait is a bounded
Playwright expectation; screenshots of each state go to test-artifacts/.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import orjson
import pytest
from conftest import MosquittoFactory
from playwright.async_api import Locator, Page, WebSocketRoute, expect
from rig import Rig, toml_value
from support import LoopbackHttpServer, MessageRecorder, MosquittoBroker, collect_retained, free_port
from support.browser import ARTIFACTS, ChromiumNotFound, chromium_page, find_chromium
from support.gtfs_rt_builders import alert_entity, selector

from broadcaster.config import load_config
from broadcaster.runner import open_broadcaster, serve
from broadcaster.service import Broadcaster

#: "Within seconds": from the feed's change to the page (a poll every 0.5 s, the pipeline, the broker, the page).
WITHIN_MS = 5_000
#: The page reconnects with backoff (0.5 s doubling); a broker that was away for a moment is back within this.
RECONNECT_MS = 12_000
PHONE: dict[str, Any] = {"width": 360, "height": 740, "is_mobile": True, "has_touch": True,
                         "permissions": ["notifications"]}

RECORD_NOTIFICATIONS = """
(() => {
  const Real = window.Notification;
  window.__notifications = [];
  function Recording(title, options = {}) {
    window.__notifications.push({ title, body: options.body, tag: options.tag });
    try { return new Real(title, options); } catch { return {}; }
  }
  Object.defineProperty(Recording, "permission", { get: () => Real.permission });
  Recording.requestPermission = (...args) => Real.requestPermission(...args);
  window.Notification = Recording;
})();
"""

SIGNAL = {"zh": "2号线信号故障，列车晚点", "en": "Line 2 signal fault: trains delayed"}
SIGNAL_UPDATED = {"zh": "2号线信号故障，预计晚点20分钟", "en": "Line 2 signal fault: expect 20 min delays"}
LIFT = {"zh": "1号线电梯维修", "en": "Line 1 lift under repair"}
CROWD = {"zh": "2号线客流较大，请耐心候车", "en": "Line 2 is crowded: please allow extra time"}


def signal_fault(header: dict[str, str] = SIGNAL) -> Any:
    return alert_entity("A-2-signal", header=header, informed=[selector(route_id="2")],
                        effect="SIGNIFICANT_DELAYS", severity="WARNING", cause="TECHNICAL_PROBLEM")


def lift_on_line_1() -> Any:
    return alert_entity("A-1-lift", header=LIFT, informed=[selector(route_id="1")], effect="ACCESSIBILITY_ISSUE",
                        severity="INFO")


def crowding_on_line_2() -> Any:
    return alert_entity("A-2-crowd", header=CROWD, informed=[selector(route_id="2")], effect="OTHER_EFFECT",
                        severity="INFO")


@dataclass
class Site:
    """A running broadcaster with its public site, its broker and the feeds it polls."""

    url: str
    rig: Rig
    broker: MosquittoBroker
    b: Broadcaster
    stop: asyncio.Event


@pytest.fixture
def chromium() -> str:
    try:
        return find_chromium()
    except ChromiumNotFound as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def broker(mosquitto_factory: MosquittoFactory) -> MosquittoBroker:
    return mosquitto_factory(websockets=True, extra_config="log_type subscribe\nlog_type unsubscribe")


@pytest.fixture
def settings() -> dict[str, dict[str, Any]]:
    """Extra `mqtt` and `public` settings of the site's config (a module overrides this fixture)."""
    return {"mqtt": {}, "public": {}}


def site_config_path(rig: Rig, broker: MosquittoBroker, port: int, settings: dict[str, dict[str, Any]]) -> Path:
    """The rig's config, feeds polled every half second, with a [public] site whose page reaches `broker`."""
    path = rig.write_config(mqtt=settings["mqtt"])
    text = path.read_text(encoding="utf-8").replace('max_age_seconds = 300\n',
                                                    'max_age_seconds = 300\npoll_seconds = 0.5\n')
    public = {"listen": f"127.0.0.1:{port}", "mqtt_websocket_url": broker.ws_url,
              "page_title": {"zh": "地铁出行提醒", "en": "Metro alerts"}, **settings["public"]}
    path.write_text(text + "\n[public]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in public.items()),
                    encoding="utf-8")
    return path


@pytest.fixture
async def site(
    tmp_path: Path, http_server: LoopbackHttpServer, broker: MosquittoBroker, settings: dict[str, dict[str, Any]]
) -> AsyncIterator[Site]:
    rig = Rig(tmp_path, http_server, broker.url, "metro")
    rig.serve_rt()
    rig.serve_flow({"S04": "FEW_SEATS_AVAILABLE"})
    port = free_port()
    config = load_config(site_config_path(rig, broker, port, settings))
    stop = asyncio.Event()
    started = asyncio.Event()
    async with open_broadcaster(config) as b:
        task = asyncio.create_task(serve(b, stop, grace=2, on_started=started.set))
        try:
            async with asyncio.timeout(15):
                await started.wait()
                await b.link.connected.wait()
            yield Site(f"http://127.0.0.1:{port}/", rig, broker, b, stop)
        finally:
            stop.set()
            async with asyncio.timeout(15):
                await task


@pytest.fixture
async def phone(chromium: str, tmp_path: Path) -> AsyncIterator[Page]:
    async with chromium_page(chromium, tmp_path / "chromium-profile", **PHONE) as page:
        await page.add_init_script(RECORD_NOTIFICATIONS)
        yield page


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / f"commuter-{name}.png", full_page=True)


def card(page: Page, kind: str, pick_id: str) -> Locator:
    return page.locator(f'.pick[data-kind="{kind}"][data-id="{pick_id}"]')


def alert(page: Page, alert_id: str) -> Locator:
    return page.locator(f'[data-testid="alert"][data-alert="{alert_id}"]')


async def notifications(page: Page) -> list[dict[str, Any]]:
    recorded: list[dict[str, Any]] = await page.evaluate("window.__notifications")
    return recorded


async def until_notified(page: Page, count: int) -> list[dict[str, Any]]:
    await page.wait_for_function("(count) => window.__notifications.length >= count", arg=count, timeout=WITHIN_MS)
    return await notifications(page)


async def pick_line(page: Page, line_id: str) -> None:
    await page.get_by_test_id("line-select").select_option(line_id)
    await page.get_by_test_id("add-line").tap()


async def test_a_rider_picks_line_2_sees_its_alert_within_seconds_and_is_notified_once_and_not_for_line_1(
    site: Site, phone: Page
) -> None:
    console_errors: list[str] = []
    phone.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
    await phone.goto(site.url)
    await expect(phone.get_by_test_id("connection")).to_have_attribute("data-state", "connected", timeout=WITHIN_MS)
    await expect(phone.get_by_test_id("title")).to_have_text("地铁出行提醒")  # zh from the browser's zh-CN
    await expect(phone.get_by_test_id("empty")).to_be_visible()
    await expect(phone.get_by_test_id("notifications")).to_have_text("通知已开启")  # permission granted
    assert await phone.evaluate("document.documentElement.scrollWidth") <= 360  # nothing wider than the phone
    await screenshot(phone, "1-empty-zh")

    await pick_line(phone, "2")
    line_2 = card(phone, "line", "2")
    status = line_2.get_by_test_id("line-status")
    await expect(status).to_have_attribute("data-level", "good", timeout=WITHIN_MS)
    await expect(status).to_contain_text("运营正常")
    await screenshot(phone, "2-picked-line-2-zh")

    # One feed change: an alert on line 1 (not picked) and one on line 2, published in the same refresh.
    started = time.monotonic()
    site.rig.serve_rt(lift_on_line_1(), signal_fault())
    await expect(alert(phone, "A-2-signal")).to_contain_text(SIGNAL["zh"], timeout=WITHIN_MS)
    shown_after = time.monotonic() - started
    await expect(status).to_have_attribute("data-level", "disrupted")
    recorded = await until_notified(phone, 1)
    assert [n["title"] for n in recorded] == [f"2号线: {SIGNAL['zh']}"]
    assert recorded[0]["tag"] == "alert-A-2-signal"
    await expect(alert(phone, "A-1-lift")).to_have_count(0)
    await screenshot(phone, "3-alert-and-notification-zh")

    # Line 1's alert was there all along: picking line 1 now shows it, without a notification (it is not news).
    await pick_line(phone, "1")
    await expect(alert(phone, "A-1-lift")).to_contain_text(LIFT["zh"], timeout=WITHIN_MS)
    # An update of line 2's alert (a new version) notifies again; nothing else did meanwhile.
    site.rig.serve_rt(lift_on_line_1(), signal_fault(SIGNAL_UPDATED))
    await expect(alert(phone, "A-2-signal")).to_contain_text(SIGNAL_UPDATED["zh"], timeout=WITHIN_MS)
    recorded = await until_notified(phone, 2)
    assert [n["title"] for n in recorded] == [f"2号线: {SIGNAL['zh']}", f"2号线: {SIGNAL_UPDATED['zh']}"]

    # English, kept across a reload with the picks.
    await phone.get_by_test_id("lang-toggle").tap()
    await expect(status).to_contain_text("Delays")
    await phone.reload()
    await expect(phone.get_by_test_id("title")).to_have_text("Metro alerts")
    await expect(alert(phone, "A-2-signal")).to_contain_text(SIGNAL_UPDATED["en"], timeout=WITHIN_MS)
    await expect(card(phone, "line", "1")).to_contain_text("Line 1")
    await expect(phone.get_by_test_id("connection")).to_have_text("Live")
    await screenshot(phone, "4-two-lines-en")
    assert console_errors == []  # the page runs under its Content-Security-Policy without a violation
    print(f"line 2's alert shown {shown_after:.2f} s after the feed changed")


async def test_the_page_says_when_the_broker_is_lost_recovers_and_does_not_notify_a_replayed_alert_again(
    site: Site, phone: Page
) -> None:
    await phone.goto(site.url + "?line=2")  # as the Atom feeds link to a line
    await expect(card(phone, "line", "2").get_by_test_id("line-status")).to_have_attribute(
        "data-level", "good", timeout=WITHIN_MS)
    site.rig.serve_rt(signal_fault())
    await expect(alert(phone, "A-2-signal")).to_have_attribute("data-connection", "1", timeout=WITHIN_MS)
    await until_notified(phone, 1)

    site.broker.stop()
    connection = phone.get_by_test_id("connection")
    await expect(connection).to_have_attribute("data-state", "lost", timeout=WITHIN_MS)
    await expect(connection).to_contain_text("连接已断开，正在重连")
    await expect(alert(phone, "A-2-signal")).to_be_visible()  # what it knew stays, dimmed as possibly outdated
    await expect(phone.locator("body")).to_have_attribute("data-live", "no")
    await screenshot(phone, "5-connection-lost-zh")

    site.broker.start()
    await expect(connection).to_have_attribute("data-state", "connected", timeout=RECONNECT_MS)
    # The broker replays the retained alert to the new subscription: shown again, not notified again.
    await expect(alert(phone, "A-2-signal")).to_have_attribute("data-connection", "2", timeout=WITHIN_MS)
    assert len(await notifications(phone)) == 1
    # A new alert on the line after the reconnect is news.
    site.rig.serve_rt(signal_fault(), crowding_on_line_2())
    await expect(alert(phone, "A-2-crowd")).to_contain_text(CROWD["zh"], timeout=WITHIN_MS)
    recorded = await until_notified(phone, 2)
    assert [n["tag"] for n in recorded] == ["alert-A-2-signal", "alert-A-2-crowd"]

    # The broadcaster stops cleanly: it says offline, and the page says the information is unavailable.
    site.stop.set()
    unavailable = phone.get_by_test_id("unavailable")
    await expect(unavailable).to_have_attribute("data-reason", "offline", timeout=WITHIN_MS)
    await expect(unavailable).to_contain_text("信息暂不可用：播报系统离线")
    await screenshot(phone, "6-broadcaster-offline-zh")


async def test_an_alert_resolved_while_the_page_did_not_listen_is_gone_when_it_listens_again(
    site: Site, phone: Page
) -> None:
    # A resolved alert's topic is cleared on the broker: a subscriber that was away gets no empty payload for it,
    # only the retained alerts still active. The page must take the replay as the whole truth.
    await phone.goto(site.url + "?line=2")
    site.rig.serve_rt(signal_fault(), crowding_on_line_2())
    await expect(alert(phone, "A-2-crowd")).to_be_visible(timeout=WITHIN_MS)
    await expect(alert(phone, "A-2-signal")).to_be_visible()

    # Away from the line: the pick removed, the crowding alert resolved meanwhile, the line picked again.
    await card(phone, "line", "2").get_by_test_id("remove").tap()
    async with MessageRecorder(site.broker.url, "metro/v1/lines/2/alerts/A-2-crowd") as crowd_topic:
        site.rig.serve_rt(signal_fault())  # resolved after 2 polls without it (resolve_after_missing)
        await crowd_topic.wait_for(lambda messages: any(m.payload == b"" for m in messages), timeout=10)
    await pick_line(phone, "2")
    await expect(alert(phone, "A-2-signal")).to_be_visible(timeout=WITHIN_MS)
    await expect(alert(phone, "A-2-crowd")).to_have_count(0)

    # Away from the broker: the signal fault resolved, and its topic cleared, before the page is back. The page's
    # reconnections are refused (Playwright's WebSocket routing) until the broadcaster has cleared the topic.
    refusing = True

    async def broker_door(ws: WebSocketRoute) -> None:
        if refusing:
            await ws.close()
        else:
            ws.connect_to_server()

    await phone.route_web_socket(re.compile(".*"), broker_door)
    site.broker.stop()
    await expect(phone.get_by_test_id("connection")).to_have_attribute("data-state", "lost", timeout=WITHIN_MS)
    site.rig.serve_rt()
    site.broker.start()
    async with asyncio.timeout(10):  # resolved (2 polls without it), the broker's saved copy cleared
        while await collect_retained(site.broker.url, "metro/v1/lines/2/alerts/#", settle=0.2):
            continue  # each look waits 0.2 s for the broker's replay
    refusing = False
    await expect(phone.get_by_test_id("connection")).to_have_attribute("data-state", "connected",
                                                                       timeout=RECONNECT_MS)
    await expect(card(phone, "line", "2").get_by_test_id("line-status")).to_have_attribute(
        "data-level", "good", timeout=WITHIN_MS)
    await expect(alert(phone, "A-2-signal")).to_have_count(0)


async def test_outside_the_picks_days_an_alert_shows_but_does_not_notify(site: Site, phone: Page) -> None:
    await phone.goto(site.url + "?line=2")
    line_2 = card(phone, "line", "2")
    await expect(line_2.get_by_test_id("line-status")).to_have_attribute("data-level", "good", timeout=WITHIN_MS)
    today: int = await phone.evaluate("new Date().getDay()")
    await line_2.get_by_test_id("window-summary").tap()
    days = line_2.get_by_test_id("window-days")
    await days.locator(f'input[data-day="{(today + 1) % 7}"]').check()  # tomorrow only
    await expect(line_2.get_by_test_id("window-summary")).to_contain_text("当前不在通知时段")
    site.rig.serve_rt(signal_fault())
    await expect(alert(phone, "A-2-signal")).to_contain_text(SIGNAL["zh"], timeout=WITHIN_MS)
    # The notification would have been made before the alert was drawn (one message handler does both).
    assert await notifications(phone) == []
    await screenshot(phone, "10-quiet-hours-zh")

    await days.locator(f'input[data-day="{today}"]').check()  # today too: notifications again, kept on reload
    await phone.reload()
    await expect(line_2.get_by_test_id("window-summary")).not_to_contain_text("当前不在通知时段", timeout=WITHIN_MS)
    # Subscribed again (the retained alert is back) before the feed changes, so the new alert comes live.
    await expect(alert(phone, "A-2-signal")).to_be_visible(timeout=WITHIN_MS)
    site.rig.serve_rt(signal_fault(), crowding_on_line_2())
    await expect(alert(phone, "A-2-crowd")).to_contain_text(CROWD["zh"], timeout=WITHIN_MS)
    assert [n["tag"] for n in await until_notified(phone, 1)] == ["alert-A-2-crowd"]


#: Chrome on Android: the page may not construct a Notification ("Illegal constructor"), only a service worker
#: registration may show one. Each notification the registration has shown is recorded once it is up.
ANDROID_NOTIFICATION = """
(() => {
  const Real = window.Notification;
  function AndroidLike() { throw new TypeError("Failed to construct 'Notification': Illegal constructor."); }
  Object.defineProperty(AndroidLike, "permission", { get: () => Real.permission });
  AndroidLike.requestPermission = (...args) => Real.requestPermission(...args);
  window.Notification = AndroidLike;
  window.__notifications = [];
  const show = ServiceWorkerRegistration.prototype.showNotification;
  ServiceWorkerRegistration.prototype.showNotification = function (title, options = {}) {
    return show.call(this, title, options).then(() => {
      window.__notifications.push({ title, body: options.body, tag: options.tag });
    });
  };
})();
"""


async def test_where_only_a_service_worker_may_notify_the_page_notifies_through_one(
    site: Site, chromium: str, tmp_path: Path
) -> None:
    async with chromium_page(chromium, tmp_path / "android-profile", **PHONE) as android:
        await android.add_init_script(ANDROID_NOTIFICATION)
        await android.goto(site.url + "?line=2")
        await expect(card(android, "line", "2").get_by_test_id("line-status")).to_have_attribute(
            "data-level", "good", timeout=WITHIN_MS)
        site.rig.serve_rt(signal_fault())
        await expect(alert(android, "A-2-signal")).to_be_visible(timeout=WITHIN_MS)
        recorded = await until_notified(android, 1)
        shown = await android.evaluate("""async () => (await (await navigator.serviceWorker.ready).getNotifications())
          .map((n) => ({ title: n.title, tag: n.tag }))""")
    assert [(n["title"], n["tag"]) for n in recorded] == [(f"2号线: {SIGNAL['zh']}", "alert-A-2-signal")]
    assert shown == [{"title": f"2号线: {SIGNAL['zh']}", "tag": "alert-A-2-signal"}]


HOURS = [None, "00:00", "06:59", "07:00", "09:30", "22:00", "23:59"]
DAYS = [[], [5], [1, 2, 3, 4, 5], [0, 6]]
MINUTES = [0, 1, 419, 420, 421, 569, 570, 1319, 1320, 1438, 1439]


@functools.cache
def covered_slots(start: str | None, end: str | None, days: tuple[int, ...]) -> frozenset[tuple[int, int]]:
    """The (weekday, minute of day) slots a window covers, laid out minute by minute from each day's start: an
    independent statement of the rule (no hours or from = to: the whole day; hours across midnight belong to the
    day they start on)."""
    def minutes(hhmm: str) -> int:
        return int(hhmm[:2]) * 60 + int(hhmm[3:])

    if start is None or end is None:
        first, length = 0, 1440
    else:
        first, length = minutes(start), (minutes(end) - minutes(start)) % 1440 or 1440
    return frozenset(((day + (first + k) // 1440) % 7, (first + k) % 1440)
                     for day in (days or range(7)) for k in range(length))


async def test_a_picks_window_covers_exactly_its_hours_on_its_days_across_midnight_too(site: Site, phone: Page) -> None:
    await phone.goto(site.url)
    cases: list[dict[str, Any]] = [
        {"from": start or "", "to": end or "", "days": days, "weekday": weekday, "minute": minute}
        for start in HOURS for end in HOURS if (start is None) == (end is None)
        for days in DAYS for weekday in range(7) for minute in MINUTES]
    # 2026-11-29 is a Sunday: day 29 + weekday is that weekday, in the browser's own time zone.
    answers: list[bool] = await phone.evaluate("""async (cases) => {
      const { inWindow } = await import("/page/static/window.js");
      return cases.map((c) => inWindow({ from: c.from, to: c.to, days: c.days },
                                       new Date(2026, 10, 29 + c.weekday, Math.floor(c.minute / 60), c.minute % 60)));
    }""", cases)
    wrong = [case for case, answer in zip(cases, answers, strict=True)
             if answer != ((case["weekday"], case["minute"]) in covered_slots(case["from"] or None, case["to"] or None,
                                                                              tuple(case["days"])))]
    assert len(cases) > 10_000
    assert wrong == []


def line_status(line_id: str, valid_until: datetime) -> bytes:
    now = datetime.now(UTC)
    return orjson.dumps({
        "schema": "broadcaster.mqtt.line-status/1", "seq": 2**62, "issued_at": now.isoformat(),
        "valid_until": valid_until.isoformat(),
        "line": {"id": line_id, "short_name": line_id, "names": {"zh": f"{line_id}号线", "en": f"Line {line_id}"},
                 "color": "0072CE"},
        "status": "normal", "level": "good", "status_text": {"zh": "运营正常", "en": "Good service"}, "reason": {},
        "alert_ids": [], "max_delay_s": 0, "occupancy": [], "as_of": now.isoformat(),
    })


async def test_a_status_past_its_valid_until_is_shown_as_expired_in_both_languages(site: Site, phone: Page) -> None:
    # A payload whose valid_until passes while no newer one comes (a feed gone stale): the page must notice alone.
    # Its seq is above anything the broadcaster publishes, so it stands whichever arrives first.
    valid_until = datetime.now(UTC) + timedelta(seconds=2)
    async with asyncio.timeout(10), aiomqtt.Client(site.broker.host, site.broker.port, identifier="test-expiry",
                                                   protocol=aiomqtt.ProtocolVersion.V311) as client:
        await client.publish("metro/v1/lines/3/status", line_status("3", valid_until), qos=1, retain=True)
    await phone.goto(site.url + "?line=3")
    line_3 = card(phone, "line", "3")
    await expect(line_3.get_by_test_id("line-status")).to_have_attribute("data-level", "good", timeout=WITHIN_MS)
    await expect(line_3).to_have_attribute("data-state", "ok")
    await expect(line_3).to_have_attribute("data-state", "expired", timeout=6_000)
    await expect(line_3.get_by_test_id("expired")).to_have_text("信息已过期，暂不可用。")
    await expect(line_3.get_by_test_id("line-status")).not_to_contain_text("运营正常")
    unavailable = phone.get_by_test_id("unavailable")
    await expect(unavailable).to_have_attribute("data-reason", "expired")
    await screenshot(phone, "7-expired-zh")
    await phone.get_by_test_id("lang-toggle").tap()
    await expect(line_3.get_by_test_id("expired")).to_have_text("This information has expired and is unavailable.")
    await expect(unavailable).to_contain_text("past its valid-until time")
    await screenshot(phone, "8-expired-en")


async def test_the_page_subscribes_only_to_its_picks_serves_no_secret_and_notifies_once_per_alert_across_picks(
    site: Site, phone: Page
) -> None:
    async with httpx.AsyncClient(base_url=site.url, trust_env=False, timeout=5) as http:
        config = (await http.get("page/config.json")).json()
        network = (await http.get("page/network.json")).json()
    assert config == {"topic_prefix": "metro", "mqtt_websocket_url": site.broker.ws_url, "mqtt_username": None,
                      "mqtt_password": None, "title": {"zh": "地铁出行提醒", "en": "Metro alerts"}}
    assert [line["id"] for line in network["lines"]] == ["1", "2", "3"]
    assert network["lines"][1]["names"] == {"zh": "2号线", "en": "Line 2"}
    s04 = next(s for s in network["stations"] if s["id"] == "S04")
    assert s04["names"]["en"] == "People's Square"
    assert "2" in s04["lines"]

    await phone.goto(site.url + "?station=S04")
    station = card(phone, "station", "S04")
    await expect(station.locator('[data-testid="line-status"][data-line="2"]')).to_have_attribute(
        "data-level", "good", timeout=WITHIN_MS)
    await expect(station.get_by_test_id("line-status")).to_have_count(len(s04["lines"]))
    await screenshot(phone, "9-station-zh")
    await pick_line(phone, "2")
    await expect(card(phone, "line", "2").get_by_test_id("line-status")).to_have_attribute(
        "data-level", "good", timeout=WITHIN_MS)
    # Mosquitto logs each subscription (log_type subscribe) before it delivers anything on it.
    subscribed = re.findall(r" commuter-\w+ 1 (\S+)$", site.broker.log_text(), re.MULTILINE)
    assert sorted(subscribed) == ["metro/v1/broadcaster/status", "metro/v1/lines/2/alerts/+",
                                  "metro/v1/lines/2/status", "metro/v1/stations/S04/display"]

    # An alert on line 2 reaches the page twice, through the line and through S04's display: one notification.
    site.rig.serve_rt(signal_fault())
    await expect(card(phone, "line", "2").locator('[data-alert="A-2-signal"]')).to_be_visible(timeout=WITHIN_MS)
    await expect(station.locator('[data-alert="A-2-signal"]')).to_be_visible(timeout=WITHIN_MS)
    assert [n["tag"] for n in await notifications(phone)] == ["alert-A-2-signal"]


async def test_a_link_from_an_english_feed_opens_the_page_in_english_on_a_chinese_phone(
    site: Site, phone: Page
) -> None:
    """The English feeds link their entries to /?line=2&lang=en (docs/commuters.md, "Links"): the rider who
    follows one reads the page in the feed's language, whatever the phone's (zh-CN here)."""
    await phone.goto(site.url + "?line=2&lang=en")
    await expect(phone.get_by_test_id("title")).to_have_text("Metro alerts", timeout=WITHIN_MS)
    await expect(card(phone, "line", "2")).to_contain_text("Line 2")
    # A language the network does not have is ignored: the browser's choice stands.
    await phone.goto(site.url + "?lang=fr")
    await expect(phone.get_by_test_id("title")).to_have_text("Metro alerts")  # en, kept from the link above


async def test_picks_saved_with_broken_windows_load_cleanly_and_the_page_keeps_working(site: Site, phone: Page) -> None:
    # What another version of the page, an extension or a hand edit may leave in the browser: before, a window of
    # `from: 5` threw on every redraw ("hhmm.split is not a function") and the cards never showed a status.
    errors: list[str] = []
    phone.on("pageerror", lambda error: errors.append(str(error)))
    await phone.goto(site.url)
    await phone.evaluate("""() => localStorage.setItem("commuter.picks.v1", JSON.stringify([
      {kind: "line", id: "2", window: {from: 5, to: "25:99", days: 5}},
      {kind: "line", id: "1", window: {from: "07:00", to: "09:00", days: [1, 1, 9, "2", -1, 3.5]}},
      {kind: "station", id: "S04", window: "always"},
      {kind: "line", id: "no-such-line"}, null, 7, "x"]))""")
    await phone.reload()
    await expect(card(phone, "line", "2").get_by_test_id("line-status")).to_have_attribute(
        "data-level", "good", timeout=WITHIN_MS)
    await expect(card(phone, "station", "S04")).to_be_visible()
    assert await phone.locator(".pick").count() == 3  # the unknown line and the non-picks are dropped
    # Broken hours mean all day; of the days only Monday (once) and Wednesday remain.
    await expect(card(phone, "line", "2").get_by_test_id("window-summary")).to_contain_text("全天")
    await expect(card(phone, "line", "1").get_by_test_id("window-summary")).to_contain_text("07:00–09:00")
    assert errors == []
