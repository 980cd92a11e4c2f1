"""gateway.routing.policy: every rule as a pure function with an injected clock (epoch floats)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import Policies, TimeWindow, parse_rate
from gateway.model import Priority, RejectReason, Submission
from gateway.routing.policy import (
    Admission,
    BatchEntry,
    BatchLedger,
    PastMessage,
    Verdict,
    admit,
    calendar_bounds,
    capped_prefixes,
    history_horizon,
    history_since,
    in_window,
    next_opening,
    prefix_count_queries,
    prepare_text,
    retention_cutoff,
    window_until,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")
NUMBER = "+8613800138000"
OTHER = "+8613900139000"
TEST_PHONE = "+8613800000000"

FULL: dict[str, Any] = {
    "timezone": "Asia/Shanghai",
    "otp": {
        "limits": ["1/1m", "5/1h", "10/24h"],
        "exempt": [TEST_PHONE],
        "prefix_caps": {"+86": "6000/1m"},
    },
    "duplicate_content": "30s",
    "marketing": {"window": "08:00-20:00", "caps": ["50/24h", "4/30d"], "opt_out_text": "退订回T"},
    "signatures": {"billing": "【Brand】"},
    "blocked_content": ["(?i)casino", "赌博"],
    "retention_days": 183,
}


def rules(**overrides: Any) -> Policies:
    """The contract's example policies with some keys replaced (None removes a key)."""
    raw = {**FULL, **overrides}
    return Policies.model_validate({k: v for k, v in raw.items() if v is not None})


