"""The micro-blog test server answers like Mastodon, a Bluesky PDS, Weibo and a webhook receiver, faults included."""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from support.microblog_server import (
    WEIBO_SHARE_PATH,
    MicroblogServer,
    grapheme_count,
    is_valid_tid,
    make_tid,
    mastodon_length,
    sign_webhook,
    weibo_length,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # one grapheme, 7 code points, 25 bytes
LONG_URL = "https://metro.example/notices/" + "x" * 170  # 200 characters, counted as 23 by Mastodon


@pytest.fixture
def mastodon(microblog: MicroblogServer) -> Iterator[httpx.Client]:
    auth = {"Authorization": f"Bearer {microblog.mastodon_token}"}
    with httpx.Client(base_url=microblog.url, headers=auth, timeout=2) as client:
        yield client


@pytest.fixture
def bluesky(microblog: MicroblogServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=microblog.url + "/xrpc", timeout=2) as client:
        yield client


@pytest.fixture
def weibo(microblog: MicroblogServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=microblog.url, timeout=2) as client:
        yield client


def login(client: httpx.Client, server: MicroblogServer) -> dict[str, Any]:
    response = client.post(
        "/com.atproto.server.createSession",
        json={"identifier": server.bluesky_identifier, "password": server.bluesky_password},
    )
    assert response.status_code == 200, response.text
    session: dict[str, Any] = response.json()
    return session


def post_record(
    client: httpx.Client, server: MicroblogServer, token: str, record: dict[str, Any], rkey: str | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"repo": server.bluesky_did, "collection": "app.bsky.feed.post", "record": record}
    if rkey is not None:
        body["rkey"] = rkey
    return client.post("/com.atproto.repo.createRecord", json=body, headers={"Authorization": f"Bearer {token}"})


def post(text: str, **fields: Any) -> dict[str, Any]:
    return {"$type": "app.bsky.feed.post", "text": text, "createdAt": "2026-11-02T08:15:00.000Z", **fields}


def share(client: httpx.Client, server: MicroblogServer, text: str) -> httpx.Response:
    return client.post(WEIBO_SHARE_PATH, data={"access_token": server.weibo_access_token, "status": text})


# -- counting ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abc", 3),
        (FAMILY, 1),
        ("\U0001f1e8\U0001f1f3\U0001f1ef\U0001f1f5", 2),  # two flags
        ("\U0001f44d\U0001f3fd", 1),  # skin tone modifier
        ("1\ufe0f\u20e3", 1),  # keycap
        ("e\u0301", 1),  # combining accent
        ("\r\n", 1),
        ("\u1100\u1161\u11a8", 1),  # conjoining Hangul jamo
        ("नमस्ते", 3),  # Devanagari conjunct (GB9c)
        ("地铁2号线", 5),
    ],
)
def test_grapheme_count_matches_the_platforms(text: str, expected: int) -> None:
    assert grapheme_count(text) == expected


def test_mastodon_length_counts_urls_23_and_remote_mentions_by_username() -> None:
    assert mastodon_length("see " + LONG_URL) == 4 + 23
    assert mastodon_length("@alice@mastodon.social hi") == len("@alice hi")
    assert mastodon_length("body", "cw") == 6  # the content warning counts too
    assert mastodon_length(FAMILY * 3) == 3


def test_weibo_length_counts_two_half_width_characters_as_one() -> None:
    assert weibo_length("中" * 140) == 140
    assert weibo_length("a" * 280) == 140
    assert weibo_length("a" * 281) == 141  # rounded up
    assert weibo_length("详情 " + LONG_URL) == 2 + 1 + 10  # "详情" 2, a space half, the URL 10: 12.5 -> 13


def test_tids_follow_the_atproto_syntax() -> None:
    tid = make_tid(1_793_000_000_000_000, clock_id=7)
    assert len(tid) == 13
    assert is_valid_tid(tid)
    assert make_tid(1_793_000_000_000_001) > make_tid(1_793_000_000_000_000)  # sortable
    for bad in ("3jzfcijpj2z2", "kjzfcijpj2z2a", "3jzfcijpj2z21", "3JZFCIJPJ2Z2A"):
        assert not is_valid_tid(bad)


# -- the fixture -------------------------------------------------------------------------------------------------


def test_fixture_serves_every_platform_with_default_credentials(microblog: MicroblogServer) -> None:
    assert microblog.url.startswith("http://127.0.0.1:")
    assert microblog.mastodon_token
    assert microblog.bluesky_did.startswith("did:plc:")
    assert microblog.bluesky_identifier
    assert microblog.bluesky_password
    assert microblog.weibo_access_token
    assert microblog.webhook_secret
    assert microblog.webhook_url("alerts") == microblog.url + "/hooks/alerts"
    with httpx.Client(base_url=microblog.url, timeout=2) as client:
        assert client.get("/nowhere").status_code == 404


