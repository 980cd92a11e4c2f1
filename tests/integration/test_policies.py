"""The policies of issue 6 end to end: MQTT in, the real daemon, the SMSC simulator, events out.

Each test runs the gateway with the recommended `policies:` (those of
config/gateway.example.yaml, a few made smaller so a test can reach them) and, where the
marketing window matters, an injected wall clock (`TestClock`): "20:30 in Shanghai" is a clock
value, and the night passes with `clock.set(...)`. Log streams are checked at the end of every
test for full phone numbers and OTP codes.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import load_config
from gateway.model import Priority, Status
from gateway.queue.housekeeping import housekeep
from gateway.queue.store import Finalize, NewMessage, Store
from tests.integration.conftest import (
    GatewaySetup,
    TestClock,
    full_numbers_in,
    http_get,
    sim_texts,
    until,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
OPT_OUT = "退订回T"
BRAND = "【Brand】"


def local(text: str) -> float:
    """`"2026-11-23 10:00"` in Shanghai → epoch seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI).timestamp()


def policies(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "timezone": "Asia/Shanghai",
        "otp": {"limits": ["1/1m", "5/1h", "10/24h"], "exempt": ["+8613800000000"],
                "prefix_caps": {"+86": "6000/1m", "+86170": "3/1m"}},
        "duplicate_content": "30s",
        "marketing": {"window": "08:00-20:00", "caps": ["50/24h", "4/30d"],
                      "opt_out_text": OPT_OUT},
        "signatures": {"billing": BRAND},
        "opt_out_keywords": ["T", "TD", "退订", "STOP", "UNSUBSCRIBE"],
        "blocked_content": ["(?i)casino", "赌博"],
        "retention_days": 183,
    }
    doc.update(overrides)
    return doc


async def start(s: GatewaySetup, clock: TestClock, **sim_options: Any) -> Any:
    s.add_carrier("alpha")
    s.route("", "alpha")
    s.extra["policies"] = policies()
    sim = await s.start_sim("alpha", **sim_options)
    await s.start_gateway(clock=clock)
    return sim


def assert_private(s: GatewaySetup, secrets: list[str]) -> None:
    logs = s.log_stream.getvalue()
    assert logs, "no logs captured"
    assert not full_numbers_in(logs), full_numbers_in(logs)[:3]
    for secret in secrets:
        assert secret not in logs, f"{secret!r} in the logs"


async def metric(s: GatewaySetup, family: str, **labels: str) -> float:
    _, body = await http_get(s.http_port, "/metrics")
    for f in text_string_to_metric_families(body.decode()):
        if f.name == family:
            return sum(x.value for x in f.samples
                       if x.name.endswith("_total") and all(x.labels.get(k) == v
                                                            for k, v in labels.items()))
    raise AssertionError(f"{family} not in /metrics")


# ------------------------------------------------------------------------------ opt-out


async def test_mo_T_opts_out_marketing_while_otp_still_goes(setup: GatewaySetup) -> None:
    s = setup
    sim = await start(s, TestClock(local("2026-11-23 10:00")))
    number = "+8613911114444"
    async with s.probe() as p:
        sim.send_mo("t", source_addr=number[1:], destination_addr="10690000")
        await until(lambda: len(p.mo) == 1, 10, "the MO on sms/mo")
        assert p.mo[0]["from"] == number and p.mo[0]["text"] == "t"
        store = s.gateway.store  # type: ignore[union-attr]
        for _ in range(200):
            if await store.is_opted_out(number):
                break
            await asyncio.sleep(0.05)
        assert await store.is_opted_out(number), "the MO 'T' did not opt the number out"

        await p.send("mk", number, "Double 11 sale", priority="marketing", client="billing")
        await p.send("otp", number, "Your code is 493817", priority="otp")
        await p.wait_status(["mk", "otp"])
    assert p.statuses("mk") == ["rejected"]
    assert p.final("mk")["reason"] == "opted_out"  # type: ignore[index]
    assert p.statuses("otp") == ["accepted", "submitted", "delivered"]
    assert sim.submits == 1
    assert_private(s, ["493817"])


# ------------------------------------------------------------------------------ OTP limits


