"""Retrying a store write safely: finding out whether a COMMIT whose answer was lost happened.

The store's writer retries a transaction that failed on a lost connection (store.py,
`_Writer._transaction`). That is right when the transaction never committed, and wrong when
it did: a PostgreSQL crash, a failover or a network cut can drop the connection after the
server committed and before the gateway heard so. Run again, every write of the batch would
find its own effects and report them as someone else's: accepted submissions become repeats
(no `accepted` event), messages claimed for a carrier are "already claimed" and never sent,
finals and receipts are "already final" and their events are never published.

So on PostgreSQL each write transaction notes its transaction id (`txid_current()`, one round
trip, in the transaction), and when its COMMIT fails with a lost connection the writer asks a
new connection `txid_status(xid)` before retrying: `committed` means the results computed in the
transaction stand and nothing is run again; `aborted` means run it again; `in progress` (the
server has not yet noticed the dead connection) is asked again. While the server is unreachable
(a crash: it is restarting) the question is asked again with backoff for up to
`outcome_timeout_s`, since nothing else can be written meanwhile anyway; after that the outcome
is unknown and the writer falls back to running the transaction again.

One limit: after a crash that lost the transaction (its commit record never reached the
server's disk), its id may be handed out again; if another client of the same cluster takes it
and commits before the gateway asks, the answer is wrong. The gateway asks as soon as the server
accepts connections again, while its own writer waits for the answer, so only a foreign writer
on a shared cluster can win that race.

SQLite needs none of this: its commit is local, and either done or not when the call returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)


class CommitOutcome:
    """Per writer: `note(conn)` inside each write transaction, and after its COMMIT failed,
    `committed(xid, exc, connect)`: True (it did commit), False (it did not) or None (unknown)."""

    def __init__(self, dialect: str, *, outcome_timeout_s: float = 60.0) -> None:
        self.enabled = dialect == "postgresql"
        self.outcome_timeout_s = outcome_timeout_s
        self.resolved = 0  # commits found done after their answer was lost (for tests, /status)

    def note(self, conn: Connection) -> int | None:
        """The id of the transaction `conn` is in (PostgreSQL), to ask about it later."""
        if not self.enabled:
            return None
        return int(conn.exec_driver_sql("SELECT txid_current()").scalar_one())

    def committed(self, xid: int | None, exc: BaseException,
                  connect: Callable[[], Connection]) -> bool | None:
        """Whether transaction `xid`, whose COMMIT raised `exc`, committed. Only a lost
        connection leaves that open; `connect` gives a (new) connection to ask on."""
        if xid is None or not (isinstance(exc, DBAPIError) and exc.connection_invalidated):
            return None
        deadline = time.monotonic() + self.outcome_timeout_s
        delay = 0.05
        while True:
            status = self._status(xid, connect)
            if status == "committed":
                self.resolved += 1
                log.warning("store: the answer to a COMMIT was lost, but it committed "
                            "(transaction %d): not run again", xid)
                return True
            if status == "aborted":
                return False
            if status is None:
                return None  # NULL: too old to know (wraparound); never for a fresh one
            # "in progress" or "unreachable": ask again
            if time.monotonic() + delay > deadline:
                log.error("store: could not learn whether transaction %d committed within "
                          "%.0fs; running it again", xid, self.outcome_timeout_s)
                return None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    @staticmethod
    def _status(xid: int, connect: Callable[[], Connection]) -> str | None:
        """`txid_status(xid)`, or "unreachable" while the server cannot be asked."""
        try:
            conn = connect()
            with conn.begin():
                value = conn.exec_driver_sql("SELECT txid_status(%s)", (xid,)).scalar_one()
            return None if value is None else str(value)
        except DBAPIError as exc:
            if "in the future" in str(exc.orig):
                # The server crashed before the transaction's commit record reached its disk:
                # after recovery its id is not even allocated yet. Not committed.
                return "aborted"
            return "unreachable"
