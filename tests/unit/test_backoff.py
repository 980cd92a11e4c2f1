"""Reconnect policy of gateway.smpp.connection: Backoff and BindLimiter, pure (no loop, no sleep).

The properties the contract asks for: the first delay is ``reconnect_s``, delays double (with
jitter) up to ``reconnect_max_s``, the level resets only after a bind that stayed up, and a carrier
never sees more than 2 bind attempts in any one second.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.smpp.connection import STABLE_AFTER_S, Backoff, BindLimiter


def fixed(value: float):  # type: ignore[no-untyped-def]
    return lambda: value


def test_first_delay_is_initial_then_doubles_to_the_cap() -> None:
    b = Backoff(1.0, 60.0, random=fixed(0.0))
    delays = [b.failed(now=float(i)) for i in range(9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_jitter_only_shortens_and_stays_within_a_quarter() -> None:
    low = Backoff(1.0, 8.0, random=fixed(0.999999))
    high = Backoff(1.0, 8.0, random=fixed(0.0))
    for _ in range(6):
        lo, hi = low.failed(0.0), high.failed(0.0)
        assert 0.75 * hi <= lo <= hi


@given(st.lists(st.floats(0.0, 0.999999), min_size=2, max_size=30),
       st.floats(0.05, 5.0), st.integers(1, 12))
def test_delays_grow_strictly_until_the_cap(rolls: list[float], initial: float, factor: int) -> None:
    maximum = initial * 2 ** factor
    it = iter(rolls)
    b = Backoff(initial, maximum, random=lambda: next(it))
    delays = [b.failed(0.0) for _ in rolls]
    for d in delays:
        assert 0.75 * initial - 1e-9 <= d <= maximum + 1e-9
    for k, (a, c) in enumerate(itertools.pairwise(delays)):
        if initial * 2 ** (k + 1) <= maximum:  # the cap not yet reached: strictly longer
            assert c > a


def test_short_lived_bind_does_not_reset() -> None:
    """A carrier that accepts and drops at once must not get a storm of binds."""
    b = Backoff(1.0, 60.0, random=fixed(0.0))
    now = 0.0
    delays = []
    for _ in range(6):
        now += 1.0
        b.bound(now)
        now += 0.2  # dropped 200 ms after the bind
        delays.append(b.failed(now))
    assert delays == [1, 2, 4, 8, 16, 32]


def test_stable_bind_resets() -> None:
    b = Backoff(1.0, 60.0, random=fixed(0.0))
    for _ in range(5):
        b.failed(0.0)
    assert b.level == 5
    b.bound(100.0)
    assert b.failed(100.0 + STABLE_AFTER_S) == 1.0
    assert b.failed(200.0) == 2.0  # and the next failure climbs again


def test_failed_without_bound_never_resets() -> None:
    b = Backoff(0.5, 4.0, random=fixed(0.0))
    assert [b.failed(t * 1000.0) for t in range(5)] == [0.5, 1, 2, 4, 4]


def test_reset_and_configure() -> None:
    b = Backoff(1.0, 10.0, random=fixed(0.0))
    b.failed(0.0)
    b.failed(0.0)
    b.reset()
    assert b.failed(0.0) == 1.0
    b.configure(2.0, 3.0)
    assert b.failed(0.0) == 3.0  # level 2 → 4 s, capped at the new maximum
    with pytest.raises(ValueError):
        b.configure(5.0, 1.0)


def test_huge_level_does_not_overflow() -> None:
    b = Backoff(1.0, 60.0, random=fixed(0.0))
    for _ in range(5000):
        d = b.failed(0.0)
    assert d == 60.0


@pytest.mark.parametrize(("initial", "maximum", "jitter"), [(0, 1, 0.1), (2, 1, 0.1), (1, 2, 1.0)])
def test_invalid_parameters(initial: float, maximum: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, maximum, jitter=jitter)


def test_limiter_spaces_attempts() -> None:
    lim = BindLimiter(2.0)  # 0.5 s apart, plus the 5 % margin: 0.525 s
    assert lim.acquire(0.0) == 0.0
    assert lim.acquire(0.1) == pytest.approx(0.425)  # not yet: ask again in 0.425 s
    assert lim.acquire(0.5) == pytest.approx(0.025)  # 1 / rate is not enough
    assert lim.acquire(0.525) == 0.0
    assert lim.acquire(0.925) == pytest.approx(0.125)
    assert lim.acquire(1.2) == 0.0  # a late start moves the next slot too
    assert lim.acquire(1.6) == pytest.approx(0.125)
    assert lim.acquire(10.0) == 0.0  # idle time is not saved up as a burst
    assert lim.acquire(10.1) > 0


@given(st.lists(st.floats(0.0, 100.0), min_size=1, max_size=200), st.sampled_from([1.0, 2.0, 5.0]))
def test_limiter_never_more_than_rate_in_any_second(requests: list[float], rate: float) -> None:
    """Callers asking at arbitrary times, retrying after the wait they are told (plus jitter)."""
    lim = BindLimiter(rate)
    starts = []
    for now in sorted(requests):
        while (wait := lim.acquire(now)) > 0:
            now += wait + 0.001
        starts.append(now)
    starts.sort()
    for i, t in enumerate(starts):
        in_window = sum(1 for u in starts[i:] if u < t + 1.0)
        assert in_window <= rate


def test_limiter_rejects_bad_rate() -> None:
    with pytest.raises(ValueError):
        BindLimiter(0)
