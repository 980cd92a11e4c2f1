"""Store benchmark: group-commit accept throughput, and picking with a backlog of a million.

Run from the repo root: ``python -m bench.bench_store`` (or ``python bench/bench_store.py``).
Options: ``--messages N`` (accept phase, default 50,000), ``--backlog N`` (default 1,000,000),
``--skip-pg`` / ``--skip-backlog``, ``--pg-dsn`` (libpq DSN of a server where user may CREATE
DATABASE; default 127.0.0.1:5432 user postgres).

1. accept: N new messages of 2 parts each through `Store.accept_messages`, on SQLite
   (synchronous=FULL, the default, and NORMAL) and on PostgreSQL, in two shapes: one message per
   call from 2,000 concurrent callers (the ingress's shape: one MQTT submission, one call) and
   100 messages per call. Reported: messages/s, transactions (group commits), rows per commit.
2. lifecycle: the store's whole share of a 2-part message, accept → fetch_due + mark_sending →
   two parts accepted → two DELIVRD receipts, one item per call and 50 per call; process CPU per
   message by stage (the bench's own coroutines included, so an upper bound).
3. backlog (SQLite): N QUEUED messages written straight with executemany (not through the
   facade: building the backlog is not what is measured), then the dispatcher's reads with the
   writer idle: fetch_due of 500 (every lane, one lane), with a 500-id exclusion set,
   mark_sending of 500, expire_due with nothing expired, a history count, an accept of one
   message, queue_depth (a count over the whole backlog: for /status, not the hot path), and
   fetch_due again with a CPU-bound thread beside it (the event loop under load);
   then 20,000 more accepts (1 per call) on top of the backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

if __package__ in (None, ""):  # `python bench/bench_store.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.model import MessageState, Priority, ReceiptState
from gateway.queue.store import NewMessage, PartAccepted, ReceiptIn, Store
from gateway.smpp.receipts import candidate_ids, canonical_id

NOW = 1_800_000_000.0
TEXT = "您的订单已发货，快递单号 SF1234567890，请注意查收。退订回T" * 2  # 2 UCS-2 parts


def _rows(n: int, prefix: str) -> list[NewMessage]:
    return [
        NewMessage(id=f"{prefix}{i}", to=f"+86138{i % 100_000_000:08d}", text=TEXT, parts=2,
                   created_at=NOW + i * 1e-4, priority=Priority(i % 3), expire_at=NOW + 86_400)
        for i in range(n)
    ]


async def _accept(url: str, n: int, per_call: int, concurrency: int, **opts: object) -> dict[str, float]:
    store = await Store.open(url, **opts)  # type: ignore[arg-type]
    try:
        rows = _rows(n, f"a{per_call}-")
        calls = [rows[i : i + per_call] for i in range(0, n, per_call)]
        it = iter(calls)

        async def caller() -> None:
            for chunk in it:
                res = await store.accept_messages(chunk)
                assert all(r.inserted for r in res)

        b0 = store.stats()
        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(min(concurrency, len(calls)))))
        dt = time.perf_counter() - t0
        st = store.stats()
        batches = st.batches - b0.batches
        return {"msgs_per_s": n / dt, "seconds": dt, "commits": batches,
                "rows_per_commit": n / max(1, batches)}
    finally:
        await store.close()


def _print_accept(label: str, r: dict[str, float]) -> None:
    print(f"  {label:<44} {r['msgs_per_s']:>9,.0f} msg/s  ({r['seconds']:.2f} s, "
          f"{r['commits']:,.0f} commits, {r['rows_per_commit']:.0f} rows/commit)")


async def _lifecycle(url: str, n: int, per_call: int) -> dict[str, float]:
    """accept → fetch_due/mark_sending → 2 parts accepted → 2 receipts → delivered."""
    store = await Store.open(url)
    try:
        rows = _rows(n, "l-")
        stages: dict[str, float] = {}
        cpu0, t0 = time.process_time(), time.perf_counter()
        last = [cpu0]

        def stage(name: str) -> None:
            now = time.process_time()
            stages[name] = (now - last[0]) / n * 1e6
            last[0] = now

        async def fan(items: list, call: Callable[[list], Awaitable[object]]) -> list:  # type: ignore[type-arg]
            calls = iter([items[i : i + per_call] for i in range(0, len(items), per_call)])
            out: list = []  # type: ignore[type-arg]

            async def caller() -> None:
                for chunk in calls:
                    out.extend(await call(chunk))  # type: ignore[arg-type]

            await asyncio.gather(*(caller() for _ in range(2000 // per_call or 1)))
            return out

        await fan(rows, store.accept_messages)
        stage("accept")
        while due := await store.fetch_due(NOW + 1, 500):
            await store.mark_sending([d.id for d in due], "alpha", NOW)
        stage("fetch_due+mark_sending")
        ids = {m.id: i for i, m in enumerate(rows)}
        parts = [PartAccepted(m.id, k, "alpha", f"G{ids[m.id] * 2 + k:X}",
                              canonical_id(f"G{ids[m.id] * 2 + k:X}"), NOW) for m in rows
                 for k in (1, 2)]
        res = await fan(parts, store.record_parts_accepted)
        assert sum(1 for r in res if r.submitted) == n
        stage("parts")
        rcpts = [ReceiptIn("alpha", candidate_ids(p.carrier_message_id), ReceiptState.DELIVRD, NOW)
                 for p in parts]
        res = await fan(rcpts, store.apply_receipts)
        assert sum(1 for r in res if r.final) == n
        stage("receipts")
        dt = time.perf_counter() - t0
        return {"msgs_per_s": n / dt, "cpu_us": (time.process_time() - cpu0) / n * 1e6,
                "commits": store.stats().batches, "writer_busy_s": store.stats().busy_s, **stages}
    finally:
        await store.close()


async def bench_lifecycle(n: int, pg_dsn: str | None) -> None:
    print(f"lifecycle: {n:,} messages x 2 parts, accept -> claim -> 2 responses -> 2 receipts "
          "(process CPU per message, whole process: bench driver included)")
    targets: list[tuple[str, str | None]] = [("SQLite", None)]
    if pg_dsn is not None:
        targets.append(("PostgreSQL", pg_dsn))
    for label, dsn in targets:
        for per_call in (1, 50):
            d = tempfile.mkdtemp(prefix="smsgw-bench-")
            name = None
            try:
                if dsn is None:
                    url = f"sqlite:///{d}/g.db"
                else:
                    name, url = _pg_create(dsn)
                r = await _lifecycle(url, n, per_call)
            finally:
                shutil.rmtree(d, ignore_errors=True)
                if name is not None and dsn is not None:
                    _pg_drop(dsn, name)
            detail = ", ".join(f"{k} {v:.0f}" for k, v in r.items()
                               if k not in ("msgs_per_s", "cpu_us", "commits", "writer_busy_s"))
            print(f"  {label}, {per_call:>2}/call: {r['msgs_per_s']:>7,.0f} msg/s, "
                  f"{r['cpu_us']:.0f} us CPU/msg ({detail}), {r['commits']:,.0f} commits")


def _pg_create(dsn: str) -> tuple[str, str]:
    import psycopg

    name = f"smsgw_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
        info = c.info
        url = f"postgresql+psycopg://{info.user}@{info.host}:{info.port}/{name}"
    return name, url


def _pg_drop(dsn: str, name: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def bench_accept(n: int, pg_dsn: str | None) -> None:
    print(f"accept: {n:,} messages x 2 parts through the group-commit facade")
    shapes = [(1, 2000), (100, 50)]
    for sync in ("FULL", "NORMAL"):
        for per_call, conc in shapes:
            d = tempfile.mkdtemp(prefix="smsgw-bench-")
            try:
                r = await _accept(f"sqlite:///{d}/g.db", n, per_call, conc, sqlite_synchronous=sync)
                _print_accept(f"SQLite synchronous={sync}, {per_call}/call x{conc}", r)
            finally:
                shutil.rmtree(d, ignore_errors=True)
    if pg_dsn is None:
        return
    for per_call, conc in shapes:
        try:
            name, url = _pg_create(pg_dsn)
        except Exception as exc:  # noqa: BLE001
            print(f"  PostgreSQL skipped: {exc}")
            return
        try:
            _print_accept(f"PostgreSQL, {per_call}/call x{conc}", await _accept(url, n, per_call, conc))
        finally:
            _pg_drop(pg_dsn, name)


def _build_backlog(db: str, n: int) -> None:
    """N QUEUED rows: 5% OTP, 25% transactional, 70% marketing, all due; every 50th not yet."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("BEGIN")
    rnd = random.Random(7)
    cols = ("id, to_number, text, text_len, text_sha256, priority, created_at, due_at, expire_at, "
            "state, status, parts_total, attempts, resent, updated_at")
    sql = f"INSERT INTO messages ({cols}) VALUES ({', '.join('?' * 15)})"
    batch = []
    for i in range(n):
        x = rnd.random()
        prio = 0 if x < 0.05 else 1 if x < 0.30 else 2
        created = round((NOW - 86_400 + i * (86_400 / n)) * 1e6)  # stored as microseconds
        due = created if i % 50 else round((NOW + 3600) * 1e6)
        batch.append((f"bk{i}", f"+86139{i % 100_000_000:08d}", TEXT, len(TEXT),
                      os.urandom(32).hex(), prio, created, due, round((NOW + 3 * 86_400) * 1e6),
                      int(MessageState.QUEUED), "accepted", 2, 0, 0, created))
        if len(batch) == 20_000:
            con.executemany(sql, batch)
            batch.clear()
    con.executemany(sql, batch)
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("ANALYZE")
    con.close()