# -- Mastodon ----------------------------------------------------------------------------------------------------


def test_mastodon_instance_reports_the_configured_limits(microblog: MicroblogServer, mastodon: httpx.Client) -> None:
    statuses = mastodon.get("/api/v2/instance").json()["configuration"]["statuses"]
    assert statuses["max_characters"] == 500
    assert statuses["characters_reserved_per_url"] == 23

    microblog.mastodon_max_characters = 1000
    response = mastodon.get("/api/v2/instance")
    assert response.json()["configuration"]["statuses"]["max_characters"] == 1000
    assert response.headers["X-RateLimit-Limit"] == "300"
    assert int(response.headers["X-RateLimit-Remaining"]) < 300


def test_mastodon_idempotency_key_returns_the_same_status_for_one_hour(
    microblog: MicroblogServer, mastodon: httpx.Client
) -> None:
    key = {"Idempotency-Key": "notice-42-v1-mastodon-0"}
    first = mastodon.post("/api/v1/statuses", data={"status": "Line 2 delayed"}, headers=key)
    again = mastodon.post("/api/v1/statuses", data={"status": "Line 2 delayed (retry)"}, headers=key)
    microblog.advance(3599)
    late = mastodon.post("/api/v1/statuses", json={"status": "Line 2 delayed"}, headers=key)

    assert first.status_code == again.status_code == late.status_code == 200
    assert first.json()["id"] == again.json()["id"] == late.json()["id"]
    assert again.json()["content"] == "<p>Line 2 delayed</p>"  # the first status, not the retried text
    [status] = microblog.mastodon_statuses()
    assert status.idempotency_key == "notice-42-v1-mastodon-0"

    microblog.advance(2)  # the key is kept 3600 s
    after = mastodon.post("/api/v1/statuses", data={"status": "Line 2 delayed"}, headers=key)
    assert after.status_code == 200
    assert after.json()["id"] != first.json()["id"]
    assert int(after.json()["id"]) > int(first.json()["id"])
    assert len(microblog.mastodon_statuses()) == 2


def test_mastodon_rejects_text_over_the_limit_counting_urls_as_23(
    microblog: MicroblogServer, mastodon: httpx.Client
) -> None:
    fits = "a" * 476 + " " + LONG_URL  # 676 code points, 500 as Mastodon counts
    too_long = "a" * 477 + " " + LONG_URL

    assert mastodon.post("/api/v1/statuses", data={"status": fits}).status_code == 200
    refused = mastodon.post("/api/v1/statuses", data={"status": too_long})
    assert refused.status_code == 422
    assert refused.json() == {"error": "Validation failed: Text character limit of 500 exceeded"}
    with_warning = mastodon.post("/api/v1/statuses", data={"status": "b" * 499, "spoiler_text": "cw"})
    assert with_warning.status_code == 422
    graphemes = mastodon.post("/api/v1/statuses", data={"status": FAMILY * 500})  # 3500 code points
    assert graphemes.status_code == 200
    assert [s.text for s in microblog.mastodon_statuses()] == [fits, FAMILY * 500]


def test_mastodon_requires_a_bearer_token(microblog: MicroblogServer) -> None:
    with httpx.Client(base_url=microblog.url, timeout=2) as client:
        missing = client.post("/api/v1/statuses", data={"status": "hello"})
        wrong = client.post("/api/v1/statuses", data={"status": "hello"}, headers={"Authorization": "Bearer nope"})

    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.json() == {"error": "The access token is invalid"}
        assert "X-RateLimit-Remaining" in response.headers
    assert microblog.mastodon_statuses() == []


def test_mastodon_replies_need_an_existing_status(microblog: MicroblogServer, mastodon: httpx.Client) -> None:
    missing = mastodon.post("/api/v1/statuses", data={"status": "2/2", "in_reply_to_id": "109999999999999999"})
    assert missing.status_code == 404
    assert missing.json() == {"error": "The post you are trying to reply to does not appear to exist."}

    head = mastodon.post("/api/v1/statuses", data={"status": "1/2"}).json()
    reply = mastodon.post("/api/v1/statuses", json={"status": "2/2", "in_reply_to_id": head["id"]})
    assert reply.status_code == 200
    assert reply.json()["in_reply_to_id"] == head["id"]
    assert [s.in_reply_to_id for s in microblog.mastodon_statuses()] == [None, head["id"]]


