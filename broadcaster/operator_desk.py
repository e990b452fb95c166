"""The operator's desk: manual notices, corrections, their expiry, queued requests and the audit log.

Every action is a `Step` through the pipeline's one commit path; the desk keeps no state of its own beyond
the audit log file (the operator's alerts and corrections are committed state, held by the pipeline).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from types import MappingProxyType

import orjson

from broadcaster import desk
from broadcaster.channels.mqtt import MqttNoticeChannel
from broadcaster.compose import Notice, compose_correction
from broadcaster.config import Config
from broadcaster.errors import BroadcasterError
from broadcaster.metrics import Metrics
from broadcaster.model import FeedSnapshot, LocalizedText, Network
from broadcaster.operator import OPERATOR_FEED, Correction, ManualNotice, has_ended, queued_correction_texts
from broadcaster.outbox import DELETION_VERSION_PREFIX, OutgoingMessage
from broadcaster.outbox_history import OutboxHistory
from broadcaster.pipeline import Pipeline, ResultHook, Step, result_record
from broadcaster.posts import DELETE_KIND, Post
from broadcaster.store import Store, iso

log = logging.getLogger(__name__)


class OperatorDesk:
    """What an operator asks for (CLI, admin API, the request queue), carried through the pipeline."""

    def __init__(
        self, config: Config, network: Network, db: Store, history: OutboxHistory, pipeline: Pipeline,
        metrics: Metrics,
        *, now: Callable[[], datetime],
    ) -> None:
        self.config = config
        self.network = network
        self._db = db
        self._history = history
        self._pipeline = pipeline
        self._metrics = metrics
        self._now = now

    async def announce(
        self, notice: ManualNotice, *, request_id: int | None = None, on_commit: ResultHook | None = None
    ) -> str:
        """Publish an operator's notice through the pipeline; returns its notice id once it is committed.

        It becomes an alert of the `operator` feed: retained on its lines' alert topics and station displays,
        posted on every channel, resolved when `until` passes (or by `withdraw`). The desk request `request_id`
        is finished, and `on_commit` runs with the notice id, in the same transaction.
        """
        now = self._now()
        alert = notice.as_alert(now)
        notice_id = f"alert-{alert.id}"
        pipeline = self._pipeline

        def step() -> Step:
            return replace(pipeline.operator_step(now, {**pipeline.operator_alerts, alert.id: alert}),
                           record=result_record(request_id, on_commit, lambda _: notice_id))

        await pipeline.advance(step, now)
        self.audit("announce", notice.author, alert.id, dict(notice.texts))
        return notice_id

    async def expire_operator_notices(self) -> None:
        """Resolve operator notices whose `until` has passed (a scheduler job)."""
        now = self._now()
        pipeline = self._pipeline

        def withdrawn() -> bool:
            return any(r.feed == OPERATOR_FEED and r.alert.id not in pipeline.operator_alerts
                       for r in pipeline.state.alerts.values())

        def without_ended() -> Step:
            return pipeline.operator_step(now, {k: a for k, a in pipeline.operator_alerts.items()
                                                if a.is_active(now) or not has_ended(a, now)})

        if not withdrawn() and all(a.is_active(now) or not has_ended(a, now)
                                   for a in pipeline.operator_alerts.values()):
            return
        # An alert that ended resolves at once; one withdrawn needs `resolve_after_missing` snapshots. Each step
        # starts from the operator's alerts as they are then: a notice announced meanwhile stays.
        for _ in range(pipeline.policy.resolve_after_missing):
            await pipeline.advance(without_ended, now)
            if not withdrawn():
                break

    def _deletions(self, notice_id: str, now: datetime) -> list[OutgoingMessage]:
        """One "delete" entry per posting channel that carried the notice (its filter may have left others out: they
        have nothing to take down), drained after the correction (same priority, later version)."""
        post = Post(notice_id, DELETE_KIND, "", self.config.network.default_language)
        return [
            OutgoingMessage(notice_id, f"{DELETION_VERSION_PREFIX}{int(now.timestamp())}", c.name, post.to_payload(), 0,
                            starts_thread=False)
            for c in self.config.channels if self._history.issued(c.name, notice_id)
        ]

    async def correct(
        self, notice_id: str, texts: Mapping[str, str], *, author: str = "operator", delete_originals: bool = False,
        request_id: int | None = None, on_commit: ResultHook | None = None,
    ) -> str:
        """Correct an earlier notice everywhere it went; returns the correction's version once committed.

        For an active alert (from a feed or the operator) the alert itself is corrected: its retained MQTT
        state is replaced, and the correction is posted as a reply under the alert's first post on every
        channel; later polls keep the correction while the feed sends the version that was corrected (see
        `Pipeline.feed_step`). For any other notice the correction is posted as a reply. The desk request
        `request_id` is finished, and `on_commit` runs with the version, in the same transaction.
        """
        now = self._now()

        def version_of(notices: Sequence[Notice]) -> str:
            return next((n.version for n in notices if n.id == notice_id), "")

        def step() -> Step:
            # Under the state lock: the channels that carried the notice are those of the outbox as it is now.
            deletions = self._deletions(notice_id, now) if delete_originals else []
            return replace(self._correction_step(notice_id, texts, now, deletions),
                           record=result_record(request_id, on_commit, version_of))

        _, notices = await self._pipeline.advance(step, now)
        version = version_of(notices)
        self.audit("correct", author, notice_id, {**texts, "delete_originals": delete_originals})
        return version

    def _correction_step(
        self, notice_id: str, texts: Mapping[str, str], now: datetime, deletions: Sequence[OutgoingMessage]
    ) -> Step:
        """The step that corrects `notice_id` (called under the state lock: the alert is looked up as it is)."""
        pipeline = self._pipeline
        alert_id = notice_id.removeprefix("alert-")
        record = pipeline.state.alerts.get(alert_id) if notice_id.startswith("alert-") else None
        if record is None:
            # A notice no longer in the state (a resolved alert, a line status, a digest): the correction is a
            # notice of its own, and the network state is left as it is.
            correction = compose_correction(notice_id, texts, line_ids=self._lines_of_notice(notice_id),
                                            network=self.network, now=now, policy=pipeline.compose_policy)
            # It goes where the notice went: a channel's filter (an emergencies-only account) took the notice by
            # what the correction no longer knows (its severity), and one that never posted it has nothing to
            # correct. With no record of it anywhere, the channels' filters decide.
            carried = frozenset(c.name for c in self.config.channels
                                if self._history.followed(c.name, notice_id, c.notices, stream=MqttNoticeChannel.name))
            if carried:
                correction = replace(correction, audience=carried | {MqttNoticeChannel.name})
            return Step(None, extra_notices=[correction], extra_messages=deletions)
        header = LocalizedText(MappingProxyType(dict(texts)))
        corrected = replace(record.alert, header=header)
        # The version the feed sends: an alert corrected before carries that correction's header, not the feed's.
        earlier = pipeline.corrections.get(alert_id)
        sent_version = earlier.alert_version if earlier is not None else record.version
        corrections = {**pipeline.corrections, alert_id: Correction(header, sent_version)}
        if record.feed == OPERATOR_FEED:
            alerts = {**pipeline.operator_alerts, alert_id: corrected}
            return replace(pipeline.operator_step(now, alerts), corrections=corrections,
                           corrected=frozenset({alert_id}), extra_messages=deletions)
        # Re-apply the alert's feed as we last saw it, with the correction: only this alert changes. This is not
        # a fetch: alerts the feed stopped sending go in as skipped, so they keep their count towards resolving.
        # The corrected alert goes in both ways when the feed has stopped sending it: carried (its text changes)
        # and not fetched (its count towards the all-clear stays).
        records = [r for r in pipeline.state.alerts.values() if r.feed == record.feed]
        gone = frozenset(r.alert.id for r in records if r.missing)
        snapshot = FeedSnapshot(
            record.feed, pipeline.state.as_of or now, skipped_alert_ids=gone,
            alerts=tuple(corrected if r.alert.id == alert_id else r.alert
                         for r in records if r.alert.id == alert_id or r.alert.id not in gone),
        )
        return Step(snapshot, corrections=corrections, corrected=frozenset({alert_id}), extra_messages=deletions)

    async def process_requests(self) -> int:
        """Carry out the operator requests queued in the database (`broadcaster announce` / `correct`)."""
        done = 0
        for request in desk.pending(self._db):
            try:
                # Each request is finished in the transaction that commits its notice: killed right after that
                # commit, the next run does not carry it out again.
                if request.action == "announce":
                    await self.announce(ManualNotice.from_request(request.body, self.network), request_id=request.id)
                elif request.action == "correct":
                    body = request.body
                    await self.correct(str(body["notice_id"]), queued_correction_texts(body),
                                       author=str(body.get("author", "operator")),
                                       delete_originals=bool(body.get("delete_originals", False)),
                                       request_id=request.id)
                else:
                    raise ValueError(f"unknown request {request.action!r}")
            except (BroadcasterError, ValueError, KeyError, TypeError) as exc:
                log.error("operator request %d (%s) failed: %s", request.id, request.action, exc)
                desk.finish(self._db, request.id, error=str(exc))  # a no-op if its notice was committed
                continue
            done += 1
        return done

    def _lines_of_notice(self, notice_id: str) -> tuple[str, ...]:
        """The lines the latest MQTT notice about `notice_id` named (none when there is none or it is unreadable)."""
        payload = self._history.latest_payload(MqttNoticeChannel.name, notice_id)
        if payload is None:
            return ()
        try:
            return tuple(orjson.loads(payload).get("lines", ()))
        except orjson.JSONDecodeError:
            return ()

    def audit(self, action: str, author: str, subject: str, detail: Mapping[str, object]) -> None:
        """One line per operator action in the state directory's audit log (who, what, when), and the log.

        Never raises: it runs after the action was committed, and an answer of failure for a committed notice
        would invite the operator to send it again. An entry the file cannot take goes whole to the service
        log at error level and is counted (`broadcaster_audit_failures_total`).
        """
        line = orjson.dumps({"at": iso(self._now()), "action": action, "author": author, "subject": subject,
                             "detail": detail})
        try:
            with (self.config.state.directory / "audit.log").open("ab") as handle:
                handle.write(line + b"\n")
        except OSError as exc:
            self._metrics.audit_failed()
            log.error("could not append to the audit log (%s); the entry: %s", exc.strerror or exc, line.decode())
        log.info("operator %s by %s: %s", action, author, subject)
