"""The MQTT ingress against a real Mosquitto: persistent session, PUBACK after commit, batching,
back-pressure, hostile payloads, broker restarts.

The admit callback here is a stand-in for the daemon's (policies + store): it records what it is
given and answers `accepted` (or the parse rejection), optionally blocking or failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import aiomqtt
import orjson
import pytest

from gateway.model import RejectReason, Status, Submission
from gateway.queue.events import Event, EventPublisher
from gateway.queue.ingress import AdmitOutcome, IncomingSubmission, Ingress
from gateway.queue.mqtt import MqttSettings
from gateway.queue.submission import RAW_CHARS, Rejected
from tests.fixtures.services import Broker, running_broker

REPO = Path(__file__).resolve().parents[2]
TO = "+8613800138000"


# Run as root, Mosquitto drops to the `mosquitto` user, which cannot write its persistence file
# into pytest's 0700 tmp dirs ("Error: Permission denied" in mosquitto.log), so sessions would not
# survive a restart. `user root` keeps it as it is (and is ignored when not started as root).
BROKER_CONF = "user root\n"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with running_broker(tmp_path / "mosquitto", extra_conf=BROKER_CONF) as b:
        yield b


def mqtt_settings(broker: Broker, client_id: str = "smsgw-test") -> MqttSettings:
    return MqttSettings(
        port=broker.port, client_id=client_id, reconnect_s=0.05, reconnect_max_s=0.5
    )


def submission(msg_id: str, **fields: object) -> bytes:
    return orjson.dumps({"id": msg_id, "to": TO, "text": "hello", **fields})


class Admit:
    """A recording admit callback; `gate` (when set) holds every call until it is opened."""

    def __init__(self, *, failures: int = 0, delay_s: float = 0.0) -> None:
        self.items: list[IncomingSubmission] = []
        self.calls = 0
        self.failures = failures
        self.delay_s = delay_s
        self.gate: asyncio.Event | None = None

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]

    async def __call__(self, batch: list[IncomingSubmission]) -> Sequence[AdmitOutcome]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("database is locked")
        self.items.extend(batch)
        return [
            AdmitOutcome((Event(Status.ACCEPTED, {"parts": 1}),))
            if isinstance(item.parsed, Submission)
            else AdmitOutcome((Event.rejected(item.parsed.rejection),))
            for item in batch
        ]


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def gateway(
    broker: Broker, admit: Admit, *, client_id: str = "smsgw-test", **ingress_kw: object
) -> AsyncIterator[Ingress]:
    """An ingress and its publisher, running; cancelled (no graceful stop) on exit."""
    settings = mqtt_settings(broker, client_id)
    publisher = EventPublisher(settings)
    ingress = Ingress(settings, admit, publisher, **ingress_kw)  # type: ignore[arg-type]
    tasks = [asyncio.create_task(publisher.run()), asyncio.create_task(ingress.run())]
    try:
        await asyncio.wait_for(ingress.subscribed.wait(), 10)
        yield ingress
        await publisher.flush(5)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Subscriber:
    """Collects everything under `sms/#` (topic, decoded JSON) on a clean session."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.received: list[tuple[str, dict[str, object]]] = []
        self._ready = asyncio.Event()

    async def run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.broker.port) as client:
            await client.subscribe("sms/events/#", qos=1)
            await client.subscribe("sms/rejected", qos=1)
            self._ready.set()
            async for msg in client.messages:
                self.received.append((str(msg.topic), orjson.loads(msg.payload)))

    def on(self, topic: str) -> list[dict[str, object]]:
        return [doc for t, doc in self.received if t == topic]


@contextlib.asynccontextmanager
async def subscriber(broker: Broker) -> AsyncIterator[Subscriber]:
    sub = Subscriber(broker)
    task = asyncio.create_task(sub.run())
    await asyncio.wait_for(sub._ready.wait(), 10)
    try:
        yield sub
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def publish(broker: Broker, payloads: Sequence[bytes], topic: str = "sms/submit") -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, max_inflight_messages=0) as client:
        client.pending_calls_threshold = 1_000_000
        for i in range(0, len(payloads), 500):
            await asyncio.gather(*(client.publish(topic, p, qos=1) for p in payloads[i : i + 500]))


async def create_session(broker: Broker, client_id: str = "smsgw-test") -> None:
    """Connect once so the broker holds a persistent session with the subscription."""
    async with gateway(broker, Admit(), client_id=client_id):
        pass


# ---- the basic flow ------------------------------------------------------------------------------


