"""Carrier faults injected for real: the SMSC simulator's fault hooks (drop, go silent, garbage,
unbind, error injection, throttling, receipts before responses, unknown receipts, refused binds)
and a raw TCP server for carriers that do not speak SMPP at all (tests/faults/rawsmsc.py).

The gateway runs in this process against a real Mosquitto and a SQLite store. For each fault:
it stays up (its tasks alive, /healthz answering), rebinds with backoff (the connects the SMSC
saw, and their spacing: never a tight loop, at most 2 a second, growing while the fault lasts),
and every accepted message ends in exactly one final event; a part the SMSC accepted twice only
in a message whose events carry `resent: true`, at most a window of parts per fault.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest

from gateway.daemon import Gateway
from gateway.smpp.pdu import CommandStatus
from gateway.smpp.simulator import SmscSimulator
from gateway.smpp.text import describe
from tests.faults.carrier import Outcome, check_outcome, firsts, gaps, max_in_any_second
from tests.faults.rawsmsc import RawSmsc
from tests.integration.conftest import FINAL, GatewaySetup, Probe, healthz, http_get, until

pytestmark = pytest.mark.faults

WINDOW = 20
#: Short timers so that each fault plays out in a few seconds.
CARRIER = {"window": WINDOW, "response_timeout_s": 1, "enquire_link_s": 1, "reconnect_s": 0.2,
           "reconnect_max_s": 1.6, "connect_timeout_s": 1}
#: An SMSC that answers each submit_sm 0.1 s after accepting it: at 300/s the window is full
#: when the link breaks, so responses to messages the SMSC has are lost with it.
LATENT = {"response_delay": 0.1}


def docs_for(tag: str, n: int) -> list[dict[str, Any]]:
    """`n` submissions, one destination each; every fifth is a 2-part UCS-2 text."""
    return [{"id": f"{tag}{i}", "to": f"+86139{i:08d}",
             "text": ("长短信分段" * 16 + f"#{i}") if i % 5 == 0 else f"{tag} message {i}"}
            for i in range(n)]


def parts_of(docs: list[dict[str, Any]]) -> dict[str, int]:
    return {d["id"]: describe(d["text"]).parts for d in docs}


async def start(s: GatewaySetup, sim_opts: dict[str, Any],
                **carrier: Any) -> tuple[Gateway, SmscSimulator]:
    """Carrier alpha (CARRIER, overridden by `carrier`) for every number, its simulator (with
    `sim_opts`) and the gateway in this process, bound."""
    s.add_carrier("alpha", **{**CARRIER, **carrier})
    s.route("", "alpha")
    sim = await s.start_sim("alpha", **sim_opts)
    gw = await s.start_gateway()
    return gw, sim


async def assert_alive(s: GatewaySetup, gw: Gateway, status: int = 200) -> None:
    """The gateway's tasks run and /healthz answers (`status`: every carrier bound or not)."""
    assert not gw.stopping.is_set()
    for t in gw._tasks:  # noqa: SLF001
        if t.get_name() in ("events", "dispatch", "ingress"):
            assert not t.done(), t
    d = gw.dispatcher
    assert d is not None and d.counters["internal_errors"] == 0
    for lane in d.carriers.values():
        assert lane.task is not None and not lane.task.done()
    await until(lambda: (gw.carriers_down() == []) == (status == 200), 10, "binds as expected")
    assert await healthz(s.http_port) == status


async def settle(p: Probe, docs: list[dict[str, Any]], s: GatewaySetup,
                 timeout: float = 20) -> None:
    """Until every message has a final event, then a moment for any (wrong) second one."""
    await s.wait_status(p, [d["id"] for d in docs], FINAL, timeout)
    await asyncio.sleep(0.3)


def report(name: str, out: Outcome, connects: Iterable[float], extra: str = "") -> None:
    """One line for docs/reliability.md (run with -s to see it)."""
    times = list(connects)
    print(f"\nFAULT {name}: {out.row()} connects={len(times)} gaps={gaps(times)} {extra}".rstrip())


