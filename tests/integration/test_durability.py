"""Durability and signals with the daemon as a subprocess (`python -m gateway run --config X`):
SIGKILL with a backlog, a kill between MQTT receive and commit (and between commit and PUBACK),
SIGTERM while messages are in flight, /healthz of the real process. SMSC simulators run in this
process over TCP; the store is a SQLite file and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter

import pytest

from gateway.queue.store import Store
from gateway.smpp.text import describe
from tests.integration.conftest import GatewaySetup, full_numbers_in, healthz, http_get, sim_texts, until

SOAK = os.environ.get("SMSGW_SOAK") == "1"


def texts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 4 == 0:
            out.append(f"您的验证码是 {rng.randint(0, 999999):06d}，5分钟内有效。")
        elif i % 4 == 1:
            out.append(f"Order {i} shipped " + "€ [x] " * rng.randint(0, 60))
        elif i % 4 == 2:
            out.append("长短信测试" * rng.randint(10, 40) + f"#{i}")
        else:
            out.append(f"plain message {i}")
    return out


def two_carriers(s: GatewaySetup) -> None:
    s.add_carrier("alpha", window=50)
    s.add_carrier("beta", window=50)
    s.route("+86", "alpha", "beta")
    s.route("", "beta")


def assert_each_text_once(s: GatewaySetup, docs: list[dict[str, str]]) -> None:
    got: dict[str, list[str]] = {}
    for sim in s.sims.values():
        for dest, ts in sim_texts(sim).items():
            got.setdefault(dest, []).extend(ts)
    for d in docs:
        assert got.get(d["to"][1:]) == [d["text"]], (d["id"], got.get(d["to"][1:]))
    assert len(got) == len(docs)


@pytest.mark.timeout(1800 if SOAK else 300)
async def test_backlog_survives_sigkill(setup: GatewaySetup) -> None:
    """1,000 messages accepted while every carrier is down, SIGKILL, carriers up, restart: every
    one delivered exactly once (each text once at the SMSC, one `delivered` event per id)."""
    n = 10_000 if SOAK else 1000
    s = setup
    two_carriers(s)
    s.spawn_daemon()
    await s.wait_daemon_ready(status=503)  # up and subscribed, no carrier bound
    code, body = await http_get(s.http_port, "/healthz")
    assert code == 503 and b"alpha" in body and b"beta" in body
    ts = texts(n)
    docs = [{"id": f"b{i}", "to": f"+86139{i:08d}", "text": ts[i]} for i in range(n)]
    async with s.probe() as p:
        await p.publish(docs)
        await p.wait_status([d["id"] for d in docs], "accepted", 300 if SOAK else 30)
        s.kill_daemon(signal.SIGKILL)
        assert await s.wait_exit() == -signal.SIGKILL
        for name in ("alpha", "beta"):
            await s.start_sim(name)
        t0 = time.monotonic()
        s.spawn_daemon()
        await s.wait_daemon_ready(status=200)
        await p.wait_status([d["id"] for d in docs], "delivered", 600 if SOAK else 60)
        print(f"\n{n} backlog messages delivered {time.monotonic() - t0:.1f}s after the restart")
        await until(lambda: sum(sim.receipts_acked for sim in s.sims.values())
                    >= sum(describe(d["text"]).parts for d in docs), 10)
        s.kill_daemon(signal.SIGTERM)
        assert await s.wait_exit() == 0
    for d in docs:
        # Accepted events of the last moments before the kill may come again, identical.
        counts = Counter(p.distinct_statuses(d["id"]))
        assert counts["delivered"] == 1 and counts["accepted"] == 1, (d["id"], p.statuses(d["id"]))
        assert "resent" not in p.final(d["id"])  # type: ignore[operator]
    assert_each_text_once(s, docs)
    assert not full_numbers_in(s.all_logs())


async def _kill_in_admit(s: GatewaySetup, where: str) -> None:
    s.add_carrier("alpha")
    s.route("", "alpha")
    sim = await s.start_sim("alpha")
    marker = s.tmp / f"admit-{where}"
    s.spawn_daemon(env={"SMSGW_TEST_ADMIT_PAUSE": f"{where}:{marker}"})
    await s.wait_daemon_ready(status=200)
    async with s.probe() as p:
        await p.send("k1", "+8613800138000", "kill me softly")
        await until(marker.exists, 10, "admit to reach the test hook")
        s.kill_daemon(signal.SIGKILL)
        assert await s.wait_exit() == -signal.SIGKILL
        store = await Store.open(s.store_url)
        try:
            st = await store.get_status("k1")
        finally:
            await store.close()
        if where == "before":
            assert st is None  # never committed
        else:
            assert st is not None and st.status.value == "accepted"
        assert p.events.get("k1") is None  # nothing published before the PUBACK either
        s.spawn_daemon()  # no hook: the broker redelivers the unacknowledged submission
        await p.wait_status(["k1"], "delivered", 20)
        s.kill_daemon(signal.SIGTERM)
        assert await s.wait_exit() == 0
    assert sim.submits == 1
    assert sim_texts(sim) == {"8613800138000": ["kill me softly"]}
    firsts = [e["status"] for e in p.distinct("k1") if not e.get("repeat")]
    assert firsts == ["accepted", "submitted", "delivered"], p.events["k1"]
    if where == "after":
        # Committed before the kill, its `accepted` never published: the restart publishes it
        # (owed since the last events checkpoint), and the broker's redelivered copy is a
        # repeat (its status published again), never a second message.
        assert any(e.get("repeat") for e in p.events["k1"]), p.events["k1"]


async def test_kill_between_receive_and_commit(setup: GatewaySetup) -> None:
    await _kill_in_admit(setup, "before")


async def test_kill_between_commit_and_puback(setup: GatewaySetup) -> None:
    await _kill_in_admit(setup, "after")


async def test_sigterm_in_flight(setup: GatewaySetup) -> None:
    """SIGTERM while a throttled carrier works through a backlog: exit 0, no submit_sm reaches
    the SMSC after the signal, the rest is delivered after a restart, each text exactly once."""
    n = 400
    s = setup
    s.add_carrier("alpha", tps=100, window=10)
    s.route("", "alpha")
    sim = await s.start_sim("alpha")
    s.spawn_daemon()
    await s.wait_daemon_ready(status=200)
    docs = [{"id": f"s{i}", "to": f"+86137{i:08d}", "text": f"in flight {i}"} for i in range(n)]
    async with s.probe() as p:
        await p.publish(docs)
        await until(lambda: sim.submits >= 100, 20, "a hundred submits")
        t_signal = time.monotonic()
        s.kill_daemon(signal.SIGTERM)
        at_signal = sim.submits
        assert await s.wait_exit(30) == 0, s.daemon_log()
        late = [e.at - t_signal for e in sim.submit_log if e.at > t_signal]
        # At 100/s, a daemon still sending would add ~10 submits per 100 ms; one may be on the wire.
        assert len(late) <= 1 and all(d < 0.05 for d in late), late
        assert sim.submits < n
        first_run = sim.submits
        delivered_before = sum(1 for d in docs if p.final(d["id"]) is not None)
        s.spawn_daemon()
        await s.wait_daemon_ready(status=200)
        await s.wait_status(p, [d["id"] for d in docs], "delivered", 30)
        s.kill_daemon(signal.SIGTERM)
        assert await s.wait_exit() == 0
    print(f"\nSIGTERM after {at_signal} submits; {first_run} before exit, {delivered_before} "
          f"delivered then; {sim.submits} in all")
    assert sim.submits == n
    assert_each_text_once(s, docs)
    for d in docs:
        assert Counter(p.statuses(d["id"]))["delivered"] == 1
    assert not full_numbers_in(s.all_logs())


async def test_healthz_of_the_process(setup: GatewaySetup) -> None:
    """503 while no carrier is bound, 200 when all are, 503 naming the carrier that lost its
    bind."""
    s = setup
    two_carriers(s)
    s.spawn_daemon()
    await s.wait_daemon_ready(status=503)
    await s.start_sim("alpha")
    await until(lambda: True, 0)
    deadline = time.monotonic() + 10
    while True:
        code, body = await http_get(s.http_port, "/healthz")
        if b"alpha" not in body:
            break
        assert time.monotonic() < deadline, body
    assert code == 503 and b"beta" in body
    await s.start_sim("beta")
    await s.wait_daemon_ready(status=200)
    await s.stop_sim("alpha")
    deadline = time.monotonic() + 10
    while (await healthz(s.http_port)) != 503:
        assert time.monotonic() < deadline
    code, body = await http_get(s.http_port, "/healthz")
    assert b"alpha" in body and b"beta" not in body
    s.kill_daemon(signal.SIGTERM)
    assert await s.wait_exit() == 0


async def test_sigterm_waits_for_responses_at_most_shutdown_timeout(setup: GatewaySetup) -> None:
    """A carrier that stops answering submit_sm: SIGTERM waits `shutdown_timeout_s` for the
    outstanding responses, then unbinds and exits 0; after a restart those messages go again
    (`resent: true`, they may have reached the carrier) and the rest normally."""
    s = setup
    s.extra["shutdown_timeout_s"] = 1.5
    s.extra["log_level"] = "debug"  # numbers must be masked at every level
    s.add_carrier("alpha", window=5, response_timeout_s=30)
    s.route("", "alpha")
    sim = await s.start_sim("alpha")
    s.spawn_daemon()
    await s.wait_daemon_ready(status=200)
    sim.stop_answering(submits_only=True)
    docs = [{"id": f"w{i}", "to": f"+86136{i:08d}", "text": f"waiting {i}"} for i in range(12)]
    async with s.probe() as p:
        await p.publish(docs)
        # window 5, one slot kept for OTP: 4 transactional submits in flight, unanswered.
        await until(lambda: sim.submits >= 4, 10, "a full window")
        await asyncio.sleep(0.2)
        held = sim.submits
        t0 = time.monotonic()
        s.kill_daemon(signal.SIGTERM)
        assert await s.wait_exit(15) == 0, s.daemon_log()
        took = time.monotonic() - t0
        assert 1.4 <= took < 4.5, took
        assert sim.submits == held == 4  # nothing after the signal
        sim.resume_answering()
        s.spawn_daemon()
        await s.wait_daemon_ready(status=200)
        await p.wait_status([d["id"] for d in docs], "delivered", 20)
        s.kill_daemon(signal.SIGTERM)
        assert await s.wait_exit() == 0
    resent = [d["id"] for d in docs
              if any(e.get("resent") for e in p.events[d["id"]] if e["status"] == "submitted")]
    assert len(resent) == held, resent
    assert_each_text_once(s, docs)  # the unanswered submits are not in the SMSC's log
    assert sim.submits == len(docs) + held
    logs = s.all_logs()
    assert '"level":"debug"' in logs
    assert not full_numbers_in(logs)


async def test_sigkill_with_parts_in_flight_resends_them(setup: GatewaySetup) -> None:
    """SIGKILL while submit_sm are unanswered: after the restart those messages are sent again
    with `resent: true` on their next event and delivered; nothing is lost or sent twice after
    the carrier answered."""
    s = setup
    s.add_carrier("alpha", window=20, response_timeout_s=30)  # 16 slots for non-OTP
    s.route("", "alpha")
    sim = await s.start_sim("alpha")
    s.spawn_daemon()
    await s.wait_daemon_ready(status=200)
    sim.stop_answering(submits_only=True)
    docs = [{"id": f"k{i}", "to": f"+86135{i:08d}", "text": "在途" * (i * 20 + 1)}
            for i in range(6)]
    async with s.probe() as p:
        await p.publish(docs)
        await until(lambda: sim.submits >= sum(describe(d["text"]).parts for d in docs), 10)
        s.kill_daemon(signal.SIGKILL)
        assert await s.wait_exit() == -signal.SIGKILL
        in_flight = sim.submits
        sim.resume_answering()
        s.spawn_daemon()
        await s.wait_daemon_ready(status=200)
        await p.wait_status([d["id"] for d in docs], "delivered", 20)
        s.kill_daemon(signal.SIGTERM)
        assert await s.wait_exit() == 0
    for d in docs:
        sub = [e for e in p.events[d["id"]] if e["status"] == "submitted"]
        assert len(sub) == 1 and sub[0].get("resent") is True, p.events[d["id"]]
        assert p.statuses(d["id"]).count("delivered") == 1
    assert_each_text_once(s, docs)  # the unanswered first copies are not in the SMSC's log
    assert sim.submits == 2 * in_flight