async def test_submissions_are_admitted_acked_and_announced(broker: Broker) -> None:
    admit = Admit()
    async with subscriber(broker) as sub, gateway(broker, admit) as ingress:
        await publish(
            broker,
            [submission("a1"), submission("a2", priority="otp"), submission("bad", to="+86abc")],
        )
        await until(lambda: len(sub.received) == 3, what="3 events")
        assert ingress.stats.acked == 3
    assert sorted(admit.ids) == ["a1", "a2", "bad"]
    (accepted,) = sub.on("sms/events/a1")
    assert accepted["status"] == "accepted" and accepted["parts"] == 1
    assert str(accepted["at"]).endswith("Z")
    (rejected,) = sub.on("sms/events/bad")
    assert rejected["status"] == "rejected"
    assert rejected["reason"] == "invalid_number" and "letters" in str(rejected["detail"])
    bad = next(i for i in admit.items if i.id == "bad")
    assert isinstance(bad.parsed, Rejected) and bad.submission is None
    a2 = next(i for i in admit.items if i.id == "a2")
    assert a2.submission is not None and a2.submission.to == TO


async def test_events_of_one_outcome_are_published_in_order(broker: Broker) -> None:
    async def admit(batch: list[IncomingSubmission]) -> list[AdmitOutcome]:
        return [
            AdmitOutcome(
                (
                    Event(Status.ACCEPTED, {"parts": 1}),
                    Event(Status.DEFERRED, {"until": "2026-11-23T10:00:00+08:00", "reason": "not_before"}),
                )
            )
            for _ in batch
        ]

    async with subscriber(broker) as sub, gateway(broker, admit):  # type: ignore[arg-type]
        await publish(broker, [submission(f"d{i}") for i in range(50)])
        await until(lambda: len(sub.received) == 100)
    for i in range(50):
        assert [e["status"] for e in sub.on(f"sms/events/d{i}")] == ["accepted", "deferred"]


# ---- durability: persistent session and manual PUBACK --------------------------------------------


async def test_messages_published_while_down_arrive_on_reconnect(broker: Broker) -> None:
    await create_session(broker)
    await publish(broker, [submission(f"p{i}") for i in range(200)])
    admit = Admit()
    async with gateway(broker, admit) as ingress:
        await until(lambda: len(admit.items) == 200, what="200 admitted")
        await until(lambda: ingress.stats.acked == 200)
    assert sorted(admit.ids) == sorted(f"p{i}" for i in range(200))


async def test_session_survives_a_broker_restart_while_down(broker: Broker) -> None:
    await create_session(broker)
    await publish(broker, [submission(f"r{i}") for i in range(20)])
    broker.restart()  # SIGTERM: Mosquitto saves sessions and queued messages
    admit = Admit()
    async with gateway(broker, admit):
        await until(lambda: len(admit.items) == 20)


async def test_message_received_but_not_acked_is_redelivered(broker: Broker) -> None:
    """The gateway 'dies' between receive and commit: admit never returns, the client closes
    without a PUBACK. The next session with the same client id gets the message again."""
    stuck = Admit()
    stuck.gate = asyncio.Event()  # never opened
    async with gateway(broker, stuck) as first:
        await publish(broker, [submission("k1")])
        await until(lambda: stuck.calls == 1, what="admit called")
        assert first.stats.acked == 0
    # The connection is closed (DISCONNECT, no PUBACK for k1).
    admit = Admit()
    async with gateway(broker, admit) as second:
        await until(lambda: admit.ids == ["k1"], what="redelivery of k1")
        await until(lambda: second.stats.acked == 1)
    # Acked now: a third session gets nothing.
    admit3 = Admit()
    async with gateway(broker, admit3):
        await asyncio.sleep(0.3)
    assert admit3.items == []


_KILLED_GATEWAY = """
import asyncio, sys
sys.path.insert(0, {repo!r})
from gateway.queue.events import EventPublisher
from gateway.queue.ingress import Ingress
from gateway.queue.mqtt import MqttSettings

async def main():
    settings = MqttSettings(port={port}, client_id="smsgw-test")
    publisher = EventPublisher(settings)
    async def admit(batch):
        print("RECEIVED", *[item.id for item in batch], flush=True)
        await asyncio.Event().wait()   # the commit never happens
    ingress = Ingress(settings, admit, publisher)
    tasks = [asyncio.create_task(publisher.run()), asyncio.create_task(ingress.run())]
    await ingress.subscribed.wait()
    print("SUBSCRIBED", flush=True)
    await asyncio.gather(*tasks)

asyncio.run(main())
"""


async def test_sigkill_between_receive_and_commit_redelivers(broker: Broker) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLED_GATEWAY.format(repo=str(REPO), port=broker.port),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.strip() == b"SUBSCRIBED", line
        await publish(broker, [submission("killed-1"), submission("killed-2")])
        received: set[str] = set()
        while received != {"killed-1", "killed-2"}:
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert line.startswith(b"RECEIVED"), line
            received.update(line.decode().split()[1:])
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    admit = Admit()
    async with gateway(broker, admit) as ingress:
        await until(lambda: sorted(admit.ids) == ["killed-1", "killed-2"], what="redelivery")
        await until(lambda: ingress.stats.acked == 2)