async def test_otp_velocity_duplicates_pumping_caps_and_blocked_content(setup: GatewaySetup) -> None:
    s = setup
    sim = await start(s, TestClock(local("2026-11-23 10:00")))
    codes = ["583920", "583921", "583922", "583923", "583924", "583925", "583926"]
    async with s.probe() as p:
        # A second OTP to one number within 60 s: rate_limited, naming the 1/1m limit.
        await p.send("o1", "+8613911115555", f"Your code is {codes[0]}", priority="otp")
        await p.wait_status(["o1"])
        await p.send("o2", "+8613911115555", f"Your code is {codes[1]}", priority="otp")
        # The exempt test phone gets both.
        await p.send("t1", "+8613800000000", f"Your code is {codes[2]}", priority="otp")
        await p.send("t2", "+8613800000000", f"Your code is {codes[3]}", priority="otp")
        # The same text to one number again within 30 s under another id: duplicate_content.
        await p.send("d1", "+8613911116666", "Your order 1001 has shipped")
        await p.send("d2", "+8613911116666", "Your order 1001 has shipped")
        # A repeat of the same id is idempotent, never a duplicate.
        await p.send("d1", "+8613911116666", "Your order 1001 has shipped")
        # Blocked content at any priority, the rule named.
        await p.send("b1", "+8613911117777", "Big CASINO bonus", priority="transactional")
        # Pumping guard: +86170 is capped at 3 OTP a minute over every number under it.
        for i in range(4):
            await p.send(f"pump{i}", f"+861701234567{i}", f"Your code is {codes[4 + i % 3]}",
                         priority="otp")
        await p.wait_status(["o2", "t1", "t2", "d1", "d2", "b1"] + [f"pump{i}" for i in range(4)])
        await until(lambda: len(p.events["d1"]) >= 4, 10, "the repeat's status event")
        await p.wait_status(["t1", "t2", "pump0", "pump1", "pump2"], "delivered")

        o2 = p.final("o2")
        assert o2 is not None and o2["status"] == "rejected" and o2["reason"] == "rate_limited"
        assert o2["limit"] == "1/1m" and o2["scope"] == "recipient", o2
        assert 0 < o2["retry_after_s"] <= 60 and "1/1m" in o2["detail"]
        assert p.final("o1")["status"] == "delivered"  # type: ignore[index]
        assert [p.final(i)["status"] for i in ("t1", "t2")] == ["delivered", "delivered"]  # type: ignore[index]

        assert p.final("d1")["status"] == "delivered"  # type: ignore[index]
        d2 = p.final("d2")
        assert d2 is not None and d2["reason"] == "duplicate_content" and d2["duplicate_of"] == "d1"
        # The repeat: its status again, never sent twice.
        assert sum(1 for e in p.events["d1"] if e.get("repeat")) == 1
        assert p.statuses("d1").count("submitted") == 1

        b1 = p.final("b1")
        assert b1 is not None and b1["reason"] == "blocked_content"
        assert "(?i)casino" in b1["detail"], b1

        pump = p.final("pump3")
        assert pump is not None and pump["reason"] == "rate_limited", pump
        assert pump["scope"] == "prefix" and pump["prefix"] == "+86170" and pump["limit"] == "3/1m"
        assert await metric(s, "smsgw_otp_prefix_cap_trips", prefix="+86170") == 1
        assert await metric(s, "smsgw_rejections", reason="rate_limited") == 2
        assert await metric(s, "smsgw_messages_final", status="rejected", priority="otp") == 2
    # Sent: o1, t1, t2, d1, pump0-2.
    assert sim.submits == 7
    logs = s.log_stream.getvalue()
    assert '"otp_prefix_cap_tripped"' in logs and "+86170" in logs
    assert_private(s, codes)


async def test_marketing_frequency_cap_and_content_rules_at_the_smsc(setup: GatewaySetup) -> None:
    s = setup
    sim = await start(s, TestClock(local("2026-11-23 10:00")))
    number = "+8613911118888"
    # 70 UCS-2 characters: one part as written; two once the signature and opt-out text join.
    text = "双十一大促全场五折" * 7 + "最后一天"
    assert len(text) == 67
    async with s.probe() as p:
        await p.send("m0", number, text, priority="marketing", client="billing")
        await p.send("m1", number, f"{BRAND}周末特惠{OPT_OUT}", priority="marketing",
                     client="billing")
        for i in (2, 3, 4):
            await p.send(f"m{i}", number, f"Offer number {i}", priority="marketing")
        await p.wait_status([f"m{i}" for i in range(5)])
        await p.wait_status(["m0", "m1", "m2", "m3"], "delivered")
    # The accepted event counts the parts of the final text.
    assert p.events["m0"][0] == {**p.events["m0"][0], "status": "accepted", "parts": 2}
    assert p.events["m1"][0]["parts"] == 1
    # 4 in 30 days: the fifth is capped.
    m4 = p.final("m4")
    assert m4 is not None and m4["reason"] == "frequency_capped" and m4["limit"] == "4/30d", m4
    got = sim_texts(sim)[number[1:]]
    assert got[0] == BRAND + text + OPT_OUT  # both parts joined at the SMSC
    assert got[1] == f"{BRAND}周末特惠{OPT_OUT}"  # already carrying both: unchanged
    assert got[2] == f"Offer number 2{OPT_OUT}"  # no client signature configured for it
    assert len(got) == 4 and sim.submits == 5
    assert_private(s, [])


