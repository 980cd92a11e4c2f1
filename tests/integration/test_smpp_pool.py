"""CarrierPool and Connection over real TCP on loopback, against our SMSC simulator (in-process)
and, for faults the simulator has no hook for, small raw asyncio servers.

What is shown: 10,000 parts through 2 carriers × 2 binds with every response and every receipt
correlated; rebinding with backoff after the carrier dies (attempts counted, no storm, delays grow);
refused binds, garbage bytes, a carrier that never answers the bind, a peer unbind, all followed by
a rebind; graceful close; the window reserve and capacity wake-ups used by the dispatcher.
Timings use small reconnect delays; the 2-attempts-a-second limit is the real one.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
import shutil
import socket
import ssl
import struct
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.config import CarrierConfig
from gateway.smpp import pdu as P
from gateway.smpp.connection import Connection
from gateway.smpp.pool import CarrierPool
from gateway.smpp.receipts import Receipt, canonical_id, parse_deliver
from gateway.smpp.session import (
    Bound,
    Closed,
    DeliverSmReceived,
    Event,
    NotBound,
    RequestFailed,
    RequestTimedOut,
    SubmitResponse,
    Unbound,
    WindowFull,
)
from gateway.smpp.simulator import SmscSimulator

pytestmark = pytest.mark.timeout(60)

FIELDS: dict[str, Any] = {
    "source_addr_ton": 5, "source_addr_npi": 0, "source_addr": "Brand",
    "dest_addr_ton": 1, "dest_addr_npi": 1, "destination_addr": "8613800138000",
    "registered_delivery": 1, "data_coding": 0, "short_message": b"hello world",
}


def carrier(name: str, port: int, **kw: Any) -> CarrierConfig:
    base: dict[str, Any] = dict(name=name, host="127.0.0.1", port=port, system_id=name[:15],
                                password="pw", reconnect_s=0.2, reconnect_max_s=1.6,
                                connect_timeout_s=2.0, response_timeout_s=2.0)
    base.update(kw)
    return CarrierConfig(**base)


class Recorder:
    """An on_event callback that keeps every event (and answers deliver_sm right away)."""

    def __init__(self) -> None:
        self.events: list[tuple[Connection, Event]] = []

    def __call__(self, conn: Connection, ev: Event) -> None:
        self.events.append((conn, ev))
        if isinstance(ev, DeliverSmReceived):
            conn.respond(ev.seq)

    def of(self, cls: type) -> list[Any]:
        return [ev for _c, ev in self.events if isinstance(ev, cls)]


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


@pytest.fixture
async def sims() -> AsyncIterator[Callable[..., Awaitable[SmscSimulator]]]:
    started: list[SmscSimulator] = []

    async def make(**kw: Any) -> SmscSimulator:
        sim = SmscSimulator(**kw)
        await sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.stop()


@pytest.fixture
async def pools() -> AsyncIterator[Callable[..., CarrierPool]]:
    made: list[CarrierPool] = []

    def make(cfg: CarrierConfig, on_event: Any, **kw: Any) -> CarrierPool:
        pool = CarrierPool(cfg, on_event, **kw)
        made.append(pool)
        pool.start()
        return pool

    yield make
    for pool in made:
        await pool.stop(0.2)


@pytest.fixture(autouse=True)
async def no_loop_errors() -> AsyncIterator[None]:
    """Whatever the carrier sends, nothing may reach the loop's exception handler."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    yield
    loop.set_exception_handler(None)
    assert not errors, errors


# --------------------------------------------------------------------------------------------
# Volume and correlation
# --------------------------------------------------------------------------------------------


