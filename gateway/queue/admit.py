"""Admission: parsed submissions → accepted (stored), deferred or rejected, and their events.

Owns the ingress's `admit` callback: for a batch of submissions it fetches what the policies
need from the store in a few queries (recipients' history, OTP counts per capped prefix,
opt-outs), decides each submission in arrival order (a route exists; the final text —
signature and opt-out text applied by `routing.policy.prepare_text` — fits the first carrier's
part limit; then `routing.policy.BatchLedger.admit`: blocked content, opt-out, duplicate
content, OTP velocity and prefix caps, marketing caps, the marketing window), commits the batch
in one store call (group commit: rejected ids are stored too, so that a repeat of any id is
idempotent), and publishes each item's events *after* the commit and before returning (so the
ingress sends the PUBACK only then, and an `accepted` event is queued before the dispatcher can
publish `submitted` for the same message). A repeat of a known id publishes its current status
again. Rules and routes are attributes, swapped whole on reload.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, Protocol, TypeVar

from gateway.config import Policies

from gateway.log import get_logger
from gateway.model import Priority, RejectReason, Rejection, Status, Submission
from gateway.queue.events import Event, outcome_fields
from gateway.queue.ingress import AdmitOutcome, IncomingSubmission
from gateway.queue.store import AcceptResult, MessageStatus, NewMessage, NewRejection, Store
from gateway.routing.policy import (
    BatchEntry,
    BatchLedger,
    PastMessage,
    Verdict,
    history_since,
    prefix_count_queries,
    prepare_text,
)
from gateway.routing.table import RouteTable, route_for
from gateway.smpp.message import TextOptions
from gateway.smpp.text import TextRejected, describe

Publish = Callable[[str, Event], Awaitable[Any]]


class FastLane(Protocol):
    """The fast path of the dispatcher (`Dispatcher.claim_carrier` / `hand_over`)."""

    def claim_carrier(self, to: str) -> str | None: ...

    def hand_over(self, msgs: list[NewMessage]) -> None: ...

log = get_logger("gateway.admit")

# TEST HOOK, never set in production: `SMSGW_TEST_ADMIT_PAUSE=before:PATH` (or `after:PATH`) makes
# every admit call touch PATH and hang just before (after) its commit, with nothing PUBACKed,
# so tests/integration/test_durability.py can SIGKILL the daemon between MQTT receive and commit
# (or between commit and PUBACK) deterministically.
_TEST_PAUSE = os.environ.get("SMSGW_TEST_ADMIT_PAUSE", "")


async def _test_pause(where: str) -> None:
    point, _, path = _TEST_PAUSE.partition(":")
    if point == where and path:
        Path(path).touch()
        await asyncio.sleep(3600)


def iso_local(epoch: float, tz: tzinfo = UTC) -> str:
    """ISO 8601 with the offset of `tz` (the policies' time zone), for `until`."""
    return datetime.fromtimestamp(epoch, tz).isoformat(timespec="seconds")


# A tripped pumping guard is logged once per prefix per this many seconds (it is counted always):
# an attack sends thousands a second, and one line says what an operator needs.
PREFIX_TRIP_LOG_INTERVAL_S = 60.0


def status_event(st: MessageStatus, tz: tzinfo = UTC) -> Event:
    """The current status of a known id, as an event to publish again."""
    fields: dict[str, object] = {}
    if st.status in (Status.ACCEPTED, Status.DEFERRED):
        fields["parts"] = st.parts
    if st.status is Status.DEFERRED:
        fields["until"] = iso_local(st.due_at, tz)
        if st.reason:
            fields["reason"] = st.reason
    if st.status is Status.REJECTED or st.status is Status.FAILED:
        fields["reason"] = st.reason or ""
        if st.detail:
            fields["detail"] = st.detail
    if st.status is Status.SUBMITTED or (st.status.is_final and st.message_ids):
        fields["parts"] = st.parts
        fields["message_ids"] = list(st.message_ids)
    fields.update(outcome_fields(carrier=st.carrier, command_status=st.command_status,
                                 error=st.error, resent=st.resent))
    fields["repeat"] = True
    return Event(st.status, fields)


K = TypeVar("K")
V = TypeVar("V")


def _memo(fn: Callable[[K], V]) -> Callable[[K], V]:
    """`fn` with its results kept (for the span of one batch)."""
    cache: dict[K, V] = {}

    def get(key: K) -> V:
        try:
            return cache[key]
        except KeyError:
            value = cache[key] = fn(key)
            return value
    return get


def needs_history(rules: Policies) -> bool:
    """Whether any rule counts earlier messages (so batches must be decided in turn)."""
    return bool(history_since(rules, 0.0)) or bool(rules.otp.prefix_caps)


class Admission:
    """The admit callback of the ingress. `routes`, `rules` and `text_options` may be replaced
    on reload (each batch reads them once)."""

    def __init__(
        self,
        *,
        store: Store,
        publish: Publish,
        routes: RouteTable,
        text_options: Callable[[str], TextOptions],
        max_age: Callable[[Priority], float | None],
        rules: Policies | None = None,
        on_accepted: Callable[[], None] = lambda: None,
        on_rejected: Callable[[str, Priority | None], None] = lambda reason, priority: None,
        clock: Callable[[], float] = time.time,
        fast_lane: FastLane | None = None,
    ) -> None:
        self.store = store
        # OTP fast path: an OTP due now is stored already claimed by its carrier (SENDING) in
        # the commit that accepts it and handed to the dispatcher after its `accepted` event.
        self.fast_lane = fast_lane
        self._publish = publish
        self.routes = routes
        self.rules = rules if rules is not None else Policies()
        self._on_rejected = on_rejected
        self.text_options = text_options
        self.max_age = max_age
        self._on_accepted = on_accepted
        self._clock = clock
        self.counters = {"accepted": 0, "rejected": 0, "deferred": 0, "repeats": 0,
                         "internal_errors": 0}
        self.rejected_by_reason: dict[str, int] = {}
        self.prefix_trips: dict[str, int] = {}  # OTP rejected by a prefix cap, per prefix
        self._prefix_logged: dict[str, float] = {}
        self._decide_lock = asyncio.Lock()
        self._unpublished: dict[object, float] = {}
        self._pending: dict[object, list[tuple[str, BatchEntry, list[str]]]] = {}

    async def __call__(self, batch: list[IncomingSubmission]) -> Sequence[AdmitOutcome]:
        token = object()
        try:
            claimed, any_accepted = await self._admit(batch, token)
        finally:
            # Held from the time stamped on this batch's rows until its events are queued:
            # the events checkpoint (`oldest_unpublished`) never passes it meanwhile.
            self._unpublished.pop(token, None)
            self._pending.pop(token, None)
        if claimed:  # after their `accepted` events: `submitted` can only come after
            assert self.fast_lane is not None
            self.fast_lane.hand_over(claimed)
        if any_accepted:
            self._on_accepted()
        return [AdmitOutcome(()) for _ in batch]

    async def _admit(self, batch: list[IncomingSubmission], token: object
                     ) -> tuple[list[NewMessage], bool]:
        rules = self.rules
        if needs_history(rules):
            # The ingress admits several batches at once (pipelined commits). Rules that count
            # history must see every batch decided before this one, committed or not: reads and
            # decisions take turns, and what a batch admitted stays visible in `_pending` until
            # its commit is done (commits still overlap).
            async with self._decide_lock:
                now = self._clock()
                self._unpublished[token] = now
                decided, extras, admitted = await self._decide_batch(batch, rules, now)
                self._pending[token] = admitted
        else:
            now = self._clock()
            self._unpublished[token] = now
            decided, extras, _ = await self._decide_batch(batch, rules, now)
        try:
            if _TEST_PAUSE:
                await _test_pause("before")
            results = await self._commit(decided)
        finally:
            self._pending.pop(token, None)
        if _TEST_PAUSE:
            await _test_pause("after")
        any_accepted = False
        claimed: list[NewMessage] = []
        for d, r in zip(decided, results, strict=True):
            for event in self._events(d, r, rules, extras.get(d.id), now):
                await self._publish(d.id, event)
            if r.inserted and isinstance(d, NewMessage):
                if d.claimed_by is not None:
                    claimed.append(d)
                else:
                    any_accepted = True
        return claimed, any_accepted

    async def _decide_batch(
        self, batch: list[IncomingSubmission], rules: Policies, now: float,
    ) -> tuple[list[NewMessage | NewRejection], dict[str, dict[str, object]],
               list[tuple[str, BatchEntry, list[str]]]]:
        """Decisions in arrival order, rejections' details by id, and what the ledger admitted
        (for `_pending` while the commit runs)."""
        decided: list[NewMessage | NewRejection] = []
        extras: dict[str, dict[str, object]] = {}  # id → a rejection's machine-readable details
        subs = [i.submission for i in batch]
        ledger = await self._ledger([s for s in subs if s is not None], rules, now)
        # Built once per batch, not per message (the config's lookups cost ~2 µs each).
        opts_of = _memo(self.text_options)
        age_of = _memo(self.max_age)
        for item, sub in zip(batch, subs, strict=True):
            if sub is None:
                rej = item.rejection
                assert rej is not None
                decided.append(NewRejection(id=item.id, reason=str(rej.reason),
                                            detail=rej.detail, created_at=now))
                continue
            try:
                decision = self.decide(sub, now, ledger, text_options=opts_of, max_age=age_of)
            except Exception as exc:
                # A bug with one submission must not fail its whole batch again and again (the
                # ingress retries a failed admit, nothing is acked meanwhile: all intake stops).
                self.counters["internal_errors"] += 1
                log.error("admit_decide_failed", message=sub.id, error=repr(exc))
                decided.append(NewRejection(
                    id=sub.id, reason="internal_error", detail="the gateway could not process it",
                    created_at=now, to=sub.to, priority=sub.priority, sender=sub.sender,
                    client=sub.client, text=sub.text))
                continue
            if isinstance(decision, Rejection):
                decided.append(NewRejection.from_submission(sub, decision, now))
                if decision.extra:
                    extras[sub.id] = decision.extra
            else:
                decided.append(decision)
        return decided, extras, ledger.admitted

    async def _ledger(self, subs: Sequence[Submission], rules: Policies, now: float) -> BatchLedger:
        """What the rules need for this batch, fetched in a few queries (none when off), plus
        what batches decided earlier admitted and have not committed yet (taken before the
        reads: a batch that commits meanwhile is then in one or both, never in neither, and an
        id in both counts once)."""
        pending = [e for entries in self._pending.values() for e in entries]
        pending_otp = [entry.id for _, entry, prefixes in pending if prefixes]
        since = history_since(rules, now)
        numbers = sorted({s.to for s in subs})
        history = await self.store.history(numbers, since) if since and numbers else {}
        otp = [s.to for s in subs if s.priority is Priority.OTP]
        counts = {prefix: await self.store.count_prefix(prefix, Priority.OTP, start,
                                                        exclude=pending_otp)
                  for prefix, start in prefix_count_queries(otp, rules, now).items()}
        marketing = sorted({s.to for s in subs if s.priority is Priority.MARKETING})
        opted_out = await self.store.opted_out(marketing) if marketing else set()
        if pending:
            merged: dict[str, list[PastMessage]] = {n: list(h) for n, h in history.items()}
            wanted = set(numbers)
            for number, entry, prefixes in pending:
                if number in wanted:
                    known = merged.setdefault(number, [])
                    if all(e.id != entry.id for e in known):
                        known.append(entry)
                for prefix in prefixes:
                    if prefix in counts:
                        counts[prefix] += 1
            history = merged
        return BatchLedger(rules, now, history, counts, opted_out)

    def decide(self, sub: Submission, now: float, ledger: BatchLedger, *,
               text_options: Callable[[str], TextOptions] | None = None,
               max_age: Callable[[Priority], float | None] | None = None,
               ) -> NewMessage | Rejection:
        """One submission against the route table, the text limits and the batch's ledger.
        `text_options` / `max_age`: the batch's memoised lookups (default: this admission's)."""
        route = route_for(sub.to, self.routes)
        if not route:
            return Rejection(RejectReason.NO_ROUTE, f"no route for numbers starting {sub.to[:4]}")
        rules = ledger.rules
        text = prepare_text(sub, rules)
        opts = (text_options or self.text_options)(route[0])
        try:
            info = describe(text, max_parts=opts.max_parts, reference_bits=opts.reference_bits,
                            gsm_data_coding=opts.gsm_data_coding)
        except TextRejected as exc:
            return Rejection(RejectReason(exc.reason) if exc.reason in RejectReason.__members__.values()
                             else RejectReason.TOO_LONG, exc.detail)
        verdict = ledger.admit(sub, text, digest=self.store.text_digest(text))
        if verdict.verdict is Verdict.REJECT:
            assert verdict.rejection is not None
            if verdict.rejection.extra.get("scope") == "prefix":
                self._prefix_tripped(str(verdict.rejection.extra.get("prefix")),
                                     str(verdict.rejection.extra.get("limit")), now)
            return verdict.rejection
        parts = 1 if opts.mode == "payload" else info.parts
        due_at = None
        if verdict.verdict is Verdict.DEFER:
            assert verdict.until is not None
            due_at = verdict.until.timestamp()
        return NewMessage.from_submission(sub, parts=parts, now=now, text=text,
                                          max_age_s=(max_age or self.max_age)(sub.priority),
                                          due_at=due_at, reason=verdict.reason)

    def _prefix_tripped(self, prefix: str, limit: str, now: float) -> None:
        """The SMS-pumping guard refused an OTP: counted always, logged once a minute a prefix."""
        self.prefix_trips[prefix] = self.prefix_trips.get(prefix, 0) + 1
        last = self._prefix_logged.get(prefix)
        if last is None or now - last >= PREFIX_TRIP_LOG_INTERVAL_S:
            self._prefix_logged[prefix] = now
            log.warning("otp_prefix_cap_tripped", prefix=prefix, limit=limit,
                        rejected_so_far=self.prefix_trips[prefix])

    def _claim_otps(self, decided: list[NewMessage | NewRejection]) -> None:
        """Name the carrier of each OTP due now (in place in `decided`): it is stored SENDING
        and handed to the dispatcher after the commit (see `FastLane`)."""
        fast = self.fast_lane
        if fast is None:
            return
        otp, accepted = Priority.OTP, Status.ACCEPTED
        for d in decided:
            if (isinstance(d, NewMessage) and d.priority is otp and d.status is accepted
                    and d.claimed_by is None):
                d.claimed_by = fast.claim_carrier(d.to)

    async def _commit(self, decided: list[NewMessage | NewRejection]) -> list[AcceptResult]:
        self._claim_otps(decided)
        msgs = [(i, d) for i, d in enumerate(decided) if isinstance(d, NewMessage)]
        rejs = [(i, d) for i, d in enumerate(decided) if isinstance(d, NewRejection)]
        out: list[AcceptResult | None] = [None] * len(decided)
        if msgs:
            for (i, _), r in zip(msgs, await self.store.accept_messages([d for _, d in msgs]),
                                 strict=True):
                out[i] = r
        if rejs:
            try:
                results = await self.store.record_rejections([d for _, d in rejs])
            except BaseException:
                # The accepted ones are committed (the retry of this batch sees them as
                # repeats): the claimed OTPs among them must not stay SENDING with no sender.
                claimed = [d for (i, d) in msgs if d.claimed_by is not None
                           and (r := out[i]) is not None and r.inserted]
                if claimed:
                    assert self.fast_lane is not None
                    self.fast_lane.hand_over(claimed)
                raise
            for (i, _), r in zip(rejs, results, strict=True):
                out[i] = r
        return [r for r in out if r is not None]

    def oldest_unpublished(self) -> float | None:
        """The earliest admission time of a batch being committed whose events are not queued
        yet (for the events checkpoint); None when there is none."""
        return min(self._unpublished.values(), default=None)

    def _events(self, d: NewMessage | NewRejection, r: AcceptResult, rules: Policies,
                extra: dict[str, object] | None = None, now: float | None = None) -> list[Event]:
        """The events of one decided submission. `at` is its admission time, as stored
        (`created_at` = `updated_at`), so that a replay after a crash is identical."""
        at = {} if now is None else {"at": float(now)}
        if not r.inserted:
            self.counters["repeats"] += 1
            return [status_event(r.existing, rules.tz)] if r.existing is not None else []
        if isinstance(d, NewRejection):
            self.counters["rejected"] += 1
            self.rejected_by_reason[d.reason] = self.rejected_by_reason.get(d.reason, 0) + 1
            self._on_rejected(d.reason, d.priority if d.to is not None else None)
            # The rule's details (e.g. `limit`, `scope`, `retry_after_s`, `rule`) ride along:
            # a client can back off exactly instead of parsing `detail`.
            return [Event(Status.REJECTED, {**(extra or {}), **at, "reason": d.reason,
                                            "detail": d.detail})]
        self.counters["accepted"] += 1
        events = [Event(Status.ACCEPTED, {**at, "parts": d.parts})]
        if d.status is Status.DEFERRED and d.due_at is not None:
            self.counters["deferred"] += 1
            events.append(Event(Status.DEFERRED, {**at, "until": iso_local(d.due_at, rules.tz),
                                                  "reason": d.reason or "not_before"}))
        return events
