"""Broker faults: Mosquitto SIGKILLed and restarted during a flood.

A real Mosquitto of the test's own (persistence on, autosave every second), the gateway in this
process on SQLite, one SMSC simulator slower than the flood (so a backlog keeps sending while
the broker is away). Submissions come from `DurablePublisher`, a persistent QoS 1 client that
sends again what the broker had not acknowledged; events go to `EventRecorder`, a persistent
subscriber (tests/faults/durable.py).

What the gateway promises (CONTRACT.md, gateway/queue/ingress.py, gateway/queue/events.py), and
what is checked:
- the ingress resumes its persistent session; a submission it received is stored once and ends
  `delivered`, whatever connection it came on; what it had not acknowledged at the kill comes
  back from the broker and is answered as a repeat (`repeat: true`), never stored or sent twice;
- every event it produces, during the outage too, waits in its queue until the broker confirms
  it (at least once: one unconfirmed at the loss is sent again, an identical copy).

Mosquitto SIGKILLed loses what it had acknowledged but not yet saved (autosave, once a second)
or passed on: submissions it PUBACKed to the publisher, events it PUBACKed to the gateway. That
is the broker's durability, not the gateway's, so the test tells them apart: a submission the
gateway never received, or an event the broker confirmed to the gateway that never reached the
subscriber, counts as lost by the broker only if it dates from the last `BROKER_GAP_S` before a
kill; any other gap fails the test.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy as sa

from gateway.daemon import Gateway
from gateway.queue.ingress import AdmitOutcome, IncomingSubmission, Ingress
from tests.faults.conftest import scaled
from tests.faults.durable import DurablePublisher, EventRecorder, smsc_extra_copies
from tests.integration.conftest import GatewaySetup, until

pytestmark = pytest.mark.faults

RATE = 400  # submissions a second: below what the gateway takes on a loaded 2-core machine
TPS = 300  # the carrier: slower than the flood
EDGE = 50  # submissions published just before each SIGKILL
DOWN_S = 1.5  # how long the broker stays dead
# Mosquitto's `autosave_interval 1` saves when a whole second has passed since the last save, i.e.
# every 2 s: what it acknowledged in the last ~2 s before a SIGKILL may be gone.
BROKER_SAVE_S = 2.5  # time given to the broker to save the sessions before the next kill
BROKER_GAP_S = 3.0
STEPS = ("accepted", "submitted", "delivered")


def docs_for(tag: str, n: int) -> list[dict[str, Any]]:
    return [{"id": f"{tag}{i}", "to": f"+86139{i:08d}", "text": f"{tag} message {i}"}
            for i in range(n)]


class AdmitTap:
    """Records every id the ingress hands to admission: what the gateway received."""

    def __init__(self, ingress: Ingress) -> None:
        self.ids: set[str] = set()
        self._admit = ingress.admit
        ingress.admit = self

    async def __call__(self, batch: list[IncomingSubmission]) -> Sequence[AdmitOutcome]:
        self.ids.update(item.id for item in batch)
        return await self._admit(batch)


def all_connected(gw: Gateway, rec: EventRecorder, pub: DurablePublisher) -> bool:
    assert gw.ingress is not None and gw.publisher is not None
    return (gw.ingress.subscribed.is_set() and gw.publisher.connected.is_set()
            and rec.connected and pub.connected)


def store_times(url: str) -> dict[str, dict[str, float]]:
    """id -> when the store recorded each step (accepted, submitted, delivered; epoch s)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT m.id, m.status, m.created_at, MAX(p.submitted_at), m.updated_at "
                "FROM messages m LEFT JOIN parts p ON p.message_id = m.id "
                "GROUP BY m.id, m.status, m.created_at, m.updated_at")).all()
    finally:
        engine.dispose()
    return {r[0]: {"status": r[1], "accepted": r[2] / 1e6,
                   "submitted": (r[3] or 0) / 1e6, "delivered": r[4] / 1e6} for r in rows}


def in_gap(t: float, kills: list[float]) -> bool:
    return any(k - BROKER_GAP_S <= t <= k for k in kills)


