"""Per-carrier pacing: token buckets, OTP reserve, AIMD on ESME_RTHROTTLED, pause on ESME_RMSGQFUL.

Owns: how many submit_sm PDUs (parts, not messages) a carrier may be sent now and when the next
one may go; the carrier's adaptive rate and its state for /status. The dispatcher asks
`take(now, priority=...)` before each part, sleeps `delay_until_available(now, ...)` when refused,
and reports responses with `on_success` / `on_throttled` / `on_queue_full` (see errors.Signal).
Nothing here sleeps, reads a clock or does I/O: `now` is monotonic seconds, passed in.

Theory of operation
- Two token buckets share the carrier's current rate r: an OTP reserve filling at share·r and a
  shared bucket filling at (1 - share)·r. A full bucket's inflow spills into the other, so the
  pair always fills at r in total and nothing is wasted while either has room. OTP parts draw
  on the reserve first, then on the shared bucket; other parts only on the shared bucket.
  Hence: OTP is guaranteed at least share·r whatever the other lanes do; with no OTP traffic
  the reserve stays full (an OTP finds a token ready) and its inflow spills to the
  shared bucket, so marketing still gets all of r (work-conserving, unlike a hard 80/20 split);
  and in any interval of length T at most r·T + burst parts are granted in total.
- Burst: each bucket holds max(1, its rate × 50 ms): enough to let the dispatcher send a small
  batch per wake-up and absorb ~50 ms of event-loop lateness without losing rate, small enough
  to stay smooth. A larger burst (Kannel-style 1 s) trips carriers that pace finely.
- One-second guard: carriers count "tps" per second (fixed or sliding windows), and a token
  bucket alone allows rate + burst in one second — and, through timing jitter, rate + 1 even in
  steady state. With tps set exactly to the carrier's limit that means a self-inflicted
  ESME_RTHROTTLED every few seconds and a 30 % cut each time. So on top of the buckets, no more
  than floor(rate) parts are granted in any sliding window of 1.02 s (a log of recent grants; at
  most `rate` entries). The 20 ms margin absorbs timing jitter between our clock and the
  carrier's counting (arrival spacing, its window boundaries) for 2 % of the rate. The guard is
  shared by all lanes: marketing can hold an OTP back by at most one inter-part gap (~1/rate s).
- AIMD: on ESME_RTHROTTLED the rate is multiplied by 0.7, at most once per second (the throttled
  responses of PDUs already in flight — a window's worth per bind — arrive within about a
  response time and describe the old rate, not the new one; one second is also the carrier's
  counting period). 0.7 rather than TCP's 0.5 (CUBIC's choice): a carrier limit is a fixed
  ceiling, not congestion collapse, so a gentler cut loses less throughput; the sawtooth between
  0.7·L and L averages ~85 % of the carrier's real limit L. While responses are clean the rate
  climbs back additively by max(1, 2 % of tps) per second, never above the configured tps nor
  below 1/s. With tps 0 (no cap), the first throttle caps the carrier at 0.7 × the rate actually
  observed over the last second; once it has climbed back to that rate, the cap is lifted again.
- ESME_RMSGQFUL: every lane stops for 1 s, doubling on consecutive queue-fulls up to 30 s; a
  clean response after the pause resets it (Kannel's fixed 1 s sleep, made adaptive).
"""

from __future__ import annotations

import enum
import math
from collections import deque

from gateway.model import Priority

__all__ = [
    "ThrottleState",
    "TokenBucket",
    "CarrierThrottle",
    "BURST_S",
    "DECREASE_FACTOR",
    "DECREASE_HOLD_S",
    "INCREASE_FRACTION",
    "MIN_RATE",
    "GUARD_WINDOW_S",
    "PAUSE_BASE_S",
    "PAUSE_MAX_S",
    "DEFAULT_OTP_SHARE",
]

BURST_S = 0.05  # bucket depth, in seconds of the bucket's own rate (see module docstring)
DECREASE_FACTOR = 0.7  # multiplicative decrease on ESME_RTHROTTLED
DECREASE_HOLD_S = 1.0  # at most one decrease per this interval
INCREASE_FRACTION = 0.02  # additive increase per second, as a fraction of tps (at least 1/s)
MIN_RATE = 1.0  # the rate never drops below 1 submit_sm/s (or tps, if tps is lower)
GUARD_WINDOW_S = 1.02  # at most floor(rate) parts in any window this long (see docstring)
PAUSE_BASE_S = 1.0  # first pause on ESME_RMSGQFUL
PAUSE_MAX_S = 30.0  # longest pause
DEFAULT_OTP_SHARE = 0.2  # issue 5: 20 % of each carrier's rate reserved for OTP

# Float tolerance: after sleeping exactly delay_until_available() the refill may fall short of a
# whole token by rounding error; without this the dispatcher would spin on tiny delays.
_EPS = 1e-9


