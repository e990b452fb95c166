"""The HTTP admin API on a real loopback port (uvicorn in the test's event loop), in front of a broadcaster on a
real Mosquitto: tokens, throttling, notices and corrections end to end, metrics, the audit log, OpenAPI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from conftest import ADMIN_TOKEN, OTHER_ADMIN_TOKEN
from rig import Rig, poll_all, running, toml_value
from support import MessageRecorder, collect_retained, free_port
from support.microblog_server import MicroblogServer
from test_channels import SIGNAL, alert, channels, until

from broadcaster.admin import AdminServer, FailureThrottle
from broadcaster.config import Config, load_config
from broadcaster.errors import ConfigError
from broadcaster.runner import serve
from broadcaster.service import Broadcaster
from broadcaster.store import SCHEMA_VERSION

#: Planted where the admin token goes; it must never show up in a file, a log line or a response.
SENTINEL = ADMIN_TOKEN
OTHER = OTHER_ADMIN_TOKEN


# The admin tokens' environment (T_ADMIN, T_ADMIN_OTHER) for every test here; the `rig` is conftest's.
pytestmark = pytest.mark.usefixtures("admin_tokens")


def admin_config(
    rig: Rig, *, channels: Sequence[Mapping[str, Any]] = (), storage: Mapping[str, Any] | None = None, **admin: Any,
) -> Config:
    """The rig's config with `channels`, a [storage] section if given, and an [admin] section (two tokens, a free
    port unless `listen` says otherwise)."""
    section = {"listen": "127.0.0.1:0",
               "tokens": [{"id": "duty-desk", "token": {"env": "T_ADMIN"}},
                          {"id": "night-desk", "token": {"env": "T_ADMIN_OTHER"}}]}
    section.update(admin)
    path = rig.write_config(channels=list(channels), **({"storage": dict(storage)} if storage is not None else {}))
    text = path.read_text(encoding="utf-8") + "\n[admin]\n" + "".join(
        f"{k} = {toml_value(v)}\n" for k, v in section.items())
    path.write_text(text, encoding="utf-8")
    return load_config(path)


@contextlib.asynccontextmanager
async def api(config: Config, **client: Any) -> AsyncIterator[tuple[Broadcaster, httpx.AsyncClient]]:
    """A running broadcaster, its admin API on a loopback port, and an HTTP client for it."""
    assert config.admin is not None
    async with (
        running(config) as b,
        AdminServer(b, config.admin) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10, trust_env=False, **client) as http,
    ):
        yield b, http


def bearer(token: str = SENTINEL) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


NOTICE = {"texts": {"zh": "明日首班车提前至5:00", "en": "First trains run from 05:00 tomorrow"}, "line_ids": ["1"],
          "severity": "INFO"}


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {'name{labels}': value} (labels exactly as exposed)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


async def test_missing_wrong_and_malformed_tokens_get_the_same_401(rig: Rig) -> None:
    async with api(admin_config(rig, max_failures=100)) as (_, http):
        attempts = [
            {},
            {"Authorization": "Bearer not-the-token-at-all"},
            {"Authorization": f"Bearer {SENTINEL}x"},
            {"Authorization": f"Bearer {SENTINEL[:-1]}"},
            {"Authorization": f"Basic {SENTINEL}"},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer null"},
            {"Authorization": SENTINEL},
            {"Authorization": f"Bearer {SENTINEL} {SENTINEL}"},
        ]
        answers = [await http.get("/v1/status", headers=h) for h in attempts]
        answers.append(await http.get("/v1/status", headers=[(b"Authorization", "Bearer \u00e9t\u00e9".encode())]))
        answers.append(await http.post("/v1/notices", json=NOTICE, headers={"Authorization": "Bearer nope"}))
        for answer in answers:
            assert answer.status_code == 401
            assert answer.headers["www-authenticate"] == 'Bearer realm="broadcaster"'
        assert len({a.content for a in answers}) == 1  # nothing says what was wrong
        assert answers[0].json() == {"error": "unauthorized", "message": "a valid bearer token is required"}
        assert (await http.get("/v1/status", headers=bearer())).status_code == 200
        assert (await http.get("/v1/status", headers={"authorization": f"bearer {OTHER}"})).status_code == 200


async def test_repeated_failures_from_one_address_are_throttled(rig: Rig) -> None:
    async with api(admin_config(rig)) as (_, http):
        for _ in range(10):
            assert (await http.get("/v1/status", headers=bearer("wrong-token-guess-000"))).status_code == 401
        throttled = await http.get("/v1/status", headers=bearer())  # even the right token, from here, for now
        assert throttled.status_code == 429
        assert 1 <= int(throttled.headers["retry-after"]) <= 60
        assert throttled.json()["error"] == "too_many_failures"
        assert (await http.get("/v1/health")).status_code in (200, 503)  # public endpoints still answer
        port = http.base_url.port
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", transport=transport, trust_env=False,
                                     timeout=10) as elsewhere:
            assert (await elsewhere.get("/v1/status", headers=bearer())).status_code == 200


def test_the_throttle_forgets_failures_after_its_window() -> None:
    now = [1000.0]
    throttle = FailureThrottle(3, 60, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.retry_after("10.0.0.1") is None
        throttle.failed("10.0.0.1")
        now[0] += 10
    assert throttle.retry_after("10.0.0.1") == pytest.approx(30)  # the first failure leaves the window at 1060
    assert throttle.retry_after("10.0.0.2") is None
    now[0] = 1060.5
    assert throttle.retry_after("10.0.0.1") is None


async def test_a_notice_posted_through_the_api_is_committed_first_then_reaches_mqtt(rig: Rig) -> None:
    config = admin_config(rig)
    async with api(config) as (b, http), MessageRecorder(rig.mqtt_url, rig.topic("notices")) as notices:
        await poll_all(b)
        await until(lambda: b.pending() == 0, b)
        until_at = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
        answer = await http.post("/v1/notices", json={**NOTICE, "until": until_at}, headers=bearer())
        assert answer.status_code == 201, answer.text
        notice_id = answer.json()["notice_id"]
        # The 201 came after the commit: the outbox holds the notice already.
        rows = b.db.conn.execute("SELECT channel FROM outbox WHERE notice_id = ?", (notice_id,)).fetchall()
        assert [r[0] for r in rows] == ["mqtt"]
        streamed = await notices.wait_for(
            lambda ms: any(orjson.loads(m.payload)["notice_id"] == notice_id for m in ms))
        body = next(orjson.loads(m.payload) for m in streamed if orjson.loads(m.payload)["notice_id"] == notice_id)
        assert "明日首班车" in body["text"]["zh"]
        assert body["lines"] == ["1"]
        retained = await collect_retained(rig.mqtt_url, rig.topic("lines/1/alerts/#"))
    alert_topic = rig.topic(f"lines/1/alerts/{notice_id.removeprefix('alert-')}")
    assert orjson.loads(retained[alert_topic])["header"]["en"] == "First trains run from 05:00 tomorrow"
    audit = [orjson.loads(line) for line in (rig.tmp_path / "state" / "audit.log").read_bytes().splitlines()]
    assert [(a["action"], a["author"]) for a in audit] == [("announce", "duty-desk")]
    assert audit[0]["subject"] == notice_id.removeprefix("alert-")  # the alert the notice became


async def test_invalid_notices_get_422_naming_the_field(rig: Rig) -> None:
    async with api(admin_config(rig)) as (b, http):
        cases: list[tuple[Any, str]] = [
            ({"line_ids": ["1"]}, "texts"),
            ({**NOTICE, "line_ids": ["1", "99"]}, "line_ids[1]"),
            ({**NOTICE, "station_ids": ["S404"]}, "station_ids[0]"),
            ({**NOTICE, "severity": "APOCALYPTIC"}, "severity"),
            ({**NOTICE, "until": "2020-01-01T00:00:00+00:00"}, "until"),
            ({**NOTICE, "until": "2099-01-01T00:00:00"}, "until"),  # no offset
            ({**NOTICE, "texts": {"fr": "Bonjour"}}, "texts.fr"),
            ({**NOTICE, "texts": {"zh": "  "}}, "texts.zh"),
            ({**NOTICE, "colour": "red"}, "colour"),
            ([1, 2], "(body)"),
        ]
        for body, field in cases:
            answer = await http.post("/v1/notices", json=body, headers=bearer())
            assert answer.status_code == 422, (body, answer.text)
            assert answer.json()["error"] == "invalid_request"
            assert field in [e["field"] for e in answer.json()["errors"]], (body, answer.json())
        not_json = await http.post("/v1/notices", content=b"{texts:", headers=bearer())
        assert not_json.status_code == 400
        huge = await http.post("/v1/notices", content=b"[" + b"1," * 40_000 + b"1]", headers=bearer())
        assert huge.status_code == 413
        assert b.db.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    refused = (rig.tmp_path / "state" / "audit.log").read_text(encoding="utf-8").splitlines()
    assert {orjson.loads(line)["action"] for line in refused} == {"announce-refused"}
    assert all(orjson.loads(line)["author"] == "duty-desk" for line in refused)


async def test_a_correction_through_the_api_replaces_the_retained_alert(rig: Rig) -> None:
    rig.serve_rt(alert({"zh": "2号线全线停运", "en": "Line 2 suspended"}, effect="NO_SERVICE", severity="SEVERE"))
    async with api(admin_config(rig)) as (b, http):
        await poll_all(b)
        await until(lambda: b.pending() == 0, b)
        fixed = {"zh": "2号线部分列车晚点，并未停运", "en": "Line 2: some delays, not suspended"}
        answer = await http.post("/v1/notices/alert-A-L2/corrections", json={"texts": fixed},
                                 headers=bearer(OTHER))
        assert answer.status_code == 201, answer.text
        assert answer.json()["notice_id"] == "alert-A-L2"
        version = answer.json()["version"]
        assert version
        committed = b.db.conn.execute("SELECT COUNT(*) FROM outbox WHERE notice_id = ? AND version = ?",
                                      ("alert-A-L2", version)).fetchone()[0]
        assert committed == 1  # answered after the commit
        await until(lambda: b.pending() == 0, b)
        retained = await collect_retained(rig.mqtt_url, rig.topic("lines/2/#"))
        assert orjson.loads(retained[rig.topic("lines/2/alerts/A-L2")])["header"] == fixed
        unknown = await http.post("/v1/notices/alert-nope/corrections", json={"texts": fixed}, headers=bearer())
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "unknown_notice"
        empty = await http.post("/v1/notices/alert-A-L2/corrections", json={"texts": {}}, headers=bearer())
        assert empty.status_code == 422
        assert empty.json()["errors"][0]["field"] == "texts"
    audit = [orjson.loads(line) for line in (rig.tmp_path / "state" / "audit.log").read_bytes().splitlines()]
    assert ("correct", "night-desk", "alert-A-L2") in [(a["action"], a["author"], a["subject"]) for a in audit]


async def test_metrics_expose_the_documented_series_after_a_poll_and_a_delivery(rig: Rig) -> None:
    rig.serve_rt(alert(SIGNAL))
    async with api(admin_config(rig)) as (b, http):
        await poll_all(b)
        await until(lambda: b.pending() == 0, b)
        rig.server.set_route("/flow.json", b"<html>oops</html>", status=502)
        await poll_all(b)
        answer = await http.get("/metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        m = parse_metrics(answer.text)
        sent = b.db.conn.execute("SELECT COUNT(*) FROM outbox WHERE channel = 'mqtt' AND status = 'sent'").fetchone()[0]
    assert sent == 1  # the alert (the first crowding reading and the line status say nothing on the stream)
    assert m['broadcaster_posts_total{channel="mqtt",outcome="sent"}'] == 1
    assert m['broadcaster_posts_total{channel="mqtt",outcome="parked"}'] == 0
    assert m['broadcaster_delivery_latency_seconds_count{channel="mqtt"}'] == sent
    # Feeds are stamped "now" by the rig and delivery is local: every notice lands well within 30 s.
    assert m['broadcaster_delivery_latency_seconds_bucket{channel="mqtt",le="30.0"}'] == sent
    assert m['broadcaster_feed_fetches_total{feed="ops",result="ok"}'] == 2
    assert m['broadcaster_feed_fetches_total{feed="flow",result="ok"}'] == 1
    assert m['broadcaster_feed_fetches_total{feed="flow",result="http_status"}'] == 1
    assert m['broadcaster_feed_fetch_seconds_count{feed="ops"}'] == 2
    assert 0 < m['broadcaster_feed_fetch_seconds_sum{feed="ops"}'] < 5
    assert m['broadcaster_changes_total{feed="ops",kind="alert_new"}'] == 1
    assert m['broadcaster_feed_up{feed="ops"}'] == 1
    assert m['broadcaster_feed_up{feed="flow"}'] == 0
    assert m['broadcaster_feed_consecutive_failures{feed="flow"}'] == 1
    assert 0 <= m['broadcaster_feed_age_seconds{feed="ops"}'] < 60
    assert m["broadcaster_mqtt_connected"] == 1
    assert m['broadcaster_outbox_entries{channel="mqtt",status="pending"}'] == 0
    assert m['broadcaster_outbox_entries{channel="mqtt",status="parked"}'] == 0
    assert m['broadcaster_retained_publications_total{outcome="acked"}'] > 0
    assert any(k.startswith("broadcaster_info{") for k in m)


async def test_metrics_count_retries_and_parked_posts_per_channel(
    rig: Rig, microblog: MicroblogServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_MASTODON", microblog.mastodon_token)
    assert microblog.webhook_secret is not None
    monkeypatch.setenv("T_HOOK", microblog.webhook_secret)
    two = [c for c in channels(microblog) if c["name"] in ("mastodon", "webhook")]
    rig.serve_rt(alert(SIGNAL))
    async with api(admin_config(rig, channels=two)) as (b, http):
        microblog.push_fault("mastodon", 503)  # once (after the start-up check): retried
        microblog.push_fault("webhook", 422)  # permanent: parked
        await poll_all(b)
        await until(lambda: b.pending() == 0, b)
        m = parse_metrics((await http.get("/metrics")).text)
    assert m['broadcaster_posts_total{channel="mastodon",outcome="retry"}'] == 1
    assert m['broadcaster_posts_total{channel="mastodon",outcome="sent"}'] == 1
    assert m['broadcaster_posts_total{channel="webhook",outcome="parked"}'] == 1
    assert m['broadcaster_posts_total{channel="webhook",outcome="sent"}'] == 0
    assert m['broadcaster_outbox_entries{channel="webhook",status="parked"}'] == 1
    assert m['broadcaster_delivery_latency_seconds_count{channel="mastodon"}'] == 1
    assert 0.5 <= m['broadcaster_delivery_latency_seconds_sum{channel="mastodon"}'] < 30  # includes the backoff


async def test_health_is_503_until_every_feed_is_good_then_200(rig: Rig) -> None:
    async with api(admin_config(rig)) as (b, http):
        before = await http.get("/v1/health")
        assert before.status_code == 503
        assert before.json()["mqtt"]["connected"] is True
        await poll_all(b)
        after = await http.get("/v1/health")
        assert after.status_code == 200, after.text
        assert {f["name"]: f["healthy"] for f in after.json()["feeds"]} == {"ops": True, "flow": True}
        assert "mqtt" in after.json()["outbox"]
        rig.server.set_route("/rt.pb", b"garbage", status=200)
        await poll_all(b)
        failing = await http.get("/v1/health")
        assert failing.status_code == 503
        assert "last_error" not in failing.json()["feeds"][0]  # error texts only for authenticated callers
        status = (await http.get("/v1/status", headers=bearer())).json()
        assert status["feeds"][0]["last_error"]
        assert status["mqtt"]["connected"] is True
        assert status["parked"] == []
        assert status["schema_version"] == SCHEMA_VERSION  # admin API v1.3


async def test_metrics_and_health_can_require_a_token(rig: Rig) -> None:
    async with api(admin_config(rig, public=["/openapi.json"])) as (_, http):
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/v1/health")).status_code == 401
        assert (await http.get("/metrics", headers=bearer())).status_code == 200
        assert (await http.get("/openapi.json")).status_code == 200


async def test_the_audit_log_names_the_token_id_and_nothing_leaks_the_token(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rig.serve_rt(alert(SIGNAL))
    seen: list[bytes] = []
    async with api(admin_config(rig)) as (b, http):
        await poll_all(b)
        answer = await http.post("/v1/notices", json=NOTICE, headers=bearer())
        notice_id = answer.json()["notice_id"]
        seen.append(answer.content)
        answer = await http.post("/v1/notices/alert-A-L2/corrections", json={"texts": {"zh": "更正", "en": "Fixed"}},
                                 headers=bearer())
        seen.append(answer.content)
        seen.append((await http.post("/v1/notices", json={"texts": {}}, headers=bearer())).content)
        for wrong in (SENTINEL + "x", SENTINEL.upper()):
            seen.append((await http.get("/v1/status", headers=bearer(wrong))).content)
        for endpoint in ("/v1/status", "/metrics", "/v1/health", "/openapi.json"):
            seen.append((await http.get(endpoint, headers=bearer())).content)
        await until(lambda: b.pending() == 0, b)
    audit = [orjson.loads(line) for line in (rig.tmp_path / "state" / "audit.log").read_bytes().splitlines()]
    assert [(a["action"], a["author"]) for a in audit] == [
        ("announce", "duty-desk"), ("correct", "duty-desk"), ("announce-refused", "duty-desk")]
    assert audit[0]["subject"] == notice_id.removeprefix("alert-")
    needle = SENTINEL.encode()
    fragments = [needle, SENTINEL[-16:].encode(), SENTINEL.upper().encode()]
    for path in (rig.tmp_path / "state").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(f in data for f in fragments), path
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert not any(f.decode() in logged for f in fragments)
    assert not any(f in body for body in seen for f in fragments)


async def test_openapi_lists_every_endpoint_with_its_security(rig: Rig) -> None:
    async with api(admin_config(rig)) as (_, http):
        doc = (await http.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {"/v1/health", "/metrics", "/openapi.json", "/v1/status", "/v1/notices",
                                 "/v1/notices/{notice_id}/corrections"}
    post = doc["paths"]["/v1/notices"]["post"]
    assert post["security"] == [{"bearer": []}]
    assert {"201", "401", "422", "429"} <= set(post["responses"])
    assert doc["paths"]["/v1/health"]["get"]["security"] == []
    schema = doc["components"]["schemas"]["NoticeRequest"]
    assert schema["required"] == ["texts"]
    assert set(schema["properties"]) == {"texts", "line_ids", "station_ids", "severity", "effect", "until"}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


async def test_serve_runs_the_admin_api_and_stops_it_on_stop(rig: Rig) -> None:
    port = free_port()
    config = admin_config(rig, listen=f"127.0.0.1:{port}")
    stop = asyncio.Event()
    from broadcaster.runner import open_broadcaster

    async with open_broadcaster(config) as b:
        task = asyncio.create_task(serve(b, stop, grace=2))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=5) as http:
            async with asyncio.timeout(10):
                while True:
                    with contextlib.suppress(httpx.ConnectError):
                        if (await http.get("/v1/health")).status_code == 200:
                            break
                    await asyncio.sleep(0.05)
            answer = await http.post("/v1/notices", json=NOTICE, headers=bearer())
            assert answer.status_code == 201
            stop.set()
            async with asyncio.timeout(15):
                await task
            with pytest.raises(httpx.ConnectError):
                await http.get("/v1/health")


@pytest.mark.parametrize(
    ("admin", "env", "key", "fragment"),
    [
        ({}, {"T_ADMIN": None}, "admin.tokens[0].token", "T_ADMIN is not set"),
        ({}, {"T_ADMIN": "short"}, "admin.tokens[0].token", "shorter than 16"),
    ],
)
def test_unreadable_or_weak_tokens_refuse_to_start(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, admin: dict[str, Any], env: dict[str, str | None], key: str,
    fragment: str,
) -> None:
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value)
    config = admin_config(rig, **admin)
    assert config.admin is not None
    from broadcaster.admin import TokenRing

    with pytest.raises(ConfigError) as info:
        TokenRing(config.admin, config.source)
    assert info.value.key == key
    assert fragment in str(info.value)
    assert "short" not in str(info.value).replace("shorter", "")


@pytest.mark.parametrize(
    ("admin", "key", "fragment"),
    [
        ({"listen": "8787"}, "admin.listen", "host:port"),
        ({"listen": "127.0.0.1:99999"}, "admin.listen", "host:port"),
        ({"tokens": [{"id": "a", "token": {"env": "X"}}, {"id": "a", "token": {"env": "Y"}}]}, "admin.tokens",
         "used twice"),
        ({"tokens": [{"id": "a", "token": "literal-token-in-the-file"}]}, "admin.tokens[0].token", ""),
        ({"public": ["/v1/notices"]}, "admin.public[0]", ""),
        ({"max_failures": 0}, "admin.max_failures", ""),
    ],
)
def test_bad_admin_sections_name_the_key(rig: Rig, admin: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        admin_config(rig, **admin)
    assert info.value.key == key
    assert fragment in str(info.value)


def test_the_listen_address_splits_into_host_and_port(rig: Rig) -> None:
    config = admin_config(rig, listen="[::1]:9000")
    assert config.admin is not None
    assert (config.admin.host, config.admin.port) == ("::1", 9000)
