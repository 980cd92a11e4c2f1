"""SMPP 3.4 session state machine, sans-IO: bytes and the time in, events and bytes out.

Owns the bind state, sequence numbers, the window of outstanding requests with their response
deadlines, enquire_link liveness, the bookkeeping of received requests the caller has not answered
yet, and the automatic replies (enquire_link_resp, unbind_resp, generic_nack). It knows nothing of
sockets, tasks, clocks, carriers, messages or the database. One class plays both sides: the gateway
uses ``Role.ESME``, the simulator ``Role.SMSC``.

Theory of operation (after h11's ``_state.py`` and aioquic's ``QuicConnection``):

* Every stimulus is a method call carrying ``now`` (monotonic seconds, from the caller's clock):
  ``receive_data``, ``handle_timer``, ``connection_lost`` return the events they caused; ``bind``,
  ``submit``, ``deliver``, ``send_request``, ``respond``, ``unbind`` queue bytes. After any call the
  driver writes ``data_to_send()`` (one buffer, so one ``write`` per loop iteration) and sleeps
  until ``next_deadline()``.
* Rule 1: what each role may send and receive in each state lives in the two tables below,
  ``MAY_SEND`` and ``MAY_RECEIVE``, and nowhere else. A missing entry is a protocol violation:
  locally an exception (``LocalProtocolError`` / ``NotBound``), from the peer a fatal
  ``ProtocolError`` event. A response is legal when it answers a request still in the window
  (matched by sequence number): that is the table for responses.
* Errors from the peer never raise. Bytes that break framing, or a request illegal in the state,
  end the session: ``ProtocolError(fatal=True)``, one ``RequestFailed`` per request still waiting,
  then ``Closed(reason)``; the state is CLOSED and the driver closes the socket. A framed PDU with a
  bad body is answered with its *_resp carrying the error status (``pdu.error_response``), an
  unknown command id (or one this role never receives) with generic_nack ESME_RINVCMDID, and the
  session goes on (``ProtocolError(fatal=False)``).
* Every transition to CLOSED ends with exactly one ``Closed`` event, after the events that explain
  it (``Unbound``, ``LinkDead``, ``BindFailed``, ``ProtocolError``, ``RequestFailed``...). The
  driver's rule is therefore simply: on ``Closed``, close the transport.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from gateway.smpp import pdu as _pdu
from gateway.smpp.pdu import (
    CommandId,
    FrameBuffer,
    FramingError,
    Pdu,
    PduDecodeError,
    SmppError,
    encode_deliver_sm_resp,
    encode_submit_sm_resp,
    error_response,
    status_name,
)
from gateway.smpp.pdu import command_name as _command_name

__all__ = [
    "MAY_RECEIVE",
    "MAY_SEND",
    "MAX_SEQUENCE",
    "BindFailed",
    "BindRequested",
    "BindType",
    "Bound",
    "Closed",
    "DataSmReceived",
    "DeliverSmReceived",
    "Event",
    "LinkDead",
    "LocalProtocolError",
    "NotBound",
    "OutbindReceived",
    "ProtocolError",
    "RequestFailed",
    "RequestReceived",
    "RequestTimedOut",
    "ResponseReceived",
    "Role",
    "Session",
    "SessionConfig",
    "SessionState",
    "SubmitResponse",
    "SubmitSmReceived",
    "UnbindRequested",
    "Unbound",
    "WindowFull",
]

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

#: Sequence numbers run 1..0x7FFFFFFF and wrap to 1 (SMPP 3.4 §3.2: the top bit is reserved;
#: cloudhopper's SequenceNumber does the same). 0 is never issued: some peers treat it as "none".
MAX_SEQUENCE: Final = 0x7FFF_FFFF

_RESPONSE_BIT: Final = 0x8000_0000
_HEADER = struct.Struct(">IIII")

# command_status values the session itself puts on the wire (SMPP 3.4 §5.1.3).
_ESME_ROK: Final = 0x00
_ESME_RINVCMDID: Final = 0x03  # unknown or unsupported command id
_ESME_RINVBNDSTS: Final = 0x04  # command not allowed in the current bind state
_ESME_RALYBND: Final = 0x05  # bind while already bound
_ESME_RSYSERR: Final = 0x08

# How many timed-out sequence numbers to remember so that their late responses are recognised
# (counted as late, not as unexpected). At 20,000 requests/s and a 10 s timeout a whole window
# rarely times out; 4,096 is several windows of any carrier we know (10..1,000).
_EXPIRED_MEMORY: Final = 4096

# Command ids as plain ints: the hot path compares ints, and IntEnum members hash like their value.
_BIND_RECEIVER: Final = int(CommandId.BIND_RECEIVER)
_BIND_TRANSMITTER: Final = int(CommandId.BIND_TRANSMITTER)
_BIND_TRANSCEIVER: Final = int(CommandId.BIND_TRANSCEIVER)
_QUERY_SM: Final = int(CommandId.QUERY_SM)
_SUBMIT_SM: Final = int(CommandId.SUBMIT_SM)
_SUBMIT_SM_RESP: Final = int(CommandId.SUBMIT_SM_RESP)
_DELIVER_SM: Final = int(CommandId.DELIVER_SM)
_DELIVER_SM_RESP: Final = int(CommandId.DELIVER_SM_RESP)
_UNBIND: Final = int(CommandId.UNBIND)
_REPLACE_SM: Final = int(CommandId.REPLACE_SM)
_CANCEL_SM: Final = int(CommandId.CANCEL_SM)
_OUTBIND: Final = int(CommandId.OUTBIND)
_ENQUIRE_LINK: Final = int(CommandId.ENQUIRE_LINK)
_SUBMIT_MULTI: Final = int(CommandId.SUBMIT_MULTI)
_ALERT_NOTIFICATION: Final = int(CommandId.ALERT_NOTIFICATION)
_DATA_SM: Final = int(CommandId.DATA_SM)
_GENERIC_NACK: Final = int(CommandId.GENERIC_NACK)

_BINDS: Final = frozenset({_BIND_RECEIVER, _BIND_TRANSMITTER, _BIND_TRANSCEIVER})
#: Requests that carry a message and so take a slot of the window (cloudhopper and go-smpp window
#: exactly these); enquire_link, bind and unbind must never wait behind a full window.
_WINDOWED: Final = frozenset({_SUBMIT_SM, _DELIVER_SM, _DATA_SM, _SUBMIT_MULTI})
#: Requests that have no response in SMPP 3.4.
_NO_RESPONSE: Final = frozenset({_OUTBIND, _ALERT_NOTIFICATION})
#: Requests whose failure the session reports by other events (BindFailed, LinkDead, Unbound).
_INTERNAL: Final = frozenset(_BINDS | {_ENQUIRE_LINK, _UNBIND})
#: Responses that have no body in SMPP 3.4 (the rest get their fields, even if empty).
_HEADER_ONLY_RESPONSES: Final = frozenset({_ENQUIRE_LINK, _UNBIND, _CANCEL_SM, _REPLACE_SM})


class Role(enum.Enum):
    """Which side of the bind this session plays."""

    #: The gateway: binds, submits, receives deliver_sm.
    ESME = "esme"
    #: The carrier (our simulator): accepts binds, receives submit_sm, sends deliver_sm.
    SMSC = "smsc"


class SessionState(enum.Enum):
    """Bind state, shared by both roles. BOUND_* name the ESME's bind type on either side."""

    #: Connected, no bind yet (or a bind was refused, SMSC side).
    OPEN = "open"
    #: ESME: bind sent, waiting for its response. SMSC: bind received, not yet answered.
    BINDING = "binding"
    BOUND_TX = "bound_tx"
    BOUND_RX = "bound_rx"
    BOUND_TRX = "bound_trx"
    #: We sent unbind and wait for unbind_resp.
    UNBINDING = "unbinding"
    #: Terminal: the driver closes the transport. Nothing is sent or received any more.
    CLOSED = "closed"


