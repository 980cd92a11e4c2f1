"""The durable store: messages, parts, early receipts, opt-outs; group commit; recovery.

"The store is the truth" (DESIGN.md): nothing is acknowledged before it is committed, and a
restart rebuilds everything else from here. This module is the only one that speaks SQL; the
schema and its migrations are in `schema.py`.

Shape
-----
`Store` is an asyncio facade over two synchronous SQLAlchemy engines:

- Writes go through ONE writer thread (group commit). Each write call queues an operation and
  awaits its future; the writer takes everything queued (up to `max_batch` rows), runs it in ONE
  transaction, commits, then resolves every caller's future in one hop to the event loop.
  Consecutive operations of the same kind are merged into one set of statements, which is what
  makes thousands of single-message calls a second cheap. There is no artificial delay: while
  one batch commits, the next one accumulates, so a call is flushed within about one commit
  time. If a merged batch fails, it is rolled back and each operation is re-run alone, so one
  bad call cannot fail its neighbours. Because one writer does every write, "insert if new" is
  a SELECT then an INSERT in the same transaction, and two copies of one id in the same batch
  resolve in call order.
- Reads (fetch_due, status, history, opt-out lookups) run on a small thread pool with their own
  connections; in WAL mode (SQLite) and MVCC (PostgreSQL) they never block the writer.

One driver call per statement, whatever the row count
------------------------------------------------------
The store's threads share the GIL with the event loop. A driver releases the GIL around every
call that may block (sqlite3: every sqlite3_step, i.e. every row fetched or every row of an
executemany; psycopg: every network wait), and when the loop thread is busy, taking it back
costs up to `sys.getswitchinterval()` (5 ms) each time. Measured before this design: fetch_due
of 500 rows went from 4 ms to 1.2-1.8 s, and recording parts from 13 to 920 µs per part, with
one busy thread beside them. So every hot statement here is a single driver call for the whole
batch: rows go in as one array parameter (PostgreSQL: `unnest` of typed arrays; SQLite: a JSON
array read by `json_each`) and come out as one row (SQLite: `json_group_array`; PostgreSQL
returns a result set in one round trip anyway). A batch then costs a handful of GIL hand-overs
instead of one per row. Times are stored as integer microseconds so that JSON carries them
exactly. The daemon should still lower the switch interval (e.g. `sys.setswitchinterval(0.001)`).

Back-pressure: the rows queued for the writer are counted; past `max_queued` a write call waits
(first come, first served) for room before it queues. `write_backlog`, `backlogged` and
`wait_writable()` let the ingress stop reading MQTT instead of buffering.

Durability (SQLite)
-------------------
WAL mode; `synchronous` defaults to FULL: every commit fsyncs the WAL, so an accept that was
acknowledged survives a power cut too, not only a process crash. Group commit makes that one
fsync per batch rather than per message, and the benchmark shows no measurable cost over NORMAL
here. `sqlite_synchronous="NORMAL"` is accepted for hosts where fsync is slow: in WAL mode
NORMAL still survives SIGKILL of the process (a commit is in the WAL file, in the OS page
cache), and only an OS crash or power loss can lose the last commits (never corrupt the file).
`busy_timeout` waits for another process's lock, and on top of it "database is locked" and
serialization failures are retried with backoff.

OTP text at rest: when an OTP is SUBMITTED (every part with the carrier: the text is never
needed again, and a receipt may never come) or reaches a final state, its text is set to NULL
in the same statement; its length and a SHA-256 (HMAC-SHA-256 with `text_hash_key`) stay. With
`PRAGMA secure_delete=ON` SQLite zeroes the freed bytes in the page; the old page images in the
WAL are removed by a `wal_checkpoint(TRUNCATE)` that the writer runs at most every
`checkpoint_interval_s` after writes (and on close, and on `checkpoint()`), so no file of the
store keeps a final OTP's text for longer than that interval. On PostgreSQL the dead tuple stays
until (auto)vacuum and the WAL segment until it is recycled: the server's own retention.

In-memory SQLite (`sqlite://`) is refused: the writer and the readers need to share a file.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from gateway.model import (
    FailReason,
    MessageState,
    PartState,
    Priority,
    ReceiptState,
    Rejection,
    Status,
    Submission,
)
from gateway.queue import schema
from gateway.queue.retry import CommitOutcome

log = logging.getLogger(__name__)

T = TypeVar("T")

_QUEUED = int(MessageState.QUEUED)
_SENDING = int(MessageState.SENDING)
_SUBMITTED = int(MessageState.SUBMITTED)
_FINAL = int(MessageState.FINAL)
_OTP = int(Priority.OTP)
_MIN_SQLITE = (3, 35, 0)  # UPDATE ... FROM (3.33), RETURNING (3.35), json_each built in


def _us(t: float) -> int:
    """Float seconds (the API, `time.time()`) → stored integer microseconds."""
    return round(t * 1_000_000)


def _s(v: int | None) -> float | None:
    return None if v is None else v / 1_000_000


# ---------------------------------------------------------------------------------------------
# Records going in


@dataclass(slots=True, unsafe_hash=True)  # hot: a frozen __init__ costs ~1 µs
class NewMessage:
    """An admitted submission, as the ingress hands it to `accept_messages`.

    `text` is the final text (signature and opt-out text applied); `parts` the number of SMS it
    takes. `status` is ACCEPTED, or DEFERRED (with `reason`) when `due_at` is later than now.
    """

    id: str
    to: str
    text: str
    parts: int
    created_at: float
    priority: Priority = Priority.TRANSACTIONAL
    sender: str | None = None
    client: str | None = None
    due_at: float | None = None  # None: due at created_at
    expire_at: float | None = None  # not sent by then → failed expired_in_queue
    status: Status = Status.ACCEPTED
    reason: str | None = None
    # OTP fast path: claimed for this carrier in the accepting commit (stored SENDING, attempts
    # 1, like `mark_sending`; `recover_in_flight` requeues it after a crash).
    claimed_by: str | None = None

    @classmethod
    def from_submission(
        cls,
        sub: Submission,
        *,
        parts: int,
        now: float,
        max_age_s: float | None,
        text: str | None = None,
        due_at: float | None = None,
        reason: str | None = None,
    ) -> NewMessage:
        """Due at `due_at`, else `not_before`, else now; expires `validity_s` (else `max_age_s`)
        after it becomes due. DEFERRED when due later than now (reason `not_before` unless
        given)."""
        if due_at is None:
            due_at = max(now, sub.not_before.timestamp()) if sub.not_before else now
        age = sub.validity_s if sub.validity_s is not None else max_age_s
        deferred = due_at > now
        return cls(
            id=sub.id,
            to=sub.to,
            text=sub.text if text is None else text,
            parts=parts,
            created_at=now,
            priority=sub.priority,
            sender=sub.sender,
            client=sub.client,
            due_at=due_at,
            expire_at=None if age is None else due_at + age,
            status=Status.DEFERRED if deferred else Status.ACCEPTED,
            reason=(reason or "not_before") if deferred else None,
        )


@dataclass(frozen=True, slots=True)
class NewRejection:
    """A submission refused before any send. Kept so that a repeat of its id is idempotent."""

    id: str
    reason: str  # model.RejectReason value
    detail: str
    created_at: float
    to: str | None = None
    priority: Priority = Priority.TRANSACTIONAL
    sender: str | None = None
    client: str | None = None
    text: str | None = None  # never stored; only its length and digest

    @classmethod
    def from_submission(cls, sub: Submission, rejection: Rejection, now: float) -> NewRejection:
        return cls(
            id=sub.id, reason=str(rejection.reason), detail=rejection.detail, created_at=now,
            to=sub.to, priority=sub.priority, sender=sub.sender, client=sub.client, text=sub.text,
        )


@dataclass(slots=True, unsafe_hash=True)  # hot: a frozen __init__ costs ~1 µs
class PartAccepted:
    """submit_sm_resp with status 0 for part `part_no` (1-based) of a message."""

    message_id: str
    part_no: int
    carrier: str
    carrier_message_id: str  # exactly as the carrier gave it (published in `submitted`)
    norm_id: str  # receipts.canonical_id(carrier_message_id)
    at: float
    resent: bool = False  # this attempt may have repeated parts (a retry after a timeout)


@dataclass(slots=True, unsafe_hash=True)  # hot: a frozen __init__ costs ~1 µs
class ReceiptIn:
    """A parsed delivery receipt. `norm_ids` are receipts.candidate_ids(id), best first."""

    carrier: str
    norm_ids: tuple[str, ...]
    state: ReceiptState
    received_at: float
    error: str | None = None
    carrier_message_id: str | None = None


@dataclass(frozen=True, slots=True)
class Finalize:
    """Make a message final (failed, expired, ...) unless it already is."""

    id: str
    status: Status
    at: float
    reason: str | None = None
    detail: str | None = None
    command_status: int | None = None
    error: str | None = None
    carrier: str | None = None
    resent: bool = False  # parts may have gone twice (the final event says `resent: true`)


@dataclass(frozen=True, slots=True)
class Requeue:
    """Put a QUEUED/SENDING message back in the queue, due at `due_at`.

    `resent`: parts may have reached the carrier (response timeout, connection lost): the next
    event says `resent: true`. `status`/`reason`/`detail`: e.g. DEFERRED / marketing_window.
    `reset_parts`: forget parts accepted so far (the whole message goes again, e.g. through
    another carrier); by default accepted parts are kept and `DueMessage.parts_done` lists them.
    """

    id: str
    due_at: float
    at: float
    resent: bool = False
    carrier: str | None = None
    status: Status | None = None
    reason: str | None = None
    detail: str | None = None
    reset_parts: bool = False


# ---------------------------------------------------------------------------------------------
# Records coming out


@dataclass(frozen=True, slots=True)
class MessageStatus:
    """What the store knows of one id: enough to publish its current status again."""

    id: str
    status: Status
    state: MessageState
    priority: Priority
    to: str | None
    parts: int
    carrier: str | None
    reason: str | None
    detail: str | None
    command_status: int | None
    error: str | None
    resent: bool
    attempts: int
    created_at: float
    due_at: float  # `until` of a deferred message
    expire_at: float | None
    updated_at: float
    message_ids: tuple[str, ...]  # the carrier's ids of the accepted parts, in part order


@dataclass(slots=True, unsafe_hash=True)  # hot: a frozen __init__ costs ~1 µs
class AcceptResult:
    """Per submitted row: inserted, or a duplicate of an id already seen (with its status)."""

    id: str
    inserted: bool
    existing: MessageStatus | None = None  # set when not inserted

    @property
    def duplicate(self) -> bool:
        return not self.inserted


@dataclass(slots=True, unsafe_hash=True)  # hot: a frozen __init__ costs ~1 µs
class DueMessage:
    """A QUEUED message whose time has come, as fetch_due returns it to the dispatcher."""

    seq: int
    id: str
    to: str
    text: str
    priority: Priority
    sender: str | None
    client: str | None
    parts: int
    attempts: int
    resent: bool
    created_at: float
    due_at: float
    expire_at: float | None
    carrier: str | None  # carrier of the last try, if any
    parts_done: frozenset[int]  # parts already accepted by `carrier` (skip them on resend)


@dataclass(slots=True, unsafe_hash=True)  # hot: a frozen __init__ costs ~1 µs
class Submitted:
    """Payload of a `submitted` event: every part accepted by one carrier."""

    id: str
    carrier: str
    parts: int
    message_ids: tuple[str, ...]
    resent: bool
    at: float
    priority: Priority | None = None
    created_at: float | None = None  # accepted at (for the accepted → submitted latency)


@dataclass(slots=True, unsafe_hash=True)  # hot: a frozen __init__ costs ~1 µs
class Final:
    """Payload of a final event (delivered / undeliverable / expired / failed)."""

    id: str
    status: Status
    priority: Priority
    carrier: str | None
    reason: str | None
    detail: str | None
    command_status: int | None
    error: str | None
    resent: bool
    at: float
    created_at: float | None = None
    submitted_at: float | None = None  # when the last part was accepted (receipt finals)


@dataclass(slots=True, unsafe_hash=True)  # hot: a frozen __init__ costs ~1 µs
class PartOutcome:
    """Result of recording one accepted part. `submitted`/`final` are set on the part that
    completed the message (an early receipt applied here can make it final at once)."""

    message_id: str
    part_no: int
    recorded: bool  # False: unknown message, or already final (a late response)
    submitted: Submitted | None = None
    final: Final | None = None
    early_receipt: bool = False


class ReceiptMatch(enum.StrEnum):
    MATCHED = "matched"  # applied to a part (final or not)
    DUPLICATE = "duplicate"  # the part was already final: ignore
    EARLY = "early"  # no part yet: held in early_receipts until its response or the purge
    IGNORED = "ignored"  # no part, and not a final state: nothing worth holding


@dataclass(slots=True, unsafe_hash=True)  # hot: a frozen __init__ costs ~1 µs
class ReceiptOutcome:
    match: ReceiptMatch
    message_id: str | None = None
    part_no: int | None = None
    final: Final | None = None  # set when this receipt made the message final


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One accepted message to a recipient, for the policies."""

    id: str
    created_at: float
    priority: Priority
    text_sha256: str | None  # hex; compare with Store.text_digest(text)


