"""The dispatcher: delivery from the outbox to the notice channels.

One drain loop per channel sends what is due, one attempt in flight per channel (the channel's lock), in
priority order, threaded where the platform threads, within the channel's quiet windows and posting budget.
It owns the per-channel locks and wake events; the outbox rows are its only other state, and every change
to them is one synchronous outbox call, so no state it reads before an await is written after it.

It reads what is due only right after `Outbox.on_disk` (`_due`), with no await in between: a row the pipeline
committed without waiting for the disk (store/wal_sync.py) is never sent before it is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from broadcaster.budget import allowance, budget_for, mergeable, merged_notice_id, should_merge
from broadcaster.channels.base import (
    BatchingChannel,
    DeletingChannel,
    DeletionNotifyingChannel,
    NoticeChannel,
    PostingChannel,
    ThreadRefs,
)
from broadcaster.config import ChannelConfig, Config
from broadcaster.errors import PermanentDeliveryError, TransientDeliveryError
from broadcaster.metrics import Metrics
from broadcaster.outbox import EMERGENCY_MAX_WAIT_S, PENDING, SENT, Outbox, OutboxEntry, OutgoingMessage
from broadcaster.outbox_history import OutboxHistory
from broadcaster.posts import DELETE_KIND, Post
from broadcaster.render.posts import merged_posts

log = logging.getLogger(__name__)

#: How many requests one attempt at a post may make, per channel kind: Mastodon posts again without the reply
#: when the status it answers is gone; Bluesky may log in, renew its session and look the record up around
#: createRecord. The attempt's deadline is that many `timeout_seconds` (`Dispatcher._attempt_deadline_s`).
REQUESTS_PER_ATTEMPT = {"mastodon": 2, "bluesky": 6}
#: The longest a drain loop waits after its own failure (it doubles from half a second).
DRAIN_RETRY_MAX_S = 60.0
#: How many due entries a drain takes from the outbox at once (a batching channel sends them together).
NOTICE_BATCH = 50


class DeliveryPolicy:
    """When a channel keeps quiet: its quiet windows, and service hours for a channel quiet outside them.

    Shared by the dispatcher (routine posts wait for a window's end) and digests (a slot in a window is skipped).
    """

    def __init__(self, config: Config) -> None:
        self.config = config

    def in_quiet(self, channel: ChannelConfig, at: datetime) -> bool:
        local = at.astimezone(self.config.zone).time()
        if channel.quiet_outside_service_hours and not self.config.service_hours.contains(local):
            return True
        return any(window.contains(local) for window in channel.quiet)

    def quiet_until(self, channel: ChannelConfig, at: datetime) -> datetime:
        """The first minute after `at` that is outside every quiet window of `channel`."""
        probe = at.replace(second=0, microsecond=0) + timedelta(minutes=1)
        for _ in range(24 * 60):
            if not self.in_quiet(channel, probe):
                return probe
            probe += timedelta(minutes=1)
        return probe  # quiet all day: try again tomorrow


class Dispatcher:
    """Delivers the outbox to the notice channels: drain loops, threads, quiet windows, budgets, retries."""

    def __init__(
        self,
        config: Config,
        outbox: Outbox,
        history: OutboxHistory,
        channels: list[NoticeChannel],
        posting: Sequence[tuple[PostingChannel, ChannelConfig]],
        policy: DeliveryPolicy,
        metrics: Metrics,
        now: Callable[[], datetime],
        *,
        may_act: Callable[[], bool] = lambda: True,
    ) -> None:
        self.outbox = outbox
        #: Whether this instance may send now (broadcaster/ha): asked right before every attempt (before every
        #: batch on a batching channel, whose link asks again before each publication).
        self.may_act = may_act
        self.history = history
        # The caller's list, not a copy: the demo swaps its entries for recording channels of the same names.
        self.channels = channels
        self.posting = posting
        self.policy = policy
        self.metrics = metrics
        self.now = now
        self.budgets = {c.name: budget_for(c) for c in config.channels}
        self.channel_configs: dict[str, ChannelConfig] = {c.name: c for c in config.channels}
        self._wake = {ch.name: asyncio.Event() for ch in channels}
        self._drain_locks = {ch.name: asyncio.Lock() for ch in channels}

    def wake(self) -> None:
        for event in self._wake.values():
            event.set()

    def _carries_posts(self, channel: NoticeChannel) -> bool:
        """Whether `channel`'s outbox entries are posts: a configured channel's are; the MQTT notice stream (the
        one channel no `[[channels]]` entry configures) carries notice payloads, which never thread."""
        return channel.name in self.channel_configs

    def thread_of(self, channel: NoticeChannel, entry: OutboxEntry) -> ThreadRefs | None:
        """Where `entry` goes in a thread on `channel`, or None while a post it answers is still queued.

        A part after the first answers the previous part; an update or all-clear answers the first post about
        the same subject. When that post was parked (or never made on this channel), this one stands alone.
        """
        if not self._carries_posts(channel):
            return ThreadRefs()
        post = Post.from_payload(entry.payload)
        root: str | None = None
        if post.reply_to_notice is not None:
            found = self.history.thread_root(post.reply_to_notice, channel.name, before=entry.created_at)
            if found is not None and found[0] == PENDING:
                return None
            if found is not None and found[0] == SENT:
                root = found[1]
        if post.part == 0:
            return ThreadRefs(root, root)
        previous = self.history.status_of(entry.notice_id, entry.version, channel.name, post.part - 1)
        if previous is not None and previous[0] == PENDING:
            return None
        parent = previous[1] if previous is not None and previous[0] == SENT else None
        if root is None:
            first = self.history.status_of(entry.notice_id, entry.version, channel.name, 0)
            root = first[1] if first is not None and first[0] == SENT else parent
        return ThreadRefs(root or parent, parent)

    async def drain_due(self, channel: NoticeChannel) -> int:
        """Send every entry of `channel` that is due now, one at a time (a batching channel's in batches); returns
        how many were acknowledged.

        Callers may overlap (the drain loop, `once`, a reconnect): the channel's lock keeps one attempt in
        flight per channel, so no key is ever sent twice at the same time.
        """
        async with self._drain_locks[channel.name]:
            return await self._drain_due(channel)

    def _apply_budget(self, channel: NoticeChannel) -> bool:
        """Keep `channel` within its account's posting budget: merge a backlog that would overrun it, and hold
        non-emergency posts while the budget is spent. Emergencies are never merged or held. Returns whether it
        merged (committed new rows)."""
        limits = self.budgets.get(channel.name)
        if not limits:
            return False
        now = self.now()
        longest = max(timedelta(seconds=limit.seconds) for limit in limits)
        room = allowance(limits, self.history.sent_times(channel.name, now - longest), now)
        due = self.outbox.due(channel.name, now, limit=1000)
        emergencies = sum(1 for e in due if e.priority == 0)
        merging = _mergeable(due)
        candidates = [e for e, _ in merging]
        merging_now = should_merge(len(due), emergencies, len(candidates), room)
        if merging_now:
            posting = next((c for c, _ in self.posting if c.name == channel.name), None)
            posts = merged_posts([p for _, p in merging], posting.profile if posting else None,
                                 merged_notice_id([e.key for e in candidates]))
            priority = min(e.priority for e in candidates)
            self.outbox.replace_with_merged(
                candidates,
                [OutgoingMessage(p.notice_id, "v1", channel.name, p.to_payload(), priority, part=p.part)
                 for p in posts],
                now,
            )
            self.metrics.merged(channel.name, candidates, [(p.notice_id, "v1") for p in posts])
            log.warning("%s: %d queued posts exceed the posting budget (%d left); merged into %d",
                        channel.name, len(candidates), room.posts, len(posts))
        if room.posts <= 0 and room.next_slot_at is not None:
            held = self.outbox.hold(channel.name, room.next_slot_at)
            if held:
                log.warning("%s: posting budget spent; %d post(s) wait until %s (emergencies still go)",
                            channel.name, held, room.next_slot_at.isoformat(timespec="seconds"))
        return merging_now

    def _apply_quiet(self, channel: NoticeChannel) -> None:
        """In a quiet window, routine and normal posts wait for its end; emergencies go."""
        config = self.channel_configs.get(channel.name)
        now = self.now()
        if config is not None and self.policy.in_quiet(config, now):
            self.outbox.hold(channel.name, self.policy.quiet_until(config, now))

    def _hold_behind_doubt(self, channel: NoticeChannel) -> None:
        """While a post of `channel` whose earlier attempt may have landed waits for its retry (a backoff, or after a
        crash the deadline of the attempt that was in flight), routine and normal posts queue behind it, including
        those queued since: its retry must come first, as Weibo recognises a repeat only of the account's latest
        status. Emergencies are not held by it (at worst a doubtful post shows twice on Weibo)."""
        until = self.outbox.doubtful_until(channel.name, self.now())
        if until is not None:
            self.outbox.hold(channel.name, until)

    async def _drain_due(self, channel: NoticeChannel) -> int:
        if isinstance(channel, BatchingChannel) and not self._carries_posts(channel):
            return await self._drain_batches(channel)
        sent = 0
        while channel.ready:
            progress = False
            for entry in await self._due(channel):
                try:
                    thread = self.thread_of(channel, entry)
                except (ValueError, KeyError, TypeError) as exc:
                    # A row no code of ours can read (hand-edited, or from a broken build): it can never be sent,
                    # and retrying it would hold the channel's whole queue behind it.
                    self.metrics.post(channel.name, "parked")
                    self.outbox.park(entry.key, f"the outbox entry cannot be read: {type(exc).__name__}: {exc}")
                    log.error("%s: parked unreadable outbox entry %s/%s part %d: %s",
                              channel.name, entry.notice_id, entry.version, entry.part, exc)
                    continue
                if thread is None:
                    continue  # its parent goes first
                if not self.may_act():
                    # Self-fencing: the lease may pass to another instance; what is left stays queued for it.
                    log.warning("%s: not sending: this instance no longer holds the lease", channel.name)
                    return sent
                progress = True
                deadline_s = self._attempt_deadline_s(channel)
                if deadline_s is not None:
                    # Posts are visible and few: pay one fsync so a crash mid-request is known after restart, and
                    # not retried while the request may still be in flight. (MQTT consumers deduplicate on
                    # notice_id and version instead.)
                    self.outbox.begin_attempt(entry.key, self.now() + timedelta(seconds=deadline_s))
                    if not self.may_act():
                        # The claim is a store call on this thread: it may have waited (for the write lock, up to
                        # statement_timeout_seconds) past the lease's local deadline. The claim stays, as after a
                        # crash right after it: the next leader waits for its deadline and checks before posting.
                        log.warning("%s: not sending: the lease ran out while the attempt was being claimed",
                                    channel.name)
                        return sent
                try:
                    remote_id = await self._attempt(channel, entry, thread, deadline_s)
                except TransientDeliveryError as exc:
                    self._back_off(channel, [(entry, exc.reason, exc.maybe_delivered)], exc.retry_after)
                    return sent
                except PermanentDeliveryError as exc:
                    self.metrics.post(channel.name, "parked")
                    self.outbox.park(entry.key, exc.reason)
                    log.error("%s: parked notice %s/%s part %d: %s",
                              channel.name, entry.notice_id, entry.version, entry.part, exc.reason)
                    continue
                acked_at = self.now()
                self.outbox.mark_sent(entry.key, acked_at, remote_id, durable=deadline_s is not None)
                self.metrics.sent(channel.name, entry, acked_at)
                sent += 1
            if not progress:
                break
        return sent

    async def _drain_batches(self, channel: NoticeChannel) -> int:
        """`_drain_due` for a channel that takes the queue in batches (the MQTT notice stream): the due entries go
        out together, in order, and what the channel acknowledged is recorded in one transaction. An entry refused
        or left without an answer stays queued and backs off as a failed `send` would, and the queue waits for its
        retry; entries after it in the same batch that the channel acknowledged are not held back (they were
        published in the same window)."""
        assert isinstance(channel, BatchingChannel)
        sent = 0
        while channel.ready:
            due = await self._due(channel)
            if not due:
                break
            if not self.may_act():
                log.warning("%s: not sending: this instance no longer holds the lease", channel.name)
                break
            outcome = await channel.send_batch(due)
            if outcome.acked:
                acked_at = self.now()
                # Not durable: MQTT consumers deduplicate on notice_id and version (see `Outbox.mark_sent`).
                self.outbox.mark_sent_many([entry.key for entry in outcome.acked], acked_at, durable=False)
                for entry in outcome.acked:
                    self.metrics.sent(channel.name, entry, acked_at)
                sent += len(outcome.acked)
            answered = {entry.key for entry in outcome.acked} | {entry.key for entry, _ in outcome.refused}
            unanswered = [entry for entry in due if entry.key not in answered]
            # A refusal is certain: the broker did not take it. The first entry without an answer may have reached
            # the broker (its PUBACK lost with the connection); the others wait behind it, as behind a failed `send`.
            failed = [(entry, reason, False) for entry, reason in outcome.refused]
            if unanswered:
                failed.append((unanswered[0], outcome.stopped or "not acknowledged", True))
            if failed:
                self._back_off(channel, failed, None)
                break
        return sent

    async def _due(self, channel: NoticeChannel) -> list[OutboxEntry]:
        """What is due on `channel` now, rows committed while the last batch was being sent included.

        Read right after every commit there is reached the disk, and after the holds (behind a doubtful post, in a
        quiet window, within the posting budget) were applied to what is queued then, with no await from the one
        to the other: a row that landed during the wait for the disk is neither sent unsynced nor let past a hold
        it belongs under. (A routine post that slipped past the hold behind a doubtful Weibo post made the doubtful
        one's retry a duplicate: the crash loop found it.)
        """
        while True:
            await self.outbox.on_disk()
            self._hold_behind_doubt(channel)
            self._apply_quiet(channel)
            if not self._apply_budget(channel):
                return self.outbox.due(channel.name, self.now(), limit=NOTICE_BATCH)
            # A merge committed new rows: they wait for the disk like any other. This ends: a merged post is never
            # merged again, so another round takes two new rows arriving meanwhile.

    def _back_off(
        self, channel: NoticeChannel, failed: Sequence[tuple[OutboxEntry, str, bool]], retry_after: float | None,
    ) -> None:
        """Entries whose delivery failed for now retry later, all at one time (the soonest any of them would), and
        the channel's whole queue waits until then: the channel is struggling, not the entry, so when the platform
        is back the queue goes out in priority order (an emergency backing off must not be overtaken by a routine
        post whose own retry happened to come due first; nor by one that failed beside it with fewer attempts).
        Emergencies wait for a routine post's failure at most EMERGENCY_MAX_WAIT_S."""
        if not failed:
            return
        now = self.now()
        at = min(self.outbox.retry_time(entry, now, retry_after) for entry, _, _ in failed)
        for entry, reason, uncertain in failed:
            self.metrics.post(channel.name, "retry")
            self.outbox.retry_later(entry, now, reason, retry_after, uncertain=uncertain, at=at)
        self.outbox.hold(channel.name, at)
        emergency_cap = now + timedelta(seconds=EMERGENCY_MAX_WAIT_S)
        emergency_failed = any(entry.priority == 0 for entry, _, _ in failed)
        self.outbox.hold(channel.name, at if emergency_failed else min(at, emergency_cap), below_priority=-1)
        reason = failed[0][1]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        log.warning("%s: %s%s; retrying at %s", channel.name, reason, more, at.isoformat(timespec="seconds"))

    def _attempt_deadline_s(self, channel: NoticeChannel) -> float | None:
        """How long one attempt at a post on `channel` may take, all its requests together (None: MQTT, which
        records no attempts): `timeout_seconds` per request it may make, and a second for the rest."""
        config = self.channel_configs.get(channel.name)
        if config is None:
            return None
        return config.timeout_seconds * REQUESTS_PER_ATTEMPT.get(config.kind, 1) + 1.0

    async def _attempt(
        self, channel: NoticeChannel, entry: OutboxEntry, thread: ThreadRefs, deadline_s: float | None
    ) -> str | None:
        """`_send` within the attempt's deadline: the time `begin_attempt` recorded is then a true bound."""
        if deadline_s is None:
            return await self._send(channel, entry, thread)
        try:
            async with asyncio.timeout(deadline_s):
                return await self._send(channel, entry, thread)
        except TimeoutError:
            raise TransientDeliveryError(channel.name, f"no outcome within the attempt's {deadline_s:g} s",
                                         maybe_delivered=True) from None

    async def _send(self, channel: NoticeChannel, entry: OutboxEntry, thread: ThreadRefs) -> str | None:
        """Send one entry; an entry of kind "delete" takes down the posts of its notice instead."""
        if not self._carries_posts(channel) or Post.from_payload(entry.payload).kind != DELETE_KIND:
            return await channel.send(entry, thread)
        if isinstance(channel, DeletingChannel):
            for remote_id in self.history.original_remote_ids(channel.name, entry.notice_id):
                await channel.delete(remote_id)
            return None
        if isinstance(channel, DeletionNotifyingChannel):
            return await channel.notify_deletion(entry, thread)
        raise PermanentDeliveryError(channel.name, "this platform's posts cannot be deleted by broadcaster;"
                                                   " delete them by hand")

    async def drain_loop(self, channel: NoticeChannel, stop: asyncio.Event) -> None:
        """Deliver `channel`'s outbox until `stop`; wakes on new notices, on reconnects and when retries are due."""
        wake = self._wake[channel.name]
        failures = 0
        while not stop.is_set():
            wake.clear()
            try:
                await self.drain_due(channel)
                failures = 0
                timeout = 30.0
                next_at = self.outbox.next_due_at(channel.name)
                if next_at is not None:
                    timeout = min(timeout, max(0.05, (next_at - self.now()).total_seconds()))
            except Exception:
                # Whatever went wrong (a bug, a database held by another writer, an answer nobody foresaw), this
                # channel tries again after a backoff and every other channel and the broker link go on: one
                # loop's failure is not the service's.
                failures += 1
                log.exception("%s: drain failed (%d in a row)", channel.name, failures)
                self.metrics.loop_error(f"drain:{channel.name}")
                timeout = min(DRAIN_RETRY_MAX_S, 0.5 * 2.0 ** min(failures, 10))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await _first_of(wake, stop)

    def pending(self) -> int:
        return self.outbox.pending_count()

def _mergeable(due: Sequence[OutboxEntry]) -> list[tuple[OutboxEntry, Post]]:
    """The entries a budget may merge, with their posts, in queue order. An emergency's row is never read here,
    nor is a row no code can read: the drain loop parks that one and goes on."""
    found: list[tuple[OutboxEntry, Post]] = []
    for entry in due:
        if entry.priority == 0:
            continue
        try:
            post = Post.from_payload(entry.payload)
        except (ValueError, KeyError, TypeError):
            continue
        if mergeable(post, priority=entry.priority, tried=bool(entry.attempts or entry.uncertain)):
            found.append((entry, post))
    return found


async def _first_of(*events: asyncio.Event) -> None:
    tasks = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