_OPEN = SessionState.OPEN
_BINDING = SessionState.BINDING
_BOUND_TX = SessionState.BOUND_TX
_BOUND_RX = SessionState.BOUND_RX
_BOUND_TRX = SessionState.BOUND_TRX
_UNBINDING = SessionState.UNBINDING
_CLOSED = SessionState.CLOSED
_BOUND_STATES: Final = frozenset({_BOUND_TX, _BOUND_RX, _BOUND_TRX})

_BIND_TO_STATE: Final[Mapping[int, SessionState]] = {
    _BIND_TRANSMITTER: _BOUND_TX,
    _BIND_RECEIVER: _BOUND_RX,
    _BIND_TRANSCEIVER: _BOUND_TRX,
}

BindType = Literal["transmitter", "receiver", "transceiver"]
_BIND_COMMAND: Final[Mapping[str, int]] = {
    "transmitter": _BIND_TRANSMITTER,
    "receiver": _BIND_RECEIVER,
    "transceiver": _BIND_TRANSCEIVER,
}

# --------------------------------------------------------------------------------------------
# Rule 1: the state table (SMPP 3.4 §2.3 and table 2-1). Requests only; see the module docstring
# for responses.
# --------------------------------------------------------------------------------------------

_ESME_TX_SENDS = frozenset({_SUBMIT_SM, _DATA_SM, _QUERY_SM, _CANCEL_SM, _REPLACE_SM,
                            _SUBMIT_MULTI, _ENQUIRE_LINK, _UNBIND})
_ESME_RX_SENDS = frozenset({_DATA_SM, _ENQUIRE_LINK, _UNBIND})
_ESME_RX_RECEIVES = frozenset({_DELIVER_SM, _DATA_SM, _ALERT_NOTIFICATION, _ENQUIRE_LINK,
                               _UNBIND})
_ESME_TX_RECEIVES = frozenset({_DATA_SM, _ENQUIRE_LINK, _UNBIND})
_SMSC_TX_RECEIVES = frozenset({_SUBMIT_SM, _DATA_SM, _QUERY_SM, _CANCEL_SM, _REPLACE_SM,
                               _SUBMIT_MULTI, _ENQUIRE_LINK, _UNBIND})
_SMSC_RX_SENDS = frozenset({_DELIVER_SM, _DATA_SM, _ALERT_NOTIFICATION, _ENQUIRE_LINK, _UNBIND})