# ------------------------------------------------------------------------------ the window


async def test_marketing_at_2030_is_deferred_and_sent_at_0800(setup: GatewaySetup) -> None:
    s = setup
    clock = TestClock(local("2026-11-23 20:30"))
    sim = await start(s, clock)
    number = "+8613911119999"
    async with s.probe() as p:
        await p.send("night", number, "Flash sale tomorrow", priority="marketing")
        await p.send("otp", number, "Your code is 620413", priority="otp")
        await p.send("tx", "+8613911110000", "Payment received", priority="transactional")
        await p.wait_status(["night"], "deferred")
        await p.wait_status(["otp", "tx"], "delivered")
        assert p.statuses("night") == ["accepted", "deferred"]
        deferred = p.events["night"][1]
        assert deferred["reason"] == "marketing_window"
        assert deferred["until"] == "2026-11-24T08:00:00+08:00"
        assert sim.submits == 2  # the OTP and the transactional ignore the window

        clock.set(local("2026-11-24 07:59:58"))
        await asyncio.sleep(1.5)
        assert sim.submits == 2 and p.statuses("night") == ["accepted", "deferred"]
        clock.set(local("2026-11-24 08:00:00"))
        await p.wait_status(["night"], "delivered", 15)
    assert p.statuses("night") == ["accepted", "deferred", "submitted", "delivered"]
    assert sim_texts(sim)[number[1:]] == ["Your code is 620413", f"Flash sale tomorrow{OPT_OUT}"]
    assert_private(s, ["620413"])


async def test_marketing_that_becomes_due_after_2000_is_deferred_by_the_dispatcher(
        setup: GatewaySetup) -> None:
    """Accepted inside the window, its carrier down until 20:00 passed: not sent at night."""
    s = setup
    clock = TestClock(local("2026-11-23 19:59:00"))
    s.add_carrier("alpha")
    s.route("", "alpha")
    s.extra["policies"] = policies()
    await s.start_gateway(clock=clock, wait_ready=False)
    async with s.probe() as p:
        await until(lambda: s.gateway.ingress.subscribed.is_set(), 10, "subscribed")  # type: ignore[union-attr]
        await p.send("late", "+8613911112345", "Last chance", priority="marketing")
        await p.wait_status(["late"], "accepted")
        clock.set(local("2026-11-23 20:00:05"))
        sim = await s.start_sim("alpha")
        await p.wait_status(["late"], "deferred", 15)
        ev = p.events["late"][-1]
        assert ev["reason"] == "marketing_window" and ev["until"] == "2026-11-24T08:00:00+08:00"
        await asyncio.sleep(1.0)
        assert sim.submits == 0
        clock.set(local("2026-11-24 08:00:01"))
        await p.wait_status(["late"], "delivered", 15)
    assert p.statuses("late") == ["accepted", "deferred", "submitted", "delivered"]


# ------------------------------------------------------------------------------ privacy


async def test_otp_text_is_gone_from_the_store_after_delivered(setup: GatewaySetup,
                                                               db_url: str) -> None:
    s = setup
    await start(s, TestClock(local("2026-11-23 10:00")))
    async with s.probe() as p:
        await p.send("otp", "+8613911113456", "Your code is 771905", priority="otp")
        await p.send("tx", "+8613911113457", "Order 2231 shipped", priority="transactional")
        await p.wait_status(["otp", "tx"], "delivered")
    store = s.gateway.store  # type: ignore[union-attr]
    await store.checkpoint()
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = {r.id: r for r in conn.execute(sa.text(
                "SELECT id, text, text_len, text_sha256 FROM messages"))}
    finally:
        engine.dispose()
    otp = rows["otp"]
    assert otp.text is None and otp.text_len == len("Your code is 771905")
    assert otp.text_sha256 == store.text_digest("Your code is 771905")
    assert rows["tx"].text == "Order 2231 shipped"  # only OTP texts are purged
    if db_url.startswith("sqlite"):
        path = Path(db_url.split("///", 1)[1].split("?", 1)[0])
        for f in path.parent.glob(path.name + "*"):  # the file, its WAL and shm
            assert b"771905" not in f.read_bytes(), f
    assert_private(s, ["771905"])