class MiniDispatcher:
    """What the real dispatcher does with the pool, minus the store: pick, submit, correlate
    responses and receipts (held when they overtake their response), answer deliver_sm later."""

    def __init__(self) -> None:
        self.responses: dict[int, str] = {}
        self.response_count: Counter[int] = Counter()
        # Keyed by (carrier, id): two carriers may well hand out the same id (our two simulators,
        # started in the same microsecond, do), so ids are only unique per carrier.
        self.by_id: dict[tuple[str, str], int] = {}
        self.receipts: Counter[int] = Counter()
        self.early: dict[tuple[str, str], int] = {}
        self.unmatched = 0
        self.failures: list[Event] = []
        self.answered = 0

    def on_event(self, conn: Connection, ev: Event) -> None:
        if isinstance(ev, SubmitResponse):
            part = ev.context
            self.response_count[part] += 1
            assert ev.command_status == 0, ev
            self.responses[part] = ev.message_id
            key = (conn.name, canonical_id(ev.message_id))
            assert key not in self.by_id, f"message id {ev.message_id} given twice"
            self.by_id[key] = part
            held = self.early.pop(key, 0)
            if held:
                self.receipts[part] += held
        elif isinstance(ev, DeliverSmReceived):
            f = ev.pdu.fields
            r = parse_deliver(f["esm_class"], f["short_message"], f["data_coding"], ev.pdu.tlvs)
            assert isinstance(r, Receipt), r
            key = (conn.name, canonical_id(r.message_id))
            part = self.by_id.get(key)
            if part is None:
                self.early[key] = self.early.get(key, 0) + 1  # receipt before its response
            else:
                self.receipts[part] += 1
            # Answer "after the commit": later, with the generation read now.
            asyncio.get_running_loop().call_soon(
                functools.partial(self._answer, conn, ev.seq, conn.generation))
        elif isinstance(ev, (RequestFailed, RequestTimedOut)):
            self.failures.append(ev)

    def _answer(self, conn: Connection, seq: int, generation: int) -> None:
        if conn.respond(seq, generation=generation):
            self.answered += 1

    async def run(self, pool: CarrierPool, parts: range) -> None:
        it = iter(parts)
        part = next(it, None)
        while part is not None:
            conn = pool.pick(reserve=1)
            if conn is None:
                await pool.wait_capacity(timeout=1.0)
                continue
            conn.submit(FIELDS, part)
            part = next(it, None)


async def test_10000_parts_two_carriers_two_binds_each(sims: Any, pools: Any) -> None:
    alpha_sim = await sims(system_id="alpha")
    beta_sim = await sims(system_id="beta")
    d = MiniDispatcher()
    alpha = pools(carrier("alpha", alpha_sim.port, binds=2, window=20), d.on_event)
    # beta as 2 transmitters + 2 receivers: receipts arrive on other sockets than the responses.
    beta = pools(carrier("beta", beta_sim.port, binds=2, window=20, bind="transmitter_receiver"),
                 d.on_event)
    assert await alpha.wait_ready(5) and await beta.wait_ready(5)
    await until(lambda: alpha.health.binds_up == 2 and beta.health.binds_up == 4, 5)
    t0 = time.perf_counter()
    await asyncio.gather(d.run(alpha, range(0, 5000)), d.run(beta, range(5000, 10000)))
    await until(lambda: sum(d.receipts.values()) == 10000 and d.answered == 10000, 30)
    elapsed = time.perf_counter() - t0
    assert not d.failures
    assert len(d.responses) == 10000 and set(d.response_count.values()) == {1}
    assert len(d.by_id) == 10000
    assert set(d.receipts) == set(range(10000)) and set(d.receipts.values()) == {1}
    assert not d.early and d.unmatched == 0
    assert alpha_sim.submits == 5000 and beta_sim.submits == 5000
    await until(lambda: alpha_sim.receipts_acked + beta_sim.receipts_acked == 10000, 5)
    h = alpha.health
    assert (h.binds_up, h.binds_configured, h.transmit_up, h.window_in_use) == (2, 2, 2, 0)
    assert beta.health.binds_configured == 4 and beta.health.transmit_up == 2
    # Both binds of each carrier carried traffic (least loaded / round robin).
    for sim in (alpha_sim, beta_sim):
        assert sim.bind_attempts == sim.binds
    print(f"10,000 parts with receipts in {elapsed:.2f} s")


# --------------------------------------------------------------------------------------------
# Losing the carrier: backoff, no storm
# --------------------------------------------------------------------------------------------


def max_per_second(times: list[float]) -> int:
    times = sorted(times)
    return max((sum(1 for u in times[i:] if u < t + 1.0 - 1e-6) for i, t in enumerate(times)),
               default=0)


