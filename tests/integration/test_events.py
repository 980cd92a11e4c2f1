"""The event publisher against a real Mosquitto: payloads, order per message, broker restarts,
bounded queueing while the broker is away."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import aiomqtt
import orjson
import pytest

from gateway.model import RejectReason, Rejection, Status
from gateway.queue.events import Event, EventPublisher, iso_utc
from gateway.queue.mqtt import MqttSettings
from tests.fixtures.services import Broker, running_broker

# Run as root, Mosquitto drops to the `mosquitto` user, which cannot write its persistence file
# into pytest's 0700 tmp dirs, so nothing would survive a restart; `user root` keeps it as is.
BROKER_CONF = "user root\n"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with running_broker(tmp_path / "mosquitto", extra_conf=BROKER_CONF) as b:
        yield b


def settings(broker: Broker) -> MqttSettings:
    return MqttSettings(port=broker.port, client_id="smsgw-ev", reconnect_s=0.05, reconnect_max_s=0.3)


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.01)


class Subscriber:
    """A consumer of `sms/#` on a persistent 3.1.1 session that reconnects after a broker loss."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.received: list[tuple[str, dict[str, object]]] = []
        self.ready = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.broker.port, identifier="consumer", clean_session=False
                ) as client:
                    await client.subscribe("sms/#", qos=1)
                    self.ready.set()
                    async for msg in client.messages:
                        self.received.append((str(msg.topic), orjson.loads(msg.payload)))
            except aiomqtt.MqttError:
                self.ready.clear()
                await asyncio.sleep(0.05)

    def on(self, topic: str) -> list[dict[str, object]]:
        return [doc for t, doc in self.received if t == topic]


@contextlib.asynccontextmanager
async def running(broker: Broker, **kw: object) -> AsyncIterator[tuple[EventPublisher, Subscriber]]:
    publisher = EventPublisher(settings(broker), **kw)  # type: ignore[arg-type]
    sub = Subscriber(broker)
    tasks = [asyncio.create_task(sub.run())]
    await asyncio.wait_for(sub.ready.wait(), 10)
    tasks.append(asyncio.create_task(publisher.run()))
    try:
        yield publisher, sub
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def statuses_in_order(sub: Subscriber, msg_id: str) -> list[str]:
    """Statuses seen for one id, repeats of the same event (status and `at`) dropped.

    QoS 1 is at least once: an event in flight when the connection dropped is sent again.
    """
    seen: set[tuple[object, object]] = set()
    out: list[str] = []
    for doc in sub.on(f"sms/events/{msg_id}"):
        key = (doc["status"], doc["at"])
        if key not in seen:
            seen.add(key)
            out.append(str(doc["status"]))
    return out


async def test_payloads(broker: Broker) -> None:
    async with running(broker) as (publisher, sub):
        until_time = datetime(2026, 11, 23, 10, 0, tzinfo=timezone(timedelta(hours=8)))
        await publisher.publish_event("m-1", Status.ACCEPTED, parts=2)
        await publisher.publish_event("m-1", "deferred", until=until_time, reason="not_before")
        await publisher.publish(
            "m-2", Event.rejected(Rejection(RejectReason.INVALID_FIELD, "bad", {"field": "sender"}))
        )
        at = datetime(2026, 11, 23, 2, 0, 0, 123000, tzinfo=UTC)
        await publisher.publish_event(
            "m-3", Status.FAILED, at=at, reason="carrier_rejected",
            command_status=11, command_status_name="ESME_RINVDSTADR",
        )
        await publisher.publish_mo("+8613800138000", "10690000", "TD", "alpha")
        done = await publisher.publish_rejected(RejectReason.INVALID_JSON, "not valid JSON", "garbage")
        await asyncio.wait_for(done, 5)  # resolved once the broker confirmed it
        assert await publisher.flush(5)
        await until(lambda: len(sub.received) == 6)

    accepted, deferred = sub.on("sms/events/m-1")
    assert accepted == {"id": "m-1", "status": "accepted", "at": accepted["at"], "parts": 2}
    at = datetime.fromisoformat(str(accepted["at"]))
    assert str(accepted["at"]).endswith("Z") and abs(datetime.now(UTC) - at) < timedelta(seconds=10)
    assert deferred["until"] == "2026-11-23T10:00:00+08:00" and deferred["reason"] == "not_before"
    (rejected,) = sub.on("sms/events/m-2")
    assert (rejected["status"], rejected["reason"], rejected["detail"], rejected["field"]) == (
        "rejected", "invalid_field", "bad", "sender",
    )
    (failed,) = sub.on("sms/events/m-3")
    assert failed["at"] == "2026-11-23T02:00:00.123Z"
    assert (failed["command_status"], failed["command_status_name"]) == (11, "ESME_RINVDSTADR")
    (mo,) = sub.on("sms/mo")
    assert {k: mo[k] for k in ("from", "to", "text", "carrier")} == {
        "from": "+8613800138000", "to": "10690000", "text": "TD", "carrier": "alpha",
    }
    (rej,) = sub.on("sms/rejected")
    assert (rej["reason"], rej["detail"], rej["raw"]) == ("invalid_json", "not valid JSON", "garbage")
    assert publisher.stats.published["events/accepted"] == 1
    assert publisher.stats.published["mo"] == publisher.stats.published["rejected"] == 1


