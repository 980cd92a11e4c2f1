"""Admission policies: pure decisions of (submission, recipient history, rules, clock).

Owns the `policies:` rules of CONTRACT.md: marketing content (opt-out text, signatures), blocked
content, opt-out, duplicate content, OTP velocity limits per recipient and per destination prefix
(the SMS-pumping guard), marketing frequency caps and the marketing sending window. No I/O and no
clock of its own: the caller fetches what the rules need from the store and passes the time.

Time
----
`now` is always epoch seconds (`float`), the same unit as the store's `created_at` and the
admission callback's clock, so history entries compare without conversions. Instants that are
published (`until` of a deferral, window openings) come back as aware `datetime`s in the
policies' time zone, so `until.isoformat()` carries the local offset (`…T08:00:00+08:00`).

Windows of `N/period`
---------------------
- sliding (the contract's meaning): the messages accepted in `(now - period, now]`. A message
  accepted exactly `period` ago no longer counts, so "1/1m" lets one through every 60 s and no
  interval of 60 s ever holds two.
- calendar (the config extra `{limit: "5/1h", window: calendar}`): buckets aligned on the local
  wall clock of `policies.timezone`: a period shorter than a day tiles the day from local
  midnight (14:00:00-14:59:59 for 1h); whole days start at local midnight, several days in
  consecutive blocks counted from 0001-01-01 (so 7d weeks start on Mondays). Around a DST
  change a bucket starts at the earliest instant carrying its wall-clock start (fold=0), which
  can make it longer, never shorter: the limit only gets stricter.
Limits and caps count accepted messages only: the store's history holds no rejection.

How the admission callback uses this (one batch of submissions)
----------------------------------------------------------------
    since   = history_since(rules, now)                         # {Priority: epoch}
    history = await store.history(numbers, since) if since else {}
    queries = prefix_count_queries(otp_numbers, rules, now)     # {prefix: epoch}
    counts  = {p: await store.count_prefix(p, Priority.OTP, s) for p, s in queries.items()}
    opted   = await store.opted_out(marketing_numbers)
    ledger  = BatchLedger(rules, now, history, counts, opted)
    for sub in batch:                                           # in arrival order
        text = prepare_text(sub, rules)
        verdict = ledger.admit(sub, text, digest=store.text_digest(text))
`BatchLedger.admit` records every admitted (accepted or deferred) submission in its copy of
the history and prefix counts, so two submissions to one number in the same batch count each
other although neither is in the store yet. `admit()` itself is the pure rule set for one
submission; callers that do their own bookkeeping append `history_entry(...)` to the number's
list after each admitted submission and bump `prefix_counts` with `capped_prefixes(...)`.
"""

from __future__ import annotations

import enum
import math
import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Protocol

from gateway.config import Policies, Rate, TimeWindow
from gateway.model import Priority, RejectReason, Rejection, Submission

__all__ = [
    "DEFER_MARKETING_WINDOW",
    "Admission",
    "BatchEntry",
    "BatchLedger",
    "PastMessage",
    "Rules",
    "Verdict",
    "admit",
    "calendar_bounds",
    "capped_prefixes",
    "history_entry",
    "history_horizon",
    "history_since",
    "in_window",
    "next_opening",
    "prefix_count_queries",
    "prepare_text",
    "retention_cutoff",
    "signature_for",
    "window_until",
]

Rules = Policies
"""The rules are the config's `policies:` section as parsed (`cfg.policies`)."""

DEFER_MARKETING_WINDOW = "marketing_window"

# How much further back than its period a calendar bucket can start, in elapsed time: a local
# day that contains a DST change lasts 25 hours (Lord Howe's half hour and historical double
# summer time stay within two).
_DST_SLACK_S = 7200.0
_DAY_S = 86400.0


# --------------------------------------------------------------------------------------------
# History entries
# --------------------------------------------------------------------------------------------


class PastMessage(Protocol):
    """One accepted message to a recipient, as the rules read it. `gateway.queue.store`'s
    `HistoryEntry` has exactly this shape; it is a protocol here because `routing/` must not
    import `queue/` (DESIGN.md's dependency direction), and this module must stay I/O-free."""

    @property
    def id(self) -> str: ...

    @property
    def created_at(self) -> float: ...  # epoch seconds

    @property
    def priority(self) -> Priority: ...

    @property
    def text_sha256(self) -> str | None: ...  # hex digest of the final text (Store.text_digest)


