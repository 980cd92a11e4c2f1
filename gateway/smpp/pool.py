"""The binds of one carrier: start them, pick one with a free window slot, report their health.

``CarrierPool(carrier, on_event)`` owns ``binds`` connections (``bind: transceiver``) or ``binds``
transmitters plus ``binds`` receivers (``bind: transmitter_receiver``), all sharing one
``BindLimiter`` so that the carrier never sees more than 2 bind attempts a second, however many
binds it has or however often they drop.

How the dispatcher uses it (one task per carrier, no polling)::

    pool = CarrierPool(carrier, on_event)     # on_event(conn, event): SubmitResponse, ...
    pool.start()
    while running:
        conn = pool.pick(reserve=0 if otp else 1)
        if conn is None:
            await pool.wait_capacity()          # a slot freed or a bind came up
            continue
        conn.submit(fields, context=part)       # the events for it carry `part`
    await pool.stop(shutdown_timeout_s)

Events reach ``on_event`` synchronously, from the connection's ``data_received`` or timer, in the
order the session produced them; the pool looks at them only to wake waiters, and forwards every
one, ``Bound`` and ``Closed`` included. Nothing here awaits on the hot path: ``pick`` is a scan of
a handful of connections, ``submit`` queues bytes that leave with the loop iteration's one write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from gateway.config import CarrierConfig
from gateway.log import get_logger
from gateway.smpp.connection import (
    Backoff,
    BindLimiter,
    Connection,
    EventCallback,
)
from gateway.smpp.session import (
    Bound,
    Event,
    RequestTimedOut,
    SessionState,
    SubmitResponse,
)

__all__ = ["BindHealth", "CarrierPool", "PoolHealth"]

log = get_logger("gateway.smpp.pool")

#: Events after which a submit may succeed where it failed before: a response or a timeout frees
#: a window slot, a bind brings a whole window. (RequestFailed comes with a closing session: no
#: slot there.)
_CAPACITY: Final = frozenset({SubmitResponse, RequestTimedOut, Bound})


@dataclass(frozen=True, slots=True)
class BindHealth:
    """One bind, as ``/status`` shows it."""

    index: int
    bind_type: str
    state: str
    #: Seconds the current bind has been up; None when not bound.
    up_s: float | None
    window_in_use: int
    window_size: int
    bind_attempts: int
    last_error: str


@dataclass(frozen=True, slots=True)
class PoolHealth:
    """A carrier's binds at a glance (``/healthz``: ready when ``transmit_up > 0``)."""

    carrier: str
    #: Sessions bound right now (transmitters and receivers).
    binds_up: int
    #: Sessions configured: ``binds``, or 2 × ``binds`` for transmitter_receiver.
    binds_configured: int
    #: Bound sessions that can carry submit_sm.
    transmit_up: int
    #: Outstanding submit_sm over every session.
    window_in_use: int
    #: Sum of the windows of the bound transmit-capable sessions.
    window_size: int
    #: Connect/bind attempts since start (cumulative).
    bind_attempts: int
    binds: tuple[BindHealth, ...]

    @property
    def ready(self) -> bool:
        """At least one bind can submit."""
        return self.transmit_up > 0