def test_mastodon_status_carries_the_posted_fields(microblog: MicroblogServer, mastodon: httpx.Client) -> None:
    form = {
        "status": "Line 2: delays\nSee https://metro.example/a & more",
        "spoiler_text": "Service change",
        "visibility": "unlisted",
        "language": "en",
        "media_ids[]": "",
    }
    body = mastodon.post("/api/v1/statuses", data=form).json()

    assert isinstance(body["id"], str)
    assert body["id"].isdigit()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["created_at"])
    assert body["visibility"] == "unlisted"
    assert body["language"] == "en"
    assert body["spoiler_text"] == "Service change"
    assert body["sensitive"] is True  # a content warning marks the status sensitive
    assert body["url"] == f"{microblog.url}/@broadcaster/{body['id']}"
    assert body["content"] == (
        '<p>Line 2: delays<br />See <a href="https://metro.example/a" rel="nofollow noopener" target="_blank">'
        "https://metro.example/a</a> &amp; more</p>"
    )
    [status] = microblog.mastodon_statuses()
    assert (status.id, status.visibility, status.language) == (body["id"], "unlisted", "en")
    assert status.created_at.tzinfo is not None


def test_mastodon_programmed_rate_limit_answers_429_with_reset(
    microblog: MicroblogServer, mastodon: httpx.Client
) -> None:
    microblog.set_rate_limit("mastodon", 2, period_s=300)
    remaining = [mastodon.get("/api/v2/instance").headers["X-RateLimit-Remaining"] for _ in range(2)]
    limited = mastodon.post("/api/v1/statuses", data={"status": "too many"})

    assert remaining == ["1", "0"]
    assert limited.status_code == 429
    assert limited.json() == {"error": "Too many requests"}
    assert limited.headers["X-RateLimit-Limit"] == "2"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    reset = datetime.fromisoformat(limited.headers["X-RateLimit-Reset"])
    assert timedelta(0) < reset - microblog.now() <= timedelta(seconds=300)
    assert microblog.mastodon_statuses() == []

    microblog.advance(300)
    assert mastodon.post("/api/v1/statuses", data={"status": "later"}).status_code == 200


# -- Bluesky -----------------------------------------------------------------------------------------------------


def test_bluesky_session_refresh_and_expired_tokens(microblog: MicroblogServer, bluesky: httpx.Client) -> None:
    wrong = bluesky.post(
        "/com.atproto.server.createSession", json={"identifier": microblog.bluesky_identifier, "password": "x"}
    )
    assert wrong.status_code == 401
    assert wrong.json() == {"error": "AuthenticationRequired", "message": "Invalid identifier or password"}

    session = login(bluesky, microblog)
    assert session["did"] == microblog.bluesky_did
    assert session["handle"] == microblog.bluesky_identifier
    assert post_record(bluesky, microblog, session["accessJwt"], post("first")).status_code == 200

    microblog.expire_bluesky_tokens()
    expired = post_record(bluesky, microblog, session["accessJwt"], post("second"))
    assert expired.status_code == 400
    assert expired.json() == {"error": "ExpiredToken", "message": "Token has expired"}

    auth = {"Authorization": f"Bearer {session['refreshJwt']}"}
    refreshed = bluesky.post("/com.atproto.server.refreshSession", headers=auth)
    assert refreshed.status_code == 200
    fresh = refreshed.json()
    assert fresh["accessJwt"] != session["accessJwt"]
    assert fresh["refreshJwt"] != session["refreshJwt"]
    assert post_record(bluesky, microblog, fresh["accessJwt"], post("second")).status_code == 200

    reused = bluesky.post("/com.atproto.server.refreshSession", headers=auth)
    assert reused.status_code == 400
    assert reused.json()["error"] == "ExpiredToken"
    assert microblog.bluesky_login_count == 1
    assert [p.text for p in microblog.bluesky_posts()] == ["first", "second"]


def test_bluesky_access_tokens_expire_with_time_and_with_use() -> None:
    with MicroblogServer(bluesky_access_token_uses=2) as server, httpx.Client(base_url=server.url + "/xrpc") as client:
        token = login(client, server)["accessJwt"]
        auth = {"Authorization": f"Bearer {token}"}
        statuses = [client.get("/com.atproto.server.getSession", headers=auth).status_code for _ in range(3)]
        assert statuses == [200, 200, 400]

        token = login(client, server)["accessJwt"]
        server.advance(7201)  # access tokens live two hours
        late = client.get("/com.atproto.server.getSession", headers={"Authorization": f"Bearer {token}"})
        assert late.json() == {"error": "ExpiredToken", "message": "Token has expired"}
        missing = client.get("/com.atproto.server.getSession")
        assert missing.status_code == 401
        assert missing.json()["error"] == "AuthMissing"