class ThrottleState(enum.StrEnum):
    NORMAL = "normal"  # sending at the configured tps (or uncapped)
    THROTTLED = "throttled"  # the adaptive rate is below the configured tps
    PAUSED = "paused"  # ESME_RMSGQFUL: nothing is sent until the pause ends


class TokenBucket:
    """A plain token bucket: `rate` tokens/s, at most `capacity` stored.

    A request for more than `capacity` tokens is granted once the bucket is full and leaves a
    debt, so it cannot starve; the guarantee is then rate·T + max(capacity, n) per interval T.
    """

    __slots__ = ("rate", "capacity", "tokens", "_last")

    def __init__(
        self, rate: float, capacity: float, now: float, tokens: float | None = None
    ) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.tokens = self.capacity if tokens is None else min(float(tokens), self.capacity)
        self._last = now

    def _refill(self, now: float) -> None:
        # A clock that goes backwards (or callers out of order) never adds tokens.
        if now > self._last:
            self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
            self._last = now

    def take(self, now: float, n: int = 1) -> bool:
        self._refill(now)
        if self.tokens + _EPS >= min(n, self.capacity):
            self.tokens -= n
            return True
        return False

    def delay_until_available(self, now: float, n: int = 1) -> float:
        """Seconds until `take(now + delay, n)` succeeds (0.0 if it would now)."""
        self._refill(now)
        deficit = min(n, self.capacity) - self.tokens
        return 0.0 if deficit <= _EPS else deficit / self.rate

    def set_rate(self, rate: float, capacity: float, now: float) -> None:
        """Change the rate from `now` on; tokens above the new capacity are dropped."""
        self._refill(now)
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.tokens = min(self.tokens, self.capacity)


