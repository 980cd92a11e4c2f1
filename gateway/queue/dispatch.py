"""The dispatcher: due messages from the store, through their route, to a carrier's binds; results back.

Owns the middle of the flow of one message (DESIGN.md):

* **Feeder** (one task): reads due messages from the store in batches, one indexed query per
  priority, never more than a bounded number held in memory per priority (back-pressure: a
  backlog of millions stays in the store). Routes each (longest prefix → first carrier with a
  bind up, skipping carriers already tried), claims the batch in the store (QUEUED → SENDING,
  one write), and puts the jobs in the carrier's priority lanes.
* **Senders** (one task per carrier): take the next job from the lanes (OTP first; weighted
  sharing for the others), pick a bind with a free window slot (non-OTP parts leave slots
  reserved for OTP), take a token from the carrier's throttle per part, and submit.
* **Results**: responses, receipts and failures arrive synchronously from the binds
  (`on_event`); they are buffered and written by one flusher task, many per transaction (the
  store's group commit), then the events are published and received deliver_sm are answered
  (after the commit: the store is the truth).

Marketing that becomes due outside its sending window (a `not_before`, a retry, a backlog that
drained past 20:00) is not sent: the feeder puts it back DEFERRED to the window's next opening
(`routing.policy.window_until`) and publishes `deferred` with `until` and reason
`marketing_window`.

Errors are classified by `routing.errors` (per-carrier overrides): transient errors retry on the
same carrier with backoff (in memory, the job keeps its encoded parts so that a retried part
carries the same concatenation reference); throttling slows the carrier's rate (AIMD in
`routing.throttle`); "reroute" errors and carriers with no bind up send the message back to the
store for the next carrier of its route; permanent errors fail it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.config import Policies
from gateway.log import get_logger
from gateway.model import FailReason, Priority, Status
from gateway.queue.store import (
    DueMessage,
    Final,
    Finalize,
    NewMessage,
    PartAccepted,
    ReceiptIn,
    Requeue,
    Store,
    Submitted,
)
from gateway.routing.errors import ErrorPolicy, Kind, Signal, parse_overrides
from gateway.routing.policy import DEFER_MARKETING_WINDOW, window_until
from gateway.routing.table import Health, RouteTable, carriers_for, route_for
from gateway.routing.throttle import CarrierThrottle
from gateway.smpp import session as smpp
from gateway.smpp.message import TextOptions, encode_text, submit_fields
from gateway.smpp.pdu import status_name
from gateway.smpp.receipts import canonical_id
from gateway.smpp.text import EncodedText, ReferenceAllocator, TextRejected

from gateway.queue.events import outcome_fields
from gateway.queue.inbound import InboundHandler
from gateway.queue.lanes import Lanes

log = get_logger("gateway.dispatch")

Publish = Callable[..., Any]  # async (id, status, **fields)
_NO_PARTS: frozenset[int] = frozenset()
FLUSHES_IN_FLIGHT = 2  # result flushes overlapping (see Dispatcher._flush_loop)


class Link(Protocol):
    """What the dispatcher needs of one bind (smpp.connection.Connection)."""

    generation: int

    def submit(self, fields: Mapping[str, Any], context: Any = None, *,
               tlvs: Mapping[str | int, Any] | None = None) -> int: ...

    def respond(self, seq: int, status: int = 0, *, generation: int | None = None) -> bool: ...


class Pool(Protocol):
    """What the dispatcher needs of a carrier's binds (smpp.pool.CarrierPool)."""

    on_capacity: Callable[[], None] | None

    @property
    def ready(self) -> bool: ...

    def pick(self, reserve: int = 0) -> Any: ...


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """Tunables (config `dispatch:` section)."""

    otp_reserve: float = 0.2  # share of every session's window and of the tps kept for OTP
    transactional_weight: int = 4
    marketing_weight: int = 1
    held_per_priority: int = 2000  # jobs in memory per priority, over all carriers
    fetch_batch: int = 500
    poll_s: float = 0.25  # idle poll for messages becoming due (deferred, retried)
    park_s: float = 1.0  # how long a message whose carriers are all down waits before a new look
    retry_base_s: float = 0.5
    retry_max_s: float = 30.0


@dataclass(eq=False, slots=True)
class Job:
    """One claimed message on its way through one carrier."""

    msg: DueMessage
    carrier: str
    priority: Priority
    ready_at: float = 0.0
    encoded: EncodedText | None = None
    to_send: deque[int] | None = None  # part indexes still to submit in this attempt
    done: set[int] = field(default_factory=set)  # part indexes accepted by the carrier
    pending: int = 0  # parts submitted and not answered yet
    failure: tuple[Kind, int | None, str, bool] | None = None  # kind, status, detail, resent
    resent: bool = False
    errors: int = 0
    evacuate: bool = False  # the carrier went down: back to the store once nothing is pending


@dataclass(slots=True)
class CarrierLane:
    """The dispatcher's state for one carrier."""

    name: str
    pool: Pool
    throttle: CarrierThrottle
    opts: TextOptions
    policy: ErrorPolicy
    retries: int
    lanes: Lanes[Job]
    reserve: int = 0  # window slots of each session kept for OTP
    window: int = 0  # configured window of each session
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    submitted_parts: int = 0
    retired: bool = False  # removed or replaced by a reload: its pool drains, nothing new goes


