"""The store against a real SQLite file and a real PostgreSQL database (`db_url` runs both)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.model import (
    FailReason,
    MessageState,
    Priority,
    ReceiptState,
    RejectReason,
    Rejection,
    Status,
    Submission,
)
from gateway.queue import schema
from gateway.queue.store import (
    Finalize,
    NewMessage,
    NewRejection,
    PartAccepted,
    ReceiptIn,
    ReceiptMatch,
    Requeue,
    Store,
)
from gateway.smpp.receipts import candidate_ids, canonical_id

T0 = 1_800_000_000.0  # an injected clock: every time below is T0 + something
US0 = int(T0 * 1_000_000)  # as stored (integer microseconds)


def msg(id: str, *, to: str = "+8613800138000", text: str = "hello", parts: int = 1,
        prio: Priority = Priority.TRANSACTIONAL, at: float = T0, due: float | None = None,
        expire: float | None = None) -> NewMessage:
    return NewMessage(id=id, to=to, text=text, parts=parts, created_at=at, priority=prio,
                      due_at=due, expire_at=expire)


def part(id: str, no: int, carrier_id: str, carrier: str = "alpha", at: float = T0 + 1) -> PartAccepted:
    return PartAccepted(id, no, carrier, carrier_id, canonical_id(carrier_id), at)


def receipt(carrier_id: str, state: ReceiptState, carrier: str = "alpha", at: float = T0 + 2,
            error: str | None = "000") -> ReceiptIn:
    return ReceiptIn(carrier, candidate_ids(carrier_id), state, at, error, carrier_id)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = await Store.open(db_url)
    try:
        yield s
    finally:
        await s.close()


async def send_all(store: Store, ids: list[str], carrier: str = "alpha") -> None:
    assert await store.mark_sending(ids, carrier, T0) == ids


# ---------------------------------------------------------------------------------------------
# Accept, idempotency


async def test_accept_is_idempotent_across_and_within_batches(store: Store) -> None:
    res = await store.accept_messages([msg("a"), msg("b"), msg("a", text="other")])
    assert [(r.id, r.inserted) for r in res] == [("a", True), ("b", True), ("a", False)]
    assert res[2].existing is not None and res[2].existing.status is Status.ACCEPTED

    # Two copies arriving concurrently (same group-commit batch): exactly one wins.
    r1, r2 = await asyncio.gather(store.accept_messages([msg("c")]),
                                  store.accept_messages([msg("c")]))
    assert sorted([r1[0].inserted, r2[0].inserted]) == [False, True]

    again = await store.accept_messages([msg("a"), msg("c")])
    assert [r.inserted for r in again] == [False, False]
    st = await store.get_status("a")
    assert st is not None and st.status is Status.ACCEPTED and st.state is MessageState.QUEUED
    assert await store.queue_depth() == {Priority.OTP: 0, Priority.TRANSACTIONAL: 3,
                                         Priority.MARKETING: 0}


async def test_rejections_are_kept_idempotent_and_not_counted(store: Store) -> None:
    sub = Submission(id="r1", to="+8613800138000", text="win at casino", priority=Priority.OTP)
    rej = NewRejection.from_submission(sub, Rejection(RejectReason.BLOCKED_CONTENT, "rule 1"), T0)
    assert (await store.record_rejection(rej)).inserted
    dup = await store.accept_messages([msg("r1")])
    assert not dup[0].inserted
    ex = dup[0].existing
    assert ex is not None and ex.status is Status.REJECTED and ex.reason == "blocked_content"
    assert ex.detail == "rule 1" and ex.state is MessageState.FINAL
    assert await store.count_sent("+8613800138000", Priority.OTP, T0 - 60) == 0
    assert await store.fetch_due(T0 + 10, 10) == []


async def test_deferred_submission_keeps_until_and_expiry(store: Store) -> None:
    from datetime import UTC, datetime

    sub = Submission(id="d1", to="+8613800138000", text="sale", priority=Priority.MARKETING,
                     not_before=datetime.fromtimestamp(T0 + 3600, UTC), validity_s=600)
    m = NewMessage.from_submission(sub, parts=1, now=T0, max_age_s=72 * 3600)
    assert m.status is Status.DEFERRED and m.due_at == T0 + 3600 and m.expire_at == T0 + 4200
    await store.accept_messages([m])
    st = await store.get_status("d1")
    assert st is not None and st.status is Status.DEFERRED and st.reason == "not_before"
    assert st.due_at == T0 + 3600
    assert await store.fetch_due(T0 + 3599, 10) == []
    assert [d.id for d in await store.fetch_due(T0 + 3600, 10)] == ["d1"]


# ---------------------------------------------------------------------------------------------
# Picking


async def test_fetch_due_orders_by_priority_then_due_then_insertion(store: Store) -> None:
    await store.accept_messages([
        msg("m1", prio=Priority.MARKETING, due=T0),
        msg("t1", prio=Priority.TRANSACTIONAL, due=T0 + 5),
        msg("t2", prio=Priority.TRANSACTIONAL, due=T0 + 1),
        msg("o1", prio=Priority.OTP, due=T0 + 3),
        msg("t3", prio=Priority.TRANSACTIONAL, due=T0 + 1),  # same due as t2: inserted later
        msg("o2", prio=Priority.OTP, due=T0 + 100),  # not due yet
    ])
    due = await store.fetch_due(T0 + 10, 100)
    assert [d.id for d in due] == ["o1", "t2", "t3", "t1", "m1"]
    assert due[0].text == "hello" and due[0].parts == 1 and due[0].parts_done == frozenset()
    assert [d.id for d in await store.fetch_due(T0 + 10, 2)] == ["o1", "t2"]
    assert [d.id for d in await store.fetch_due(T0 + 10, 2, exclude={"o1", "t2"})] == ["t3", "t1"]
    only = await store.fetch_due(T0 + 10, 10, priorities=[Priority.MARKETING])
    assert [d.id for d in only] == ["m1"]
    assert await store.queue_depth(T0 + 10) == {Priority.OTP: 1, Priority.TRANSACTIONAL: 3,
                                                Priority.MARKETING: 1}

    # Claimed messages leave the queue; a second claim of the same ids gets nothing.
    a, b = await asyncio.gather(store.mark_sending(["o1", "t2"], "alpha", T0 + 10),
                                store.mark_sending(["t2", "o1"], "beta", T0 + 10))
    assert sorted(a + b) == ["o1", "t2"] and (a == [] or b == [])
    assert [d.id for d in await store.fetch_due(T0 + 10, 10)] == ["t3", "t1", "m1"]
    st = await store.get_status("o1")
    assert st is not None and st.state is MessageState.SENDING and st.attempts == 1


async def test_fetch_due_uses_the_partial_index(store: Store) -> None:
    """The pick must be an index range scan in due order, not a scan or a sort of the table."""
    sql = store._sql.s_due.sql
    with store._read_engine.connect() as conn:
        if store.dialect == "sqlite":
            plan = " ".join(str(r) for r in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + sql, (1, US0, 10)))
            assert "USING INDEX ix_messages_due" in plan and "TEMP B-TREE" not in plan, plan
        else:
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = " ".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql, (1, US0, 10)))
            assert "ix_messages_due" in plan and "Sort" not in plan, plan


# ---------------------------------------------------------------------------------------------
# Responses, receipts, aggregation


async def test_receipt_before_response_is_held_then_applied(store: Store) -> None:
    await store.accept_messages([msg("e1", parts=2)])
    await send_all(store, ["e1"])
    # The receipt for part 2 overtakes its submit_sm_resp; the SMSC prints the id in decimal
    # while the response will give it in hex (candidate keys handle the base).
    early = await store.apply_receipt(receipt("12107289", ReceiptState.DELIVRD))
    assert early.match is ReceiptMatch.EARLY and early.final is None
    out = await store.record_parts_accepted([part("e1", 1, "0A"), part("e1", 2, "00B8BE19")])
    assert [o.recorded for o in out] == [True, True]
    assert out[1].early_receipt and not out[0].early_receipt
    sub = out[1].submitted
    assert sub is not None and sub.message_ids == ("0A", "00B8BE19") and sub.carrier == "alpha"
    assert out[1].final is None  # part 1 still waits for its receipt
    done = await store.apply_receipt(receipt("a", ReceiptState.DELIVRD))
    assert done.match is ReceiptMatch.MATCHED and done.final is not None
    assert done.final.status is Status.DELIVERED
    # The held receipt was consumed: nothing left to take or purge.
    assert await store.take_early_receipts("alpha", candidate_ids("12107289")) == []
    assert await store.purge_early_receipts(T0 + 10_000) == 0


async def test_early_receipt_completing_a_message(store: Store) -> None:
    await store.accept_messages([msg("e2")])
    await send_all(store, ["e2"])
    await store.apply_receipt(receipt("77", ReceiptState.ENROUTE))  # not final: not held
    await store.apply_receipt(receipt("77", ReceiptState.UNDELIV, error="011"))
    out = await store.record_parts_accepted([part("e2", 1, "77")])
    assert out[0].submitted is not None and out[0].early_receipt
    assert out[0].final is not None and out[0].final.status is Status.UNDELIVERABLE
    assert out[0].final.error == "011"


async def test_parts_aggregate_to_final(store: Store) -> None:
    await store.accept_messages([msg("p3", parts=3), msg("p2", parts=2), msg("p1")])
    await send_all(store, ["p3", "p2", "p1"])
    # p2: part 1's receipt arrives while part 2 is still in flight: no verdict yet.
    await store.record_parts_accepted([part("p2", 1, "201")])
    r = await store.apply_receipt(receipt("201", ReceiptState.UNDELIV))
    assert r.match is ReceiptMatch.MATCHED and r.final is None
    assert (await store.get_status("p2")).state is MessageState.SENDING  # type: ignore[union-attr]
    out = await store.record_parts_accepted([part("p2", 2, "202")])
    assert out[0].submitted is not None
    assert out[0].final is not None and out[0].final.status is Status.UNDELIVERABLE

    out = await store.record_parts_accepted([part("p3", k, f"30{k}") for k in (1, 2, 3)])
    assert out[2].submitted is not None and out[2].submitted.message_ids == ("301", "302", "303")
    assert out[0].submitted is None and out[1].submitted is None
    rs = await store.apply_receipts([receipt("301", ReceiptState.DELIVRD),
                                     receipt("302", ReceiptState.ENROUTE),
                                     receipt("302", ReceiptState.DELIVRD)])
    assert [x.match for x in rs] == [ReceiptMatch.MATCHED] * 3
    assert all(x.final is None for x in rs)
    last = await store.apply_receipt(receipt("303", ReceiptState.DELIVRD))
    assert last.final is not None and last.final.status is Status.DELIVERED
    dup = await store.apply_receipt(receipt("303", ReceiptState.DELIVRD))
    assert dup.match is ReceiptMatch.DUPLICATE and dup.final is None
    st = await store.get_status("p3")
    assert st is not None and st.status is Status.DELIVERED and st.message_ids == ("301", "302", "303")

    # Any part expired → expired; one receipt per message is enough.
    await store.record_parts_accepted([part("p1", 1, "x1")])
    r = await store.apply_receipt(receipt("X1", ReceiptState.EXPIRED))
    assert r.final is not None and r.final.status is Status.EXPIRED
    # A receipt for an id nobody knows is held (and later purged as unknown).
    unk = await store.apply_receipt(receipt("deadbeef", ReceiptState.DELIVRD))
    assert unk.match is ReceiptMatch.EARLY
    assert await store.purge_early_receipts(T0 + 3) == 1


async def test_transient_and_permanent_failures(store: Store) -> None:
    await store.accept_messages([msg("f1", parts=2), msg("f2")])
    await send_all(store, ["f1", "f2"])
    await store.record_parts_accepted([part("f1", 1, "aa")])
    # f1 part 2: response timeout → requeued, resent; part 1 stays accepted.
    assert await store.requeue([Requeue("f1", due_at=T0 + 30, at=T0 + 5, resent=True)]) == [True]
    assert await store.fetch_due(T0 + 29, 10) == []
    [d] = await store.fetch_due(T0 + 30, 10)
    assert d.id == "f1" and d.resent and d.attempts == 1 and d.parts_done == frozenset({1})
    assert d.carrier == "alpha"
    await send_all(store, ["f1"])
    out = await store.record_parts_accepted([part("f1", 2, "ab")])
    assert out[0].submitted is not None and out[0].submitted.resent
    assert out[0].submitted.message_ids == ("aa", "ab")

    # f2: permanent error → failed with the command_status.
    [fin] = await store.finalize([Finalize("f2", Status.FAILED, T0 + 6,
                                           reason=str(FailReason.CARRIER_REJECTED),
                                           detail="ESME_RINVDSTADR", command_status=11)])
    assert fin is not None and fin.status is Status.FAILED and fin.command_status == 11
    assert await store.finalize([Finalize("f2", Status.FAILED, T0 + 7)]) == [None]
    assert await store.requeue([Requeue("f2", due_at=T0, at=T0)]) == [False]
    assert await store.mark_sending(["f2"], "alpha", T0) == []
    st = await store.get_status("f2")
    assert st is not None and st.status is Status.FAILED and st.command_status == 11
    assert st.reason == "carrier_rejected"

    # Deferral by the marketing window: status and reason change, the row stays queued.
    await store.accept_messages([msg("f3", prio=Priority.MARKETING)])
    await store.requeue([Requeue("f3", due_at=T0 + 40_000, at=T0, status=Status.DEFERRED,
                                 reason="marketing_window")])
    st = await store.get_status("f3")
    assert st is not None and st.status is Status.DEFERRED and st.reason == "marketing_window"


async def test_expire_due_fails_expired_queued_messages(store: Store) -> None:
    await store.accept_messages([msg("x1", prio=Priority.OTP, expire=T0 + 300),
                                 msg("x2", prio=Priority.MARKETING, expire=T0 + 72 * 3600),
                                 msg("x3", expire=None)])
    assert await store.expire_due(T0 + 299) == []
    [f] = await store.expire_due(T0 + 301)
    assert f.id == "x1" and f.status is Status.FAILED and f.reason == "expired_in_queue"
    assert [d.id for d in await store.fetch_due(T0 + 301, 10)] == ["x3", "x2"]


# ---------------------------------------------------------------------------------------------
# OTP text at rest


OTP_CODE = "834271"
MARKETING_TEXT = "Spring-sale-QX7Z"


def _files_containing(db_file: Path, needle: bytes) -> list[str]:
    found = []
    for f in db_file.parent.iterdir():
        if f.name.startswith(db_file.name) and needle in f.read_bytes():
            found.append(f.name)
    return found


async def test_otp_text_is_purged_at_final_state(store: Store, db_url: str) -> None:
    otp_text = f"Your code is {OTP_CODE}"
    await store.accept_messages([
        msg("otp1", text=otp_text, prio=Priority.OTP),
        msg("mk1", text=MARKETING_TEXT, prio=Priority.MARKETING),
    ])
    db_file = Path(db_url.removeprefix("sqlite:///")) if store.dialect == "sqlite" else None
    if db_file is not None:
        assert _files_containing(db_file, OTP_CODE.encode()), "sanity: the text is stored"
    await send_all(store, ["otp1", "mk1"])
    await store.record_parts_accepted([part("otp1", 1, "c1"), part("mk1", 1, "c2")])
    with store._read_engine.connect() as conn:  # submitted: the OTP text is no longer needed
        q = sa.select(schema.messages.c.text).where(schema.messages.c.id == "otp1")
        assert conn.execute(q).scalar() is None
    r1, r2 = await store.apply_receipts([receipt("c1", ReceiptState.DELIVRD),
                                         receipt("c2", ReceiptState.DELIVRD)])
    assert r1.final is not None and r2.final is not None
    with store._read_engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(
            sa.select(schema.messages.c.id, schema.messages.c.text, schema.messages.c.text_len,
                      schema.messages.c.text_sha256))}
    assert rows["otp1"].text is None and rows["otp1"].text_len == len(otp_text)
    assert rows["otp1"].text_sha256 == store.text_digest(otp_text)
    assert rows["mk1"].text == MARKETING_TEXT  # only OTP texts are purged
    if db_file is not None:
        busy, _, _ = await store.checkpoint()  # type: ignore[misc]
        assert busy == 0
        assert _files_containing(db_file, OTP_CODE.encode()) == []
        assert _files_containing(db_file, MARKETING_TEXT.encode()) == ["gateway.db"]


async def test_periodic_checkpoint_clears_wal(sqlite_url: str) -> None:
    s = await Store.open(sqlite_url, checkpoint_interval_s=0.05)
    try:
        await s.accept_messages([msg("o", text=f"code {OTP_CODE}", prio=Priority.OTP)])
        await s.finalize([Finalize("o", Status.FAILED, T0, reason="expired_in_queue")])
        db_file = Path(sqlite_url.removeprefix("sqlite:///"))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not _files_containing(db_file, OTP_CODE.encode()):
                break
        assert _files_containing(db_file, OTP_CODE.encode()) == []
    finally:
        await s.close()


# ---------------------------------------------------------------------------------------------
# Restart


async def test_recover_in_flight_marks_resent(db_url: str) -> None:
    s = await Store.open(db_url)
    await s.accept_messages([msg("r1", parts=2), msg("r2"), msg("r3")])
    await s.mark_sending(["r1", "r2"], "alpha", T0)
    await s.record_parts_accepted([part("r1", 1, "91")])
    await s.close()  # as good as a crash for the rows: SENDING is what was committed

    s = await Store.open(db_url)
    try:
        assert await s.recover_in_flight(T0 + 100) == ["r1", "r2"]
        due = {d.id: d for d in await s.fetch_due(T0 + 100, 10)}
        assert set(due) == {"r1", "r2", "r3"}
        assert due["r1"].resent and due["r1"].parts_done == frozenset({1})
        assert due["r2"].resent and not due["r3"].resent
        assert await s.recover_in_flight(T0 + 100) == []
        # requeue_carrier only touches that carrier's in-flight messages.
        await s.mark_sending(["r2"], "alpha", T0 + 101)
        await s.mark_sending(["r3"], "beta", T0 + 101)
        assert await s.requeue_carrier("alpha", T0 + 102) == ["r2"]
        assert await s.state_counts() == {MessageState.QUEUED: 2, MessageState.SENDING: 1}
    finally:
        await s.close()


async def test_committed_accept_survives_sigkill(db_url: str, tmp_path: Path) -> None:
    """A child process accepts, reports the commit, and is SIGKILLed at once."""
    code = textwrap.dedent(f"""
        import asyncio, os, signal, sys
        from gateway.queue.store import Store, NewMessage
        async def main():
            s = await Store.open({db_url!r}, checkpoint_interval_s=None)
            rows = [NewMessage(id=f"k{{i}}", to="+8613800138000", text="t", parts=1,
                               created_at={T0}) for i in range(500)]
            res = await s.accept_messages(rows)
            assert all(r.inserted for r in res)
            print("committed", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        asyncio.run(main())
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout.strip() == "committed", proc.stderr
    assert proc.returncode == -9
    s = await Store.open(db_url)
    try:
        assert (await s.queue_depth())[Priority.TRANSACTIONAL] == 500
    finally:
        await s.close()


# ---------------------------------------------------------------------------------------------
# Migrations


def _engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        from gateway.queue.store import _sqlite_engine

        return _sqlite_engine(sa.make_url(url), writer=True, pool_size=1, synchronous="FULL",
                              busy_ms=5000, cache_kib=2048)
    return sa.create_engine(url)


def _shape(engine: sa.Engine) -> dict[str, tuple[set[str], set[str]]]:
    insp = sa.inspect(engine)
    return {t: ({c["name"] for c in insp.get_columns(t)},
                {i["name"] for i in insp.get_indexes(t) if i["name"]})
            for t in insp.get_table_names()}


async def test_migrates_from_empty_and_from_an_earlier_version(db_url: str) -> None:
    eng = _engine(db_url)
    try:
        # Version 0: an empty database (or a bare schema_version table) is built from step 1.
        with eng.begin() as conn:
            schema.schema_version.create(conn)
        assert schema.migrate(eng, target=1) == [1]
        with eng.begin() as conn:
            assert schema.current_version(conn) == 1
            conn.execute(schema.messages.insert().values(
                id="old", to_number="+8613800138000", text="from v1", text_len=7, priority=1,
                created_at=US0, due_at=US0, state=0, status="accepted", parts_total=1,
                updated_at=US0))
    finally:
        eng.dispose()

    s = await Store.open(db_url)  # opens a version-1 database: migrates to the latest
    try:
        assert [d.id for d in await s.fetch_due(T0, 10)] == ["old"]
        await s.apply_receipt(receipt("1", ReceiptState.DELIVRD))  # v2 table works
        assert await s.count_sent("+8613800138000", Priority.TRANSACTIONAL, T0) == 1  # v3
    finally:
        await s.close()

    eng = _engine(db_url)
    try:
        with eng.connect() as conn:
            assert schema.current_version(conn) == schema.LATEST_VERSION
            versions = list(conn.execute(sa.select(schema.schema_version.c.version)).scalars())
        assert sorted(versions) == [m.version for m in schema.MIGRATIONS]
        # Every step applied == the schema the queries are written against.
        expected = {
            t.name: ({c.name for c in t.columns}, {i.name for i in t.indexes})
            for t in schema.metadata.sorted_tables
        }
        got = _shape(eng)
        for name, (cols, idx) in expected.items():
            assert got[name][0] == cols, name
            assert idx <= got[name][1], name
        assert schema.migrate(eng) == []  # idempotent
        with eng.begin() as conn:
            conn.execute(schema.schema_version.insert().values(
                version=schema.LATEST_VERSION + 1, description="future", applied_at=US0))
    finally:
        eng.dispose()
    with pytest.raises(schema.SchemaTooNew):
        await Store.open(db_url)


# ---------------------------------------------------------------------------------------------
# Policies' history, opt-outs, retention


async def test_history_queries(store: Store) -> None:
    a, b = "+8613800138000", "+8613900139000"
    await store.accept_messages([
        msg("h1", to=a, prio=Priority.OTP, at=T0 - 3000, text="code 1"),
        msg("h2", to=a, prio=Priority.OTP, at=T0 - 30, text="code 2"),
        msg("h3", to=a, prio=Priority.MARKETING, at=T0 - 86_400 * 2, text="sale"),
        msg("h4", to=a, prio=Priority.MARKETING, at=T0 - 10, text="sale"),
        msg("h5", to=b, prio=Priority.OTP, at=T0 - 20, text="code 3"),
        msg("h6", to="+14155550100", prio=Priority.OTP, at=T0 - 5, text="code 4"),
    ])
    assert await store.count_sent(a, Priority.OTP, T0 - 60) == 1
    assert await store.count_sent(a, Priority.OTP, T0 - 3600) == 2
    assert await store.count_sent(a, Priority.MARKETING, T0 - 86_400 * 30) == 2
    assert await store.count_same_text(a, "sale", T0 - 30) == 1
    assert await store.count_same_text(a, "sale", T0 - 30, exclude_id="h4") == 0
    assert await store.count_same_text(b, "sale", T0 - 30) == 0
    assert await store.count_prefix("+86", Priority.OTP, T0 - 60) == 2
    assert await store.count_prefix("+1", Priority.OTP, T0 - 60) == 1
    # Ids the caller counts itself (admitted, commit in flight) are left out.
    assert await store.count_prefix("+86", Priority.OTP, T0 - 60, exclude=["h5", "nope"]) == 1
    hist = await store.history([a, b, "+447700900000"],
                               {Priority.OTP: T0 - 86_400, Priority.MARKETING: T0 - 86_400 * 30})
    assert [e.id for e in hist[a]] == ["h3", "h1", "h2", "h4"]
    assert [e.id for e in hist[b]] == ["h5"] and hist["+447700900000"] == []
    assert hist[a][3].text_sha256 == store.text_digest("sale")


async def test_opt_outs(store: Store) -> None:
    assert await store.add_opt_outs(["+8613800138000", "+8613900139000", "+8613800138000"],
                                    "mo:alpha", T0) == [True, True, False]
    assert await store.add_opt_out("+8613900139000", "cli", T0) is False
    assert await store.is_opted_out("+8613800138000")
    assert not await store.is_opted_out("+8613700137000")
    assert await store.opted_out(["+8613800138000", "+1"]) == {"+8613800138000"}
    page = await store.list_opt_outs(limit=1)
    assert [o.number for o in page] == ["+8613800138000"] and page[0].source == "mo:alpha"
    assert [o.number for o in await store.list_opt_outs(after=page[0].number)] == ["+8613900139000"]
    assert await store.remove_opt_outs(["+8613800138000", "+1"]) == [True, False]
    assert not await store.is_opted_out("+8613800138000")


async def test_retention_purge_keeps_opt_outs_and_live_messages(store: Store) -> None:
    old, new = T0 - 200 * 86_400, T0 - 86_400
    await store.accept_messages([msg(f"old{i}", at=old) for i in range(7)]
                                + [msg("oldq", at=old), msg("new1", at=new)])
    await store.record_rejection(NewRejection("oldrej", "empty_text", "", old))
    await send_all(store, [f"old{i}" for i in range(7)])
    await store.record_parts_accepted([part(f"old{i}", 1, f"o{i}") for i in range(7)])
    await store.apply_receipts([receipt(f"o{i}", ReceiptState.DELIVRD) for i in range(7)])
    await store.add_opt_outs(["+8613800138000"], "mo:alpha", old)
    await store.apply_receipt(receipt("ffff", ReceiptState.DELIVRD, at=old))

    assert await store.purge_older_than(T0 - 183 * 86_400, batch=3) == 8
    assert await store.purge_early_receipts(T0 - 3600) == 1
    left = await store.get_statuses(["old0", "oldrej", "oldq", "new1"])
    assert set(left) == {"oldq", "new1"}  # a still-queued message is never purged
    assert await store.is_opted_out("+8613800138000")
    with store._read_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.parts)).scalar() == 0