class CarrierThrottle:
    """The pacing of one carrier over all its binds (see the module docstring).

    `tps` 0 means no cap (until the carrier throttles us). `otp_share` in [0, 1) is the share of
    the rate reserved for OTP.
    """

    def __init__(
        self,
        tps: float,
        now: float,
        *,
        otp_share: float = DEFAULT_OTP_SHARE,
        burst_s: float = BURST_S,
        decrease: float = DECREASE_FACTOR,
        hold_s: float = DECREASE_HOLD_S,
        increase_fraction: float = INCREASE_FRACTION,
        min_rate: float = MIN_RATE,
        pause_s: float = PAUSE_BASE_S,
        pause_max_s: float = PAUSE_MAX_S,
    ) -> None:
        if tps < 0:
            raise ValueError("tps must be >= 0")
        if not 0.0 <= otp_share < 1.0:
            raise ValueError("otp_share must be in [0, 1)")
        if not 0.0 < decrease < 1.0:
            raise ValueError("decrease must be in (0, 1)")
        self._burst_s = burst_s
        self._decrease = decrease
        self._hold_s = hold_s
        self._increase_fraction = increase_fraction
        self._min_rate = min_rate
        self._pause_s = pause_s
        self._pause_max_s = pause_max_s

        self._limit = float(tps)
        self._share = float(otp_share)
        # None: no cap in force (tps 0 and never throttled, or recovered).
        self._rate: float | None = self._limit if self._limit > 0 else None
        self._ref = self._limit  # the ceiling additive increase climbs back to
        self._last = now
        self._otp_cap = 0.0
        self._bulk_cap = 0.0
        self._otp = 0.0
        self._bulk = 0.0
        self._resize()
        self._otp, self._bulk = self._otp_cap, self._bulk_cap  # start full

        self._cut_at = -math.inf
        self._increased_at = -math.inf
        self._paused_until = -math.inf
        self._pause_len = pause_s

        # The one-second guard: (grant time, parts) of the grants of the last second, and their sum.
        self._log: deque[tuple[float, int]] = deque()
        self._log_sum = 0

        # Granted parts per ~1 s window, for the rate actually flowing (uncapped first throttle).
        self._win_start = now
        self._win_count = 0
        self._prev_rate = 0.0

    # -- read-only views ---------------------------------------------------------------------

    @property
    def limit(self) -> float:
        """The configured tps (0 = no cap)."""
        return self._limit

    @property
    def current_rate(self) -> float:
        """The rate in force, parts/s; 0.0 when no cap is in force (as in the config)."""
        return self._rate if self._rate is not None else 0.0

    @property
    def otp_share(self) -> float:
        return self._share

    @property
    def burst(self) -> float:
        """Tokens that can be granted at once on top of the rate (both buckets full)."""
        return self._otp_cap + self._bulk_cap

    @property
    def paused_until(self) -> float:
        return self._paused_until

    def state(self, now: float) -> ThrottleState:
        if now < self._paused_until:
            return ThrottleState.PAUSED
        if self._rate is not None and (self._limit <= 0 or self._rate < self._limit - _EPS):
            return ThrottleState.THROTTLED
        return ThrottleState.NORMAL

    def snapshot(self, now: float) -> dict[str, object]:
        """For /status and metrics."""
        return {
            "state": self.state(now).value,
            "tps": self._limit,
            "rate": round(self.current_rate, 3),
            "otp_share": self._share,
            "paused_for_s": round(max(0.0, self._paused_until - now), 3),
        }

    # -- sending -----------------------------------------------------------------------------

    def take(self, now: float, n: int = 1, priority: Priority = Priority.TRANSACTIONAL) -> bool:
        """Grant `n` submit_sm PDUs now (all or nothing). OTP may use the reserve."""
        if now < self._paused_until:
            return False
        if self._rate is None:
            self._count(now, n)
            return True
        if not self._guard_allows(now, n):
            return False
        self._refill(now)
        if priority is Priority.OTP:
            # The reserve counts even while the shared bucket is in debt (a big multipart take).
            available = max(self._otp, 0.0) + max(self._bulk, 0.0)
            if available + _EPS < min(n, self._otp_cap + self._bulk_cap):
                return False
            from_reserve = min(max(self._otp, 0.0), float(n))
            self._otp -= from_reserve
            self._bulk -= n - from_reserve  # may go below 0: debt for n > burst, or -_EPS
        else:
            if self._bulk + _EPS < min(n, self._bulk_cap):
                return False
            self._bulk -= n
        self._log.append((now, n))
        self._log_sum += n
        self._count(now, n)
        return True

    def delay_until_available(
        self, now: float, n: int = 1, priority: Priority = Priority.TRANSACTIONAL
    ) -> float:
        """Seconds until `take(now + delay, n, priority)` would succeed, if nothing else happens."""
        pause_wait = max(0.0, self._paused_until - now)
        if self._rate is None:
            return pause_wait
        self._refill(now)
        r = self._rate
        if priority is Priority.OTP:
            need = min(n, self._otp_cap + self._bulk_cap)
            if max(self._otp, 0.0) + max(self._bulk, 0.0) + _EPS >= need:
                wait = 0.0
            else:
                # Together the buckets fill at r until both are full (spill), and need ≤ both
                # caps; counting a debt in full makes this an upper bound, exact without debt.
                wait = max(0.0, need - (self._otp + self._bulk)) / r
        else:
            deficit = min(n, self._bulk_cap) - self._bulk
            if deficit <= _EPS:
                wait = 0.0
            elif self._share <= 0.0:
                wait = deficit / r
            else:
                # The shared bucket fills at (1 - share)·r until the reserve is full, then at r.
                slow = (1.0 - self._share) * r
                to_fill_reserve = max(0.0, self._otp_cap - self._otp) / (self._share * r)
                if slow * to_fill_reserve >= deficit:
                    wait = deficit / slow
                else:
                    wait = to_fill_reserve + (deficit - slow * to_fill_reserve) / r
        return max(pause_wait, wait, self._guard_wait(now, n))

    # -- feedback ----------------------------------------------------------------------------

    def on_throttled(self, now: float) -> None:
        """ESME_RTHROTTLED: cut the rate (at most once per hold interval)."""
        if now < self._cut_at + self._hold_s:
            return  # responses to PDUs sent before the last cut: already accounted for
        self._refill(now)
        if self._rate is None:
            observed = max(self._min_rate, self._observed_rate(now))
            self._ref = self._limit if self._limit > 0 else observed
            new_rate = observed * self._decrease
            self._otp = self._bulk = 0.0  # no burst right after the carrier said "too fast"
        else:
            new_rate = self._rate * self._decrease
        self._rate = max(self._floor(), new_rate)
        self._resize()
        self._cut_at = now
        self._increased_at = now

    def on_success(self, now: float) -> None:
        """A clean submit_sm_resp: climb back towards the configured tps; reset the pause length."""
        if now >= self._paused_until:
            self._pause_len = self._pause_s
        if self._rate is None:
            return
        ceiling = self._limit if self._limit > 0 else self._ref
        if self._rate >= ceiling - _EPS:
            self._increased_at = now
            return
        start = max(self._increased_at, self._cut_at + self._hold_s)
        if now <= start:
            return  # inside the hold after a cut: these responses describe the old rate
        # Growth is per second of clean traffic, capped at 1 s per report so that an idle gap
        # is not mistaken for a long run of clean responses.
        dt = min(now - start, 1.0)
        step = max(1.0, self._increase_fraction * ceiling)
        self._refill(now)
        self._rate = min(ceiling, self._rate + step * dt)
        self._increased_at = now
        if self._limit <= 0 and self._rate >= ceiling - _EPS:
            self._rate = None  # back to uncapped
        self._resize()

    def on_queue_full(self, now: float) -> None:
        """ESME_RMSGQFUL: pause every lane; consecutive queue-fulls double the pause (≤ max)."""
        if now < self._paused_until:
            return  # responses to PDUs sent before the pause
        if now >= self._paused_until + self._pause_max_s:
            self._pause_len = self._pause_s  # long ago: start over
        self._refill(now)
        self._paused_until = now + self._pause_len
        self._pause_len = min(self._pause_max_s, self._pause_len * 2.0)

    # -- reload ------------------------------------------------------------------------------

    def set_limit(self, tps: float, now: float, otp_share: float | None = None) -> None:
        """A reload changed the carrier's tps (and maybe the OTP share), live.

        At full rate, the rate follows the new tps; while throttled, the adaptive rate is kept
        (lowered to the new tps if above it) and climbs towards the new ceiling.
        """
        if tps < 0:
            raise ValueError("tps must be >= 0")
        if otp_share is not None and not 0.0 <= otp_share < 1.0:
            raise ValueError("otp_share must be in [0, 1)")
        self._refill(now)
        was_normal = self._rate is None or (
            self._limit > 0 and self._rate >= self._limit - _EPS
        )
        old_limit = self._limit
        self._limit = float(tps)
        if otp_share is not None:
            self._share = float(otp_share)
        if self._limit <= 0:
            if was_normal:
                self._rate = None
            elif old_limit > 0:
                self._ref = old_limit
        elif was_normal:
            if self._rate is None:
                self._rate = self._limit
                self._resize()
                self._otp, self._bulk = self._otp_cap, self._bulk_cap
            self._rate = self._limit
        else:
            assert self._rate is not None
            self._rate = max(self._floor(), min(self._rate, self._limit))
        self._resize()

    # -- internals ---------------------------------------------------------------------------

    def _floor(self) -> float:
        return min(self._min_rate, self._limit) if self._limit > 0 else self._min_rate

    def _resize(self) -> None:
        """Bucket capacities for the current rate; tokens above them are dropped."""
        if self._rate is None:
            return
        r = self._rate
        self._bulk_cap = max(1.0, (1.0 - self._share) * r * self._burst_s)
        self._otp_cap = max(1.0, self._share * r * self._burst_s) if self._share > 0 else 0.0
        self._otp = min(self._otp, self._otp_cap)
        self._bulk = min(self._bulk, self._bulk_cap)

    def _refill(self, now: float) -> None:
        if now <= self._last:
            return
        dt = now - self._last
        self._last = now
        if self._rate is None:
            return
        otp = self._otp + self._share * self._rate * dt
        bulk = self._bulk + (1.0 - self._share) * self._rate * dt
        otp_over = max(0.0, otp - self._otp_cap)
        bulk_over = max(0.0, bulk - self._bulk_cap)
        # Spill each bucket's overflow into the other; what overflows both is lost. This equals
        # filling continuously, since a bucket only spills once it is full.
        self._otp = min(self._otp_cap, min(otp, self._otp_cap) + bulk_over)
        self._bulk = min(self._bulk_cap, min(bulk, self._bulk_cap) + otp_over)

    def _guard_cap(self) -> int:
        assert self._rate is not None
        return max(1, math.floor(self._rate + _EPS))

    def _expire(self, now: float) -> None:
        # A grant at t leaves the guard's window at t + GUARD_WINDOW_S. The tolerance makes a
        # grant expire at exactly the time _guard_wait() announced, despite rounding.
        log = self._log
        while log and now - log[0][0] >= GUARD_WINDOW_S - _EPS:
            self._log_sum -= log.popleft()[1]

    def _guard_allows(self, now: float, n: int) -> bool:
        self._expire(now)
        # An empty window always admits (a multipart take larger than the cap is not starved).
        return self._log_sum == 0 or self._log_sum + n <= self._guard_cap()

    def _guard_wait(self, now: float, n: int) -> float:
        """Seconds until the one-second guard admits `n` more parts."""
        if self._rate is None or self._guard_allows(now, n):
            return 0.0
        excess = self._log_sum + n - self._guard_cap()
        freed = 0
        for granted_at, parts in self._log:
            freed += parts
            if freed >= excess or freed == self._log_sum:
                return max(0.0, granted_at + GUARD_WINDOW_S - now)
        return 0.0  # unreachable: the loop frees the whole log at worst

    def _roll(self, now: float) -> None:
        elapsed = now - self._win_start
        if elapsed >= 1.0:
            self._prev_rate = self._win_count / elapsed
            self._win_start = now
            self._win_count = 0

    def _count(self, now: float, n: int) -> None:
        self._roll(now)
        self._win_count += n

    def _observed_rate(self, now: float) -> float:
        """Parts/s actually granted lately: the last full window, or the current partial one."""
        self._roll(now)
        return max(self._prev_rate, float(self._win_count))