async def test_simulator_killed_and_restarted_pool_rebinds_with_backoff(sims: Any,
                                                                        pools: Any) -> None:
    sim = await sims()
    port = sim.port
    rec = Recorder()
    pool = pools(carrier("alpha", port, binds=2), rec)
    await until(lambda: pool.health.binds_up == 2)
    conn = pool.pick()
    assert conn is not None
    seqs = [conn.submit(FIELDS, n) for n in range(3)]  # may or may not be answered before the kill
    loop = asyncio.get_running_loop()
    with capture_logs() as logs:
        await sim.stop()
        killed = loop.time()
        await asyncio.sleep(4.0)
        attempts = [t for c in pool.connections for t in c.attempt_times if t > killed]
        # Connection refused meanwhile. The two binds share the carrier's limit: never more than
        # 2 attempts in any second (while the backoff is short, the limit is what spaces them),
        # and each bind's backoff grows (0.2 → 0.4 → 0.8 → 1.6 s, less up to 25 % jitter).
        assert 4 <= len(attempts) <= 9, attempts
        assert max_per_second(attempts) <= 2
        assert max(attempts) - min(attempts) > 2.0  # still trying, spread over the outage
        for c in pool.connections:
            delays = [e["retry_in_s"] for e in logs
                      if e["event"] == "bind down" and e["bind"] == c.index]
            assert len(delays) >= 3 and delays[0] < delays[1] < delays[2], delays
        assert pool.health.binds_up == 0 and pool.pick() is None
        sim2 = await sims(port=port)
        await until(lambda: pool.health.binds_up == 2, 4.0)
    # The restarted carrier saw one bind per session, not a burst.
    assert sim2.bind_attempts == 2
    # Every submit of the dead session was answered or failed, never lost.
    answered = {ev.seq for ev in rec.of(SubmitResponse)}
    failed = {ev.seq for ev in rec.of(RequestFailed)}
    assert set(seqs) <= answered | failed
    downs = [e for e in logs if e["event"] == "bind down"]
    assert downs and all(e["carrier"] == "alpha" for e in downs)
    assert any("connect failed" in e["reason"] for e in downs)
    assert all("pw" not in str(e.get("password", "")) for e in logs)


async def test_carrier_that_drops_every_bind_at_once_gets_growing_delays(sims: Any,
                                                                         pools: Any) -> None:
    """Bound, then dropped at once, over and over: the short binds must not reset the backoff.
    Attempts are counted at the simulator (bind_attempts, timestamped by polling)."""
    sim = await sims()
    loop = asyncio.get_running_loop()
    seen: list[float] = []

    async def flapper() -> None:
        last = 0
        while True:
            if sim.bind_attempts != last:
                last = sim.bind_attempts
                seen.append(loop.time())
            if sim.active_binds:
                sim.drop_connections()
            await asyncio.sleep(0.002)

    task = asyncio.create_task(flapper())
    pool = pools(carrier("alpha", sim.port, binds=1, reconnect_s=0.5, reconnect_max_s=4.0),
                 Recorder())
    try:
        await asyncio.sleep(4.5)
    finally:
        task.cancel()
    # Delays 0.5, 1, 2 s less up to 25 % jitter (the first one raised to the 0.5 s spacing of
    # the bind limit): attempts at about 0, 0.5, 1.4, 3.2 s: 4 in 4.5 s, not hundreds.
    assert 3 <= len(seen) <= 5, seen
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert all(b > a for a, b in itertools.pairwise(gaps)), gaps
    assert pool.connections[0].backoff.level >= 3


# --------------------------------------------------------------------------------------------
# Faults at bind time and during the session
# --------------------------------------------------------------------------------------------