#: (role, state) → request command ids this side may send. Absent: LocalProtocolError/NotBound.
MAY_SEND: Final[Mapping[tuple[Role, SessionState], frozenset[int]]] = {
    (Role.ESME, _OPEN): frozenset(_BINDS),
    (Role.ESME, _BOUND_TX): _ESME_TX_SENDS,
    (Role.ESME, _BOUND_RX): _ESME_RX_SENDS,
    (Role.ESME, _BOUND_TRX): _ESME_TX_SENDS | _ESME_RX_SENDS,
    # SMSC: outbind is a separate (rare) flow we do not offer; a bind is answered, not sent.
    (Role.SMSC, _BOUND_TX): frozenset({_DATA_SM, _ENQUIRE_LINK, _UNBIND}),
    (Role.SMSC, _BOUND_RX): _SMSC_RX_SENDS,
    (Role.SMSC, _BOUND_TRX): _SMSC_RX_SENDS,
}

#: (role, state) → request command ids this side may receive. A request the role receives in
#: some other state is a fatal violation here (answered with ESME_RINVBNDSTS, then closed); one the
#: role never receives, or an unknown id, is answered with generic_nack and the session goes on.
MAY_RECEIVE: Final[Mapping[tuple[Role, SessionState], frozenset[int]]] = {
    # Some SMSCs probe with enquire_link before answering the bind: tolerated.
    (Role.ESME, _OPEN): frozenset({_OUTBIND, _ENQUIRE_LINK}),
    (Role.ESME, _BINDING): frozenset({_ENQUIRE_LINK}),
    (Role.ESME, _BOUND_TX): _ESME_TX_RECEIVES,
    (Role.ESME, _BOUND_RX): _ESME_RX_RECEIVES,
    (Role.ESME, _BOUND_TRX): _ESME_RX_RECEIVES,
    # After our unbind the peer may still have deliveries in flight, or unbind at the same time.
    (Role.ESME, _UNBINDING): frozenset({_DELIVER_SM, _DATA_SM, _ENQUIRE_LINK, _UNBIND}),
    (Role.SMSC, _OPEN): frozenset(_BINDS | {_ENQUIRE_LINK}),
    (Role.SMSC, _BINDING): frozenset({_ENQUIRE_LINK}),
    (Role.SMSC, _BOUND_TX): _SMSC_TX_RECEIVES,
    (Role.SMSC, _BOUND_RX): frozenset({_DATA_SM, _ENQUIRE_LINK, _UNBIND}),
    (Role.SMSC, _BOUND_TRX): _SMSC_TX_RECEIVES,
    (Role.SMSC, _UNBINDING): frozenset({_SUBMIT_SM, _DATA_SM, _ENQUIRE_LINK, _UNBIND}),
}


def _union(role: Role, table: Mapping[tuple[Role, SessionState], frozenset[int]]) -> frozenset[int]:
    out: set[int] = set()
    for (r, _state), ids in table.items():
        if r is role:
            out |= ids
    return frozenset(out)


_EVER_RECEIVES: Final = {role: _union(role, MAY_RECEIVE) for role in Role}
_EVER_SENDS_BOUND: Final = {
    role: frozenset().union(*(MAY_SEND.get((role, s), frozenset()) for s in _BOUND_STATES))
    for role in Role
}

# --------------------------------------------------------------------------------------------
# Errors raised to the local caller (the peer's errors become events, never exceptions).
# --------------------------------------------------------------------------------------------


class LocalProtocolError(SmppError):
    """The caller asked for something SMPP forbids in the current state (a bug in the caller)."""

    def __init__(self, message: str, command_status: int = _ESME_RINVBNDSTS) -> None:
        Exception.__init__(self, message)
        self.command_status = command_status


class NotBound(LocalProtocolError):
    """The session is not bound for this request (not yet, not any more, or the wrong bind type).

    The pool picks another session or waits for the rebind.
    """


class WindowFull(SmppError):
    """Every slot of the window is taken by an outstanding request; retry after a response.

    A flow-control signal, not a fault: the pool tries another session.
    """

    def __init__(self, window_size: int) -> None:
        Exception.__init__(self, f"window of {window_size} outstanding requests is full")
        self.command_status = _ESME_ROK
        self.window_size = window_size


# --------------------------------------------------------------------------------------------
# Events: frozen values, no behaviour, named as facts.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every session event."""


@dataclass(frozen=True, slots=True)
class Bound(Event):
    """ESME: the bind was accepted. ``system_id`` is the SMSC's, from the bind response."""

    system_id: str


@dataclass(frozen=True, slots=True)
class BindFailed(Event):
    """ESME: the bind was refused (or nacked); ``Closed`` follows. Rebind with backoff."""

    command_status: int
    status_name: str


@dataclass(frozen=True, slots=True)
class BindRequested(Event):
    """SMSC: the peer asked to bind; answer with ``accept_bind(seq)`` or ``refuse_bind(seq, st)``."""

    seq: int
    pdu: Pdu


@dataclass(frozen=True, slots=True)
class OutbindReceived(Event):
    """ESME: the SMSC asked us to bind (outbind); the caller may call ``bind()``."""

    pdu: Pdu


@dataclass(frozen=True, slots=True)
class SubmitResponse(Event):
    """ESME: the answer to our submit_sm (submit_sm_resp, or generic_nack with its status)."""

    seq: int
    command_status: int
    message_id: str
    context: Any
    pdu: Pdu


@dataclass(frozen=True, slots=True)
class ResponseReceived(Event):
    """The answer to any other request of ours (deliver_sm_resp, data_sm_resp, query_sm_resp...)."""

    seq: int
    command_id: int
    command_status: int
    context: Any
    pdu: Pdu


@dataclass(frozen=True, slots=True)
class DeliverSmReceived(Event):
    """ESME: a deliver_sm (receipt or MO). Answer with ``respond(seq)`` once it is committed."""

    seq: int
    pdu: Pdu


