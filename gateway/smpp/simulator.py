"""The SMSC (carrier) simulator behind ``smsgw smsc-sim``, and ``SmscSimulator`` for tests.

Owns: an asyncio TCP server whose every connection is a ``Session(role=Role.SMSC)`` (the same
state machine the gateway binds with, seen from the other side), the carrier's behaviour around
it (credentials, bind limits, message ids, delivery receipts after a delay with configurable shares
of UNDELIV / EXPIRED / REJECTD, throttling, injected errors, MO messages) and fault hooks for
integration tests (drop connections, go silent, send garbage, unbind, receipts before responses,
hex/decimal id mismatch). It knows nothing of the gateway beyond SMPP.

Speed matters: a benchmark must measure the gateway, not this. Each connection is an
``asyncio.Protocol`` (no StreamReader copy), everything a loop iteration produces for one socket is
written with a single ``transport.write`` (a ``call_soon`` flush), TCP_NODELAY is set (a window of
receipts otherwise waits for the peer's delayed ACK), and the per-message path allocates little:
the fast codec paths for submit_sm_resp, a bytes %-format for the receipt text, dates cached per
second. ``bench/bench_simulator.py`` measures it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import signal
import socket
import struct
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, TextIO

from gateway.smpp.pdu import CommandId, CommandStatus, Pdu, encode
from gateway.smpp.session import (
    BindRequested,
    Closed,
    DataSmReceived,
    Event,
    LocalProtocolError,
    RequestFailed,
    RequestReceived,
    RequestTimedOut,
    ResponseReceived,
    Role,
    Session,
    SessionConfig,
    SessionState,
    SubmitSmReceived,
)

__all__ = ["LoggedSubmit", "SmscSimulator", "SystemCounters", "add_arguments", "main"]

_DELIVER_SM: Final = int(CommandId.DELIVER_SM)
_DELIVER_SM_RESP: Final = int(CommandId.DELIVER_SM_RESP)
_ESME_RTHROTTLED: Final = int(CommandStatus.ESME_RTHROTTLED)
_ESME_RINVPASWD: Final = int(CommandStatus.ESME_RINVPASWD)
_ESME_RINVSYSID: Final = int(CommandStatus.ESME_RINVSYSID)
_ESME_RBINDFAIL: Final = int(CommandStatus.ESME_RBINDFAIL)
_ESME_RINVCMDID: Final = int(CommandStatus.ESME_RINVCMDID)

# Receipt states: (stat word, message_state TLV value (SMPP 3.4 5.2.28), err, dlvrd).
_DELIVRD: Final = (b"DELIVRD", 2, b"000", b"001")
_EXPIRED: Final = (b"EXPIRED", 3, b"000", b"000")
_UNDELIV: Final = (b"UNDELIV", 5, b"001", b"000")
_REJECTD: Final = (b"REJECTD", 8, b"002", b"000")
#: network_error_code TLV (tag 0x0423, 3 octets: type 3 = GSM, then the error) by ``err:``.
_NETWORK_ERROR: Final = {b"000": b"", b"001": b"\x04\x23\x00\x03\x03\x00\x01",
                         b"002": b"\x04\x23\x00\x03\x03\x00\x02"}
#: message_state TLV (tag 0x0427, 1 octet) by value.
_MESSAGE_STATE_TLV: Final = {v: b"\x04\x27\x00\x01" + bytes((v,)) for v in (2, 3, 5, 8)}
_TLV_HEAD: Final = struct.Struct(">HH")
_TWO_U8: Final = struct.Struct(">BB")

# SMPP 3.4 Appendix B; parsed by gateway.smpp.receipts (a test checks the two agree).
_RECEIPT_TEXT: Final = (b"id:%s sub:001 dlvrd:%s submit date:%s done date:%s stat:%s err:%s "
                        b"text:%s")

#: data_coding values whose short_message octets are (a superset of) ASCII, so the receipt's
#: ``text:`` may quote them as they are; anything else (UCS-2, binary) is left out.
_ASCII_CODINGS: Final = frozenset({0, 1, 3})
_UDHI: Final = 0x40


@dataclass(slots=True)
class SystemCounters:
    """Counters of one ESME account (system_id). Cumulative except ``bound``."""

    bind_attempts: int = 0
    binds: int = 0
    bound: int = 0
    submits: int = 0
    receipts_sent: int = 0
    mo_sent: int = 0


@dataclass(frozen=True, slots=True)
class LoggedSubmit:
    """One received submit_sm, as kept in ``SmscSimulator.submit_log`` (bounded)."""

    system_id: str
    seq: int
    pdu: Pdu
    command_status: int
    message_id: str
    at: float


class _Queued:
    """A deliver_sm waiting for its due time and a free window slot (receipt or MO)."""

    __slots__ = ("due", "body", "is_receipt")

    def __init__(self, due: float, body: bytes, is_receipt: bool) -> None:
        self.due = due
        self.body = body  # the encoded deliver_sm body: resent as is under a new header
        self.is_receipt = is_receipt


class _Account:
    """Per-system_id state: counters, bound receiver connections, and the deliveries queued for
    them. Receipts go to any receiver bind of the account (like real SMSCs), so a gateway must
    match them across binds."""

    __slots__ = ("counters", "receivers", "queue", "rr")

    def __init__(self) -> None:
        self.counters = SystemCounters()
        self.receivers: list[_Connection] = []
        self.queue: deque[_Queued] = deque()
        self.rr = 0


class _Connection(asyncio.Protocol):
    """One TCP connection: a Session(role=SMSC) and its transport."""

    def __init__(self, sim: SmscSimulator) -> None:
        self.sim = sim
        self.session = Session(sim.session_config, Role.SMSC, sim._loop_time())
        self.transport: asyncio.Transport | None = None
        self.account: _Account | None = None
        self.system_id = ""

    # asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sim._connections.add(self)
        self.sim.connections_total += 1
        self.sim.connect_times.append(self.sim._loop_time())

    def data_received(self, data: bytes) -> None:
        sim = self.sim
        if sim._silent:
            return  # a hung carrier: reads everything, answers nothing
        now = sim._loop_time()
        events = self.session.receive_data(data, now)
        if events:
            sim._handle(self, events, now)
        sim._mark_dirty(self)

    def connection_lost(self, exc: Exception | None) -> None:
        sim = self.sim
        events = self.session.connection_lost(sim._loop_time())
        if events:
            sim._handle(self, events, sim._loop_time())
        sim._detach(self)

    # helpers ----------------------------------------------------------------------------

    def flush(self) -> None:
        data = self.session.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.flush()
            self.transport.close()


def _id_formatter(fmt: str) -> Callable[[int], str]:
    if fmt == "hex":
        return lambda n: "%X" % n
    if fmt == "decimal":
        return str
    if fmt == "uuid":
        return lambda n: str(uuid.uuid4())
    raise ValueError(f"message_id_format must be hex, decimal or uuid, not {fmt!r}")


class SmscSimulator:
    """An SMSC on a TCP port, for demos, benchmarks and in-process integration tests.

    Every option is also a public attribute that tests may change while it runs (``error_rate``,
    ``throttle_tps``, ``receipt_delay``, ``receipt_before_response``...). Counters are cumulative
    plain ints; ``per_system`` holds them per ESME system_id.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        system_id: str | None = None,
        password: str | None = None,
        accounts: dict[str, str] | None = None,
        smsc_system_id: str = "smsc-sim",
        receipt_delay: float = 0.0,
        undeliv: float = 0.0,
        expired: float = 0.0,
        rejectd: float = 0.0,
        throttle_tps: float = 0.0,
        error_rate: float = 0.0,
        error_status: int = 0x08,
        mo_every: float = 0.0,
        mo_text: str = "T",
        mo_source: str = "8613800000001",
        mo_destination: str = "10690000",
        stats_interval: float = 0.0,
        message_id_format: str = "hex",
        receipt_id_format: str | None = None,
        max_binds: int | None = None,
        receipt_before_response: bool = False,
        always_receipt: bool = False,
        response_delay: float = 0.0,
        window: int = 100,
        enquire_link_s: float = 30.0,
        response_timeout_s: float = 10.0,
        redeliver_delay: float = 1.0,
        submit_log_size: int = 0,
        seed: int | None = None,
        quiet: bool = True,
        out: TextIO | None = None,
    ) -> None:
        """``system_id``/``password``: credentials every bind must present (None: any);
        ``accounts``: system_id → password, checked instead when given. ``max_binds``: binds at
        once per system_id (refused with ESME_RBINDFAIL above it). ``receipt_id_format``: hex or
        decimal rendering of the receipt's id when it should differ from the submit_sm_resp's
        (a carrier quirk the gateway must survive). ``always_receipt``: send receipts even when
        registered_delivery does not ask. ``response_delay``: answer each submit_sm this many
        seconds after accepting it (a carrier's latency: windows are really in flight, and a
        connection lost meanwhile loses responses to messages the SMSC has). ``window``: outstanding deliver_sm per connection.
        ``redeliver_delay``: a deliver_sm that timed out or whose connection died is queued again
        after this long, as real SMSCs retry receipts.
        """
        self.host = host
        self._requested_port = port
        self.system_id = system_id
        self.password = password
        self.accounts = accounts
        self.smsc_system_id = smsc_system_id
        self.receipt_delay = receipt_delay
        self.undeliv = undeliv
        self.expired = expired
        self.rejectd = rejectd
        self.throttle_tps = throttle_tps
        self.error_rate = error_rate
        self.error_status = error_status
        self.mo_every = mo_every
        self.mo_text = mo_text
        self.mo_source = mo_source
        self.mo_destination = mo_destination
        self.stats_interval = stats_interval
        self.max_binds = max_binds
        self.receipt_before_response = receipt_before_response
        self.always_receipt = always_receipt
        self.response_delay = response_delay
        self.redeliver_delay = redeliver_delay
        self.quiet = quiet
        self.message_id_format = message_id_format
        self.receipt_id_format = receipt_id_format
        self._fmt_resp_id = _id_formatter(message_id_format)
        self._fmt_receipt_id = (self._fmt_resp_id if receipt_id_format is None
                                else _id_formatter(receipt_id_format))
        self._out = out if out is not None else sys.stdout
        self.session_config = SessionConfig(system_id=smsc_system_id, window=window,
                                            enquire_link_s=enquire_link_s,
                                            response_timeout_s=response_timeout_s)
        self._random = random.Random(seed).random
        # Message ids: a counter starting at the wall clock in microseconds, so ids stay unique
        # across restarts of the simulator (the gateway matches receipts by id, and integration
        # tests restart carriers) while one increment per message stays far below 1e6/s.
        self._ids = itertools.count(time.time_ns() // 1000)

        #: Bound deque of received submit_sm (empty when submit_log_size is 0).
        self.submit_log: deque[LoggedSubmit] = deque(maxlen=submit_log_size or None)
        self._log_submits = submit_log_size > 0
        self.per_system: dict[str, SystemCounters] = {}
        self.bind_attempts = 0
        self.binds = 0  # accepted, cumulative
        self.bind_refusals = 0
        self.submits = 0
        self.submit_errors = 0  # injected error_status answers
        self.throttled = 0
        self.receipts_sent = 0
        self.receipts_acked = 0
        self.mo_sent = 0
        self.deliver_failures = 0  # deliver_sm nacked, timed out or lost with the connection
        self.connections_total = 0
        #: loop.time() of the last 10,000 TCP connects and bind requests (fault tests count the
        #: peer's reconnects and their spacing with these).
        self.connect_times: deque[float] = deque(maxlen=10_000)
        self.bind_times: deque[float] = deque(maxlen=10_000)
        #: submit_sm left unanswered by ``stop_answering(submits_only=True)`` (when logging).
        self.held_log: deque[LoggedSubmit] = deque(maxlen=submit_log_size or None)
        #: Status every bind is refused with (a test hook); None: normal checks.
        self.bind_refusal_status: int | None = None

        self._accounts: dict[str, _Account] = {}
        self._connections: set[_Connection] = set()
        self._dirty: set[_Connection] = set()
        self._flush_scheduled = False
        self._silent = False
        self._hold_submits = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._tokens = 0.0
        self._tokens_at = 0.0
        self._date_second = -1
        self._date = b""
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen; ``port`` is known afterwards (0 asks for an ephemeral one)."""
        self._loop = asyncio.get_running_loop()
        self._tokens_at = self._loop.time()
        self._tokens = self.throttle_tps
        self._server = await self._loop.create_server(
            lambda: _Connection(self), self.host, self._requested_port, reuse_address=True)
        if self.stats_interval > 0 and not self.quiet:
            self._tasks.append(asyncio.create_task(self._stats_loop()))
        if self.mo_every > 0:
            self._tasks.append(asyncio.create_task(self._mo_loop()))

    async def stop(self) -> None:
        """Stop listening and close every connection (abruptly, as a crashed carrier would)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def __aenter__(self) -> SmscSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The listening port (after ``start()``)."""
        if self._server is None or not self._server.sockets:
            return self._requested_port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def active_binds(self) -> int:
        """Connections bound right now."""
        return sum(1 for c in self._connections if c.session.is_bound)

    def counters(self, system_id: str) -> SystemCounters:
        """Counters of one account (zeros if it never bound)."""
        return self._account(system_id).counters

    # ------------------------------------------------------------------ fault hooks

    def _matching(self, system_id: str | None) -> list[_Connection]:
        return [c for c in self._connections
                if c.session.is_bound and (system_id is None or c.system_id == system_id)]

    def drop_connections(self, system_id: str | None = None) -> int:
        """Abort every connection (of ``system_id``), bound or not, without unbind. Returns how
        many."""
        conns = [c for c in self._connections if system_id is None or c.system_id == system_id]
        for conn in conns:
            if conn.transport is not None:
                conn.transport.abort()
        return len(conns)

    def stop_answering(self, *, submits_only: bool = False) -> None:
        """Go silent: read and discard everything (no enquire_link_resp, so the peer's link check
        fails), or with ``submits_only`` leave submit_sm unanswered (and without receipts) while
        the link stays alive."""
        if submits_only:
            self._hold_submits = True
        else:
            self._silent = True

    def resume_answering(self) -> None:
        """Undo ``stop_answering``. What arrived meanwhile stays unanswered."""
        self._silent = False
        self._hold_submits = False
        if self._loop is not None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._loop.call_soon(self._on_timer)  # catch up on timers that fell due meanwhile

    def send_garbage(self, data: bytes = b"\x00\x00\x00\x05junk!", system_id: str | None = None
                     ) -> int:
        """Write raw bytes (default: a command_length of 5) to every bound connection."""
        conns = self._matching(system_id)
        for conn in conns:
            self._mark_dirty(conn)
            conn.flush()
            if conn.transport is not None:
                conn.transport.write(data)
        return len(conns)

    def send_unbind(self, system_id: str | None = None) -> int:
        """Unbind every bound connection (of ``system_id``) from the SMSC side."""
        now = self._loop_time()
        conns = self._matching(system_id)
        for conn in conns:
            conn.session.unbind(now)
            self._mark_dirty(conn)
        return len(conns)

    def send_receipt(self, message_id: str, *, delivered: bool = True,
                     system_id: str | None = None, source_addr: str = "8613800000000") -> int:
        """Queue a delivery receipt (DELIVRD, else UNDELIV) for ``message_id``, whether or not it
        was ever given out: receipts for unknown ids are a fault the peer must survive. Goes to
        every account (or ``system_id``) with a receiver bind; returns how many."""
        stat, message_state, err, dlvrd = _DELIVRD if delivered else _UNDELIV
        date = self._receipt_date()
        rid = message_id.encode("ascii")
        now = self._loop_time()
        targets = ([self._account(system_id)] if system_id is not None else
                   [a for a in self._accounts.values() if a.receivers])
        for account in targets:
            pdu = Pdu(_DELIVER_SM, 0, 0, {
                "source_addr_ton": 1, "source_addr_npi": 1, "source_addr": source_addr,
                "dest_addr_ton": 0, "dest_addr_npi": 1, "destination_addr": self.mo_destination,
                "esm_class": 0x04,
                "short_message": _RECEIPT_TEXT % (rid, dlvrd, date, date, stat, err, b"")},
                {"receipted_message_id": message_id, "message_state": message_state})
            account.queue.append(_Queued(now, encode(pdu)[16:], True))
            self._pump(account, now)
        self._flush_soon()
        return len(targets)

    def send_mo(self, text: str | None = None, *, source_addr: str | None = None,
                destination_addr: str | None = None, system_id: str | None = None,
                short_message: bytes | None = None, data_coding: int | None = None) -> int:
        """Queue one MO deliver_sm to every account (or ``system_id``) with a receiver bind.

        The text goes as data_coding 0 when ASCII, else UCS-2 (data_coding 8), unless
        ``short_message``/``data_coding`` are given. Returns how many were queued.
        """
        if short_message is None:
            text = self.mo_text if text is None else text
            if text.isascii():
                short_message, dc = text.encode("ascii"), 0
            else:
                short_message, dc = text.encode("utf-16-be"), 8
        else:
            dc = 0
        if data_coding is not None:
            dc = data_coding
        now = self._loop_time()
        targets = ([self._account(system_id)] if system_id is not None else
                   [a for a in self._accounts.values() if a.receivers])
        for account in targets:
            pdu = Pdu(_DELIVER_SM, 0, 0, {
                "source_addr_ton": 1, "source_addr_npi": 1,
                "source_addr": self.mo_source if source_addr is None else source_addr,
                "dest_addr_ton": 0, "dest_addr_npi": 1,
                "destination_addr": (self.mo_destination if destination_addr is None
                                     else destination_addr),
                "data_coding": dc, "short_message": short_message}, {})
            account.queue.append(_Queued(now, encode(pdu)[16:], False))
            self._pump(account, now)
        self._flush_soon()
        return len(targets)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Poll ``predicate`` (every 5 ms) until true; TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.005)

    # ------------------------------------------------------------------ event handling

    def _handle(self, conn: _Connection, events: list[Event], now: float) -> None:
        # Type dispatch by exact class: submit_sm and deliver_sm_resp dominate, test them first.
        for ev in events:
            cls = ev.__class__
            if cls is SubmitSmReceived:
                self._on_submit(conn, ev, now)  # type: ignore[arg-type]
            elif cls is ResponseReceived:
                if ev.command_id == _DELIVER_SM_RESP:  # type: ignore[attr-defined]
                    if ev.command_status == 0:  # type: ignore[attr-defined]
                        self.receipts_acked += 1
                    else:
                        self.deliver_failures += 1
            elif cls is BindRequested:
                self._on_bind(conn, ev, now)  # type: ignore[arg-type]
            elif cls is RequestTimedOut or cls is RequestFailed:
                item = ev.context  # type: ignore[attr-defined]
                if isinstance(item, _Queued):
                    # Like a real SMSC: keep the receipt and try again a little later.
                    self.deliver_failures += 1
                    item.due = now + self.redeliver_delay
                    if conn.account is not None:
                        conn.account.queue.append(item)
                        self._arm(item.due)
            elif cls is DataSmReceived:
                conn.session.respond(ev.seq, 0, message_id=self._fmt_resp_id(next(self._ids)))  # type: ignore[attr-defined]
            elif cls is RequestReceived:
                if ev.pdu.command_id.response is not None:  # type: ignore[attr-defined]
                    conn.session.respond(ev.seq, _ESME_RINVCMDID)  # type: ignore[attr-defined]
            elif cls is Closed:
                self._detach(conn)
                self._mark_dirty(conn)
                self._close_soon(conn)
        account = conn.account
        if account is not None and account.queue:
            self._pump(account, now)
        deadline = conn.session.next_deadline()
        if deadline is not None:
            self._arm(deadline)

    def _on_bind(self, conn: _Connection, ev: BindRequested, now: float) -> None:
        fields = ev.pdu.fields
        system_id = str(fields.get("system_id", ""))
        password = str(fields.get("password", ""))
        account = self._account(system_id)
        self.bind_attempts += 1
        self.bind_times.append(now)
        account.counters.bind_attempts += 1
        status = self.bind_refusal_status
        if status is None:
            if self.accounts is not None:
                if system_id not in self.accounts:
                    status = _ESME_RINVSYSID
                elif self.accounts[system_id] != password:
                    status = _ESME_RINVPASWD
            elif self.system_id is not None and system_id != self.system_id:
                status = _ESME_RINVSYSID
            elif self.password is not None and password != self.password:
                status = _ESME_RINVPASWD
            if status is None and self.max_binds is not None and \
                    account.counters.bound >= self.max_binds:
                status = _ESME_RBINDFAIL
        if status:
            self.bind_refusals += 1
            conn.session.refuse_bind(ev.seq, status)
            return
        conn.session.accept_bind(ev.seq)
        conn.account = account
        conn.system_id = system_id
        self.binds += 1
        account.counters.binds += 1
        account.counters.bound += 1
        if conn.session.state is not SessionState.BOUND_TX:
            account.receivers.append(conn)

    def _on_submit(self, conn: _Connection, ev: SubmitSmReceived, now: float) -> None:
        self.submits += 1
        account = conn.account
        assert account is not None  # a submit_sm is only legal once bound
        account.counters.submits += 1
        if self._hold_submits:
            if self._log_submits:
                self.held_log.append(LoggedSubmit(conn.system_id, ev.seq, ev.pdu, -1, "", now))
            return
        session = conn.session
        seq = ev.seq
        if self.throttle_tps > 0 and not self._take_token(now):
            self.throttled += 1
            session.respond(seq, _ESME_RTHROTTLED)
            self._log(conn, ev, _ESME_RTHROTTLED, "", now)
            return
        if self.error_rate > 0 and self._random() < self.error_rate:
            self.submit_errors += 1
            session.respond(seq, self.error_status)
            self._log(conn, ev, self.error_status, "", now)
            return
        n = next(self._ids)
        message_id = self._fmt_resp_id(n)
        if self.response_delay > 0:
            self._respond_later(conn, account, ev, n, message_id, now)
            return
        fields = ev.pdu.fields
        if self.always_receipt or fields.get("registered_delivery", 0) & 0x03:
            receipt = self._receipt(n, message_id, fields, now)
            if receipt is not None:
                if self.receipt_before_response:
                    # Fault: the receipt overtakes the response (both in the same write, receipt
                    # first); the gateway must hold it until the response gives the id.
                    receipt.due = now
                    account.queue.appendleft(receipt)
                    self._pump(account, now)
                else:
                    account.queue.append(receipt)
        session.respond(seq, 0, message_id=message_id)
        if self._log_submits:
            self._log(conn, ev, 0, message_id, now)

    def _respond_later(self, conn: _Connection, account: _Account, ev: SubmitSmReceived, n: int,
                       message_id: str, now: float) -> None:
        """``response_delay``: the message is accepted now (logged with status 0) and answered
        later; its receipt is queued with the answer, even when the connection died meanwhile
        (the SMSC has the message)."""
        fields = ev.pdu.fields
        receipt = (self._receipt(n, message_id, fields, now)
                   if self.always_receipt or fields.get("registered_delivery", 0) & 0x03 else None)
        self._log(conn, ev, 0, message_id, now)

        def answer() -> None:
            t = self._loop_time()
            if receipt is not None:
                receipt.due = max(receipt.due, t)
                account.queue.append(receipt)
            if conn in self._connections and conn.session.is_bound:
                try:
                    conn.session.respond(ev.seq, 0, message_id=message_id)
                except LocalProtocolError:
                    pass
                self._mark_dirty(conn)
            self._pump(account, t)
            self._flush_soon()

        assert self._loop is not None
        self._loop.call_later(self.response_delay, answer)

    def _log(self, conn: _Connection, ev: SubmitSmReceived, status: int, message_id: str,
             now: float) -> None:
        if self._log_submits:
            self.submit_log.append(LoggedSubmit(conn.system_id, ev.seq, ev.pdu, status,
                                                message_id, now))

    def _receipt(self, n: int, message_id: str, fields: dict[str, Any], now: float
                 ) -> _Queued | None:
        """The receipt for one submit_sm: esm_class 0x04, TLVs and the Appendix B text."""
        r = self._random()
        if r < self.undeliv:
            state = _UNDELIV
        elif r < self.undeliv + self.expired:
            state = _EXPIRED
        elif r < self.undeliv + self.expired + self.rejectd:
            state = _REJECTD
        else:
            state = _DELIVRD
        if state is _DELIVRD and fields.get("registered_delivery", 0) & 0x03 == 2 \
                and not self.always_receipt:
            return None  # registered_delivery 2: receipts on failure only
        receipt_id = (message_id if self._fmt_receipt_id is self._fmt_resp_id
                      else self._fmt_receipt_id(n))
        sm: bytes = fields.get("short_message", b"")
        if fields.get("data_coding", 0) in _ASCII_CODINGS:
            if fields.get("esm_class", 0) & _UDHI and sm:
                sm = sm[sm[0] + 1:]
            quoted = sm[:20]
        else:
            quoted = b""
        date = self._receipt_date()
        rid = receipt_id.encode("ascii")
        stat, message_state, err, dlvrd = state
        text = _RECEIPT_TEXT % (rid, dlvrd, date, date, stat, err, quoted)
        # The deliver_sm body written directly: 3x cheaper than a Pdu through encode() (a test
        # checks the bytes equal the codec's for the same fields). Addresses swapped from
        # the submit_sm, esm_class 0x04, the text form, then the TLVs receipted_message_id,
        # message_state and, for failures, network_error_code (GSM, SMPP 3.4 5.3.2.31).
        body = b"".join((
            b"\x00", _TWO_U8.pack(fields.get("dest_addr_ton", 0), fields.get("dest_addr_npi", 0)),
            fields.get("destination_addr", "").encode("latin-1"), b"\x00",
            _TWO_U8.pack(fields.get("source_addr_ton", 0), fields.get("source_addr_npi", 0)),
            fields.get("source_addr", "").encode("latin-1"),
            b"\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00", bytes((len(text),)), text,
            _TLV_HEAD.pack(0x001E, len(rid) + 1), rid, b"\x00",
            _MESSAGE_STATE_TLV[message_state], _NETWORK_ERROR[err],
        ))
        return _Queued(now + self.receipt_delay, body, True)

    def _receipt_date(self) -> bytes:
        # strftime costs ~2 us; a receipt needs minute resolution, so cache it per second.
        t = int(time.time())
        if t != self._date_second:
            self._date_second = t
            self._date = time.strftime("%y%m%d%H%M", time.localtime(t)).encode("ascii")
        return self._date

    def _take_token(self, now: float) -> bool:
        """Token bucket of ``throttle_tps`` with one second of burst (carriers count per second)."""
        rate = self.throttle_tps
        tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False

    # ------------------------------------------------------------------ delivery queue

    def _pump(self, account: _Account, now: float) -> None:
        """Send due deliveries of ``account`` over its receiver binds while windows allow."""
        queue = account.queue
        receivers = account.receivers
        if not receivers:
            return
        count = len(receivers)
        while queue:
            item = queue[0]
            if item.due > now:
                self._arm(item.due)
                return
            for i in range(count):
                conn = receivers[(account.rr + i) % count]
                if conn.session.can_submit:
                    break
            else:
                return  # every window is full; a deliver_sm_resp will pump again
            if count > 1:
                account.rr = (account.rr + i + 1) % count
            queue.popleft()
            conn.session.deliver(item.body, now, item)
            if item.is_receipt:
                self.receipts_sent += 1
                account.counters.receipts_sent += 1
            else:
                self.mo_sent += 1
                account.counters.mo_sent += 1
            if conn not in self._dirty:
                self._mark_dirty(conn)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        loop = self._loop
        assert loop is not None
        self._timer_at = when
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._silent:
            return  # a hung carrier sends nothing, not even enquire_link; resume re-arms
        now = self._loop_time()
        for conn in list(self._connections):
            session = conn.session
            events = session.handle_timer(now)
            if events:
                self._handle(conn, events, now)
            else:
                deadline = session.next_deadline()
                if deadline is not None:
                    self._arm(deadline)
            self._mark_dirty(conn)
        for account in self._accounts.values():
            if account.queue:
                self._pump(account, now)

    # ------------------------------------------------------------------ writing

    def _mark_dirty(self, conn: _Connection) -> None:
        self._dirty.add(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush_soon(self) -> None:
        if not self._flush_scheduled and self._dirty:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """One write per connection per loop iteration, whatever produced the bytes."""
        self._flush_scheduled = False
        dirty = self._dirty
        self._dirty = set()
        for conn in dirty:
            conn.flush()
            if conn.session.state is SessionState.CLOSED:
                conn.close()

    def _close_soon(self, conn: _Connection) -> None:
        # The flush closes it after writing the last bytes (an unbind_resp, a refusal...).
        self._mark_dirty(conn)

    def _detach(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        account = conn.account
        if account is None:
            return
        conn.account = None
        account.counters.bound -= 1
        if conn in account.receivers:
            account.receivers.remove(conn)
        # Deliveries still waiting in this session's window come back as RequestFailed
        # (handled above, before the account is detached) and are queued again.

    # ------------------------------------------------------------------ periodic tasks

    def _account(self, system_id: str) -> _Account:
        account = self._accounts.get(system_id)
        if account is None:
            account = self._accounts[system_id] = _Account()
            self.per_system[system_id] = account.counters
        return account

    def _loop_time(self) -> float:
        loop = self._loop
        return loop.time() if loop is not None else time.monotonic()

    async def _mo_loop(self) -> None:
        while True:
            await asyncio.sleep(self.mo_every)
            self.send_mo()

    async def _stats_loop(self) -> None:
        last = (self.submits, self.receipts_sent, time.monotonic())
        while True:
            await asyncio.sleep(self.stats_interval)
            now = time.monotonic()
            dt = max(now - last[2], 1e-9)
            submits, receipts = self.submits, self.receipts_sent
            print(f"{time.strftime('%H:%M:%S')} binds={self.active_binds} "
                  f"submits/s={(submits - last[0]) / dt:.0f} "
                  f"receipts/s={(receipts - last[1]) / dt:.0f} throttled={self.throttled} "
                  f"errors={self.submit_errors} total_submits={submits} "
                  f"bind_attempts={self.bind_attempts}", file=self._out, flush=True)
            last = (submits, receipts, now)


# ---------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``smsc-sim`` options (cli.py declares the same ones; this serves ``python -m``)."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2775)
    parser.add_argument("--system-id", dest="system_id", default=None)
    parser.add_argument("--password", default=None)
    parser.add_argument("--receipt-delay", dest="receipt_delay", type=float, default=0.0)
    parser.add_argument("--undeliv", type=float, default=0.0)
    parser.add_argument("--expired", type=float, default=0.0)
    parser.add_argument("--rejectd", type=float, default=0.0)
    parser.add_argument("--throttle-tps", dest="throttle_tps", type=float, default=0.0)
    parser.add_argument("--error-rate", dest="error_rate", type=float, default=0.0)
    parser.add_argument("--error-status", dest="error_status", type=lambda s: int(s, 0), default=0x08)
    parser.add_argument("--mo-every", dest="mo_every", type=float, default=0.0)
    parser.add_argument("--mo-text", dest="mo_text", default="T")
    parser.add_argument("--stats-interval", dest="stats_interval", type=float, default=1.0)
    parser.add_argument("--message-id-format", dest="message_id_format",
                        choices=("hex", "decimal", "uuid"), default="hex")
    parser.add_argument("--max-binds", dest="max_binds", type=int, default=None)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--quiet", action="store_true")


def simulator_from_args(args: argparse.Namespace) -> SmscSimulator:
    """Build a simulator from parsed options; options cli.py does not declare take defaults."""
    def opt(name: str, default: Any) -> Any:
        value = getattr(args, name, None)
        return default if value is None else value

    return SmscSimulator(
        opt("host", "127.0.0.1"), opt("port", 2775),
        system_id=getattr(args, "system_id", None), password=getattr(args, "password", None),
        receipt_delay=opt("receipt_delay", 0.0), undeliv=opt("undeliv", 0.0),
        expired=opt("expired", 0.0), rejectd=opt("rejectd", 0.0),
        throttle_tps=opt("throttle_tps", 0.0), error_rate=opt("error_rate", 0.0),
        error_status=opt("error_status", 0x08), mo_every=opt("mo_every", 0.0),
        mo_text=opt("mo_text", "T"), stats_interval=opt("stats_interval", 1.0),
        message_id_format=opt("message_id_format", "hex"), max_binds=getattr(args, "max_binds", None),
        window=opt("window", 100), quiet=bool(getattr(args, "quiet", False)))


async def _serve(sim: SmscSimulator) -> None:
    await sim.start()
    print(f"smsc-sim listening on {sim.host}:{sim.port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(args: argparse.Namespace) -> int:
    """``smsgw smsc-sim``: serve until SIGINT/SIGTERM; exit 0 (2 when the port is unusable)."""
    try:
        sim = simulator_from_args(args)
    except ValueError as exc:
        print(f"smsc-sim: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(sim))
    except OSError as exc:
        print(f"smsc-sim: cannot listen on {sim.host}:{sim.port}: {exc}", file=sys.stderr)
        return 2
    return 0


def _parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway.smpp.simulator")
    add_arguments(parser)
    return parser.parse_args(None if argv is None else list(argv))


if __name__ == "__main__":
    raise SystemExit(main(_parse_args()))