def test_bluesky_create_record_with_a_tid_rkey_and_read_it_back(
    microblog: MicroblogServer, bluesky: httpx.Client
) -> None:
    token = login(bluesky, microblog)["accessJwt"]
    rkey = make_tid(1_793_000_000_000_000)
    created = post_record(bluesky, microblog, token, post("地铁2号线恢复运营", langs=["zh", "en"]), rkey=rkey)

    assert created.status_code == 200
    body = created.json()
    assert body["uri"] == f"at://{microblog.bluesky_did}/app.bsky.feed.post/{rkey}"
    assert body["cid"].startswith("bafyrei")
    assert body["validationStatus"] == "valid"
    assert set(body["commit"]) == {"cid", "rev"}
    assert "ratelimit-policy" in created.headers

    params = {"repo": microblog.bluesky_did, "collection": "app.bsky.feed.post", "rkey": rkey}
    fetched = bluesky.get("/com.atproto.repo.getRecord", params=params).json()
    assert fetched["cid"] == body["cid"]
    assert fetched["value"]["text"] == "地铁2号线恢复运营"
    [stored] = microblog.bluesky_posts()
    assert (stored.rkey, stored.langs, stored.uri) == (rkey, ("zh", "en"), body["uri"])

    generated = post_record(bluesky, microblog, token, post("no rkey given")).json()
    assert is_valid_tid(generated["uri"].rsplit("/", 1)[1])


@pytest.mark.parametrize("rkey", ["not-a-tid", "3jzfcijpj2z2", "kjzfcijpj2z2a", "3jzfcijpj2z21", "a/b"])
def test_bluesky_post_rkey_must_be_a_tid(microblog: MicroblogServer, bluesky: httpx.Client, rkey: str) -> None:
    token = login(bluesky, microblog)["accessJwt"]
    response = post_record(bluesky, microblog, token, post("hello"), rkey=rkey)

    assert response.status_code == 400
    assert response.json()["error"] == "InvalidRequest"
    assert microblog.bluesky_posts() == []


def test_bluesky_text_limit_is_300_graphemes_and_3000_bytes(microblog: MicroblogServer, bluesky: httpx.Client) -> None:
    token = login(bluesky, microblog)["accessJwt"]

    assert post_record(bluesky, microblog, token, post("a" * 299 + FAMILY)).status_code == 200
    too_many = post_record(bluesky, microblog, token, post("a" * 300 + FAMILY))
    assert too_many.status_code == 400
    assert too_many.json() == {
        "error": "InvalidRequest",
        "message": "Invalid app.bsky.feed.post record: Record/text must not be longer than 300 graphemes",
    }
    too_big = post_record(bluesky, microblog, token, post(FAMILY * 150))  # 150 graphemes, 3750 bytes
    assert too_big.status_code == 400
    assert too_big.json()["message"].endswith("Record/text must not be longer than 3000 characters")
    assert len(microblog.bluesky_posts()) == 1


def test_bluesky_duplicate_rkey_is_a_500_and_the_first_record_stays(
    microblog: MicroblogServer, bluesky: httpx.Client
) -> None:
    token = login(bluesky, microblog)["accessJwt"]
    rkey = make_tid(1_793_000_000_000_000)
    assert post_record(bluesky, microblog, token, post("original"), rkey=rkey).status_code == 200

    clash = post_record(bluesky, microblog, token, post("replacement"), rkey=rkey)
    assert clash.status_code == 500
    assert clash.json() == {"error": "InternalServerError", "message": "Internal Server Error"}

    params = {"repo": microblog.bluesky_did, "collection": "app.bsky.feed.post", "rkey": rkey}
    assert bluesky.get("/com.atproto.repo.getRecord", params=params).json()["value"]["text"] == "original"
    assert [p.text for p in microblog.bluesky_posts()] == ["original"]

    missing = bluesky.get("/com.atproto.repo.getRecord", params={**params, "rkey": make_tid(1)})
    assert missing.status_code == 400
    assert missing.json() == {
        "error": "RecordNotFound",
        "message": f"Could not locate record: at://{microblog.bluesky_did}/app.bsky.feed.post/{make_tid(1)}",
    }


def test_bluesky_facets_must_lie_within_the_utf8_text(microblog: MicroblogServer, bluesky: httpx.Client) -> None:
    token = login(bluesky, microblog)["accessJwt"]
    text = "详情 https://metro.example/a"
    start = len("详情 ".encode())
    link = {"$type": "app.bsky.richtext.facet#link", "uri": "https://metro.example/a"}

    def facet(byte_start: int, byte_end: int) -> dict[str, Any]:
        return {"index": {"byteStart": byte_start, "byteEnd": byte_end}, "features": [link]}

    good = post_record(bluesky, microblog, token, post(text, facets=[facet(start, len(text.encode()))]))
    beyond = post_record(bluesky, microblog, token, post(text, facets=[facet(start, len(text.encode()) + 1)]))
    code_points = post_record(bluesky, microblog, token, post(text, facets=[facet(1, 3)]))  # inside "详"
    negative = post_record(bluesky, microblog, token, post(text, facets=[facet(-1, 3)]))

    assert good.status_code == 200
    for response in (beyond, code_points, negative):
        assert response.status_code == 400
        assert response.json()["error"] == "InvalidRequest"
    [stored] = microblog.bluesky_posts()
    assert stored.facets[0]["index"] == {"byteStart": start, "byteEnd": len(text.encode())}