@dataclass(frozen=True, slots=True)
class DataSmReceived(Event):
    """A data_sm from the peer. Answer with ``respond(seq, ...)``."""

    seq: int
    pdu: Pdu


@dataclass(frozen=True, slots=True)
class SubmitSmReceived(Event):
    """SMSC: a submit_sm. Answer with ``respond(seq, status, message_id=...)``."""

    seq: int
    pdu: Pdu


@dataclass(frozen=True, slots=True)
class RequestReceived(Event):
    """Any other legal request (query_sm, cancel_sm, alert_notification...); answer with
    ``respond(seq, status)`` unless it has no response in SMPP (alert_notification)."""

    seq: int
    pdu: Pdu


@dataclass(frozen=True, slots=True)
class RequestTimedOut(Event):
    """No response to our request within ``response_timeout_s``. Its window slot is free again;
    a response arriving later is ignored (and counted in ``late_responses``)."""

    seq: int
    command_id: int
    context: Any


@dataclass(frozen=True, slots=True)
class RequestFailed(Event):
    """Our request will never be answered: the session closed. The caller retries it elsewhere."""

    seq: int
    command_id: int
    context: Any
    reason: str


@dataclass(frozen=True, slots=True)
class LinkDead(Event):
    """Our enquire_link went unanswered; ``Closed`` follows. ``last_received`` is the ``now`` of
    the last bytes received from the peer."""

    last_received: float


@dataclass(frozen=True, slots=True)
class UnbindRequested(Event):
    """The peer sent unbind; the session answered it. ``Unbound`` and ``Closed`` follow."""

    seq: int


@dataclass(frozen=True, slots=True)
class Unbound(Event):
    """The bind ended cleanly: our unbind was answered, or we answered the peer's."""

    by_peer: bool


@dataclass(frozen=True, slots=True)
class ProtocolError(Event):
    """The peer broke the protocol. ``fatal``: the session closes (``Closed`` follows); otherwise
    the offending PDU was answered with generic_nack (or ignored) and the session goes on."""

    reason: str
    fatal: bool


