"""Publisher of everything the gateway tells the outside world over MQTT (CONTRACT.md, MQTT).

- `{prefix}/events/{id}`: `{"id", "status", "at", ...}` for every state change of a message;
- `{prefix}/mo`: inbound messages; `{prefix}/rejected`: submissions without a usable id.

All at QoS 1, through ONE ordered queue drained by ONE sender, so events of a message leave in the
order they were handed over (accepted before submitted before delivered). The sender keeps a window
of publishes in flight (not one round trip per event; at most the broker's Receive Maximum) and
the client (`mqtt5.py`) writes them in order on one TCP connection, one write per loop iteration.

The queue is bounded: callers await room (back-pressure reaches the ingress, which then stops
acknowledging, and the dispatcher). While the broker is away, events wait in the queue; publishes
that were in flight when the connection dropped go back to the head of the queue, in order, and are
sent again after the reconnect. Delivery is therefore at least once: a consumer can see an event
twice (same id, status and `at`), never a later event before an earlier one of the same message
unless it is such a repeat.

The publisher has its own connection (`{client_id}-events`, clean session): publishing needs no
broker-side session, and it keeps the ingress's flow control (manual acks, Receive Maximum) apart
from the event stream.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final

import orjson

from gateway.model import Rejection, RejectReason, Status
from gateway.queue.mqtt import Backoff, Client, MqttError, MqttSettings, check_topic, connect
from gateway.queue.submission import ID_RE
from gateway.smpp.pdu import status_name

log = logging.getLogger(__name__)

_JSON_OPTIONS: Final = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
_RESERVED: Final = frozenset({"id", "status"})
_EVENT_KINDS: Final = {s: f"events/{s.value}" for s in Status}  # the stats' key per status


def utc_now() -> datetime:
    return datetime.now(UTC)


_now_cache: list[Any] = [-1, "", -1, ""]  # ms, its text; second, its text


def iso_utc_now() -> str:
    """`iso_utc(utc_now())`, cached per millisecond (several events a message share it)."""
    ms = int(time.time() * 1000)
    cache = _now_cache
    if ms != cache[0]:
        sec, msec = divmod(ms, 1000)
        if sec != cache[2]:
            cache[2], cache[3] = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        cache[0], cache[1] = ms, f"{cache[3]}.{msec:03d}Z"
    return cache[1]  # type: ignore[no-any-return]


def iso_epoch(at: float) -> str:
    """`iso_utc` of epoch seconds, through the store's integer microseconds (rounded) and then
    truncated to milliseconds: an event stamped with a change's time and its replay stamped
    with the stored `updated_at` read the same."""
    ms = round(at * 1_000_000) // 1000
    sec, msec = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{msec:03d}Z"


def iso_utc(at: datetime) -> str:
    """`2026-11-23T02:00:00.123Z`: ISO 8601 in UTC, milliseconds (naive means UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def outcome_fields(*, carrier: str | None, command_status: int | None, error: str | None,
                   resent: bool) -> dict[str, object]:
    """The fields every event about a send's outcome may carry (CONTRACT.md): `carrier`,
    `command_status` with `command_status_name`, the receipt's `error`, and `resent: true`."""
    fields: dict[str, object] = {}
    if carrier:
        fields["carrier"] = carrier
    if command_status is not None:
        fields["command_status"] = command_status
        fields["command_status_name"] = status_name(command_status)
    if error:
        fields["error"] = error
    if resent:
        fields["resent"] = True
    return fields


@dataclass(frozen=True, slots=True)
class Event:
    """One state change to publish on `{prefix}/events/{id}`: its status and extra fields.

    `fields` may hold str, int, float, bool, None, lists, dicts, enums and datetimes (serialised
    as ISO 8601 with their offset; UTC as `Z`). An `at` among them overrides the publish time.
    """

    status: Status
    fields: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def rejected(cls, rejection: Rejection) -> Event:
        return cls(
            Status.REJECTED,
            {**rejection.extra, "reason": rejection.reason, "detail": rejection.detail},
        )


@dataclass(slots=True)
class PublisherStats:
    """Counters for /metrics and /status."""

    published: collections.Counter[str] = field(default_factory=collections.Counter)
    """Confirmed by the broker, by kind: `events/<status>`, `mo`, `rejected`."""
    republished: int = 0  # sent again after a lost connection (duplicates a consumer may see)
    refused: int = 0  # the broker answered with an MQTT 5 error reason (e.g. not authorised)
    connects: int = 0
    queued: int = 0  # waiting to be sent (gauge)
    in_flight: int = 0  # sent, PUBACK outstanding (gauge)


@dataclass(slots=True)
class _Out:
    topic: str
    payload: bytes
    kind: str
    done: asyncio.Future[None] | None = None
    changed_at: float | None = None  # epoch of the state change an event reports


@dataclass(slots=True)
class _Connection:
    """Publishes in flight on one connection, by packet id, in send order (dicts keep it)."""

    in_flight: dict[int, _Out] = field(default_factory=dict)


class EventPublisher:
    """Ordered, bounded, reconnecting QoS 1 publisher of events, MO and unparseable rejections.

    Run `run()` as a task for the daemon's lifetime; the `publish_*` coroutines may be called
    before it connects (they queue). `await flush()` before shutting down.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str | None = None,
        max_queued: int = 50_000,
        window: int = 1_000,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        """
        max_queued: events waiting to be sent before `publish_*` callers wait for room
        (~200 bytes each: the default bounds the queue at ~10 MB).
        window: QoS 1 publishes in flight at once (PUBACK outstanding).
        clock: the time stamped as `at` when a caller gives none.
        """
        self.settings = settings
        self.client_id = client_id or f"{settings.client_id}-events"
        self.max_queued = max_queued
        self.window = window
        self.clock = clock
        self.stats = PublisherStats()
        self.connected = asyncio.Event()
        self._queue: collections.deque[_Out] = collections.deque()
        self._room = asyncio.Event()  # set while the queue has room
        self._room.set()
        self._wakeup = asyncio.Event()  # new items or a free window slot for the sender
        self._idle = asyncio.Event()  # nothing queued, nothing in flight
        self._idle.set()
        self._conn: _Connection | None = None
        self._events_prefix = settings.topic("events") + "/"
        self._mo_topic = settings.topic("mo")
        self._rejected_topic = settings.topic("rejected")

    # ---- the public publishing API -------------------------------------------------------------

    async def publish_event(self, id: str, status: Status | str, /, **fields: object) -> None:  # noqa: A002
        """Queue `{prefix}/events/{id}`: `{"id", "status", "at", **fields}`.

        Returns once queued (waits only for room); raises ValueError for an id that is not a valid
        submission id and TypeError for a field orjson cannot serialise (programming errors).
        """
        if ID_RE.fullmatch(id) is None:
            raise ValueError(f"not a valid message id: {id[:80]!r}")
        if status.__class__ is not Status:
            status = Status(status)
        if "id" in fields or "status" in fields:
            raise ValueError(f"fields may not override {sorted(_RESERVED & fields.keys())}")
        at = fields.pop("at", None)
        doc = {"id": id, "status": status.value, "at": self._at(at), **fields}
        changed = at if isinstance(at, float) else time.time()
        await self._put(_Out(self._events_prefix + id, _dumps(doc), _EVENT_KINDS[status],
                             changed_at=changed))

    async def publish(self, id: str, event: Event, /) -> None:  # noqa: A002
        """Queue an `Event` (what the admit callback and the dispatcher hand over)."""
        await self.publish_event(id, event.status, **event.fields)

    async def publish_mo(
        self, from_: str, to: str, text: str, carrier: str, /, **fields: object
    ) -> None:
        """Queue `{prefix}/mo`: `{"from", "to", "text", "carrier", "at", **fields}`."""
        at = fields.pop("at", None)
        doc: dict[str, object] = {
            "from": from_, "to": to, "text": text, "carrier": carrier, "at": self._at(at),
        }
        doc.update(fields)
        await self._put(_Out(self._mo_topic, _dumps(doc), "mo"))

    async def publish_rejected(
        self, reason: RejectReason | str, detail: str, raw: str, /, **fields: object
    ) -> asyncio.Future[None]:
        """Queue `{prefix}/rejected`: `{"reason", "detail", "raw", "at", **fields}`.

        Returns a future resolved once the broker has confirmed it: the ingress acknowledges an
        unparseable submission only then, since no store row records it ("never a silent drop").
        """
        at = fields.pop("at", None)
        doc = {"reason": str(reason), "detail": detail, "raw": raw, "at": self._at(at), **fields}
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._put(_Out(self._rejected_topic, _dumps(doc), "rejected", done))
        return done

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is confirmed by the broker; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def oldest_pending(self) -> float | None:
        """The earliest state change (epoch) whose event is queued or awaiting its PUBACK (a
        scan: called about once a second, the queue is bounded)."""
        items = list(self._queue)
        if self._conn is not None:
            items.extend(self._conn.in_flight.values())
        times = [i.changed_at for i in items if i.changed_at is not None]
        return min(times) if times else None

    @property
    def pending(self) -> int:
        """Queued plus in flight."""
        return len(self._queue) + (len(self._conn.in_flight) if self._conn else 0)

    # ---- the connection ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, send, reconnect with backoff after a loss; until cancelled."""
        backoff = Backoff(self.settings.reconnect_s, self.settings.reconnect_max_s)
        while True:
            conn = _Connection()
            try:
                client = await connect(self.settings, client_id=self.client_id, persistent=False,
                                       on_puback=partial(self._confirmed, conn))
                self._conn = conn
                self.stats.connects += 1
                self.connected.set()
                backoff.reset()
                log.info("events: connected to %s:%d", self.settings.host, self.settings.port)
                sender = asyncio.create_task(self._send(client, conn))
                try:
                    # Raises MqttError when the connection is lost.
                    await asyncio.shield(client.closed)
                finally:
                    sender.cancel()
                    self.connected.clear()
                    self._requeue(conn)
                    await client.disconnect()
            except MqttError as exc:
                delay = backoff.next()
                log.warning("events: MQTT connection lost or refused (%s); retry in %.2fs", exc, delay)
                await asyncio.sleep(delay)

    async def _send(self, client: Client, conn: _Connection) -> None:
        """Hand queued publishes to the client in order while the window has room."""
        while True:
            self._wakeup.clear()
            window = min(self.window, client.send_quota)
            while self._queue and len(conn.in_flight) < window:
                item = self._queue[0]
                try:
                    mid = client.publish(check_topic(item.topic), item.payload)
                except ValueError as exc:  # an invalid topic or size: never sendable
                    self._queue.popleft()
                    self.stats.refused += 1
                    log.error("events: dropped unpublishable message on %s: %s", item.topic, exc)
                    _resolve(item)
                    continue
                if mid is None:
                    return  # connection lost; run() requeues and reconnects
                self._queue.popleft()
                conn.in_flight[mid] = item
            self._gauges()
            await self._wakeup.wait()

    def _confirmed(self, conn: _Connection, mid: int, reason_code: int) -> None:
        """The client's PUBACK callback (runs in the event loop, from the socket reader)."""
        item = conn.in_flight.pop(mid, None)
        if item is None:
            return  # not ours (or a connection we already gave up on)
        if reason_code >= 0x80:
            self.stats.refused += 1
            log.error("events: broker refused a message on %s (reason 0x%02X)", item.topic, reason_code)
        else:
            self.stats.published[item.kind] += 1
        _resolve(item)
        self._wakeup.set()
        self._gauges()

    def _requeue(self, conn: _Connection) -> None:
        """Publishes unconfirmed at a connection loss go back to the head of the queue, in order."""
        if conn.in_flight:
            self.stats.republished += len(conn.in_flight)
            self._queue.extendleft(reversed(conn.in_flight.values()))
            conn.in_flight.clear()
        self._gauges()

    # ---- queue bookkeeping ---------------------------------------------------------------------

    async def _put(self, item: _Out) -> None:
        while len(self._queue) >= self.max_queued:
            self._room.clear()
            await self._room.wait()
        self._queue.append(item)
        self._idle.clear()
        self._wakeup.set()
        self.stats.queued = len(self._queue)

    def _gauges(self) -> None:
        queued = len(self._queue)
        in_flight = len(self._conn.in_flight) if self._conn else 0
        self.stats.queued = queued
        self.stats.in_flight = in_flight
        if queued < self.max_queued:
            self._room.set()
        if not queued and not in_flight:
            self._idle.set()

    def _at(self, at: object) -> str:
        if at is None:
            return iso_utc_now() if self.clock is utc_now else iso_utc(self.clock())
        if isinstance(at, float):
            return iso_epoch(at)
        if isinstance(at, datetime):
            return iso_utc(at)
        return str(at)


def _dumps(doc: Mapping[str, object]) -> bytes:
    return orjson.dumps(doc, option=_JSON_OPTIONS)


def _resolve(item: _Out) -> None:
    if item.done is not None and not item.done.done():
        item.done.set_result(None)