def test_bluesky_tag_facets_must_cover_exactly_their_hashtag(microblog: MicroblogServer, bluesky: httpx.Client) -> None:
    token = login(bluesky, microblog)["accessJwt"]
    text = "2号线信号故障\n#2号线 #Line2"
    start = len("2号线信号故障\n".encode())
    end = start + len("#2号线".encode())

    def tagged(byte_start: int, byte_end: int, tag: str = "2号线", kind: str = "tag") -> httpx.Response:
        feature = {"$type": f"app.bsky.richtext.facet#{kind}", "tag": tag}
        return post_record(bluesky, microblog, token, post(text, facets=[
            {"index": {"byteStart": byte_start, "byteEnd": byte_end}, "features": [feature]}]))

    assert tagged(start, end).status_code == 200
    refused = [tagged(start + 1, end), tagged(start, end - 3), tagged(start, end, tag="#2号线"),
               tagged(start, end, tag="Line2"), tagged(start, end, kind="hashtag"), tagged(start, end, tag="线" * 65)]
    for response in refused:
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "InvalidRequest"
    assert "covers" in refused[0].json()["message"]
    assert [p.facets[0]["index"] for p in microblog.bluesky_posts()] == [{"byteStart": start, "byteEnd": end}]


def test_bluesky_replies_refer_to_existing_posts(microblog: MicroblogServer, bluesky: httpx.Client) -> None:
    token = login(bluesky, microblog)["accessJwt"]
    root = post_record(bluesky, microblog, token, post("1/2")).json()
    ghost = {"uri": f"at://{microblog.bluesky_did}/app.bsky.feed.post/{make_tid(5)}", "cid": root["cid"]}

    orphan = post_record(bluesky, microblog, token, post("2/2", reply={"root": ghost, "parent": ghost}))
    ref = {"uri": root["uri"], "cid": root["cid"]}
    reply = post_record(bluesky, microblog, token, post("2/2", reply={"root": ref, "parent": ref}))

    assert orphan.status_code == 400
    assert reply.status_code == 200
    stored = microblog.bluesky_posts()[-1]
    assert stored.reply_root is not None
    assert stored.reply_parent is not None
    assert stored.reply_root.uri == stored.reply_parent.uri == root["uri"]


def test_bluesky_login_limit_is_30_per_5_minutes(microblog: MicroblogServer, bluesky: httpx.Client) -> None:
    body = {"identifier": microblog.bluesky_identifier, "password": microblog.bluesky_password}
    answers = [bluesky.post("/com.atproto.server.createSession", json=body) for _ in range(31)]

    assert [r.status_code for r in answers] == [200] * 30 + [429]
    assert answers[0].headers["ratelimit-policy"] == "30;w=300"
    assert answers[0].headers["ratelimit-remaining"] == "29"
    limited = answers[-1]
    assert limited.json() == {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}
    assert limited.headers["ratelimit-limit"] == "30"
    assert limited.headers["ratelimit-remaining"] == "0"
    assert 0 < int(limited.headers["ratelimit-reset"]) - microblog.now().timestamp() <= 300
    assert microblog.bluesky_login_count == 30

    microblog.advance(301)
    assert bluesky.post("/com.atproto.server.createSession", json=body).status_code == 200


# -- Weibo -------------------------------------------------------------------------------------------------------


def test_weibo_rejects_repeating_the_previous_status(microblog: MicroblogServer, weibo: httpx.Client) -> None:
    first = share(weibo, microblog, "2号线 08:15 恢复正常运营")
    repeat = share(weibo, microblog, "2号线 08:15 恢复正常运营")
    other = share(weibo, microblog, "3号线 08:20 恢复正常运营")
    back = share(weibo, microblog, "2号线 08:15 恢复正常运营")  # only the previous status counts

    assert first.status_code == 200
    body = first.json()
    assert body["idstr"] == str(body["id"])
    assert body["text"] == "2号线 08:15 恢复正常运营"
    assert re.fullmatch(r"\w{3} \w{3} \d\d \d\d:\d\d:\d\d \+0800 \d{4}", body["created_at"])
    assert repeat.status_code == 400
    assert repeat.json() == {"error": "repeat content!", "error_code": 20019, "request": WEIBO_SHARE_PATH}
    assert (other.status_code, back.status_code) == (200, 200)
    assert len(microblog.weibo_statuses()) == 3