async def test_bind_refused_k_times_then_accepted(sims: Any, pools: Any) -> None:
    sim = await sims()
    sim.bind_refusal_status = int(P.CommandStatus.ESME_RBINDFAIL)
    rec = Recorder()
    with capture_logs() as logs:
        pool = pools(carrier("alpha", sim.port, reconnect_s=0.1, reconnect_max_s=0.4), rec)
        await until(lambda: sim.bind_attempts >= 3, 5)
        sim.bind_refusal_status = None
        assert await pool.wait_ready(5)
    assert sim.bind_refusals == 3 and sim.binds == 1
    refused = [e for e in logs if e["event"] == "bind refused"]
    assert len(refused) == 3
    assert {e["command_status_name"] for e in refused} == {"ESME_RBINDFAIL"}
    assert {e["command_status"] for e in refused} == {0x0D}
    assert all("password" not in e for e in logs)
    assert len(rec.of(Bound)) == 1 and len(rec.of(Closed)) == 3


async def test_garbage_from_the_smsc_closes_with_a_reason_and_rebinds(sims: Any,
                                                                      pools: Any) -> None:
    sim = await sims()
    rec = Recorder()
    pool = pools(carrier("alpha", sim.port, reconnect_s=0.1), rec)
    assert await pool.wait_ready(5)
    conn = pool.connections[0]
    generation = conn.generation
    with capture_logs() as logs:
        assert sim.send_garbage() == 1
        await until(lambda: sim.binds == 2 and pool.ready, 5)
    errors = [e for e in logs if e["event"] == "protocol error"]
    assert errors and errors[0]["fatal"] is True and "framing" in errors[0]["reason"]
    down = [e for e in logs if e["event"] == "bind down"]
    assert down and "framing" in down[0]["reason"]
    assert conn.generation == generation + 1


async def test_random_bytes_after_bind_never_crash_anything(pools: Any) -> None:
    """A raw SMSC that accepts the bind, then writes random bytes: every time the connection
    closes (or nacks) and rebinds; no exception reaches the loop (checked by the fixture)."""
    rng = random.Random(1234)
    binds = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal binds
        try:
            header = await reader.readexactly(16)
            length, cid, _st, seq = struct.unpack(">IIII", header)
            await reader.readexactly(length - 16)
            binds += 1
            writer.write(P.encode(P.bind_resp(cid | 0x80000000, seq, "raw")))
            blob = rng.randbytes(rng.randint(1, 300))
            if rng.random() < 0.5:  # sometimes a plausible header in front
                blob = (16 + len(blob)).to_bytes(4, "big") + rng.randbytes(12) + blob
            writer.write(blob)
            await writer.drain()
            await asyncio.sleep(0.2)  # then hang up, whatever the client made of it
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        pool = pools(carrier("alpha", port, reconnect_s=0.05, reconnect_max_s=0.05,
                             response_timeout_s=0.3), Recorder())
        await until(lambda: binds >= 5, 8)
        assert pool.connections[0].bind_attempts >= 5
    finally:
        server.close()


async def test_smsc_that_never_answers_the_bind_times_out_and_retries(sims: Any,
                                                                      pools: Any) -> None:
    sim = await sims()
    sim.stop_answering()
    with capture_logs() as logs:
        pool = pools(carrier("alpha", sim.port, response_timeout_s=0.3, reconnect_s=0.2,
                             reconnect_max_s=0.8), Recorder())
        await asyncio.sleep(2.5)
        # attempts at ~0, 0.3+0.2, 1.0+0.4, 2.1+0.8 (minus jitter): 3 or 4, each a new TCP connection
        assert 3 <= sim.connections_total <= 4, sim.connections_total
        assert not pool.ready
        sim.resume_answering()
        assert await pool.wait_ready(3)
    down = [e for e in logs if e["event"] == "bind down"]
    assert down and all(e["reason"] == "bind timed out" for e in down)
    delays = [e["retry_in_s"] for e in down]
    assert delays[0] < delays[1] < delays[2] <= 0.8  # 0.2, 0.4, 0.8 less jitter; capped


async def test_peer_unbind_rebinds(sims: Any, pools: Any) -> None:
    sim = await sims()
    rec = Recorder()
    pool = pools(carrier("alpha", sim.port, reconnect_s=0.1), rec)
    assert await pool.wait_ready(5)
    sim.send_unbind()
    await until(lambda: sim.binds == 2 and pool.ready, 5)
    assert [ev.by_peer for ev in rec.of(Unbound)] == [True]