# ------------------------------------------------------------------------- the link breaks


async def test_connection_dropped_mid_window(sqlite_setup: GatewaySetup) -> None:
    """The SMSC aborts the TCP connection three times while windows of submits are out: each
    time one rebind after the backoff; the parts whose responses were lost go again with
    `resent: true` (the SMSC may have them twice: at most a window each time)."""
    s = sqlite_setup
    gw, sim = await start(s, LATENT, tps=300)
    docs = docs_for("drop", 200)
    drops = 3
    async with s.probe() as p:
        await p.publish(docs)
        for k in range(drops):
            await until(lambda k=k: sim.submits >= 50 * (k + 1) and sim.active_binds == 1, 15)
            t_drop = asyncio.get_running_loop().time()
            assert sim.drop_connections() == 1
            await until(lambda k=k: len(sim.connect_times) == k + 2, 5, "the rebind")
            assert sim.connect_times[-1] - t_drop >= CARRIER["reconnect_s"] * 0.75 - 0.01
        await settle(p, docs, s)
        await assert_alive(s, gw)
    out = check_outcome(p, docs, parts_of(docs), [sim], dup_bound=drops * WINDOW)
    assert len(sim.connect_times) == drops + 1  # one rebind per drop, no more
    report("connection dropped mid-window x3", out, sim.connect_times)


@pytest.mark.parametrize("data", [
    pytest.param(b"\x00\x00\x00\x05junk!", id="command_length-5"),
    pytest.param(b"\xff\xff\xff\xff\x80\x00\x00\x04" + bytes(8), id="command_length-0xFFFFFFFF"),
    pytest.param(bytes(range(256)) * 2, id="garbage"),
])
async def test_garbage_mid_flood(sqlite_setup: GatewaySetup, data: bytes) -> None:
    """Bytes that break SMPP framing on a bound session, twice during a flood: the gateway ends
    that session with a protocol error (never buffers 4 GiB), rebinds once, resends what was in
    flight."""
    s = sqlite_setup
    gw, sim = await start(s, LATENT, tps=300)
    docs = docs_for("junk", 150)
    async with s.probe() as p:
        await p.publish(docs)
        for k in range(2):
            await until(lambda k=k: sim.submits >= 50 * (k + 1) and sim.active_binds == 1, 15)
            assert sim.send_garbage(data) == 1
            await until(lambda k=k: len(sim.connect_times) == k + 2, 5, "the rebind")
        await settle(p, docs, s)
        await assert_alive(s, gw)
    out = check_outcome(p, docs, parts_of(docs), [sim], dup_bound=2 * WINDOW)
    assert len(sim.connect_times) == 3
    assert "protocol error" in s.all_logs()
    report(f"garbage {data[:8]!r} x2", out, sim.connect_times)


async def test_smsc_initiated_unbind(sqlite_setup: GatewaySetup) -> None:
    """The SMSC unbinds twice during a flood: answered, closed, one rebind after the backoff."""
    s = sqlite_setup
    gw, sim = await start(s, LATENT, tps=300)
    docs = docs_for("unbind", 150)
    async with s.probe() as p:
        await p.publish(docs)
        for k in range(2):
            await until(lambda k=k: sim.submits >= 50 * (k + 1) and sim.active_binds == 1, 15)
            t = asyncio.get_running_loop().time()
            assert sim.send_unbind() == 1
            await until(lambda k=k: len(sim.connect_times) == k + 2, 5, "the rebind")
            assert sim.connect_times[-1] - t >= CARRIER["reconnect_s"] * 0.75 - 0.01
        await settle(p, docs, s)
        await assert_alive(s, gw)
    out = check_outcome(p, docs, parts_of(docs), [sim], dup_bound=2 * WINDOW)
    assert len(sim.connect_times) == 3
    assert "unbound by peer" in s.all_logs()
    report("SMSC-initiated unbind x2", out, sim.connect_times)


# ------------------------------------------------------------------------- silence