async def test_retention_purges_old_send_records_and_keeps_opt_outs(db_url: str) -> None:
    cfg_rules = load_config_from_policies(policies(retention_days=183))
    now = local("2026-11-23 03:00")
    store = await Store.open(db_url)
    try:
        old, recent = now - 200 * 86400, now - 10 * 86400
        await store.accept_messages([
            NewMessage(id="old", to="+8613911110001", text="old", parts=1, created_at=old),
            NewMessage(id="recent", to="+8613911110002", text="recent", parts=1, created_at=recent),
            NewMessage(id="queued-old", to="+8613911110003", text="q", parts=1, created_at=old,
                       priority=Priority.MARKETING, due_at=now + 3600),
        ])
        await store.finalize([Finalize("old", Status.FAILED, old + 1, reason="no_route"),
                              Finalize("recent", Status.FAILED, recent + 1, reason="no_route")])
        await store.add_opt_out("+8613911110001", "mo", old)
        purged = await housekeep(store, cfg_rules, now)
        assert purged.messages == 1
        left = await store.get_statuses(["old", "recent", "queued-old"])
        assert set(left) == {"recent", "queued-old"}  # never a message still queued
        assert await store.is_opted_out("+8613911110001")  # opt-outs are kept
        # Without retention_days nothing is purged.
        assert (await housekeep(store, load_config_from_policies(policies(retention_days=None)),
                                now + 400 * 86400)).messages == 0
    finally:
        await store.close()


def load_config_from_policies(doc: dict[str, Any]) -> Any:
    """The `policies` of a minimal valid config file (validated as the daemon would)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gateway.yaml"
        path.write_text(json.dumps({
            "store": {"url": "sqlite:///" + tmp + "/x.db"},
            "mqtt": {"host": "127.0.0.1", "port": 1883, "topic_prefix": "sms", "client_id": "x"},
            "carriers": [{"name": "a", "host": "127.0.0.1", "port": 2775, "system_id": "a",
                          "password": "p"}],
            "routes": [{"prefix": "", "carriers": ["a"]}],
            "policies": {k: v for k, v in doc.items() if v is not None},
        }, ensure_ascii=False))
        return load_config(str(path)).policies


# ------------------------------------------------------------------------------ reload


async def test_policies_reload_live(setup: GatewaySetup) -> None:
    s = setup
    sim = await start(s, TestClock(local("2026-11-23 10:00")))
    async with s.probe() as p:
        await p.send("r1", "+8613911114321", "Lucky draw today")
        await p.wait_status(["r1"], "delivered")
        s.extra["policies"] = policies(blocked_content=["(?i)lucky draw"])
        s.write_config()
        assert await s.gateway.reload()  # type: ignore[union-attr]
        await p.send("r2", "+8613911114322", "Lucky draw today")
        await p.wait_status(["r2"])
    r2 = p.final("r2")
    assert r2 is not None and r2["reason"] == "blocked_content" and "lucky draw" in r2["detail"]
    assert sim.submits == 1
    assert re.search(r'"reloaded"', s.log_stream.getvalue())


async def test_limits_hold_across_batches_admitted_at_once(setup: GatewaySetup) -> None:
    """The ingress admits several batches concurrently; the limits still count every one."""
    s = setup
    sim = await start(s, TestClock(local("2026-11-23 10:00")))
    async with s.probe() as p:
        # 40 OTPs to one number and 10 to each of 4 numbers under the capped +86170, published
        # in one go (many arrive while earlier batches are still committing).
        docs = [{"id": f"burst{i}", "to": "+8613911110101", "text": f"Your code is {100000 + i}",
                 "priority": "otp"} for i in range(40)]
        docs += [{"id": f"cap{i}", "to": f"+861709876543{i % 4}", "text": f"Code {200000 + i}",
                  "priority": "otp"} for i in range(40)]
        await p.publish(docs, chunk=80)
        await p.wait_status([d["id"] for d in docs])
    finals = {d["id"]: p.final(d["id"]) for d in docs}
    burst = [i for i, f in finals.items() if i.startswith("burst") and f["status"] != "rejected"]  # type: ignore[index]
    capped = [i for i, f in finals.items() if i.startswith("cap") and f["status"] != "rejected"]  # type: ignore[index]
    assert len(burst) == 1, burst  # 1/1m per number
    assert len(capped) == 3, capped  # 3/1m over the prefix
    assert sim.submits == 4
    assert s.gateway.ingress.stats.batches >= 2  # type: ignore[union-attr]