async def _timed(fn: Callable[[], Awaitable[object]], repeat: int = 30) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return statistics.median(times) * 1e3, times[int(len(times) * 0.95) - 1] * 1e3


async def bench_backlog(n: int) -> None:
    d = tempfile.mkdtemp(prefix="smsgw-bench-")
    try:
        db = f"{d}/g.db"
        url = f"sqlite:///{db}"
        await (await Store.open(url)).close()  # schema
        t0 = time.perf_counter()
        _build_backlog(db, n)
        size = sum(f.stat().st_size for f in Path(d).iterdir()) / 2**20
        print(f"backlog: {n:,} QUEUED messages on SQLite, built in "
              f"{time.perf_counter() - t0:.1f} s ({size:,.0f} MiB); median / p95 of 30 runs")
        store = await Store.open(url)
        try:
            excl = {d.id for d in await store.fetch_due(NOW, 500)}
            counter = iter(range(10**9))

            async def mark() -> None:
                due = await store.fetch_due(NOW, 500)
                await store.mark_sending([x.id for x in due], "alpha", NOW)

            async def accept_one() -> None:
                await store.accept_messages([NewMessage(
                    id=f"new{next(counter)}", to="+8613800138000", text=TEXT, parts=2,
                    created_at=NOW)])

            cases: list[tuple[str, Callable[[], Awaitable[object]], int]] = [
                ("fetch_due(limit=500), all lanes", lambda: store.fetch_due(NOW, 500), 30),
                ("fetch_due(limit=500), OTP lane", lambda: store.fetch_due(
                    NOW, 500, priorities=[Priority.OTP]), 30),
                ("fetch_due(limit=500), marketing lane", lambda: store.fetch_due(
                    NOW, 500, priorities=[Priority.MARKETING]), 30),
                ("fetch_due(limit=500, exclude 500 ids)", lambda: store.fetch_due(
                    NOW, 500, exclude=excl), 30),
                ("fetch_due(limit=50)", lambda: store.fetch_due(NOW, 50), 30),
                ("fetch_due + mark_sending(500)", mark, 30),
                ("expire_due (none expired)", lambda: store.expire_due(NOW), 30),
                ("count_sent(number, OTP, 24h)", lambda: store.count_sent(
                    "+8613900012345", Priority.OTP, NOW - 86_400), 30),
                ("accept_messages(1 message)", accept_one, 30),
                ("queue_depth() (counts the backlog)", store.queue_depth, 5),
            ]
            for label, fn, repeat in cases:
                med, p95 = await _timed(fn, repeat)
                print(f"  {label:<44} {med:8.2f} ms  p95 {p95:8.2f} ms")
            # The event loop thread busy (as under load): the store's threads need the GIL
            # back after every driver call; see the store's module docstring.
            stop = threading.Event()

            def spin() -> None:
                while not stop.is_set():
                    sum(range(1000))

            t = threading.Thread(target=spin, daemon=True)
            t.start()
            try:
                med, p95 = await _timed(lambda: store.fetch_due(NOW, 500), 10)
                print(f"  {'fetch_due(limit=500), a CPU-bound thread beside':<44} {med:8.2f} ms  "
                      f"p95 {p95:8.2f} ms")
            finally:
                stop.set()
                t.join()
        finally:
            await store.close()
        r = await _accept(url, 20_000, 1, 2000)
        _print_accept(f"accept with the {n:,} backlog, 1/call x2000", r)
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--backlog", type=int, default=1_000_000)
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument("--skip-backlog", action="store_true")
    ap.add_argument("--lifecycle", type=int, default=20_000, help="messages (0: skip)")
    ap.add_argument("--pg-dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres "
                                        "connect_timeout=3")
    args = ap.parse_args()
    await bench_accept(args.messages, None if args.skip_pg else args.pg_dsn)
    if args.lifecycle:
        await bench_lifecycle(args.lifecycle, None if args.skip_pg else args.pg_dsn)
    if not args.skip_backlog:
        await bench_backlog(args.backlog)


if __name__ == "__main__":
    asyncio.run(main())
