"""Admission: parsed submissions → accepted (stored), deferred or rejected, and their events.

Owns the ingress's `admit` callback: for a batch of submissions it checks what can be checked
before a send (a route exists, the text fits the first carrier's part limit, marketing to an
opted-out number, the configured policies), commits the batch in one store call (group commit:
rejected ids are stored too, so that a repeat of any id is idempotent), and publishes each item's
events *after* the commit and before returning (so the ingress sends the PUBACK only then, and an
`accepted` event is queued before the dispatcher can publish `submitted` for the same message).
A repeat of a known id publishes its current status again.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.log import get_logger
from gateway.model import Priority, RejectReason, Rejection, Status, Submission
from gateway.queue.events import Event, outcome_fields
from gateway.queue.ingress import AdmitOutcome, IncomingSubmission
from gateway.queue.store import AcceptResult, MessageStatus, NewMessage, NewRejection, Store
from gateway.routing.table import RouteTable, route_for
from gateway.smpp.message import TextOptions
from gateway.smpp.text import TextRejected, describe

Publish = Callable[[str, Event], Awaitable[Any]]

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


def iso_local(epoch: float) -> str:
    """ISO 8601 with an offset (UTC), for `until`."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def status_event(st: MessageStatus) -> Event:
    """The current status of a known id, as an event to publish again."""
    fields: dict[str, object] = {}
    if st.status in (Status.ACCEPTED, Status.DEFERRED):
        fields["parts"] = st.parts
    if st.status is Status.DEFERRED:
        fields["until"] = iso_local(st.due_at)
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


class Admission:
    """The admit callback of the ingress. `routes`/`text_options` may be replaced on reload."""

    def __init__(
        self,
        *,
        store: Store,
        publish: Publish,
        routes: RouteTable,
        text_options: Callable[[str], TextOptions],
        max_age: Callable[[Priority], float | None],
        on_accepted: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._publish = publish
        self.routes = routes
        self.text_options = text_options
        self.max_age = max_age
        self._on_accepted = on_accepted
        self._clock = clock
        self.counters = {"accepted": 0, "rejected": 0, "deferred": 0, "repeats": 0,
                         "internal_errors": 0}

    async def __call__(self, batch: list[IncomingSubmission]) -> Sequence[AdmitOutcome]:
        now = self._clock()
        decided: list[NewMessage | NewRejection] = []
        subs = [i.submission for i in batch]
        marketing = [s.to for s in subs if s is not None and s.priority is Priority.MARKETING]
        opted_out = await self.store.opted_out(marketing) if marketing else set()
        for item, sub in zip(batch, subs, strict=True):
            if sub is None:
                rej = item.rejection
                assert rej is not None
                decided.append(NewRejection(id=item.id, reason=str(rej.reason),
                                            detail=rej.detail, created_at=now))
                continue
            try:
                decision = self.decide(sub, now, opted_out)
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
            else:
                decided.append(decision)
        if _TEST_PAUSE:
            await _test_pause("before")
        results = await self._commit(decided)
        if _TEST_PAUSE:
            await _test_pause("after")
        any_accepted = False
        for d, r in zip(decided, results, strict=True):
            for event in self._events(d, r):
                await self._publish(d.id, event)
            any_accepted = any_accepted or (r.inserted and isinstance(d, NewMessage))
        if any_accepted:
            self._on_accepted()
        return [AdmitOutcome(()) for _ in batch]

    def decide(self, sub: Submission, now: float, opted_out: set[str]) -> NewMessage | Rejection:
        """The pure part: what happens to one submission (before policies of issue 6)."""
        route = route_for(sub.to, self.routes)
        if not route:
            return Rejection(RejectReason.NO_ROUTE, f"no route for numbers starting {sub.to[:4]}")
        if sub.priority is Priority.MARKETING and sub.to in opted_out:
            return Rejection(RejectReason.OPTED_OUT, "the recipient opted out of marketing")
        opts = self.text_options(route[0])
        try:
            info = describe(sub.text, max_parts=opts.max_parts, reference_bits=opts.reference_bits,
                            gsm_data_coding=opts.gsm_data_coding)
        except TextRejected as exc:
            return Rejection(RejectReason(exc.reason) if exc.reason in RejectReason.__members__.values()
                             else RejectReason.TOO_LONG, exc.detail)
        parts = 1 if opts.mode == "payload" else info.parts
        return NewMessage.from_submission(sub, parts=parts, now=now,
                                          max_age_s=self.max_age(sub.priority))

    async def _commit(self, decided: list[NewMessage | NewRejection]) -> list[AcceptResult]:
        msgs = [(i, d) for i, d in enumerate(decided) if isinstance(d, NewMessage)]
        rejs = [(i, d) for i, d in enumerate(decided) if isinstance(d, NewRejection)]
        out: list[AcceptResult | None] = [None] * len(decided)
        if msgs:
            for (i, _), r in zip(msgs, await self.store.accept_messages([d for _, d in msgs]),
                                 strict=True):
                out[i] = r
        if rejs:
            for (i, _), r in zip(rejs, await self.store.record_rejections([d for _, d in rejs]),
                                 strict=True):
                out[i] = r
        return [r for r in out if r is not None]

    def _events(self, d: NewMessage | NewRejection, r: AcceptResult) -> list[Event]:
        if not r.inserted:
            self.counters["repeats"] += 1
            return [status_event(r.existing)] if r.existing is not None else []
        if isinstance(d, NewRejection):
            self.counters["rejected"] += 1
            return [Event(Status.REJECTED, {"reason": d.reason, "detail": d.detail})]
        self.counters["accepted"] += 1
        events = [Event(Status.ACCEPTED, {"parts": d.parts})]
        if d.status is Status.DEFERRED and d.due_at is not None:
            self.counters["deferred"] += 1
            events.append(Event(Status.DEFERRED, {"until": iso_local(d.due_at),
                                                  "reason": d.reason or "not_before"}))
        return events