async def quiet(rec: EventRecorder, for_s: float = 1.0, timeout: float = 30) -> None:
    """Until the recorder has received nothing new for `for_s`."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = sum(len(v) for v in rec.events.values()) + rec.copies
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= for_s:
            return
        await asyncio.sleep(0.1)


async def test_broker_killed_and_restarted_during_a_flood(sqlite_setup: GatewaySetup) -> None:
    """SIGKILL Mosquitto twice during a flood, each time right under a burst of publishes (so
    the publisher and the gateway both hold unacknowledged submissions), 1.5 s down each time."""
    s = sqlite_setup
    n = scaled(2400, 20_000)
    kills = scaled(2, 6)
    docs = docs_for("bk", n)
    s.add_carrier("alpha", tps=TPS, window=50)
    s.route("", "alpha")
    await s.start_sim("alpha")
    gw = await s.start_gateway()
    assert gw.ingress is not None and gw.publisher is not None and gw.admission is not None
    tap = AdmitTap(gw.ingress)
    tag = f"{os.getpid()}-{s.http_port}"
    kill_times: list[float] = []
    outages: list[tuple[float, float]] = []
    edge_unacked: set[str] = set()
    with EventRecorder(s.broker.port, f"rec-{tag}") as rec, \
            DurablePublisher(s.broker.port, f"pub-{tag}") as pub:
        t_back = time.time()  # (from here the broker's save has the clients' sessions)
        flood = asyncio.create_task(pub.flood(docs, RATE))
        for k in range(kills):
            await until(lambda k=k: len(pub.acked()) >= n * (k + 1) // (kills + 1), 30,
                        "the flood to progress")
            await until(lambda: all_connected(gw, rec, pub), 15, "every client to reconnect")
            # The gateway has caught up with the broker (else the broker's own queue is what a
            # kill loses), and the broker has saved the sessions since it came back.
            await until(lambda: len(pub.acked() - tap.ids) < 2 * EDGE, 30,
                        "the gateway to catch up")
            await asyncio.sleep(max(0.0, t_back + BROKER_SAVE_S - time.time()))
            edge = docs_for(f"edge{k}-", EDGE)
            pub.publish(edge)  # a burst, and the broker dies under it
            t_kill = time.time()
            s.broker.stop(kill=True)
            edge_unacked |= {d["id"] for d in edge} & pub.unacked()
            await asyncio.sleep(DOWN_S)
            t_back = time.time()
            await asyncio.to_thread(s.broker.start)
            await until(lambda k=k: gw.ingress.subscribed.is_set()
                        and gw.ingress.stats.connects == k + 2, 15, "the ingress to resume")
            kill_times.append(t_kill)
            outages.append((t_kill, t_back))
        await flood
        await until(lambda: not pub.unacked(), 30, "the broker to acknowledge every submission")
        await until(lambda: gw.ingress.stats.in_flight_batches == 0, 30, "the ingress to settle")

        def all_final() -> bool:
            times = store_times(s.store_url)
            return all(times.get(i, {}).get("status") == "delivered" for i in tap.ids)

        await until(all_final, 60, "every received message to be delivered", interval=0.5)
        assert await gw.publisher.flush(30), "events the broker never confirmed"
        await quiet(rec)
        during = [rec.published_between(a, b) for a, b in outages]
        unconfirmed = gw.publisher.pending

    # Every reconnect resumed its session (else the broker lost it, and the test is void).
    assert (pub.connects, pub.resumed, rec.connects, rec.resumed) == (kills + 1, kills) * 2
    # 1. What the gateway received is stored once and delivered; nothing else is stored.
    times = store_times(s.store_url)
    assert set(times) == tap.ids
    assert all(t["status"] == "delivered" for t in times.values())
    # 2. Submissions unacknowledged at a kill came back and are stored (the publisher resent them).
    assert edge_unacked, "no submission was unacknowledged at a kill: the test proved nothing"
    assert edge_unacked <= tap.ids
    # 3. Submissions lost by the broker: acknowledged to the publisher just before a kill only.
    published = {d["id"] for d in docs}
    published |= {f"edge{k}-{i}" for k in range(kills) for i in range(EDGE)}
    never_received = published - tap.ids
    late = sorted(i for i in never_received if not in_gap(pub.sent_at[i], kill_times))
    assert not late, f"submissions the gateway never got, not explained by a kill: {late[:5]}"
    # 4. The gateway lost no event: each one it produced was confirmed by the broker.
    counters = gw.admission.counters
    produced = 3 * len(tap.ids) + counters["repeats"]
    confirmed = sum(gw.publisher.stats.published.values())
    assert (confirmed, unconfirmed, gw.publisher.stats.refused) == (produced, 0, 0)
    # 5. The subscriber got exactly one of each step per message (repeats aside), except what the
    #    broker lost at a kill; the events of each outage came after it.
    broker_lost_events = 0
    for i in tap.ids:
        statuses = [e["status"] for e in rec.firsts(i)]
        for step in STEPS:
            got = statuses.count(step)
            assert got <= 1, (i, rec.events.get(i))
            if got == 0:
                assert in_gap(times[i][step], kill_times), (i, step, rec.events.get(i), times[i])
                broker_lost_events += 1
    assert all(d > 0 for d in during), during
    # 6. The SMSC got each received message exactly once.
    smsc_extra, smsc_missing = smsc_extra_copies(s.sims.values(),
                                                 Counter(pub.sent_to[i] for i in tap.ids))
    assert (smsc_extra, smsc_missing) == (0, 0)
    st = gw.ingress.stats
    print(f"\nFAULT broker SIGKILL x{kills} during a flood of {len(published)}: received="
          f"{len(tap.ids)} stored_once={len(times)} lost_by_gateway=0 "
          f"lost_by_broker(submissions={len(never_received)}, events={broker_lost_events}) "
          f"publisher_unacked_at_kill={len(edge_unacked)} repeat_events={rec.repeats()} "
          f"identical_copies={rec.copies} smsc_duplicates={smsc_extra} "
          f"ingress_unacked_on_loss={st.unacked_on_loss} "
          f"events_republished={gw.publisher.stats.republished} "
          f"events_stamped_during_outages={during} sessions_resumed={pub.resumed}/{rec.resumed}")
    assert gw.publisher.stats.connects == kills + 1
    assert st.connects == kills + 1
    # Repeats answer redelivered submissions: at most the gateway's receive window (1000) per
    # kill plus what the broker had acknowledged from it since its last autosave.
    assert counters["repeats"] <= kills * (1000 + RATE), counters
    # Mosquitto's loss at a SIGKILL is bounded by what it handles in its gap.
    assert len(never_received) <= kills * RATE * BROKER_GAP_S