def test_weibo_rejects_more_than_140_units(microblog: MicroblogServer, weibo: httpx.Client) -> None:
    too_long = share(weibo, microblog, "站" * 141)

    assert too_long.status_code == 400
    assert too_long.json() == {
        "error": "Text too long, please input text less than 140 characters!",
        "error_code": 20012,
        "request": WEIBO_SHARE_PATH,
    }
    assert share(weibo, microblog, "站" * 140).status_code == 200
    assert share(weibo, microblog, "a" * 280).status_code == 200
    assert share(weibo, microblog, "b" * 281).json()["error_code"] == 20012


def test_weibo_token_errors(microblog: MicroblogServer, weibo: httpx.Client) -> None:
    missing = weibo.post(WEIBO_SHARE_PATH, data={"status": "hi"})
    invalid = weibo.post(WEIBO_SHARE_PATH, data={"access_token": "nope", "status": "hi"})
    microblog.expire_weibo_token()
    expired = share(weibo, microblog, "hi")

    assert [r.status_code for r in (missing, invalid, expired)] == [403, 403, 403]
    assert [r.json()["error_code"] for r in (missing, invalid, expired)] == [21301, 21332, 21327]
    assert expired.json()["error"] == "expired_token"
    assert microblog.weibo_statuses() == []


def test_weibo_safe_domain_link_when_configured(microblog: MicroblogServer, weibo: httpx.Client) -> None:
    microblog.weibo_safe_domain = "metro.example"

    bare = share(weibo, microblog, "2号线延误")
    linked = share(weibo, microblog, "2号线延误 https://www.metro.example/n/1")

    assert bare.status_code == 400
    assert bare.json() == {"error": "text not find domain!", "error_code": 10017, "request": WEIBO_SHARE_PATH}
    assert linked.status_code == 200


def test_weibo_programmed_rate_limit_is_error_10023(microblog: MicroblogServer, weibo: httpx.Client) -> None:
    microblog.set_rate_limit("weibo", 1, period_s=3600)

    assert share(weibo, microblog, "first").status_code == 200
    limited = share(weibo, microblog, "second")

    assert limited.status_code == 403
    assert limited.json() == {
        "error": "User requests out of rate limit!",
        "error_code": 10023,
        "request": WEIBO_SHARE_PATH,
    }
    assert microblog.requests("weibo")[-1].fault == "rate_limited"


# -- webhooks ----------------------------------------------------------------------------------------------------


def test_webhook_records_deliveries_and_verifies_signatures(microblog: MicroblogServer) -> None:
    body = b'{"notice":"line 2 delayed"}'
    secret = microblog.webhook_secret
    assert secret is not None
    header = microblog.webhook_signature_header
    with httpx.Client(timeout=2) as client:
        plain = client.post(microblog.webhook_url("ops"), content=body, headers={header: sign_webhook(secret, body)})
        stamped = client.post(
            microblog.webhook_url("ops"),
            content=body,
            headers={header: sign_webhook(secret, body, "1793000000"), "X-Broadcaster-Timestamp": "1793000000"},
        )
        forged = client.post(microblog.webhook_url("ops"), content=body, headers={header: sign_webhook("x", body)})
        unsigned = client.post(microblog.webhook_url("other"), content=body)

    assert [r.status_code for r in (plain, stamped, forged, unsigned)] == [204] * 4
    deliveries = microblog.webhook_deliveries("ops")
    assert [d.signature_valid for d in deliveries] == [True, True, False]
    assert deliveries[0].json() == {"notice": "line 2 delayed"}
    assert deliveries[1].header("x-broadcaster-timestamp") == "1793000000"
    [other] = microblog.webhook_deliveries("other")
    assert other.signature_valid is None


# -- faults ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hint", ["seconds", "http-date", "reset-only"])
def test_429_storm_then_success(microblog: MicroblogServer, mastodon: httpx.Client, hint: str) -> None:
    reset = (microblog.now() + timedelta(seconds=30)).isoformat()
    headers = {
        "seconds": {"Retry-After": "7"},
        "http-date": {"Retry-After": microblog.http_date(7)},
        "reset-only": {"X-RateLimit-Reset": reset},
    }[hint]
    microblog.push_fault("mastodon", status=429, headers=headers, count=2)

    answers = [mastodon.post("/api/v1/statuses", data={"status": "storm"}) for _ in range(3)]

    assert [r.status_code for r in answers] == [429, 429, 200]
    assert answers[0].json() == {"error": "Too Many Requests"}
    for name, value in headers.items():
        assert answers[0].headers[name] == value
    assert "X-RateLimit-Limit" not in answers[0].headers  # a fault carries exactly the given headers
    if hint == "http-date":
        retry_at = parsedate_to_datetime(answers[1].headers["Retry-After"])
        assert timedelta(seconds=5) < retry_at - microblog.now() <= timedelta(seconds=7)
    assert len(microblog.mastodon_statuses()) == 1
    assert [r.fault for r in microblog.requests("mastodon")] == ["fault", "fault", None]