@dataclass(frozen=True, slots=True)
class Closed(Event):
    """Terminal: the session is CLOSED; the driver closes the transport. Always the last event."""

    reason: str


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What one bind needs. The daemon builds it from a carrier's YAML; tests build it directly.

    ``system_id``/``password``/``system_type`` are sent by an ESME; an SMSC puts its ``system_id``
    in bind responses. Defaults follow CONTRACT.md's carrier defaults.
    """

    system_id: str = ""
    password: str = field(default="", repr=False)  # never in a log line
    system_type: str = ""
    bind_type: BindType = "transceiver"
    interface_version: int = 0x34
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""
    #: Outstanding message requests (submit_sm / deliver_sm / data_sm) before WindowFull.
    #: 10 is the contract's default and a common carrier limit.
    window: int = 10
    #: Per-request response deadline. Also bounds bind, unbind and enquire_link.
    response_timeout_s: float = 10.0
    #: Send enquire_link after this long without receiving anything; 0 disables it.
    enquire_link_s: float = 30.0
    #: Largest command_length accepted; above it framing is considered lost (pdu.FrameBuffer).
    max_pdu_length: int = 65536


class _Request:
    """One outstanding request of ours: the window entry, keyed by sequence number."""

    __slots__ = ("seq", "command_id", "context", "deadline", "windowed")

    def __init__(self, seq: int, command_id: int, context: Any, deadline: float,
                 windowed: bool) -> None:
        self.seq = seq
        self.command_id = command_id
        self.context = context
        self.deadline = deadline
        self.windowed = windowed


def _header_only(command_id: int, status: int, seq: int) -> bytes:
    """A PDU without a body (enquire_link(_resp), unbind(_resp), generic_nack)."""
    return _HEADER.pack(16, command_id, status, seq)


# --------------------------------------------------------------------------------------------
# The session
# --------------------------------------------------------------------------------------------


class Session:
    """One SMPP bind, either role. Not thread-safe; one driver calls it from one task.

    Every method that queues bytes says so: call ``data_to_send()`` afterwards. Methods that take
    peer input return events and never raise for anything the peer sent.
    """

    def __init__(self, config: SessionConfig, role: Role = Role.ESME, now: float = 0.0, *,
                 first_sequence: int = 1) -> None:
        """``first_sequence`` is the first number issued (tests use it to reach the wrap)."""
        if not 1 <= first_sequence <= MAX_SEQUENCE:
            raise ValueError("first_sequence must be in 1..0x7FFFFFFF")
        self.config = config
        self.role = role
        self._state = _OPEN
        self._frames = FrameBuffer(config.max_pdu_length)
        self._out: list[bytes] = []
        # Window: outstanding requests by sequence number, and a deque of the same entries in
        # send order for deadlines. The deque is pruned lazily (answered entries are skipped when
        # they reach its front) so a response costs one dict pop, not a deque search.
        self._outstanding: dict[int, _Request] = {}
        self._deadlines: deque[_Request] = deque()
        self._window_size = config.window
        self._window_used = 0
        self._seq = first_sequence - 1 if first_sequence > 1 else 0
        # Requests the peer sent that the caller has not answered: seq → command id.
        self._incoming: dict[int, int] = {}
        self._expired: dict[int, None] = {}
        self._last_rx = now
        self._enquire_seq: int | None = None
        self._response_timeout = config.response_timeout_s
        self._enquire_link_s = config.enquire_link_s
        self._may_receive_cache = MAY_RECEIVE.get((role, _OPEN), frozenset())
        #: The peer's system_id: from bind_resp (ESME) or the bind request (SMSC).
        self.peer_system_id: str = ""
        #: Responses to requests that had already timed out: ignored.
        self.late_responses = 0
        #: Responses matching no request of ours (or of the wrong type): ignored.
        self.unexpected_responses = 0

    # ---------------------------------------------------------------- properties

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def window_in_use(self) -> int:
        """Outstanding submit_sm / deliver_sm / data_sm requests."""
        return self._window_used

    @property
    def window_size(self) -> int:
        return self._window_size

    @window_size.setter
    def window_size(self, size: int) -> None:
        """Hot reload: a smaller window takes effect as outstanding requests drain."""
        if size < 1:
            raise ValueError("window_size must be at least 1")
        self._window_size = size

    @property
    def is_bound(self) -> bool:
        return self._state in _BOUND_STATES

    @property
    def can_submit(self) -> bool:
        """True when ``submit()`` (ESME) or ``deliver()`` (SMSC) would not raise."""
        cmd = _SUBMIT_SM if self.role is Role.ESME else _DELIVER_SM
        return (self._window_used < self._window_size
                and cmd in MAY_SEND.get((self.role, self._state), ()))

    @property
    def pending_incoming(self) -> int:
        """Requests received from the peer and not answered yet by ``respond()``."""
        return len(self._incoming)

    def outstanding(self) -> list[tuple[int, int, Any]]:
        """(seq, command_id, context) of every request of ours still waiting for a response."""
        return [(r.seq, r.command_id, r.context) for r in self._outstanding.values()]

    # ---------------------------------------------------------------- outputs

    def data_to_send(self) -> bytes:
        """Everything queued since the last call, as one buffer (one write on the socket)."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must run next (same clock as ``now``), or None for never."""
        if self._state is _CLOSED:
            return None
        q = self._deadlines
        out = self._outstanding
        while q and out.get(q[0].seq) is not q[0]:
            q.popleft()
        deadline = q[0].deadline if q else None
        if self._enquire_link_s > 0 and self._enquire_seq is None and self._state in _BOUND_STATES:
            due = self._last_rx + self._enquire_link_s
            if deadline is None or due < deadline:
                deadline = due
        return deadline

    # ---------------------------------------------------------------- local requests

    def bind(self, now: float) -> int:
        """ESME: queue the bind of ``config.bind_type``; returns its sequence number.

        Raises LocalProtocolError unless the state is OPEN. Queues bytes.
        """
        cfg = self.config
        command_id = _BIND_COMMAND[cfg.bind_type]
        self._check_send(command_id)
        seq = self._next_sequence()
        pdu = Pdu(command_id, seq, 0, {
            "system_id": cfg.system_id,
            "password": cfg.password,
            "system_type": cfg.system_type,
            "interface_version": cfg.interface_version,
            "addr_ton": cfg.addr_ton,
            "addr_npi": cfg.addr_npi,
            "address_range": cfg.address_range,
        }, {})
        self._out.append(_pdu.encode(pdu))
        self._track(seq, command_id, None, now, False)
        self._set_state(_BINDING)
        return seq

    def submit(self, pdu_or_fields: Pdu | Mapping[str, Any] | bytes, now: float,
               context: Any = None, *, tlvs: Mapping[str | int, Any] | None = None) -> int:
        """ESME: queue a submit_sm; returns its sequence number (set on the Pdu if one is given).

        ``pdu_or_fields`` is a submit_sm ``Pdu``, a mapping of its fields (plus ``tlvs``), or
        ``bytes``: an already encoded body (everything after the 16-octet header, e.g.
        ``encode(pdu)[16:]``), sent as it is under a fresh header. The bytes form lets a caller
        encode a part once and resend it under any sequence number, on any session.
        ``context`` comes back on the response, timeout or failure event for this request.
        Raises NotBound (not bound for transmit) or WindowFull, PduEncodeError for fields SMPP
        cannot carry. Queues bytes.
        """
        return self._send_windowed(_SUBMIT_SM, pdu_or_fields, now, context, tlvs)

    def deliver(self, pdu_or_fields: Pdu | Mapping[str, Any] | bytes, now: float,
                context: Any = None, *, tlvs: Mapping[str | int, Any] | None = None) -> int:
        """SMSC: queue a deliver_sm (receipt or MO); same forms and rules as ``submit``."""
        return self._send_windowed(_DELIVER_SM, pdu_or_fields, now, context, tlvs)

    def send_request(self, pdu: Pdu, now: float, context: Any = None) -> int:
        """Queue any request the state table allows (data_sm, enquire_link, unbind, query_sm...).

        The sequence number is assigned here and set on ``pdu``. Message requests take a window
        slot. Raises NotBound / LocalProtocolError / WindowFull. Queues bytes.
        """
        command_id = int(pdu.command_id)
        if command_id in _BINDS:
            raise LocalProtocolError("use bind() to bind")
        if command_id == _UNBIND:
            return self.unbind(now)
        if command_id in _WINDOWED:
            return self._send_windowed(command_id, pdu, now, context, None)
        self._check_send(command_id)
        seq = self._next_sequence()
        pdu.sequence_number = seq
        self._out.append(_pdu.encode(pdu))
        if command_id not in _NO_RESPONSE:
            self._track(seq, command_id, context, now, False)
            if command_id == _ENQUIRE_LINK:
                self._enquire_seq = seq
        return seq

    def unbind(self, now: float) -> int:
        """Queue unbind; the state becomes UNBINDING, then CLOSED on unbind_resp (or timeout).

        Requests still outstanding may be answered meanwhile; those that are not fail with
        ``RequestFailed`` when the session closes. Raises NotBound unless bound. Queues bytes.
        """
        self._check_send(_UNBIND)
        seq = self._next_sequence()
        self._out.append(_header_only(_UNBIND, 0, seq))
        self._track(seq, _UNBIND, None, now, False)
        self._set_state(_UNBINDING)
        return seq

    def respond(self, seq: int, status: int = 0, **fields: Any) -> bool:
        """Answer the peer's request ``seq`` (deliver_sm, data_sm, submit_sm, bind...).

        ``fields`` become the response body (``message_id=...``). Returns False when the session
        has closed meanwhile (the peer will redeliver; nothing to do). Raises LocalProtocolError
        for a sequence number with no unanswered request, PduEncodeError for a field SMPP cannot
        carry (the request then stays unanswered). Queues bytes.
        """
        if self._state is _CLOSED:
            return False
        incoming = self._incoming
        command_id = incoming.get(seq)
        if command_id is None:
            raise LocalProtocolError(f"no unanswered request with sequence number {seq}")
        # Hot paths first: the simulator answers every submit_sm, the gateway every deliver_sm.
        only_message_id = not fields or (len(fields) == 1 and "message_id" in fields)
        if command_id == _SUBMIT_SM and only_message_id:
            data = encode_submit_sm_resp(seq, fields.get("message_id", ""), status)
        elif command_id == _DELIVER_SM and only_message_id and not fields.get("message_id"):
            # deliver_sm_resp's only field, message_id, is unused (always NULL, SMPP 3.4 4.6.2).
            data = encode_deliver_sm_resp(seq, status)
        elif command_id in _BINDS:
            if status == 0:
                self.accept_bind(seq, **fields)
            else:
                self.refuse_bind(seq, status)
            return True
        else:
            resp_id = command_id | _RESPONSE_BIT
            if not fields and command_id in _HEADER_ONLY_RESPONSES:
                data = _header_only(resp_id, status, seq)
            else:
                data = _pdu.encode(Pdu(resp_id, seq, status, fields, {}))
        del incoming[seq]
        self._out.append(data)
        return True

    def accept_bind(self, seq: int, system_id: str | None = None) -> None:
        """SMSC: accept the pending bind ``seq``; the state becomes BOUND_*. Queues bytes."""
        command_id = self._pending_bind(seq)
        del self._incoming[seq]
        sid = self.config.system_id if system_id is None else system_id
        self._out.append(_pdu.encode(_pdu.bind_resp(command_id, seq, sid)))
        self._set_state(_BIND_TO_STATE[command_id])

    def refuse_bind(self, seq: int, status: int) -> None:
        """SMSC: refuse the pending bind ``seq`` with ``status`` (e.g. ESME_RINVPASWD = 0x0E).

        The state returns to OPEN: the peer may try again or close. Queues bytes.
        """
        if status == 0:
            raise ValueError("refuse_bind needs a non-zero command_status")
        command_id = self._pending_bind(seq)
        del self._incoming[seq]
        # A refused bind's response carries no body in practice (SMPP 3.4 §4.1.2: "system_id"
        # may be omitted on error); a header-only PDU is what smpplib and Kannel expect.
        self._out.append(_header_only(command_id | _RESPONSE_BIT, status, seq))
        self._set_state(_OPEN)

    # ---------------------------------------------------------------- peer input

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes from the peer; returns the events they caused. ``b""`` means EOF.

        Never raises for anything in ``data``. May queue bytes (automatic replies).
        """
        if self._state is _CLOSED:
            return []
        if not data:
            return self.connection_lost(now)
        self._last_rx = now
        events: list[Event] = []
        try:
            frames = self._frames.feed(data)
        except FramingError as exc:
            self._fatal(events, f"framing lost: {exc}")
            return events
        handle = self._handle_frame
        for frame in frames:
            handle(frame, now, events)
            if self._state is _CLOSED:
                return events
        # FrameBuffer hands out the good frames that preceded a bad header and keeps the error for
        # the next feed; surface it now so the close does not wait for more bytes.
        err = self._frames.error
        if err is not None:
            self._fatal(events, f"framing lost: {err}")
        return events

    def handle_timer(self, now: float) -> list[Event]:
        """Expire requests past their deadline and send enquire_link when the link is idle.

        Cheap when nothing is due: the driver may call it every loop iteration. Queues bytes.
        """
        events: list[Event] = []
        if self._state is _CLOSED:
            return events
        q = self._deadlines
        out = self._outstanding
        while q:
            req = q[0]
            if out.get(req.seq) is not req:
                q.popleft()
                continue
            if req.deadline > now:
                break
            q.popleft()
            del out[req.seq]
            if req.windowed:
                self._window_used -= 1
            self._remember_expired(req.seq)
            cmd = req.command_id
            if cmd == _ENQUIRE_LINK:
                self._enquire_seq = None
                events.append(LinkDead(self._last_rx))
                self._close(events, "link dead: enquire_link unanswered")
                return events
            events.append(RequestTimedOut(req.seq, cmd, req.context))
            if cmd in _BINDS:
                self._close(events, "bind timed out")
                return events
            if cmd == _UNBIND:
                self._close(events, "unbind timed out")
                return events
        if (self._enquire_link_s > 0 and self._enquire_seq is None
                and self._state in _BOUND_STATES
                and now >= self._last_rx + self._enquire_link_s):
            seq = self._next_sequence()
            self._out.append(_header_only(_ENQUIRE_LINK, 0, seq))
            self._track(seq, _ENQUIRE_LINK, None, now, False)
            self._enquire_seq = seq
        return events

    def connection_lost(self, now: float) -> list[Event]:
        """The transport is gone. Every outstanding request fails (``RequestFailed`` with its
        context), then ``Closed``. Returns [] when the session had already closed."""
        events: list[Event] = []
        if self._state is not _CLOSED:
            self._close(events, "connection lost")
        return events

    # ---------------------------------------------------------------- internals: sending

    def _check_send(self, command_id: int) -> None:
        if command_id not in MAY_SEND.get((self.role, self._state), ()):
            name = _command_name(command_id)
            if command_id in _EVER_SENDS_BOUND[self.role] and self._state not in _BOUND_STATES:
                raise NotBound(f"cannot send {name}: session is {self._state.value}")
            if self._state in _BOUND_STATES and command_id in _EVER_SENDS_BOUND[self.role]:
                raise NotBound(f"cannot send {name} when {self._state.value}")
            raise LocalProtocolError(
                f"{self.role.value} cannot send {name} in state {self._state.value}")

    def _send_windowed(self, command_id: int, pdu_or_fields: Pdu | Mapping[str, Any] | bytes,
                       now: float, context: Any, tlvs: Mapping[str | int, Any] | None) -> int:
        # Hot path: one table lookup, one window check, one encode, one dict insert.
        if command_id not in MAY_SEND.get((self.role, self._state), ()):
            self._check_send(command_id)
        if self._window_used >= self._window_size:
            raise WindowFull(self._window_size)
        seq = self._next_sequence()
        if pdu_or_fields.__class__ is bytes:
            body: bytes = pdu_or_fields  # type: ignore[assignment]
            data = _HEADER.pack(16 + len(body), command_id, 0, seq) + body
        elif isinstance(pdu_or_fields, Pdu):
            if int(pdu_or_fields.command_id) != command_id:
                raise LocalProtocolError(
                    f"expected a {_command_name(command_id)} PDU, got "
                    f"{_command_name(int(pdu_or_fields.command_id))}")
            pdu_or_fields.sequence_number = seq
            data = _pdu.encode(pdu_or_fields)
        else:
            data = _pdu.encode(Pdu(command_id, seq, 0, dict(pdu_or_fields),
                                   dict(tlvs) if tlvs else {}))
        self._out.append(data)
        self._track(seq, command_id, context, now, True)
        return seq

    def _track(self, seq: int, command_id: int, context: Any, now: float,
               windowed: bool) -> None:
        req = _Request(seq, command_id, context, now + self._response_timeout, windowed)
        self._outstanding[seq] = req
        self._deadlines.append(req)
        if windowed:
            self._window_used += 1

    def _next_sequence(self) -> int:
        seq = self._seq
        out = self._outstanding
        while True:
            seq = seq + 1 if seq < MAX_SEQUENCE else 1
            if seq not in out:
                self._seq = seq
                return seq

    def _pending_bind(self, seq: int) -> int:
        if self.role is not Role.SMSC:
            raise LocalProtocolError("only an SMSC answers binds")
        command_id = self._incoming.get(seq)
        if command_id is None or command_id not in _BINDS or self._state is not _BINDING:
            raise LocalProtocolError(f"no pending bind with sequence number {seq}")
        return command_id

    def _set_state(self, state: SessionState) -> None:
        self._state = state
        self._may_receive_cache = MAY_RECEIVE.get((self.role, state), frozenset())

    # ---------------------------------------------------------------- internals: receiving

    def _handle_frame(self, frame: bytes, now: float, events: list[Event]) -> None:
        command_id = int.from_bytes(frame[4:8], "big")
        if command_id & _RESPONSE_BIT:
            self._handle_response(command_id, frame, events)
        else:
            self._handle_request(command_id, frame, events)

    def _decode(self, frame: bytes, events: list[Event]) -> Pdu | None:
        """Decode one framed request. A bad body is answered (its *_resp with the error status, or
        generic_nack when it cannot be read at all: ``pdu.error_response``) and the session goes
        on, because the frame boundary is intact. Returns None then."""
        try:
            return _pdu.decode(frame)
        except PduDecodeError as exc:
            reply = error_response(exc)
            if reply is not None:
                self._out.append(_pdu.encode(reply))
            events.append(ProtocolError(
                f"undecodable {_command_name(exc.command_id)} seq {exc.sequence_number}: {exc}",
                False))
            return None
        except SmppError as exc:
            self._fatal(events, f"framing lost: {exc}")
            return None
        except Exception as exc:  # noqa: BLE001 - peer bytes must never crash the daemon
            # A codec bug, not a peer error: close rather than guess. The fuzz tests assert this
            # reason never appears, so a codec regression shows up there and not in production.
            self._fatal(events, f"internal decode error (bug): {type(exc).__name__}: {exc}")
            return None

    def _handle_request(self, command_id: int, frame: bytes, events: list[Event]) -> None:
        seq = int.from_bytes(frame[12:16], "big")
        if command_id not in self._may_receive_cache:
            name = _command_name(command_id)
            if command_id in _EVER_RECEIVES[self.role]:
                status = _ESME_RALYBND if command_id in _BINDS else _ESME_RINVBNDSTS
                if command_id not in _NO_RESPONSE:
                    self._out.append(_header_only(command_id | _RESPONSE_BIT, status, seq))
                self._fatal(events, f"peer sent {name} in state {self._state.value}")
            else:
                self._out.append(_header_only(_GENERIC_NACK, _ESME_RINVCMDID, seq))
                events.append(ProtocolError(f"unsupported command {name} (seq {seq})", False))
            return
        if command_id == _ENQUIRE_LINK:
            # Automatic; the body is empty by definition, so no decode.
            self._out.append(_header_only(_ENQUIRE_LINK | _RESPONSE_BIT, 0, seq))
            return
        if command_id == _UNBIND:
            self._out.append(_header_only(_UNBIND | _RESPONSE_BIT, 0, seq))
            events.append(UnbindRequested(seq))
            events.append(Unbound(True))
            self._close(events, "unbound by peer")
            return
        pdu = self._decode(frame, events)
        if pdu is None:
            return
        if command_id == _SUBMIT_SM:
            self._incoming[seq] = command_id
            events.append(SubmitSmReceived(seq, pdu))
        elif command_id == _DELIVER_SM:
            self._incoming[seq] = command_id
            events.append(DeliverSmReceived(seq, pdu))
        elif command_id == _DATA_SM:
            self._incoming[seq] = command_id
            events.append(DataSmReceived(seq, pdu))
        elif command_id in _BINDS:
            self._incoming[seq] = command_id
            self.peer_system_id = str(pdu.fields.get("system_id", ""))
            self._set_state(_BINDING)
            events.append(BindRequested(seq, pdu))
        elif command_id == _OUTBIND:
            events.append(OutbindReceived(pdu))
        else:
            if command_id not in _NO_RESPONSE:
                self._incoming[seq] = command_id
            events.append(RequestReceived(seq, pdu))

    def _handle_response(self, command_id: int, frame: bytes, events: list[Event]) -> None:
        seq = int.from_bytes(frame[12:16], "big")
        req = self._outstanding.get(seq)
        if req is None or (command_id != req.command_id | _RESPONSE_BIT
                           and command_id != _GENERIC_NACK):
            if seq in self._expired:
                self.late_responses += 1
            else:
                self.unexpected_responses += 1
                if command_id == _GENERIC_NACK:
                    status = int.from_bytes(frame[8:12], "big")
                    events.append(ProtocolError(
                        f"generic_nack {status_name(status)} for unknown seq {seq}", False))
            return
        del self._outstanding[seq]
        if req.windowed:
            self._window_used -= 1
        try:
            pdu = _pdu.decode(frame)
        except Exception as exc:  # noqa: BLE001 - a malformed response still answers the request
            # The header is intact (framing checked it), so the status and sequence number are
            # trustworthy; the body (e.g. an unterminated message_id) is not. Keep the answer,
            # with whatever the codec could read (PduDecodeError.pdu: mandatory part intact).
            partial = getattr(exc, "pdu", None)
            status = int.from_bytes(frame[8:12], "big")
            pdu = partial if isinstance(partial, Pdu) else Pdu(command_id, seq, status, {}, {})
            events.append(ProtocolError(f"malformed {_command_name(command_id)} seq {seq}: "
                                        f"{exc}", False))
        cmd = req.command_id
        status = pdu.command_status
        if cmd == _SUBMIT_SM:
            events.append(SubmitResponse(seq, status, str(pdu.fields.get("message_id", "")),
                                         req.context, pdu))
        elif cmd == _ENQUIRE_LINK:
            if self._enquire_seq == seq:
                self._enquire_seq = None
        elif cmd in _BINDS:
            if status == 0 and command_id != _GENERIC_NACK:
                self.peer_system_id = str(pdu.fields.get("system_id", ""))
                self._set_state(_BIND_TO_STATE[cmd])
                events.append(Bound(self.peer_system_id))
            else:
                name = status_name(status)
                events.append(BindFailed(status, name))
                self._close(events, f"bind refused: {name}")
        elif cmd == _UNBIND:
            events.append(Unbound(False))
            self._close(events, "unbound")
        else:
            events.append(ResponseReceived(seq, pdu.command_id, status, req.context, pdu))

    # ---------------------------------------------------------------- internals: closing

    def _remember_expired(self, seq: int) -> None:
        expired = self._expired
        expired[seq] = None
        if len(expired) > _EXPIRED_MEMORY:
            del expired[next(iter(expired))]

    def _fatal(self, events: list[Event], reason: str) -> None:
        events.append(ProtocolError(reason, True))
        self._close(events, reason)

    def _close(self, events: list[Event], reason: str) -> None:
        """Move to CLOSED: fail what is outstanding, forget what the caller can no longer answer."""
        for req in self._outstanding.values():
            if req.command_id in _INTERNAL:
                continue  # the session's own bookkeeping, not a request of the caller's
            events.append(RequestFailed(req.seq, req.command_id, req.context, reason))
        self._outstanding.clear()
        self._deadlines.clear()
        self._window_used = 0
        self._incoming.clear()
        self._enquire_seq = None
        self._set_state(_CLOSED)
        events.append(Closed(reason))
