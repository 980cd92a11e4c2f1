"""MQTT ingress: `{prefix}/submit` → parse → admit (policies + store) → PUBACK → events.

The durability rule (CONTRACT.md): the PUBACK of a submission goes out only after its row is
committed. Our MQTT client (`mqtt5.py`) never acknowledges by itself: `client.ack` is called by
the acker below, so a message the gateway received but did not commit is still unacknowledged in
the broker's persistent session and comes back on the next connection with the same client id,
whatever killed us.

Flow, with every stage bounded (memory does not grow with the backlog):

    broker ──(at most `receive_maximum` unacknowledged messages: MQTT 5 Receive Maximum)──▶
    inbox: at most `max_buffered` messages / `max_buffered_bytes`, then the socket is not read
            (Mosquitto 2.0 overshoots the Receive Maximum once acks flow; see mqtt.py)
    reader: wait for one message, then take what is already queued (natural batching, up to
            `batch_max`); parse each (`parse_submission`); unparseable → `{prefix}/rejected`
    admit(batch) as a task; at most `max_batches_in_flight` batches between reader and acker
            (the reader stops pulling when they are all busy; the broker keeps the rest)
    acker: in batch order: await the outcomes (and the broker's confirmation of any
            `{prefix}/rejected`), PUBACK each message in arrival order, hand events to the publisher

A failing admit (database down) is retried with backoff for the same batch: nothing is acked
meanwhile, so the ingress stops reading and the broker holds the submissions. After a lost
connection, batches received on it are still admitted (their events published) but not acked:
the broker redelivers them on the resumed session and admit sees repeats of known ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.model import Rejection, Submission
from gateway.queue import mqtt
from gateway.queue.events import Event, EventPublisher
from gateway.queue.mqtt import Backoff, Client, Message, MqttError, MqttSettings
from gateway.queue.submission import Rejected, Unparseable, parse_submission

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IncomingSubmission:
    """One submission with a valid id, as handed to the admit callback.

    `parsed` is either a valid `Submission` or the `Rejected` refusal found while parsing
    (invalid_number, empty_text, too_long, invalid_field): admit records rejected ids too, so
    that a repeat of one is answered with its status, like any other id (CONTRACT.md).
    """

    id: str
    parsed: Submission | Rejected
    received_at: datetime

    @property
    def submission(self) -> Submission | None:
        return self.parsed if isinstance(self.parsed, Submission) else None

    @property
    def rejection(self) -> Rejection | None:
        return self.parsed.rejection if isinstance(self.parsed, Rejected) else None


@dataclass(frozen=True, slots=True)
class AdmitOutcome:
    """What to publish for one admitted item, in order, on `{prefix}/events/{id}`.

    E.g. `(Event(ACCEPTED, {"parts": 2}),)`, then `Event(DEFERRED, {...})` when held; a
    `Event.rejected(rejection)`; or, for a repeated id, its current status again.
    """

    events: Sequence[Event] = ()


AdmitCallback = Callable[[list[IncomingSubmission]], Awaitable[Sequence[AdmitOutcome]]]
"""`await admit(batch)`: run policies, commit, and return one outcome per item, in order.

