"""The store's schema (SQLAlchemy 2 Core) and its ordered, versioned migrations.

One schema serves SQLite and PostgreSQL. Times are integer microseconds since the epoch (BIGINT;
the store's API speaks float seconds and converts): exact in both engines, exact through the
JSON that carries SQLite's bulk statements and results (SQLite prints a REAL in JSON with 15
significant digits, 10 µs for an epoch time), and cheap to compare. Text digests are hex
strings for the same reason. Small enums are stored as their integer value
(`model.MessageState`, `model.PartState`, `model.Priority`) so that the partial indexes below
can name them as constants; statuses, reasons and receipt errors are short strings, as published
in events.

Versioning: `schema_version` holds one row per applied migration (version, description,
applied_at); the database's version is the highest one. `migrate()` applies the missing steps of
`MIGRATIONS` in order, each in its own transaction together with its `schema_version` row, so a
crash mid-upgrade leaves the database at a whole version (both engines have transactional DDL).
Released migrations never change: a later change to a table is a new step (ALTER / CREATE INDEX),
and the table builders used by released steps are frozen with them. `metadata` below is what
the queries run against; `tests/integration/test_store.py` checks that applying every step
yields exactly it.

Why the tables look the way they do:
- `messages.seq` is an integer primary key (SQLite: the rowid itself, PostgreSQL: BIGSERIAL) and
  the client's `id` a UNIQUE column rather than the primary key. SQLite keeps a text primary key
  in a separate unique index anyway, so this costs nothing there, and `seq` gives the insertion
  order that breaks ties between messages due at the same instant.
- Rejected submissions are rows of `messages` too (state FINAL, status `rejected`, no text), so
  that a repeat of their id is idempotent through the same unique index.
- `parts` rows are created when a carrier accepts a part (its message id becomes known). Before
  that a part has nothing to record, and not writing them at accept time halves the rows written
  on the hottest path. "Part k accepted" is "row (id, k) exists"; a resend skips those parts.
- `early_receipts` holds final receipts that matched no part yet (the receipt overtook its
  submit_sm_resp, or the id is unknown), one row per candidate key of the receipt id, grouped by
  `grp`; they are consumed when the part is recorded and purged by age otherwise.
- Recipient history for the policies is derived from `messages` through the indexes
  `ix_messages_recipient` (to_number, priority, created_at) and `ix_messages_prio_created`
  (priority, created_at); no second copy of each send is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from gateway.model import MessageState

# Integer primary keys: SQLite only aliases the rowid for the exact type name INTEGER.
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.BigInteger  # microseconds since the epoch
_ID = sa.String(64)  # the contract: 1-64 characters of A-Za-z0-9._:-
_CARRIER_ID = sa.String(65)  # SMPP message_id is a C-octet string of at most 65 octets

QUEUED = int(MessageState.QUEUED)
SENDING = int(MessageState.SENDING)


# ---------------------------------------------------------------------------------------------
# Table builders. Frozen with the migrations that use them: change a table by adding a step.


def _messages_v1(md: sa.MetaData) -> sa.Table:
    t = sa.Table(
        "messages",
        md,
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", _ID, nullable=False),
        # E.164 with '+'; NULL for a rejection whose `to` could not be parsed.
        sa.Column("to_number", sa.String(32), nullable=True),
        # The final text (signature / opt-out text applied). NULL once an OTP is final and for
        # every rejection: only the length and the digest stay.
        sa.Column("text", sa.Text, nullable=True),
        sa.Column("text_len", sa.Integer, nullable=False, server_default="0"),
        sa.Column("text_sha256", sa.String(64), nullable=True),  # hex (HMAC-)SHA-256
        sa.Column("priority", sa.SmallInteger, nullable=False),
        sa.Column("sender", sa.String(32), nullable=True),
        sa.Column("client", sa.String(64), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("due_at", _TS, nullable=False),
        sa.Column("expire_at", _TS, nullable=True),  # max queue age or validity_s
        sa.Column("state", sa.SmallInteger, nullable=False),  # model.MessageState
        sa.Column("status", sa.String(16), nullable=False),  # last model.Status published
        sa.Column("reason", sa.String(32), nullable=True),  # of that status (deferred/rejected/failed)
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("carrier", sa.String(64), nullable=True),  # carrier of the current / last try
        sa.Column("parts_total", sa.SmallInteger, nullable=False),
        sa.Column("attempts", sa.SmallInteger, nullable=False, server_default="0"),
        sa.Column("resent", sa.Boolean(create_constraint=False), nullable=False,
                  server_default=sa.false()),
        sa.Column("command_status", sa.Integer, nullable=True),
        sa.Column("error", sa.String(16), nullable=True),  # receipt err: of the deciding part
        sa.Column("updated_at", _TS, nullable=False),
    )
    sa.Index("ux_messages_id", t.c.id, unique=True)
    # The dispatcher's pick: WHERE state = 0 AND priority = ? AND due_at <= ? ORDER BY due_at, seq.
    # Partial, so the millions of final rows cost nothing here and the index shrinks as the
    # backlog drains. Queries must spell `state = 0` as a constant (see store._QUEUED) for
    # SQLite to prove the partial index usable.
    sa.Index("ix_messages_due", t.c.priority, t.c.due_at, t.c.seq,
             sqlite_where=t.c.state == QUEUED, postgresql_where=t.c.state == QUEUED)
    # Bounded queue age: WHERE state = 0 AND expire_at <= now, cheap with millions due.
    sa.Index("ix_messages_expire", t.c.expire_at,
             sqlite_where=t.c.state == QUEUED, postgresql_where=t.c.state == QUEUED)
    # Messages in flight, by carrier: recover_in_flight and requeue_carrier. Tiny (in-flight only).
    sa.Index("ix_messages_sending", t.c.carrier,
             sqlite_where=t.c.state == SENDING, postgresql_where=t.c.state == SENDING)
    return t


def _parts_v1(md: sa.MetaData) -> sa.Table:
    t = sa.Table(
        "parts",
        md,
        sa.Column("message_id", _ID, primary_key=True),
        sa.Column("part_no", sa.SmallInteger, primary_key=True),  # 1-based
        sa.Column("carrier", sa.String(64), nullable=False),
        sa.Column("carrier_message_id", _CARRIER_ID, nullable=False),  # exactly as given
        sa.Column("norm_id", _CARRIER_ID, nullable=False),  # receipts.canonical_id of it
        sa.Column("state", sa.SmallInteger, nullable=False),  # model.PartState
        sa.Column("error", sa.String(16), nullable=True),
        sa.Column("submitted_at", _TS, nullable=False),
        sa.Column("final_at", _TS, nullable=True),
        # Clustered on (message_id, part_no) in SQLite: the parts of a message are adjacent.
        sqlite_with_rowid=False,
    )
    # A receipt is matched by one index lookup per candidate key.
    sa.Index("ix_parts_match", t.c.carrier, t.c.norm_id)
    return t


def _opt_outs_v1(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "opt_outs",
        md,
        sa.Column("number", sa.String(32), primary_key=True),
        sa.Column("added_at", _TS, nullable=False),
        sa.Column("source", sa.String(32), nullable=True),  # "mo:<carrier>", "cli", "import", ...
    )


def _early_receipts_v2(md: sa.MetaData) -> sa.Table:
    t = sa.Table(
        "early_receipts",
        md,
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("grp", sa.String(32), nullable=False),  # one receipt, several candidate keys
        sa.Column("carrier", sa.String(64), nullable=False),
        sa.Column("norm_id", _CARRIER_ID, nullable=False),
        sa.Column("carrier_message_id", _CARRIER_ID, nullable=True),
        sa.Column("state", sa.String(8), nullable=False),  # model.ReceiptState
        sa.Column("error", sa.String(16), nullable=True),
        sa.Column("received_at", _TS, nullable=False),
    )
    sa.Index("ix_early_match", t.c.carrier, t.c.norm_id)
    sa.Index("ix_early_grp", t.c.grp)
    sa.Index("ix_early_received", t.c.received_at)
    return t


def _history_indexes_v3(messages: sa.Table) -> list[sa.Index]:
    return [
        # OTP velocity, marketing caps, duplicate content: per recipient, per priority, by time.
        sa.Index("ix_messages_recipient", messages.c.to_number, messages.c.priority,
                 messages.c.created_at),
        # OTP volume per destination prefix over the last minute; retention purge by age.
        sa.Index("ix_messages_prio_created", messages.c.priority, messages.c.created_at),
    ]


def _checkpoints_v4(md: sa.MetaData) -> sa.Table:
    # Named instants the gateway keeps across restarts, e.g. `events_confirmed_before`: every
    # event about a change before it was confirmed by the broker (see gateway/queue/replay.py).
    return sa.Table(
        "checkpoints",
        md,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", _TS, nullable=False),
    )


def _replay_index_v4(messages: sa.Table) -> sa.Index:
    # At a restart, the messages changed since `events_confirmed_before` get their status
    # published again: a range scan of the last moments before the stop.
    return sa.Index("ix_messages_updated", messages.c.updated_at)


def _schema_version(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "schema_version",
        md,
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("applied_at", _TS, nullable=False),
    )


# ---------------------------------------------------------------------------------------------
# The current schema, as the queries see it.

metadata = sa.MetaData()
messages = _messages_v1(metadata)
parts = _parts_v1(metadata)
opt_outs = _opt_outs_v1(metadata)
early_receipts = _early_receipts_v2(metadata)
_history_indexes_v3(messages)
checkpoints = _checkpoints_v4(metadata)
_replay_index_v4(messages)
schema_version = _schema_version(metadata)


# ---------------------------------------------------------------------------------------------
# Migrations


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[sa.Connection], None]


def _m1(conn: sa.Connection) -> None:
    md = sa.MetaData()
    for t in (_messages_v1(md), _parts_v1(md), _opt_outs_v1(md)):
        t.create(conn)


def _m2(conn: sa.Connection) -> None:
    _early_receipts_v2(sa.MetaData()).create(conn)


def _m3(conn: sa.Connection) -> None:
    for ix in _history_indexes_v3(_messages_v1(sa.MetaData())):
        ix.create(conn)


def _m4(conn: sa.Connection) -> None:
    _checkpoints_v4(sa.MetaData()).create(conn)
    _replay_index_v4(_messages_v1(sa.MetaData())).create(conn)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "messages, parts, opt_outs", _m1),
    Migration(2, "early_receipts: receipts that overtake their submit_sm_resp", _m2),
    Migration(3, "recipient history indexes for the policies", _m3),
    Migration(4, "checkpoints, and an index to replay events owed after a crash", _m4),
)
LATEST_VERSION = MIGRATIONS[-1].version

# Any constant will do; it only has to be the same for every gateway sharing a database.
_PG_MIGRATION_LOCK = 0x736D7367  # "smsg"


class SchemaTooNew(RuntimeError):
    """The database was written by a newer gateway: refuse to guess (no downgrades)."""


def current_version(conn: sa.Connection) -> int:
    """The database's schema version; 0 for an empty database."""
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    return int(conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0)


def migrate(
    engine: sa.Engine,
    target: int | None = None,
    migrations: tuple[Migration, ...] = MIGRATIONS,
) -> list[int]:
    """Apply the missing migrations up to `target` (default: all); return the versions applied.

    Safe against a second gateway migrating the same database at the same time: on SQLite the
    transaction holds the write lock from its BEGIN IMMEDIATE (the store's engines begin that
    way), on PostgreSQL a transaction-level advisory lock serialises the steps, and the version
    is re-read under the lock before each step.
    """
    target = migrations[-1].version if target is None else target
    applied: list[int] = []
    for m in migrations:
        if m.version > target:
            break
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            schema_version.create(conn, checkfirst=True)
            have = current_version(conn)
            if have > migrations[-1].version:
                raise SchemaTooNew(
                    f"database schema version {have} is newer than this gateway's "
                    f"{migrations[-1].version}"
                )
            if have >= m.version:
                continue
            m.apply(conn)
            conn.execute(
                schema_version.insert().values(
                    version=m.version, description=m.description,
                    applied_at=round(time.time() * 1_000_000),
                )
            )
            applied.append(m.version)
    return applied