def may_have_reached(job: Job) -> bool:
    """Whether some part of this job may already be at the carrier, so that sending it again
    must say `resent: true`: parts accepted, parts unanswered, or a part of this attempt that
    failed without an answer (timeout, connection lost: `job.failure`'s last item)."""
    return (job.resent or bool(job.done) or job.pending > 0
            or (job.failure is not None and job.failure[3]))


def reserved_slots(window: int, share: float) -> int:
    """Window slots of one session kept for OTP: at least one when the window allows it."""
    if window < 2 or share <= 0:
        return 0
    return min(window - 1, max(1, round(window * share)))


class Dispatcher:
    """Feeds carriers from the store and records what they answer. See the module docstring."""

    def __init__(
        self,
        *,
        store: Store,
        publish: Publish,
        routes: RouteTable,
        settings: DispatchSettings = DispatchSettings(),
        max_age: Callable[[Priority], float] | None = None,
        inbound: InboundHandler | None = None,
        wall_clock: Callable[[], float] = time.time,
        rules: Policies | None = None,
        on_submitted: Callable[[Submitted], None] | None = None,
        on_final: Callable[[Final], None] | None = None,
    ) -> None:
        self.store = store
        self._publish = publish
        self.routes = routes
        self.rules = rules if rules is not None else Policies()  # replaced whole on reload
        # Observers (metrics): called once per message that became submitted / final.
        self._on_submitted = on_submitted
        self._on_final = on_final
        self.settings = settings
        self._max_age = max_age
        self.inbound = inbound
        self._now = wall_clock
        self.carriers: dict[str, CarrierLane] = {}
        self.refs = ReferenceAllocator()
        self._held = {p: 0 for p in Priority}
        self._parked: dict[str, float] = {}  # message id → monotonic time of the next look
        self._tried: dict[str, set[str]] = {}  # message id → carriers that answered "reroute"
        self._feed_wake = asyncio.Event()
        self._flush_wake = asyncio.Event()
        self._accepted: list[PartAccepted] = []
        self._receipts: list[tuple[ReceiptIn, Link, int, int]] = []
        self._finals: list[Finalize] = []
        self._requeues: list[Requeue] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._sending = False
        self._halted = False  # halt() came (maybe before run() started): never send again
        self._closing = False  # finish() started: the flush loop ends after its current flush
        self.counters: dict[str, int] = {
            "parts_submitted": 0, "responses_ok": 0, "responses_error": 0, "retries": 0,
            "timeouts": 0, "receipts": 0, "receipts_unknown": 0, "rerouted": 0,
            "internal_errors": 0, "claimed_at_admission": 0,
        }
        self.responses_by_status: dict[str, int] = {}
        self.receipts_by_state: dict[str, int] = {}
        # Store writes in progress whose events are not queued yet: token → the earliest
        # change time among them (for `oldest_unpublished`, the events checkpoint).
        self._holds: dict[object, float] = {}

    # -- carriers --------------------------------------------------------------------------

    def add_carrier(self, name: str, pool: Pool, *, tps: float, window: int, opts: TextOptions,
                    status_overrides: Mapping[Any, Any] | None = None,
                    retries: int = 3) -> CarrierLane:
        """Add (or, after `remove_carrier`, add again) a carrier. Route its pool's events to
        `lane_handler(<the returned lane>)`, so that a pool replaced by a reload keeps reporting
        to the lane that holds its jobs."""
        now = asyncio.get_running_loop().time()
        lane = CarrierLane(
            name=name, pool=pool,
            throttle=CarrierThrottle(tps, now, otp_share=self.settings.otp_reserve),
            opts=opts, policy=parse_overrides(dict(status_overrides or {})), retries=retries,
            lanes=Lanes(self.settings.transactional_weight, self.settings.marketing_weight),
            reserve=reserved_slots(window, self.settings.otp_reserve), window=window,
        )
        self.carriers[name] = lane
        pool.on_capacity = lane.wake.set
        if self._sending:
            self._start_sender(lane)
        return lane

    def remove_carrier(self, name: str) -> None:
        """A reload removed the carrier or replaced its pool (new connection settings): stop its
        sender at once, send what it holds back to the store (the feeder routes it again), and
        let its jobs in flight settle from the old pool's responses, as they drain."""
        lane = self.carriers.pop(name, None)
        if lane is None:
            return
        lane.retired = True
        if lane.task is not None:
            lane.task.cancel()
            lane.task = None
        self._evacuate(lane)
        self._feed_wake.set()

    def update_carrier(self, name: str, *, tps: float, window: int, opts: TextOptions,
                       status_overrides: Mapping[Any, Any] | None = None,
                       retries: int = 3) -> None:
        """A reload changed settings that need no new bind: apply them to the lane in place."""
        lane = self.carriers.get(name)
        if lane is None:
            return
        lane.reserve = reserved_slots(window, self.settings.otp_reserve)
        lane.window = window
        lane.throttle.set_limit(tps, asyncio.get_running_loop().time())
        lane.opts = opts
        lane.policy = parse_overrides(dict(status_overrides or {}))
        lane.retries = retries
        lane.wake.set()

    def apply_settings(self, settings: DispatchSettings) -> None:
        """A reload changed `dispatch:`: the OTP share of windows and rates and the weights
        apply to every carrier at once; batch sizes from the next fetch."""
        self.settings = settings
        now = asyncio.get_running_loop().time()
        for lane in self.carriers.values():
            lane.lanes.set_weights(settings.transactional_weight, settings.marketing_weight)
            lane.throttle.set_limit(lane.throttle.limit, now, otp_share=settings.otp_reserve)
            lane.reserve = reserved_slots(lane.window, settings.otp_reserve)
            lane.wake.set()

    def lane_handler(self, lane: CarrierLane) -> Callable[[Link, smpp.Event], None]:
        """The event callback for the pool of `lane` (bound to the lane, not to its name)."""
        def handle(link: Link, ev: smpp.Event) -> None:
            self._on_lane_event(lane, link, ev)
        return handle

    def _start_sender(self, lane: CarrierLane) -> None:
        lane.task = asyncio.create_task(self._supervised_send_loop(lane), name=f"send-{lane.name}")

    async def _supervised_send_loop(self, lane: CarrierLane) -> None:
        """A bug in the send path must not silence a carrier for good: log and start again."""
        while True:
            try:
                await self._send_loop(lane)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.counters["internal_errors"] += 1
                log.exception("dispatch_sender_crashed", carrier=lane.name)
                await asyncio.sleep(0.5)

    def health(self) -> dict[str, Health]:
        return {n: Health(binds_up=1 if c.pool.ready else 0) for n, c in self.carriers.items()}

    def on_event(self, carrier: str) -> Callable[[Link, smpp.Event], None]:
        """The event callback for `carrier`'s pool, by name (see `lane_handler`)."""
        def handle(link: Link, ev: smpp.Event) -> None:
            self._on_event(carrier, link, ev)
        return handle

    def capacity_changed(self, carrier: str) -> None:
        """A bind came up or a window slot freed: wake that carrier's sender."""
        lane = self.carriers.get(carrier)
        if lane is not None:
            lane.wake.set()

    def health_changed(self, carrier: str) -> None:
        """Binds came up or all went down: re-route what waits."""
        lane = self.carriers.get(carrier)
        if lane is None or lane.retired:
            return
        if not lane.pool.ready:
            self._evacuate(lane)
        else:
            self._parked.clear()
            lane.wake.set()
        self._feed_wake.set()

    def notify(self) -> None:
        """New messages are due (the ingress committed some)."""
        self._feed_wake.set()

    # -- OTP fast path ----------------------------------------------------------------------
    # An OTP due now is claimed by the admission itself: `claim_carrier` names its carrier, the
    # admission stores it SENDING through that carrier in the commit that accepts it (as
    # `mark_sending` would), publishes `accepted`, then `hand_over` puts it straight in the
    # carrier's OTP lane. No fetch, no second commit, no wait behind the feeder's marketing
    # batch: one store round trip (the accepting commit) from MQTT to submit_sm. A crash after
    # the commit leaves it SENDING: requeued with `resent` at restart (`recover_in_flight`).
    # (Measured for transactional and marketing too, while nothing of theirs is queued: no
    # gain in CPU or latency, and it costs FIFO guarantees; so OTP only.)

    def claim_carrier(self, to: str) -> str | None:
        """The carrier an OTP to `to` accepted now goes through, or None: let the feeder take
        it from the store (not sending, OTPs held at the bound, no route, no carrier up)."""
        if not self._sending or self._held[Priority.OTP] >= self.settings.held_per_priority:
            return None
        route = route_for(to, self.routes)
        if not route:
            return None
        carriers = self.carriers
        for name in route:
            lane = carriers.get(name)
            if lane is not None and not lane.retired and lane.pool.ready:
                return name
        return None

    def hand_over(self, msgs: list[NewMessage]) -> None:
        """OTPs committed SENDING for `msg.claimed_by` (see `claim_carrier`): into the carrier's
        lane now. One whose carrier went away meanwhile goes back to the queue (never sent)."""
        now = self._now()
        woken: dict[str, CarrierLane] = {}
        for m in msgs:
            carrier = m.claimed_by
            lane = self.carriers.get(carrier) if carrier is not None else None
            if lane is None or lane.retired or not self._sending:
                self._requeues.append(Requeue(m.id, due_at=now, at=now, carrier=carrier))
                self._schedule_flush()
                self._feed_wake.set()
                continue
            due = m.created_at if m.due_at is None else m.due_at
            msg = DueMessage(0, m.id, m.to, m.text, m.priority, m.sender, m.client, m.parts, 0,
                             False, m.created_at, due, m.expire_at, None, _NO_PARTS)
            self._held[m.priority] += 1
            self.counters["claimed_at_admission"] += 1
            lane.lanes.push(Job(msg=msg, carrier=lane.name, priority=m.priority))
            woken[lane.name] = lane
        for lane in woken.values():
            lane.wake.set()

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled or `stop_sending`."""
        self._sending = not self._halted
        for lane in self.carriers.values():
            self._start_sender(lane)
        self._tasks = [
            asyncio.create_task(self._feed_loop(), name="feed"),
            asyncio.create_task(self._flush_loop(), name="flush"),
            asyncio.create_task(self._expiry_loop(), name="expiry"),
        ]
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self._cancel_tasks()

    def halt(self) -> None:
        """No submit_sm from now on (synchronous: called from the signal handler)."""
        self._halted = True
        self._sending = False
        self._feed_wake.set()
        for lane in self.carriers.values():
            lane.wake.set()

    async def stop_sending(self) -> None:
        """No submit_sm after this returns: stop the feeder and senders (shutdown, first step)."""
        self.halt()
        # The loops also return by themselves once `_sending` is False: Python 3.11's wait_for
        # swallows a cancellation that races with its inner wait completing (halt() sets the
        # very events they wait on), so a cancel alone could leave them running forever and
        # this wait (the shutdown) with them. Bounded anyway: nothing submits after halt().
        senders = [lane.task for lane in self.carriers.values() if lane.task is not None]
        for lane in self.carriers.values():
            lane.task = None
        for t in senders:
            t.cancel()
        if senders:
            await asyncio.wait(senders, timeout=1.0)
        # The feeder ends by itself too (halt() woke it). Not cancelled: a cancelled child makes
        # run()'s gather cancel the flusher in the middle of a flush, whose results the store
        # has committed by then; their events would be lost (seen: `delivered` never published
        # for the last message answered before a SIGTERM).
        feed = [t for t in self._tasks if t.get_name() == "feed" and not t.done()]
        if feed:
            await asyncio.wait(feed, timeout=1.0)

    async def finish(self) -> None:
        """Shutdown, last step (binds closed): unsent jobs back to the store, results flushed."""
        now = self._now()
        for lane in self.carriers.values():
            for job in lane.lanes.drain():
                self._release(job)
                self._requeues.append(Requeue(job.msg.id, due_at=now, at=now,
                                              resent=may_have_reached(job)))
        self._closing = True
        self._flush_wake.set()
        for t in self._tasks:
            if t.get_name() == "flush" and not t.done():
                await asyncio.wait([t])  # its flush in progress, if any (the caller bounds us)
        with self._holding(self.oldest_unpublished()):
            await self._flush_once()
        await self._cancel_tasks()

    async def _cancel_tasks(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []

    def set_routes(self, routes: RouteTable) -> None:
        self.routes = routes
        self._parked.clear()
        self._feed_wake.set()

    # -- feeding ----------------------------------------------------------------------------

    async def _feed_loop(self) -> None:
        while self._sending:
            s = self.settings
            self._feed_wake.clear()
            more = False
            for prio in Priority:
                room = s.held_per_priority - self._held[prio]
                if room <= 0:
                    continue
                limit = min(room, s.fetch_batch)
                try:
                    got = await self._feed_once(prio, limit)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the store is down: wait and try again
                    log.error("dispatch_fetch_failed", error=str(exc))
                    await asyncio.sleep(1.0)
                    break
                more = more or got >= limit
            if more:
                await asyncio.sleep(0)
            else:
                await self._sleep_on(self._feed_wake, s.poll_s)

    async def _feed_once(self, prio: Priority, limit: int) -> int:
        mono = asyncio.get_running_loop().time()
        if self._parked:
            self._parked = {k: t for k, t in self._parked.items() if t > mono}
        now = self._now()
        batch = await self.store.fetch_due(now, limit, priorities=[prio],
                                           exclude=self._parked.keys())
        if not batch:
            return 0
        fetched = len(batch)
        if prio is Priority.MARKETING:
            batch = await self._defer_outside_window(batch, now)
        health = self.health()
        by_carrier: dict[str, list[DueMessage]] = {}
        for m in batch:
            route = route_for(m.to, self.routes)
            if not route:
                self._finals.append(Finalize(m.id, Status.FAILED, now, reason=FailReason.NO_ROUTE,
                                             detail=f"no route for {m.to[:4]}…"))
                continue
            tried = self._tried.get(m.id, ())
            candidates = carriers_for(m.to, self.routes, health, exclude=tried)
            if not candidates:
                if tried and all(c in tried for c in route):
                    self._finals.append(Finalize(
                        m.id, Status.FAILED, now, reason=FailReason.RETRIES_EXHAUSTED,
                        detail="every carrier of the route refused it"))
                    self._tried.pop(m.id, None)
                else:
                    self._parked[m.id] = mono + self.settings.park_s
                continue
            by_carrier.setdefault(candidates[0], []).append(m)
        if self._finals:
            self._schedule_flush()
        for carrier, msgs in by_carrier.items():
            # Every part of a message goes again on a new attempt (with a new concatenation
            # reference: a handset cannot join parts of two attempts), so parts an earlier
            # attempt got accepted are forgotten first. Kept, one already final from its
            # receipt would stay with the old carrier and the message would never become
            # SUBMITTED on the new one (it stayed SENDING for good).
            stale = [Requeue(m.id, due_at=m.due_at, at=now, resent=m.resent, reset_parts=True)
                     for m in msgs if m.parts_done]
            if stale:
                await self.store.requeue(stale)
            claimed = set(await self.store.mark_sending([m.id for m in msgs], carrier, now))
            lane = self.carriers[carrier]
            for m in msgs:
                if m.id not in claimed:
                    continue
                job = Job(msg=m, carrier=carrier, priority=m.priority, resent=m.resent)
                self._held[m.priority] += 1
                lane.lanes.push(job)
            lane.wake.set()
        return fetched

    def oldest_unpublished(self) -> float | None:
        """The earliest change time (epoch) of a result buffered or being committed whose event
        is not queued for publishing yet; None when there is none."""
        times = list(self._holds.values())
        times += [a.at for a in self._accepted] + [f.at for f in self._finals]
        times += [r[0].received_at for r in self._receipts] + [q.at for q in self._requeues]
        return min(times) if times else None

    @contextlib.contextmanager
    def _holding(self, at: float | None) -> Any:
        token = object()
        if at is not None:
            self._holds[token] = at
        try:
            yield
        finally:
            self._holds.pop(token, None)

    async def _defer_outside_window(self, batch: list[DueMessage], now: float) -> list[DueMessage]:
        """Marketing due outside its sending window goes back DEFERRED to the next opening
        (committed, then `deferred` published); returns the rest of the batch."""
        rules = self.rules
        if rules.marketing.window is None and not rules.marketing.prefix_windows:
            return batch
        keep: list[DueMessage] = []
        deferrals: list[tuple[DueMessage, Any]] = []
        for m in batch:
            until = window_until(m.to, rules, now)
            if until is None:
                keep.append(m)
            else:
                deferrals.append((m, until))
        if not deferrals:
            return batch
        with self._holding(now):
            done = await self.store.requeue([
                Requeue(m.id, due_at=until.timestamp(), at=now, resent=m.resent,
                        status=Status.DEFERRED, reason=DEFER_MARKETING_WINDOW)
                for m, until in deferrals])
            for (m, until), ok in zip(deferrals, done, strict=True):
                if ok:
                    await self._publish(m.id, Status.DEFERRED, at=now,
                                        until=until.isoformat(timespec="seconds"),
                                        reason=DEFER_MARKETING_WINDOW)
        return keep

    # -- sending ----------------------------------------------------------------------------

    async def _send_loop(self, lane: CarrierLane) -> None:
        loop = asyncio.get_running_loop()
        pool, throttle, lanes = lane.pool, lane.throttle, lane.lanes
        otp = Priority.OTP
        while self._sending:
            mono = loop.time()
            job = lanes.peek(mono)
            if job is None:
                lane.wake.clear()
                ready = lanes.next_ready_at()
                await self._sleep_on(lane.wake, None if ready is None else ready - mono)
                continue
            try:
                if job.to_send is None and not self._start(lane, job):
                    continue
            except Exception as exc:  # a bug with this message must not stop the carrier
                self._job_crashed(lane, job, exc)
                continue
            if job.failure is not None or job.evacuate or not job.to_send:
                # A part failed meanwhile (or the carrier went down): stop sending this attempt.
                lanes.pop(job)
                if job.to_send:
                    job.to_send.clear()
                if job.pending == 0:
                    self._settle(lane, job)
                continue
            link = pool.pick(0 if job.priority is otp else lane.reserve)
            if link is None:
                lane.wake.clear()
                await self._sleep_on(lane.wake, 0.5)
                continue
            if not throttle.take(mono, 1, job.priority):
                delay = throttle.delay_until_available(mono, 1, job.priority)
                lane.wake.clear()
                await self._sleep_on(lane.wake, max(delay, 0.0005))
                continue
            if not self._sending:
                return
            index = job.to_send[0]
            try:
                fields, tlvs = submit_fields(job.encoded, index, to=job.msg.to,  # type: ignore[arg-type]
                                             sender=job.msg.sender, priority=job.priority,
                                             opts=lane.opts)
                link.submit(fields, (job, index), tlvs=tlvs)
            except (smpp.WindowFull, smpp.NotBound, smpp.LocalProtocolError):
                await asyncio.sleep(0)
                continue
            except Exception as exc:  # a bug with this message must not stop the carrier
                self._job_crashed(lane, job, exc)
                continue
            job.to_send.popleft()
            job.pending += 1
            lane.submitted_parts += 1
            self.counters["parts_submitted"] += 1
            if not job.to_send:
                lanes.pop(job)
            # Let responses and the flusher run between parts under a long backlog.
            if lane.submitted_parts % 64 == 0:
                await asyncio.sleep(0)

    def _job_crashed(self, lane: CarrierLane, job: Job, exc: Exception) -> None:
        """An unexpected error while preparing or submitting a part of `job` (a bug): log it,
        and handle the attempt as a transient failure (retried with backoff, failed once its
        retries are used up) instead of losing the carrier's sender task."""
        self.counters["internal_errors"] += 1
        log.error("dispatch_job_error", carrier=lane.name, message=job.msg.id, error=repr(exc))
        with contextlib.suppress(ValueError):
            lane.lanes.pop(job)
        if job.to_send:
            job.to_send.clear()
        self._fail_part(job, Kind.TRANSIENT, None, f"internal error: {exc!r}"[:200],
                        resent=False)
        if job.pending == 0:
            self._settle(lane, job)

    async def _sleep_on(self, event: asyncio.Event, timeout: float | None) -> None:
        """Until `event` is set or `timeout` passes (then `event` is set: the callers clear it
        before they sleep). A timer, not `wait_for` (a task per call): a sender waiting for
        its throttle's next token sleeps here once per part."""
        if timeout is None:
            await event.wait()
            return
        if event.is_set():
            return
        timer = asyncio.get_running_loop().call_later(max(timeout, 0.0), event.set)
        try:
            await event.wait()
        finally:
            timer.cancel()

    def _start(self, lane: CarrierLane, job: Job) -> bool:
        """Prepare a job's first attempt on this carrier. False when it ended here (popped)."""
        now = self._now()
        m = job.msg
        if m.expire_at is not None and m.expire_at <= now:
            lane.lanes.pop(job)
            self._release(job)
            self._finals.append(Finalize(m.id, Status.FAILED, now,
                                         reason=FailReason.EXPIRED_IN_QUEUE,
                                         detail="not sent within its validity / maximum queue age",
                                         carrier=lane.name, resent=job.resent))
            self._schedule_flush()
            return False
        if job.encoded is None:
            try:
                job.encoded = encode_text(m.text, m.to, lane.opts, self.refs)
            except TextRejected as exc:
                lane.lanes.pop(job)
                self._release(job)
                self._finals.append(Finalize(m.id, Status.FAILED, now, reason=exc.reason,
                                             detail=exc.detail, carrier=lane.name))
                self._schedule_flush()
                return False
        job.to_send = deque(i for i in range(len(job.encoded.parts)) if i not in job.done)
        return True

    # -- results ----------------------------------------------------------------------------

    def _on_event(self, carrier: str, link: Link, ev: smpp.Event) -> None:
        lane = self.carriers.get(carrier)
        if lane is None:
            return
        self._on_lane_event(lane, link, ev)

    def _on_lane_event(self, lane: CarrierLane, link: Link, ev: smpp.Event) -> None:
        carrier = lane.name
        if isinstance(ev, smpp.SubmitResponse):
            self._on_response(lane, ev)
        elif isinstance(ev, (smpp.RequestTimedOut, smpp.RequestFailed)):
            ctx = ev.context
            if isinstance(ctx, tuple) and len(ctx) == 2 and isinstance(ctx[0], Job):
                job, _ = ctx
                job.pending -= 1
                self.counters["timeouts"] += 1
                reason = "response timeout" if isinstance(ev, smpp.RequestTimedOut) \
                    else f"connection lost: {ev.reason}"
                self._fail_part(job, Kind.TRANSIENT, None, reason, resent=True)
                if job.pending == 0 and not job.to_send:
                    self._settle(lane, job)
        elif isinstance(ev, (smpp.DeliverSmReceived, smpp.DataSmReceived)):
            if self.inbound is None:
                link.respond(ev.seq, generation=link.generation)
                return
            receipt = self.inbound.on_deliver(carrier, ev.pdu, self._now(), link, ev.seq)
            if receipt is not None:  # else MO or unusable: the inbound handler answers it
                self.counters["receipts"] += 1
                state = str(receipt.state)
                self.receipts_by_state[state] = self.receipts_by_state.get(state, 0) + 1
                self._receipts.append((receipt, link, ev.seq, link.generation))
                self._schedule_flush()
        elif isinstance(ev, (smpp.Bound, smpp.Closed)):
            if not lane.retired:
                self.health_changed(carrier)

    def _on_response(self, lane: CarrierLane, ev: smpp.SubmitResponse) -> None:
        ctx = ev.context
        if not (isinstance(ctx, tuple) and len(ctx) == 2 and isinstance(ctx[0], Job)):
            return
        job, index = ctx
        job.pending -= 1
        mono = asyncio.get_running_loop().time()
        status = ev.command_status
        name = status_name(status)
        self.responses_by_status[name] = self.responses_by_status.get(name, 0) + 1
        if status == 0:
            self.counters["responses_ok"] += 1
            lane.throttle.on_success(mono)
            job.done.add(index)
            self._accepted.append(PartAccepted(job.msg.id, index + 1, lane.name, ev.message_id,
                                               canonical_id(ev.message_id), self._now(),
                                               job.resent))
            self._schedule_flush()
        else:
            self.counters["responses_error"] += 1
            signal = lane.policy.signal(status)
            if signal is Signal.THROTTLE:
                lane.throttle.on_throttled(mono)
            elif signal is Signal.PAUSE:
                lane.throttle.on_queue_full(mono)
            self._fail_part(job, lane.policy.classify(status), status, name, resent=False)
        if job.pending == 0 and not job.to_send:
            self._settle(lane, job)

    def _fail_part(self, job: Job, kind: Kind, status: int | None, detail: str, *,
                   resent: bool) -> None:
        """Keep the worst failure of this attempt: permanent > reroute > transient."""
        rank = {Kind.TRANSIENT: 1, Kind.REROUTE: 2, Kind.PERMANENT: 3}
        if job.failure is None or rank.get(kind, 0) > rank.get(job.failure[0], 0):
            job.failure = (kind, status, detail, resent or (job.failure or (0, 0, "", False))[3])
        elif resent:
            k, s, d, _ = job.failure
            job.failure = (k, s, d, True)

    def _settle(self, lane: CarrierLane, job: Job) -> None:
        """Every part of this attempt is answered (or failed): decide what happens next."""
        failure = job.failure
        if failure is None and not job.evacuate:
            if job.encoded is not None and len(job.done) == len(job.encoded.parts):
                self._release(job)
            return
        now = self._now()
        if failure is not None:
            kind, status, detail, resent = failure
            job.resent = job.resent or resent
        else:
            kind, status, detail = Kind.TRANSIENT, None, "carrier went down"
        job.failure = None
        m = job.msg
        if kind is Kind.PERMANENT:
            self._release(job)
            self._finals.append(Finalize(m.id, Status.FAILED, now, reason=FailReason.CARRIER_REJECTED,
                                         detail=detail, command_status=status, carrier=lane.name,
                                         resent=job.resent))
        elif kind is Kind.REROUTE:
            self._release(job)
            tried = self._tried.setdefault(m.id, set())
            tried.add(lane.name)
            if all(c in tried for c in route_for(m.to, self.routes)):
                # No untried carrier left: fail now, with this carrier's answer (the contract's
                # command_status), not later in the feeder as `retries_exhausted` without it.
                self._tried.pop(m.id, None)
                self._finals.append(Finalize(m.id, Status.FAILED, now,
                                             reason=FailReason.CARRIER_REJECTED, detail=detail,
                                             command_status=status, carrier=lane.name,
                                             resent=job.resent))
            else:
                self.counters["rerouted"] += 1
                self._requeues.append(Requeue(m.id, due_at=now, at=now, resent=job.resent,
                                              carrier=lane.name, reset_parts=True))
                self._feed_wake.set()
        else:
            throttled = status is not None and lane.policy.signal(status) in (Signal.THROTTLE,
                                                                              Signal.PAUSE)
            if not throttled:
                job.errors += 1
            if job.errors > lane.retries:
                self._release(job)
                self._finals.append(Finalize(m.id, Status.FAILED, now,
                                             reason=FailReason.RETRIES_EXHAUSTED, detail=detail,
                                             command_status=status, carrier=lane.name,
                                             resent=job.resent))
            elif job.evacuate or lane.retired or not lane.pool.ready:
                self._release(job)
                self._requeues.append(Requeue(m.id, due_at=now, at=now, resent=job.resent,
                                              carrier=lane.name))
                self._feed_wake.set()
            else:
                self.counters["retries"] += 1
                s = self.settings
                delay = 0.05 if throttled else min(s.retry_max_s, s.retry_base_s * 2 ** (job.errors - 1))
                job.ready_at = asyncio.get_running_loop().time() + delay * random.uniform(0.8, 1.2)
                job.to_send = None
                lane.lanes.push(job)
                lane.wake.set()
        self._schedule_flush()

    def _release(self, job: Job) -> None:
        self._held[job.priority] -= 1
        self._feed_wake.set()

    def _evacuate(self, lane: CarrierLane) -> None:
        """The carrier has no bind up: its queued jobs go back to the store for failover."""
        now = self._now()
        for job in list(lane.lanes.drain()):
            if job.pending > 0:
                job.evacuate = True  # its RequestFailed events will settle it
                if job.to_send:
                    job.to_send.clear()
                continue
            self._release(job)
            self._requeues.append(Requeue(job.msg.id, due_at=now, at=now,
                                          resent=may_have_reached(job), carrier=lane.name))
        self._schedule_flush()

    # -- flushing ---------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        self._flush_wake.set()

    async def _flush_loop(self) -> None:
        # Up to FLUSHES_IN_FLIGHT flushes overlap: the next one queues its writes while the
        # previous one commits (the store's writer runs them in call order), so a receipt waits
        # for about one commit, not for the end of the flush in progress plus its own. Each
        # flush publishes only after the one before it has (events keep their order).
        # Flushes run as tasks of their own, never cancelled: the store commits what it was
        # given whatever happens to the awaiting task, and those results' events would be lost
        # (a message final in the store, `delivered` never sent). The loop ends between two
        # flushes once `finish` sets `_closing`, after the ones in flight.
        loop = asyncio.get_running_loop()
        running: set[asyncio.Task[None]] = set()
        turn: asyncio.Future[None] | None = None  # done once the latest flush has published
        try:
            while not self._closing:
                await self._flush_wake.wait()
                if self._closing:
                    return  # finish() does the last flush
                if len(running) >= FLUSHES_IN_FLIGHT:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                self._flush_wake.clear()
                prev, turn = turn, loop.create_future()
                task = asyncio.create_task(self._flush_in_turn(prev, turn), name="flush-once")
                running.add(task)
                task.add_done_callback(running.discard)
                await asyncio.sleep(0)  # it takes the buffers and queues its writes now
        finally:
            if running:
                await asyncio.wait(running)

    async def _flush_in_turn(self, prev: asyncio.Future[None] | None,
                             turn: asyncio.Future[None]) -> None:
        try:
            # Held from before it takes the buffers until its events are queued.
            with self._holding(self.oldest_unpublished()):
                await self._flush_once(prev)
        except Exception as exc:  # the store is down: results are kept and retried
            log.error("dispatch_flush_failed", error=str(exc))
            await asyncio.sleep(0.5)
            self._flush_wake.set()
        finally:
            if not turn.done():
                turn.set_result(None)

    async def _flush_once(self, publish_after: asyncio.Future[None] | None = None) -> None:
        """Commit the buffered results, answer the receipts committed, then (once the flush
        before, `publish_after`, has published) publish the events."""
        accepted, self._accepted = self._accepted, []
        receipts, self._receipts = self._receipts, []
        finals, self._finals = self._finals, []
        requeues, self._requeues = self._requeues, []
        if not (accepted or receipts or finals or requeues):
            return
        store = self.store
        try:
            # Created in this order, so the store's single writer runs them in one transaction
            # in this order: a response recorded before a receipt of the same flush.
            t_acc = asyncio.ensure_future(store.record_parts_accepted(accepted))
            t_rec = asyncio.ensure_future(store.apply_receipts([r[0] for r in receipts]))
            t_fin = asyncio.ensure_future(store.finalize(finals))
            t_req = asyncio.ensure_future(store.requeue(requeues))
            results = await asyncio.gather(t_acc, t_rec, t_fin, t_req, return_exceptions=True)
        except BaseException:
            # Cancelled: put everything back in front of what came meanwhile.
            self._accepted[:0] = accepted
            self._receipts[:0] = receipts
            self._finals[:0] = finals
            self._requeues[:0] = requeues
            raise
        # The store isolates a failing call: the others may have committed. Only the failed
        # groups are retried (a committed one again would come back as a duplicate, without its
        # events); the committed ones are published now.
        part_outcomes, receipt_outcomes, fin_outcomes, req_outcome = results
        error: BaseException | None = None
        if isinstance(part_outcomes, BaseException):
            error, part_outcomes = part_outcomes, []
            self._accepted[:0] = accepted
        if isinstance(receipt_outcomes, BaseException):
            error, receipt_outcomes = receipt_outcomes, []
            self._receipts[:0] = receipts
            receipts = []  # answered only once committed
        if isinstance(fin_outcomes, BaseException):
            error, fin_outcomes = fin_outcomes, []
            self._finals[:0] = finals
        if isinstance(req_outcome, BaseException):
            error = req_outcome
            self._requeues[:0] = requeues
        # Receipts are answered first, as soon as committed: the carrier's window of deliver_sm
        # frees up without waiting for the events of the whole flush to be built.
        for (_, link, seq, generation), ro in zip(receipts, receipt_outcomes, strict=True):
            if ro.match.value in ("ignored", "early") and ro.message_id is None:
                self.counters["receipts_unknown"] += 1
            with contextlib.suppress(smpp.LocalProtocolError):
                link.respond(seq, generation=generation)
        if publish_after is not None and not publish_after.done():
            await publish_after
        for o in part_outcomes:
            if o.submitted is not None:
                await self._publish_submitted(o.submitted)
            if o.final is not None:
                await self._publish_final(o.final)
        for (_, _, _, _), ro in zip(receipts, receipt_outcomes, strict=True):
            if ro.final is not None:
                await self._publish_final(ro.final)
        for f in fin_outcomes:
            if f is not None:
                await self._publish_final(f)
        if error is not None:
            raise error

    async def _publish_submitted(self, s: Submitted) -> None:
        extra: dict[str, Any] = {"carrier": s.carrier, "parts": s.parts,
                                 "message_ids": list(s.message_ids)}
        if s.resent:
            extra["resent"] = True
        if self._on_submitted is not None:
            self._on_submitted(s)
        # `at` is the change's time as stored (`updated_at`): a replay after a crash is identical.
        await self._publish(s.id, Status.SUBMITTED, at=float(s.at), **extra)

    async def _publish_final(self, f: Final) -> None:
        self._tried.pop(f.id, None)
        extra: dict[str, Any] = {}
        if f.reason:
            extra["reason"] = f.reason
        if f.detail:
            extra["detail"] = f.detail
        extra.update(outcome_fields(carrier=f.carrier, command_status=f.command_status,
                                    error=f.error, resent=f.resent))
        if self._on_final is not None:
            self._on_final(f)
        await self._publish(f.id, f.status, at=float(f.at), **extra)

    # -- expiry -----------------------------------------------------------------------------

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                # Shielded: once expire_due is sent to the store its finals are committed, so
                # their events must go out even if this loop is cancelled meanwhile.
                await asyncio.shield(self._expire_once())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("dispatch_expiry_failed", error=str(exc))

    async def _expire_once(self) -> None:
        now = self._now()
        with self._holding(now):
            for f in await self.store.expire_due(now):
                await self._publish_final(f)

    # -- status -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        mono = asyncio.get_running_loop().time()
        return {
            "held": {p.label: n for p, n in self._held.items()},
            "parked": len(self._parked),
            "carriers": {
                name: {
                    "lanes": {p.label: c.lanes.count(p) for p in Priority},
                    "throttle": c.throttle.snapshot(mono),
                    "submitted_parts": c.submitted_parts,
                }
                for name, c in self.carriers.items()
            },
            "counters": dict(self.counters),
            "responses_by_status": dict(self.responses_by_status),
            "receipts_by_state": dict(self.receipts_by_state),
        }
