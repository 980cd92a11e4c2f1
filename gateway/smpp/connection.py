"""The asyncio driver around one SMPP ``Session`` (ESME role): connect, bind, keep alive, rebind.

A ``Connection`` is one *bind slot* of a carrier. It outlives TCP connections: every connect gets
a fresh ``Session`` and a fresh ``_Link`` (the ``asyncio.Protocol`` of that one transport), so a
late callback from a dead transport can never touch the next one. The dispatcher keeps references
to ``Connection`` objects (``CarrierPool.pick()`` returns them) and calls ``submit()`` /
``respond()``; everything the session says comes back through ``on_event(conn, event)``, called
synchronously from ``data_received`` / the timer, in the order the session produced it.

How the driver works (after aioquic's ``asyncio/protocol.py``, research/style-anchors.md 1.2):

* ``data_received`` feeds ``session.receive_data(data, loop.time())`` and hands each event to the
  callback. It never writes: anything queued (automatic replies, ``submit()``/``respond()`` made
  by the callback or by the dispatcher's task) is written by ``_flush``, scheduled once with
  ``loop.call_soon`` when the first bytes are queued in a loop iteration. So a window full of
  submit_sm and deliver_sm_resp leaves in ONE ``transport.write`` per iteration, not one syscall
  (and, with Nagle on, one delayed-ACK stall) per PDU.
* The timer is re-armed at ``session.next_deadline()`` after each flush. Re-arming is lazy: the
  ``TimerHandle`` is replaced only when the new deadline is *earlier* than the armed one. Deadlines
  mostly move later (each response removes the oldest request, each received byte pushes the
  enquire_link due time), and an early wake-up costs one cheap ``handle_timer``; creating a
  ``TimerHandle`` per response would cost more than the rest of the hot path.
* TCP_NODELAY on every socket. Issue 2: Kannel and Jasmin leave Nagle on, and a window of
  receipts then stalls each small write for the peer's ~40 ms delayed ACK. bench/bench_bind.py
  reproduces it: one write per PDU with Nagle on gives 2,230 submit_sm/s at 43 ms median response
  latency (Kannel's ~2,300); TCP_NODELAY alone, or the one-write-per-iteration flush alone, gives
  ~40,000/s. We keep both: the flush cannot coalesce what a single loop iteration does not produce
  (a lone respond() after a commit, a lone submit at low load), and those are exactly the writes
  Nagle would hold behind an unacknowledged one.
* Any loss ends in one place, ``_link_lost``; a supervisor task (``_run``) then waits out the
  backoff (``Backoff``: exponential with jitter, reset only after a bind that stayed up) and the
  carrier-wide bind rate limit (``BindLimiter``, at most 2 attempts a second, shared by the pool),
  and connects again. The bind itself is bounded by the session's response timeout, the TCP
  connect by ``connect_timeout_s``.
* Peer bytes never raise out of here: the session turns them into events (at worst
  ``ProtocolError(fatal=True)`` then ``Closed``), the driver logs the reason and closes the
  transport, the supervisor rebinds. An exception from the caller's callback is logged and
  swallowed, so a dispatcher bug cannot take a bind down with it.

The pure policy objects ``Backoff`` and ``BindLimiter`` live here too, and are unit-tested without
a loop (tests/unit/test_backoff.py).
"""

from __future__ import annotations

import asyncio
import random as _random
import socket
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

from gateway.config import CarrierConfig, TlsOptions
from gateway.log import get_logger
from gateway.smpp.pdu import CommandId, Pdu, SmppError
from gateway.smpp.session import (
    BindFailed,
    BindType,
    Bound,
    Closed,
    Event,
    LinkDead,
    NotBound,
    ProtocolError,
    RequestTimedOut,
    Role,
    Session,
    SessionConfig,
    SessionState,
    Unbound,
    WindowFull,
)

__all__ = [
    "Backoff",
    "BindLimiter",
    "Connection",
    "EventCallback",
    "NotBound",
    "WindowFull",
    "session_config",
    "ssl_context",
]

log = get_logger("gateway.smpp.connection")

#: ``on_event(conn, event)``: called synchronously for every session event, in order.
EventCallback = Callable[["Connection", Event], None]