# ---------------------------------------------------------------------------------------------
# Group commit, back-pressure, isolation


async def test_concurrent_writers_get_correct_results(db_url: str) -> None:
    s = await Store.open(db_url, max_batch=500)
    try:
        # 200 coroutines, 10 rows each; every id is submitted by two different coroutines.
        async def worker(w: int) -> list[tuple[str, bool]]:
            ids = [f"w{(w * 10 + i) % 1000}" for i in range(10)]
            res = await s.accept_messages([msg(i) for i in ids])
            return [(r.id, r.inserted) for r in res]

        results = await asyncio.gather(*(worker(w) for w in range(200)))
        inserted: dict[str, int] = {}
        for res in results:
            for rid, ok in res:
                inserted[rid] = inserted.get(rid, 0) + ok
        assert len(inserted) == 1000 and set(inserted.values()) == {1}
        st = s.stats()
        assert st.operations >= 200 and st.batches < st.operations  # writes were grouped
        assert s.write_backlog == 0

        # Interleaved kinds in one batch keep call order per message.
        ids = [f"w{i}" for i in range(100)]
        claimed, fins = await asyncio.gather(
            s.mark_sending(ids, "alpha", T0),
            s.finalize([Finalize(i, Status.FAILED, T0 + 1, reason="retries_exhausted")
                        for i in ids]))
        assert claimed == ids and all(f is not None for f in fins)
        assert (await s.queue_depth())[Priority.TRANSACTIONAL] == 900
    finally:
        await s.close()


