"""gateway.routing.throttle: token buckets, OTP reserve, AIMD, queue-full pauses; time injected."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.model import Priority
from gateway.routing.throttle import CarrierThrottle, ThrottleState, TokenBucket

OTP, TX, MKT = Priority.OTP, Priority.TRANSACTIONAL, Priority.MARKETING


def _max_in_window(grants: list[tuple[float, int]], rate: float) -> float:
    """max over windows [t_i, t_j] of (granted - rate * (t_j - t_i)): must stay ≤ burst."""
    worst = 0.0
    for i in range(len(grants)):
        total = 0
        for j in range(i, len(grants)):
            total += grants[j][1]
            worst = max(worst, total - rate * (grants[j][0] - grants[i][0]))
    return worst


# -- TokenBucket ----------------------------------------------------------------------------


@given(
    rate=st.floats(0.5, 500),
    capacity=st.floats(1, 50),
    steps=st.lists(st.tuples(st.floats(0, 0.3), st.integers(1, 3)), max_size=120),
)
def test_token_bucket_window_bound(
    rate: float, capacity: float, steps: list[tuple[float, int]]
) -> None:
    bucket = TokenBucket(rate, capacity, now=0.0)
    now = 0.0
    grants: list[tuple[float, int]] = []
    for dt, n in steps:
        now += dt
        if bucket.take(now, n):
            grants.append((now, n))
    n_max = max((n for _, n in grants), default=1)
    assert _max_in_window(grants, rate) <= max(capacity, n_max) + 1e-6


@given(
    rate=st.floats(0.5, 500),
    capacity=st.floats(1, 50),
    steps=st.lists(st.floats(0, 0.3), max_size=60),
)
def test_token_bucket_delay_is_exact(rate: float, capacity: float, steps: list[float]) -> None:
    bucket = TokenBucket(rate, capacity, now=0.0)
    now = 0.0
    for dt in steps:
        now += dt
        if not bucket.take(now):
            delay = bucket.delay_until_available(now)
            assert delay > 0
            assert bucket.take(now + delay)
            now += delay
        else:
            assert bucket.delay_until_available(now) >= 0


def test_token_bucket_clock_going_backwards_adds_nothing() -> None:
    bucket = TokenBucket(10, 1, now=5.0)
    assert bucket.take(5.0)
    assert not bucket.take(4.0)
    assert not bucket.take(5.05)
    assert bucket.take(5.1)


def test_token_bucket_set_rate_drops_excess() -> None:
    bucket = TokenBucket(100, 10, now=0.0)
    bucket.set_rate(10, 1, now=0.0)
    assert bucket.take(0.0)
    assert not bucket.take(0.0)


# -- CarrierThrottle: the bound, the floor, the ceiling -------------------------------------

_ops = st.sampled_from(
    ["otp", "tx", "mkt", "mkt3", "otp3", "throttled", "success", "success", "queue_full"]
)


@settings(max_examples=150)
@given(
    tps=st.integers(1, 400),
    share=st.sampled_from([0.0, 0.2, 0.5]),
    steps=st.lists(st.tuples(st.floats(0, 0.4), _ops), max_size=150),
)
def test_throttle_bound_floor_ceiling_and_pause(
    tps: int, share: float, steps: list[tuple[float, str]]
) -> None:
    throttle = CarrierThrottle(tps, now=0.0, otp_share=share)
    burst_at_tps = throttle.burst
    now = 0.0
    grants: list[tuple[float, int]] = []
    for dt, op in steps:
        now += dt
        if op in ("otp", "tx", "mkt", "mkt3", "otp3"):
            n = 3 if op.endswith("3") else 1
            prio = {"otp": OTP, "tx": TX, "mkt": MKT}[op.rstrip("3")]
            paused = now < throttle.paused_until
            granted = throttle.take(now, n, prio)
            if paused:
                assert not granted
            if granted:
                grants.append((now, n))
        elif op == "throttled":
            throttle.on_throttled(now)
        elif op == "success":
            throttle.on_success(now)
        else:
            throttle.on_queue_full(now)
        assert min(1.0, tps) - 1e-9 <= throttle.current_rate <= tps + 1e-9
        assert throttle.burst <= burst_at_tps + 1e-9
    n_max = max((n for _, n in grants), default=1)
    assert _max_in_window(grants, tps) <= burst_at_tps + (n_max - 1) + 1e-6
    # the one-second guard: never more than tps parts in any one-second window (a take larger
    # than the cap is only granted into an empty window)
    for i, (t_i, _) in enumerate(grants):
        in_window = sum(n for t, n in grants[i:] if t - t_i < 1.0 - 1e-6)
        assert in_window <= max(math.floor(tps), n_max)


@settings(max_examples=100)
@given(
    tps=st.integers(1, 400),
    share=st.sampled_from([0.0, 0.2, 0.5]),
    steps=st.lists(st.tuples(st.floats(0, 0.2), st.sampled_from([OTP, TX, MKT])), max_size=80),
)
def test_throttle_delay_then_take_succeeds(
    tps: int, share: float, steps: list[tuple[float, Priority]]
) -> None:
    throttle = CarrierThrottle(tps, now=0.0, otp_share=share)
    now = 0.0
    for dt, prio in steps:
        now += dt
        if throttle.take(now, 1, prio):
            continue
        delay = throttle.delay_until_available(now, 1, prio)
        assert 0 < delay < math.inf
        assert throttle.take(now + delay, 1, prio)
        now += delay


# -- the OTP reserve ------------------------------------------------------------------------


def test_initial_burst_and_reserve() -> None:
    throttle = CarrierThrottle(100, now=0.0)  # shared bucket 4, reserve 1
    assert throttle.burst == pytest.approx(5)
    granted = sum(throttle.take(0.0, 1, MKT) for _ in range(10))
    assert granted == 4
    assert throttle.take(0.0, 1, OTP)  # the reserve is still there
    assert not throttle.take(0.0, 1, OTP)


def _drain(
    throttle: CarrierThrottle, start: float, end: float, tick: float, order: list[Priority]
) -> dict[Priority, int]:
    counts = {p: 0 for p in order}
    steps = round((end - start) / tick)
    for i in range(steps):
        now = start + i * tick
        for prio in order:
            while throttle.take(now, 1, prio):
                counts[prio] += 1
    return counts


def test_marketing_alone_gets_the_whole_rate() -> None:
    throttle = CarrierThrottle(100, now=0.0)
    counts = _drain(throttle, 0.0, 10.0, 0.001, [MKT])
    # Work-conserving: the reserve's inflow spills over. The one-second guard's 20 ms margin
    # (100 parts per 1.02 s) is the only loss.
    assert 975 <= counts[MKT] <= 1006


def test_otp_waits_at_most_one_gap_during_a_marketing_flood() -> None:
    throttle = CarrierThrottle(100, now=0.0)
    _drain(throttle, 0.0, 5.0, 0.001, [MKT])
    while throttle.take(5.0, 1, MKT):
        pass
    # Marketing has used the whole second (the one-second guard is full); the reserve holds a
    # token, so the OTP goes with the next slot, at most 1/rate later, ahead of marketing.
    wait = throttle.delay_until_available(5.0, 1, OTP)
    assert wait <= 1 / 100 + 1e-9
    assert throttle.take(5.0 + wait, 1, OTP)
    assert not throttle.take(5.0 + wait, 1, MKT)


def test_otp_share_is_guaranteed_even_if_marketing_is_asked_first() -> None:
    throttle = CarrierThrottle(100, now=0.0, otp_share=0.2)
    counts = _drain(throttle, 0.0, 10.0, 0.001, [MKT, OTP])
    assert counts[OTP] >= 0.2 * 100 * 10 * 0.97
    assert counts[OTP] + counts[MKT] <= 100 * 10 + 5 + 1


def test_otp_can_use_the_whole_rate() -> None:
    throttle = CarrierThrottle(100, now=0.0, otp_share=0.2)
    counts = _drain(throttle, 0.0, 10.0, 0.001, [OTP])
    assert counts[OTP] >= 975


def test_zero_share_means_one_shared_bucket() -> None:
    throttle = CarrierThrottle(100, now=0.0, otp_share=0.0)
    assert sum(throttle.take(0.0, 1, MKT) for _ in range(10)) == 5
    assert not throttle.take(0.0, 1, OTP)


def test_multipart_take_larger_than_the_bucket_is_not_starved() -> None:
    throttle = CarrierThrottle(10, now=0.0)  # shared bucket of 1
    assert throttle.take(0.0, 4, MKT)  # granted on a full bucket, leaves a debt
    assert not throttle.take(0.1, 1, MKT)
    delay = throttle.delay_until_available(0.1, 1, MKT)
    assert throttle.take(0.1 + delay, 1, MKT)


# -- AIMD -----------------------------------------------------------------------------------


def test_throttled_cuts_once_per_hold() -> None:
    throttle = CarrierThrottle(100, now=0.0)
    for i in range(10):  # a window's worth of throttled responses in flight
        throttle.on_throttled(0.5 + i * 0.05)
    assert throttle.current_rate == pytest.approx(70)
    assert throttle.state(1.0) is ThrottleState.THROTTLED
    throttle.on_throttled(1.6)
    assert throttle.current_rate == pytest.approx(49)


def test_rate_never_below_floor() -> None:
    throttle = CarrierThrottle(100, now=0.0)
    for i in range(100):
        throttle.on_throttled(float(i * 2))
    assert throttle.current_rate == pytest.approx(1.0)
    assert throttle.take(1000.0, 1, MKT)


def test_floor_is_tps_when_tps_is_tiny() -> None:
    throttle = CarrierThrottle(0.5, now=0.0)
    throttle.on_throttled(0.0)
    assert throttle.current_rate == pytest.approx(0.5)


def test_additive_recovery_up_to_tps() -> None:
    throttle = CarrierThrottle(200, now=0.0)
    throttle.on_throttled(0.0)  # → 140
    throttle.on_success(0.5)  # inside the hold: no evidence yet
    assert throttle.current_rate == pytest.approx(140)
    t = 1.0
    while t <= 6.0 + 1e-9:
        throttle.on_success(t)
        t += 0.1
    assert throttle.current_rate == pytest.approx(140 + 4 * 5, abs=0.5)  # +max(1, 2% of 200)/s
    for i in range(200):
        throttle.on_success(7.0 + i * 0.1)
    assert throttle.current_rate == pytest.approx(200)
    assert throttle.state(30.0) is ThrottleState.NORMAL


def test_idle_gap_is_not_clean_traffic() -> None:
    throttle = CarrierThrottle(200, now=0.0)
    throttle.on_throttled(0.0)
    throttle.on_success(1.0)
    throttle.on_success(100.0)
    assert throttle.current_rate <= 140 + 4 * 1 + 1e-9


def test_rate_cut_shrinks_the_burst() -> None:
    throttle = CarrierThrottle(1000, now=0.0)
    assert throttle.burst == pytest.approx(50)
    throttle.on_throttled(0.0)
    assert throttle.burst == pytest.approx(35)


def test_settles_near_a_carrier_limit_below_the_configured_tps() -> None:
    """Issue 5: config 200 tps, the carrier throttles above 50/s: the rate settles near 50."""
    throttle = CarrierThrottle(200, now=0.0, otp_share=0.2)
    carrier_limit = 50
    latency = 0.05
    pending: list[tuple[float, bool]] = []  # (response time, throttled?)
    window_start, window_count = 0.0, 0
    accepted_late = 0
    tick = 0.002
    t = 0.0
    while t < 120.0:
        if t - window_start >= 1.0:
            window_start, window_count = t, 0
        while throttle.take(t, 1, MKT):
            window_count += 1
            pending.append((t + latency, window_count > carrier_limit))
        still = []
        for due, was_throttled in pending:
            if due <= t:
                if was_throttled:
                    throttle.on_throttled(t)
                else:
                    throttle.on_success(t)
                    if t >= 60.0:
                        accepted_late += 1
            else:
                still.append((due, was_throttled))
        pending = still
        t += tick
    rate = accepted_late / 60.0
    assert 38 <= rate <= 50.5  # AIMD sawtooth between 0.7 and 1 × the limit: ~41/s here
    assert 30 <= throttle.current_rate <= 62


def test_tps_equal_to_the_carrier_limit_is_never_throttled() -> None:
    """The one-second guard: a carrier counting per (jittered) second never sees tps + 1."""
    throttle = CarrierThrottle(50, now=0.0)
    window_start, window_count, over = 0.0, 0, 0
    t = 0.0
    while t < 60.0:
        if t - window_start >= 1.0:  # the carrier's own windows, on a 2 ms tick
            window_start, window_count = t, 0
        while throttle.take(t, 1, MKT):
            window_count += 1
            over += window_count > 50
        t += 0.002
    assert over == 0


# -- uncapped -------------------------------------------------------------------------------


def test_uncapped_grants_everything_until_throttled() -> None:
    throttle = CarrierThrottle(0, now=0.0)
    assert throttle.current_rate == 0.0
    assert throttle.state(0.0) is ThrottleState.NORMAL
    granted = 0
    for i in range(1000):  # 1000 parts over the first second
        granted += throttle.take(i / 1000, 1, MKT)
    assert granted == 1000
    assert throttle.delay_until_available(1.0) == 0.0
    for i in range(300):  # 300 more in the next 0.3 s
        throttle.take(1.0 + i / 1000, 1, MKT)
    throttle.on_throttled(1.3)
    assert throttle.current_rate == pytest.approx(0.7 * 1000, rel=0.01)
    assert throttle.state(1.3) is ThrottleState.THROTTLED
    assert not throttle.take(1.3, 1, MKT)  # no burst right after "too fast"
    # climbs back by max(1, 2% of the observed 1000/s) = 20/s per second, then the cap is lifted
    t = 2.3
    while throttle.current_rate != 0.0 and t < 100:
        throttle.on_success(t)
        t += 0.1
    assert throttle.current_rate == 0.0
    assert 15 <= t - 2.3 <= 17
    assert throttle.state(t) is ThrottleState.NORMAL


def test_uncapped_throttle_with_no_traffic_uses_the_floor() -> None:
    throttle = CarrierThrottle(0, now=0.0)
    throttle.on_throttled(5.0)
    assert throttle.current_rate == pytest.approx(1.0)


# -- queue full -----------------------------------------------------------------------------


def test_queue_full_pauses_and_doubles() -> None:
    throttle = CarrierThrottle(100, now=0.0)
    throttle.on_queue_full(1.0)
    assert throttle.state(1.5) is ThrottleState.PAUSED
    assert not throttle.take(1.5, 1, OTP)  # every lane stops: the carrier's queue is full
    assert throttle.delay_until_available(1.5, 1, OTP) == pytest.approx(0.5)
    throttle.on_queue_full(1.9)  # in flight before the pause: ignored
    assert throttle.paused_until == pytest.approx(2.0)
    assert throttle.take(2.0, 1, OTP)
    throttle.on_queue_full(2.1)  # again right after: 2 s
    assert throttle.paused_until == pytest.approx(4.1)
    throttle.on_queue_full(4.2)  # 4 s
    assert throttle.paused_until == pytest.approx(8.2)
    throttle.on_success(8.3)  # clean after the pause: reset
    throttle.on_queue_full(8.4)
    assert throttle.paused_until == pytest.approx(9.4)


def test_queue_full_pause_is_capped() -> None:
    throttle = CarrierThrottle(100, now=0.0)
    t = 0.0
    for _ in range(20):
        throttle.on_queue_full(t)
        t = throttle.paused_until + 0.01
    assert throttle.paused_until - (t - 0.01) <= 30.0 + 1e-9
    last = throttle.paused_until
    throttle.on_queue_full(last + 0.01)
    assert throttle.paused_until == pytest.approx(last + 0.01 + 30.0)


def test_queue_full_long_ago_starts_over() -> None:
    throttle = CarrierThrottle(100, now=0.0)
    for t in (0.0, 1.1, 3.2):
        throttle.on_queue_full(t)
    throttle.on_queue_full(1000.0)  # no success in between, but long after
    assert throttle.paused_until == pytest.approx(1001.0)


# -- reload ---------------------------------------------------------------------------------


def test_set_limit_at_full_rate_follows() -> None:
    throttle = CarrierThrottle(100, now=0.0)
    throttle.set_limit(200, now=1.0)
    assert throttle.current_rate == 200
    assert throttle.state(1.0) is ThrottleState.NORMAL
    throttle.set_limit(50, now=2.0)
    assert throttle.current_rate == 50
    assert throttle.burst <= 50 * 0.05 + 1 + 1e-9


def test_set_limit_while_throttled_keeps_the_adaptive_rate() -> None:
    throttle = CarrierThrottle(100, now=0.0)
    throttle.on_throttled(0.0)  # 70
    throttle.set_limit(200, now=0.5)
    assert throttle.current_rate == pytest.approx(70)
    throttle.set_limit(50, now=0.6)
    assert throttle.current_rate == pytest.approx(50)
    assert throttle.state(0.6) is ThrottleState.NORMAL


def test_set_limit_to_and_from_uncapped() -> None:
    throttle = CarrierThrottle(100, now=0.0)
    throttle.set_limit(0, now=1.0)
    assert throttle.current_rate == 0.0
    assert all(throttle.take(1.0, 1, MKT) for _ in range(1000))
    throttle.set_limit(100, now=2.0)
    assert throttle.current_rate == 100
    assert sum(throttle.take(2.0, 1, MKT) for _ in range(10)) == 4


def test_set_limit_changes_the_share() -> None:
    throttle = CarrierThrottle(100, now=0.0, otp_share=0.2)
    throttle.set_limit(100, now=0.0, otp_share=0.0)
    assert throttle.otp_share == 0.0
    assert sum(throttle.take(1.0, 1, MKT) for _ in range(10)) == 5


def test_snapshot() -> None:
    throttle = CarrierThrottle(100, now=0.0)
    throttle.on_queue_full(0.0)
    assert throttle.snapshot(0.25) == {
        "state": "paused",
        "tps": 100.0,
        "rate": 100.0,
        "otp_share": 0.2,
        "paused_for_s": 0.75,
    }


@pytest.mark.parametrize(
    "kwargs", [{"tps": -1}, {"tps": 10, "otp_share": 1.0}, {"tps": 10, "otp_share": -0.1}]
)
def test_invalid_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CarrierThrottle(now=0.0, **kwargs)
