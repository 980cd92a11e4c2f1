"""MQTT clients that behave like real, careful clients of the gateway, for the broker and
database fault tests, and the exactly-once check those tests share.

- `DurablePublisher`: publishes submissions at QoS 1 on a persistent session (clean_session
  false) with paho's own network thread: while the broker is away it keeps what it could not send
  and what was not acknowledged, reconnects by itself and sends those again (DUP) on the resumed
  session, as a production client would.
- `EventRecorder`: subscribes `{prefix}/events/+` on a persistent session, reconnects by itself
  and so also receives what the broker queued for it while it was away. Identical copies of one
  event (the gateway republishes what was unconfirmed when its connection dropped: at least once)
  are counted apart, so `events` holds each distinct event once.
- `check_exactly_once`: every id has one row in the store, final, and exactly one `accepted`
  and one final event that is not a `repeat`.

Both clients run paho's loop in a thread of their own, so that they keep talking to the broker
however busy the test's event loop (with the gateway in it) is.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import paho.mqtt.client as paho
import sqlalchemy as sa

from gateway.smpp.simulator import SmscSimulator
from tests.faults.carrier import at_smsc
from tests.integration.conftest import FINAL


def _client(client_id: str, port: int) -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                    protocol=paho.MQTTv311)
    c.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
    return c


def _start(c: paho.Client, port: int) -> None:
    c.connect_async("127.0.0.1", port, keepalive=5)
    c.loop_start()


class DurablePublisher:
    """QoS 1 publisher of submissions on a persistent session (see the module docstring)."""

    def __init__(self, port: int, client_id: str, prefix: str = "sms", inflight: int = 200) -> None:
        self.topic = f"{prefix}/submit"
        self._port = port
        self.connects = 0
        self.resumed = 0  # connects that found the session of an earlier one (session present)
        self._sent: list[tuple[str, paho.MQTTMessageInfo]] = []
        self.sent_at: dict[str, float] = {}  # id -> when it was first handed to the client
        self.sent_to: dict[str, str] = {}  # id -> its destination
        self._client = _client(client_id, port)
        self._client.max_inflight_messages_set(inflight)
        self._client.max_queued_messages_set(0)  # unbounded: nothing is dropped while away
        self._client.on_connect = self._on_connect
        self._connected = threading.Event()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:
        if not rc.is_failure:
            self.connects += 1
            self.resumed += bool(flags.session_present)
            self._connected.set()

    def __enter__(self) -> DurablePublisher:
        _start(self._client, self._port)
        if not self._connected.wait(10):
            raise AssertionError("the publisher could not connect")
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return bool(self._client.is_connected())

    def publish(self, docs: Iterable[dict[str, Any]]) -> None:
        """Hand submissions to the client (sent now or, while away, after the reconnect)."""
        for doc in docs:
            info = self._client.publish(self.topic, orjson.dumps(doc), qos=1)
            self._sent.append((doc["id"], info))
            self.sent_at.setdefault(doc["id"], time.time())
            self.sent_to[doc["id"]] = doc["to"]

    async def flood(self, docs: Sequence[dict[str, Any]], rate: float, burst: int = 20) -> None:
        """Publish `docs` at about `rate` a second, `burst` at a time."""
        start = time.monotonic()
        for i in range(0, len(docs), burst):
            self.publish(docs[i:i + burst])
            delay = start + (i + burst) / rate - time.monotonic()
            await asyncio.sleep(max(0.0, delay))

    async def flood_until(self, stop: asyncio.Event, rate: float, tag: str,
                          burst: int = 20) -> list[str]:
        """Publish `{tag}{i}` at about `rate` a second until `stop` is set; returns their ids."""
        ids: list[str] = []
        start = time.monotonic()
        while not stop.is_set():
            docs = [{"id": f"{tag}{i}", "to": f"+86139{i:08d}", "text": f"{tag} message {i}"}
                    for i in range(len(ids), len(ids) + burst)]
            self.publish(docs)
            ids += [d["id"] for d in docs]
            delay = start + len(ids) / rate - time.monotonic()
            await asyncio.sleep(max(0.0, delay))
        return ids

    def acked(self) -> set[str]:
        """Ids whose PUBACK the broker has sent."""
        return {i for i, info in self._sent if _puback_received(info)}

    def unacked(self) -> set[str]:
        return {i for i, info in self._sent if not _puback_received(info)}


def _puback_received(info: paho.MQTTMessageInfo) -> bool:
    # `is_published()` raises for a message handed over while disconnected (its rc stays
    # NO_CONN) even once paho has sent it after the reconnect and got its PUBACK.
    return bool(info._published)  # noqa: SLF001


class EventRecorder:
    """Every distinct event per id, received on a persistent session (see the module docstring)."""

    def __init__(self, port: int, client_id: str, prefix: str = "sms") -> None:
        self.prefix = f"{prefix}/events/"
        self._port = port
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.copies = 0  # identical copies of an event already received
        self.connects = 0
        self.resumed = 0  # connects that found the session of an earlier one (session present)
        self._seen: set[bytes] = set()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = _client(client_id, port)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_message = self._on_message

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:
        if not rc.is_failure:
            self.connects += 1
            self.resumed += bool(flags.session_present)
            client.subscribe(self.prefix + "+", qos=1)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            if msg.payload in self._seen:
                self.copies += 1
                return
            self._seen.add(msg.payload)
            doc = orjson.loads(msg.payload)
            self.events[msg.topic[len(self.prefix):]].append(doc)

    def __enter__(self) -> EventRecorder:
        _start(self._client, self._port)
        if not self._subscribed.wait(10):
            raise AssertionError("the event recorder could not subscribe")
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return bool(self._client.is_connected())

    def final_ids(self, ids: Iterable[str]) -> set[str]:
        with self._lock:
            return {i for i in ids
                    if any(e["status"] in FINAL for e in self.events.get(i, ()))}

    def firsts(self, id: str) -> list[dict[str, Any]]:  # noqa: A002
        """The events of `id` that are state changes (not repeats answering a redelivery)."""
        with self._lock:
            return [e for e in self.events.get(id, []) if not e.get("repeat")]

    def repeats(self) -> int:
        with self._lock:
            return sum(1 for evs in self.events.values() for e in evs if e.get("repeat"))

    def published_between(self, t0: float, t1: float) -> int:
        """Events stamped (`at`, by the gateway when it handed them over) within [t0, t1]."""
        lo, hi = _iso(t0), _iso(t1)
        with self._lock:
            return sum(1 for evs in self.events.values() for e in evs if lo <= e["at"] <= hi)


def _iso(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


async def wait_finals(rec: EventRecorder, ids: Sequence[str], timeout: float,
                      store_url: str | None = None) -> None:
    """Until every id has a final event (on failure: how many are missing, and what the store
    says of a few of them)."""
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending:
        pending -= rec.final_ids(pending)
        if not pending:
            return
        if time.monotonic() > deadline:
            sample = sorted(pending)[:5]
            rows = await asyncio.to_thread(store_rows, store_url, sample) if store_url else {}
            raise AssertionError(
                f"{len(pending)} of {len(ids)} ids without a final event after {timeout}s; e.g. "
                + ", ".join(f"{i}: events {[e['status'] for e in rec.events.get(i, [])]} "
                            f"store {rows.get(i)}" for i in sample))
        await asyncio.sleep(0.1)


def store_rows(url: str, ids: Iterable[str] | None = None) -> dict[str, tuple[str, int]]:
    """id -> (status, row count) read straight from the store's database."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, status FROM messages")).all()
    finally:
        engine.dispose()
    wanted = None if ids is None else set(ids)
    counts = Counter(r[0] for r in rows)
    return {r[0]: (r[1], counts[r[0]]) for r in rows if wanted is None or r[0] in wanted}