async def test_backpressure_bounds_the_write_queue(sqlite_url: str) -> None:
    s = await Store.open(sqlite_url, max_queued=100, max_batch=50)
    try:
        tasks = [asyncio.ensure_future(s.accept_messages([msg(f"b{i}")])) for i in range(1000)]
        seen_backlogged, peak = False, 0
        while not all(t.done() for t in tasks):
            seen_backlogged |= s.backlogged
            peak = max(peak, s.write_backlog)
            await asyncio.sleep(0)
        assert all(t.result()[0].inserted for t in tasks)
        assert seen_backlogged and peak <= 100
        await s.wait_writable()
        assert not s.backlogged
    finally:
        await s.close()


async def test_a_failing_call_does_not_fail_its_batch(store: Store) -> None:
    bad = NewMessage(id=None, to="+1", text="x", parts=1, created_at=T0)  # type: ignore[arg-type]
    good = [store.accept_messages([msg(f"g{i}")]) for i in range(20)]
    res = await asyncio.gather(store.accept_messages([bad]), *good, return_exceptions=True)
    assert isinstance(res[0], sa.exc.IntegrityError)
    assert all(not isinstance(r, BaseException) and r[0].inserted for r in res[1:])
    assert (await store.queue_depth())[Priority.TRANSACTIONAL] == 20