async def test_programming_errors_raise_at_the_call() -> None:
    publisher = EventPublisher(MqttSettings())
    with pytest.raises(ValueError, match="message id"):
        await publisher.publish_event("a/b", Status.ACCEPTED)
    with pytest.raises(ValueError, match="override"):
        await publisher.publish_event("a", Status.ACCEPTED, status="x")
    with pytest.raises(ValueError):
        await publisher.publish_event("a", "no-such-status")
    with pytest.raises(TypeError):
        await publisher.publish_event("a", Status.ACCEPTED, parts=object())
    assert publisher.pending == 0


def test_iso_utc() -> None:
    assert iso_utc(datetime(2026, 1, 1, 8, tzinfo=timezone(timedelta(hours=8)))) == "2026-01-01T00:00:00.000Z"
    assert iso_utc(datetime(2026, 1, 1)) == "2026-01-01T00:00:00.000Z"


async def test_thousand_messages_events_in_order(broker: Broker) -> None:
    n = 1_000
    lifecycle = [Status.ACCEPTED, Status.SUBMITTED, Status.DELIVERED]
    async with running(broker) as (publisher, sub):
        for status in lifecycle:  # interleaved across messages, as in the daemon
            for i in range(n):
                await publisher.publish_event(f"o{i}", status, parts=1)
        assert await publisher.flush(20)
        await until(lambda: len(sub.received) == 3 * n, timeout=20)
    for i in range(n):
        assert [d["status"] for d in sub.on(f"sms/events/o{i}")] == [s.value for s in lifecycle]
    assert publisher.stats.published["events/delivered"] == n


async def test_broker_restart_loses_no_event_and_keeps_the_order(broker: Broker) -> None:
    n = 1_000
    async with running(broker, window=200) as (publisher, sub):

        async def produce() -> None:
            for i in range(n):
                await publisher.publish_event(f"r{i}", Status.ACCEPTED, parts=1)
                await publisher.publish_event(f"r{i}", Status.SUBMITTED, carrier="alpha")
                if i % 50 == 0:
                    await asyncio.sleep(0.005)  # a flow over time, not one burst

        producer = asyncio.create_task(produce())
        await until(lambda: len(sub.received) > 200, what="flow started")
        await asyncio.to_thread(broker.restart)  # SIGTERM: the broker saves its sessions
        await producer
        assert await publisher.flush(20)
        await until(
            lambda: all(statuses_in_order(sub, f"r{i}") == ["accepted", "submitted"] for i in range(n)),
            timeout=20,
            what="every event after the restart",
        )
    assert publisher.stats.connects == 2
    assert all(statuses_in_order(sub, f"r{i}") == ["accepted", "submitted"] for i in range(n))


async def test_events_wait_while_the_broker_is_down(broker: Broker) -> None:
    async with running(broker) as (publisher, sub):
        await until(publisher.connected.is_set)
        await asyncio.to_thread(broker.stop)
        await until(lambda: not publisher.connected.is_set(), what="loss noticed")
        for i in range(10):
            await publisher.publish_event(f"w{i}", Status.ACCEPTED, parts=1)
        assert publisher.pending == 10
        await asyncio.to_thread(broker.start)
        assert await publisher.flush(10)
        await until(lambda: len(sub.on("sms/events/w9")) == 1)
    assert [doc["id"] for _, doc in sub.received] == [f"w{i}" for i in range(10)]


async def test_bounded_queue_makes_callers_wait(broker: Broker) -> None:
    await asyncio.to_thread(broker.stop)
    publisher = EventPublisher(settings(broker), max_queued=5)
    task = asyncio.create_task(publisher.run())
    try:
        for i in range(5):
            await asyncio.wait_for(publisher.publish_event(f"q{i}", Status.ACCEPTED), 1)
        sixth = asyncio.create_task(publisher.publish_event("q5", Status.ACCEPTED))
        await asyncio.sleep(0.2)
        assert not sixth.done()  # back-pressure: no room until the broker takes some
        assert publisher.stats.queued == 5
        await asyncio.to_thread(broker.start)
        await asyncio.wait_for(sixth, 10)
        assert await publisher.flush(10)
        assert publisher.stats.published["events/accepted"] == 6
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