async def test_graceful_stop_acks_the_batches_in_flight(broker: Broker) -> None:
    admit = Admit(delay_s=0.2)
    settings = mqtt_settings(broker)
    publisher = EventPublisher(settings)
    ingress = Ingress(settings, admit, publisher)
    pub_task = asyncio.create_task(publisher.run())
    run_task = asyncio.create_task(ingress.run())
    await ingress.subscribed.wait()
    await publish(broker, [submission(f"g{i}") for i in range(10)])
    await until(lambda: admit.calls >= 1)
    await asyncio.wait_for(ingress.stop(), 5)
    await asyncio.wait_for(run_task, 2)
    assert len(admit.items) == ingress.stats.acked == ingress.stats.received
    pub_task.cancel()
    await asyncio.gather(pub_task, return_exceptions=True)
    # What the first run took was acked; what it had not taken yet (still in aiomqtt's queue at
    # stop) was not, and comes back: every id exactly once over the two runs.
    first = set(admit.ids)
    later = Admit()
    async with gateway(broker, later):
        await publish(broker, [submission("after")])
        await until(lambda: "after" in later.ids)
        await asyncio.sleep(0.2)
    assert first.isdisjoint(later.ids)
    assert sorted(first | set(later.ids)) == sorted([f"g{i}" for i in range(10)] + ["after"])


# ---- store trouble and back-pressure -------------------------------------------------------------


async def test_failing_admit_is_retried_and_nothing_is_acked_meanwhile(broker: Broker) -> None:
    admit = Admit(failures=2)
    async with gateway(broker, admit) as ingress:
        await publish(broker, [submission("f1")])
        await until(lambda: admit.ids == ["f1"], what="admitted after retries")
        await until(lambda: ingress.stats.acked == 1)
        assert ingress.stats.admit_failures == 2


async def test_slow_admit_stops_reading_and_the_broker_keeps_the_rest(broker: Broker) -> None:
    admit = Admit()
    admit.gate = asyncio.Event()
    async with gateway(
        broker, admit, receive_maximum=10, batch_max=4, max_batches_in_flight=2
    ) as ingress:
        await publish(broker, [submission(f"b{i}") for i in range(100)])
        await until(lambda: admit.calls == 2, what="two batches in flight")
        await asyncio.sleep(0.3)
        # Two batches of at most 4 with admit, and no more than the broker's window of 10
        # unacknowledged messages reached the gateway at all.
        assert admit.calls == 2
        assert ingress.stats.received <= 10
        assert ingress.stats.in_flight_batches == 2
        admit.gate.set()
        await until(lambda: len(admit.items) == 100, what="all 100 after release")
        await until(lambda: ingress.stats.acked == 100)
    assert sorted(admit.ids) == sorted(f"b{i}" for i in range(100))


async def test_buffer_stays_bounded_when_the_broker_overshoots_its_window(broker: Broker) -> None:
    """Mosquitto 2.0.x releases up to a whole window per PUBACK, so a steadily acking client
    can be sent its whole backlog; the ingress stops reading its socket instead of buffering it."""
    n = 1_500
    await create_session(broker)
    await publish(broker, [submission(f"o{i}") for i in range(n)])
    admit = Admit(delay_s=0.002)
    async with gateway(
        broker, admit, receive_maximum=20, max_buffered=50, batch_max=10, max_batches_in_flight=1
    ) as ingress:
        await until(lambda: len(admit.items) == n, timeout=30, what="the whole backlog")
        await until(lambda: ingress.stats.acked == n)
    assert sorted(admit.ids) == sorted(f"o{i}" for i in range(n))
    # A pause takes effect after the message that crossed the mark (and any TLS-buffered ones).
    assert ingress.stats.buffered_peak <= 51
    print(f"\nbuffer peak {ingress.stats.buffered_peak}, {ingress.stats.read_pauses} read pauses")


# ---- broker faults -------------------------------------------------------------------------------