async def test_link_dead_when_enquire_link_unanswered(sims: Any, pools: Any) -> None:
    sim = await sims()
    rec = Recorder()
    with capture_logs() as logs:
        pool = pools(carrier("alpha", sim.port, enquire_link_s=0.2, response_timeout_s=0.3,
                             reconnect_s=0.1), rec)
        assert await pool.wait_ready(5)
        sim.stop_answering()
        await until(lambda: any(e["event"] == "bind down" for e in logs), 3)
        sim.resume_answering()
        await until(lambda: pool.ready and sim.binds >= 2, 5)
    assert "link dead" in next(e for e in logs if e["event"] == "bind down")["reason"]


# --------------------------------------------------------------------------------------------
# Shutdown, window reserve, capacity, reload
# --------------------------------------------------------------------------------------------


async def test_close_waits_for_outstanding_then_unbinds(sims: Any) -> None:
    sim = await sims(receipt_delay=10.0)
    rec = Recorder()
    conn = Connection(carrier("alpha", sim.port), rec)
    conn.start()
    await until(lambda: conn.is_bound)
    for n in range(5):
        conn.submit(FIELDS, n)
    await conn.close(timeout=2.0)
    kinds = [type(ev).__name__ for _c, ev in rec.events]
    assert kinds == ["Bound"] + ["SubmitResponse"] * 5 + ["Unbound", "Closed"]
    unbound = rec.events[-2][1]
    assert isinstance(unbound, Unbound) and not unbound.by_peer
    with pytest.raises(NotBound):
        conn.submit(FIELDS, 99)
    await until(lambda: sim.active_binds == 0)


async def test_close_gives_up_after_timeout_and_fails_the_rest(sims: Any) -> None:
    sim = await sims()
    rec = Recorder()
    conn = Connection(carrier("alpha", sim.port), rec)
    conn.start()
    await until(lambda: conn.is_bound)
    sim.stop_answering(submits_only=True)
    for n in range(3):
        conn.submit(FIELDS, n)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await conn.close(timeout=0.4)
    assert 0.35 <= loop.time() - t0 < 2.0
    failed = rec.of(RequestFailed)
    assert sorted(ev.context for ev in failed) == [0, 1, 2]
    assert isinstance(rec.events[-1][1], Closed)
    assert rec.of(Unbound)  # the unbind itself was still answered


async def test_close_while_carrier_down_is_prompt() -> None:
    rec = Recorder()
    conn = Connection(carrier("alpha", 1, reconnect_s=5.0, reconnect_max_s=5.0), rec)
    conn.start()
    await until(lambda: conn.bind_attempts == 1 and conn.last_error != "")
    t0 = time.perf_counter()
    await conn.close(5.0)
    assert time.perf_counter() - t0 < 0.5


async def test_pick_keeps_the_reserve_and_wait_capacity_wakes(sims: Any, pools: Any) -> None:
    sim = await sims()
    rec = Recorder()
    pool = pools(carrier("alpha", sim.port, window=2, response_timeout_s=0.3), rec)
    assert await pool.wait_ready(5)
    sim.stop_answering(submits_only=True)
    conn = pool.pick(reserve=1)
    assert conn is not None
    conn.submit(FIELDS, "marketing")
    assert pool.pick(reserve=1) is None  # the last slot is kept for OTP
    otp = pool.pick(reserve=0)
    assert otp is conn
    otp.submit(FIELDS, "otp")
    assert pool.pick() is None
    with pytest.raises(WindowFull):
        conn.submit(FIELDS, "overflow")
    assert pool.health.window_in_use == 2
    # The responses never come: the timeouts free the slots and wake the waiter.
    assert await pool.wait_capacity(timeout=2.0)
    assert {ev.context for ev in rec.of(RequestTimedOut)} <= {"marketing", "otp"}
    assert pool.pick() is conn
    # A bigger window is capacity too.
    sim.resume_answering()
    waiter = asyncio.create_task(pool.wait_capacity(timeout=2.0))
    await asyncio.sleep(0)
    pool.set_window(5)
    assert await waiter
    assert pool.health.window_size == 5


