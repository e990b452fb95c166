"""The pipeline's one commit path: state -> compose -> render -> outbox, for every trigger.

A feed's poll, an operator's notice or correction, the expiry of a notice and a digest slot each describe
what they want as a `Step`; `Pipeline.advance` diffs it against the state, composes and renders the notices
once, and commits the new state, the operator's state, the outbox rows and the caller's own writes in one
transaction, under one lock. The pipeline owns the committed state: the network state, and the operator's
alerts and corrections laid over it (they commit together, so they are kept together).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import orjson

from broadcaster import desk
from broadcaster.compose import ComposePolicy, Notice, Priority, compose
from broadcaster.messages import MessageRenderer
from broadcaster.metrics import Metrics
from broadcaster.model import Alert, FeedSnapshot, Network
from broadcaster.operator import OPERATOR_FEED, Correction, decode_corrections, encode_corrections
from broadcaster.outbox import Outbox, OutgoingMessage
from broadcaster.state import NetworkState, StatePolicy, Transition, alert_version, apply_snapshot
from broadcaster.store import Connection, KeyValueStore, StateStore, Store, decode_alert, encode_alert

log = logging.getLogger(__name__)

#: Writes into the transaction that commits an operator's request, given its result (a notice id or a
#: correction's version): the admin API remembers its answer to an `Idempotency-Key` there.
ResultHook = Callable[[Connection, str], None]


@dataclass(frozen=True, slots=True)
class Step:
    """One pass through the pipeline, as decided under the state lock from the state found there.

    `snapshot` is what a feed (or the operator's own feed) now says; None leaves the network state as it is
    (a correction of a past notice, a digest). `operator_alerts` and `corrections` are the operator's state
    after this step (None: unchanged); they are committed with the network state and take effect together, so
    no other step can slip in between.
    """

    snapshot: FeedSnapshot | None
    operator_alerts: Mapping[str, Alert] | None = None
    corrections: Mapping[str, Correction] | None = None
    corrected: frozenset[str] = frozenset()
    extra_notices: Sequence[Notice] = ()
    extra_messages: Sequence[OutgoingMessage] = ()
    #: Writes into the same transaction, given the notices committed (a desk request records its result).
    record: Callable[[Connection, Sequence[Notice]], None] | None = None
    #: Runs under the state lock once the transaction committed: the caller's own memory follows its writes.
    committed: Callable[[], None] | None = None


def result_record(
    request_id: int | None, on_commit: ResultHook | None, result_of: Callable[[Sequence[Notice]], str]
) -> Callable[[Connection, Sequence[Notice]], None] | None:
    """A `Step.record` finishing the desk request `request_id` and running `on_commit` with the request's
    result, in the transaction that commits its notice (None: neither is asked for)."""
    if request_id is None and on_commit is None:
        return None

    def record(conn: Connection, notices: Sequence[Notice]) -> None:
        result = result_of(notices)
        if request_id is not None:
            desk.record(conn, request_id, result=result)
        if on_commit is not None:
            on_commit(conn, result)

    return record


def _without_resolved(corrections: dict[str, Correction], state: NetworkState) -> dict[str, Correction]:
    """The corrections whose alert is still in `state` (the same dict when none resolved)."""
    if all(alert_id in state.alerts for alert_id in corrections):
        return corrections
    return {alert_id: c for alert_id, c in corrections.items() if alert_id in state.alerts}


class Pipeline:
    """The committed state and the one path that changes it."""

    def __init__(
        self,
        network: Network,
        db: Store,
        messages: MessageRenderer,
        metrics: Metrics,
        *,
        policy: StatePolicy,
        compose_policy: ComposePolicy,
        wake: Callable[[], None],
        publish: Callable[[], Awaitable[int]],
        publish_around: Callable[[Iterable[str], Iterable[str]], Awaitable[int]],
    ) -> None:
        self.network = network
        self.policy = policy
        self.compose_policy = compose_policy
        self._db = db
        self._messages = messages
        self._metrics = metrics
        self._wake = wake
        self._publish = publish
        self._publish_around = publish_around
        self.store = StateStore(db)  # bench/outage.py times the moment a commit lands here
        # The operator's state: read and replaced only inside `advance`'s critical section (see `Step`).
        self._operator_meta = KeyValueStore(db, "operator")
        self.state: NetworkState
        self.operator_alerts: dict[str, Alert]
        self.corrections: dict[str, Correction]
        self.load()
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """Read the committed state (at start-up, and when a standby takes over: broadcaster/ha)."""
        self.state = self.store.load()
        alerts = [decode_alert(d) for d in orjson.loads(self._operator_meta.get("alerts") or "[]")]
        self.operator_alerts = {a.id: a for a in alerts}
        self.corrections = decode_corrections(self._operator_meta.get("corrections") or "{}")

    async def advance(
        self,
        step: Step | Callable[[], Step],
        now: datetime,
        *,
        on_commit: Callable[[Connection], None] | None = None,
        publish: bool = True,
        sync_later: bool = False,
    ) -> tuple[Transition, list[Notice]]:
        """Diff, compose, render, then commit the new state, the operator's state, the notices and whatever
        `on_commit` and the step's `record` write, in one transaction; then wake the channels and publish state.

        `on_commit` is bookkeeping (the poller's feed record): it is committed durably only when the step is
        (see `durable` below). Whatever must survive a power cut, such as a request's result, is a `Step.record`.

        `sync_later`: the caller tells no one that this step is committed (a feed's poll), so a durable commit
        need not hold the event loop for the disk: a worker thread syncs it, and the dispatcher sends none of
        its rows before that (`Store.synced`, `Outbox.on_disk`). A caller that answers someone (an operator's
        request, the admin API) leaves it False: the commit waits for the disk before it returns.

        A `step` that depends on the current state (the operator's alerts, the corrections, the digest marks)
        is given as a function: it is called under the state lock, so what it reads is still true when its
        result commits.

        Raises:
            StoreError: nothing was committed (and nothing changed in memory).
        """
        async with self._lock:
            planned = step if isinstance(step, Step) else step()
            snapshot = planned.snapshot
            if snapshot is None:
                transition = Transition(self.state, ())
                notices = list(planned.extra_notices)
            else:
                transition = apply_snapshot(self.state, snapshot, network=self.network, now=now, policy=self.policy)
                notices = compose(
                    transition.changes, network=self.network, now=now, policy=self.compose_policy,
                    corrected=planned.corrected,
                ) + list(planned.extra_notices)
            messages = [m for n in notices for m in self._messages.messages(n)] + list(planned.extra_messages)
            operator_alerts = self.operator_alerts if planned.operator_alerts is None else dict(planned.operator_alerts)
            corrections = _without_resolved(
                self.corrections if planned.corrections is None else dict(planned.corrections), transition.state)
            # A commit that queues nothing and records no request only moves the state along (a steady tick): it
            # need not wait for the disk. Lost to a power cut, the next poll derives the same state again; a
            # commit that queues a notice is durable, and carries every earlier commit to the disk with it.
            durable = bool(messages) or planned.record is not None or (
                operator_alerts is not self.operator_alerts or corrections is not self.corrections)
            # A step that changes nothing (a digest slot due on no channel) opens no transaction: it would take the
            # database's write lock for nothing, and wait behind another writer for it.
            if durable or snapshot is not None or on_commit is not None:
                with self._db.transaction(durable=durable, sync_later=sync_later) as conn:
                    if snapshot is not None:
                        self.store.save(conn, transition.state)
                    Outbox.enqueue(conn, messages, now)
                    if operator_alerts is not self.operator_alerts:
                        self._operator_meta.save(
                            conn, "alerts", orjson.dumps([encode_alert(a) for a in operator_alerts.values()]).decode())
                    if corrections is not self.corrections:
                        self._operator_meta.save(conn, "corrections", encode_corrections(corrections))
                    if on_commit is not None:
                        on_commit(conn)
                    if planned.record is not None:
                        planned.record(conn, notices)
            if snapshot is not None:
                self.store.committed()
            self.state = transition.state
            self.operator_alerts = operator_alerts
            self.corrections = corrections
            if planned.committed is not None:
                planned.committed()
        if snapshot is not None:
            self._metrics.changes(snapshot.feed, transition.changes)
        self._metrics.note_origins(
            notices, snapshot.timestamp if snapshot is not None and snapshot.feed != OPERATOR_FEED else None)
        if messages:
            self._wake()
        emergencies = [n for n in notices if n.priority is Priority.EMERGENCY]
        if emergencies:
            # An emergency's displays go first, whatever the caller does with the rest (a poll round publishes
            # once, after every feed). Best effort: the state is committed, and the round publishes it anyway.
            try:
                await self._publish_around([line for n in emergencies for line in n.line_ids],
                                           [station for n in emergencies for station in n.station_ids])
            except Exception:  # logged whole; the caller's own round follows
                log.exception("could not publish the emergency's topics ahead of the round")
        if publish and snapshot is not None:
            await self._publish()
        return transition, notices

    def feed_step(self, snapshot: FeedSnapshot) -> Step:
        """A feed's alerts with the operator's corrections applied, so the next poll does not undo them (called
        under the state lock).

        A correction applies only to the version of the alert it corrected. When the feed sends another version
        under that id (it updated the alert, or reused the id for a new one), the feed's own text goes out and
        the correction is dropped.
        """
        if not self.corrections or not snapshot.alerts:
            return Step(snapshot)
        corrections = dict(self.corrections)
        alerts: list[Alert] = []
        for alert in snapshot.alerts:
            correction = corrections.get(alert.id)
            if correction is None:
                alerts.append(alert)
                continue
            version = alert_version(alert)
            if correction.alert_version is None:  # saved by the previous version: it corrected what is sent now
                correction = corrections[alert.id] = replace(correction, alert_version=version)
            if correction.alert_version == version:
                alerts.append(replace(alert, header=correction.header))
            else:
                del corrections[alert.id]
                alerts.append(alert)
        unchanged = corrections == self.corrections
        return Step(replace(snapshot, alerts=tuple(alerts)), corrections=None if unchanged else corrections)

    def operator_step(self, now: datetime, alerts: Mapping[str, Alert]) -> Step:
        """The operator feed's snapshot carrying `alerts`, which become the operator's alerts."""
        return Step(FeedSnapshot(OPERATOR_FEED, now, alerts=tuple(alerts.values())), operator_alerts=alerts)