class CarrierPool:
    """The sessions of one carrier. Single event loop; not thread-safe."""

    def __init__(
        self,
        carrier: CarrierConfig,
        on_event: EventCallback,
        *,
        limiter: BindLimiter | None = None,
        nodelay: bool = True,
        random: Callable[[], float] | None = None,
    ) -> None:
        """``on_event(conn, event)`` gets every event of every session. ``limiter``: shared bind
        rate limit (default: 2 attempts a second for this carrier). ``random``: for the backoff
        jitter (tests). ``nodelay=False`` is for the benchmark only."""
        self.carrier = carrier
        self.name = carrier.name
        self._on_event = on_event
        self.limiter = limiter if limiter is not None else BindLimiter()
        self._nodelay = nodelay
        self._random = random
        #: Called (synchronously, keep it cheap: e.g. ``asyncio.Event.set``) after every event that
        #: may let a ``pick()`` succeed: a window slot freed, a bind came up, a window grew.
        self.on_capacity: Callable[[], None] | None = None
        self._capacity_waiters: list[asyncio.Future[None]] = []
        self._ready_waiters: list[asyncio.Future[None]] = []
        self._rr = 0
        self._started = False
        self.connections: tuple[Connection, ...] = ()
        #: The transmit-capable subset of ``connections`` (what ``pick`` scans).
        self.transmitters: tuple[Connection, ...] = ()
        self._build()

    def _build(self) -> None:
        carrier = self.carrier
        kinds: list[str]
        if carrier.bind == "transmitter_receiver":
            kinds = ["transmitter"] * carrier.binds + ["receiver"] * carrier.binds
        else:
            kinds = ["transceiver"] * carrier.binds
        conns = []
        for index, kind in enumerate(kinds):
            backoff = (Backoff(carrier.reconnect_s, carrier.reconnect_max_s)
                       if self._random is None else
                       Backoff(carrier.reconnect_s, carrier.reconnect_max_s, random=self._random))
            conns.append(Connection(carrier, self._handle, bind_type=kind,  # type: ignore[arg-type]
                                    index=index, limiter=self.limiter, backoff=backoff,
                                    nodelay=self._nodelay))
        self.connections = tuple(conns)
        self.transmitters = tuple(c for c in conns if c.transmits)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start every bind (each connects as the shared rate limit allows)."""
        if self._started:
            raise RuntimeError("already started")
        self._started = True
        for conn in self.connections:
            conn.start()
        log.info("carrier pool started", carrier=self.name, bind=self.carrier.bind,
                 binds=len(self.connections), host=self.carrier.host, port=self.carrier.port,
                 window=self.carrier.window)

    async def stop(self, timeout: float = 10.0) -> None:
        """Graceful: no new submits; each bind waits up to ``timeout`` for its outstanding
        responses, unbinds and closes (all binds at once, so the whole takes about ``timeout``)."""
        await asyncio.gather(*(c.close(timeout) for c in self.connections))
        self._started = False
        for fut in self._capacity_waiters + self._ready_waiters:
            if not fut.done():
                fut.set_result(None)
        self._capacity_waiters.clear()
        self._ready_waiters.clear()

    def reconfigure(self, carrier: CarrierConfig) -> bool:
        """Apply a reloaded config in place when its connection settings (``connection_key()``:
        host, port, credentials, bind type and count, TLS...) are unchanged: window, reconnect
        delays now; enquire_link_s / response_timeout_s from each next bind. Returns False, changing
        nothing, when they differ: then ``await rebind(carrier)``."""
        if carrier.connection_key() != self.carrier.connection_key():
            return False
        grew = carrier.window > self.carrier.window
        self.carrier = carrier
        for conn in self.connections:
            conn.reconfigure(carrier)
        if grew:
            self._notify_capacity()
        return True

    async def rebind(self, carrier: CarrierConfig, timeout: float = 10.0) -> None:
        """New connection settings: close the binds gracefully (as ``stop``), then bind again with
        ``carrier``. The pool object (and the dispatcher's reference to it) stays."""
        await asyncio.gather(*(c.close(timeout) for c in self.connections))
        self.carrier = carrier
        self.name = carrier.name
        self._build()
        self._started = False
        self.start()

    def set_window(self, size: int) -> None:
        """Hot change of every session's window (a smaller one applies as requests drain)."""
        for conn in self.connections:
            conn.set_window(size)
        self._notify_capacity()

    # ---------------------------------------------------------------- dispatcher API

    def pick(self, reserve: int = 0) -> Connection | None:
        """A bound transmit-capable connection with more than ``reserve`` free window slots (the
        least loaded; round robin among equals), or None.

        ``reserve`` keeps slots for more urgent traffic: marketing picks with ``reserve=1`` and may
        only use a session whose ``window_in_use < window_size - 1``; OTP picks with 0."""
        tx = self.transmitters
        n = len(tx)
        if n == 0:
            return None
        start = self._rr
        best: Connection | None = None
        best_free = 0
        for i in range(n):
            conn = tx[(start + i) % n]
            if not conn.can_submit:
                continue
            free = conn.window_size - reserve - conn.window_in_use
            if free > best_free:
                best, best_free = conn, free
        # Move the starting point on, so that equally loaded binds take turns.
        self._rr = start + 1 if start + 1 < n else 0
        return best

    @property
    def ready(self) -> bool:
        """At least one transmit-capable bind is up."""
        for conn in self.transmitters:
            if conn.is_bound and not conn.closing:
                return True
        return False

    async def wait_capacity(self, timeout: float | None = None) -> bool:
        """Sleep until the next event that may let ``pick()`` succeed (slot freed, bind up,
        window grown). Call it right after ``pick()`` returned None, with no ``await`` between,
        and nothing can be missed. Returns False on timeout (or when the pool stopped)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._capacity_waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        finally:
            if fut in self._capacity_waiters:
                self._capacity_waiters.remove(fut)
        return self._started

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Until a transmit-capable bind is up (True), or ``timeout`` (False)."""
        if self.ready:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ready_waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        finally:
            if fut in self._ready_waiters:
                self._ready_waiters.remove(fut)
        return self.ready

    @property
    def health(self) -> PoolHealth:
        """Snapshot of every bind."""
        binds = []
        up = tx_up = in_use = size = attempts = 0
        for conn in self.connections:
            bound = conn.is_bound
            up_s = conn.up_s
            binds.append(BindHealth(
                index=conn.index, bind_type=conn.bind_type, state=conn.state.value,
                up_s=round(up_s, 3) if bound and up_s is not None else None,
                window_in_use=conn.window_in_use, window_size=conn.window_size,
                bind_attempts=conn.bind_attempts, last_error=conn.last_error))
            attempts += conn.bind_attempts
            in_use += conn.window_in_use
            if bound:
                up += 1
                if conn.transmits and conn.state is not SessionState.UNBINDING:
                    tx_up += 1
                    size += conn.window_size
        return PoolHealth(self.name, up, len(self.connections), tx_up, in_use, size, attempts,
                          tuple(binds))

    # ---------------------------------------------------------------- events

    def _handle(self, conn: Connection, event: Event) -> None:
        """Every session event: forward it, then wake whoever waits for what it made possible."""
        self._on_event(conn, event)
        cls = event.__class__
        if cls in _CAPACITY:
            if cls is Bound:
                log.debug("pool bind up", carrier=self.name, bind=conn.index)
                if conn.transmits:
                    self._wake(self._ready_waiters)
                    self._notify_capacity()
            elif self._capacity_waiters or self.on_capacity is not None:
                self._notify_capacity()

    def _notify_capacity(self) -> None:
        self._wake(self._capacity_waiters)
        cb = self.on_capacity
        if cb is not None:
            try:
                cb()
            except Exception:  # noqa: BLE001 - the caller's bug must not break the session
                log.exception("on_capacity callback failed", carrier=self.name)

    @staticmethod
    def _wake(waiters: list[asyncio.Future[None]]) -> None:
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
            waiters.clear()
