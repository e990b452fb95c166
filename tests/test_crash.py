"""SIGKILL while draining, again and again: afterwards every post is on its platform exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest
from crash_harness import PLATFORMS, crash_loop
from support import LoopbackHttpServer, MosquittoBroker
from support.microblog_server import MicroblogServer


@pytest.mark.timeout(300)
def test_random_sigkills_while_draining_lose_nothing_and_duplicate_nothing(
    tmp_path: Path, http_server: LoopbackHttpServer, mosquitto: MosquittoBroker, microblog: MicroblogServer
) -> None:
    report = crash_loop(tmp_path, http_server, mosquitto, microblog, iterations=50, seed=20261125)
    print(report.line())
    assert report.kills == 50
    assert report.killed_with_work_pending >= 15, "the kills should land while posts are still queued"
    assert report.notices >= 100
    for channel in PLATFORMS:
        assert report.queued[channel] >= 100, channel
        assert report.missing[channel] == 0, report.line()
        assert report.not_sent.get(channel, 0) == 0, report.line()
    assert report.duplicates == {"mastodon": 0, "bluesky": 0, "weibo": 0}, report.line()