async def test_closed_store_refuses_work(sqlite_url: str) -> None:
    from gateway.queue.store import StoreClosed

    s = await Store.open(sqlite_url)
    await s.close()
    with pytest.raises(StoreClosed):
        await s.accept_messages([msg("z")])
    with pytest.raises(ValueError):
        await Store.open("sqlite://")


async def test_sqlite_durability_settings(sqlite_url: str) -> None:
    s = await Store.open(sqlite_url)
    try:
        with s._write_engine.connect() as conn:
            pragmas = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar()
                       for p in ("journal_mode", "synchronous", "secure_delete", "busy_timeout")}
        assert pragmas == {"journal_mode": "wal", "synchronous": 2, "secure_delete": 1,
                           "busy_timeout": 5000}
    finally:
        await s.close()


async def test_two_stores_on_one_sqlite_file_retry_on_lock(sqlite_url: str) -> None:
    """Another process's writer holds the lock longer than busy_timeout: we retry, not fail."""
    a = await Store.open(sqlite_url, busy_timeout_ms=50)
    b = await Store.open(sqlite_url, busy_timeout_ms=50)
    try:
        raw = sa.create_engine(sqlite_url, connect_args={"isolation_level": None})
        with raw.connect() as c:
            c.exec_driver_sql("BEGIN IMMEDIATE")
            t = asyncio.ensure_future(a.accept_messages([msg("l1")]))
            await asyncio.sleep(0.3)
            assert not t.done()
            c.exec_driver_sql("ROLLBACK")
        assert (await t)[0].inserted
        assert a.stats().retries >= 1
        assert not (await b.accept_messages([msg("l1")]))[0].inserted
        raw.dispose()
    finally:
        await a.close()
        await b.close()