@dataclass(frozen=True, slots=True)
class BatchEntry:
    """A `PastMessage` made here: what an admitted submission adds to the batch's history."""

    id: str
    created_at: float
    priority: Priority
    text_sha256: str | None


# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------


class Verdict(enum.StrEnum):
    """What happens to one submission."""

    ACCEPT = "accept"  # stored, due now (or at its own `not_before`)
    DEFER = "defer"  # stored, due at `until` (an `accepted` then a `deferred` event)
    REJECT = "reject"  # refused before any send, with a reason from the closed set


@dataclass(frozen=True, slots=True)
class Admission:
    """The decision for one submission. Build it with `accept()`, `defer()` or `reject()`."""

    verdict: Verdict
    until: datetime | None = None  # DEFER: aware, in the policies' time zone
    reason: str | None = None  # DEFER: "marketing_window"
    rejection: Rejection | None = None  # REJECT

    @classmethod
    def accept(cls) -> Admission:
        return cls(Verdict.ACCEPT)

    @classmethod
    def defer(cls, until: datetime, reason: str = DEFER_MARKETING_WINDOW) -> Admission:
        return cls(Verdict.DEFER, until=until, reason=reason)

    @classmethod
    def reject(cls, rejection: Rejection) -> Admission:
        return cls(Verdict.REJECT, rejection=rejection)

    @property
    def admitted(self) -> bool:
        """Stored (accepted or deferred): it counts in the history from now on."""
        return self.verdict is not Verdict.REJECT


# --------------------------------------------------------------------------------------------
# Content: signatures, opt-out text, blocked content
# --------------------------------------------------------------------------------------------


def signature_for(sub: Submission, rules: Rules) -> str | None:
    """The signature for a submission: by `client` (the contract's `signatures`), else by
    `sender` (the extra `sender_signatures`); None when neither is configured for it."""
    if sub.client is not None and sub.client in rules.signatures:
        return rules.signatures[sub.client]
    if sub.sender is not None and sub.sender in rules.sender_signatures:
        return rules.sender_signatures[sub.sender]
    return None


def prepare_text(sub: Submission, rules: Rules) -> str:
    """The final text: signature prefixed when missing (any priority), then for marketing the
    opt-out text appended when missing. Idempotent: a text that already starts with the
    signature and contains the opt-out text comes back unchanged.

    The signature applies to every priority because Chinese carriers require 【签名】 on every
    SMS, OTP included; the opt-out text only to marketing, as the contract says. "Contains the
    opt-out text" ignores case (`reply stop` counts for `Reply STOP`) and surrounding spaces of
    the configured text, so a client who wrote it already does not get it twice; when appended
    it is appended exactly as configured (a leading space in the YAML is kept).
    """
    text = sub.text
    signature = signature_for(sub, rules)
    if signature is not None and not text.startswith(signature):
        text = signature + text
    opt_out = rules.marketing.opt_out_text
    if sub.priority is Priority.MARKETING and opt_out is not None:
        if opt_out.strip().casefold() not in text.casefold():
            text = text + opt_out
    return text


def _blocked(texts: Iterable[str], rules: Rules) -> Rejection | None:
    """The first blocked_content rule matching any of the texts (or their NFKC form, so that
    full-width ｃａｓｉｎｏ does not slip past `casino`)."""
    candidates: list[str] = []
    for text in texts:
        candidates.append(text)
        folded = unicodedata.normalize("NFKC", text)
        if folded != text:
            candidates.append(folded)
    for index, pattern in enumerate(rules.blocked_content):
        if any(pattern.search(t) for t in candidates):
            return Rejection(
                RejectReason.BLOCKED_CONTENT,
                f'text matches blocked_content[{index}] "{pattern.pattern}"',
                {"rule": pattern.pattern, "index": index},
            )
    return None


# --------------------------------------------------------------------------------------------
# Rate windows
# --------------------------------------------------------------------------------------------


_UNITS: tuple[tuple[str, float], ...] = (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0))