async def test_submits_unanswered_for_a_while(sqlite_setup: GatewaySetup) -> None:
    """The SMSC keeps the link alive (enquire_link answered) but stops answering submit_sm for
    2 s: each part times out after response_timeout_s, is retried with backoff, and goes
    through once the SMSC answers again, its message marked `resent: true`. No rebind."""
    s = sqlite_setup
    gw, sim = await start(s, {}, tps=100, submit_retries=5)
    docs = docs_for("mute", 120)
    async with s.probe() as p:
        await p.publish(docs[:30])
        await until(lambda: sim.submits >= 20, 10)
        sim.stop_answering(submits_only=True)
        await p.publish(docs[30:])
        await asyncio.sleep(2.0)
        held = {str(e.pdu.fields["destination_addr"]) for e in sim.held_log}
        sim.resume_answering()
        await settle(p, docs, s)
        await assert_alive(s, gw)
    out = check_outcome(p, docs, parts_of(docs), [sim])
    assert held and gw.dispatcher.counters["timeouts"] >= len(held)  # type: ignore[union-attr]
    for d in docs:  # what went unanswered comes again as a resend
        if d["to"][1:] in held:
            assert any(e.get("resent") for e in p.events[d["id"]]), p.events[d["id"]]
    assert len(sim.connect_times) == 1  # the link was fine: no rebind
    report("submit_sm unanswered for 2 s", out, sim.connect_times,
           f"held={len(sim.held_log)} timeouts={gw.dispatcher.counters['timeouts']}")  # type: ignore[union-attr]


async def test_submits_never_answered(sqlite_setup: GatewaySetup) -> None:
    """An SMSC that never answers submit_sm again: every message fails once its retries are
    used up, `retries_exhausted` (and `resent: true`: it may have reached the carrier)."""
    s = sqlite_setup
    gw, sim = await start(s, {}, response_timeout_s=0.5, submit_retries=1)
    sim.stop_answering(submits_only=True)
    docs = docs_for("void", 20)
    async with s.probe() as p:
        await p.publish(docs)
        await settle(p, docs, s)
        await assert_alive(s, gw)
    out = check_outcome(p, docs, parts_of(docs), [sim], allowed=("failed",))
    for d in docs:
        fin = [e for e in p.events[d["id"]] if e["status"] == "failed"][0]
        assert fin["reason"] == "retries_exhausted" and fin.get("resent") is True, fin
    assert len(sim.held_log) == sum(parts_of(docs).values()) * 2  # first try + one retry
    report("submit_sm never answered", out, sim.connect_times, f"held={len(sim.held_log)}")


async def test_smsc_goes_silent(sqlite_setup: GatewaySetup) -> None:
    """The SMSC stops answering anything (a hung carrier) mid-flood: enquire_link unanswered →
    link dead → rebind attempts, each bind timing out, spaced by the growing backoff; once it
    answers again everything is delivered."""
    s = sqlite_setup
    gw, sim = await start(s, {}, tps=100)
    docs = docs_for("hung", 120)
    async with s.probe() as p:
        await p.publish(docs)
        await until(lambda: sim.submits >= 30, 10)
        sim.stop_answering()
        await until(lambda: gw.carriers_down() == ["alpha"], 10, "the link to be declared dead")
        await asyncio.sleep(4.0)
        await assert_alive(s, gw, status=503)
        during = list(sim.connect_times)[1:]
        sim.resume_answering()
        await settle(p, docs, s)
        await assert_alive(s, gw)
    out = check_outcome(p, docs, parts_of(docs), [sim], dup_bound=WINDOW)
    assert len(during) >= 2 and max_in_any_second(during) <= 2, gaps(during)
    assert "link dead" in s.all_logs()
    report("SMSC silent 4 s (link dead, binds time out)", out, sim.connect_times)


