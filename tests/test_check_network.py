"""`broadcaster check` checks what the docs say: every feed fetched, the broker connected, every secret resolved,
every channel's credentials verified with a read-only call; `--offline` touches nothing.

Real `broadcaster check` processes against a real Mosquitto, the loopback feed server and the loopback
micro-blog server (as strict as the platforms: 401 with their own error bodies on a bad token).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from rig import Rig
from support import LoopbackHttpServer, MessageRecorder, MosquittoBroker, free_port
from support.microblog_server import BLUESKY_HANDLE, MicroblogServer
from support.mosquitto_passwd import write_password_file

if TYPE_CHECKING:
    from conftest import MosquittoFactory


def channels(server: MicroblogServer, *, dry_run: bool = True) -> list[dict[str, Any]]:
    return [
        {"name": "masto", "kind": "mastodon", "url": server.url, "token": {"env": "T_MASTODON"}},
        {"name": "sky", "kind": "bluesky", "url": server.url, "identifier": BLUESKY_HANDLE,
         "password": {"env": "T_BLUESKY"}},
        {"name": "weibo", "kind": "weibo", "url": server.url, "access_token": {"env": "T_WEIBO"}},
        {"name": "hook", "kind": "webhook", "url": server.webhook_url("ops"), "secret": {"env": "T_HOOK"},
         "check_dry_run": dry_run},
    ]


async def check(path: Path, *extra: str, timeout: float = 60) -> tuple[int, str, str]:  # noqa: ASYNC109
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broadcaster", "check", "-c", str(path), *extra,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    async with asyncio.timeout(timeout):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def failure_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("broadcaster: ")]


async def test_all_good_exits_0_having_verified_everything_and_posted_and_published_nothing(
    rig: Rig, server: MicroblogServer, mosquitto: MosquittoBroker
) -> None:
    path = rig.write_config(channels=channels(server))
    async with MessageRecorder(rig.mqtt_url, f"{rig.prefix}/#") as recorder:
        status, out, err = await check(path)
        assert status == 0, out + err
        assert await recorder.settle(quiet=0.5) == []  # connected and left: no probe, no status, nothing
    assert "ops: ok (HTTP 200" in out
    assert "flow: ok (HTTP 200" in out
    assert f"broker {rig.mqtt_url}: ok" in out
    for name in ("masto", "sky", "weibo", "hook"):
        assert f"channel {name}: ok" in out, out
    # Read-only: the credentials were asked about, nothing was posted anywhere.
    assert any(r.path == "/api/v1/accounts/verify_credentials" and r.status == 200 for r in server.requests("mastodon"))
    assert any(r.path.endswith("com.atproto.server.createSession") and r.status == 200
               for r in server.requests("bluesky"))
    assert any(r.path == "/2/account/get_uid.json" and r.status == 200 for r in server.requests("weibo"))
    assert server.mastodon_statuses() == []
    assert server.bluesky_posts() == []
    assert server.weibo_statuses() == []
    assert server.webhook_deliveries("ops") == []  # a dry run is not a delivery
    assert len(server.webhook_dry_runs("ops")) == 1
    assert failure_lines(err) == []


async def test_a_404_feed_exits_1_naming_the_feed(rig: Rig, http_server: LoopbackHttpServer) -> None:
    http_server.set_route("/rt.pb", b"not here", status=404)
    status, out, err = await check(rig.write_config())
    assert status == 1, out + err
    assert failure_lines(err) == [f"broadcaster: feed 'ops': HTTP 404 from {http_server.url('/rt.pb')}"]
    assert "flow: ok" in out


async def test_a_feed_stale_by_8_days_exits_1_naming_it(rig: Rig) -> None:
    rig.serve_flow({"S04": "FEW_SEATS_AVAILABLE"}, timestamp=int(time.time()) - 8 * 86400)
    status, out, err = await check(rig.write_config())
    assert status == 1, out + err
    [line] = failure_lines(err)
    assert line.startswith("broadcaster: feed 'flow': feed timestamp ")
    assert " s old (max 300 s)" in line


async def test_an_unreachable_broker_exits_1_naming_it(rig: Rig) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    status, out, err = await check(rig.write_config(mqtt={"url": url, "connect_timeout_seconds": 3}))
    assert status == 1, out + err
    [line] = failure_lines(err)
    assert line.startswith(f"broadcaster: broker {url}: ")


async def test_an_unset_token_variable_exits_2_naming_the_key_and_the_variable(
    rig: Rig, server: MicroblogServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("T_MASTODON")
    path = rig.write_config(channels=channels(server))
    status, out, err = await check(path)
    assert status == 2, out + err
    assert f"broadcaster: {path}: channels[0].token: environment variable T_MASTODON is not set" in failure_lines(err)
    assert server.mastodon_token not in out + err
    assert server.bluesky_password not in out + err


async def test_a_bad_token_exits_1_naming_the_channel_and_never_the_token(
    rig: Rig, server: MicroblogServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_MASTODON", "revoked-token-sentinel")
    monkeypatch.setenv("T_WEIBO", "expired-weibo-sentinel")
    monkeypatch.setenv("T_BLUESKY", "wrong-app-password")
    status, out, err = await check(rig.write_config(channels=channels(server)))
    assert status == 1, out + err
    lines = failure_lines(err)
    assert len(lines) == 3, lines
    assert lines[0].startswith("broadcaster: channel 'masto': HTTP 401")
    assert "The access token is invalid" in lines[0]
    assert lines[1].startswith("broadcaster: channel 'sky': HTTP 401")
    assert "Invalid identifier or password" in lines[1]
    assert lines[2].startswith("broadcaster: channel 'weibo': ")
    assert "21332" in lines[2]
    for secret in ("revoked-token-sentinel", "expired-weibo-sentinel", "wrong-app-password"):
        assert secret not in out + err
    assert "channel hook: ok" in out


async def test_a_webhook_without_a_dry_run_is_not_called(rig: Rig, server: MicroblogServer) -> None:
    status, out, err = await check(rig.write_config(channels=channels(server, dry_run=False)))
    assert status == 0, out + err
    assert "channel hook: ok (not called: check_dry_run is off)" in out
    assert server.requests("webhook") == []


async def test_offline_exits_0_without_any_connection(
    rig: Rig, http_server: LoopbackHttpServer, server: MicroblogServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    http_server.set_route("/rt.pb", b"", status=404)
    monkeypatch.delenv("T_MASTODON")
    path = rig.write_config(channels=channels(server), mqtt={"url": f"mqtt://127.0.0.1:{free_port()}"})
    status, out, err = await check(path, "--offline")
    assert status == 0, out + err
    assert http_server.requests == []
    assert server.requests() == []
    assert "sample posts rendered: OK" in out


async def test_a_mastodon_token_that_may_only_post_passes(rig: Rig, server: MicroblogServer) -> None:
    # A least-privilege bot token (write:statuses only) gets 403 from verify_credentials: the token is valid.
    server.mastodon_token_scopes = ("write:statuses",)
    status, out, err = await check(rig.write_config(channels=channels(server)[:1]))
    assert status == 0, out + err
    assert "channel masto: ok (token accepted; it has no read:accounts scope" in out
    assert any(r.path == "/api/v1/accounts/verify_credentials" and r.status == 403 for r in server.requests("mastodon"))


async def test_a_broker_refusing_the_password_exits_1_naming_the_broker_and_never_the_password(
    rig: Rig, tmp_path: Path, mosquitto_factory: MosquittoFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    passwd = write_password_file(tmp_path / "mosquitto.passwd", {"metro": "right-password-sentinel"})
    broker = mosquitto_factory(extra_config=f"allow_anonymous false\npassword_file {passwd}\n")
    monkeypatch.setenv("T_MQTT_USER", "metro")
    monkeypatch.setenv("T_MQTT_PASSWORD", "wrong-password-sentinel")
    path = rig.write_config(mqtt={"url": broker.url, "username": {"env": "T_MQTT_USER"},
                                  "password": {"env": "T_MQTT_PASSWORD"}})
    status, out, err = await check(path)
    assert status == 1, out + err
    [line] = failure_lines(err)
    assert line.startswith(f"broadcaster: broker {broker.url}: ")
    assert "wrong-password-sentinel" not in out + err
    monkeypatch.setenv("T_MQTT_PASSWORD", "right-password-sentinel")
    status, out, err = await check(path)
    assert status == 0, out + err
    assert f"broker {broker.url}: ok" in out
    assert "right-password-sentinel" not in out + err