def _label(rate: Rate) -> str:
    """`Rate(1, 60)` → "1/1m", in the form the YAML uses. The config keeps seconds only, so a
    day is shown as "24h" (the contract's own example, "10/24h"); longer periods in days."""
    period = rate.period_s
    if period == 86400.0:
        return f"{rate.count}/24h"
    for unit, size in _UNITS:
        if period >= size and period % size == 0:
            return f"{rate.count}/{int(period // size)}{unit}"
    return f"{rate.count}/{period:g}s"


def _wall(day: date, seconds: int, tz: tzinfo) -> datetime:
    """`seconds` after local midnight of `day` on the wall clock, at its earliest instant
    (fold=0: in a repeated hour the first pass; in a skipped hour the moment of the change)."""
    hours, rest = divmod(seconds, 3600)
    return datetime.combine(day, time(hours, rest // 60, rest % 60), tzinfo=tz)


def calendar_bounds(rate: Rate, tz: tzinfo, now: float) -> tuple[float, float]:
    """(start, end) epochs of the calendar bucket of `rate` that holds `now` (see the module
    docstring for the alignment). The config only allows periods that tile a day or are whole
    days."""
    local = datetime.fromtimestamp(now, tz)
    day = local.date()
    if rate.period_s < _DAY_S:
        period = int(rate.period_s)
        elapsed = local.hour * 3600 + local.minute * 60 + local.second
        offset = elapsed - elapsed % period
        start = _wall(day, offset, tz)
        end_offset = offset + period
        end = (_wall(day + timedelta(days=1), 0, tz) if end_offset >= _DAY_S
               else _wall(day, end_offset, tz))
    else:
        days = int(rate.period_s // _DAY_S)
        ordinal = day.toordinal()
        first = date.fromordinal(ordinal - (ordinal - 1) % days)
        start = _wall(first, 0, tz)
        end = _wall(first + timedelta(days=days), 0, tz)
    return start.timestamp(), end.timestamp()


def _window_start(rate: Rate, tz: tzinfo, now: float) -> float:
    """Entries at or after this epoch count (sliding: strictly after, see `_counted`)."""
    if rate.window == "calendar":
        return calendar_bounds(rate, tz, now)[0]
    return now - rate.period_s


def _counted(entries: Iterable[PastMessage], rate: Rate, tz: tzinfo, now: float) -> list[float]:
    """Times of the entries that count against `rate` at `now`, oldest first."""
    start = _window_start(rate, tz, now)
    if rate.window == "calendar":
        times = [e.created_at for e in entries if e.created_at >= start]
    else:  # (now - period, now]: one accepted exactly a period ago has left the window
        times = [e.created_at for e in entries if e.created_at > start]
    times.sort()
    return times


def _retry_after(times: Sequence[float], rate: Rate, tz: tzinfo, now: float) -> float:
    """Seconds until one more would fit: when enough of the counted entries leave the window."""
    if rate.window == "calendar":
        return max(0.0, calendar_bounds(rate, tz, now)[1] - now)
    # With m >= N entries in the window, the next fits once only N-1 remain: after the
    # (m-N+1)-th oldest (index m-N) is a full period old.
    oldest_blocking = times[len(times) - rate.count]
    return max(0.0, oldest_blocking + rate.period_s - now)


def _limit_extra(scope: str, rate: Rate, retry_after: float, **more: object) -> dict[str, object]:
    extra: dict[str, object] = {"scope": scope, "limit": _label(rate), "window": rate.window}
    extra.update(more)
    extra["retry_after_s"] = math.ceil(retry_after)
    return extra


def _first_exceeded(entries: Sequence[PastMessage], rates: Iterable[Rate], tz: tzinfo,
                    now: float) -> tuple[int, Rate, float] | None:
    """The first rate (in configured order) with no room left: its index in the list, itself,
    and the seconds until it has room."""
    for index, rate in enumerate(rates):
        times = _counted(entries, rate, tz, now)
        if len(times) >= rate.count:
            return index, rate, _retry_after(times, rate, tz, now)
    return None


def _window_text(rate: Rate, rules: Rules) -> str:
    return f" (calendar, {rules.timezone})" if rate.window == "calendar" else ""


# --------------------------------------------------------------------------------------------
# Prefix caps (SMS pumping guard)
# --------------------------------------------------------------------------------------------


def capped_prefixes(number: str, rules: Rules) -> list[str]:
    """Every `otp.prefix_caps` prefix that `number` falls under. All of them apply, not only
    the longest: a country cap (+86) and a network cap (+86170) are independent guards."""
    return [p for p in rules.otp.prefix_caps if number.startswith(p)]


def prefix_count_queries(numbers: Iterable[str], rules: Rules, now: float) -> dict[str, float]:
    """{prefix: since} for `store.count_prefix(prefix, Priority.OTP, since)`: the caps that the
    given OTP recipients fall under (exempt numbers skip the caps, so they need none)."""
    wanted: dict[str, float] = {}
    for number in numbers:
        if number in rules.otp.exempt:
            continue
        for prefix in capped_prefixes(number, rules):
            if prefix not in wanted:
                rate = rules.otp.prefix_caps[prefix]
                start = _window_start(rate, rules.tz, now)
                # count_prefix counts created_at >= since; a sliding window excludes its start,
                # so move one microsecond (the store's resolution) inside it.
                wanted[prefix] = start if rate.window == "calendar" else start + 1e-6
    return wanted


# --------------------------------------------------------------------------------------------
# Marketing sending window
# --------------------------------------------------------------------------------------------


def in_window(window: TimeWindow, tz: tzinfo, now: float) -> bool:
    """Whether the local wall-clock time at `now` lies inside the window (start included, end
    excluded, a start later than the end spans midnight)."""
    return window.contains(datetime.fromtimestamp(now, tz).time())


def _openings(day: date, window: TimeWindow, tz: tzinfo) -> list[float]:
    """Instants on `day` when the local clock reaches the window's start: one normally, two
    when the start falls in a repeated hour, the moment of the change when it is skipped."""
    wall = datetime.combine(day, window.start, tzinfo=tz)
    first, second = wall.timestamp(), wall.replace(fold=1).timestamp()
    if first == second:
        return [first]
    roundtrip = datetime.fromtimestamp(first, tz).replace(tzinfo=None)
    if roundtrip == wall.replace(tzinfo=None):  # repeated hour: the clock shows it twice
        return sorted((first, second))
    # Skipped hour: fold=1 maps the missing wall time with the offset after the change (too
    # early), fold=0 with the offset before it (too late); the change lies between them. The
    # first instant on the new offset is when the clock jumps past the start.
    low, high = min(first, second), max(first, second)
    after = datetime.fromtimestamp(high, tz).utcoffset()
    lo, hi = math.floor(low), math.ceil(high)
    while hi - lo > 1:  # offsets change on whole seconds
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return [float(hi)]


def next_opening(window: TimeWindow, tz: tzinfo, now: float) -> datetime:
    """The earliest instant at or after `now` inside the window, as an aware datetime in `tz`:
    `now` itself when the window is open, else the next time the local clock reaches its
    start. A window that does not exist on some day (inside a skipped DST hour) is skipped."""
    if in_window(window, tz, now):
        return datetime.fromtimestamp(now, tz)
    today = datetime.fromtimestamp(now, tz).date()
    for days in range(-1, 4):  # yesterday: a midnight-spanning window's start can be behind
        for moment in _openings(today + timedelta(days=days), window, tz):
            if moment >= now and in_window(window, tz, moment):
                return datetime.fromtimestamp(moment, tz)
    raise AssertionError(f"window {window} never opens in {tz}")  # pragma: no cover


def window_until(number: str, rules: Rules, at: float) -> datetime | None:
    """For a marketing message to `number` due at `at`: None when it may go (no window, or
    inside it), else the next opening to defer it to. The dispatcher calls this again when a
    marketing message becomes due (a `not_before`, a retry) outside the window."""
    window = rules.marketing.window_for(number)
    if window is None:
        return None
    tz = rules.tz
    if in_window(window, tz, at):
        return None
    return next_opening(window, tz, at)


# --------------------------------------------------------------------------------------------
# History the caller must fetch; retention
# --------------------------------------------------------------------------------------------


def _lookback(rate: Rate) -> float:
    return rate.period_s + (_DST_SLACK_S if rate.window == "calendar" else 0.0)


def history_horizon(rules: Rules) -> dict[Priority, float]:
    """How far back (seconds) the caller must fetch accepted messages per priority; a priority
    absent from the result needs no history at all. Duplicate content compares every priority;
    OTP limits look at OTP only and marketing caps at marketing only."""
    duplicate = rules.duplicate_content or 0.0
    horizon = {
        Priority.OTP: max([duplicate, *(_lookback(r) for r in rules.otp.limits)]),
        Priority.TRANSACTIONAL: duplicate,
        Priority.MARKETING: max([duplicate, *(_lookback(r) for r in rules.marketing.caps)]),
    }
    return {p: s for p, s in horizon.items() if s > 0}


def history_since(rules: Rules, now: float) -> dict[Priority, float]:
    """`history_horizon` as the `since` mapping of `Store.history(numbers, since)`."""
    return {p: now - s for p, s in history_horizon(rules).items()}


def retention_cutoff(rules: Rules, now: float) -> float | None:
    """Send records created before this epoch may be purged (`Store.purge_older_than`); None
    when `retention_days` is not configured (keep everything). Opt-outs are never purged."""
    if rules.retention_days is None:
        return None
    return now - rules.retention_days * _DAY_S


def history_entry(sub: Submission, digest: str, now: float) -> BatchEntry:
    """What an admitted submission adds to its recipient's history (as the store will hold it)."""
    return BatchEntry(id=sub.id, created_at=now, priority=sub.priority, text_sha256=digest)


# --------------------------------------------------------------------------------------------
# The decision
# --------------------------------------------------------------------------------------------


def admit(
    sub: Submission,
    final_text: str,
    history: Sequence[PastMessage],
    rules: Rules,
    now: float,
    *,
    digest: str,
    opted_out: bool = False,
    prefix_counts: Mapping[str, int] | None = None,
) -> Admission:
    """Accept, defer or reject one submission.

    `final_text` is `prepare_text(sub, rules)`; `digest` its `Store.text_digest` (the store's
    digests may be keyed, so only the caller can compute a comparable one). `history` is what
    the recipient has been accepted so far, of every priority `history_horizon` asks for (older
    or other entries are ignored; entries carrying this submission's own `id` are ignored too,
    so an idempotent repeat never counts against itself). `opted_out`: the number is on the
    opt-out list. `prefix_counts`: accepted OTPs per capped prefix within its cap's window
    (`prefix_count_queries`); required when an OTP falls under a cap (ValueError otherwise: a
    silently skipped pumping guard is worse than a loud bug).

    Checks, first failure wins: blocked content (any priority; the client's text and the final
    text) → opted out (marketing) → duplicate content (any priority) → OTP per-recipient limits
    then prefix caps (exempt numbers skip both) → marketing caps → marketing window (a deferral,
    evaluated at `max(now, not_before)`). Caps are checked at admission, so a message deferred
    to the next opening has already been counted; the caller keeps its own `not_before`
    deferral for messages that are otherwise accepted.
    """
    tz = rules.tz
    blocked = _blocked((sub.text, final_text), rules)
    if blocked is not None:
        return Admission.reject(blocked)

    marketing = sub.priority is Priority.MARKETING
    if marketing and opted_out:
        return Admission.reject(Rejection(RejectReason.OPTED_OUT, "the recipient opted out of marketing"))

    others = [e for e in history if e.id != sub.id]

    if rules.duplicate_content is not None:
        interval = rules.duplicate_content
        for entry in others:
            if entry.text_sha256 == digest and entry.created_at > now - interval:
                age = max(0.0, now - entry.created_at)
                return Admission.reject(Rejection(
                    RejectReason.DUPLICATE_CONTENT,
                    f"the same text was accepted for this number {age:.0f}s ago under id "
                    f"{entry.id} (interval {interval:g}s); a retry must reuse its id",
                    {"duplicate_of": entry.id, "interval_s": interval,
                     "retry_after_s": math.ceil(max(0.0, entry.created_at + interval - now))},
                ))

    if sub.priority is Priority.OTP and sub.to not in rules.otp.exempt:
        rejection = _otp_limits(sub, others, rules, tz, now, prefix_counts)
        if rejection is not None:
            return Admission.reject(rejection)

    if marketing:
        mine = [e for e in others if e.priority is Priority.MARKETING]
        hit = _first_exceeded(mine, rules.marketing.caps, tz, now)
        if hit is not None:
            index, rate, retry = hit
            return Admission.reject(Rejection(
                RejectReason.FREQUENCY_CAPPED,
                f"marketing cap {_label(rate)}{_window_text(rate, rules)} reached for this number",
                _limit_extra("recipient", rate, retry, rule=f"marketing.caps[{index}]"),
            ))
        due = max(now, sub.not_before.timestamp()) if sub.not_before is not None else now
        until = window_until(sub.to, rules, due)
        if until is not None:
            return Admission.defer(until, DEFER_MARKETING_WINDOW)

    return Admission.accept()


def _otp_limits(sub: Submission, others: Sequence[PastMessage], rules: Rules, tz: tzinfo,
                now: float, prefix_counts: Mapping[str, int] | None) -> Rejection | None:
    """Per-recipient OTP limits, then the per-prefix caps."""
    otps = [e for e in others if e.priority is Priority.OTP]
    hit = _first_exceeded(otps, rules.otp.limits, tz, now)
    if hit is not None:
        index, rate, retry = hit
        return Rejection(
            RejectReason.RATE_LIMITED,
            f"OTP limit {_label(rate)}{_window_text(rate, rules)} reached for this number",
            _limit_extra("recipient", rate, retry, rule=f"otp.limits[{index}]"),
        )
    for prefix in capped_prefixes(sub.to, rules):
        if prefix_counts is None or prefix not in prefix_counts:
            raise ValueError(f"admit: no prefix count for capped prefix {prefix!r} "
                             "(pass prefix_counts from prefix_count_queries)")
        rate = rules.otp.prefix_caps[prefix]
        if prefix_counts[prefix] >= rate.count:
            retry = (calendar_bounds(rate, tz, now)[1] - now if rate.window == "calendar"
                     else rate.period_s)  # sliding: the exact time needs every entry; a bound
            return Rejection(
                RejectReason.RATE_LIMITED,
                f"OTP volume cap {_label(rate)}{_window_text(rate, rules)} reached for prefix {prefix}",
                _limit_extra("prefix", rate, retry, prefix=prefix,
                             rule=f'otp.prefix_caps["{prefix}"]'),
            )
    return None


# --------------------------------------------------------------------------------------------
# Batch bookkeeping
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class BatchLedger:
    """The history and prefix counts of one admission batch, updated as it admits.

    Built from what the caller fetched for the whole batch (see the module docstring); it
    copies them, so the caller's mappings are not changed. Every admitted submission is
    appended to its number's history and counted under its capped prefixes, which is what lets
    two submissions in one batch see each other before either is committed. If the store then
    finds an admitted id to be a repeat (not inserted), the ledger has counted one message too
    many for the rest of the batch: strict, never lenient.
    """

    rules: Rules
    now: float
    history: Mapping[str, Sequence[PastMessage]] = field(default_factory=dict)
    prefix_counts: Mapping[str, int] = field(default_factory=dict)
    opted_out: Collection[str] = frozenset()
    _history: dict[str, list[PastMessage]] = field(init=False, repr=False)
    _counts: dict[str, int] = field(init=False, repr=False)
    # What this batch admitted, in order: (number, entry, the capped prefixes it counts under).
    admitted: list[tuple[str, BatchEntry, list[str]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._history = {number: list(entries) for number, entries in self.history.items()}
        self._counts = dict(self.prefix_counts)
        self.admitted = []

    def admit(self, sub: Submission, final_text: str, *, digest: str) -> Admission:
        """`admit()` against the batch's running state; records the submission when admitted."""
        decision = admit(sub, final_text, self._history.get(sub.to, ()), self.rules, self.now,
                         digest=digest, opted_out=sub.to in self.opted_out,
                         prefix_counts=self._counts)
        if decision.admitted:
            self.record(sub, digest)
        return decision

    def record(self, sub: Submission, digest: str) -> None:
        """Count an admitted submission in this batch's history (and its prefixes, for OTP)."""
        entry = history_entry(sub, digest, self.now)
        self._history.setdefault(sub.to, []).append(entry)
        prefixes = capped_prefixes(sub.to, self.rules) if sub.priority is Priority.OTP else []
        for prefix in prefixes:
            if prefix in self._counts:
                self._counts[prefix] += 1
        self.admitted.append((sub.to, entry, prefixes))

    def entries(self, number: str) -> list[PastMessage]:
        """The running history of one number (store entries plus this batch's admissions)."""
        return list(self._history.get(number, ()))

    def prefix_count(self, prefix: str) -> int | None:
        return self._counts.get(prefix)
