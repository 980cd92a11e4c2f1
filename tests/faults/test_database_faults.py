"""Database faults during a flood: PostgreSQL crashed and restarted, the answer to a COMMIT
lost on the way back, SQLite locked by another process.

The gateway runs in this process against a real Mosquitto and one SMSC simulator, its own
PostgreSQL cluster (tests/faults/pgcluster.py) or a SQLite file. Submissions flow for as long as
the faults last, so while the database is away the ingress has submissions to store and the
dispatcher has parts in flight, responses and receipts to record. Submissions come from
`DurablePublisher`, events go to `EventRecorder` (tests/faults/durable.py); the broker is not
touched here, so nothing may be missing: every id is stored once, `delivered`, with exactly one
`accepted` and one `delivered` event that is not a repeat.

What the gateway must do while the database is away (DESIGN.md: "the store is the truth";
CONTRACT.md: the PUBACK only after the commit): acknowledge nothing (the broker keeps the
submissions), keep trying with backoff, never crash, resume by itself when it is back, and never
run a write twice because the answer to its COMMIT was lost (gateway/queue/retry.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from gateway.daemon import Gateway
from gateway.queue.retry import CommitOutcome
from tests.faults.conftest import scaled
from tests.faults.durable import (
    DurablePublisher,
    EventRecorder,
    ExactlyOnce,
    check_exactly_once,
    smsc_extra_copies,
    wait_finals,
)
from tests.faults.pgcluster import PgCluster, pg_bindir
from tests.faults.pgproxy import CommitCutter
from tests.fixtures.services import Broker
from tests.integration.conftest import GatewaySetup, healthz, until

pytestmark = pytest.mark.faults

RATE = 200  # submissions a second, for as long as the faults last
TPS = 250  # the carrier: parts, responses and receipts are in flight whenever the database goes
LONG_RUNNING = ("events", "dispatch", "mo-sweeper", "ingress", "housekeeping",
                "events-checkpoint")
SETTLE_S = 0.5  # after the fault starts: commits already on their way have finished or failed


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) installed")
    cluster = PgCluster(bindir)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
async def pg_setup(tmp_path: Path, broker: Broker, pg_cluster: PgCluster
                   ) -> AsyncIterator[GatewaySetup]:
    s = GatewaySetup(tmp_path, broker, pg_cluster.url)
    try:
        yield s
    finally:
        await s.close()


async def start(s: GatewaySetup) -> Gateway:
    s.add_carrier("alpha", tps=TPS, window=50)
    s.route("", "alpha")
    await s.start_sim("alpha")
    gw = await s.start_gateway()
    assert gw.ingress is not None and gw.store is not None and gw.dispatcher is not None
    return gw


async def assert_alive(s: GatewaySetup, gw: Gateway) -> None:
    """Every task of the gateway still runs, no internal error, /healthz answers 200."""
    assert not gw.stopping.is_set()
    for t in gw._tasks:  # noqa: SLF001
        if t.get_name() in LONG_RUNNING:
            assert not t.done(), t
    d = gw.dispatcher
    assert d is not None and d.counters["internal_errors"] == 0, d.counters
    for lane in d.carriers.values():
        assert lane.task is not None and not lane.task.done()
    assert await healthz(s.http_port) == 200


class Outage:
    """What the gateway acknowledged while the database was away (sampled once the commits
    already on their way have settled, and again just before it comes back), and how long it
    took to acknowledge again once it was back."""

    def __init__(self, gw: Gateway, pub: DurablePublisher) -> None:
        self.gw, self.pub = gw, pub
        self.acked_from = self.acked_to = 0
        self.broker_took = 0  # submissions the broker acknowledged to the publisher meanwhile
        self.resumed_after_s = 0.0
        self.healthz: int | None = None  # what /healthz answered meanwhile (not asserted)
        self._pub_from = 0

    def _acked(self) -> int:
        assert self.gw.ingress is not None
        return self.gw.ingress.stats.acked

    def settled(self) -> None:
        self.acked_from, self._pub_from = self._acked(), len(self.pub.acked())

    def ending(self) -> None:
        self.acked_to = self._acked()
        self.broker_took = len(self.pub.acked()) - self._pub_from

    def row(self) -> str:
        return (f"gateway_acks={self.acked_to - self.acked_from} broker_took={self.broker_took} "
                f"acks_resumed_after={self.resumed_after_s:.1f}s healthz={self.healthz}")


Step = Callable[[], Awaitable[None]]


async def flood_with_faults(s: GatewaySetup, gw: Gateway, downs: list[float], down: Step,
                            up: Step, *, settle_s: float = SETTLE_S, check_acks: bool = True,
                            ) -> tuple[list[Outage], ExactlyOnce]:
    """Flood until the faults are over: after 1 s, and again 1 s after the acknowledgements
    resumed from the last one, call `down()`, hold it for the next of `downs` seconds, call
    `up()`. Then every id must be stored once and have its events exactly once."""
    assert gw.ingress is not None
    tag = f"{os.getpid()}-{s.http_port}"
    outages: list[Outage] = []
    stop = asyncio.Event()
    with EventRecorder(s.broker.port, f"rec-{tag}") as rec, \
            DurablePublisher(s.broker.port, f"pub-{tag}") as pub:
        flood = asyncio.create_task(pub.flood_until(stop, RATE, "db"))
        for down_s in downs:
            await asyncio.sleep(1.0)
            out = Outage(gw, pub)
            t0 = time.monotonic()
            await down()
            await asyncio.sleep(settle_s)
            out.settled()
            out.healthz = await healthz(s.http_port)
            await asyncio.sleep(max(0.0, t0 + down_s - time.monotonic()))
            out.ending()
            await up()
            t_up, acked = time.monotonic(), gw.ingress.stats.acked
            if check_acks:
                await until(lambda acked=acked: gw.ingress.stats.acked > acked, 60,
                            "the acknowledgements to resume")
            out.resumed_after_s = time.monotonic() - t_up
            outages.append(out)
        await asyncio.sleep(1.0)
        stop.set()
        ids = await flood
        await wait_finals(rec, ids, 45, s.store_url)
        await asyncio.sleep(0.5)  # a moment for any (wrong) second event
        # (in a thread: the store may be behind a proxy that runs in this event loop)
        result = await asyncio.to_thread(check_exactly_once, rec, ids, s.store_url)
    # Nothing was sent twice (the gateway never restarted: nothing was in doubt) or left out.
    result.smsc_extra, missing = smsc_extra_copies(s.sims.values(),
                                                   Counter(pub.sent_to[i] for i in ids))
    assert (result.smsc_extra, missing) == (0, 0)
    return outages, result


# --------------------------------------------------------------------------------- PostgreSQL


async def test_postgres_crashed_and_restarted_during_a_flood(pg_setup: GatewaySetup,
                                                             pg_cluster: PgCluster) -> None:
    """The gateway's own PostgreSQL cluster is crashed (`pg_ctl stop -m immediate`: every
    connection cut, no shutdown checkpoint, crash recovery at the start) and started again after
    3 s, twice during a flood: no PUBACK while it is down, retries, resumes by itself, every
    message exactly once."""
    s, pg = pg_setup, pg_cluster
    downs = [3.0] * scaled(2, 6)
    gw = await start(s)

    async def down() -> None:
        await asyncio.to_thread(pg.stop, "immediate")

    async def up() -> None:
        await asyncio.to_thread(pg.start)

    outages, result = await flood_with_faults(s, gw, downs, down, up)
    await assert_alive(s, gw)
    assert gw.ingress is not None and gw.store is not None
    print(f"\nFAULT postgres crash+restart x{len(downs)} during a flood: {result.row()} "
          f"outages=[{'; '.join(o.row() for o in outages)}] "
          f"admit_failures={gw.ingress.stats.admit_failures} "
          f"store_retries={gw.store.stats().retries} "
          f"commits_found_done={s.all_logs().count('but it committed')}")
    for o in outages:
        assert o.acked_to == o.acked_from, o.row()  # nothing acknowledged without a commit
        assert o.broker_took > 0, o.row()  # the flood went on: the broker held it
    # The commits failed and were retried: by the ingress (admit failed) or inside the store's
    # writer (a lost connection, retried with backoff), depending on where the outage hit.
    assert gw.ingress.stats.admit_failures + gw.store.stats().retries > 0


async def test_postgres_commit_answer_lost(tmp_path: Path, broker: Broker,
                                          pg_cluster: PgCluster) -> None:
    """The connection is cut right after PostgreSQL committed a write and before the gateway
    heard so (what a crash, a failover or a network cut can do), at the next commit whatever it
    is (accepting submissions, claiming messages for a carrier, recording responses, receipts,
    finals), several times during a flood: the gateway must find out that the commit happened
    instead of running the writes again as if it had not (which would make them repeats:
    `accepted` replaced by a repeat, messages claimed and never sent, finals never published)."""
    cutter = CommitCutter(pg_cluster.port)
    await cutter.start()
    s = GatewaySetup(tmp_path, broker, f"postgresql+psycopg://postgres@127.0.0.1:{cutter.port}"
                                       f"/postgres?{cutter.url_params}")
    cuts = scaled(8, 40)
    try:
        gw = await start(s)

        async def cut() -> None:
            base = cutter.cuts
            cutter.arm()
            await until(lambda: cutter.cuts > base, 10, "a commit to cut")

        outages, result = await flood_with_faults(s, gw, [0.6] * cuts, cut, _nothing,
                                                  settle_s=0.0, check_acks=False)
        await assert_alive(s, gw)
        assert gw.store is not None and gw.ingress is not None
        print(f"\nFAULT postgres COMMIT answer lost x{cutter.cuts} (of {cutter.commits} commits) "
              f"during a flood: {result.row()} store_retries={gw.store.stats().retries} "
              f"admit_failures={gw.ingress.stats.admit_failures}")
        assert cutter.cuts == cuts
        # Every cut came after the server committed: each one was found committed, none re-run.
        assert s.all_logs().count("but it committed") == cuts, s.all_logs()[-2000:]
    finally:
        await s.close()
        await cutter.stop()


async def _nothing() -> None:
    return None


async def test_commit_outcome_is_asked_of_the_server(pg_cluster: PgCluster) -> None:
    """gateway/queue/retry.py against the real server: a committed transaction is reported
    committed, a rolled back one aborted, also when the server is down when first asked (it is
    asked again until it is back); a failure that did not lose the connection is not its case."""
    engine = sa.create_engine(pg_cluster.url)
    outcome = CommitOutcome("postgresql", outcome_timeout_s=30)
    lost = DBAPIError("COMMIT", None, Exception("server closed the connection unexpectedly"),
                      connection_invalidated=True)
    held: list[sa.Connection] = []

    def connect() -> sa.Connection:  # like the writer: one connection, replaced once it broke
        if held and not held[-1].invalidated and not held[-1].closed:
            return held[-1]
        held.append(engine.connect())
        return held[-1]

    try:
        with engine.connect() as conn:  # (writes, as the store's do: a synchronous commit)
            with conn.begin():
                conn.exec_driver_sql("CREATE TABLE marks (x int)")
            with conn.begin():
                done = outcome.note(conn)
                conn.exec_driver_sql("INSERT INTO marks VALUES (1)")
            tx = conn.begin()
            undone = outcome.note(conn)
            conn.exec_driver_sql("INSERT INTO marks VALUES (2)")
            tx.rollback()
        assert outcome.committed(done, lost, connect) is True
        assert outcome.committed(undone, lost, connect) is False
        assert outcome.committed(done, DBAPIError("COMMIT", None, Exception("x")), connect) is None
        await asyncio.to_thread(pg_cluster.stop, "immediate")
        for c in held:
            c.invalidate()
        back = asyncio.get_running_loop().call_later(1.5, pg_cluster.start)
        t0 = time.monotonic()
        assert await asyncio.to_thread(outcome.committed, done, lost, connect) is True
        assert time.monotonic() - t0 >= 1.5
        back.cancel()
    finally:
        for c in held:
            c.close()
        engine.dispose()


# --------------------------------------------------------------------------------- SQLite

# The store's busy_timeout is 5 s: a shorter lock is waited out inside SQLite, a longer one
# raises "database is locked", which the store retries.
LOCKS_S = [2.0, 6.5]

_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


async def test_sqlite_locked_by_another_process_during_a_flood(sqlite_setup: GatewaySetup
                                                               ) -> None:
    """Another process holds BEGIN EXCLUSIVE on the gateway's SQLite file during a flood, once
    for 2 s and once for 6.5 s (longer than the busy_timeout): no PUBACK meanwhile, "database is
    locked" retried, no crash, every message exactly once."""
    s = sqlite_setup
    downs = LOCKS_S * scaled(1, 3)
    gw = await start(s)
    db_file = s.store_url.removeprefix("sqlite:///")
    lockers: list[subprocess.Popen[str]] = []

    async def down() -> None:
        proc = subprocess.Popen([sys.executable, "-c", _LOCKER, db_file], text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        lockers.append(proc)
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.strip() == "locked", line

    async def up() -> None:
        proc = lockers[-1]
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert await asyncio.to_thread(proc.wait, 10) == 0

    try:
        outages, result = await flood_with_faults(s, gw, downs, down, up)
    finally:
        for proc in lockers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    await assert_alive(s, gw)
    assert gw.ingress is not None and gw.store is not None
    retries = gw.store.stats().retries
    print(f"\nFAULT sqlite locked {downs}s during a flood: {result.row()} "
          f"outages=[{'; '.join(o.row() for o in outages)}] "
          f"admit_failures={gw.ingress.stats.admit_failures} store_retries={retries}")
    for o in outages:
        assert o.acked_to == o.acked_from, o.row()  # nothing acknowledged without a commit
        assert o.broker_took > 0, o.row()
    assert retries > 0  # a lock outlasted busy_timeout: the store retried "database is locked"