#: A bind that stayed up this long is "healthy": its loss resets the backoff to ``reconnect_s``.
#: Shorter-lived binds are flaps (a carrier that accepts and then drops at once, or unbinds us
#: right after binding); resetting on them would turn a sick carrier into a reconnect storm.
STABLE_AFTER_S: Final = 10.0
#: CONTRACT.md: "never more than 2 bind attempts a second" per carrier.
BIND_ATTEMPTS_PER_S: Final = 2.0
#: Attempts are spaced 5 % more than 1 / rate: the carrier counts them when they arrive, and
#: exact spacing let it see 3 in 0.995 s whenever one connect travelled a few ms faster than
#: the one two before (measured at a simulator; tests/faults/test_carrier_faults.py).
BIND_SPACING_MARGIN: Final = 0.05
#: How long ``close()`` waits for the unbind_resp after sending unbind. Short: by then the
#: outstanding responses have been waited for, and a carrier that ignores unbind must not hold
#: up a shutdown (systemd's stop timeout is counting).
UNBIND_WAIT_S: Final = 1.0

_CLOSED: Final = SessionState.CLOSED
#: Events the driver looks at itself (logs, backoff, close) before passing them on.
_LIFECYCLE: Final = frozenset({Bound, BindFailed, Closed, LinkDead, ProtocolError, Unbound,
                               RequestTimedOut})
#: The session's own requests: their timeouts are reported as ``Closed(reason)``, so the
#: ``RequestTimedOut`` the session also emits for them is not passed on (the dispatcher would
#: only have to recognise and drop an event with no context of its own).
_OWN_REQUESTS: Final = frozenset({int(CommandId.BIND_TRANSCEIVER), int(CommandId.BIND_TRANSMITTER),
                                  int(CommandId.BIND_RECEIVER), int(CommandId.UNBIND)})


# --------------------------------------------------------------------------------------------
# Pure policy: backoff and the bind rate limit
# --------------------------------------------------------------------------------------------