@dataclass(frozen=True, slots=True)
class OptOut:
    number: str
    added_at: float
    source: str | None


@dataclass(frozen=True, slots=True)
class StoreStats:
    batches: int
    operations: int
    rows: int
    retries: int
    last_batch_s: float
    busy_s: float  # writer time spent in transactions since open (utilisation = Δbusy / Δt)
    write_backlog: int


# ---------------------------------------------------------------------------------------------
# Errors and retries


class StoreClosed(RuntimeError):
    pass


_RETRY_SQLSTATES = frozenset({"40001", "40P01", "55P03"})  # serialization, deadlock, lock n/a


def _retryable(exc: BaseException) -> bool:
    """Contention or a dropped connection: roll back and run the same batch again."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    msg = str(exc.orig).lower()
    if "database is locked" in msg or "database is busy" in msg or "database table is locked" in msg:
        return True
    return getattr(exc.orig, "sqlstate", None) in _RETRY_SQLSTATES


# ---------------------------------------------------------------------------------------------
# Statements: one driver call per statement (see the module docstring)


class _Dialect:
    def __init__(self, name: str) -> None:
        self.pg = name == "postgresql"

    def sql(self, s: str) -> str:
        # Our SQL has no '?' and no '%' other than these placeholders.
        return s.replace("?", "%s") if self.pg else s

    def in_(self, col: str, pgtype: str = "text") -> str:
        """`col` is one of the values of one array parameter (bind with `arr`)."""
        return (f"{col} = ANY(?::{pgtype}[])" if self.pg
                else f"{col} IN (SELECT value FROM json_each(?))")

    def arr(self, values: Iterable[Any]) -> Any:
        return list(values) if self.pg else _json(list(values))


def _json(values: Any) -> str:  # noqa: ANN401
    """A JSON array parameter for SQLite's json_each (text: SQLite 3.40 refuses a JSON blob).
    orjson: ~10x the stdlib's speed, and this runs for every row the store writes."""
    return orjson.dumps(values).decode()


class _Select:
    """A SELECT whose rows come back in one driver call: SQLite returns them as one JSON row
    (a per-row fetch would hand the GIL over once per row)."""

    def __init__(self, d: _Dialect, sql: str, cols: Sequence[str]) -> None:
        # `sql` must name its output columns exactly `cols`. json_group_array's element order is
        # unspecified: callers that care sort the rows themselves.
        self.json = not d.pg
        self.sql = d.sql(sql) if d.pg else (
            f"SELECT json_group_array(json_array({', '.join(cols)})) FROM ({sql})")

    def __call__(self, conn: Connection, params: tuple[Any, ...]) -> list[Sequence[Any]]:
        res = conn.exec_driver_sql(self.sql, params)
        if self.json:
            return orjson.loads(res.scalar_one())  # type: ignore[no-any-return]
        return res.all()  # type: ignore[return-value]


