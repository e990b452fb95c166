"""Running the pipeline: build it from a config, and run it once, for one operator request, or until stopped.

`open_broadcaster` assembles the parts in dependency order (lock, database, fetcher, HTTP channels, broker
link); `serve` runs the long-lived loops (broker link, one drain loop per channel, the scheduled polls,
digests and operator requests, the admin API); `run_forever`, `run_once` and `run_request` are what the
command line calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from broadcaster import __version__, desk
from broadcaster.channels.base import PostingChannel
from broadcaster.channels.factory import build_channel
from broadcaster.channels.http import HttpChannelClient
from broadcaster.channels.mqtt import MqttLink
from broadcaster.compose.routing import require_known_places
from broadcaster.config import Config, FeedConfig
from broadcaster.errors import BroadcasterError, IdentityConflict, LeaseHeld, LeaseLost, RequestFailed
from broadcaster.feeds.fetch import FeedFetcher
from broadcaster.feeds.network import load_network
from broadcaster.ha.role import Leadership, Role, SoleInstance
from broadcaster.lock import InstanceLock
from broadcaster.render import Renderer
from broadcaster.render.hashtags import require_known_overrides
from broadcaster.scheduler import JobScheduler
from broadcaster.service import Broadcaster, Clock, SystemClock
from broadcaster.store import KeyValueStore, Store
from broadcaster.store.factory import open_database

if TYPE_CHECKING:
    from broadcaster.ha.lease import LeaseLeadership

log = logging.getLogger(__name__)

#: `broadcaster run`'s exit status when the instance lost its leader lease (EX_TEMPFAIL): the service manager
#: starts it again (systemd `Restart=always`), as a standby.
EXIT_LEASE_LOST = 75


@contextlib.asynccontextmanager
async def open_broadcaster(
    config: Config, *, clock: Clock | None = None, leadership: Leadership | None = None
) -> AsyncIterator[Broadcaster]:
    """Build the pipeline: lock the state directory, open the database, load the network and templates."""
    network = load_network(config.network.gtfs, config.network.default_language)
    require_known_places(config, network)  # a channel filter naming no line of the network would post nothing
    require_known_overrides(config, network)  # before the state directory is locked or anything logs in
    renderer = Renderer(config.templates.directory)
    renderer.compile_all(config.network.languages)  # not at the first notice, which may be an emergency's
    lock = InstanceLock(config.state.directory)
    lock.acquire()
    try:
        async with contextlib.AsyncExitStack() as stack:
            # Migrated, if need be, under the lock. With [ha] every leader-only transaction checks the lease.
            fence = leadership.fence if config.ha is not None and leadership is not None else None
            db = open_database(config, holding_lock=True, fence=fence)
            stack.callback(db.close)
            fetcher = await stack.enter_async_context(FeedFetcher(user_agent=f"broadcaster/{__version__}"))
            # A secret the config names but the machine lacks is a configuration error, never an anonymous login.
            username = config.mqtt.username.require(config.source, "mqtt.username") if config.mqtt.username else None
            password = config.mqtt.password.require(config.source, "mqtt.password") if config.mqtt.password else None
            link = MqttLink(
                config.mqtt,
                username=username.reveal() if username else None,
                password=password.reveal() if password else None,
                instance=installation_id(db),
                # With [ha]: a client id and a presence topic of this instance's own, the main topics only while
                # it leads (docs/mqtt.md, "Several instances").
                ha_instance=config.ha.instance if config.ha is not None else None,
                leadership=leadership if config.ha is not None else None,
            )
            the_clock = clock or SystemClock()
            http = await stack.enter_async_context(HttpChannelClient(the_clock.now))
            sessions = KeyValueStore(db, "session")
            posting = [
                build_channel(config, i, http, the_clock.now, sessions) for i in range(len(config.channels))
            ]
            await _start_channels(posting)
            broadcaster = Broadcaster(
                config, network, renderer, db, fetcher, link, posting=posting, clock=the_clock, leadership=leadership
            )
            # Every new broker session republishes the retained state and sends what waited for it. The link
            # runs only after this function yields, so no session starts before this is wired.
            link.when_connected(broadcaster.on_connected)
            with _start_up_frozen():
                yield broadcaster
    finally:
        lock.release()


#: Allocations (net of what was freed) between two young-generation collections while a broadcaster runs
#: (CPython's default: 700). docs/design.md, "Measured facts", has why 100,000 and not 10,000.
YOUNG_COLLECTION_EVERY = 100_000


@contextlib.contextmanager
def _start_up_frozen() -> Iterator[None]:
    """Move what start-up built (the network, the templates, the state, the payload cache: most of the heap) out
    of the cyclic garbage collector's reach while the broadcaster runs. A full collection scanned all of it every
    so often, 33-54 ms with the event loop stopped: that was the slowest emergencies (bench/, the emergency
    scenario's p99; docs/design.md). Objects made later are collected as usual, but less often: a poll makes
    tens of thousands of short-lived objects (parsed entities, payloads), nearly all freed by reference counting,
    and with CPython's default of a young collection every 700 allocations the collector ran ~60 ms of a 250 ms
    steady tick at k = 10 (~5-10 ms with this setting; at k = 1, 1.5 ms -> 0). Almost nothing here makes cycles,
    so collecting them later costs little memory."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def installation_id(db: Store) -> str:
    """This state's id, made on first use: the status topic names it, so a second installation configured with the
    same MQTT client id can tell that the one online is not itself restarting. The instances sharing a PostgreSQL
    database share it (the first to write it wins; the others read it back)."""
    store = KeyValueStore(db, "installation")
    existing = store.get("id")
    if existing is not None:
        return existing
    return store.put_if_absent("id", secrets.token_hex(6))


CHANNEL_START_SECONDS = 20.0


async def _start_channels(channels: Sequence[PostingChannel]) -> None:
    """Let each channel ask its platform what it needs (Mastodon's limit), all at once, without holding start-up
    longer than CHANNEL_START_SECONDS: a channel that cannot be reached keeps its configured defaults."""

    async def start(channel: PostingChannel) -> None:
        try:
            async with asyncio.timeout(CHANNEL_START_SECONDS):
                await channel.start()
        except (TimeoutError, BroadcasterError) as exc:
            log.warning("%s: start-up check failed: %s", channel.name, exc)

    await asyncio.gather(*(start(c) for c in channels))


async def _deliver(b: Broadcaster, failures: list[str], drain_timeout: float) -> None:
    """Wait for the broker, publish the retained state, and drain every channel (bounded)."""
    try:
        async with asyncio.timeout(b.config.mqtt.connect_timeout_seconds):
            await b.link.wait_connected()
    except TimeoutError:
        # mqtt.brokers, not mqtt.url: with mqtt.urls, url is an unused default that names no configured broker.
        brokers = ", ".join(b.config.mqtt.brokers)
        failures.append(f"MQTT broker {brokers} unreachable: {b.link.last_error or 'timed out'}")
        return
    await b.publisher.publish_retained()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + drain_timeout
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            while True:
                for channel in b.channels:
                    await b.drain_due(channel)
                # What is still owed may be backing off after an earlier run's failure (a restart after a crash
                # meets exactly that): wait for the next retry if it falls within the deadline.
                next_at = min((t for ch in b.channels if (t := b.outbox.next_due_at(ch.name)) is not None),
                              default=None)
                if next_at is None:
                    break
                wait = (next_at - b.clock.now()).total_seconds()
                if loop.time() + wait >= deadline:
                    break
                await asyncio.sleep(max(0.2, wait))  # the backoff's own timer, not a synchronisation guess
    left = b.pending()
    if left:
        failures.append(f"{left} notice(s) still queued in the outbox")


@contextlib.asynccontextmanager
async def _linked(b: Broadcaster, *, batch: bool = False) -> AsyncIterator[None]:
    """The broker link for a one-shot command: up while the block runs, then a clean goodbye (for a `batch`
    run, `online` until its data expires, rather than `offline`: docs/mqtt.md)."""
    b.link.batch = batch
    await b.link.check_identity()
    link_stop = asyncio.Event()
    link_task = asyncio.create_task(b.link.run(link_stop))
    try:
        yield
    finally:
        link_stop.set()
        try:
            async with asyncio.timeout(5):
                await link_task
        except TimeoutError:
            link_task.cancel()


async def run_once(config: Config, *, drain_timeout: float = 30.0) -> int:
    """Poll every feed once, publish, deliver the outbox, and return an exit status (0 = all good).

    With `[ha]` the run takes the leader lease first and keeps it while it runs (given back at the end): a run
    beside a leader would be a second one.

    Raises:
        LeaseHeld: with `[ha]`, another instance holds the lease: nothing was polled or sent.
    """
    failures: list[str] = []
    lease = _lease_of(config)
    if lease is not None and not await lease.try_acquire():
        await lease.close()
        raise LeaseHeld(lease.instance)
    # The lease is kept first and given back last: also when opening fails, or after everything has closed.
    async with _keeping(lease), open_broadcaster(config, leadership=lease) as b, _linked(b, batch=True):
        outcomes = await b.poll_round()
        failures += [f"feed {o.feed!r}: {o.error}" for o in outcomes if not o.ok]
        await b.process_requests()
        await _deliver(b, failures, drain_timeout)
    for line in failures:
        log.error("%s", line)
    return 1 if failures else 0


async def run_request(config: Config, action: str, body: Mapping[str, Any], *, wait_seconds: float = 30.0) -> str:
    """Carry out one operator request and return its result (a notice id, a correction's version).

    The request is queued in the database first. If a broadcaster is running on this state directory (or, with
    `[ha]`, anywhere: the leader) it carries the request out; otherwise this process does, and delivers the outbox
    before returning.

    Raises:
        RequestFailed: it failed, or the running broadcaster did not take it within `wait_seconds`.
    """
    db = open_database(config)
    try:
        request_id = desk.submit(db, action, body)
        # With [ha] the instances share the database: the leader, wherever it runs, carries the request out.
        if config.ha is not None or InstanceLock(config.state.directory).held_by_another():
            return await desk.wait_for(db, request_id, wait_seconds)
    finally:
        db.close()
    failures: list[str] = []
    async with open_broadcaster(config) as b, _linked(b):
        await b.process_requests()
        await _deliver(b, failures, wait_seconds)
        status, result, error = desk.outcome(b.db, request_id)
    for line in failures:
        log.warning("%s (it stays queued and goes out with the next run)", line)
    if status != desk.DONE:
        raise RequestFailed(str(error))
    return str(result)


async def serve(
    b: Broadcaster, stop: asyncio.Event, *, grace: float = 10.0, on_started: Callable[[], None] | None = None
) -> None:
    """Run an open broadcaster until `stop`: the MQTT link, one drain loop per channel, one poll job per feed.

    On stop: no new polls, in-flight sends finish (for at most `grace` seconds), then the link says offline.
    `on_started` is called once everything runs (the demo's dashboard uses it). With an `[admin]` section the
    admin API serves too, with a `[public]` section the commuters' web site; both stop taking requests first.

    An instance that does not lead yet (`[ha]`, broadcaster/ha) serves the admin API and the public site as a
    standby and waits for the lease; once it leads it reads the state the former leader committed and starts
    everything else. A leader that loses its lease stops sending at once, with no grace.

    Raises:
        ConfigError: an admin token cannot be read, or the admin API's or the public site's address cannot be
            listened on.
        IdentityConflict: another installation is online on the broker with our MQTT client id.
        LeaseLost: this instance led and lost its lease: nothing more was sent; exit and come back as a standby.
    """
    leadership = b.leadership
    # SQLite's one instance leads from the start, as it always did; with [ha] even an instance that already holds
    # the lease goes the standby's way, which tells its link to open the leader's session.
    leading_from_start = leadership.role is Role.LEADER and b.link.ha_instance is None
    if leading_from_start:
        await b.link.check_identity()  # before anything is polled or posted
    sites = _bound_web_sites(b)
    scheduler = JobScheduler()
    b.link.on_loop_error = lambda: b.metrics.loop_error("mqtt")
    link_stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            for site in sites:
                await site.wait_started(tg.create_task(site.serve()))
            # With [ha] the link runs from the start: a standby keeps its presence topic (docs/mqtt.md).
            link_running = b.link.ha_instance is not None
            if link_running:
                tg.create_task(b.link.run(link_stop))
            if not leading_from_start and not await _take_over(b, stop):
                log.info("stopping: standby %s", leadership.instance)
                for site in sites:
                    site.shutdown()
                link_stop.set()
                return
            _schedule(b, scheduler)
            if not link_running:
                tg.create_task(b.link.run(link_stop))
            drains = [tg.create_task(b.drain_loop(ch, stop)) for ch in b.channels]
            first_poll = tg.create_task(_guarded(b, "job:first-poll", b.poll_round)())
            scheduler.start()
            log.info("broadcaster running: %d feed(s), %d channel(s), MQTT %s",
                     len(b.config.feeds), len(b.channels), ", ".join(b.config.mqtt.brokers))
            if on_started is not None:
                on_started()
            await _first_of(stop, leadership.lost)
            for site in sites:
                site.shutdown()
            scheduler.shutdown()
            if leadership.lost.is_set():
                # Another instance may hold the lease by now: no grace for in-flight sends (the dispatcher
                # already refuses the next one), the link goes down, and the caller exits.
                log.error("lease lost: stopping at once")
                for task in (*drains, first_poll):
                    task.cancel()
                await b.link.step_down()  # a clean DISCONNECT: no Will says offline over the new leader
                link_stop.set()
            else:
                log.info("stopping: finishing in-flight sends")
                await asyncio.wait(drains, timeout=grace)
                link_stop.set()
    except* IdentityConflict as group:
        # Found only at the first connection when the broker was down at start-up: the one reason to stop,
        # for the command line to report.
        raise group.exceptions[0] from None
    finally:  # after a failure too (both are idempotent): no job or API request outlives serve()
        scheduler.shutdown()
        for site in sites:
            site.shutdown()
    if leadership.lost.is_set():
        raise LeaseLost(leadership.instance)


def _schedule(b: Broadcaster, scheduler: JobScheduler) -> None:
    """The leader's jobs: one poll job per feed, the digests, the operator notices' expiry and requests."""
    for feed in b.config.feeds:
        # The first poll of every feed is one round (below), so the schedule starts one interval later.
        scheduler.every(f"poll:{feed.name}", feed.poll_seconds, _poll_job(b, feed), now=False)
    for digest in b.config.digests:
        scheduler.on_cron(f"digest:{digest.name}", digest.cron, b.config.zone,
                          _guarded(b, f"digest:{digest.name}", b.digest, digest))
    scheduler.every("operator:expire", 60, _guarded(b, "job:operator:expire", b.expire_operator_notices), now=False)
    scheduler.every("operator:requests", 1, _guarded(b, "job:operator:requests", b.process_requests))


async def _take_over(b: Broadcaster, stop: asyncio.Event) -> bool:
    """As a standby: wait for the lease (False: `stop` came first), then read what the former leader committed
    and check the broker identity, as a leader starting up does."""
    log.info("standby: instance %s serves requests and waits for the lease", b.leadership.instance)
    leading = asyncio.ensure_future(b.leadership.wait_until_leading())
    try:
        await _first_of(stop, leading)
    finally:
        leading.cancel()
    if stop.is_set():
        return False
    log.info("instance %s leads: loading the state and connecting as the leader", b.leadership.instance)
    b.load_state()
    await b.link.check_identity()
    # With [ha]: the link opens the leader's session (the Will on the main status) and, as after any reconnect,
    # republishes everything retained (Broadcaster.on_connected). Without it the link is not running yet.
    await b.link.become_leader()
    return True


async def _first_of(*waits: asyncio.Event | asyncio.Future[None]) -> None:
    """Return once any of `waits` (events or futures) is set or done."""
    tasks = [asyncio.ensure_future(w.wait()) if isinstance(w, asyncio.Event) else w for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task, w in zip(tasks, waits, strict=True):
            if isinstance(w, asyncio.Event):
                task.cancel()


class _WebSite(Protocol):
    """What `serve` does with the admin API and the public site alike."""

    async def serve(self) -> None: ...
    async def wait_started(self, task: asyncio.Task[None]) -> None: ...
    def shutdown(self) -> None: ...


def _bound_web_sites(b: Broadcaster) -> list[_WebSite]:
    """The admin API and the public web site, each when configured, listening already (so a taken address is an
    error before anything is polled or posted)."""
    sites: list[_WebSite] = []
    # starlette and uvicorn load only when a site is configured
    if b.config.admin is not None:
        from broadcaster.admin import AdminServer

        admin = AdminServer(b, b.config.admin)
        admin.bind()
        sites.append(admin)
    if b.config.public is not None:
        from broadcaster.public import PublicServer

        public = PublicServer(b, b.config.public)
        try:
            public.bind()
        except BaseException:
            if b.config.admin is not None:
                admin.web.sock.close()  # bound above, never served
            raise
        sites.append(public)
    return sites


async def run_forever(
    config: Config, *, stop: asyncio.Event | None = None, grace: float = 10.0, leadership: Leadership | None = None
) -> int:
    """Run until SIGINT/SIGTERM (or `stop`): poll on schedule, publish, drain; then say offline and exit 0.

    With `[ha]` the instance starts as a standby under a lease (`leadership`: the lease of `[ha]` unless given);
    it returns EXIT_LEASE_LOST (75) if it led and lost the lease, and releases the lease on a clean stop."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    lease = _lease_of(config) if leadership is None else _as_lease(leadership)
    leadership = leadership or lease or SoleInstance()
    try:
        async with open_broadcaster(config, leadership=leadership) as b, _keeping(lease):
            await serve(b, stop, grace=grace)
    except LeaseLost as exc:
        log.error("%s", exc)
        return EXIT_LEASE_LOST
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return 0


def _lease_of(config: Config) -> LeaseLeadership | None:
    """`[ha]`: the lease in the PostgreSQL database; None without it (SQLite: one instance, always leading)."""
    if config.ha is None:
        return None
    from broadcaster.ha.lease import LeaseLeadership, LeaseTimes, connector

    return LeaseLeadership(config.ha.instance, connector(config), LeaseTimes.of(config.ha))


def _as_lease(leadership: Leadership) -> LeaseLeadership | None:
    """The given leadership when it is a lease (kept and released here), else None (SoleInstance, a test's)."""
    if isinstance(leadership, SoleInstance):
        return None
    from broadcaster.ha.lease import LeaseLeadership

    return leadership if isinstance(leadership, LeaseLeadership) else None


@contextlib.asynccontextmanager
async def _keeping(lease: LeaseLeadership | None) -> AsyncIterator[None]:
    """Take and keep the lease while the block runs; on a clean stop, give it up for a fast handover (after the
    in-flight sends finished: the block has returned by then). A lost lease is not released: it is not ours."""
    if lease is None:
        yield
        return
    lease_stop = asyncio.Event()
    keeper = asyncio.create_task(lease.run(lease_stop))
    try:
        yield
    finally:
        lease_stop.set()
        await keeper
        if not lease.lost.is_set():
            await lease.release()
        await lease.close()


def _guarded(
    b: Broadcaster, loop: str, job: Callable[..., Awaitable[object]], *args: object
) -> Callable[[], Coroutine[Any, Any, None]]:
    """A scheduler job that logs and counts (broadcaster_loop_errors{loop=`loop`}) instead of raising, so one bad
    run never stops the schedule: its next run is the retry."""

    async def run() -> None:
        try:
            await job(*args)
        except Exception:
            log.exception("scheduled job %s failed; it runs again on schedule", loop)
            b.metrics.loop_error(loop)

    return run


def _poll_job(b: Broadcaster, feed: FeedConfig) -> Callable[[], Awaitable[None]]:
    """A poll as a scheduler job: a coroutine function (APScheduler only awaits those), catching everything so
    one bad tick never kills the schedule (the next tick, `poll_seconds` later, is the retry)."""

    async def poll() -> None:
        try:
            await b.poll(feed)
        except Exception:
            log.exception("poll of feed %r failed unexpectedly; it is polled again on schedule", feed.name)
            b.metrics.loop_error(f"poll:{feed.name}")

    return poll