def test_5xx_sequence_uses_the_platforms_error_bodies(microblog: MicroblogServer, bluesky: httpx.Client) -> None:
    for status in (502, 503, 500):
        microblog.push_fault("bluesky", status=status)

    answers = [bluesky.get("/com.atproto.repo.getRecord") for _ in range(3)]

    assert [(r.status_code, r.json()["error"]) for r in answers] == [
        (502, "UpstreamFailure"),
        (503, "NotEnoughResources"),
        (500, "InternalServerError"),
    ]
    assert bluesky.get("/com.atproto.repo.getRecord").status_code == 400  # back to normal: missing params


def test_hang_times_the_client_out_and_other_requests_go_on(microblog: MicroblogServer, mastodon: httpx.Client) -> None:
    microblog.hang("mastodon", seconds=30)
    outcome: list[BaseException] = []

    def slow_post() -> None:
        auth = {"Authorization": f"Bearer {microblog.mastodon_token}"}
        with httpx.Client(base_url=microblog.url, headers=auth, timeout=0.8) as client:
            try:
                client.post("/api/v1/statuses", data={"status": "held"})
            except httpx.TimeoutException as exc:
                outcome.append(exc)

    thread = threading.Thread(target=slow_post)
    thread.start()
    [held] = microblog.wait_for_requests("mastodon", count=1, timeout_s=2)
    meanwhile = mastodon.get("/api/v2/instance")
    still_held = microblog.requests("mastodon")[0]
    thread.join(timeout=3)

    assert held.body == b"status=held"
    assert meanwhile.status_code == 200
    assert (still_held.status, still_held.fault) == (None, "hang")  # still held when the second was answered
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx.ReadTimeout)
    assert microblog.mastodon_statuses() == []  # the client gave up before anything was done
    assert microblog.requests("mastodon")[0].status is None  # never answered


def test_hang_after_commit_then_an_idempotent_retry(microblog: MicroblogServer, mastodon: httpx.Client) -> None:
    microblog.hang("mastodon", seconds=30, commit=True)
    key = {"Idempotency-Key": "notice-7-v2-mastodon-0"}

    with pytest.raises(httpx.ReadTimeout):
        mastodon.post("/api/v1/statuses", data={"status": "did it go out?"}, headers=key, timeout=0.3)
    [created] = microblog.mastodon_statuses()
    retry = mastodon.post("/api/v1/statuses", data={"status": "did it go out?"}, headers=key)

    assert retry.status_code == 200
    assert retry.json()["id"] == created.id
    assert len(microblog.mastodon_statuses()) == 1


def test_drip_sends_the_status_at_once_then_trickles_the_body_past_any_read_timeout(
    microblog: MicroblogServer,
) -> None:
    microblog.drip("mastodon", interval_s=0.05, commit=True, seconds=30)
    auth = {"Authorization": f"Bearer {microblog.mastodon_token}", "Idempotency-Key": "drip-1"}
    received = b""
    with httpx.Client(base_url=microblog.url, headers=auth, timeout=0.5) as client:
        started = time.monotonic()
        with client.stream("POST", "/api/v1/statuses", data={"status": "slowly"}) as response:
            assert response.status_code == 200  # the status line came at once
            for chunk in response.iter_raw():  # every read waits far less than the 0.5 s read timeout
                received += chunk
                if time.monotonic() - started > 1.5:
                    break
    [entry] = microblog.wait_for(lambda log: log[0].client_left is not None, timeout_s=2)

    assert received.strip() == b""  # only the padding so far: the answer was nowhere near complete
    assert 0 < len(received) <= 2 * (1.5 / 0.05 + 10)  # a couple of bytes per interval, not the answer at once
    assert (entry.status, entry.fault) == (200, "drip")
    assert entry.client_left is not None
    # The client read for 1.5 s by its own clock; the server's stamps start a little later, so allow for a
    # loaded machine: well past the 0.5 s read timeout is the point.
    assert entry.client_left - entry.monotonic >= 1.0
    [status] = microblog.mastodon_statuses()  # with commit the post took effect before the answer began
    assert status.idempotency_key == "drip-1"