def smsc_extra_copies(sims: Iterable[SmscSimulator], sent_to: Counter[str]) -> tuple[int, int]:
    """(copies beyond one per message, messages never accepted) at the SMSCs, for single-part
    messages; `sent_to`: messages per destination (E.164 with +)."""
    smsc = at_smsc(sims)
    extra = missing = 0
    for dest, n in sent_to.items():
        got = smsc.parts[(dest.lstrip("+"), 1)]
        extra += max(0, got - n)
        missing += max(0, n - got)
    return extra, missing


@dataclass
class ExactlyOnce:
    ids: int
    repeats: int  # `repeat: true` events (answers to redelivered submissions)
    copies: int  # identical copies of an event (republished after a lost connection)
    smsc_extra: int = 0  # messages the SMSC accepted more than once

    def row(self) -> str:
        return (f"ids={self.ids} lost=0 repeat_events={self.repeats} "
                f"identical_copies={self.copies} smsc_duplicates={self.smsc_extra}")


def check_exactly_once(rec: EventRecorder, ids: Sequence[str], store_url: str,
                       final: str = "delivered") -> ExactlyOnce:
    """Each id: one row in the store, `final`; exactly one `accepted` and one final event that is
    not a repeat (and the final one is `final`)."""
    rows = store_rows(store_url)
    missing = [i for i in ids if i not in rows]
    assert not missing, f"{len(missing)} ids not in the store, e.g. {missing[:5]}"
    assert all(rows[i] == (final, 1) for i in ids), [
        (i, rows[i]) for i in ids if rows[i] != (final, 1)][:5]
    assert len(rows) == len(ids), f"{len(rows) - len(ids)} unexpected rows"
    for i in ids:
        evs = rec.firsts(i)
        statuses = [e["status"] for e in evs]
        assert statuses.count("accepted") == 1, (i, rec.events.get(i))
        finals = [s for s in statuses if s in FINAL]
        assert finals == [final], (i, rec.events.get(i))
    return ExactlyOnce(len(ids), rec.repeats(), rec.copies)