# ------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("kind", ["rate_limit", "storm"])
async def test_throttled(sqlite_setup: GatewaySetup, kind: str) -> None:
    """ESME_RTHROTTLED, the gateway uncapped (tps 0): `rate_limit`, a carrier that allows 30
    submit_sm/s (the gateway's AIMD finds the rate after a few refusals); `storm`, a carrier that
    throttles every submit_sm for 1.5 s whatever the rate. Each refused part is resent (never
    counted as a failure, never a duplicate) and every message is delivered exactly once."""
    s = sqlite_setup
    thr = int(CommandStatus.ESME_RTHROTTLED)
    opts = {"throttle_tps": 30} if kind == "rate_limit" else {"error_rate": 1.0, "error_status": thr}
    gw, sim = await start(s, opts, tps=0)
    docs = docs_for("thr", 120)
    async with s.probe() as p:
        await p.publish(docs)
        if kind == "storm":
            await until(lambda: sim.submit_errors >= 1, 10)
            await asyncio.sleep(1.5)
            sim.error_rate = 0.0
        await settle(p, docs, s, timeout=30)
        await assert_alive(s, gw)
    out = check_outcome(p, docs, parts_of(docs), [sim])
    refused = sim.throttled + sim.submit_errors
    assert refused >= (1 if kind == "rate_limit" else 20) and out.resent == 0, refused
    assert len(sim.connect_times) == 1
    report(f"ESME_RTHROTTLED {kind}", out, sim.connect_times,
           f"throttled={refused} submits={sim.submits}")


async def test_queue_full(sqlite_setup: GatewaySetup) -> None:
    """ESME_RMSGQFUL to every submit_sm for 2 s: the gateway pauses the carrier (1 s, doubling)
    instead of hammering it, then delivers everything exactly once."""
    s = sqlite_setup
    gw, sim = await start(s, {"error_rate": 1.0, "error_status": int(CommandStatus.ESME_RMSGQFUL)})
    docs = docs_for("qful", 100)
    async with s.probe() as p:
        await p.publish(docs)
        await until(lambda: sim.submit_errors >= 1, 10)
        await asyncio.sleep(2.0)
        refused = sim.submit_errors
        sim.error_rate = 0.0
        await settle(p, docs, s)
        await assert_alive(s, gw)
    out = check_outcome(p, docs, parts_of(docs), [sim])
    # Paused, not hammering: a window per pause (1 s, then 2 s...), not hundreds.
    assert refused <= 3 * WINDOW, refused
    assert len(sim.connect_times) == 1
    report("ESME_RMSGQFUL for 2 s", out, sim.connect_times, f"refused={refused}")


@pytest.mark.parametrize("status", [CommandStatus.ESME_RBINDFAIL, CommandStatus.ESME_RINVPASWD],
                         ids=lambda c: c.name)
async def test_binds_refused_k_times(sqlite_setup: GatewaySetup, status: CommandStatus) -> None:
    """The SMSC refuses the first 5 binds: the gateway retries with a growing delay (at most 2 a
    second), messages wait in the store (accepted, /healthz 503), then all go once it binds."""
    s = sqlite_setup
    k = 5
    s.add_carrier("alpha", **CARRIER)
    sim = await s.start_sim("alpha")
    sim.bind_refusal_status = int(status)
    s.route("", "alpha")
    gw = await s.start_gateway(wait_ready=False)
    docs = docs_for("ref", 60)
    async with s.probe() as p:
        await p.publish(docs)
        await s.wait_status(p, [d["id"] for d in docs], "accepted", 10)
        await until(lambda: sim.bind_refusals >= k, 15, f"{k} refused binds")
        await assert_alive(s, gw, status=503)  # the next attempt is > 1 s away by now
        sim.bind_refusal_status = None
        await settle(p, docs, s)
        await assert_alive(s, gw)
    out = check_outcome(p, docs, parts_of(docs), [sim])
    times = list(sim.bind_times)
    g = gaps(times[: k + 1])
    assert min(g) >= 0.4 and max_in_any_second(times) <= 2, g  # the bind rate limit
    assert g[-1] >= 1.5 * g[0], g  # the backoff grew while the refusals lasted
    report(f"binds refused x{k} ({status.name})", out, times)


# ------------------------------------------------------------------------- not SMPP at all


