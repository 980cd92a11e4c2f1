"""The SMSC simulator over real TCP on loopback: an ESME made of our own Session drives it, plus
smpplib's client as an independent implementation. Everything on ephemeral ports, no fixed sleeps
beyond the delays under test.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.model import ReceiptState
from gateway.smpp import pdu as P
from gateway.smpp.receipts import Receipt, parse_deliver
from gateway.smpp.session import (
    BindFailed,
    Bound,
    Closed,
    DeliverSmReceived,
    Event,
    LinkDead,
    RequestTimedOut,
    Role,
    Session,
    SessionConfig,
    SubmitResponse,
    Unbound,
)
from gateway.smpp.simulator import SmscSimulator

ROOT = Path(__file__).resolve().parents[2]
SUBMIT = {"source_addr_ton": 5, "source_addr": "Brand", "dest_addr_ton": 1, "dest_addr_npi": 1,
          "destination_addr": "8613800138000", "registered_delivery": 1,
          "short_message": b"Your code is 123456"}


class Esme(asyncio.Protocol):
    """A test ESME: our Session on a socket; events land in a queue; deliver_sm answered at once
    unless ``auto_respond`` is off."""

    def __init__(self, config: SessionConfig, auto_respond: bool = True) -> None:
        self.session = Session(config, Role.ESME, time.monotonic())
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.auto_respond = auto_respond
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._dispatch(self.session.receive_data(data, time.monotonic()))

    def connection_lost(self, exc: Exception | None) -> None:
        self._dispatch(self.session.connection_lost(time.monotonic()))
        if not self.lost.done():
            self.lost.set_result(None)
        if self._timer is not None:
            self._timer.cancel()

    def _dispatch(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, DeliverSmReceived) and self.auto_respond:
                self.session.respond(ev.seq)
            self.events.put_nowait(ev)
        self.flush()
        if any(isinstance(ev, Closed) for ev in events) and self.transport is not None:
            self.transport.close()

    def flush(self) -> None:
        data = self.session.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.session.next_deadline()
        if deadline is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, deadline - time.monotonic())
            self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch(self.session.handle_timer(time.monotonic()))

    async def next(self, kind: type[Event] | tuple[type[Event], ...] = Event,
                   timeout: float = 5.0) -> Any:
        """The next event of ``kind``, skipping others."""
        async with asyncio.timeout(timeout):
            while True:
                ev = await self.events.get()
                if isinstance(ev, kind):
                    return ev

    def submit(self, fields: dict[str, Any] | None = None, context: Any = None) -> int:
        seq = self.session.submit(fields or SUBMIT, time.monotonic(), context)
        self.flush()
        return seq


async def connect(sim: SmscSimulator, *, bind: bool = True, auto_respond: bool = True,
                  **cfg: Any) -> Esme:
    config = SessionConfig(**{"system_id": "gw", "password": "secret", "window": 100, **cfg})
    loop = asyncio.get_running_loop()
    _t, esme = await loop.create_connection(lambda: Esme(config, auto_respond), "127.0.0.1",
                                            sim.port)
    if bind:
        esme.session.bind(time.monotonic())
        esme.flush()
        ev = await esme.next((Bound, BindFailed))
        assert isinstance(ev, Bound), ev
    return esme


@pytest.fixture
async def sims() -> AsyncIterator[Callable[..., Any]]:
    started: list[SmscSimulator] = []

    async def make(**kw: Any) -> SmscSimulator:
        sim = SmscSimulator(**kw)
        await sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.stop()


def receipt_of(ev: DeliverSmReceived) -> Receipt:
    f = ev.pdu.fields
    result = parse_deliver(f["esm_class"], f["short_message"], f["data_coding"], ev.pdu.tlvs)
    assert isinstance(result, Receipt), result
    return result


# ----------------------------------------------------------------------------------- basics


async def test_bind_submit_and_receipt(sims: Any) -> None:
    sim = await sims(submit_log_size=10)
    esme = await connect(sim)
    assert sim.port != 0 and sim.active_binds == 1
    esme.submit(context="p1")
    resp = await esme.next(SubmitResponse)
    assert resp.command_status == 0 and resp.context == "p1"
    assert all(c in "0123456789ABCDEF" for c in resp.message_id)
    dlv = await esme.next(DeliverSmReceived)
    f = dlv.pdu.fields
    assert f["esm_class"] == 0x04
    assert (f["source_addr"], f["source_addr_ton"]) == ("8613800138000", 1)  # swapped
    assert (f["destination_addr"], f["dest_addr_ton"]) == ("Brand", 5)
    assert dlv.pdu.tlvs["receipted_message_id"] == resp.message_id
    assert dlv.pdu.tlvs["message_state"] == 2
    text = f["short_message"].decode()
    assert text.startswith(f"id:{resp.message_id} sub:001 dlvrd:001 submit date:")
    assert " stat:DELIVRD err:000 text:Your code is 123456" in text
    rc = receipt_of(dlv)
    assert rc.message_id == resp.message_id and rc.state is ReceiptState.DELIVRD
    await sim.wait_for(lambda: sim.receipts_acked == 1)
    assert (sim.bind_attempts, sim.binds, sim.submits, sim.receipts_sent) == (1, 1, 1, 1)
    c = sim.per_system["gw"]
    assert (c.bind_attempts, c.binds, c.bound, c.submits, c.receipts_sent) == (1, 1, 1, 1, 1)
    (logged,) = sim.submit_log
    assert logged.system_id == "gw" and logged.message_id == resp.message_id
    assert logged.pdu.fields["destination_addr"] == "8613800138000"


async def test_message_ids_are_unique_and_formats(sims: Any) -> None:
    for fmt, check in (("hex", lambda s: int(s, 16)), ("decimal", int),
                       ("uuid", lambda s: len(s) == 36)):
        sim = await sims(message_id_format=fmt)
        esme = await connect(sim)
        for _ in range(50):
            esme.submit()
        ids = [(await esme.next(SubmitResponse)).message_id for _ in range(50)]
        assert len(set(ids)) == 50
        for mid in ids:
            check(mid)


async def test_receipt_id_in_decimal_while_response_in_hex(sims: Any) -> None:
    sim = await sims(message_id_format="hex", receipt_id_format="decimal")
    esme = await connect(sim)
    esme.submit()
    resp = await esme.next(SubmitResponse)
    dlv = await esme.next(DeliverSmReceived)
    rid = dlv.pdu.tlvs["receipted_message_id"]
    assert rid == str(int(resp.message_id, 16)) and rid != resp.message_id
    assert receipt_of(dlv).message_id == rid


async def test_receipt_before_response(sims: Any) -> None:
    sim = await sims(receipt_before_response=True, receipt_delay=5.0)
    esme = await connect(sim)
    esme.submit()
    first = await esme.next((SubmitResponse, DeliverSmReceived))
    second = await esme.next((SubmitResponse, DeliverSmReceived))
    assert isinstance(first, DeliverSmReceived) and isinstance(second, SubmitResponse)
    assert first.pdu.tlvs["receipted_message_id"] == second.message_id


async def test_receipt_delay_and_no_receipt_unless_requested(sims: Any) -> None:
    sim = await sims(receipt_delay=0.3)
    esme = await connect(sim)
    esme.submit({**SUBMIT, "registered_delivery": 0})
    esme.submit()
    t0 = time.monotonic()
    await esme.next(SubmitResponse)
    await esme.next(SubmitResponse)
    dlv = await esme.next(DeliverSmReceived)
    assert time.monotonic() - t0 >= 0.25
    await asyncio.sleep(0.4)
    assert esme.events.empty() and sim.receipts_sent == 1
    assert dlv.pdu.tlvs["message_state"] == 2


@pytest.mark.parametrize(("option", "state", "message_state"),
                         [("undeliv", ReceiptState.UNDELIV, 5), ("expired", ReceiptState.EXPIRED, 3),
                          ("rejectd", ReceiptState.REJECTD, 8)])
async def test_receipt_state_shares(sims: Any, option: str, state: ReceiptState,
                                    message_state: int) -> None:
    sim = await sims(**{option: 1.0})
    esme = await connect(sim)
    esme.submit()
    dlv = await esme.next(DeliverSmReceived)
    assert dlv.pdu.tlvs["message_state"] == message_state
    rc = receipt_of(dlv)
    assert rc.state is state and rc.is_final
    if state is not ReceiptState.EXPIRED:
        assert dlv.pdu.tlvs["network_error_code"][0] == 3  # GSM


async def test_shares_are_roughly_respected(sims: Any) -> None:
    sim = await sims(undeliv=0.2, expired=0.1, rejectd=0.1, seed=7)
    esme = await connect(sim, window=400)
    for _ in range(400):
        esme.submit()
    states = [receipt_of(await esme.next(DeliverSmReceived)).state for _ in range(400)]
    share = {s: states.count(s) / 400 for s in set(states)}
    assert 0.5 < share[ReceiptState.DELIVRD] < 0.7
    assert 0.12 < share[ReceiptState.UNDELIV] < 0.28


# ------------------------------------------------------------------- binds and credentials


@pytest.mark.parametrize(("kw", "cfg", "status"), [
    ({"password": "right"}, {"password": "wrong"}, "ESME_RINVPASWD"),
    ({"system_id": "other"}, {}, "ESME_RINVSYSID"),
    ({"accounts": {"gw": "x"}}, {"password": "y"}, "ESME_RINVPASWD"),
    ({"accounts": {"alpha": "x"}}, {}, "ESME_RINVSYSID"),
])
async def test_bind_refused(sims: Any, kw: dict[str, Any], cfg: dict[str, Any], status: str) -> None:
    sim = await sims(**kw)
    esme = await connect(sim, bind=False, **cfg)
    esme.session.bind(time.monotonic())
    esme.flush()
    failed = await esme.next(BindFailed)
    assert failed.status_name == status
    await esme.next(Closed)
    assert sim.bind_attempts == 1 and sim.bind_refusals == 1 and sim.binds == 0


async def test_credentials_accepted(sims: Any) -> None:
    sim = await sims(system_id="gw", password="secret")
    await connect(sim)
    assert sim.binds == 1


async def test_max_binds_per_system_id(sims: Any) -> None:
    sim = await sims(max_binds=2)
    a = await connect(sim)
    await connect(sim)
    third = await connect(sim, bind=False)
    third.session.bind(time.monotonic())
    third.flush()
    assert (await third.next(BindFailed)).status_name == "ESME_RBINDFAIL"
    await connect(sim, system_id="other")  # another account has its own limit
    a.transport.close()  # type: ignore[union-attr]
    await sim.wait_for(lambda: sim.counters("gw").bound == 1)
    await connect(sim)


async def test_bind_refusal_hook(sims: Any) -> None:
    sim = await sims()
    sim.bind_refusal_status = int(P.CommandStatus.ESME_RBINDFAIL)
    esme = await connect(sim, bind=False)
    esme.session.bind(time.monotonic())
    esme.flush()
    assert (await esme.next(BindFailed)).command_status == 0x0D


async def test_receipts_go_to_a_receiver_bind_of_the_same_account(sims: Any) -> None:
    sim = await sims()
    tx = await connect(sim, bind_type="transmitter")
    rx = await connect(sim, bind_type="receiver")
    tx.submit()
    resp = await tx.next(SubmitResponse)
    dlv = await rx.next(DeliverSmReceived)
    assert dlv.pdu.tlvs["receipted_message_id"] == resp.message_id


# ------------------------------------------------------------------ throttling and errors


async def test_throttle(sims: Any) -> None:
    sim = await sims(throttle_tps=10)
    esme = await connect(sim)
    for _ in range(30):
        esme.submit()
    statuses = [(await esme.next(SubmitResponse)).command_status for _ in range(30)]
    throttled = statuses.count(0x58)
    assert 15 <= throttled <= 21 and throttled == sim.throttled
    assert set(statuses) <= {0, 0x58}
    await asyncio.sleep(0.3)  # tokens refill at 10/s
    esme.submit()
    assert (await esme.next(SubmitResponse)).command_status == 0


async def test_error_injection(sims: Any) -> None:
    sim = await sims(error_rate=1.0, error_status=0x45)
    esme = await connect(sim)
    for _ in range(5):
        esme.submit()
    assert [(await esme.next(SubmitResponse)).command_status for _ in range(5)] == [0x45] * 5
    assert sim.submit_errors == 5 and sim.receipts_sent == 0
    sim.error_rate = 0.0  # options are live attributes
    esme.submit()
    assert (await esme.next(SubmitResponse)).command_status == 0


# ------------------------------------------------------------------------------- MO


async def test_send_mo_ascii_and_ucs2(sims: Any) -> None:
    sim = await sims()
    esme = await connect(sim)
    assert sim.send_mo("STOP", source_addr="8613900000000") == 1
    dlv = await esme.next(DeliverSmReceived)
    f = dlv.pdu.fields
    assert (f["esm_class"], f["data_coding"], f["short_message"]) == (0, 0, b"STOP")
    assert (f["source_addr"], f["source_addr_ton"]) == ("8613900000000", 1)
    sim.send_mo("退订")
    f = (await esme.next(DeliverSmReceived)).pdu.fields
    assert f["data_coding"] == 8 and f["short_message"].decode("utf-16-be") == "退订"
    assert sim.mo_sent == 2 and sim.per_system["gw"].mo_sent == 2


async def test_mo_every(sims: Any) -> None:
    sim = await sims(mo_every=0.05, mo_text="hello")
    esme = await connect(sim)
    for _ in range(2):
        assert (await esme.next(DeliverSmReceived)).pdu.fields["short_message"] == b"hello"


# ----------------------------------------------------------------------------- faults


async def test_drop_connections(sims: Any) -> None:
    sim = await sims()
    esme = await connect(sim)
    esme.submit(context="lost?")
    await esme.next(SubmitResponse)
    assert sim.drop_connections() == 1
    await asyncio.wait_for(esme.lost, 5)
    assert (await esme.next(Closed)).reason == "connection lost"
    await sim.wait_for(lambda: sim.active_binds == 0)


async def test_stop_answering_kills_the_link(sims: Any) -> None:
    sim = await sims()
    esme = await connect(sim, enquire_link_s=0.1, response_timeout_s=0.2)
    sim.stop_answering()
    await esme.next(LinkDead, timeout=3)
    await esme.next(Closed)
    sim.resume_answering()
    await connect(sim)


async def test_stop_answering_submits_only(sims: Any) -> None:
    sim = await sims()
    esme = await connect(sim, enquire_link_s=0.05, response_timeout_s=0.3)
    sim.stop_answering(submits_only=True)
    seq = esme.submit(context="held")
    timed_out = await esme.next(RequestTimedOut, timeout=3)
    assert (timed_out.seq, timed_out.context) == (seq, "held")
    assert esme.session.is_bound  # enquire_link kept being answered
    sim.resume_answering()
    esme.submit()
    assert (await esme.next(SubmitResponse)).command_status == 0


async def test_send_garbage_closes_the_peer(sims: Any) -> None:
    sim = await sims()
    esme = await connect(sim)
    assert sim.send_garbage() == 1
    closed = await esme.next(Closed)
    assert closed.reason.startswith("framing lost")


async def test_send_unbind(sims: Any) -> None:
    sim = await sims()
    esme = await connect(sim)
    assert sim.send_unbind() == 1
    assert (await esme.next(Unbound)).by_peer
    await sim.wait_for(lambda: sim.active_binds == 0)


async def test_unanswered_receipts_are_redelivered_after_a_drop(sims: Any) -> None:
    sim = await sims(redeliver_delay=0.05)
    esme = await connect(sim, auto_respond=False)
    esme.submit()
    resp = await esme.next(SubmitResponse)
    await esme.next(DeliverSmReceived)  # never answered
    sim.drop_connections()
    await asyncio.wait_for(esme.lost, 5)
    again = await connect(sim)
    dlv = await again.next(DeliverSmReceived)
    assert dlv.pdu.tlvs["receipted_message_id"] == resp.message_id
    await sim.wait_for(lambda: sim.receipts_acked == 1)


async def test_stats_lines(sims: Any) -> None:
    out = io.StringIO()
    sim = await sims(stats_interval=0.05, quiet=False, out=out)
    esme = await connect(sim)
    esme.submit()
    await esme.next(DeliverSmReceived)
    await sim.wait_for(lambda: "total_submits=1" in out.getvalue())
    line = out.getvalue().splitlines()[-1]
    assert "binds=1" in line and "submits/s=" in line and "receipts/s=" in line


async def test_sustains_a_window_of_traffic(sims: Any) -> None:
    """5,000 submits through one bind, window 100: every response and receipt comes back."""
    sim = await sims()
    esme = await connect(sim, window=100)
    sent = got = receipts = 0
    ids: set[str] = set()
    while got < 5000 or receipts < 5000:
        while sent < 5000 and esme.session.can_submit:
            esme.submit()
            sent += 1
        ev = await esme.next((SubmitResponse, DeliverSmReceived))
        if isinstance(ev, SubmitResponse):
            got += 1
            ids.add(ev.message_id)
        else:
            receipts += 1
    assert len(ids) == 5000 and sim.submits == 5000
    await sim.wait_for(lambda: sim.receipts_acked == 5000)


# ------------------------------------------------------------- an independent client


async def test_smpplib_client_binds_and_submits(sims: Any) -> None:
    import smpplib.client  # type: ignore[import-untyped]

    sim = await sims()
    got: list[Any] = []

    def run() -> None:
        client = smpplib.client.Client("127.0.0.1", sim.port, allow_unknown_opt_params=True)
        client.set_message_received_handler(lambda pdu: got.append(pdu))
        client.connect()
        try:
            client.bind_transceiver(system_id="smpplib", password="pw")
            client.send_message(source_addr_ton=5, source_addr="Brand", dest_addr_ton=1,
                                dest_addr_npi=1, destination_addr="8613800138000",
                                short_message=b"hello", registered_delivery=1)
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                client.read_once()
            client.unbind()
        finally:
            client.disconnect()

    await asyncio.to_thread(run)
    assert sim.binds == 1 and sim.submits == 1 and sim.per_system["smpplib"].submits == 1
    (receipt,) = got
    assert receipt.esm_class == 0x04  # SMSC delivery receipt
    assert receipt.receipted_message_id
    await sim.wait_for(lambda: sim.active_binds == 0)


# ---------------------------------------------------------------------- command line


def test_command_line_serves_and_exits_zero_on_sigterm() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.smpp.simulator", "--port", str(port),
         "--stats-interval", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        time.sleep(0.35)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert f"listening on 127.0.0.1:{port}" in err
    assert "submits/s=0" in out