class Backoff:
    """Delay before the next connect attempt of one bind slot. Pure: times are passed in.

    * The first delay after a loss is ``initial`` (``reconnect_s``), then it doubles up to
      ``maximum`` (``reconnect_max_s``).
    * Jitter shortens each delay by up to ``jitter`` (a share, default 25 %): the binds of a carrier
      (and of several gateways) lost at the same instant then come back spread out, while each
      delay stays within the configured bounds and, because 2 × 0.75 > 1, strictly above the
      previous one until the cap.
    * The level resets only when the lost bind had stayed up ``stable_after`` seconds, or when we
      ended it ourselves cleanly (``reset()``). A carrier that accepts and drops at once keeps
      climbing to ``maximum``: no storm.
    """

    __slots__ = ("initial", "maximum", "jitter", "stable_after", "_random", "_level", "_bound_at")

    def __init__(self, initial: float, maximum: float, *, jitter: float = 0.25,
                 stable_after: float = STABLE_AFTER_S,
                 random: Callable[[], float] = _random.random) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("need 0 < initial <= maximum")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.stable_after = stable_after
        self._random = random
        self._level = 0  # failures since the last reset: the delay is initial * 2**(level-1)
        self._bound_at: float | None = None

    @property
    def level(self) -> int:
        """Consecutive failed (or short-lived) attempts since the last reset."""
        return self._level

    def bound(self, now: float) -> None:
        """A bind came up at ``now``."""
        self._bound_at = now

    def reset(self) -> None:
        """Back to the first delay (our own clean unbind, or new settings)."""
        self._level = 0
        self._bound_at = None

    def failed(self, now: float) -> float:
        """The connection (or the attempt) ended at ``now``: the delay before the next attempt."""
        if self._bound_at is not None and now - self._bound_at >= self.stable_after:
            self._level = 0
        self._bound_at = None
        self._level += 1
        # min() before the power: a carrier down for a week must not overflow a float.
        base = min(self.maximum, self.initial * 2.0 ** min(self._level - 1, 64))
        return base * (1.0 - self.jitter * self._random())

    def configure(self, initial: float, maximum: float) -> None:
        """Hot reload of ``reconnect_s`` / ``reconnect_max_s``; the current level is kept."""
        if initial <= 0 or maximum < initial:
            raise ValueError("need 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum


class BindLimiter:
    """At most ``rate`` connect/bind attempts a second, shared by every bind slot of a carrier.

    Attempts are spaced at least ``1 / rate`` apart (plus ``BIND_SPACING_MARGIN``), measured on the times they are actually
    made: ``acquire(now)`` takes the slot and returns 0 when the last attempt is far enough in the
    past, else the seconds to wait before asking again. Spacing (rather than a bucket with a burst)
    is what makes "never more than 2 in any second" hold for every window of one second, and
    measuring from the actual start (not a booked time) keeps it true when the loop is late.
    """

    __slots__ = ("interval", "_last")

    def __init__(self, rate: float = BIND_ATTEMPTS_PER_S) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.interval = (1.0 + BIND_SPACING_MARGIN) / rate
        self._last = float("-inf")

    def acquire(self, now: float) -> float:
        """0.0 and the slot is taken (the attempt starts at ``now``); or the wait before retrying."""
        wait = self._last + self.interval - now
        if wait > 0:
            return wait
        self._last = now
        return 0.0


# --------------------------------------------------------------------------------------------
# Config helpers
# --------------------------------------------------------------------------------------------


def session_config(carrier: CarrierConfig, bind_type: BindType = "transceiver") -> SessionConfig:
    """The ``SessionConfig`` of one bind of ``carrier`` (the password resolved here, kept nowhere
    else in this module)."""
    return SessionConfig(
        system_id=carrier.system_id,
        password=carrier.password.get(),
        system_type=carrier.system_type,
        bind_type=bind_type,
        address_range=carrier.address_range,
        window=carrier.window,
        response_timeout_s=carrier.response_timeout_s,
        enquire_link_s=carrier.enquire_link_s,
        max_pdu_length=carrier.max_pdu_size,
    )


def ssl_context(tls: TlsOptions | None) -> ssl.SSLContext | None:
    """Client TLS context from the carrier's ``tls`` options (None: plain TCP)."""
    if tls is None:
        return None
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if tls.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --------------------------------------------------------------------------------------------
# The per-transport protocol
# --------------------------------------------------------------------------------------------


class _Link(asyncio.Protocol):
    """The protocol of ONE transport. Forwards to its Connection while it is the current link;
    a stale link (a transport torn down after a newer one started) only resolves ``lost``."""

    __slots__ = ("conn", "transport", "lost")

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        #: Resolved by connection_lost: the supervisor waits on it.
        self.lost: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn._link_made(self, transport)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn._link is self:
            conn._data_received(data)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.conn._link_lost(self, exc)
        finally:
            if not self.lost.done():
                self.lost.set_result(None)


# --------------------------------------------------------------------------------------------
# The connection
# --------------------------------------------------------------------------------------------


class Connection:
    """One bind of a carrier, kept up until ``close()``.

    Dispatcher API (all synchronous unless marked async; never call from another thread):

    * ``submit(pdu_or_fields, context=None, *, tlvs=None) -> seq``: queue a submit_sm; raises
      ``WindowFull`` (no free slot) or ``NotBound`` (not bound for transmit, rebinding, closing).
      Its ``SubmitResponse`` / ``RequestTimedOut`` / ``RequestFailed`` event carries ``context``.
    * ``respond(seq, status=0, *, generation=None) -> bool``: answer a ``DeliverSmReceived`` /
      ``DataSmReceived`` (after the receipt is committed). Pass the ``generation`` read when the
      event arrived: sequence numbers restart with every bind, so an answer meant for a session
      that has died must not acknowledge another deliver_sm of the next one. Returns False when
      that session is gone (the carrier redelivers), raises ``LocalProtocolError`` for a sequence
      number with no unanswered request.
    * properties ``can_submit``, ``is_bound``, ``window_in_use``, ``window_size``, ``generation``.
    * ``async close(timeout)``: graceful shutdown.
    """

    def __init__(
        self,
        carrier: CarrierConfig,
        on_event: EventCallback,
        *,
        bind_type: BindType = "transceiver",
        index: int = 0,
        limiter: BindLimiter | None = None,
        backoff: Backoff | None = None,
        nodelay: bool = True,
    ) -> None:
        """``index`` numbers the binds of a carrier (for logs); ``limiter`` is shared by the pool
        (a private one otherwise); ``nodelay=False`` exists only for the benchmark."""
        self.carrier = carrier
        self.name = carrier.name
        self.index = index
        self.bind_type: BindType = bind_type
        self.on_event = on_event
        self.nodelay = nodelay
        self.limiter = limiter if limiter is not None else BindLimiter()
        self.backoff = backoff if backoff is not None else Backoff(
            carrier.reconnect_s, carrier.reconnect_max_s)
        self._session_config = session_config(carrier, bind_type)
        self._ssl = ssl_context(carrier.tls)
        self._server_hostname = (carrier.tls.server_hostname or carrier.host
                                 if carrier.tls is not None else None)
        # The current session. Before the first connect, a closed placeholder, so the hot
        # properties need no None checks.
        self._session = Session(self._session_config, Role.ESME)
        self._session.connection_lost(0.0)  # OPEN → CLOSED: a never-connected placeholder
        self._link: _Link | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._last_up_s: float | None = None
        self._drained: asyncio.Future[None] | None = None
        self._closing = False
        self._close_reason = ""
        self._bound_at: float | None = None
        self._window = carrier.window
        #: Increases with every TCP connection: pass it back to ``respond()``.
        self.generation = 0
        #: Connect attempts made (each TCP connect, whether or not it got as far as a bind).
        self.bind_attempts = 0
        #: loop.time() of the most recent attempts (for /status and the backoff tests).
        self.attempt_times: deque[float] = deque(maxlen=32)
        #: Why the last connection ended ("" while it never has).
        self.last_error = ""

    # ---------------------------------------------------------------- state

    def __repr__(self) -> str:
        return (f"<Connection {self.label} {self._session.state.value} "
                f"window {self._session.window_in_use}/{self._session.window_size}>")

    @property
    def label(self) -> str:
        """``alpha#0/transceiver``: carrier, bind index and type, for logs."""
        return f"{self.name}#{self.index}/{self.bind_type}"

    @property
    def session(self) -> Session:
        """The current session (a new one after every reconnect). Read-only use, please."""
        return self._session

    @property
    def state(self) -> SessionState:
        return self._session.state

    @property
    def is_bound(self) -> bool:
        return self._session.is_bound

    @property
    def transmits(self) -> bool:
        """This bind type carries submit_sm (transceiver or transmitter)."""
        return self.bind_type != "receiver"

    @property
    def can_submit(self) -> bool:
        """Bound for transmit, not closing, and a window slot free."""
        return not self._closing and self._session.can_submit

    @property
    def window_in_use(self) -> int:
        return self._session.window_in_use

    @property
    def window_size(self) -> int:
        return self._window

    @property
    def bound_since(self) -> float | None:
        """loop.time() when the current bind came up; None when not bound."""
        return self._bound_at

    @property
    def up_s(self) -> float | None:
        """Seconds the current bind has been up; None when not bound."""
        if self._bound_at is None or self._loop is None:
            return None
        return self._loop.time() - self._bound_at

    @property
    def closing(self) -> bool:
        return self._closing

    # ---------------------------------------------------------------- dispatcher API

    def submit(self, pdu_or_fields: Pdu | Mapping[str, Any], context: Any = None, *,
               tlvs: Mapping[str | int, Any] | None = None) -> int:
        """Queue a submit_sm; returns its sequence number. Raises WindowFull or NotBound."""
        loop = self._loop
        if self._closing or loop is None:
            raise NotBound(f"{self.label} is {'closing' if self._closing else 'not started'}")
        seq = self._session.submit(pdu_or_fields, loop.time(), context, tlvs=tlvs)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return seq

    def respond(self, seq: int, status: int = 0, *, generation: int | None = None,
                **fields: Any) -> bool:
        """Answer the peer's request ``seq`` of session ``generation`` (default: the current one).

        False when that session has closed: nothing to do, the carrier will redeliver."""
        if generation is not None and generation != self.generation:
            return False
        if not self._session.respond(seq, status, **fields):
            return False
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return True

    def set_window(self, size: int) -> None:
        """Hot reload of ``window``: applies now (a smaller one as outstanding requests drain)
        and to every later session."""
        if size < 1:
            raise ValueError("window must be at least 1")
        self._window = size
        self._session.window_size = size

    def reconfigure(self, carrier: CarrierConfig) -> None:
        """Apply a new config whose ``connection_key()`` is unchanged: window and reconnect
        delays now, enquire_link_s / response_timeout_s from the next bind on."""
        if carrier.connection_key() != self.carrier.connection_key():
            raise ValueError("connection settings changed: close this connection and open another")
        self.carrier = carrier
        self._session_config = session_config(carrier, self.bind_type)
        self.set_window(carrier.window)
        self.backoff.configure(carrier.reconnect_s, carrier.reconnect_max_s)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start connecting and binding (in a task, with the bind rate limit)."""
        if self._task is not None:
            raise RuntimeError("already started")
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=f"smpp {self.label}")

    async def close(self, timeout: float = 10.0) -> None:
        """Graceful shutdown: no new submit_sm from now on; wait up to ``timeout`` for the
        outstanding responses, send unbind, wait briefly for unbind_resp, close the socket.

        Requests still unanswered then fail with ``RequestFailed`` events (retry them elsewhere).
        Idempotent; also ends a connection that is between attempts or still binding."""
        loop = asyncio.get_running_loop()
        self._closing = True
        try:
            if self._session.is_bound and self._session.window_in_use > 0 and timeout > 0:
                self._drained = loop.create_future()
                try:
                    await asyncio.wait_for(asyncio.shield(self._drained), timeout)
                except TimeoutError:
                    pass
                finally:
                    self._drained = None
            link = self._link
            if self._session.is_bound and link is not None:
                self._session.unbind(loop.time())
                self._flush()
                try:
                    await asyncio.wait_for(asyncio.shield(link.lost),
                                           min(UNBIND_WAIT_S, self.carrier.response_timeout_s))
                except TimeoutError:
                    pass
        finally:
            await self._stop_task()
        log.info("bind closed", carrier=self.name, bind=self.index, bind_type=self.bind_type,
                 reason=self.last_error or "closed by gateway")

    async def _stop_task(self) -> None:
        """Abort the transport (if still open) and end the supervisor."""
        link = self._link
        if link is not None and link.transport is not None:
            self._close_reason = self._close_reason or "closed by gateway"
            link.transport.abort()
            # abort() calls connection_lost soon: let it run (it fails the outstanding requests
            # with RequestFailed events) before the supervisor goes.
            try:
                await asyncio.wait_for(asyncio.shield(link.lost), 1.0)
            except TimeoutError:
                pass
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._cancel_timer()

    # ---------------------------------------------------------------- supervisor

    async def _run(self) -> None:
        """Connect, wait for the loss, back off, repeat; until ``close()``."""
        loop = asyncio.get_running_loop()
        delay = 0.0  # the very first attempt goes as soon as the limiter allows
        while not self._closing:
            if delay > 0:
                await asyncio.sleep(delay)
            while (wait := self.limiter.acquire(loop.time())) > 0:
                await asyncio.sleep(wait)
            if self._closing:
                return
            carrier = self.carrier
            self.bind_attempts += 1
            self.attempt_times.append(loop.time())
            self._close_reason = ""
            link = _Link(self, loop)
            try:
                await asyncio.wait_for(
                    loop.create_connection(lambda: link, carrier.host, carrier.port,
                                           ssl=self._ssl, server_hostname=self._server_hostname),
                    carrier.connect_timeout_s)
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                reason = ("connect timed out" if isinstance(exc, TimeoutError)
                          else f"connect failed: {type(exc).__name__}: {exc}")
                if link.transport is not None:
                    link.transport.abort()  # made, then cancelled by the timeout
                self.last_error = reason
                up_s = None
            else:
                await asyncio.shield(link.lost)
                if self._closing:
                    return
                reason = self.last_error
                up_s = self._last_up_s
            delay = self.backoff.failed(loop.time())
            log.warning("bind down", carrier=self.name, bind=self.index,
                        bind_type=self.bind_type, reason=reason, up_s=up_s,
                        attempt=self.bind_attempts, retry_in_s=round(delay, 3))

    # ---------------------------------------------------------------- transport callbacks

    def _link_made(self, link: _Link, transport: asyncio.Transport) -> None:
        loop = self._loop
        assert loop is not None
        old = self._link
        if old is not None and old.transport is not None:
            old.transport.abort()  # cannot happen (one connect at a time); be safe
        self._link = link
        if self._closing:
            transport.abort()  # close() came while connecting
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if self.nodelay else 0)
        self.generation += 1
        now = loop.time()
        session = Session(self._session_config, Role.ESME, now)
        session.window_size = self._window
        self._session = session
        self._last_up_s = None
        try:
            session.bind(now)
        except SmppError as exc:
            # E.g. a field the codec cannot encode: a config problem, not a carrier fault. Log
            # it (never the field's value: it may be the password) and back off as after any
            # failed bind, instead of leaving an exception in a transport callback.
            log.error("bind impossible", carrier=self.name, bind=self.index,
                      problem=type(exc).__name__)
            transport.abort()
            return
        self._flush()

    def _data_received(self, data: bytes) -> None:
        loop = self._loop
        assert loop is not None
        events = self._session.receive_data(data, loop.time())
        if events:
            self._dispatch(events)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _link_lost(self, link: _Link, exc: Exception | None) -> None:
        if link is not self._link:
            return
        loop = self._loop
        assert loop is not None
        session = self._session
        if session.state is not _CLOSED:
            self._close_reason = self._close_reason or (
                f"connection lost: {exc}" if exc is not None else "connection closed by peer")
        events = session.connection_lost(loop.time())
        self._link = None
        self._cancel_timer()
        if events:
            self._dispatch(events)
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    # ---------------------------------------------------------------- events

    def _dispatch(self, events: list[Event]) -> None:
        """Hand every event to the callback, after the driver's own bookkeeping."""
        cb = self.on_event
        for ev in events:
            cls = ev.__class__
            if cls in _LIFECYCLE:
                if cls is RequestTimedOut:
                    if ev.command_id in _OWN_REQUESTS:  # type: ignore[attr-defined]
                        continue
                else:
                    self._on_lifecycle(ev)
            try:
                cb(self, ev)
            except Exception:  # noqa: BLE001 - a caller's bug must not take the bind down
                log.exception("event callback failed", carrier=self.name, bind=self.index,
                              event_type=cls.__name__)
        drained = self._drained
        if drained is not None and not drained.done() and self._session.window_in_use == 0:
            drained.set_result(None)

    def _on_lifecycle(self, ev: Event) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        if isinstance(ev, Bound):
            self._bound_at = now
            self.backoff.bound(now)
            self.last_error = ""
            log.info("bind up", carrier=self.name, bind=self.index, bind_type=self.bind_type,
                     smsc_system_id=ev.system_id, attempt=self.bind_attempts,
                     window=self._window, tls=self._ssl is not None)
        elif isinstance(ev, BindFailed):
            self._close_reason = f"bind refused: {ev.status_name}"
            log.error("bind refused", carrier=self.name, bind=self.index,
                      bind_type=self.bind_type, command_status=ev.command_status,
                      command_status_name=ev.status_name, system_id=self.carrier.system_id)
        elif isinstance(ev, LinkDead):
            self._close_reason = "link dead: enquire_link unanswered"
        elif isinstance(ev, ProtocolError):
            if ev.fatal:
                self._close_reason = f"protocol error: {ev.reason}"
                log.error("protocol error", carrier=self.name, bind=self.index,
                          reason=ev.reason, fatal=True)
            else:
                log.warning("protocol error", carrier=self.name, bind=self.index,
                            reason=ev.reason, fatal=False)
        elif isinstance(ev, Unbound):
            if not ev.by_peer and self._closing:
                # Our own clean unbind: whoever binds this slot next starts from the first delay.
                self.backoff.reset()
            self._close_reason = self._close_reason or (
                "unbound by peer" if ev.by_peer else "unbound")
        elif isinstance(ev, Closed):
            reason = self._close_reason or ev.reason
            self._close_reason = reason
            self.last_error = reason
            if self._bound_at is not None:
                self._last_up_s = round(now - self._bound_at, 3)
            self._bound_at = None
            # Write what the session queued last (unbind_resp, generic_nack), then close: the
            # flush closes the transport once it sees the CLOSED state.
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)

    # ---------------------------------------------------------------- writing and the timer

    def _flush(self) -> None:
        """Write everything queued this iteration in one go; re-arm the timer; close when the
        session has closed."""
        self._flush_scheduled = False
        session = self._session
        link = self._link
        transport = link.transport if link is not None else None
        if transport is None:
            session.data_to_send()  # nobody to send it to
            return
        data = session.data_to_send()
        if data and not transport.is_closing():
            transport.write(data)
        if session.state is _CLOSED:
            self._cancel_timer()
            if not transport.is_closing():
                transport.close()
                # close() waits for the write buffer to drain; a peer that stopped reading must
                # not keep this bind slot from reconnecting.
                loop = self._loop
                assert loop is not None
                loop.call_later(UNBIND_WAIT_S * 2, transport.abort)
            return
        deadline = session.next_deadline()
        if deadline is not None and (self._timer is None or deadline < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            loop = self._loop
            assert loop is not None
            self._timer_at = deadline
            self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        events = self._session.handle_timer(loop.time())
        if events:
            self._dispatch(events)
        self._flush()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