class _Bulk:
    """An INSERT/UPDATE of many rows in one statement: the rows are a CTE `v` read from typed
    arrays (PostgreSQL `unnest`) or a JSON array (SQLite `json_each`)."""

    def __init__(self, d: _Dialect, cols: Sequence[tuple[str, str]], body: str) -> None:
        names = ", ".join(n for n, _ in cols)
        self.pg = d.pg
        if d.pg:
            arrays = ", ".join(f"%s::{t}[]" for _, t in cols)
            self.sql = f"WITH v ({names}) AS (SELECT * FROM unnest({arrays})) {body}"
        else:
            ext = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(cols)))
            self.sql = f"WITH v ({names}) AS (SELECT {ext} FROM json_each(?)) {body}"

    def __call__(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.pg:
            conn.exec_driver_sql(self.sql, tuple(list(c) for c in zip(*rows)))
        else:
            conn.exec_driver_sql(self.sql, (_json(rows),))


# ---------------------------------------------------------------------------------------------
# Row mapping

_MSG_COLS = (  # a new messages row, in Store._message_row / _rejection_row order
    ("id", "text"), ("to_number", "text"), ("text", "text"), ("text_len", "int"),
    ("text_sha256", "text"), ("priority", "smallint"), ("sender", "text"), ("client", "text"),
    ("created_at", "bigint"), ("due_at", "bigint"), ("expire_at", "bigint"),
    ("state", "smallint"), ("status", "text"), ("reason", "text"), ("detail", "text"),
    ("carrier", "text"), ("parts_total", "smallint"), ("attempts", "smallint"),
    ("resent", "boolean"), ("command_status", "int"), ("error", "text"), ("updated_at", "bigint"),
)
_MSG_NAMES = tuple(n for n, _ in _MSG_COLS)
_PART_COLS = (
    ("message_id", "text"), ("part_no", "smallint"), ("carrier", "text"),
    ("carrier_message_id", "text"), ("norm_id", "text"), ("state", "smallint"),
    ("error", "text"), ("submitted_at", "bigint"), ("final_at", "bigint"),
)
_PART_NAMES = tuple(n for n, _ in _PART_COLS)
_STATUS_NAMES = ("id", "status", "state", "priority", "to_number", "parts_total", "carrier",
                 "reason", "detail", "command_status", "error", "resent", "attempts",
                 "created_at", "due_at", "expire_at", "updated_at")
_DUE_NAMES = ("seq", "id", "to_number", "text", "priority", "sender", "client", "parts_total",
              "attempts", "resent", "created_at", "due_at", "expire_at", "carrier")

_PRIORITY_OF = {int(p): p for p in Priority}
_STATE_OF = {int(s): s for s in MessageState}
_STATUS_OF = {str(s): s for s in Status}


def _status_of(r: Sequence[Any], message_ids: tuple[str, ...] = ()) -> MessageStatus:
    """A row in _STATUS_NAMES order → MessageStatus."""
    return MessageStatus(
        id=r[0], status=_STATUS_OF[r[1]], state=_STATE_OF[r[2]], priority=_PRIORITY_OF[r[3]],
        to=r[4], parts=r[5], carrier=r[6], reason=r[7], detail=r[8], command_status=r[9],
        error=r[10], resent=bool(r[11]), attempts=r[12], created_at=r[13] / 1e6,
        due_at=r[14] / 1e6, expire_at=_s(r[15]), updated_at=r[16] / 1e6, message_ids=message_ids,
    )


def _final_of(m: Mapping[str, Any], f: Finalize, submitted_at: float | None = None) -> Final:
    created = m.get("created_at")
    return Final(
        id=f.id, status=f.status, priority=_PRIORITY_OF[m["priority"]],
        carrier=f.carrier if f.carrier is not None else m["carrier"], reason=f.reason,
        detail=f.detail, command_status=f.command_status, error=f.error,
        resent=bool(m["resent"]) or f.resent, at=f.at,
        created_at=None if created is None else created / 1e6, submitted_at=submitted_at,
    )


_PART_TO_STATUS = {
    PartState.DELIVERED: Status.DELIVERED,
    PartState.UNDELIVERABLE: Status.UNDELIVERABLE,
    PartState.EXPIRED: Status.EXPIRED,
    PartState.FAILED: Status.FAILED,
}
_FINAL_PART_STATES = frozenset(int(s) for s in _PART_TO_STATUS)
# Hot loops work on the stored ints: an IntEnum/StrEnum constructor call costs ~0.7 µs.
_RECEIPT_PART = {str(s): int(s.part_state) for s in ReceiptState if s.part_state is not None}
_P_ACCEPTED, _P_DELIVERED = int(PartState.ACCEPTED), int(PartState.DELIVERED)
_P_UNDELIVERABLE, _P_EXPIRED = int(PartState.UNDELIVERABLE), int(PartState.EXPIRED)
_P_FAILED = int(PartState.FAILED)


def _verdict(states: Sequence[int]) -> Status | None:
    """model.aggregate_final on stored ints (the tests check they agree on every combination)."""
    if _P_UNDELIVERABLE in states:
        return Status.UNDELIVERABLE
    if _P_EXPIRED in states:
        return Status.EXPIRED
    if _P_FAILED in states:
        return Status.FAILED
    if states and all(s == _P_DELIVERED for s in states):
        return Status.DELIVERED
    return None


def _decider(mparts: Sequence[dict[str, Any] | None], verdict: Status) -> dict[str, Any] | None:
    """The part whose receipt decided the verdict (its `err:` goes in the event)."""
    for x in mparts:
        if x is not None and _PART_TO_STATUS.get(x["state"]) == verdict:
            return x
    return None


def _split(flat: list[T], payloads: Sequence[Sequence[Any]]) -> list[list[T]]:
    """One result list per merged call, in call order."""
    out: list[list[T]] = []
    i = 0
    for p in payloads:
        out.append(flat[i : i + len(p)])
        i += len(p)
    return out


# ---------------------------------------------------------------------------------------------
# The SQL, as plain functions of a Connection. Write handlers take the payloads of several merged
# calls and return one result per call; they run inside the writer's transaction.


class _Sql:
    """Every query of the store, prepared once per dialect. Hot statements are driver SQL
    (`_Select`, `_Bulk`, one array parameter for IN lists); cold ones use SQLAlchemy Core."""

    def __init__(self, dialect: str) -> None:
        d = self.d = _Dialect(dialect)
        purge = f"text = CASE WHEN messages.priority = {_OTP} THEN NULL ELSE messages.text END"
        pnames = ", ".join(_PART_NAMES)
        # -- selects
        self.s_exist = _Select(d, f"SELECT id FROM messages WHERE {d.in_('id')}", ("id",))
        self.s_status = _Select(
            d, f"SELECT {', '.join(_STATUS_NAMES)} FROM messages WHERE {d.in_('id')}",
            _STATUS_NAMES)
        self.s_carrier_ids = _Select(
            d, "SELECT message_id, part_no, carrier_message_id FROM parts "
               f"WHERE {d.in_('message_id')}", ("message_id", "part_no", "carrier_message_id"))
        self.s_msgs = _Select(
            d, "SELECT id, state, status, priority, parts_total, carrier, resent, created_at "
               f"FROM messages WHERE {d.in_('id')}",
            ("id", "state", "status", "priority", "parts_total", "carrier", "resent", "created_at"))
        self.s_parts = _Select(d, f"SELECT {pnames} FROM parts WHERE {d.in_('message_id')}",
                               _PART_NAMES)
        self.s_claimable = _Select(
            d, f"SELECT id FROM messages WHERE state = {_QUEUED} AND {d.in_('id')}", ("id",))
        self.s_match = _Select(
            d, "SELECT message_id, part_no, norm_id, state, submitted_at FROM parts "
               f"WHERE carrier = ? AND {d.in_('norm_id')}",
            ("message_id", "part_no", "norm_id", "state", "submitted_at"))
        self.s_early = _Select(
            d, "SELECT grp, norm_id, state, error, received_at FROM early_receipts "
               f"WHERE carrier = ? AND {d.in_('norm_id')}",
            ("grp", "norm_id", "state", "error", "received_at"))
        self.s_expired = _Select(
            d, f"SELECT id FROM messages WHERE state = {_QUEUED} AND expire_at <= ? "
               "ORDER BY expire_at LIMIT ?", ("id",))
        self.s_sending = _Select(d, f"SELECT id FROM messages WHERE state = {_SENDING}", ("id",))
        self.s_sending_c = _Select(
            d, f"SELECT id FROM messages WHERE state = {_SENDING} AND carrier = ?", ("id",))
        # The pick: one range scan of the partial index ix_messages_due per lane. `state = 0`
        # is a constant so that SQLite (and PostgreSQL's generic plans) can use that index.
        self.s_due = _Select(
            d, f"SELECT {', '.join(_DUE_NAMES)} FROM messages WHERE state = {_QUEUED} "
               "AND priority = ? AND due_at <= ? ORDER BY due_at, seq LIMIT ?", _DUE_NAMES)
        self.s_done_parts = _Select(
            d, f"SELECT message_id, part_no FROM parts WHERE {d.in_('message_id')}",
            ("message_id", "part_no"))
        self.s_history = _Select(
            d, "SELECT to_number, id, created_at, priority, text_sha256 FROM messages "
               f"WHERE {d.in_('to_number')} AND priority = ? AND created_at >= ? "
               f"AND status <> '{Status.REJECTED}'",
            ("to_number", "id", "created_at", "priority", "text_sha256"))
        self.s_opted_out = _Select(
            d, f"SELECT number FROM opt_outs WHERE {d.in_('number')}", ("number",))
        self.s_opt_page = _Select(
            d, "SELECT number, added_at, source FROM opt_outs WHERE number > ? "
               "ORDER BY number LIMIT ?", ("number", "added_at", "source"))
        # -- single statements over an id array
        self.x_claim = d.sql(
            f"UPDATE messages SET state = {_SENDING}, carrier = ?, attempts = attempts + 1, "
            f"updated_at = ? WHERE state = {_QUEUED} AND {d.in_('id')}")
        self.x_unsend = d.sql(
            f"UPDATE messages SET state = {_QUEUED}, resent = TRUE, updated_at = ? "
            f"WHERE state = {_SENDING} AND {d.in_('id')}")
        self.x_early_del = d.sql(f"DELETE FROM early_receipts WHERE {d.in_('grp')}")
        self.x_parts_del = d.sql(f"DELETE FROM parts WHERE {d.in_('message_id')}")
        self.x_msgs_del = d.sql(f"DELETE FROM messages WHERE {d.in_('seq', 'bigint')}")
        self.x_optout_del = d.sql(f"DELETE FROM opt_outs WHERE {d.in_('number')}")
        # Retention: one range scan of ix_messages_prio_created per priority.
        self.s_purgeable = _Select(
            d, "SELECT seq, id FROM messages WHERE priority = ? AND created_at < ? "
               f"AND state >= {_SUBMITTED} LIMIT ?", ("seq", "id"))
        # -- bulk statements
        self.b_msg = _Bulk(d, _MSG_COLS, f"INSERT INTO messages ({', '.join(_MSG_NAMES)}) "
                                         f"SELECT {', '.join(_MSG_NAMES)} FROM v")
        self.b_part = _Bulk(d, _PART_COLS, f"INSERT INTO parts ({pnames}) SELECT {pnames} FROM v")
        self.b_part_again = _Bulk(
            d, [("v_" + n, t) for n, t in _PART_COLS],
            "UPDATE parts SET carrier = v.v_carrier, carrier_message_id = v.v_carrier_message_id, "
            "norm_id = v.v_norm_id, state = v.v_state, error = v.v_error, "
            "submitted_at = v.v_submitted_at, final_at = v.v_final_at FROM v "
            "WHERE parts.message_id = v.v_message_id AND parts.part_no = v.v_part_no")
        self.b_part_final = _Bulk(
            d, [("v_state", "smallint"), ("v_error", "text"), ("v_at", "bigint"),
                ("v_mid", "text"), ("v_no", "smallint")],
            "UPDATE parts SET state = v.v_state, error = v.v_error, final_at = v.v_at FROM v "
            "WHERE parts.message_id = v.v_mid AND parts.part_no = v.v_no")
        self.b_optout = _Bulk(
            d, [("number", "text"), ("added_at", "bigint"), ("source", "text")],
            "INSERT INTO opt_outs (number, added_at, source) SELECT number, added_at, source FROM v")
        self.b_early = _Bulk(
            d, [("grp", "text"), ("carrier", "text"), ("norm_id", "text"),
                ("carrier_message_id", "text"), ("state", "text"), ("error", "text"),
                ("received_at", "bigint")],
            "INSERT INTO early_receipts (grp, carrier, norm_id, carrier_message_id, state, "
            "error, received_at) SELECT grp, carrier, norm_id, carrier_message_id, state, error, "
            "received_at FROM v")
        # An OTP's text goes in the same statement that makes it submitted or final.
        self.b_submit = _Bulk(
            d, [("v_carrier", "text"), ("v_at", "bigint"), ("v_resent", "boolean"), ("v_id", "text")],
            f"UPDATE messages SET state = {_SUBMITTED}, status = '{Status.SUBMITTED}', "
            f"reason = NULL, detail = NULL, carrier = v.v_carrier, updated_at = v.v_at, "
            f"resent = (messages.resent OR v.v_resent), {purge} "
            "FROM v WHERE messages.id = v.v_id")
        self.b_final = _Bulk(
            d, [("v_status", "text"), ("v_reason", "text"), ("v_detail", "text"),
                ("v_cs", "int"), ("v_error", "text"), ("v_carrier", "text"), ("v_at", "bigint"),
                ("v_resent", "boolean"), ("v_id", "text")],
            f"UPDATE messages SET state = {_FINAL}, status = v.v_status, reason = v.v_reason, "
            "detail = v.v_detail, command_status = v.v_cs, error = v.v_error, "
            "resent = (messages.resent OR v.v_resent), "
            "carrier = COALESCE(v.v_carrier, messages.carrier), updated_at = v.v_at, "
            f"{purge} FROM v WHERE messages.id = v.v_id")
        self.b_requeue = _Bulk(
            d, [("v_id", "text"), ("v_due", "bigint"), ("v_at", "bigint"),
                ("v_resent", "boolean"), ("v_carrier", "text"), ("v_status", "text"),
                ("v_reason", "text"), ("v_detail", "text")],
            f"UPDATE messages SET state = {_QUEUED}, due_at = v.v_due, updated_at = v.v_at, "
            "resent = (messages.resent OR v.v_resent), "
            "carrier = COALESCE(v.v_carrier, messages.carrier), "
            # A new status comes with its own reason/detail; none keeps the old ones.
            "reason = CASE WHEN v.v_status IS NULL THEN messages.reason ELSE v.v_reason END, "
            "detail = CASE WHEN v.v_status IS NULL THEN messages.detail ELSE v.v_detail END, "
            "status = COALESCE(v.v_status, messages.status) FROM v WHERE messages.id = v.v_id")

    # -- shared lookups ---------------------------------------------------------------------

    def statuses(self, conn: Connection, ids: Sequence[str]) -> dict[str, MessageStatus]:
        uniq = list(dict.fromkeys(ids))
        if not uniq:
            return {}
        rows = {r[0]: r for r in self.s_status(conn, (self.d.arr(uniq),))}
        mids = self.carrier_ids(conn, [i for i, r in rows.items() if r[2] >= _SENDING])
        return {i: _status_of(r, mids.get(i, ())) for i, r in rows.items()}

    def changed_since(self, conn: Connection, since: float, limit: int) -> list[MessageStatus]:
        M = schema.messages
        q = (sa.select(*(M.c[n] for n in _STATUS_NAMES)).where(M.c.updated_at >= _us(since))
             .order_by(M.c.updated_at, M.c.seq).limit(limit))
        rows = [tuple(r) for r in conn.execute(q)]
        mids = self.carrier_ids(conn, [r[0] for r in rows if r[2] >= _SENDING])
        return [_status_of(r, mids.get(r[0], ())) for r in rows]

    def get_checkpoint(self, conn: Connection, name: str) -> float | None:
        C = schema.checkpoints
        return _s(conn.execute(sa.select(C.c.value).where(C.c.name == name)).scalar())

    def carrier_ids(self, conn: Connection, ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        if not ids:
            return {}
        rows = sorted(self.s_carrier_ids(conn, (self.d.arr(ids),)), key=lambda r: (r[0], r[1]))
        out: dict[str, list[str]] = {}
        for mid, _, cid in rows:
            out.setdefault(mid, []).append(cid)
        return {k: tuple(v) for k, v in out.items()}

    def _message_rows(self, conn: Connection, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        uniq = list(dict.fromkeys(ids))
        if not uniq:
            return {}
        return {
            r[0]: {"id": r[0], "state": r[1], "status": r[2], "priority": r[3],
                   "parts_total": r[4], "carrier": r[5], "resent": r[6], "created_at": r[7]}
            for r in self.s_msgs(conn, (self.d.arr(uniq),))
        }

    def _part_rows(self, conn: Connection, ids: Iterable[str]) -> dict[tuple[str, int], dict[str, Any]]:
        uniq = list(dict.fromkeys(ids))
        if not uniq:
            return {}
        return {(r[0], r[1]): dict(zip(_PART_NAMES, r))
                for r in self.s_parts(conn, (self.d.arr(uniq),))}

    def _finalize_rows(self, conn: Connection, rows: Sequence[Finalize]) -> None:
        """The one place a message becomes final: state, status, and the OTP text purge."""
        self.b_final(conn, [(str(f.status), f.reason, f.detail, f.command_status, f.error,
                             f.carrier, _us(f.at), f.resent, f.id) for f in rows])

    # -- writes -----------------------------------------------------------------------------

    def insert(self, conn: Connection, payloads: list[list[tuple[Any, ...]]]) -> list[list[AcceptResult]]:
        """Insert-if-new for accepted and rejected rows alike, in call order."""
        all_ids = list(dict.fromkeys(r[0] for rows in payloads for r in rows))
        found = [r[0] for r in self.s_exist(conn, (self.d.arr(all_ids),))]
        existing = self.statuses(conn, found) if found else {}
        new: dict[str, tuple[Any, ...]] = {}
        results: list[list[AcceptResult]] = []
        for rows in payloads:
            out: list[AcceptResult] = []
            for r in rows:
                rid = r[0]
                if rid in existing:
                    out.append(AcceptResult(rid, False, existing[rid]))
                elif rid in new:
                    # A second copy in the same batch: the first one wins, as if committed.
                    row = dict(zip(_MSG_NAMES, new[rid]))
                    out.append(AcceptResult(rid, False, _status_of([row[n] for n in _STATUS_NAMES])))
                else:
                    new[rid] = r
                    out.append(AcceptResult(rid, True))
            results.append(out)
        self.b_msg(conn, list(new.values()))
        return results

    def mark_sending(self, conn: Connection, payloads: list[tuple[list[str], str, float]]) -> list[list[str]]:
        out: list[list[str]] = []
        for ids, carrier, now in payloads:
            uniq = list(dict.fromkeys(ids))
            claimed = {r[0] for r in self.s_claimable(conn, (self.d.arr(uniq),))}
            if claimed:
                conn.exec_driver_sql(self.x_claim, (carrier, _us(now), self.d.arr(claimed)))
            out.append([i for i in uniq if i in claimed])
        return out

    def record_parts(self, conn: Connection, payloads: list[list[PartAccepted]]) -> list[list[PartOutcome]]:
        items = [p for ps in payloads for p in ps]
        msgs = self._message_rows(conn, (p.message_id for p in items))
        parts = self._part_rows(conn, msgs)
        recorded: list[bool] = []
        for p in items:
            m = msgs.get(p.message_id)
            if m is None or m["state"] == _FINAL or not 1 <= p.part_no <= m["parts_total"]:
                recorded.append(False)
                continue
            recorded.append(True)
            key = (p.message_id, p.part_no)
            old = parts.get(key)
            if old is not None and old["state"] in _FINAL_PART_STATES:
                continue  # a duplicate response after its receipt: keep the receipt's verdict
            # A part resent (timeout, crash) and accepted again replaces the old row: the newer
            # id is the one its receipt will carry. `_new`: INSERT, else UPDATE.
            parts[key] = {
                "message_id": p.message_id, "part_no": p.part_no, "carrier": p.carrier,
                "carrier_message_id": p.carrier_message_id, "norm_id": p.norm_id,
                "state": _P_ACCEPTED, "error": None, "submitted_at": _us(p.at), "final_at": None,
                "_new": old is None or bool(old.get("_new")),
            }

        # Receipts that overtook these responses, held under the part's canonical id.
        by_carrier: dict[str, set[str]] = {}
        for p, ok in zip(items, recorded):
            if ok:
                by_carrier.setdefault(p.carrier, set()).add(p.norm_id)
        early: dict[tuple[str, str], list[Sequence[Any]]] = {}
        for carrier, keys in by_carrier.items():
            for r in self.s_early(conn, (carrier, self.d.arr(keys))):
                early.setdefault((carrier, r[1]), []).append(r)
        used_groups: set[str] = set()
        early_applied: list[bool] = []
        for p, ok in zip(items, recorded):
            hits = early.pop((p.carrier, p.norm_id), None) if ok else None
            row = parts.get((p.message_id, p.part_no))
            if not hits or row is None or "_new" not in row:
                early_applied.append(False)
                continue
            used_groups.update(h[0] for h in hits)
            # Several receipts for one id (ENROUTE then DELIVRD, a duplicate): the latest final
            # one decides.
            final = sorted((h for h in hits if h[2] in _RECEIPT_PART), key=lambda h: h[4])
            if not final:
                early_applied.append(False)
                continue
            h = final[-1]
            row["state"], row["error"], row["final_at"] = _RECEIPT_PART[h[2]], h[3], h[4]
            early_applied.append(True)

        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        for row in parts.values():
            new_flag = row.pop("_new", None)
            if new_flag is not None:  # None: an untouched sibling read from the table
                (inserts if new_flag else updates).append(tuple(row[n] for n in _PART_NAMES))
        self.b_part(conn, inserts)
        self.b_part_again(conn, updates)
        if used_groups:
            conn.exec_driver_sql(self.x_early_del, (self.d.arr(used_groups),))

        # Message transitions, reported on the last part of each message in this batch.
        last_index: dict[str, int] = {}
        for i, (p, ok) in enumerate(zip(items, recorded)):
            if ok:
                last_index[p.message_id] = i
        submitted: dict[str, Submitted] = {}
        finals: dict[str, Final] = {}
        to_submit: list[tuple[Any, ...]] = []
        to_finalize: list[Finalize] = []
        for mid, i in last_index.items():
            m, p = msgs[mid], items[i]
            mparts = [parts.get((mid, k)) for k in range(1, m["parts_total"] + 1)]
            if m["state"] in (_QUEUED, _SENDING):
                if any(x is None or x["carrier"] != p.carrier for x in mparts):
                    continue  # parts still outstanding (or left from an earlier carrier)
                # Accepted while QUEUED too: a late response after a requeue. The message is
                # with the carrier; the guard in mark_sending stops the resend.
                m["state"] = _SUBMITTED
                if p.resent:  # a part of this attempt went again: the store says so from now on
                    m["resent"] = True
                to_submit.append((p.carrier, _us(p.at), bool(m["resent"]), mid))
                submitted[mid] = Submitted(
                    id=mid, carrier=p.carrier, parts=m["parts_total"],
                    message_ids=tuple(x["carrier_message_id"] for x in mparts if x is not None),
                    resent=bool(m["resent"]), at=p.at, priority=_PRIORITY_OF[m["priority"]],
                    created_at=m["created_at"] / 1e6 if m.get("created_at") is not None else None)
            if m["state"] == _SUBMITTED:
                verdict = _verdict([x["state"] for x in mparts if x is not None])
                if verdict is not None:
                    decider = _decider(mparts, verdict)
                    f = Finalize(id=mid, status=verdict, at=p.at, carrier=p.carrier,
                                 error=decider["error"] if decider else None)
                    to_finalize.append(f)
                    finals[mid] = _final_of(m, f, submitted_at=p.at)
        self.b_submit(conn, to_submit)
        self._finalize_rows(conn, to_finalize)

        flat: list[PartOutcome] = []
        for i, p in enumerate(items):
            last = last_index.get(p.message_id) == i
            flat.append(PartOutcome(
                message_id=p.message_id, part_no=p.part_no, recorded=recorded[i],
                submitted=submitted.get(p.message_id) if last else None,
                final=finals.get(p.message_id) if last else None,
                early_receipt=early_applied[i]))
        return _split(flat, payloads)

    def apply_receipts(self, conn: Connection, payloads: list[list[ReceiptIn]]) -> list[list[ReceiptOutcome]]:
        items = [r for rs in payloads for r in rs]
        # Every part any candidate key could mean, one lookup per carrier.
        keys_by_carrier: dict[str, set[str]] = {}
        for r in items:
            keys_by_carrier.setdefault(r.carrier, set()).update(r.norm_ids)
        cand: dict[tuple[str, str], list[list[Any]]] = {}
        for carrier, keys in keys_by_carrier.items():
            for row in self.s_match(conn, (carrier, self.d.arr(keys))):
                # [message_id, part_no, norm_id, state, submitted_at], mutated as we go so that
                # a second receipt for the same part in this batch sees the first.
                cand.setdefault((carrier, row[2]), []).append(list(row))
        outcomes: list[ReceiptOutcome] = []
        early_rows: list[tuple[Any, ...]] = []
        part_updates: dict[tuple[str, int], tuple[Any, ...]] = {}
        touched: dict[str, int] = {}  # message id → index of the last receipt that changed it
        for idx, r in enumerate(items):
            hit: list[Any] | None = None
            for key in r.norm_ids:  # the first key with a match wins: exact before converted
                rows = cand.get((r.carrier, key))
                if rows:
                    # A carrier may reuse ids over months: prefer a part still waiting, then
                    # the most recent one.
                    hit = max(rows, key=lambda x: (x[3] not in _FINAL_PART_STATES, x[4]))
                    break
            ps = _RECEIPT_PART.get(r.state)
            if hit is None:
                if ps is None or not r.norm_ids:
                    outcomes.append(ReceiptOutcome(ReceiptMatch.IGNORED))
                    continue
                # Held under every candidate key: whichever form the response gives matches.
                grp = uuid.uuid4().hex
                at = _us(r.received_at)
                early_rows.extend((grp, r.carrier, k, r.carrier_message_id, str(r.state), r.error,
                                   at) for k in r.norm_ids)
                outcomes.append(ReceiptOutcome(ReceiptMatch.EARLY))
                continue
            mid, no = hit[0], hit[1]
            if hit[3] in _FINAL_PART_STATES:
                outcomes.append(ReceiptOutcome(ReceiptMatch.DUPLICATE, mid, no))
                continue
            if ps is not None:
                hit[3] = ps
                part_updates[(mid, no)] = (ps, r.error, _us(r.received_at), mid, no)
                touched[mid] = idx
            outcomes.append(ReceiptOutcome(ReceiptMatch.MATCHED, mid, no))
        self.b_early(conn, early_rows)
        self.b_part_final(conn, list(part_updates.values()))
        if touched:
            # Aggregate only messages whose every part is with the carrier (SUBMITTED); one
            # still SENDING is aggregated when its last response is recorded.
            msgs = self._message_rows(conn, touched)
            parts = self._part_rows(conn, [m for m, r in msgs.items() if r["state"] == _SUBMITTED])
            to_finalize: list[Finalize] = []
            for mid, idx in touched.items():
                m = msgs.get(mid)
                if m is None or m["state"] != _SUBMITTED:
                    continue
                mparts = [parts.get((mid, k)) for k in range(1, m["parts_total"] + 1)]
                verdict = _verdict([x["state"] for x in mparts if x is not None])
                if verdict is None:
                    continue
                decider = _decider(mparts, verdict)
                f = Finalize(id=mid, status=verdict, at=items[idx].received_at,
                             error=decider["error"] if decider else None)
                to_finalize.append(f)
                o = outcomes[idx]
                sent = [x["submitted_at"] for x in mparts if x is not None and x["submitted_at"]]
                outcomes[idx] = ReceiptOutcome(o.match, o.message_id, o.part_no,
                                               _final_of(m, f, max(sent) / 1e6 if sent else None))
            self._finalize_rows(conn, to_finalize)
        return _split(outcomes, payloads)

    def take_early(self, conn: Connection, payloads: list[tuple[str, list[str]]]) -> list[list[ReceiptIn]]:
        E = schema.early_receipts
        out: list[list[ReceiptIn]] = []
        for carrier, keys in payloads:
            grps = {r[0] for r in self.s_early(conn, (carrier, self.d.arr(set(keys))))}
            groups: dict[str, list[Any]] = {}
            if grps:
                q = sa.select(E).where(E.c.grp.in_(sorted(grps))).order_by(E.c.seq)
                for r in conn.execute(q):
                    groups.setdefault(r.grp, []).append(r)
                conn.exec_driver_sql(self.x_early_del, (self.d.arr(grps),))
            # Each receipt once, with every key it was held under.
            res = [
                ReceiptIn(carrier=g[0].carrier, norm_ids=tuple(x.norm_id for x in g),
                          state=ReceiptState(g[0].state), received_at=g[0].received_at / 1e6,
                          error=g[0].error, carrier_message_id=g[0].carrier_message_id)
                for g in groups.values()
            ]
            res.sort(key=lambda x: x.received_at)
            out.append(res)
        return out

    def finalize(self, conn: Connection, payloads: list[list[Finalize]]) -> list[list[Final | None]]:
        items = [f for fs in payloads for f in fs]
        msgs = self._message_rows(conn, (f.id for f in items))
        done: list[Finalize] = []
        results: list[Final | None] = []
        for f in items:
            m = msgs.get(f.id)
            if m is None or m["state"] == _FINAL or not f.status.is_final:
                results.append(None)
                continue
            m["state"] = _FINAL
            done.append(f)
            results.append(_final_of(m, f))
        self._finalize_rows(conn, done)
        return _split(results, payloads)

    def expire_due(self, conn: Connection, payloads: list[tuple[float, int]]) -> list[list[Final]]:
        out: list[list[Final]] = []
        for now, limit in payloads:
            ids = [r[0] for r in self.s_expired(conn, (_us(now), limit))]
            fs = [Finalize(id=i, status=Status.FAILED, at=now,
                           reason=str(FailReason.EXPIRED_IN_QUEUE),
                           detail="not sent within its maximum queue age") for i in ids]
            out.append([f for f in self.finalize(conn, [fs])[0] if f is not None])
        return out

    def requeue(self, conn: Connection, payloads: list[list[Requeue]]) -> list[list[bool]]:
        items = [q for qs in payloads for q in qs]
        msgs = self._message_rows(conn, (q.id for q in items))
        rows: dict[str, tuple[Any, ...]] = {}
        reset: list[str] = []
        ok: list[bool] = []
        for q in items:
            m = msgs.get(q.id)
            if m is None or m["state"] not in (_QUEUED, _SENDING):
                ok.append(False)
                continue
            ok.append(True)
            rows[q.id] = (q.id, _us(q.due_at), _us(q.at), q.resent, q.carrier,
                          str(q.status) if q.status is not None else None, q.reason, q.detail)
            if q.reset_parts:
                reset.append(q.id)
        self.b_requeue(conn, list(rows.values()))
        if reset:
            conn.exec_driver_sql(self.x_parts_del, (self.d.arr(reset),))
        return _split(ok, payloads)

    def requeue_sending(self, conn: Connection, payloads: list[tuple[str | None, float]]) -> list[list[str]]:
        """SENDING → QUEUED with resent, for one carrier or (None) all: what was in flight may
        have reached the carrier."""
        out: list[list[str]] = []
        for carrier, now in payloads:
            rows = (self.s_sending(conn, ()) if carrier is None
                    else self.s_sending_c(conn, (carrier,)))
            ids = sorted(r[0] for r in rows)
            if ids:
                conn.exec_driver_sql(self.x_unsend, (_us(now), self.d.arr(ids)))
            out.append(ids)
        return out

    def add_opt_outs(self, conn: Connection, payloads: list[tuple[list[str], str | None, float]]) -> list[list[bool]]:
        out: list[list[bool]] = []
        for numbers, source, at in payloads:
            uniq = list(dict.fromkeys(numbers))
            have = {r[0] for r in self.s_opted_out(conn, (self.d.arr(uniq),))}
            new = [n for n in uniq if n not in have]
            self.b_optout(conn, [(n, _us(at), source) for n in new])
            fresh = set(new)
            res = []
            for n in numbers:
                res.append(n in fresh)
                fresh.discard(n)
            out.append(res)
        return out

    def remove_opt_outs(self, conn: Connection, payloads: list[list[str]]) -> list[list[bool]]:
        out: list[list[bool]] = []
        for numbers in payloads:
            uniq = list(dict.fromkeys(numbers))
            gone = {r[0] for r in self.s_opted_out(conn, (self.d.arr(uniq),))}
            if gone:
                conn.exec_driver_sql(self.x_optout_del, (self.d.arr(gone),))
            res = []
            for n in numbers:
                res.append(n in gone)
                gone.discard(n)
            out.append(res)
        return out

    def purge_messages(self, conn: Connection, payloads: list[tuple[float, int]]) -> list[int]:
        """Delete up to `limit` messages created before `cutoff` that are final or submitted
        (a receipt that has not come in months never will), with their parts."""
        out: list[int] = []
        for cutoff, limit in payloads:
            rows: list[Sequence[Any]] = []
            for prio in Priority:
                if len(rows) >= limit:
                    break
                rows.extend(self.s_purgeable(conn, (int(prio), _us(cutoff), limit - len(rows))))
            if rows:
                conn.exec_driver_sql(self.x_parts_del, (self.d.arr(r[1] for r in rows),))
                conn.exec_driver_sql(self.x_msgs_del, (self.d.arr(r[0] for r in rows),))
            out.append(len(rows))
        return out

    def set_checkpoints(self, conn: Connection, payloads: list[tuple[str, float]]) -> list[None]:
        C = schema.checkpoints
        for name, value in payloads:  # only ever moves forward
            v = _us(value)
            cur = conn.execute(sa.select(C.c.value).where(C.c.name == name)).scalar()
            if cur is None:
                conn.execute(sa.insert(C).values(name=name, value=v))
            elif v > cur:
                conn.execute(sa.update(C).where(C.c.name == name).values(value=v))
        return [None] * len(payloads)

    def purge_early(self, conn: Connection, payloads: list[float]) -> list[int]:
        E = schema.early_receipts
        out: list[int] = []
        for cutoff in payloads:
            old = E.c.received_at < _us(cutoff)
            n = conn.execute(sa.select(sa.func.count(sa.distinct(E.c.grp))).where(old)).scalar_one()
            conn.execute(sa.delete(E).where(old))
            out.append(int(n))
        return out

    # -- reads ------------------------------------------------------------------------------

    def fetch_due(self, conn: Connection, now: float, limit: int,
                  priorities: Sequence[Priority], exclude: Collection[str]) -> list[DueMessage]:
        rows: list[Sequence[Any]] = []
        t = _us(now)
        for prio in sorted(priorities):
            want = limit - len(rows)
            if want <= 0:
                break
            # Over-fetch by the exclusions instead of a NOT IN list that could grow unbounded.
            got = sorted(self.s_due(conn, (int(prio), t, want + len(exclude))),
                         key=lambda r: (r[11], r[0]))
            if exclude:
                got = [r for r in got if r[1] not in exclude]
            rows.extend(got[:want])
        # Parts already accepted matter only for a message tried before.
        retried = [r[1] for r in rows if r[8] > 0 or r[9]]
        done: dict[str, set[int]] = {}
        if retried:
            for mid, no in self.s_done_parts(conn, (self.d.arr(retried),)):
                done.setdefault(mid, set()).add(no)
        none: frozenset[int] = frozenset()
        return [
            DueMessage(seq, mid, to, text or "", _PRIORITY_OF[pr], sender, client, parts,
                       attempts, bool(resent), created / 1e6, due / 1e6, _s(expire), carrier,
                       frozenset(done[mid]) if mid in done else none)
            for (seq, mid, to, text, pr, sender, client, parts, attempts, resent, created, due,
                 expire, carrier) in rows
        ]

    def queue_depth(self, conn: Connection, now: float | None) -> dict[Priority, int]:
        out = {p: 0 for p in Priority}
        due = "" if now is None else " AND due_at <= :now"
        # SQLite: one scan of the covering partial index; left alone, the planner prefers
        # (priority, created_at) for the GROUP BY and visits every row, 4x slower.
        hint = " INDEXED BY ix_messages_due" if conn.dialect.name == "sqlite" else ""
        q = sa.text(f"SELECT priority, count(*) FROM messages{hint} WHERE state = {_QUEUED}{due} "
                    "GROUP BY priority")
        for prio, n in conn.execute(q, {} if now is None else {"now": _us(now)}):
            out[_PRIORITY_OF[prio]] = n
        return out

    def state_counts(self, conn: Connection) -> dict[MessageState, int]:
        # Only the states with a partial index: counting SUBMITTED would scan the table.
        n = conn.exec_driver_sql(f"SELECT count(*) FROM messages WHERE state = {_SENDING}").scalar_one()
        return {MessageState.QUEUED: sum(self.queue_depth(conn, None).values()),
                MessageState.SENDING: n}

    def history(self, conn: Connection, numbers: Sequence[str],
                since: Mapping[Priority, float]) -> dict[str, list[HistoryEntry]]:
        out: dict[str, list[HistoryEntry]] = {n: [] for n in numbers}
        if not numbers:
            return out
        uniq = self.d.arr(dict.fromkeys(numbers))
        for prio, t in since.items():
            for to, mid, created, pr, sha in self.s_history(conn, (uniq, int(prio), _us(t))):
                out[to].append(HistoryEntry(mid, created / 1e6, _PRIORITY_OF[pr], sha))
        for entries in out.values():
            entries.sort(key=lambda e: e.created_at)
        return out

    def count_sent(self, conn: Connection, number: str, priorities: Sequence[Priority],
                   since: float, text_sha256: str | None, exclude_id: str | None) -> int:
        M = schema.messages
        q = (sa.select(sa.func.count())
             .where(M.c.to_number == number, M.c.priority.in_([int(p) for p in priorities]),
                    M.c.created_at >= _us(since), M.c.status != str(Status.REJECTED)))
        if text_sha256 is not None:
            q = q.where(M.c.text_sha256 == text_sha256)
        if exclude_id is not None:
            q = q.where(M.c.id != exclude_id)
        return int(conn.execute(q).scalar_one())

    def count_prefix(self, conn: Connection, prefix: str, priority: Priority, since: float,
                     exclude: Sequence[str] = ()) -> int:
        # Range scan of (priority, created_at) over the window, prefix filtered per row: the
        # window is short (a minute), so this is bounded by the recent volume of one priority.
        M = schema.messages
        q = (sa.select(sa.func.count())
             .where(M.c.priority == int(priority), M.c.created_at >= _us(since),
                    sa.func.substr(M.c.to_number, 1, len(prefix)) == prefix,
                    M.c.status != str(Status.REJECTED)))
        if exclude:
            q = q.where(M.c.id.not_in(list(exclude)))
        return int(conn.execute(q).scalar_one())

    def opted_out(self, conn: Connection, numbers: Sequence[str]) -> set[str]:
        if not numbers:
            return set()
        return {r[0] for r in self.s_opted_out(conn, (self.d.arr(dict.fromkeys(numbers)),))}

    def list_opt_outs(self, conn: Connection, after: str | None, limit: int) -> list[OptOut]:
        rows = sorted(self.s_opt_page(conn, (after or "", limit)), key=lambda r: r[0])
        return [OptOut(n, at / 1e6, src) for n, at, src in rows]


# ---------------------------------------------------------------------------------------------
# The writer thread


class _Op:
    __slots__ = ("kind", "payload", "future", "weight")

    def __init__(self, kind: str, payload: Any, future: asyncio.Future[Any], weight: int) -> None:
        self.kind = kind
        self.payload = payload
        self.future = future
        self.weight = weight


_CHECKPOINT = "_checkpoint"


# Group commit under a trickle: see `_Writer._linger`.
LINGER_S = 0.002
LINGER_ROWS = 16  # rows (operation weights) queued: at least this many, no waiting


class _Writer(threading.Thread):
    """Runs queued operations in batches, one transaction per batch, on one connection."""

    def __init__(
        self,
        engine: Engine,
        handlers: Mapping[str, Callable[[Connection, list[Any]], list[Any]]],
        deliver: Callable[[list[tuple[_Op, bool, Any]]], None],
        *,
        max_batch: int,
        max_retries: int,
        checkpoint_interval_s: float | None,
        busy_ms: int,
    ) -> None:
        super().__init__(name="smsgw-store-writer", daemon=True)
        self._busy_ms = busy_ms
        self._engine = engine
        self._commits = CommitOutcome(engine.dialect.name)
        self._handlers = handlers
        self._deliver = deliver
        self._max_batch = max_batch
        self._max_retries = max_retries
        self._checkpoint_every = checkpoint_interval_s
        self._cv = threading.Condition()
        self._queue: deque[_Op] = deque()
        self._closing = False
        self._dirty = False  # written since the last WAL truncation
        self._last_checkpoint = time.monotonic()
        self._conn: Connection | None = None
        self.batches = 0
        self.operations = 0
        self.rows = 0
        self.retries = 0
        self.last_batch_s = 0.0
        self.busy_s = 0.0

    def submit(self, op: _Op) -> None:
        with self._cv:
            if self._closing:
                raise StoreClosed("store is closed")
            self._queue.append(op)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()

    def run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._queue and not self._closing:
                        if not self._cv.wait(timeout=self._idle_wait()):
                            break  # idle timeout: housekeeping below
                    self._linger()
                    batch = self._take()
                    closing = self._closing and not self._queue
                if batch:
                    self._run_batch(batch)
                if self._checkpoint_due() or (closing and self._dirty):
                    self._checkpoint(final=closing)
                if closing:
                    return
        finally:
            if self._conn is not None:
                self._conn.close()

    def _linger(self) -> None:
        """Only a few rows queued: wait up to `LINGER_S` for more to share the transaction.
        Under a steady trickle (a paced flood, a carrier capped at its tps) every commit would
        otherwise carry one or two operations, and a commit's fixed cost (and its fsync) would
        be paid per message; under load the queue is long already and nothing waits."""
        if not self._queue or self._closing:
            return
        deadline = time.monotonic() + LINGER_S
        while sum(op.weight for op in self._queue) < LINGER_ROWS and not self._closing:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cv.wait(timeout=left)

    def _idle_wait(self) -> float | None:
        if self._checkpoint_every is None or not self._dirty:
            return None
        return max(0.0, self._last_checkpoint + self._checkpoint_every - time.monotonic())

    def _checkpoint_due(self) -> bool:
        return (self._checkpoint_every is not None and self._dirty
                and time.monotonic() - self._last_checkpoint >= self._checkpoint_every)

    def _take(self) -> list[_Op]:
        batch: list[_Op] = []
        weight = 0
        while self._queue and (not batch or weight + self._queue[0].weight <= self._max_batch):
            op = self._queue.popleft()
            batch.append(op)
            weight += op.weight
        return batch

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            if self._conn is not None:
                self._conn.close()
            self._conn = self._engine.connect()
        return self._conn

    def _run_batch(self, batch: list[_Op]) -> None:
        t0 = time.perf_counter()
        results: list[tuple[_Op, bool, Any]] = []
        # A checkpoint request runs between two transactions, in call order.
        segment: list[_Op] = []
        for op in [*batch, None]:
            if op is None or op.kind == _CHECKPOINT:
                if segment:
                    results.extend(self._run_segment(segment))
                    segment = []
                if op is not None:
                    try:
                        results.append((op, True, self._checkpoint(final=False)))
                    except Exception as exc:  # noqa: BLE001 - handed to the caller
                        results.append((op, False, exc))
            else:
                segment.append(op)
        self.batches += 1
        self.operations += len(batch)
        self.rows += sum(op.weight for op in batch)
        self.last_batch_s = time.perf_counter() - t0
        self.busy_s += self.last_batch_s
        self._deliver(results)

    def _run_segment(self, ops: list[_Op]) -> list[tuple[_Op, bool, Any]]:
        try:
            return [(op, True, r) for op, r in self._transaction(ops)]
        except Exception as exc:  # noqa: BLE001
            if len(ops) == 1:
                log.warning("store write %s failed: %r", ops[0].kind, exc)
                return [(ops[0], False, exc)]
            # Isolate the culprit: the merged transaction was rolled back, so run each alone.
            log.warning("store batch of %d failed (%r); retrying one by one", len(ops), exc)
            out: list[tuple[_Op, bool, Any]] = []
            for op in ops:
                out.extend(self._run_segment([op]))
            return out

    def _transaction(self, ops: list[_Op]) -> list[tuple[_Op, Any]]:
        delay = 0.005
        for attempt in range(self._max_retries + 1):
            conn = self._connection()
            xid = out = None
            try:
                with conn.begin():
                    xid = self._commits.note(conn)
                    out = self._apply(conn, ops)
                self._dirty = True
                return out
            except Exception as exc:
                if out is not None and self._commits.committed(xid, exc, self._connection):
                    self._dirty = True
                    return out  # only the COMMIT's answer was lost (retry.py): not run again
                if attempt < self._max_retries and _retryable(exc):
                    self.retries += 1
                    log.info("store write contention (%s), retry %d", exc.__class__.__name__, attempt + 1)
                    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                        conn.close()
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                raise
        raise AssertionError("unreachable")

    def _apply(self, conn: Connection, ops: list[_Op]) -> list[tuple[_Op, Any]]:
        out: list[tuple[_Op, Any]] = []
        i = 0
        while i < len(ops):
            j = i
            while j < len(ops) and ops[j].kind == ops[i].kind:
                j += 1
            group = ops[i:j]
            res = self._handlers[group[0].kind](conn, [op.payload for op in group])
            out.extend(zip(group, res))
            i = j
        return out

    def _checkpoint(self, *, final: bool) -> tuple[int, int, int] | None:
        """SQLite: copy the WAL into the database and truncate it to zero bytes, so that page
        images holding purged OTP texts leave the WAL. Waits at most briefly for readers."""
        conn = self._connection()
        if conn.dialect.name != "sqlite":
            self._dirty = False
            return None
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cur = raw.cursor()
        try:
            if not final:
                cur.execute("PRAGMA busy_timeout=200")  # never stall the writer on a reader
            row = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            cur.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            cur.close()
        self._last_checkpoint = time.monotonic()
        busy, log_frames, done = (int(x) for x in row)
        if not busy:
            self._dirty = False
        return busy, log_frames, done


# ---------------------------------------------------------------------------------------------
# Engines


def _sqlite_engine(url: sa.URL, *, writer: bool, pool_size: int, synchronous: str,
                   busy_ms: int, cache_kib: int) -> Engine:
    engine = sa.create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": busy_ms / 1000},
        pool_size=pool_size,
        max_overflow=0,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # The driver's own implicit transactions get in the way of BEGIN IMMEDIATE: off.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        # Zero the bytes of deleted / shrunk rows (purged OTP texts) instead of leaving them
        # in free space.
        cur.execute("PRAGMA secure_delete=ON")
        cur.execute(f"PRAGMA cache_size=-{cache_kib}")
        cur.execute("PRAGMA temp_store=MEMORY")
        # A WAL that grew under a burst is cut back to this size after a checkpoint.
        cur.execute("PRAGMA journal_size_limit=67108864")
        if not writer:
            cur.execute("PRAGMA query_only=ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # The writer takes the write lock up front: no deadlock-prone lock upgrade, and another
        # process's writer waits in busy_timeout instead of failing mid-transaction.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


# ---------------------------------------------------------------------------------------------
# The facade


class Store:
    """Async facade over the store. Open with `await Store.open(url)`, close with `close()`."""

    DEFAULT_BUSY_MS = 5000

    def __init__(
        self,
        *,
        write_engine: Engine,
        read_engine: Engine,
        read_workers: int,
        max_batch: int,
        max_queued: int,
        max_retries: int,
        checkpoint_interval_s: float | None,
        text_hash_key: bytes | None,
        busy_ms: int,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._write_engine = write_engine
        self._read_engine = read_engine
        self._hash_key = text_hash_key
        self._sql = _Sql(write_engine.dialect.name)
        self._max_queued = max_queued
        self._max_retries = max_retries
        self._queued = 0
        self._space_waiters: deque[tuple[asyncio.Future[None], int]] = deque()
        self._closed = False
        self._readers = ThreadPoolExecutor(read_workers, thread_name_prefix="smsgw-store-read")
        s = self._sql
        handlers: dict[str, Callable[[Connection, list[Any]], list[Any]]] = {
            "insert": s.insert,
            "mark_sending": s.mark_sending,
            "record_parts": s.record_parts,
            "apply_receipts": s.apply_receipts,
            "take_early": s.take_early,
            "finalize": s.finalize,
            "expire_due": s.expire_due,
            "requeue": s.requeue,
            "requeue_sending": s.requeue_sending,
            "add_opt_outs": s.add_opt_outs,
            "set_checkpoints": s.set_checkpoints,
            "remove_opt_outs": s.remove_opt_outs,
            "purge_messages": s.purge_messages,
            "purge_early": s.purge_early,
        }
        self._writer = _Writer(
            write_engine, handlers, self._deliver_threadsafe, max_batch=max_batch,
            max_retries=max_retries,
            checkpoint_interval_s=checkpoint_interval_s if self.dialect == "sqlite" else None,
            busy_ms=busy_ms,
        )
        self._writer.start()

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        max_batch: int = 2000,
        max_queued: int = 50_000,
        read_workers: int = 2,
        max_retries: int = 10,
        sqlite_synchronous: str = "FULL",
        busy_timeout_ms: int = DEFAULT_BUSY_MS,
        checkpoint_interval_s: float | None = 5.0,
        cache_kib: int = 16_384,
        text_hash_key: bytes | None = None,
    ) -> Store:
        """Open (creating or migrating the schema as needed) and start the writer.

        max_batch: rows per group-commit transaction. max_queued: rows waiting for the writer
        beyond which write calls wait (back-pressure). checkpoint_interval_s: SQLite only, the
        longest a final OTP's text may stay in the WAL (None: only on close/checkpoint()).
        text_hash_key: HMAC key for text digests (a bare SHA-256 of a 6-digit code is
        reversible by enumeration).
        """
        if sqlite_synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("sqlite_synchronous must be FULL, NORMAL or EXTRA")
        u = sa.make_url(url)
        if u.get_backend_name() == "sqlite":
            if sqlite3.sqlite_version_info < _MIN_SQLITE:
                raise RuntimeError(f"SQLite {sqlite3.sqlite_version} is too old for the store "
                                   f"(needs {'.'.join(map(str, _MIN_SQLITE))}+)")
            db = u.database or ""
            if db in ("", ":memory:") or db.startswith("file::memory:"):
                raise ValueError("the store needs a SQLite file, not an in-memory database")
            parent = os.path.dirname(os.path.abspath(db))
            os.makedirs(parent, exist_ok=True)
            sync = sqlite_synchronous.upper()
            # Page caches: the writer's holds the hot index pages of the inserts; readers
            # mostly touch the head of the due index. Misses go to the OS page cache.
            write_engine = _sqlite_engine(u, writer=True, pool_size=1, synchronous=sync,
                                          busy_ms=busy_timeout_ms, cache_kib=cache_kib)
            read_engine = _sqlite_engine(u, writer=False, pool_size=read_workers,
                                         synchronous=sync, busy_ms=busy_timeout_ms,
                                         cache_kib=max(2048, cache_kib // 4))
        else:
            write_engine = sa.create_engine(u, pool_size=1, max_overflow=0, pool_pre_ping=True)
            read_engine = sa.create_engine(u, pool_size=read_workers, max_overflow=0,
                                           pool_pre_ping=True)
        try:
            await asyncio.to_thread(schema.migrate, write_engine)
        except BaseException:
            write_engine.dispose()
            read_engine.dispose()
            raise
        return cls(
            write_engine=write_engine, read_engine=read_engine, read_workers=read_workers,
            max_batch=max_batch, max_queued=max_queued, max_retries=max_retries,
            checkpoint_interval_s=checkpoint_interval_s, text_hash_key=text_hash_key,
            busy_ms=busy_timeout_ms,
        )

    async def close(self) -> None:
        """Finish every queued write, checkpoint (SQLite), stop the threads, release the files."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        await asyncio.to_thread(self._writer.join)
        self._readers.shutdown(wait=True)
        self._write_engine.dispose()
        self._read_engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def dialect(self) -> str:
        """"sqlite" or "postgresql"."""
        return self._write_engine.dialect.name

    # -- back-pressure ----------------------------------------------------------------------

    @property
    def write_backlog(self) -> int:
        """Rows queued for (or being written by) the writer."""
        return self._queued

    @property
    def backlogged(self) -> bool:
        """True while write calls would wait: the ingress should stop reading."""
        return self._queued >= self._max_queued

    async def wait_writable(self) -> None:
        """Return once the writer has room again (reserves nothing)."""
        await self._reserve(0)

    def stats(self) -> StoreStats:
        w = self._writer
        return StoreStats(w.batches, w.operations, w.rows, w.retries, w.last_batch_s, w.busy_s,
                          self._queued)

    # -- plumbing ---------------------------------------------------------------------------

    async def _write(self, kind: str, payload: Any, weight: int = 1) -> Any:
        if self._closed:
            raise StoreClosed("store is closed")
        weight = max(1, weight)
        await self._reserve(weight)
        fut: asyncio.Future[Any] = self._loop.create_future()
        try:
            self._writer.submit(_Op(kind, payload, fut, weight))
        except BaseException:
            self._release(weight)
            raise
        # If the caller is cancelled the write still happens (it may already be committed);
        # only the result is dropped.
        return await fut

    def _fits(self, weight: int) -> bool:
        if self._queued == 0:
            return True  # an oversized call still goes through, alone
        if weight == 0:
            return self._queued < self._max_queued
        return self._queued + weight <= self._max_queued

    async def _reserve(self, weight: int) -> None:
        """Take `weight` rows of the writer's queue, waiting (first come, first served) while it
        is full. The room is handed over by `_release`, so the bound holds however many wait."""
        if not self._space_waiters and self._fits(weight):
            self._queued += weight
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        self._space_waiters.append((fut, weight))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release(weight)  # room was handed over just before the cancellation
            raise

    def _deliver_threadsafe(self, results: list[tuple[_Op, bool, Any]]) -> None:
        # One hop to the loop per batch, not per operation.
        try:
            self._loop.call_soon_threadsafe(self._deliver, results)
        except RuntimeError:  # the loop is gone (closed without Store.close()): nobody waits
            log.warning("store: %d write results dropped, event loop closed", len(results))

    def _deliver(self, results: list[tuple[_Op, bool, Any]]) -> None:
        for op, ok, value in results:
            self._release(op.weight)
            if op.future.done():
                continue
            if ok:
                op.future.set_result(value)
            else:
                op.future.set_exception(value)

    def _release(self, weight: int) -> None:
        self._queued -= weight
        while self._space_waiters:
            fut, w = self._space_waiters[0]
            if fut.done():  # cancelled while waiting
                self._space_waiters.popleft()
                continue
            if not self._fits(w):
                break
            self._space_waiters.popleft()
            self._queued += w
            fut.set_result(None)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreClosed("store is closed")
        return await self._loop.run_in_executor(self._readers, partial(self._read_sync, fn, *args))

    def _read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        delay = 0.005
        for attempt in range(self._max_retries + 1):
            try:
                with self._read_engine.connect() as conn:
                    return fn(conn, *args)
            except Exception as exc:
                if attempt < self._max_retries and _retryable(exc):
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                raise
        raise AssertionError("unreachable")

    def text_digest(self, text: str) -> str:
        """Hex SHA-256 (HMAC-SHA-256 with `text_hash_key`) of a text: what the store keeps of an
        OTP and what duplicate-content checks compare."""
        data = text.encode("utf-8")
        if self._hash_key is not None:
            return hmac.new(self._hash_key, data, hashlib.sha256).hexdigest()
        return hashlib.sha256(data).hexdigest()

    def _message_row(self, m: NewMessage) -> tuple[Any, ...]:
        # In _MSG_COLS order. Hashing here, on the caller's side, keeps it off the writer.
        created = _us(m.created_at)
        return (m.id, m.to, m.text, len(m.text), self.text_digest(m.text), int(m.priority),
                m.sender, m.client, created, created if m.due_at is None else _us(m.due_at),
                None if m.expire_at is None else _us(m.expire_at),
                _QUEUED if m.claimed_by is None else _SENDING, str(m.status), m.reason, None,
                m.claimed_by, m.parts, 0 if m.claimed_by is None else 1, False, None, None,
                created)

    def _rejection_row(self, r: NewRejection) -> tuple[Any, ...]:
        # No text, ever: only its length and digest.
        created = _us(r.created_at)
        return (r.id, r.to, None, len(r.text) if r.text is not None else 0,
                self.text_digest(r.text) if r.text is not None else None, int(r.priority),
                r.sender, r.client, created, created, None, _FINAL, str(Status.REJECTED),
                r.reason, r.detail, None, 0, 0, False, None, None, created)

    # -- writes -----------------------------------------------------------------------------

    async def accept_messages(self, items: Sequence[NewMessage]) -> list[AcceptResult]:
        """Store admitted messages (QUEUED) unless their id was seen; one result per item, in
        order. A second copy of an id, even within the same call or batch, is a duplicate."""
        if not items:
            return []
        return await self._write("insert", [self._message_row(m) for m in items], len(items))

    async def record_rejections(self, items: Sequence[NewRejection]) -> list[AcceptResult]:
        """Store refusals (FINAL, `rejected`, no text) unless their id was seen."""
        if not items:
            return []
        return await self._write("insert", [self._rejection_row(r) for r in items], len(items))

    async def record_rejection(self, item: NewRejection) -> AcceptResult:
        return (await self.record_rejections([item]))[0]

    async def mark_sending(self, ids: Sequence[str], carrier: str, now: float) -> list[str]:
        """QUEUED → SENDING through `carrier`, attempts + 1. Returns the ids actually claimed
        (send only those: another was finalized, expired or claimed meanwhile)."""
        if not ids:
            return []
        return await self._write("mark_sending", (list(ids), carrier, now), len(ids))

    async def record_parts_accepted(self, items: Sequence[PartAccepted]) -> list[PartOutcome]:
        """Record submit_sm_resp ok per part; a message whose parts are all accepted by one
        carrier becomes SUBMITTED (outcome.submitted), receipts held for these ids are applied
        (outcome.final when that makes the message final)."""
        if not items:
            return []
        return await self._write("record_parts", list(items), len(items))

    async def apply_receipts(self, items: Sequence[ReceiptIn]) -> list[ReceiptOutcome]:
        """Match receipts to parts (first candidate key with a match wins); aggregate the
        message (delivered when every part is, undeliverable/expired as soon as one is).
        Unmatched final receipts are held as early receipts."""
        if not items:
            return []
        return await self._write("apply_receipts", list(items), len(items))

    async def apply_receipt(self, item: ReceiptIn) -> ReceiptOutcome:
        return (await self.apply_receipts([item]))[0]

    async def take_early_receipts(self, carrier: str, norm_ids: Collection[str]) -> list[ReceiptIn]:
        """Remove and return the receipts held under any of these keys (oldest first).
        record_parts_accepted already does this for the parts it records."""
        if not norm_ids:
            return []
        return await self._write("take_early", (carrier, list(norm_ids)), len(norm_ids))

    async def finalize(self, items: Sequence[Finalize]) -> list[Final | None]:
        """Make messages final (OTP text purged). None for an unknown or already final id."""
        if not items:
            return []
        return await self._write("finalize", list(items), len(items))

    async def expire_due(self, now: float, limit: int = 1000) -> list[Final]:
        """Fail QUEUED messages whose expire_at has passed (`expired_in_queue`)."""
        return await self._write("expire_due", (now, limit), 1)

    async def requeue(self, items: Sequence[Requeue]) -> list[bool]:
        """Back to QUEUED (transient error, deferral); False for a final or unknown id."""
        if not items:
            return []
        return await self._write("requeue", list(items), len(items))

    async def recover_in_flight(self, now: float) -> list[str]:
        """At startup: every SENDING message back to QUEUED with `resent` (it may have reached
        the carrier before the crash). Returns their ids."""
        return await self._write("requeue_sending", (None, now), 1)

    async def requeue_carrier(self, carrier: str, now: float) -> list[str]:
        """A carrier's binds went down: its SENDING messages back to QUEUED with `resent`."""
        return await self._write("requeue_sending", (carrier, now), 1)

    async def add_opt_outs(self, numbers: Sequence[str], source: str | None, at: float) -> list[bool]:
        """True per number newly added."""
        if not numbers:
            return []
        return await self._write("add_opt_outs", (list(numbers), source, at), len(numbers))

    async def add_opt_out(self, number: str, source: str | None, at: float) -> bool:
        return (await self.add_opt_outs([number], source, at))[0]

    async def remove_opt_outs(self, numbers: Sequence[str]) -> list[bool]:
        """True per number that was on the list."""
        if not numbers:
            return []
        return await self._write("remove_opt_outs", list(numbers), len(numbers))

    async def purge_older_than(self, cutoff: float, *, batch: int = 5000) -> int:
        """Delete final (and submitted) messages with their parts, created before `cutoff`,
        `batch` rows per transaction so other writes interleave. Queued and in-flight messages
        and opt-outs are never touched. Returns the count."""
        total = 0
        while True:
            n = await self._write("purge_messages", (cutoff, batch), batch)
            total += n
            if n < batch:
                return total

    async def set_checkpoint(self, name: str, value: float) -> None:
        """Record a named instant; a value older than the one stored is ignored."""
        await self._write("set_checkpoints", (name, value), 1)

    async def get_checkpoint(self, name: str) -> float | None:
        return await self._read(self._sql.get_checkpoint, name)

    async def changed_since(self, since: float, limit: int = 100_000) -> list[MessageStatus]:
        """Messages whose status changed at or after `since`, oldest change first."""
        return await self._read(self._sql.changed_since, since, limit)

    async def purge_early_receipts(self, older_than: float) -> int:
        """Drop held receipts received before `older_than`; returns how many (unknown ids)."""
        return await self._write("purge_early", older_than, 1)

    async def checkpoint(self) -> tuple[int, int, int] | None:
        """SQLite: wal_checkpoint(TRUNCATE) now, after every write queued before it.
        Returns (busy, wal frames, frames checkpointed); None on PostgreSQL."""
        return await self._write(_CHECKPOINT, None, 1)

    # -- reads ------------------------------------------------------------------------------

    async def fetch_due(
        self,
        now: float,
        limit: int,
        *,
        priorities: Sequence[Priority] | None = None,
        exclude: Collection[str] = (),
    ) -> list[DueMessage]:
        """Up to `limit` QUEUED messages due by `now`, by priority, then due_at, then insertion
        order. `exclude`: ids the caller already holds (claimed but not yet committed)."""
        prios = list(Priority) if priorities is None else list(priorities)
        ex = exclude if isinstance(exclude, (set, frozenset)) else frozenset(exclude)
        return await self._read(self._sql.fetch_due, now, limit, prios, ex)

    async def get_status(self, id: str) -> MessageStatus | None:
        return (await self.get_statuses([id])).get(id)

    async def get_statuses(self, ids: Sequence[str]) -> dict[str, MessageStatus]:
        return await self._read(self._sql.statuses, list(ids))

    async def queue_depth(self, now: float | None = None) -> dict[Priority, int]:
        """QUEUED messages per priority (only those due by `now` when given)."""
        return await self._read(self._sql.queue_depth, now)

    async def state_counts(self) -> dict[MessageState, int]:
        """Messages QUEUED and SENDING (both counted from small partial indexes)."""
        return await self._read(self._sql.state_counts)

    async def history(self, numbers: Sequence[str],
                      since: Mapping[Priority, float]) -> dict[str, list[HistoryEntry]]:
        """Accepted (not rejected) messages to these numbers, per priority since its time, oldest
        first: what the policies count, for a whole batch of submissions in a few queries."""
        return await self._read(self._sql.history, list(numbers), dict(since))

    async def count_sent(self, number: str, priority: Priority | Sequence[Priority],
                         since: float) -> int:
        """Accepted messages of these priorities to `number` since `since`."""
        prios = [priority] if isinstance(priority, Priority) else list(priority)
        return await self._read(self._sql.count_sent, number, prios, since, None, None)

    async def count_same_text(self, number: str, text: str, since: float, *,
                              exclude_id: str | None = None) -> int:
        """Accepted messages with this exact text to `number` since `since` (any priority)."""
        return await self._read(self._sql.count_sent, number, list(Priority), since,
                                self.text_digest(text), exclude_id)

    async def count_prefix(self, prefix: str, priority: Priority, since: float, *,
                           exclude: Sequence[str] = ()) -> int:
        """Accepted messages of `priority` to numbers starting with `prefix` since `since`,
        not counting the ids in `exclude` (the caller counts those itself)."""
        return await self._read(self._sql.count_prefix, prefix, priority, since, tuple(exclude))

    async def is_opted_out(self, number: str) -> bool:
        return number in await self._read(self._sql.opted_out, [number])

    async def opted_out(self, numbers: Sequence[str]) -> set[str]:
        return await self._read(self._sql.opted_out, list(numbers))

    async def list_opt_outs(self, *, after: str | None = None, limit: int = 1000) -> list[OptOut]:
        """Opt-outs in number order; page with `after` = the last number of the previous page."""
        return await self._read(self._sql.list_opt_outs, after, limit)