def at(text: str, tz: ZoneInfo = SHANGHAI) -> float:
    """`"2026-11-23 10:00:00"` local → epoch seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def sub(id: str = "m1", to: str = NUMBER, text: str = "hello", priority: Priority = Priority.OTP,
        **kw: Any) -> Submission:
    return Submission(id=id, to=to, text=text, priority=priority, **kw)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def entry(id: str, t: float, priority: Priority = Priority.OTP, text: str = "x") -> BatchEntry:
    return BatchEntry(id=id, created_at=t, priority=priority, text_sha256=digest(text))


def decide(s: Submission, history: Sequence[PastMessage], r: Policies, now: float,
           **kw: Any) -> Admission:
    final = prepare_text(s, r)
    kw.setdefault("prefix_counts", {p: 0 for p in capped_prefixes(s.to, r)})
    return admit(s, final, history, r, now, digest=digest(final), **kw)


NOON = at("2026-11-23 12:00:00")


# --------------------------------------------------------------------------------------------
# Content: signature and opt-out text


def test_marketing_gets_opt_out_text_appended_and_signature_prefixed() -> None:
    s = sub(text="双十一全场五折", priority=Priority.MARKETING, client="billing")
    assert prepare_text(s, rules()) == "【Brand】双十一全场五折退订回T"


def test_text_already_carrying_both_is_unchanged() -> None:
    text = "【Brand】双十一全场五折，退订回T"
    assert prepare_text(sub(text=text, priority=Priority.MARKETING, client="billing"), rules()) == text


def test_opt_out_text_anywhere_counts_and_case_is_ignored() -> None:
    r = rules(marketing={"opt_out_text": " Reply STOP"})
    text = "Reply stop to opt out. Sale today"
    assert prepare_text(sub(text=text, priority=Priority.MARKETING), r) == text
    assert prepare_text(sub(text="Sale", priority=Priority.MARKETING), r) == "Sale Reply STOP"


def test_signature_applies_to_every_priority_opt_out_text_only_to_marketing() -> None:
    for priority in (Priority.OTP, Priority.TRANSACTIONAL):
        assert prepare_text(sub(text="code 123456", priority=priority, client="billing"),
                            rules()) == "【Brand】code 123456"
    assert prepare_text(sub(text="code", client="other"), rules()) == "code"


def test_signature_by_sender_when_no_client_signature() -> None:
    r = rules(sender_signatures={"BRAND": "【Sender】"})
    assert prepare_text(sub(text="a", sender="BRAND"), r) == "【Sender】a"
    # the contract's per-client signature wins over the extra per-sender one
    assert prepare_text(sub(text="a", sender="BRAND", client="billing"), r) == "【Brand】a"


def test_no_policies_leaves_text_alone() -> None:
    assert prepare_text(sub(text="hi", priority=Priority.MARKETING, client="billing"),
                        Policies()) == "hi"


@given(text=st.text(max_size=40), marketing=st.booleans(), client=st.sampled_from([None, "billing"]))
def test_prepare_text_is_idempotent_and_adds_each_at_most_once(
        text: str, marketing: bool, client: str | None) -> None:
    r = rules()
    priority = Priority.MARKETING if marketing else Priority.TRANSACTIONAL
    once = prepare_text(sub(text=text, priority=priority, client=client), r)
    twice = prepare_text(sub(text=once, priority=priority, client=client), r)
    assert once == twice
    if client:
        assert once.startswith("【Brand】")
        assert once.count("【Brand】") <= text.count("【Brand】") + 1
    if marketing:
        assert "退订回t" in once.casefold()
        assert once.count("退订回T") <= text.count("退订回T") + 1
    assert text in once  # never rewritten, only extended


# --------------------------------------------------------------------------------------------
# Blocked content, opt-out


@pytest.mark.parametrize("priority", list(Priority))
def test_blocked_content_names_the_rule_at_any_priority(priority: Priority) -> None:
    d = decide(sub(text="Win big at the CASINO", priority=priority), [], rules(), NOON)
    assert d.verdict is Verdict.REJECT and d.rejection is not None
    assert d.rejection.reason is RejectReason.BLOCKED_CONTENT
    assert d.rejection.detail == 'text matches blocked_content[0] "(?i)casino"'
    assert d.rejection.extra == {"rule": "(?i)casino", "index": 0}


def test_blocked_content_sees_through_full_width_letters_and_names_the_second_rule() -> None:
    assert decide(sub(text="ｃａｓｉｎｏ night"), [], rules(), NOON).rejection is not None
    d = decide(sub(text="网上赌博"), [], rules(), NOON)
    assert d.rejection is not None and d.rejection.extra["index"] == 1


def test_opted_out_rejects_marketing_only() -> None:
    d = decide(sub(priority=Priority.MARKETING), [], rules(), NOON, opted_out=True)
    assert d.rejection is not None and d.rejection.reason is RejectReason.OPTED_OUT
    for priority in (Priority.OTP, Priority.TRANSACTIONAL):
        assert decide(sub(priority=priority), [], rules(), NOON, opted_out=True).verdict is Verdict.ACCEPT


def test_without_policies_only_opt_out_applies() -> None:
    none = Policies()
    history = [entry(f"e{i}", NOON - 1, text="hello") for i in range(50)]
    for priority in Priority:
        assert decide(sub(text="casino", priority=priority), history, none,
                      at("2026-11-23 23:00:00")).verdict is Verdict.ACCEPT
    assert decide(sub(priority=Priority.MARKETING), [], none, NOON,
                  opted_out=True).verdict is Verdict.REJECT
    assert history_horizon(none) == {}
    assert retention_cutoff(none, NOON) is None


# --------------------------------------------------------------------------------------------
# Duplicate content


def test_duplicate_content_same_text_other_id_within_interval() -> None:
    r = rules(otp=None)
    final = prepare_text(sub(text="code 1"), r)
    history = [BatchEntry("first", NOON - 10, Priority.TRANSACTIONAL, digest(final))]
    d = decide(sub("second", text="code 1"), history, r, NOON)
    assert d.rejection is not None and d.rejection.reason is RejectReason.DUPLICATE_CONTENT
    assert d.rejection.extra["duplicate_of"] == "first"
    assert d.rejection.extra["retry_after_s"] == 20


def test_duplicate_content_edges() -> None:
    r = rules(otp=None)
    final = prepare_text(sub(text="code 1"), r)
    old = [BatchEntry("first", NOON - 30, Priority.OTP, digest(final))]
    assert decide(sub("second", text="code 1"), old, r, NOON).verdict is Verdict.ACCEPT  # interval over
    recent = [BatchEntry("first", NOON - 29.9, Priority.OTP, digest(final))]
    assert decide(sub("second", text="code 2"), recent, r, NOON).verdict is Verdict.ACCEPT  # other text
    assert decide(sub("first", text="code 1"), recent, r, NOON).verdict is Verdict.ACCEPT  # same id
    assert decide(sub("second", text="code 1"), recent, rules(otp=None, duplicate_content=None),
                  NOON).verdict is Verdict.ACCEPT


# --------------------------------------------------------------------------------------------
# OTP limits


def test_second_otp_within_a_minute_is_rate_limited_naming_the_limit() -> None:
    d = decide(sub("b", text="code 2"), [entry("a", NOON - 59)], rules(), NOON)
    assert d.rejection is not None and d.rejection.reason is RejectReason.RATE_LIMITED
    assert d.rejection.detail == "OTP limit 1/1m reached for this number"
    assert d.rejection.extra == {"scope": "recipient", "limit": "1/1m", "window": "sliding",
                                 "rule": "otp.limits[0]", "retry_after_s": 1}
    # a period after the first it fits again: the sliding window is (now - 60, now]
    assert decide(sub("b", text="code 2"), [entry("a", NOON - 60)], rules(), NOON).verdict is Verdict.ACCEPT


def test_hour_and_day_limits() -> None:
    five = [entry(f"e{i}", NOON - 3000 + i * 300) for i in range(5)]
    d = decide(sub("n", text="c"), five, rules(), NOON)
    assert d.rejection is not None and d.rejection.extra["limit"] == "5/1h"
    ten = [entry(f"e{i}", NOON - 80000 + i * 7000) for i in range(10)]
    d = decide(sub("n", text="c"), ten, rules(), NOON)
    assert d.rejection is not None and d.rejection.extra["limit"] == "10/24h"
    assert d.rejection.extra["rule"] == "otp.limits[2]"


def test_limits_ignore_other_priorities_and_other_numbers_history() -> None:
    history = [entry("t", NOON - 5, Priority.TRANSACTIONAL), entry("m", NOON - 5, Priority.MARKETING)]
    assert decide(sub("n", text="c"), history, rules(), NOON).verdict is Verdict.ACCEPT


def test_exempt_test_phone_skips_otp_limits_and_prefix_caps() -> None:
    history = [entry(f"e{i}", NOON - i, text=f"t{i}") for i in range(20)]
    d = decide(sub("n", to=TEST_PHONE, text="fresh"), history, rules(), NOON, prefix_counts={})
    assert d.verdict is Verdict.ACCEPT
    assert prefix_count_queries([TEST_PHONE], rules(), NOON) == {}


def test_calendar_windows_as_the_config_extra() -> None:
    r = rules(otp={"limits": [{"limit": "1/1h", "window": "calendar"}]})
    history = [entry("a", at("2026-11-23 10:00:00"))]
    d = decide(sub("b", text="c"), history, r, at("2026-11-23 10:59:59"))
    assert d.rejection is not None
    assert d.rejection.detail == "OTP limit 1/1h (calendar, Asia/Shanghai) reached for this number"
    assert d.rejection.extra["window"] == "calendar" and d.rejection.extra["retry_after_s"] == 1
    assert decide(sub("b", text="c"), history, r, at("2026-11-23 11:00:00")).verdict is Verdict.ACCEPT


def test_rejected_submissions_do_not_count() -> None:
    ledger = BatchLedger(rules(), NOON, {NUMBER: [entry("a", NOON - 30)]}, {"+86": 1})
    assert ledger.admit(sub("b", text="b"), "b", digest="b").verdict is Verdict.REJECT
    later = BatchLedger(rules(), NOON + 30, {NUMBER: ledger.entries(NUMBER)}, {"+86": 1})
    assert later.admit(sub("c", text="c"), "c", digest="c").verdict is Verdict.ACCEPT


def test_an_idempotent_repeat_does_not_count_against_itself() -> None:
    d = decide(sub("a", text="code"), [entry("a", NOON - 1, text="code")], rules(), NOON)
    assert d.verdict is Verdict.ACCEPT


LIMITS = st.lists(
    st.tuples(st.integers(1, 4), st.sampled_from([10, 60, 300, 3600])), min_size=1, max_size=3)


@settings(max_examples=150, deadline=None)
@given(limits=LIMITS, gaps=st.lists(st.floats(0, 400, allow_nan=False), min_size=1, max_size=60))
def test_no_sequence_lets_more_than_n_through_any_sliding_window(
        limits: list[tuple[int, int]], gaps: list[float]) -> None:
    r = rules(otp={"limits": [f"{n}/{p}s" for n, p in limits]}, duplicate_content=None)
    rates = r.otp.limits
    accepted: list[float] = []
    history: dict[str, list[PastMessage]] = {NUMBER: []}
    t = NOON
    for i, gap in enumerate(gaps):
        t += gap
        ledger = BatchLedger(r, t, history)  # one batch per arrival; history carried over
        verdict = ledger.admit(sub(f"m{i}", text=f"c{i}"), f"c{i}", digest=f"d{i}")
        history = {NUMBER: ledger.entries(NUMBER)}
        in_windows = [sum(1 for a in accepted if a > t - rate.period_s) for rate in rates]
        if verdict.admitted:
            accepted.append(t)
            assert all(n < rate.count for n, rate in zip(in_windows, rates, strict=True))
        else:  # never stricter than needed: some limit really was full
            assert any(n >= rate.count for n, rate in zip(in_windows, rates, strict=True))
    for rate in rates:  # any half-open window of length P is maximal when it ends on an accept
        for end in accepted:
            assert sum(1 for a in accepted if end - rate.period_s < a <= end) <= rate.count


@settings(max_examples=100, deadline=None)
@given(gaps=st.lists(st.integers(0, 2400), min_size=1, max_size=50),
       start=st.integers(0, 3 * 86400), zone=st.sampled_from(["Asia/Shanghai", "Europe/Berlin"]))
def test_calendar_buckets_never_exceed_n(gaps: list[int], start: int, zone: str) -> None:
    # Around the Berlin autumn change (2026-10-25) to exercise the repeated hour.
    r = rules(timezone=zone, otp={"limits": [{"limit": "2/1h", "window": "calendar"},
                                             {"limit": "5/1d", "window": "calendar"}]},
              duplicate_content=None)
    tz = ZoneInfo(zone)
    t = at("2026-10-24 00:00:00", tz) + start
    history: list[PastMessage] = []
    accepted: list[float] = []
    for i, gap in enumerate(gaps):
        t += gap
        ledger = BatchLedger(r, t, {NUMBER: history})
        if ledger.admit(sub(f"m{i}", text=f"c{i}"), f"c{i}", digest=f"d{i}").admitted:
            accepted.append(t)
        history = ledger.entries(NUMBER)
    for rate in r.otp.limits:
        buckets: dict[float, int] = {}
        for a in accepted:
            bucket = calendar_bounds(rate, tz, a)[0]
            buckets[bucket] = buckets.get(bucket, 0) + 1
        assert max(buckets.values(), default=0) <= rate.count


def test_calendar_bounds() -> None:
    hour = parse_rate("1/1h", "calendar")
    assert calendar_bounds(hour, SHANGHAI, at("2026-11-23 14:03:20")) == (
        at("2026-11-23 14:00:00"), at("2026-11-23 15:00:00"))
    day = parse_rate("1/1d", "calendar")
    start, end = calendar_bounds(day, BERLIN, at("2026-10-25 12:00:00", BERLIN))
    assert start == at("2026-10-25 00:00:00", BERLIN) and end - start == 25 * 3600  # DST day
    week = parse_rate("1/7d", "calendar")
    start, _ = calendar_bounds(week, SHANGHAI, at("2026-11-26 09:00:00"))  # a Thursday
    assert datetime.fromtimestamp(start, SHANGHAI) == datetime(2026, 11, 23, tzinfo=SHANGHAI)


# --------------------------------------------------------------------------------------------
# Prefix caps (pumping guard)


def test_prefix_cap_rejects_with_scope_prefix() -> None:
    r = rules(otp={"prefix_caps": {"+86": "3/1m", "+86139": "1/1m"}})
    d = decide(sub(), [], r, NOON, prefix_counts={"+86": 3})
    assert d.rejection is not None and d.rejection.reason is RejectReason.RATE_LIMITED
    assert d.rejection.extra["scope"] == "prefix" and d.rejection.extra["prefix"] == "+86"
    assert d.rejection.extra["limit"] == "3/1m"
    assert d.rejection.detail == "OTP volume cap 3/1m reached for prefix +86"
    # every matching prefix applies, not only the longest
    d = decide(sub(to=OTHER), [], r, NOON, prefix_counts={"+86": 0, "+86139": 1})
    assert d.rejection is not None and d.rejection.extra["prefix"] == "+86139"
    assert decide(sub(priority=Priority.TRANSACTIONAL), [], r, NOON,
                  prefix_counts={}).verdict is Verdict.ACCEPT  # OTP only


def test_prefix_count_missing_is_a_loud_error() -> None:
    with pytest.raises(ValueError, match="prefix_counts"):
        admit(sub(), "hello", [], rules(), NOON, digest="x")


def test_prefix_count_queries_and_batch_counting() -> None:
    r = rules(otp={"prefix_caps": {"+86": "2/1m", "+1": {"limit": "5/1m", "window": "calendar"}}})
    queries = prefix_count_queries([NUMBER, OTHER], r, NOON)
    assert queries == {"+86": pytest.approx(NOON - 60 + 1e-6)}
    assert prefix_count_queries(["+12025550123"], r, NOON + 30) == {"+1": NOON}
    ledger = BatchLedger(r, NOON, prefix_counts={"+86": 1})
    assert ledger.admit(sub("a", to=NUMBER), "hello", digest="a").admitted
    assert ledger.prefix_count("+86") == 2
    d = ledger.admit(sub("b", to=OTHER), "hello", digest="b")
    assert d.rejection is not None and d.rejection.extra["scope"] == "prefix"


# --------------------------------------------------------------------------------------------
# Marketing caps and the window


def test_marketing_caps_count_marketing_only() -> None:
    r = rules(marketing={"caps": ["2/24h"]}, duplicate_content=None)
    two = [entry("a", NOON - 3600, Priority.MARKETING), entry("b", NOON - 60, Priority.MARKETING)]
    d = decide(sub("c", priority=Priority.MARKETING), two, r, NOON)
    assert d.rejection is not None and d.rejection.reason is RejectReason.FREQUENCY_CAPPED
    assert d.rejection.extra == {"scope": "recipient", "limit": "2/24h", "window": "sliding",
                                 "rule": "marketing.caps[0]", "retry_after_s": 82800}
    otps = [entry("a", NOON - 3600), entry("b", NOON - 60, Priority.TRANSACTIONAL)]
    assert decide(sub("c", priority=Priority.MARKETING), otps, r, NOON).verdict is Verdict.ACCEPT


def test_thirty_day_cap() -> None:
    r = rules(duplicate_content=None)
    four = [entry(f"e{i}", NOON - 86400 * (29 - i), Priority.MARKETING) for i in range(4)]
    d = decide(sub("n", priority=Priority.MARKETING), four, r, NOON)
    assert d.rejection is not None and d.rejection.extra["limit"] == "4/30d"


def test_marketing_outside_window_is_deferred_to_next_opening() -> None:
    d = decide(sub(priority=Priority.MARKETING), [], rules(), at("2026-11-23 20:30:00"))
    assert d.verdict is Verdict.DEFER and d.reason == "marketing_window" and d.admitted
    assert d.until is not None and d.until.isoformat() == "2026-11-24T08:00:00+08:00"
    for priority in (Priority.OTP, Priority.TRANSACTIONAL):
        assert decide(sub(priority=priority), [], rules(),
                      at("2026-11-23 20:30:00")).verdict is Verdict.ACCEPT


def test_marketing_window_is_checked_when_due_not_when_received() -> None:
    late = datetime(2026, 11, 23, 21, 0, tzinfo=SHANGHAI)
    d = decide(sub(priority=Priority.MARKETING, not_before=late), [], rules(), NOON)
    assert d.until == datetime(2026, 11, 24, 8, 0, tzinfo=SHANGHAI)
    soon = datetime(2026, 11, 23, 7, 0, tzinfo=SHANGHAI)  # due before the opening
    d = decide(sub(priority=Priority.MARKETING, not_before=soon), [], rules(), at("2026-11-23 06:00:00"))
    assert d.until == datetime(2026, 11, 23, 8, 0, tzinfo=SHANGHAI)
    inside = datetime(2026, 11, 23, 15, 0, tzinfo=SHANGHAI)  # the caller's not_before deferral
    assert decide(sub(priority=Priority.MARKETING, not_before=inside), [], rules(),
                  at("2026-11-23 06:00:00")).verdict is Verdict.ACCEPT


def test_caps_are_checked_before_the_window() -> None:
    r = rules(marketing={"window": "08:00-20:00", "caps": ["1/24h"]}, duplicate_content=None)
    d = decide(sub("b", priority=Priority.MARKETING), [entry("a", NOON, Priority.MARKETING)], r,
               at("2026-11-23 21:00:00"))
    assert d.rejection is not None and d.rejection.reason is RejectReason.FREQUENCY_CAPPED


def test_prefix_windows_extra_and_window_until() -> None:
    r = rules(marketing={"window": "08:00-20:00", "prefix_windows": {"+1": "09:00-21:00"}})
    now = at("2026-11-23 20:30:00")
    assert window_until("+12025550123", r, now) is None
    until = window_until(NUMBER, r, now)
    assert until is not None and until.isoformat() == "2026-11-24T08:00:00+08:00"
    assert window_until(NUMBER, rules(marketing=None), now) is None


W = TimeWindow(8 * 60, 20 * 60)
NIGHT = TimeWindow(22 * 60, 6 * 60)


@pytest.mark.parametrize(("local", "inside"), [
    ("2026-11-23 08:00:00", True), ("2026-11-23 07:59:59", False),
    ("2026-11-23 19:59:59", True), ("2026-11-23 20:00:00", False), ("2026-11-23 00:00:00", False),
])
def test_window_edges(local: str, inside: bool) -> None:
    assert in_window(W, SHANGHAI, at(local)) is inside


@pytest.mark.parametrize(("local", "inside"), [
    ("2026-11-23 22:00:00", True), ("2026-11-23 23:59:59", True), ("2026-11-24 00:00:00", True),
    ("2026-11-24 05:59:59", True), ("2026-11-24 06:00:00", False), ("2026-11-23 21:59:59", False),
])
def test_window_spanning_midnight(local: str, inside: bool) -> None:
    assert in_window(NIGHT, SHANGHAI, at(local)) is inside


def test_next_opening_cases() -> None:
    def local(text: str, tz: ZoneInfo = SHANGHAI) -> datetime:
        return datetime.fromisoformat(text).replace(tzinfo=tz)

    assert next_opening(W, SHANGHAI, at("2026-11-23 07:00:00")) == local("2026-11-23 08:00:00")
    assert next_opening(W, SHANGHAI, at("2026-11-23 20:00:00")) == local("2026-11-24 08:00:00")
    assert next_opening(W, SHANGHAI, at("2026-11-23 12:00:00")) == local("2026-11-23 12:00:00")
    assert next_opening(NIGHT, SHANGHAI, at("2026-11-24 06:00:00")) == local("2026-11-24 22:00:00")
    assert next_opening(NIGHT, SHANGHAI, at("2026-11-24 02:00:00")) == local("2026-11-24 02:00:00")
    # Berlin: the offset follows the season
    assert next_opening(W, BERLIN, at("2026-07-01 21:00:00", BERLIN)).isoformat() == "2026-07-02T08:00:00+02:00"
    assert next_opening(W, BERLIN, at("2026-12-01 21:00:00", BERLIN)).isoformat() == "2026-12-02T08:00:00+01:00"


def test_next_opening_across_berlin_dst_changes() -> None:
    # 2026-03-29: 02:00 CET jumps to 03:00 CEST. A 02:30 start opens at the jump (01:00 UTC).
    before = datetime(2026, 3, 29, 0, 30, tzinfo=UTC).timestamp()
    opening = next_opening(TimeWindow(150, 1200), BERLIN, before)
    assert opening.astimezone(UTC) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert opening.isoformat() == "2026-03-29T03:00:00+02:00"
    # A window entirely inside the skipped hour does not exist that day.
    skipped = next_opening(TimeWindow(135, 165), BERLIN, before)
    assert skipped.isoformat() == "2026-03-30T02:15:00+02:00"
    # 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30-02:45 happens twice.
    first_pass_after = datetime(2026, 10, 25, 0, 50, tzinfo=UTC).timestamp()  # 02:50 CEST
    again = next_opening(TimeWindow(150, 165), BERLIN, first_pass_after)
    assert again.astimezone(UTC) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    assert again.isoformat() == "2026-10-25T02:30:00+01:00"


WINDOWS = st.tuples(st.integers(0, 1439), st.integers(1, 1440)).filter(
    lambda w: w[0] != w[1] % 1440).map(lambda w: TimeWindow(*w))


@settings(max_examples=300, deadline=None)
@given(window=WINDOWS, offset=st.integers(0, 400 * 86400),
       zone=st.sampled_from(["Asia/Shanghai", "Europe/Berlin"]))
def test_next_opening_is_the_first_instant_inside(window: TimeWindow, offset: int, zone: str) -> None:
    tz = ZoneInfo(zone)
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp() + offset
    opening = next_opening(window, tz, now).timestamp()
    assert opening >= now and in_window(window, tz, opening)
    if opening > now:
        assert not in_window(window, tz, opening - 1)
        # nothing inside between now and the opening (checked on every minute boundary)
        minute = now - now % 60 + 60
        while minute < opening:
            assert not in_window(window, tz, minute)
            minute += 60
    assert opening - now < 2 * 86400


# --------------------------------------------------------------------------------------------
# Batches, horizons, retention


def test_two_submissions_in_one_batch_count_each_other() -> None:
    history: dict[str, list[PastMessage]] = {NUMBER: []}
    ledger = BatchLedger(rules(), NOON, history, {"+86": 0})
    first = ledger.admit(sub("a", text="code 1"), "code 1", digest=digest("code 1"))
    second = ledger.admit(sub("b", text="code 2"), "code 2", digest=digest("code 2"))
    assert first.verdict is Verdict.ACCEPT
    assert second.rejection is not None and second.rejection.reason is RejectReason.RATE_LIMITED
    assert history == {NUMBER: []}  # the caller's mapping is not touched
    r = rules(otp=None)
    ledger = BatchLedger(r, NOON)
    text = prepare_text(sub(text="same", priority=Priority.MARKETING), r)
    a = ledger.admit(sub("a", text="same", priority=Priority.MARKETING), text, digest=digest(text))
    b = ledger.admit(sub("b", text="same", priority=Priority.MARKETING), text, digest=digest(text))
    assert a.admitted and b.rejection is not None
    assert b.rejection.reason is RejectReason.DUPLICATE_CONTENT


def test_a_deferred_marketing_message_counts_in_the_batch() -> None:
    r = rules(marketing={"window": "08:00-20:00", "caps": ["1/24h"]})
    ledger = BatchLedger(r, at("2026-11-23 21:00:00"), opted_out={OTHER})
    a = ledger.admit(sub("a", text="x", priority=Priority.MARKETING), "x", digest="x")
    b = ledger.admit(sub("b", text="y", priority=Priority.MARKETING), "y", digest="y")
    c = ledger.admit(sub("c", to=OTHER, text="y", priority=Priority.MARKETING), "y", digest="y")
    assert a.verdict is Verdict.DEFER
    assert b.rejection is not None and b.rejection.reason is RejectReason.FREQUENCY_CAPPED
    assert c.rejection is not None and c.rejection.reason is RejectReason.OPTED_OUT


def test_history_horizon() -> None:
    horizon: Mapping[Priority, float] = history_horizon(rules())
    assert horizon == {Priority.OTP: 86400, Priority.TRANSACTIONAL: 30,
                       Priority.MARKETING: 30 * 86400}
    calendar = rules(otp={"limits": [{"limit": "5/1h", "window": "calendar"}]}, duplicate_content=None,
                     marketing=None)
    assert history_horizon(calendar) == {Priority.OTP: 3600 + 7200}
    assert history_since(rules(), NOON)[Priority.TRANSACTIONAL] == NOON - 30


def test_history_horizon_covers_every_entry_admit_counts() -> None:
    # Entries just outside the horizon never change a decision.
    r = rules()
    since = history_since(r, NOON)
    stale = [entry(f"o{i}", since[Priority.OTP] - 1) for i in range(20)]
    assert decide(sub("n", text="z"), stale, r, NOON).verdict is Verdict.ACCEPT


def test_retention_cutoff() -> None:
    assert retention_cutoff(rules(), NOON) == NOON - 183 * 86400
    assert retention_cutoff(rules(retention_days=1), NOON) == NOON - 86400


def test_until_is_published_with_the_local_offset() -> None:
    d = decide(sub(priority=Priority.MARKETING), [], rules(timezone="Europe/Berlin"),
               at("2026-11-23 22:00:00", BERLIN))
    assert d.until is not None and d.until.isoformat() == "2026-11-24T08:00:00+01:00"
    assert d.until - datetime.fromtimestamp(at("2026-11-23 22:00:00", BERLIN), BERLIN) == timedelta(hours=10)