@pytest.mark.parametrize("mode", ["silent", "huge_length", "garbage"])
async def test_carrier_that_does_not_speak_smpp(sqlite_setup: GatewaySetup, mode: str) -> None:
    """A carrier port that accepts TCP and then never answers the bind (`silent`), answers it
    with a command_length of 0xFFFFFFFF, or with random bytes: each attempt ends (bind timeout or
    protocol error), the next comes after a growing delay, /healthz says 503 naming the carrier;
    messages wait in the store and all go once a real SMSC answers on that port."""
    s = sqlite_setup
    s.add_carrier("alpha", **{**CARRIER, "response_timeout_s": 0.5})
    s.route("", "alpha")
    raw = await RawSmsc(s.carriers["alpha"].port, mode).start()  # type: ignore[arg-type]
    try:
        gw = await s.start_gateway(wait_ready=False)
        docs = docs_for(f"raw{mode[:2]}", 50)
        async with s.probe() as p:
            await p.publish(docs)
            await s.wait_status(p, [d["id"] for d in docs], "accepted", 10)
            await asyncio.sleep(5.0)
            code, body = await http_get(s.http_port, "/healthz")
            assert code == 503 and b"alpha" in body
            await assert_alive(s, gw, status=503)
            times = list(raw.connect_times)
            assert raw.received > 0  # the binds were sent
            await raw.stop()
            sim = await s.start_sim("alpha")
            await settle(p, docs, s)
            await assert_alive(s, gw)
    finally:
        await raw.stop()
    out = check_outcome(p, docs, parts_of(docs), [sim])
    g = gaps(times)
    assert 3 <= len(times) <= 11, g  # 5 s: neither a tight loop nor given up
    assert min(g) >= 0.4 and max_in_any_second(times) <= 2, g
    assert g[-1] >= 1.5 * g[0], g
    report(f"carrier {mode} (raw TCP)", out, times)


# ------------------------------------------------------------------------- receipts


async def test_receipts_for_unknown_ids(sqlite_setup: GatewaySetup) -> None:
    """100 receipts for ids the gateway never got, among the real ones of a flood: each answered
    with status 0 and counted, none turns into an event, every real message delivered once."""
    s = sqlite_setup
    gw, sim = await start(s, {})
    docs = docs_for("unk", 100)
    async with s.probe() as p:
        await p.publish(docs[:50])
        for i in range(100):
            sim.send_receipt(f"unknown-{i}" if i % 2 else str(i + 1), delivered=i % 3 != 0)
        await p.publish(docs[50:])
        await settle(p, docs, s)
        await until(lambda: sim.receipts_acked >= sim.receipts_sent, 5)
        await assert_alive(s, gw)
    out = check_outcome(p, docs, parts_of(docs), [sim])
    assert sim.deliver_failures == 0 and sim.receipts_acked == sim.receipts_sent
    assert gw.dispatcher.counters["receipts_unknown"] >= 100  # type: ignore[union-attr]
    assert set(p.events) == {d["id"] for d in docs}
    report("receipts for 100 unknown ids", out, sim.connect_times,
           f"unknown_counted={gw.dispatcher.counters['receipts_unknown']}")  # type: ignore[union-attr]


async def test_receipt_before_its_response(sqlite_setup: GatewaySetup) -> None:
    """Every receipt overtakes its submit_sm_resp (same write, receipt first): held, applied
    when the response gives the id; each message delivered once, no receipt left unknown."""
    s = sqlite_setup
    gw, sim = await start(s, {"receipt_before_response": True})
    docs = docs_for("early", 150)
    async with s.probe() as p:
        await p.publish(docs)
        await settle(p, docs, s)
        await assert_alive(s, gw)
    out = check_outcome(p, docs, parts_of(docs), [sim])
    for d in docs:
        assert [e["status"] for e in firsts(p, d["id"])] == ["accepted", "submitted",
                                                                "delivered"]
    assert gw.dispatcher.counters["receipts_unknown"] == 0  # type: ignore[union-attr]
    report("receipt before submit_sm_resp", out, sim.connect_times)