Called with up to `batch_max` items; up to `max_batches_in_flight` calls may run concurrently
(the group-commit store merges them). Ids may repeat within and across batches. Raising means
"not committed": the same batch is offered again after a backoff, so admit must be idempotent.
"""


@dataclass(slots=True)
class IngressStats:
    """Counters for /metrics and /status."""

    received: int = 0
    admitted: int = 0  # items handed to admit whose call succeeded (valid or parse-rejected)
    parse_rejected: int = 0  # id known, refused while parsing (event `rejected`)
    unparseable: int = 0  # {prefix}/rejected
    acked: int = 0
    unacked_on_loss: int = 0  # received on a connection that dropped before their PUBACK
    batches: int = 0
    admit_failures: int = 0
    connects: int = 0
    in_flight_batches: int = 0  # gauge
    buffered_peak: int = 0  # most received messages held before a batch took them
    read_pauses: int = 0  # times the socket was not read because that buffer was full


@dataclass(slots=True)
class _Connection:
    client: Client
    inbox: mqtt.Inbox
    alive: bool = True


@dataclass(slots=True)
class _Batch:
    conn: _Connection
    messages: list[Message]  # every message, in arrival order: the PUBACK order
    items: list[IncomingSubmission]  # those with a valid id, for admit
    confirmations: list[asyncio.Future[None]] = field(default_factory=list)
    task: asyncio.Task[Sequence[AdmitOutcome]] | None = None


class Ingress:
    """Subscribes `{prefix}/submit` on a persistent MQTT 5 session and feeds `admit`.

    Run `run()` as a task; `subscribed` is set while the subscription is live (readiness).
    `await stop()` finishes the batches in flight (acked) and disconnects; cancelling `run()`
    instead drops them unacked (the broker redelivers them on the next start).
    """

    def __init__(
        self,
        settings: MqttSettings,
        admit: AdmitCallback,
        publisher: EventPublisher,
        *,
        batch_max: int = 500,
        batch_linger_s: float = 0.0,
        max_batches_in_flight: int = 4,
        receive_maximum: int = 1_000,
        max_buffered: int | None = None,
        max_buffered_bytes: int = 32 * 1024 * 1024,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        topic: str | None = None,
    ) -> None:
        """
        topic: the topic subscribed (default `{prefix}/submit`; the daemon runs a second ingress
            on `{prefix}/submit/otp`, with a client id of its own).
        batch_max: most items per admit call.
        batch_linger_s: after the first message of a batch, wait this long for more (0: take
            what is queued; batches still grow under load while admit calls are busy).
        max_batches_in_flight: admit calls outstanding at once; with `batch_max` it bounds the
            messages held between broker and acker.
        receive_maximum: MQTT 5 Receive Maximum: unacknowledged submissions the broker may have
            in flight to us (the broker should send no more until we ack).
        max_buffered, max_buffered_bytes: received messages (payload bytes) held before a batch
            takes them; past either, the socket is not read (TCP back-pressure), because brokers
            do not all keep to the Receive Maximum (see mqtt.py). Default: 2 x receive_maximum,
            so that a broker keeping to its window never causes a pause.
        """
        if batch_max < 1 or max_batches_in_flight < 1 or not 1 <= receive_maximum <= 65_535:
            raise ValueError("batch_max, max_batches_in_flight and receive_maximum must be >= 1")
        self.settings = settings
        self.topic = topic or settings.topic("submit")
        self.name = "ingress" if topic is None else "ingress-otp"  # in log lines
        self.admit = admit
        self.publisher = publisher
        self.batch_max = batch_max
        self.batch_linger_s = batch_linger_s
        self.max_batches_in_flight = max_batches_in_flight
        self.receive_maximum = receive_maximum
        self.max_buffered = max_buffered or 2 * receive_maximum
        self.max_buffered_bytes = max_buffered_bytes
        self.clock = clock
        self.stats = IngressStats()
        self.subscribed = asyncio.Event()
        self._slots = asyncio.Semaphore(max_batches_in_flight)
        self._pipeline: asyncio.Queue[_Batch] = asyncio.Queue()
        self._conn: _Connection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._running = False
        self._finished = asyncio.Event()
        self._drain_timeout_s = 10.0
        self._pauses_before = 0

    # ---- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, subscribe, read; reconnect with backoff on loss; until stopped or cancelled."""
        self._running = True
        self._finished.clear()
        acker = asyncio.create_task(self._acker(), name="ingress-acker")
        backoff = Backoff(self.settings.reconnect_s, self.settings.reconnect_max_s)
        try:
            while not self._stopping:
                conn: _Connection | None = None
                client: Client | None = None
                try:
                    inbox = mqtt.Inbox(self.max_buffered, self.max_buffered_bytes)
                    client = await mqtt.connect(
                        self.settings,
                        client_id=self.settings.client_id,
                        persistent=True,
                        receive_maximum=self.receive_maximum,
                        on_message=inbox.put,
                    )
                    inbox.attach(client)
                    try:
                        conn = self._conn = _Connection(client, inbox)
                        self._pauses_before = self.stats.read_pauses
                        self.stats.connects += 1
                        await self._subscribe(client)
                        inbox.arm()
                        backoff.reset()
                        await self._read_until_lost_or_stopped(conn, acker)
                        if self._stopping:
                            # Graceful stop: let the batches in flight be acked on this connection.
                            await self._drain(self._drain_timeout_s)
                        conn.alive = False
                    finally:
                        await client.disconnect()
                except MqttError as exc:
                    if conn is not None:
                        conn.alive = False
                    if self._stopping:
                        break
                    delay = backoff.next()
                    log.warning("%s: MQTT connection lost or refused (%s); retry in %.2fs", self.name, exc, delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop_requested.wait(), delay)
                finally:
                    self.subscribed.clear()
        finally:
            self._running = False
            self._finished.set()
            acker.cancel()
            while not self._pipeline.empty():  # cancelled mid-flight: drop unacked, broker keeps them
                batch = self._pipeline.get_nowait()
                if batch.task is not None:
                    batch.task.cancel()

    async def stop(self) -> None:
        """Stop reading, let the batches in flight finish and be acked, disconnect; returns when
        `run()` has returned. Bound it with `asyncio.wait_for` and cancel the `run()` task if the
        store never answers: what is left unacked is redelivered on the next start."""
        self._stopping = True
        self._stop_requested.set()
        if self._reader is not None:
            self._reader.cancel()
        if self._running:
            await self._finished.wait()

    async def _subscribe(self, client: Client) -> None:
        code = await client.subscribe(self.topic, qos=1, timeout=self.settings.timeout_s)
        if code >= 0x80 or code < 1:
            # e.g. 0x87 not authorised; QoS 0 granted would defeat durability. Retried with backoff.
            raise MqttError(f"subscription to {self.topic} refused (code 0x{code:02X})")
        self.subscribed.set()
        log.info("%s: subscribed %s as %s", self.name, self.topic, self.settings.client_id)

    async def _read_until_lost_or_stopped(self, conn: _Connection, acker: asyncio.Task[None]) -> None:
        """Returns on stop(); raises MqttError on a lost connection, or what killed the acker."""
        if self._stopping:
            return
        reader = self._reader = asyncio.create_task(self._read(conn), name="ingress-reader")
        try:
            done, _ = await asyncio.wait({reader, acker}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # run() itself cancelled
            reader.cancel()
            raise
        finally:
            self._reader = None
        if reader in done:
            if reader.cancelled():
                return  # stop()
            reader.result()  # raises the MqttError that ended it
            return
        reader.cancel()
        acker.result()  # the acker only ends by failing (admit broke its contract)
        raise RuntimeError("ingress acker ended")

    async def _drain(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._pipeline.join(), timeout)
        except TimeoutError:
            log.warning("%s: %d batches still in flight at stop", self.name, self._pipeline.qsize())

    # ---- reader ---------------------------------------------------------------------------------

    async def _read(self, conn: _Connection) -> None:
        """Form batches while slots are free. Raises MqttError when the connection is lost."""
        inbox = conn.inbox
        while True:
            await self._slots.acquire()
            handed_over = False
            try:
                batch_msgs = inbox.take(self.batch_max)
                if not batch_msgs:
                    await inbox.wait()  # MqttError on loss
                    batch_msgs = inbox.take(self.batch_max)
                if self.batch_linger_s > 0 and len(batch_msgs) < self.batch_max:
                    await asyncio.sleep(self.batch_linger_s)
                    batch_msgs += inbox.take(self.batch_max - len(batch_msgs))
                self.stats.buffered_peak = max(self.stats.buffered_peak, inbox.peak)
                self.stats.read_pauses = self._pauses_before + inbox.pauses
                batch = await self._make_batch(conn, batch_msgs)
                if batch.items:
                    batch.task = asyncio.create_task(self._admit_with_retry(batch.items))
                self.stats.batches += 1
                self.stats.in_flight_batches += 1
                self._pipeline.put_nowait(batch)
                handed_over = True
            finally:
                if not handed_over:
                    self._slots.release()

    async def _make_batch(self, conn: _Connection, msgs: list[Message]) -> _Batch:
        now = self.clock()
        batch = _Batch(conn, msgs, [])
        for msg in msgs:
            self.stats.received += 1
            parsed = parse_submission(msg.payload, now=now)
            if isinstance(parsed, Unparseable):
                self.stats.unparseable += 1
                done = await self.publisher.publish_rejected(parsed.reason, parsed.detail, parsed.raw)
                batch.confirmations.append(done)
                continue
            if isinstance(parsed, Rejected):
                self.stats.parse_rejected += 1
            batch.items.append(IncomingSubmission(parsed.id, parsed, now))
        return batch

    async def _admit_with_retry(self, items: list[IncomingSubmission]) -> Sequence[AdmitOutcome]:
        backoff = Backoff(0.05, 2.0)  # the database back: resume within 2 s
        while True:
            try:
                outcomes = await self.admit(items)
            except Exception:  # noqa: BLE001 - store trouble: keep the batch, retry, ack nothing
                self.stats.admit_failures += 1
                delay = backoff.next()
                log.exception("%s: admit failed for %d items; retry in %.2fs", self.name, len(items), delay)
                await asyncio.sleep(delay)
                continue
            if len(outcomes) != len(items):
                raise RuntimeError(
                    f"admit returned {len(outcomes)} outcomes for {len(items)} submissions"
                )
            return outcomes

    # ---- acker ----------------------------------------------------------------------------------

    async def _acker(self) -> None:
        """In batch order: outcomes committed → PUBACKs in arrival order → events."""
        while True:
            batch = await self._pipeline.get()
            try:
                outcomes: Sequence[AdmitOutcome] = await batch.task if batch.task else ()
                self.stats.admitted += len(batch.items)
                for done in batch.confirmations:
                    await done  # {prefix}/rejected confirmed: the only record of that message
                self._ack(batch)
                for item, outcome in zip(batch.items, outcomes, strict=True):
                    for event in outcome.events:
                        await self.publisher.publish(item.id, event)
            finally:
                self.stats.in_flight_batches -= 1
                self._slots.release()
                self._pipeline.task_done()

    def _ack(self, batch: _Batch) -> None:
        conn = batch.conn
        if conn is not self._conn or not conn.alive:
            # Received on a connection that is gone: the broker redelivers these on the resumed
            # session, and packet ids may have been reused since, so they must not be acked here.
            self.stats.unacked_on_loss += len(batch.messages)
            return
        client = conn.client
        for msg in batch.messages:
            if not msg.qos or client.ack(msg.packet_id):
                self.stats.acked += 1
            else:
                self.stats.unacked_on_loss += 1
