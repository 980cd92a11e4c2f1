"""Hostile input: whatever a carrier or an MQTT client sends, the gateway answers or refuses it with
a protocol error and keeps working.

- PDU codec: bytes shaped like real PDUs with fuzzed TLV streams (the unit tests fuzz raw bytes,
  bodies behind valid headers and mutated PDUs); anything the decoder accepts survives a re-encode.
- SMPP session, both roles at once: an ESME and an SMSC session wired back to back, driven by
  hypothesis through random interleavings of binds, submits, deliveries, answers with any status,
  unbinds, timer ticks, partial transfers, valid-but-unexpected PDUs and junk bytes. Only the
  session's documented errors (SmppError subclasses) escape a local call, input never raises, each
  session ends with at most one `Closed` (its last event), the window accounting always matches,
  every byte a session writes is valid SMPP, and every request of ours is resolved exactly once.
- Submission parser: any bytes → a Submission, a Rejected with a specific reason, or an
  Unparseable routed exactly as an independent reading of CONTRACT.md says (tests/faults/hostile.py),
  and never through the parser's last-resort exception net.
- End to end with the real daemon, Mosquitto and the simulator: 1 MB payloads, 100,000 levels of
  nesting, invalid UTF-8, numbers with letters, 10,000-character texts, empty payloads, JSON that is
  not an object, wrong types for every field, and a hypothesis batch of random payloads: each gets
  its event or its `{prefix}/rejected` message, the daemon stays healthy and a valid message sent
  afterwards is delivered.

Bounded (a few hundred examples); SMSGW_SOAK=1 runs ten times more.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from gateway.model import RejectReason, Submission
from gateway.queue.submission import (
    MAX_TEXT_CHARS,
    RAW_CHARS,
    Rejected,
    Unparseable,
    parse_submission,
    raw_prefix,
)
from gateway.smpp import pdu as P
from gateway.smpp.pdu import CommandId, CommandStatus, FrameBuffer, Pdu, SmppError
from gateway.smpp.session import (
    BindRequested,
    Closed,
    DataSmReceived,
    DeliverSmReceived,
    Event,
    ProtocolError,
    RequestFailed,
    RequestReceived,
    RequestTimedOut,
    ResponseReceived,
    Role,
    Session,
    SessionConfig,
    SessionState,
    SubmitResponse,
    SubmitSmReceived,
)
from tests.faults.conftest import scaled
from tests.faults.hostile import expected_outcome, hostile_payloads, payloads
from tests.integration.conftest import (
    FINAL,
    GatewaySetup,
    Probe,
    full_numbers_in,
    healthz,
    http_get,
    until,
)

pytestmark = pytest.mark.faults

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)

# ================================================================================ PDU codec

_TLV_TAGS = [int(t) for t in P.TlvTag] + [0x0000, 0x1400, 0x3FFF, 0xFFFF]


@st.composite
def tlv_stream(draw: st.DrawFn) -> bytes:
    """A TLV stream that is well framed (tag, length, value) but holds any tag, known ones with
    any length and value, and sometimes a last TLV whose length overruns the PDU."""
    out = bytearray()
    for _ in range(draw(st.integers(0, 5))):
        tag = draw(st.sampled_from(_TLV_TAGS))
        value = draw(st.binary(max_size=24))
        out += struct.pack(">HH", tag, len(value)) + value
    if draw(st.integers(0, 9)) == 0:
        out += struct.pack(">HH", draw(st.sampled_from(_TLV_TAGS)), draw(st.integers(1, 0xFFFF)))
    return bytes(out)


_MANDATORY_PARTS = [
    P.encode(P.submit_sm(1, "8613800138000", b"hello", source_addr="Brand"))[16:],
    P.encode(P.deliver_sm(1, "8613800138000", "10690", b"id:ab12 stat:DELIVRD"))[16:],
    P.encode(P.data_sm(1, "1", "2"))[16:],
    P.encode(P.submit_sm_resp(1, "ab12"))[16:],
    P.encode(P.deliver_sm_resp(1))[16:],
    P.encode(P.data_sm_resp(1, "x"))[16:],
    P.encode(P.bind_resp(CommandId.BIND_TRANSCEIVER, 1, "smsc"))[16:],
    P.encode(P.bind_transceiver(1, "gw", "pw"))[16:],
]
_BODY_COMMANDS = [CommandId.SUBMIT_SM, CommandId.DELIVER_SM, CommandId.DATA_SM,
                  CommandId.SUBMIT_SM_RESP, CommandId.DELIVER_SM_RESP, CommandId.DATA_SM_RESP,
                  CommandId.BIND_TRANSCEIVER_RESP, CommandId.BIND_TRANSCEIVER]


@settings(max_examples=scaled(400, 4000), deadline=None)
@given(which=st.integers(0, len(_MANDATORY_PARTS) - 1), tlvs=tlv_stream(),
       seq=st.integers(0, 0xFFFF_FFFF), status=st.integers(0, 0xFFFF_FFFF))
def test_pdu_decoder_tlv_fuzz_accepts_only_what_survives_a_round_trip(
        which: int, tlvs: bytes, seq: int, status: int) -> None:
    body = _MANDATORY_PARTS[which] + tlvs
    frame = struct.pack(">IIII", 16 + len(body), _BODY_COMMANDS[which], status, seq) + body
    try:
        pdu = P.decode(frame)
    except P.PduDecodeError as exc:
        # RSYSERR would mean the decoder's own safety net caught a bug.
        assert exc.command_status != CommandStatus.ESME_RSYSERR, exc
        assert exc.sequence_number == seq
        P.error_response(exc)
        return
    assert (pdu.sequence_number, pdu.command_status) == (seq, status)
    try:
        again = P.encode(pdu)
    except P.PduEncodeError:
        return  # encoding may refuse what decoding tolerated (an over-long TLV), nothing else
    assert P.decode(again) == pdu, "decode(encode(decode(x))) differs from decode(x)"


# ========================================================================= the SMPP session

ESME_CFG = SessionConfig(system_id="gw", password="pw", window=4, response_timeout_s=5.0,
                         enquire_link_s=3.0)
SMSC_CFG = SessionConfig(system_id="smsc", window=4, response_timeout_s=5.0, enquire_link_s=3.0)
SUBMIT = {"destination_addr": "8613800138000", "source_addr": "Brand", "short_message": b"hi",
          "registered_delivery": 1}
DELIVER = {"source_addr": "8613800138000", "destination_addr": "10690",
           "short_message": b"id:1 stat:DELIVRD", "esm_class": 4}
#: Requests a side may try through send_request (the table decides whether it is allowed).
ESME_REQUESTS = [CommandId.QUERY_SM, CommandId.CANCEL_SM, CommandId.REPLACE_SM,
                 CommandId.DATA_SM, CommandId.ENQUIRE_LINK, CommandId.SUBMIT_MULTI]
SMSC_REQUESTS = [CommandId.DATA_SM, CommandId.ENQUIRE_LINK, CommandId.ALERT_NOTIFICATION]
_WINDOWED = {CommandId.SUBMIT_SM, CommandId.DELIVER_SM, CommandId.DATA_SM, CommandId.SUBMIT_MULTI}
_RESOLVING = (SubmitResponse, ResponseReceived, RequestTimedOut, RequestFailed)
_STATUSES = st.sampled_from([0, 0, 0, 0x08, 0x0D, 0x0E, 0x14, 0x58, 0x45, 0x400, 0xFFFF_FFFF])


def _request_pdu(command: CommandId) -> Pdu:
    fields: dict[str, Any] = {}
    if command == CommandId.SUBMIT_MULTI:
        fields = {"dest_addresses": [P.DestAddress(1, 1, 1, "8613800138000")]}
    elif command in (CommandId.QUERY_SM, CommandId.CANCEL_SM, CommandId.REPLACE_SM):
        fields = {"message_id": "ab12"}
    return Pdu(command, 0, 0, fields, {})


def _any_valid_pdu(command: CommandId, seq: int, status: int) -> bytes:
    """A well-formed PDU of any command, as a peer might send it at the wrong moment."""
    pdu = _request_pdu(command) if not command.is_response else Pdu(command, seq, status, {}, {})
    pdu.sequence_number = seq
    if not command.is_response:
        pdu.command_status = status
    if command in (CommandId.SUBMIT_SM, CommandId.DELIVER_SM):
        pdu.fields = dict(SUBMIT)
    return P.encode(pdu)


def _fields(cfg: SessionConfig) -> dict[str, Any]:
    return {name: getattr(cfg, name) for name in cfg.__slots__}  # type: ignore[attr-defined]


class _Side:
    """One session and everything the test knows about it."""

    def __init__(self, name: str, session: Session) -> None:
        self.name = name
        self.session = session
        self.closed = 0
        self.events: list[Event] = []
        self.contexts: dict[int, str] = {}  # context token → command it was sent with
        self.resolved: dict[int, int] = {}  # context token → how many resolutions
        self.unanswered: list[int] = []  # seqs of requests received and not answered yet
        self.pending_binds: list[int] = []

    def absorb(self, events: list[Event]) -> None:
        s = self.session
        if self.closed:
            assert events == [], f"{self.name}: events after Closed: {events}"
        for i, ev in enumerate(events):
            if isinstance(ev, ProtocolError | Closed):
                assert "internal decode error" not in ev.reason, ev
            if isinstance(ev, Closed):
                self.closed += 1
                assert i == len(events) - 1, f"{self.name}: Closed is not the last event: {events}"
            if isinstance(ev, _RESOLVING) and isinstance(ev.context, int):
                self.resolved[ev.context] = self.resolved.get(ev.context, 0) + 1
                assert self.resolved[ev.context] == 1, f"{self.name}: {ev} resolved twice"
            if isinstance(ev, SubmitSmReceived | DeliverSmReceived | DataSmReceived):
                self.unanswered.append(ev.seq)
            elif isinstance(ev, RequestReceived) and ev.pdu.command_id != CommandId.ALERT_NOTIFICATION:
                self.unanswered.append(ev.seq)
            elif isinstance(ev, BindRequested):
                self.pending_binds.append(ev.seq)
        self.events += events
        assert self.closed <= 1
        assert (s.state is SessionState.CLOSED) == (self.closed == 1), (s.state, self.closed)

    def check(self) -> None:
        s = self.session
        outstanding = s.outstanding()
        windowed = sum(1 for _seq, cmd, _ctx in outstanding if cmd in _WINDOWED)
        assert s.window_in_use == windowed, (s.window_in_use, outstanding)
        assert 0 <= s.window_in_use <= s.window_size
        if s.state is SessionState.CLOSED:
            assert outstanding == [] and s.pending_incoming == 0 and s.next_deadline() is None


class SessionPairMachine(RuleBasedStateMachine):
    """An ESME and an SMSC session back to back over two byte pipes the test controls."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.tokens = itertools.count(1)
        self.esme = _Side("esme", Session(ESME_CFG, Role.ESME, 0.0))
        self.smsc = _Side("smsc", Session(SMSC_CFG, Role.SMSC, 0.0))
        self.pipes: dict[str, bytearray] = {"esme": bytearray(), "smsc": bytearray()}  # to this side

    # -- plumbing --------------------------------------------------------------------------

    def side(self, name: str) -> _Side:
        return self.esme if name == "esme" else self.smsc

    def other(self, name: str) -> str:
        return "smsc" if name == "esme" else "esme"

    def collect(self, sender: _Side) -> None:
        """Move what `sender` queued into the pipe to its peer; it must be valid SMPP."""
        data = sender.session.data_to_send()
        if not data:
            return
        buf = FrameBuffer(1 << 20)
        frames = buf.feed(data)
        assert buf.buffered == 0 and buf.error is None, f"{sender.name} wrote a partial frame"
        for frame in frames:
            P.decode(frame)  # our own bytes always decode
        self.pipes[self.other(sender.name)] += data

    def local(self, who: _Side, call: Any, *args: Any, **kw: Any) -> Any:  # noqa: ANN401
        """A local API call: only the session's documented errors may escape."""
        try:
            result = call(*args, **kw)
        except SmppError:
            result = None
        self.collect(who)
        return result

    def deliver(self, to: str, n: int | None) -> None:
        pipe = self.pipes[to]
        if not pipe:
            return
        n = len(pipe) if n is None else min(n, len(pipe))
        chunk = bytes(pipe[:n])
        del pipe[:n]
        receiver = self.side(to)
        receiver.absorb(receiver.session.receive_data(chunk, self.now))
        self.collect(receiver)

    # -- rules -----------------------------------------------------------------------------

    @initialize(bind_type=st.sampled_from([None, "transceiver", "transceiver", "transmitter",
                                           "receiver"]))
    def start(self, bind_type: str | None) -> None:
        """Most runs start bound (of each type), so that the walk reaches the message traffic."""
        if bind_type is None:
            return
        self.esme.session.config = SessionConfig(**{**_fields(ESME_CFG), "bind_type": bind_type})
        self.esme_binds()
        self.pump()
        assert len(self.smsc.pending_binds) == 1
        self.smsc_answers_bind(True, 0)
        self.pump()
        assert self.esme.session.is_bound and self.smsc.session.is_bound

    @rule()
    def pump(self) -> None:
        """Both pipes delivered, back and forth, until quiet (a healthy network)."""
        for _ in range(4):
            self.deliver("smsc", None)
            self.deliver("esme", None)

    @rule()
    def esme_binds(self) -> None:
        self.local(self.esme, self.esme.session.bind, self.now)

    @precondition(lambda self: bool(self.smsc.pending_binds))
    @rule(accept=st.booleans(), status=st.sampled_from([0x0D, 0x0E, 0x0F, 0x58]))
    def smsc_answers_bind(self, accept: bool, status: int) -> None:
        seq = self.smsc.pending_binds.pop()
        if accept:
            self.local(self.smsc, self.smsc.session.accept_bind, seq)
        else:
            self.local(self.smsc, self.smsc.session.refuse_bind, seq, status)

    @rule(count=st.integers(1, 6))
    def esme_submits(self, count: int) -> None:
        for _ in range(count):
            token = next(self.tokens)
            if self.local(self.esme, self.esme.session.submit, SUBMIT, self.now, token) is not None:
                self.esme.contexts[token] = "submit_sm"

    @rule(count=st.integers(1, 4))
    def smsc_delivers(self, count: int) -> None:
        for _ in range(count):
            token = next(self.tokens)
            if self.local(self.smsc, self.smsc.session.deliver, DELIVER, self.now, token) is not None:
                self.smsc.contexts[token] = "deliver_sm"

    @rule(who=st.sampled_from(["esme", "smsc"]), data=st.data())
    def sends_other_request(self, who: str, data: st.DataObject) -> None:
        side = self.side(who)
        command = data.draw(st.sampled_from(ESME_REQUESTS if who == "esme" else SMSC_REQUESTS))
        tracked = command not in (CommandId.ENQUIRE_LINK, CommandId.ALERT_NOTIFICATION)
        token = next(self.tokens)
        seq = self.local(side, side.session.send_request, _request_pdu(command), self.now,
                         token if tracked else None)
        if seq is not None and tracked:
            side.contexts[token] = command.smpp_name

    @precondition(lambda self: bool(self.esme.unanswered or self.smsc.unanswered))
    @rule(data=st.data(), status=_STATUSES)
    def answers_a_request(self, data: st.DataObject, status: int) -> None:
        side = data.draw(st.sampled_from([s for s in (self.esme, self.smsc) if s.unanswered]))
        seq = side.unanswered.pop(data.draw(st.integers(0, len(side.unanswered) - 1)))
        kw = {"message_id": f"m{seq:x}"} if side is self.smsc else {}
        self.local(side, side.session.respond, seq, status, **kw)

    @rule(status=_STATUSES)
    def round_trip(self, status: int) -> None:
        """A healthy exchange: deliver, answer every request received (one status), deliver."""
        self.pump()
        for side in (self.smsc, self.esme):
            while side.unanswered:
                seq = side.unanswered.pop(0)
                kw = {"message_id": f"m{seq:x}"} if side is self.smsc else {}
                self.local(side, side.session.respond, seq, status, **kw)
        self.pump()

    @rule(who=st.sampled_from(["esme", "smsc"]), seq=st.integers(0, 40), status=_STATUSES)
    def answers_a_request_never_received(self, who: str, seq: int, status: int) -> None:
        side = self.side(who)
        if seq not in side.unanswered:
            self.local(side, side.session.respond, seq, status)

    @rule(who=st.sampled_from(["esme", "smsc"]))
    def unbinds(self, who: str) -> None:
        side = self.side(who)
        self.local(side, side.session.unbind, self.now)

    @rule(to=st.sampled_from(["esme", "smsc"]), n=st.one_of(st.none(), st.integers(1, 40)))
    def transfers(self, to: str, n: int | None) -> None:
        self.deliver(to, n)

    @rule(dt=st.sampled_from([0.05, 0.1, 0.5, 1.0, 3.5, 6.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        for side in (self.esme, self.smsc):
            side.absorb(side.session.handle_timer(self.now))
            self.collect(side)

    @rule(to=st.sampled_from(["esme", "smsc"]), data=st.data())
    def peer_sends_valid_but_unexpected_pdu(self, to: str, data: st.DataObject) -> None:
        """Any command, answering a live sequence number or a random one, with any status."""
        command = data.draw(st.sampled_from(list(CommandId)))
        live = [seq for seq, _c, _x in self.side(self.other(to)).session.outstanding()]
        seq = data.draw(st.sampled_from(live) if live and data.draw(st.booleans())
                        else st.integers(0, 0x7FFF_FFFF))
        self.pipes[to] += _any_valid_pdu(command, seq, data.draw(_STATUSES))

    @rule(to=st.sampled_from(["esme", "smsc"]), junk=st.binary(min_size=1, max_size=40),
          rare=st.integers(0, 3))
    def peer_sends_junk(self, to: str, junk: bytes, rare: int) -> None:
        """Random bytes (rarely: they usually end the session, and with it the walk)."""
        if rare == 0:
            self.pipes[to] += junk

    @rule(to=st.sampled_from(["esme", "smsc"]), rare=st.integers(0, 3))
    def transport_lost(self, to: str, rare: int) -> None:
        if rare:
            return
        side = self.side(to)
        side.absorb(side.session.connection_lost(self.now))
        self.collect(side)

    # -- invariants and the end ------------------------------------------------------------

    @invariant()
    def accounting_holds(self) -> None:
        self.esme.check()
        self.smsc.check()

    def teardown(self) -> None:
        """Deliver what is left, then the transport goes: every request of ours was resolved
        exactly once (answered, timed out or failed), and `Closed` came exactly once."""
        for to in ("esme", "smsc", "esme", "smsc"):
            self.deliver(to, None)
        for side in (self.esme, self.smsc):
            side.absorb(side.session.connection_lost(self.now))
            side.absorb(side.session.receive_data(b"", self.now))  # EOF after close: nothing
            assert side.closed == 1
            unresolved = [t for t in side.contexts if side.resolved.get(t) != 1]
            assert not unresolved, f"{side.name}: requests never resolved: {unresolved}"
            unknown = set(side.resolved) - set(side.contexts)
            assert not unknown, f"{side.name}: resolutions for requests never sent: {unknown}"


SessionPairMachine.TestCase.settings = settings(
    max_examples=scaled(300, 3000), stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_session_pair_under_random_interleavings = SessionPairMachine.TestCase


@settings(max_examples=scaled(200, 2000), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(role=st.sampled_from(Role), bound=st.booleans(),
       chunks=st.lists(st.one_of(
           st.binary(max_size=60),
           st.builds(_any_valid_pdu, st.sampled_from(list(CommandId)),
                     st.integers(0, 0xFFFF_FFFF), _STATUSES)),
           min_size=1, max_size=12))
def test_session_stream_of_unexpected_pdus_and_bytes(role: Role, bound: bool,
                                                     chunks: list[bytes]) -> None:
    """Streams mixing valid PDUs of any command (any sequence number and status) with random
    bytes, fed to either role, bound or not: events only, one Closed at most, the last."""
    me = Session(ESME_CFG if role is Role.ESME else SMSC_CFG, role, 0.0)
    side = _Side(role.value, me)
    if bound:
        esme, smsc = (me, Session(SMSC_CFG, Role.SMSC)) if role is Role.ESME else (
            Session(ESME_CFG, Role.ESME), me)
        esme.bind(0.0)
        (req,) = smsc.receive_data(esme.data_to_send(), 0.0)
        smsc.accept_bind(req.seq)  # type: ignore[attr-defined]
        esme.receive_data(smsc.data_to_send(), 0.0)
        me.data_to_send()
        if role is Role.ESME:
            for i in range(3):
                me.submit(SUBMIT, 0.0, 1000 + i)
                side.contexts[1000 + i] = "submit_sm"
        else:
            me.deliver(DELIVER, 0.0, 1000)
            side.contexts[1000] = "deliver_sm"
        me.data_to_send()
    for i, chunk in enumerate(chunks):
        side.absorb(me.receive_data(chunk, float(i)))
        side.check()
        out = me.data_to_send()
        for frame in FrameBuffer(1 << 20).feed(out):
            P.decode(frame)
    side.absorb(me.handle_timer(100.0))
    side.absorb(me.connection_lost(100.0))
    assert side.closed == 1
    assert all(side.resolved.get(t) == 1 for t in side.contexts), side.resolved


# ======================================================================= submission parser

_SAFETY_NET = "payload could not be processed"
_SPECIFIC_REASONS = {r for r in RejectReason} - {RejectReason.INVALID_JSON, RejectReason.INVALID_ID}


def check_parse(payload: bytes) -> None:
    """One payload: the right kind of decision, a specific reason, never the safety net."""
    result = parse_submission(payload, now=NOW)
    expected = expected_outcome(payload)
    if expected.id is None:
        assert isinstance(result, Unparseable), (payload[:200], result)
        assert result.reason.value == expected.reason, (payload[:200], result)
        assert result.raw == raw_prefix(payload) and len(result.raw) <= RAW_CHARS
    else:
        assert isinstance(result, Submission | Rejected), (payload[:200], result)
        assert result.id == expected.id
        if isinstance(result, Rejected):
            assert result.rejection.reason in _SPECIFIC_REASONS, result
            assert result.rejection.detail and len(result.rejection.detail) < 300
        else:
            assert result.to.startswith("+") and result.to[1:].isdigit()
            assert result.text.strip() and len(result.text) <= MAX_TEXT_CHARS
    if isinstance(result, Unparseable):
        assert _SAFETY_NET not in result.detail, result.detail
        assert len(result.detail) < 300
    assert parse_submission(payload, now=NOW) == result  # deterministic


@settings(max_examples=scaled(500, 5000), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads())
def test_submission_parser_routes_every_payload_as_the_contract_says(payload: bytes) -> None:
    check_parse(payload)


@pytest.mark.parametrize("name", sorted(hostile_payloads("p")))
def test_submission_parser_on_each_hostile_payload(name: str) -> None:
    case = hostile_payloads("p")[name]
    check_parse(case.payload)
    result = parse_submission(case.payload, now=NOW)
    if case.event is None:
        assert isinstance(result, Unparseable) and result.reason.value == case.reason, result
    elif case.event == "rejected":
        assert isinstance(result, Rejected) and result.rejection.reason.value == case.reason, result
    else:
        assert isinstance(result, Submission), result


# ============================================================ end to end, the real daemon

#: Statuses after which a message needs nothing more from this test.
SETTLED = FINAL | {"deferred"}


async def start_daemon(s: GatewaySetup) -> None:
    """Carrier alpha (the simulator) for every number; the daemon as a subprocess."""
    s.add_carrier("alpha")
    s.route("", "alpha")
    await s.start_sim("alpha")
    s.spawn_daemon()
    await s.wait_daemon_ready(status=200)


async def publish_raw(p: Probe, payloads: list[bytes]) -> None:
    """Each payload as it is (no JSON encoding), QoS 1, on `{prefix}/submit`."""
    assert p.client is not None
    topic = f"{p.prefix}/submit"
    for i in range(0, len(payloads), 100):
        await asyncio.gather(*(p.client.publish(topic, payload, qos=1)
                               for payload in payloads[i:i + 100]))


async def wait_answers(s: GatewaySetup, p: Probe, ids: list[str],
                       unparseable: list[tuple[str, str]], timeout: float = 30) -> None:
    """Until every id has settled (with at most one final event) and `{prefix}/rejected` holds
    one message per unparseable payload: the same (reason, raw) pairs, no more, no fewer."""
    await s.wait_status(p, ids, SETTLED, timeout)
    await until(lambda: len(p.rejected) >= len(unparseable), timeout,
                f"{len(unparseable)} messages on sms/rejected (have {len(p.rejected)})")
    await asyncio.sleep(0.5)  # room for a wrong extra one
    finals = {i: sum(e["status"] in FINAL for e in p.events[i]) for i in ids}
    assert all(n <= 1 for n in finals.values()), {i: p.statuses(i) for i, n in finals.items() if n > 1}
    got = sorted((r["reason"], r["raw"]) for r in p.rejected)
    assert got == sorted(unparseable)
    for r in p.rejected:
        assert r["detail"] and r["at"] and len(r["raw"]) <= RAW_CHARS


async def assert_still_serving(s: GatewaySetup, p: Probe, tag: str) -> None:
    """The daemon process lives, /healthz says 200, a valid message is delivered, and its log
    holds no crash, no traceback and no full number."""
    assert s.daemon is not None and s.daemon.poll() is None, s.daemon_log()
    assert await healthz(s.http_port) == 200
    await p.send(f"{tag}-after", "+8613800138000", "still working")
    await s.wait_status(p, [f"{tag}-after"], FINAL, 20)
    assert p.final(f"{tag}-after")["status"] == "delivered", p.events[f"{tag}-after"]
    log = s.daemon_log(10**7)
    for bad in ("Traceback", "task_crashed", "internal error", "could not be processed"):
        assert bad not in log, log[-3000:]
    assert not full_numbers_in(log), full_numbers_in(log)[:5]


async def test_hostile_payloads_end_to_end(sqlite_setup: GatewaySetup) -> None:
    """Every hand-made hostile payload gets its answer through the real daemon and Mosquitto."""
    s = sqlite_setup
    await start_daemon(s)
    cases = hostile_payloads("e2e")
    async with s.probe() as p:
        await publish_raw(p, [c.payload for c in cases.values()])
        ids = [f"e2e-{name}" for name, c in cases.items() if c.event is not None]
        unparseable = [(c.reason, raw_prefix(c.payload)) for c in cases.values() if c.event is None]
        await wait_answers(s, p, ids, unparseable)  # type: ignore[arg-type]
        for name, case in cases.items():
            if case.event is None:
                continue
            final = p.final(f"e2e-{name}")
            assert final is not None and final["status"] == case.event, (name, p.events[f"e2e-{name}"])
            if case.event == "rejected":
                assert final["reason"] == case.reason and final["detail"], (name, final)
                assert p.statuses(f"e2e-{name}") == ["rejected"], name  # never accepted first
        status, body = await http_get(s.http_port, "/metrics")
        assert status == 200 and b'status="rejected"' in body, body[:2000]
        await assert_still_serving(s, p, "e2e")


def _generated_batch(size: int) -> list[bytes]:
    """`size` payloads drawn by hypothesis, with distinct usable ids (a repeated id would be
    answered as a repeat: correct, but not attributable to one payload)."""
    batch: list[bytes] = []
    seen: set[str] = set()

    @settings(max_examples=size * 3, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(payload=payloads(id_prefix="g"))
    def collect(payload: bytes) -> None:
        expected = expected_outcome(payload)
        if len(batch) >= size or (expected.id is not None and expected.id in seen):
            return
        if expected.id is not None:
            seen.add(expected.id)
        batch.append(payload)

    collect()
    return batch


async def test_generated_payloads_end_to_end(sqlite_setup: GatewaySetup) -> None:
    """A hypothesis batch of random payloads: each id settles (rejected with a specific reason,
    or accepted and then final or deferred), each payload without one gets its /rejected."""
    s = sqlite_setup
    batch = _generated_batch(scaled(300, 3000))
    await start_daemon(s)
    async with s.probe() as p:
        await publish_raw(p, batch)
        expected = [expected_outcome(b) for b in batch]
        ids = [e.id for e in expected if e.id is not None]
        unparseable = [(e.reason, raw_prefix(b)) for e, b in zip(expected, batch) if e.id is None]
        await wait_answers(s, p, ids, unparseable, timeout=scaled(30, 120))  # type: ignore[arg-type]
        reasons: dict[str, int] = {}
        for msg_id in ids:
            events = p.events[msg_id]
            first = events[0]
            if first["status"] == "rejected":
                assert first["reason"] in {r.value for r in _SPECIFIC_REASONS}, first
                assert len(events) == 1, events
                reasons[first["reason"]] = reasons.get(first["reason"], 0) + 1
            else:
                assert first["status"] == "accepted", events
        # The batch really was mixed: some of each kind of answer.
        accepted = sum(1 for i in ids if p.statuses(i)[0] == "accepted")
        assert accepted and reasons and unparseable, (accepted, reasons, len(unparseable))
        await assert_still_serving(s, p, "gen")
