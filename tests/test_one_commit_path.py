"""Every trigger commits through the pipeline's one path (issue 13, item 3).

A correction of a notice that is no longer an alert (a digest, a resolved alert) changes no state: it now
commits with no snapshot at all (it used to send the operator's feed an empty snapshot to reach the commit).
However often it happens, the operator's own notices stand.
"""

from __future__ import annotations

import sqlite3

from rig import Rig, poll_all, running, shorten_busy_wait
from support.microblog_server import MicroblogServer
from test_channels import until
from test_operator import local, tables

from broadcaster.config import DigestConfig
from broadcaster.model import Severity
from broadcaster.operator import ManualNotice


async def test_correcting_a_digest_leaves_the_operators_notices_standing(rig: Rig, server: MicroblogServer) -> None:
    config = rig.config(channels=tables(server)[:1])
    async with running(config) as b:
        await poll_all(b)
        notice_id = await b.announce(ManualNotice(texts={"zh": "末班车延后", "en": "Last trains later"},
                                                  line_ids=("2",), severity=Severity.INFO))
        await b.digest(DigestConfig(), local(8, 0))
        await until(lambda: b.pending() == 0, b)
        for n in range(config.state.resolve_after_missing + 1):
            await b.correct("digest-digest", {"zh": f"第{n}次更正", "en": f"correction {n}"})
        await until(lambda: b.pending() == 0, b)
        assert notice_id.removeprefix("alert-") in b.state.alerts
        assert not b.state.alerts[notice_id.removeprefix("alert-")].missing
    texts = [s.text for s in server.mastodon_statuses()]
    assert not any("末班车延后" in t and "解除" in t for t in texts), texts


async def test_a_digest_slot_due_nowhere_takes_no_write_lock(rig: Rig, server: MicroblogServer) -> None:
    """A slot whose every channel is in a quiet window commits nothing, so it neither waits for nor fails on
    another writer holding the database (before: an empty transaction, StoreError once the busy wait ran out)."""
    quiet = tables(server)[:1]
    quiet[0]["quiet"] = [{"start": "00:00", "end": "23:59"}]
    config = rig.config(channels=quiet, digests=[{"name": "rush", "channels": ["mastodon"]}])
    async with running(config) as b:
        await poll_all(b)
        shorten_busy_wait(b)
        with sqlite3.connect(config.database_path) as other:
            other.execute("BEGIN IMMEDIATE")  # another writer holds the database
            try:
                assert await b.digest(config.digests[0], local(8, 0)) == []
            finally:
                other.rollback()
