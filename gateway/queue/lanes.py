"""Priority lanes of one carrier: which claimed message goes next.

Pure (no I/O, time passed in). OTP always goes first; transactional and marketing share what is
left by weight (deficit round robin, default 4:1) so that neither starves under a steady load of
the other. A job that must wait (a retry after a transient error) carries `ready_at` and is
skipped until then without blocking the jobs behind it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from gateway.model import Priority


class _HasPriority(Protocol):
    @property
    def priority(self) -> Priority: ...

    @property
    def ready_at(self) -> float: ...


J = TypeVar("J", bound=_HasPriority)


def integer_weights(transactional: float, marketing: float, max_scale: int = 100) -> tuple[int, int]:
    """The config's weights (`"1.5:1"` allowed) as the smallest whole numbers with that ratio
    (3, 2), found by scaling up to `max_scale`; past that, rounded at `max_scale`."""
    for scale in range(1, max_scale + 1):
        t, m = transactional * scale, marketing * scale
        if abs(t - round(t)) < 1e-9 and abs(m - round(m)) < 1e-9:
            return max(1, round(t)), max(1, round(m))
    return max(1, round(transactional * max_scale)), max(1, round(marketing * max_scale))


class Lanes(Generic[J]):
    """Three FIFO lanes with OTP strictly first and weighted sharing for the other two."""

    __slots__ = ("_lanes", "_weights", "_credit", "_waiting")

    def __init__(self, transactional_weight: int = 4, marketing_weight: int = 1) -> None:
        self._lanes: dict[Priority, deque[J]] = {p: deque() for p in Priority}
        self._weights = {Priority.TRANSACTIONAL: max(1, transactional_weight),
                         Priority.MARKETING: max(1, marketing_weight)}
        self._credit = dict(self._weights)
        # Jobs waiting for their retry time, kept apart so that they never block a lane.
        self._waiting: list[J] = []

    def set_weights(self, transactional: int, marketing: int) -> None:
        self._weights = {Priority.TRANSACTIONAL: max(1, transactional),
                         Priority.MARKETING: max(1, marketing)}
        self._credit = dict(self._weights)

    def __len__(self) -> int:
        return sum(len(q) for q in self._lanes.values()) + len(self._waiting)

    def count(self, priority: Priority) -> int:
        return len(self._lanes[priority]) + sum(1 for j in self._waiting if j.priority is priority)

    def push(self, job: J, *, front: bool = False) -> None:
        if job.ready_at > 0.0:
            self._waiting.append(job)
        elif front:
            self._lanes[job.priority].appendleft(job)
        else:
            self._lanes[job.priority].append(job)

    def _promote(self, now: float) -> None:
        if not self._waiting:
            return
        still: list[J] = []
        for job in self._waiting:
            if job.ready_at <= now:
                self._lanes[job.priority].appendleft(job)
            else:
                still.append(job)
        self._waiting = still

    def next_ready_at(self) -> float | None:
        """When the earliest waiting job becomes ready (None when nothing waits)."""
        return min((j.ready_at for j in self._waiting), default=None)

    def peek(self, now: float) -> J | None:
        """The job that goes next, without taking it."""
        self._promote(now)
        lanes = self._lanes
        if lanes[Priority.OTP]:
            return lanes[Priority.OTP][0]
        tx, mk = lanes[Priority.TRANSACTIONAL], lanes[Priority.MARKETING]
        if tx and mk:
            return tx[0] if self._pick_shared() is Priority.TRANSACTIONAL else mk[0]
        if tx:
            return tx[0]
        if mk:
            return mk[0]
        return None

    def _pick_shared(self) -> Priority:
        credit = self._credit
        if credit[Priority.TRANSACTIONAL] <= 0 and credit[Priority.MARKETING] <= 0:
            credit.update(self._weights)
        return (Priority.TRANSACTIONAL if credit[Priority.TRANSACTIONAL] > 0
                else Priority.MARKETING)

    def pop(self, job: J) -> None:
        """Take `job` (the one `peek` returned) out of its lane and charge its lane's credit."""
        lane = self._lanes[job.priority]
        if lane and lane[0] is job:
            lane.popleft()
        else:  # not at the head: rare (a reload moved things); keep correctness
            lane.remove(job)
        if job.priority is not Priority.OTP:
            both = self._lanes[Priority.TRANSACTIONAL] or self._lanes[Priority.MARKETING]
            if both:
                self._credit[job.priority] -= 1

    def drain(self) -> Iterator[J]:
        """Every job, lanes emptied (shutdown, or the carrier went down)."""
        for lane in self._lanes.values():
            while lane:
                yield lane.popleft()
        waiting, self._waiting = self._waiting, []
        yield from waiting