# ---------------------------------------------------------------------------------------------
# Design properties


def test_int_verdict_matches_model_aggregate() -> None:
    import itertools

    from gateway.model import PartState, aggregate_final
    from gateway.queue.store import _verdict

    for n in range(0, 4):
        for combo in itertools.product(list(PartState), repeat=n):
            assert _verdict([int(s) for s in combo]) == aggregate_final(list(combo)), combo


async def test_one_driver_call_per_statement_whatever_the_batch(db_url: str) -> None:
    """A batch of 600 receipts (and 600 part responses) runs a handful of statements, none of
    them an executemany: each row fetched or sent by the driver would hand the GIL over once,
    and with a busy event loop each hand-over costs up to the switch interval."""
    s = await Store.open(db_url)
    try:
        n = 300
        await s.accept_messages([msg(f"g{i}", parts=2) for i in range(n)])
        await send_all(s, [f"g{i}" for i in range(n)])
        calls: list[tuple[str, bool]] = []

        def spy(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
            calls.append((statement.split()[0], executemany))

        sa.event.listen(s._write_engine, "before_cursor_execute", spy)
        await s.record_parts_accepted([part(f"g{i}", k, f"{i}-{k}") for i in range(n) for k in (1, 2)])
        parts_calls, calls[:] = list(calls), []
        res = await s.apply_receipts([receipt(f"{i}-{k}", ReceiptState.DELIVRD)
                                      for i in range(n) for k in (1, 2)])
        assert sum(1 for r in res if r.final) == n
        assert parts_calls and calls
        for got in (parts_calls, calls):
            assert not any(many for _, many in got), got
            assert len(got) <= 10, got  # BEGIN/COMMIT may or may not be cursor calls
    finally:
        await s.close()