async def test_reconfigure_in_place_or_rebind(sims: Any, pools: Any) -> None:
    sim = await sims()
    other = await sims()
    cfg = carrier("alpha", sim.port, window=10)
    pool = pools(cfg, Recorder())
    assert await pool.wait_ready(5)
    conn = pool.connections[0]
    generation = conn.generation
    assert pool.reconfigure(cfg.model_copy(update={"window": 30, "reconnect_s": 0.5}))
    assert conn.window_size == 30 and conn.session.window_size == 30
    assert conn.backoff.initial == 0.5
    assert conn.generation == generation and sim.binds == 1  # no rebind
    moved = cfg.model_copy(update={"port": other.port})
    assert not pool.reconfigure(moved)
    await pool.rebind(moved, timeout=1.0)
    assert await pool.wait_ready(5)
    assert other.binds == 1 and sim.active_binds == 0


async def test_respond_for_a_dead_session_is_refused(sims: Any) -> None:
    """Sequence numbers restart with each bind: an answer meant for the previous session must not
    acknowledge a deliver_sm of the next one."""
    sim = await sims()
    held: list[tuple[Connection, int, int]] = []

    def on_event(conn: Connection, ev: Event) -> None:
        if isinstance(ev, DeliverSmReceived):
            held.append((conn, ev.seq, conn.generation))

    conn = Connection(carrier("alpha", sim.port, reconnect_s=0.1), on_event)
    conn.start()
    try:
        await until(lambda: conn.is_bound)
        sim.send_mo("hello")
        await until(lambda: len(held) == 1)
        sim.drop_connections()
        await until(lambda: conn.generation == 2 and conn.is_bound, 5)
        c, seq, gen = held[0]
        assert c.respond(seq, generation=gen) is False
        # The simulator redelivers the MO on the new bind, which is answered normally.
        await until(lambda: len(held) == 2, 5)
        c, seq, gen = held[1]
        assert gen == 2 and c.respond(seq, generation=gen) is True
    finally:
        await conn.close(0.5)


# --------------------------------------------------------------------------------------------
# Socket options and TLS
# --------------------------------------------------------------------------------------------


def _sockopt_nodelay(conn: Connection) -> int:
    link = conn._link  # noqa: SLF001 - the test looks at the live socket
    assert link is not None and link.transport is not None
    sock = link.transport.get_extra_info("socket")
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


@pytest.mark.parametrize("nodelay", [True, False])
async def test_tcp_nodelay_is_set(sims: Any, nodelay: bool) -> None:
    sim = await sims()
    conn = Connection(carrier("alpha", sim.port), Recorder(), nodelay=nodelay)
    conn.start()
    try:
        await until(lambda: conn.is_bound)
        assert _sockopt_nodelay(conn) == int(nodelay)
    finally:
        await conn.close(0.5)


async def test_tls_to_the_carrier(sims: Any, tmp_path: Path) -> None:
    """A TLS-terminating relay in front of the simulator (which speaks plain TCP): the carrier's
    certificate is checked against ``tls.ca_file``; TCP_NODELAY is still set under TLS."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    sim = await sims()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", sim.port)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    rec = Recorder()
    try:
        conn = Connection(carrier("alpha", port, tls={"ca_file": str(cert)}), rec)
        conn.start()
        await until(lambda: conn.is_bound)
        assert _sockopt_nodelay(conn) == 1
        conn.submit(FIELDS, "tls")
        await until(lambda: len(rec.of(DeliverSmReceived)) == 1)
        assert [ev.context for ev in rec.of(SubmitResponse)] == ["tls"]
        await conn.close(1.0)
        # Against a certificate it does not trust, the bind never comes up.
        with capture_logs() as logs:
            bad = Connection(carrier("alpha", port, tls=True), Recorder())
            bad.start()
            await until(lambda: bad.bind_attempts >= 1 and bad.last_error != "")
            await bad.close(0.1)
        assert "CERTIFICATE_VERIFY_FAILED" in bad.last_error or any(
            "CERTIFICATE_VERIFY_FAILED" in str(e.get("reason")) for e in logs)
    finally:
        server.close()
