"""Events owed after a crash: the checkpoint of confirmed events, and their replay at start.

Owns the at-least-once promise of the events. An event is published after its change is
committed and is only in memory until the broker acknowledges it, so a SIGKILL can lose events
whose changes are durable (a final status, say), and nothing would send them again: the
submission and the receipt were acknowledged already.

- While running, `checkpoint_loop` records about once a second, in the store, an instant before
  which every change has had its event confirmed by the broker: the earliest change time still
  owed by the publisher (queued or awaiting PUBACK), by the dispatcher (results buffered or
  being committed) and by admission (batches being committed), minus a small slack; the current
  time when nothing is owed. A clean stop records it after the last flush.
- At start, before anything else publishes, `replay_owed_events` publishes again the current
  status of every message changed at or after the recorded instant (index `ix_messages_updated`),
  built exactly as the original event was, with the change's time as stored for `at`. An event
  that did reach the broker before the crash therefore comes again identical (same `id`,
  `status`, `at` and fields): consumers deduplicate on (`id`, `status`, `at`). Intermediate
  statuses of a message that changed several times in that last second are not repeated; its
  current (usually final) one is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import tzinfo
from typing import Any

from gateway.log import get_logger
from gateway.model import Status
from gateway.queue.admit import iso_local
from gateway.queue.events import Event, outcome_fields
from gateway.queue.store import MessageStatus, Store

log = get_logger("gateway.replay")

CHECKPOINT = "events_confirmed_before"
INTERVAL_S = 1.0
# Sources read the same wall clock, but a change's time is taken a little before it is handed
# over (e.g. a receipt's arrival before it is buffered): stay this far behind.
SLACK_S = 2.0

Publish = Callable[[str, Event], Awaitable[Any]]


def replay_event(st: MessageStatus, tz: tzinfo) -> Event:
    """The event of a message's current status, with the fields and `at` of the original."""
    status = st.status
    fields: dict[str, object] = {}
    if status is Status.ACCEPTED:
        fields = {"at": st.created_at, "parts": st.parts}
    elif status is Status.DEFERRED:
        fields = {"at": st.updated_at, "until": iso_local(st.due_at, tz),
                  "reason": st.reason or "not_before"}
    elif status is Status.SUBMITTED:
        fields = {"at": st.updated_at, "carrier": st.carrier, "parts": st.parts,
                  "message_ids": list(st.message_ids)}
        if st.resent:
            fields["resent"] = True
    elif status is Status.REJECTED:
        fields = {"at": st.updated_at, "reason": st.reason or "", "detail": st.detail or ""}
    else:  # delivered, undeliverable, expired, failed
        fields = {"at": st.updated_at}
        if st.reason:
            fields["reason"] = st.reason
        if st.detail:
            fields["detail"] = st.detail
        fields.update(outcome_fields(carrier=st.carrier, command_status=st.command_status,
                                     error=st.error, resent=st.resent))
    return Event(status, fields)


async def replay_owed_events(store: Store, publish: Publish, tz: tzinfo, now: float) -> int:
    """At start: publish again what may not have reached the broker; then move the checkpoint
    to `now` (the replayed events themselves hold it back until confirmed). Returns how many.
    A store without a checkpoint (a new one, or one from before this feature) replays nothing."""
    since = await store.get_checkpoint(CHECKPOINT)
    count = 0
    if since is None:  # from now on a crash leaves its mark
        await store.set_checkpoint(CHECKPOINT, now - SLACK_S)
    else:
        for st in await store.changed_since(since):
            await publish(st.id, replay_event(st, tz))
            count += 1
        if count:
            log.warning("events_replayed", messages=count, since=since,
                        detail="events owed at the last stop are published again")
    return count


def confirmed_before(now: float, owed: Iterable[float | None], *, settled: bool = False) -> float:
    """The instant before which every change has had its event confirmed. `settled`: nothing
    produces changes any more (a clean stop), so with nothing owed it is `now` exactly."""
    times = [t for t in owed if t is not None]
    if settled and not times:
        return now
    return min([now, *times]) - SLACK_S


async def checkpoint_loop(store: Store, clock: Callable[[], float],
                          sources: Iterable[Callable[[], float | None]],
                          interval_s: float = INTERVAL_S) -> None:
    """Record `confirmed_before` every `interval_s` (a failed write is logged and retried at
    the next turn: the checkpoint only ever lags, which costs duplicates, never losses)."""
    sources = list(sources)
    while True:
        await asyncio.sleep(interval_s)
        try:
            await store.set_checkpoint(CHECKPOINT, confirmed_before(clock(), (s() for s in sources)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("events_checkpoint_failed", error=repr(exc))