def test_drip_without_commit_ends_in_a_well_formed_503_and_changes_nothing(
    microblog: MicroblogServer, mastodon: httpx.Client
) -> None:
    microblog.drip("mastodon", interval_s=0.02, seconds=0.3, chunk_bytes=8)
    microblog.drip("webhook", interval_s=0.02, seconds=0.1, commit=True)

    started = time.monotonic()
    answer = mastodon.post("/api/v1/statuses", data={"status": "lost"})
    took = time.monotonic() - started
    hook = httpx.post(microblog.webhook_url("ops"), content=b'{"n": 1}', timeout=2)
    after = mastodon.post("/api/v1/statuses", data={"status": "delivered"})

    assert answer.status_code == 503
    assert answer.json() == {"error": "Service Unavailable"}  # whitespace first, then the platform's error body
    assert took >= 0.3
    assert hook.status_code == 200  # a committed 204 is dripped as a 200 with a body of padding
    assert [d.json() for d in microblog.webhook_deliveries("ops")] == [{"n": 1}]
    assert after.status_code == 200  # one drip, then back to normal
    assert [s.text for s in microblog.mastodon_statuses()] == ["delivered"]
    assert [(r.status, r.fault, r.client_left) for r in microblog.requests("mastodon")] == [
        (503, "drip", None),
        (200, None, None),
    ]


def test_reset_connection_answers_nothing(microblog: MicroblogServer, weibo: httpx.Client) -> None:
    microblog.reset_connections("weibo", count=1)

    with pytest.raises(httpx.TransportError) as caught:
        share(weibo, microblog, "lost")
    assert not isinstance(caught.value, httpx.TimeoutException)
    assert share(weibo, microblog, "delivered").status_code == 200

    first, second = microblog.requests("weibo")
    assert (first.status, first.fault) == (None, "reset")
    assert (second.status, second.fault) == (200, None)
    assert [s.text for s in microblog.weibo_statuses()] == ["delivered"]


def test_down_platform_answers_503_until_back_up(microblog: MicroblogServer, weibo: httpx.Client) -> None:
    microblog.set_down("weibo")
    down = share(weibo, microblog, "during outage")
    microblog.set_down("weibo", False)
    up = share(weibo, microblog, "after outage")

    assert down.status_code == 503
    assert down.json()["error_code"] == 10002
    assert up.status_code == 200
    assert [s.text for s in microblog.weibo_statuses()] == ["after outage"]


def test_request_log_uses_the_server_clock(microblog: MicroblogServer, mastodon: httpx.Client) -> None:
    microblog.advance(86400)
    before = microblog.now()
    mastodon.get("/api/v2/instance")

    [entry] = microblog.requests("mastodon")
    assert entry.at >= before
    assert entry.at - datetime.now(UTC) > timedelta(hours=23)
    assert entry.monotonic > 0
    assert entry.status == 200
    assert entry.header("Authorization") == f"Bearer {microblog.mastodon_token}"


def test_older_mastodon_stores_the_key_only_once_the_status_is_made(microblog: MicroblogServer) -> None:
    """`mastodon_key_after_create_s`: a repeat of the key while the first status is being made makes a second
    status (the duplicate the real servers produce); a repeat after that gets the first one back."""
    microblog.mastodon_key_after_create_s = 1.0
    auth = {"Authorization": f"Bearer {microblog.mastodon_token}", "Idempotency-Key": "k-1"}
    answers: list[httpx.Response] = []

    def post() -> None:
        with httpx.Client(base_url=microblog.url, headers=auth, timeout=5) as client:
            answers.append(client.post("/api/v1/statuses", data={"status": "Line 2 suspended"}))

    first = threading.Thread(target=post)
    first.start()
    microblog.wait_for(lambda log: any(r.fault == "slow_create" for r in log))
    post()  # while the first is still being made
    first.join(timeout=10)
    assert len(microblog.mastodon_statuses()) == 2
    post()  # now the key is stored
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len(microblog.mastodon_statuses()) == 2
    assert answers[2].json()["id"] in {s.id for s in microblog.mastodon_statuses()}


def test_a_replayed_answer_meets_only_its_path_and_a_truncated_one_is_cut_off(
    microblog: MicroblogServer, mastodon: httpx.Client
) -> None:
    microblog.push_fault("mastodon", 429, {"Retry-After": "99999999999999"}, path="/api/v1/statuses")
    assert mastodon.get("/api/v2/instance").status_code == 200  # another path: the real answer
    refused = mastodon.post("/api/v1/statuses", data={"status": "x"})
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "99999999999999")
    assert "x-ratelimit-reset" not in refused.headers  # exactly the given headers
    microblog.push_fault("mastodon", 200, {}, {"id": "1", "content": "a long enough body"}, truncate=True)
    with pytest.raises(httpx.TransportError):  # the announced length never arrives: the connection is reset
        mastodon.post("/api/v1/statuses", data={"status": "y"})
    assert microblog.mastodon_statuses() == []  # nothing happened on the platform