async def test_broker_restart_while_running(broker: Broker) -> None:
    admit = Admit()
    async with gateway(broker, admit) as ingress:
        await publish(broker, [submission(f"before{i}") for i in range(20)])
        await until(lambda: len(admit.items) == 20)
        # A batch admitted (committed) but not yet acked when the broker goes away.
        admit.gate = asyncio.Event()
        calls = admit.calls
        await publish(broker, [submission("in-flight")])
        await until(lambda: admit.calls == calls + 1, what="admit of in-flight")
        await asyncio.to_thread(broker.restart)  # the event loop keeps running meanwhile
        await until(lambda: ingress.subscribed.is_set() and ingress.stats.connects == 2, what="reconnect")
        # The resumed session redelivers the unacked message: a second admit call for it.
        await until(lambda: admit.calls == calls + 2, what="redelivery of in-flight")
        admit.gate.set()
        await until(lambda: admit.ids.count("in-flight") == 2)
        # The first copy belonged to the lost connection: not acked there (its packet id may be
        # reused on the new one); the redelivered copy is acked on the new connection.
        await until(lambda: ingress.stats.in_flight_batches == 0)
        assert ingress.stats.unacked_on_loss == 1
        await publish(broker, [submission(f"after{i}") for i in range(20)])
        await until(lambda: {f"after{i}" for i in range(20)} <= set(admit.ids), what="after restart")
    assert ingress.stats.acked == 41


# ---- hostile input -------------------------------------------------------------------------------

GARBAGE: list[tuple[str, bytes, RejectReason]] = [
    ("not json", b"hello world", RejectReason.INVALID_JSON),
    ("invalid utf-8", b'{"id": "x\xff\xfe", "to": "1"}', RejectReason.INVALID_JSON),
    # Not parsed; an id as first key would get a `too_long` event instead (see "long" below).
    ("one megabyte", b'{"text": "' + b"x" * (1 << 20) + b'", "id": "big"}', RejectReason.INVALID_JSON),
    ("nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000, RejectReason.INVALID_JSON),
    ("nested 20,000 deep (under the size cap)", b'{"a":' * 20_000 + b"1" + b"}" * 20_000, RejectReason.INVALID_JSON),
    ("an array", b"[1, 2, 3]", RejectReason.INVALID_JSON),
    ("id missing", orjson.dumps({"to": TO, "text": "hi"}), RejectReason.INVALID_ID),
    ("id too long", submission("i" * 65), RejectReason.INVALID_ID),
    ("id with bad characters", submission("a/b#c"), RejectReason.INVALID_ID),
    ("id not a string", orjson.dumps({"id": 7, "to": TO, "text": "hi"}), RejectReason.INVALID_ID),
]


async def test_garbage_gets_a_clear_rejection_and_the_ingress_survives(broker: Broker) -> None:
    admit = Admit()
    async with subscriber(broker) as sub, gateway(broker, admit) as ingress:
        for _, payload, _ in GARBAGE:
            await publish(broker, [payload])
        await until(lambda: len(sub.on("sms/rejected")) == len(GARBAGE), what="all rejections")
        await until(lambda: ingress.stats.acked == len(GARBAGE))
        # With an id, parse problems are events on that id (recorded by admit like any id).
        await publish(
            broker,
            [
                submission("letters", to="+86138OO138OOO"),
                submission("long", text="长" * 10_000),
                submission("fine"),
            ],
        )
        await until(lambda: len(sub.received) == len(GARBAGE) + 3)
    rejections = sub.on("sms/rejected")
    for (name, payload, reason), doc in zip(GARBAGE, rejections, strict=True):
        assert doc["reason"] == reason.value, name
        assert doc["detail"], name
        assert doc["raw"] == payload[: RAW_CHARS * 4].decode("utf-8", "replace")[:RAW_CHARS], name
        assert str(doc["at"]).endswith("Z")
    assert sub.on("sms/events/letters")[0]["reason"] == "invalid_number"
    assert sub.on("sms/events/long")[0]["reason"] == "too_long"
    assert sub.on("sms/events/fine")[0]["status"] == "accepted"
    assert ingress.stats.unparseable == len(GARBAGE)


# ---- throughput ----------------------------------------------------------------------------------


@pytest.mark.parametrize("receive_maximum", [20, 1000])
async def test_ingress_throughput(broker: Broker, receive_maximum: int) -> None:
    """A backlog drained through a trivial admit; prints msgs/s (pytest -s to see it).

    receive_maximum 20 is what a 3.1.1 client would get from Mosquitto's default
    max_inflight_messages; with MQTT 5 the gateway chooses its own window.
    """
    n = 3_000
    await create_session(broker)
    await publish(broker, [submission(f"t{i}") for i in range(n)])
    admit = Admit()
    start = time.perf_counter()
    async with gateway(broker, admit, receive_maximum=receive_maximum) as ingress:
        await until(lambda: len(admit.items) == n, timeout=30)
        elapsed = time.perf_counter() - start
        await until(lambda: ingress.stats.acked == n)
    rate = n / elapsed
    print(f"\ningress throughput, receive_maximum={receive_maximum}: {rate:,.0f} msg/s "
          f"({n} in {elapsed:.2f}s, {ingress.stats.batches} batches)")
    assert rate > 300
