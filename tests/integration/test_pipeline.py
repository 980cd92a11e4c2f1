"""The pipeline end to end (issue 4, "Must show"): MQTT in, durable store (SQLite file and
PostgreSQL), dispatch by route to SMSC simulators over TCP, receipts and events out.

The gateway runs in this process (`Gateway.start()`); the durability and signal tests, which
need a real process to kill, are in test_durability.py.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import pytest

from gateway.smpp.pdu import CommandStatus
from gateway.smpp.text import describe
from tests.fixtures.services import free_port
from tests.integration.conftest import GatewaySetup, full_numbers_in, healthz, sim_texts, until

SOAK = os.environ.get("SMSGW_SOAK") == "1"

GSM_WORDS = ["hello", "order", "shipped", "code", "{ref}", "[ok]", "€5", "~x~", "Grüße", "ÆØÅ",
             "delivery", "tomorrow", "|pipe|", "^caret^", "où?", "@home", "100%", "\\back"]
ZH_WORDS = ["您的", "验证码", "是", "订单", "已发货", "明天", "送达", "谢谢", "【品牌】", "退订回T",
            "，", "。", "😀", "🚚"]


def mixed_text(rng: random.Random, kind: str) -> str:
    if kind == "gsm":
        return " ".join(rng.choice(GSM_WORDS) for _ in range(rng.randint(1, 20)))[:160]
    if kind == "zh":
        return "".join(rng.choice(ZH_WORDS) for _ in range(rng.randint(1, 15)))[:70]
    if kind == "gsm_long":
        # GSM escapes (€, {, [ ...) land on part boundaries in some of these.
        return " ".join(rng.choice(GSM_WORDS) for _ in range(rng.randint(40, 110)))[:1000]
    # Chinese and emoji (UTF-16 surrogate pairs) over several parts.
    return "".join(rng.choice(ZH_WORDS) for _ in range(rng.randint(30, 90)))[:250]


def number(i: int, cc: str = "86") -> str:
    return f"+{cc}138{i:08d}" if cc == "86" else f"+{cc}7700{i:06d}"


# ------------------------------------------------------------------------------ volume


@pytest.mark.timeout(1800 if SOAK else 300)
async def test_mixed_volume_delivered_exactly_once(setup: GatewaySetup) -> None:
    """5,000 mixed messages (GSM, Chinese, long GSM, long Chinese with emoji) over two carriers:
    every one delivered exactly once, events in order, the text reassembled at the SMSC equals
    the text sent, part counts as announced."""
    n = 50_000 if SOAK else 5000  # 5,000 is the figure (about 6-8 s here)
    s = setup
    s.add_carrier("alpha", window=50, binds=2)
    s.add_carrier("beta", window=50)
    s.route("+86", "alpha", "beta")
    s.route("", "beta")
    alpha = await s.start_sim("alpha")
    beta = await s.start_sim("beta")
    await s.start_gateway()
    rng = random.Random(4)
    kinds = ["gsm", "zh", "gsm_long", "zh_long"]
    docs: list[dict[str, Any]] = []
    for i in range(n):
        kind = kinds[i % 4]
        cc = "86" if i % 3 else "44"
        docs.append({"id": f"v{i}", "to": number(i, cc), "text": mixed_text(rng, kind),
                     "priority": ["otp", "transactional", "marketing"][i % 3]})
    expected_parts = {d["id"]: describe(d["text"]).parts for d in docs}
    assert max(expected_parts.values()) >= 4 and min(expected_parts.values()) == 1
    t0 = time.monotonic()
    async with s.probe() as p:
        await p.publish(docs)
        t_pub = time.monotonic()
        await p.wait_status([d["id"] for d in docs], "delivered", timeout=90 if not SOAK else 900)
        t_done = time.monotonic()
        await until(lambda: alpha.receipts_acked + beta.receipts_acked
                    >= sum(expected_parts.values()), 10, "every receipt answered")
        # Let late duplicates (if any) arrive before counting.
        await s.gateway.publisher.flush(5)  # type: ignore[union-attr]

    print(f"\n{n} messages ({sum(expected_parts.values())} parts): published in "
          f"{t_pub - t0:.1f}s, all delivered after {t_done - t0:.1f}s")
    for d in docs:
        evs = p.events[d["id"]]
        statuses = [e["status"] for e in evs]
        assert statuses == ["accepted", "submitted", "delivered"], (d["id"], statuses)
        assert evs[0]["parts"] == expected_parts[d["id"]]
        sub = evs[1]
        assert sub["parts"] == expected_parts[d["id"]] == len(sub["message_ids"])
        assert sub["carrier"] == ("alpha" if d["to"].startswith("+86") else "beta")
    # At the SMSC: each destination got exactly its one text, reassembled from its parts.
    got = {**sim_texts(alpha), **sim_texts(beta)}
    assert set(got) == {d["to"][1:] for d in docs}
    for d in docs:
        assert got[d["to"][1:]] == [d["text"]], d["id"]
    assert alpha.submits + beta.submits == sum(expected_parts.values())
    assert not full_numbers_in(s.all_logs())


# ------------------------------------------------------------------------------ routing


async def test_longest_prefix_routing(setup: GatewaySetup) -> None:
    s = setup
    for name in ("cn", "cn_mobile", "world"):
        s.add_carrier(name)
    s.route("", "world")
    s.route("+86", "cn")
    s.route("+86138", "cn_mobile")
    sims = {name: await s.start_sim(name) for name in ("cn", "cn_mobile", "world")}
    await s.start_gateway()
    cases = {"r1": ("+8613812345678", "cn_mobile"), "r2": ("+8615912345678", "cn"),
             "r3": ("+447911123456", "world"), "r4": ("+8613912345678", "cn")}
    async with s.probe() as p:
        for mid, (to, _) in cases.items():
            await p.send(mid, to, f"route {mid}")
        await p.wait_status(cases, "delivered")
    for mid, (to, carrier) in cases.items():
        assert p.final(mid)["carrier"] == carrier  # type: ignore[index]
        assert sim_texts(sims[carrier])[to[1:]] == [f"route {mid}"]
    assert sum(sim.submits for sim in sims.values()) == 4


async def test_failover_when_first_carrier_is_down(setup: GatewaySetup) -> None:
    """alpha's SMSC is not running (no bind): messages for alpha-then-beta go to beta."""
    s = setup
    s.add_carrier("alpha")
    s.add_carrier("beta")
    s.route("+86", "alpha", "beta")
    beta = await s.start_sim("beta")
    gw = await s.start_gateway(wait_ready=False)
    await until(lambda: gw.ingress is not None and gw.ingress.subscribed.is_set(), 10)
    await until(lambda: gw.carriers_down() == ["alpha"], 10, "beta bound, alpha down")
    ids = [f"f{i}" for i in range(20)]
    async with s.probe() as p:
        await p.publish([{"id": i, "to": number(k), "text": f"failover {i}"}
                         for k, i in enumerate(ids)])
        await p.wait_status(ids, "delivered")
        assert {p.final(i)["carrier"] for i in ids} == {"beta"}  # type: ignore[index]
        assert beta.submits == 20
        # alpha comes up: new messages prefer it again.
        alpha = await s.start_sim("alpha")
        await until(lambda: not gw.carriers_down(), 10, "alpha to bind")
        await p.send("f-back", number(99), "back to alpha")
        await p.wait_status(["f-back"], "delivered")
        assert p.final("f-back")["carrier"] == "alpha"  # type: ignore[index]
        assert alpha.submits == 1


async def test_carrier_lost_mid_backlog_fails_over(setup: GatewaySetup) -> None:
    """alpha's SMSC dies while it works through a backlog: what it held goes to beta; only
    messages that may have reached alpha (`resent: true`) can be seen by both SMSCs."""
    s = setup
    s.add_carrier("alpha", tps=100)
    s.add_carrier("beta")
    s.route("+86", "alpha", "beta")
    alpha = await s.start_sim("alpha")
    beta = await s.start_sim("beta")
    gw = await s.start_gateway()
    n = 200
    docs = [{"id": f"l{i}", "to": number(i), "text": f"lost {i} " + "x" * (i % 3) * 100}
            for i in range(n)]
    async with s.probe() as p:
        await p.publish(docs)
        await until(lambda: alpha.submits >= 30, 10)
        await alpha.stop()  # abrupt: connections aborted, nothing answered any more
        await p.wait_status([d["id"] for d in docs], "delivered", 30)
        await until(lambda: gw.carriers_down() == ["alpha"], 5)
    cut_off: list[str] = []  # destinations of messages alpha got only some parts of
    at_alpha, at_beta = sim_texts(alpha, incomplete=cut_off), sim_texts(beta)
    assert at_alpha and at_beta
    for d in docs:
        dest = d["to"][1:]
        seen = at_alpha.get(dest, []) + at_beta.get(dest, [])
        fin = p.final(d["id"])
        assert fin is not None and fin["status"] == "delivered"
        assert p.statuses(d["id"]).count("delivered") == 1
        assert at_beta.get(dest, [d["text"]]) == [d["text"]]
        if len(seen) != 1 or dest in cut_off:
            assert fin.get("resent"), (d["id"], seen, fin)  # it may have reached alpha
        assert d["text"] in seen


# ------------------------------------------------------------------------------ carrier errors


async def test_permanent_error_fails_at_once(setup: GatewaySetup) -> None:
    s = setup
    s.add_carrier("alpha")
    s.route("", "alpha")
    sim = await s.start_sim("alpha", error_rate=1.0,
                            error_status=int(CommandStatus.ESME_RINVDSTADR))
    await s.start_gateway()
    async with s.probe() as p:
        await p.send("p1", "+8613800138000", "to a bad number")
        await p.wait_status(["p1"], "failed")
    assert p.statuses("p1") == ["accepted", "failed"]
    fin = p.final("p1")
    assert fin is not None
    assert fin["command_status"] == 11 and fin["command_status_name"] == "ESME_RINVDSTADR"
    assert fin["carrier"] == "alpha"
    assert sim.submits == 1  # never retried


async def test_transient_error_is_retried_then_delivered(setup: GatewaySetup) -> None:
    """ESME_RSYSERR for the first submits, then OK: retried with backoff and delivered."""
    s = setup
    s.add_carrier("alpha", submit_retries=5)
    s.route("", "alpha")
    sim = await s.start_sim("alpha", error_rate=1.0, error_status=int(CommandStatus.ESME_RSYSERR))
    await s.start_gateway()
    async with s.probe() as p:
        await p.send("t1", "+8613800138000", "try again")
        await until(lambda: sim.submit_errors >= 2, 10, "two failed submits")
        sim.error_rate = 0.0
        await p.wait_status(["t1"], "delivered", 15)
    assert p.statuses("t1") == ["accepted", "submitted", "delivered"]
    assert sim.submit_errors >= 2 and sim.submits == sim.submit_errors + 1
    assert sim_texts(sim)["8613800138000"] == ["try again"]


async def test_duplicate_id_sent_once(setup: GatewaySetup) -> None:
    s = setup
    s.add_carrier("alpha")
    s.route("", "alpha")
    sim = await s.start_sim("alpha")
    await s.start_gateway()
    async with s.probe() as p:
        await p.send("d1", "+8613800138000", "only once")
        await p.wait_status(["d1"], "delivered")
        await p.send("d1", "+8613800138000", "only once")
        await p.send("d1", "+8613800138001", "another text, same id")
        await until(lambda: len(p.events["d1"]) >= 5, 10, "the repeats' status events")
    assert p.statuses("d1") == ["accepted", "submitted", "delivered", "delivered", "delivered"]
    assert all(e.get("repeat") for e in p.events["d1"][3:])
    assert sim.submits == 1
    # Two copies racing (the second before the first is committed): still one message.
    async with s.probe() as p:
        await p.publish([{"id": "d2", "to": "+8613800138002", "text": "race"}] * 2)
        await p.wait_status(["d2"], "delivered")
        await until(lambda: len(p.events["d2"]) >= 4, 10)
    firsts = [e["status"] for e in p.events["d2"] if not e.get("repeat")]
    assert firsts == ["accepted", "submitted", "delivered"], p.events["d2"]
    assert sim.submits == 2


# ------------------------------------------------------------------------------ receipts


async def test_receipt_before_response(setup: GatewaySetup) -> None:
    s = setup
    s.add_carrier("alpha")
    s.route("", "alpha")
    sim = await s.start_sim("alpha", receipt_before_response=True)
    await s.start_gateway()
    ids = [f"e{i}" for i in range(10)]
    async with s.probe() as p:
        await p.publish([{"id": i, "to": number(k), "text": "early " * (k * 10 + 1)}
                         for k, i in enumerate(ids)])
        await p.wait_status(ids, "delivered")
    for i in ids:
        assert p.statuses(i) == ["accepted", "submitted", "delivered"]
    assert sim.receipts_sent == sim.submits


@pytest.mark.parametrize("resp_fmt,receipt_fmt", [("hex", "decimal"), ("decimal", "hex")])
async def test_hex_decimal_id_mismatch(setup: GatewaySetup, resp_fmt: str,
                                       receipt_fmt: str) -> None:
    s = setup
    s.add_carrier("alpha")
    s.route("", "alpha")
    await s.start_sim("alpha", message_id_format=resp_fmt, receipt_id_format=receipt_fmt)
    await s.start_gateway()
    async with s.probe() as p:
        await p.publish([{"id": f"x{i}", "to": number(i), "text": "id forms"} for i in range(5)])
        await p.wait_status([f"x{i}" for i in range(5)], "delivered")
    assert s.gateway.dispatcher.counters["receipts_unknown"] == 0  # type: ignore[union-attr]


def time_receipts(sim: Any, plan: dict[int, tuple[float, bool]]) -> None:
    """Per part number (UDH seq): (receipt delay in s, UNDELIV instead of DELIVRD)."""
    make_receipt = sim._receipt  # noqa: SLF001

    def timed_receipt(n, message_id, fields, now):  # type: ignore[no-untyped-def]
        delay, undeliv = plan[fields["short_message"][5]]  # UDH: 05 00 03 ref total seq
        sim.undeliv = 1.0 if undeliv else 0.0
        item = make_receipt(n, message_id, fields, now)
        item.due = now + delay
        return item

    sim._receipt = timed_receipt  # noqa: SLF001


LONG = "part " * 80  # 400 GSM characters: 3 parts


async def test_delivered_only_after_every_part(setup: GatewaySetup) -> None:
    """Parts 1 and 2 delivered at once, part 3 1.5 s later: `delivered` waits for part 3."""
    s = setup
    s.add_carrier("alpha")
    s.route("", "alpha")
    sim = await s.start_sim("alpha")
    time_receipts(sim, {1: (0.0, False), 2: (0.0, False), 3: (1.5, False)})
    await s.start_gateway()
    assert describe(LONG).parts == 3
    async with s.probe() as p:
        await p.send("mp1", "+8613800138000", LONG)
        await until(lambda: sim.receipts_acked == 2, 5, "the first two receipts")
        await asyncio.sleep(0.3)
        assert p.statuses("mp1") == ["accepted", "submitted"]
        await p.wait_status(["mp1"], "delivered", 5)
        assert sim.receipts_sent == 3
    assert p.statuses("mp1") == ["accepted", "submitted", "delivered"]


async def test_undeliverable_as_soon_as_one_part_is(setup: GatewaySetup) -> None:
    """Part 1's receipt is UNDELIV and comes at once, the others (DELIVRD) 1.5 s later:
    `undeliverable` is published on the first receipt, and nothing after the others."""
    s = setup
    s.add_carrier("alpha")
    s.route("", "alpha")
    sim = await s.start_sim("alpha")
    time_receipts(sim, {1: (0.0, True), 2: (1.5, False), 3: (1.5, False)})
    await s.start_gateway()
    async with s.probe() as p:
        await p.send("mp3", "+8613800138000", LONG)
        await p.wait_status(["mp3"], "undeliverable", 5)
        assert sim.receipts_sent == 1  # decided on the first receipt alone
        await until(lambda: sim.receipts_acked == 3, 10, "the late receipts")
        await s.gateway.publisher.flush(5)  # type: ignore[union-attr]
    assert p.statuses("mp3") == ["accepted", "submitted", "undeliverable"]
    assert p.final("mp3")["error"] == "001"  # type: ignore[index]


# ------------------------------------------------------------------------------ MO


async def test_mo_published_and_opt_out(setup: GatewaySetup) -> None:
    s = setup
    s.add_carrier("alpha")
    s.route("", "alpha")
    sim = await s.start_sim("alpha")
    await s.start_gateway()
    async with s.probe() as p:
        sim.send_mo("你好，请问几点营业？", source_addr="8613911112222", destination_addr="10690000")
        await until(lambda: len(p.mo) >= 1, 10, "the MO")
        mo = p.mo[0]
        assert mo["from"] == "+8613911112222" and mo["text"] == "你好，请问几点营业？"
        assert mo["carrier"] == "alpha" and mo["to"] == "10690000"

        # Marketing to the number is fine before it opts out ...
        await p.send("mk1", "+8613911112222", "Sale today", priority="marketing")
        await p.wait_status(["mk1"], "delivered")
        sim.send_mo(" td ", source_addr="8613911112222")
        await until(lambda: len(p.mo) >= 2, 10, "the opt-out MO")

        async def opted_out() -> bool:
            return await s.gateway.store.is_opted_out("+8613911112222")  # type: ignore[union-attr]

        deadline = time.monotonic() + 10
        while not await opted_out():
            assert time.monotonic() < deadline, "opt-out not stored"
        # ... and rejected afterwards, while an OTP still goes.
        await p.send("mk2", "+8613911112222", "Sale again", priority="marketing")
        await p.send("otp1", "+8613911112222", "code 1234", priority="otp")
        await p.wait_status(["mk2", "otp1"])
    rej = p.final("mk2")
    assert rej is not None and rej["status"] == "rejected" and rej["reason"] == "opted_out"
    assert p.final("otp1")["status"] == "delivered"  # type: ignore[index]
    assert sim.receipts_acked >= 2 and sim.mo_sent == 2
    logs = s.log_stream.getvalue()
    assert "opt_out_received" in logs and "139****2222" in logs
    assert not full_numbers_in(logs)


# ------------------------------------------------------------------------------ readiness


async def test_healthz_follows_binds(sqlite_setup: GatewaySetup) -> None:
    s = sqlite_setup
    s.add_carrier("alpha")
    s.add_carrier("beta")
    s.route("", "alpha", "beta")
    gw = await s.start_gateway(wait_ready=False)
    await until(lambda: gw.ingress is not None and gw.ingress.subscribed.is_set(), 10)
    assert await healthz(s.http_port) == 503  # no carrier up
    await s.start_sim("alpha")
    await until(lambda: not gw.pools["alpha"].health.transmit_up == 0, 10)
    from tests.integration.conftest import http_get
    code, body = await http_get(s.http_port, "/healthz")
    assert code == 503 and b"beta" in body and b"alpha" not in body
    await s.start_sim("beta")
    await until(lambda: not gw.carriers_down(), 10)
    assert await healthz(s.http_port) == 200
    await s.stop_sim("beta")
    await until(lambda: gw.carriers_down() == ["beta"], 10)
    code, body = await http_get(s.http_port, "/healthz")
    assert code == 503 and b"beta" in body


# ------------------------------------------------------------------------------ reload


async def test_reload_rebind_and_removal_keep_the_backlog(sqlite_setup: GatewaySetup) -> None:
    """SIGHUP-style reload while a throttled carrier works through a backlog: its connection
    settings change (re-bound to another SMSC), later it is removed from the config (routes
    now to beta): every message is still delivered exactly once, none stuck in memory."""
    s = sqlite_setup
    s.add_carrier("alpha", tps=50)
    s.add_carrier("beta")
    s.route("", "alpha", "beta")
    old = await s.start_sim("alpha")
    beta = await s.start_sim("beta")
    gw = await s.start_gateway()
    n = 150
    docs = [{"id": f"h{i}", "to": number(i), "text": f"reload {i}"} for i in range(n)]
    async with s.probe() as p:
        await p.publish(docs)
        await until(lambda: old.submits >= 20, 10)
        # Re-bind: alpha moves to another SMSC (a new port).
        s.sims.pop("alpha")
        s.carriers["alpha"].port = free_port()
        new = await s.start_sim("alpha")
        s.write_config()
        assert await gw.reload()
        await until(lambda: new.submits >= 20, 15, "the re-bound alpha to take over")
        # Removal: alpha leaves the config; what it held goes to beta.
        del s.carriers["alpha"]
        s.routes[:] = [{"prefix": "", "carriers": ["beta"]}]
        s.write_config()
        assert await gw.reload()
        await p.wait_status([d["id"] for d in docs], "delivered", 30)
    await old.stop()
    got: dict[str, list[str]] = {}
    for sim in (old, new, beta):
        for dest, ts in sim_texts(sim).items():
            got.setdefault(dest, []).extend(ts)
    for d in docs:
        assert got[d["to"][1:]] == [d["text"]], (d["id"], got.get(d["to"][1:]))
    assert beta.submits > 0
    assert sum(gw.dispatcher._held.values()) == 0  # type: ignore[union-attr]  # noqa: SLF001


# ------------------------------------------------------------------------------ robustness


async def test_store_failure_in_one_flush_loses_no_event(sqlite_setup: GatewaySetup) -> None:
    """One store call of a flush fails (receipts) while another commits (responses): the
    committed one's `submitted` is still published, the failed one is retried, nothing is
    answered before its commit, and the message ends delivered."""
    s = sqlite_setup
    s.add_carrier("alpha")
    s.route("", "alpha")
    # Receipt and response in one write: they land in the same flush.
    sim = await s.start_sim("alpha", receipt_before_response=True)
    gw = await s.start_gateway()
    store = gw.store
    assert store is not None
    real = store.apply_receipts
    failures = []

    async def flaky(items):  # type: ignore[no-untyped-def]
        if items and not failures:
            failures.append(len(items))
            raise ConnectionError("database went away")
        return await real(items)

    store.apply_receipts = flaky  # type: ignore[method-assign]
    async with s.probe() as p:
        await p.send("sf1", "+8613800138000", "flaky store")
        await p.wait_status(["sf1"], "delivered", 10)
    assert failures == [1]
    assert p.statuses("sf1") == ["accepted", "submitted", "delivered"]
    assert sim.receipts_acked == 1


async def test_a_crash_on_one_message_does_not_stop_the_carrier(
        sqlite_setup: GatewaySetup, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception while submitting one message (a bug) is logged and retried like
    a transient error; the carrier's other messages keep flowing."""
    import gateway.queue.dispatch as dispatch

    s = sqlite_setup
    s.add_carrier("alpha", submit_retries=5)
    s.route("", "alpha")
    sim = await s.start_sim("alpha")
    gw = await s.start_gateway()
    real = dispatch.submit_fields
    crashes = []

    def buggy(encoded, index, **kw):  # type: ignore[no-untyped-def]
        if kw["to"] == "+8613800000666" and len(crashes) < 2:
            crashes.append(index)
            raise RuntimeError("bug")
        return real(encoded, index, **kw)

    monkeypatch.setattr(dispatch, "submit_fields", buggy)
    async with s.probe() as p:
        await p.send("boom", "+8613800000666", "boom")
        await p.publish([{"id": f"ok{i}", "to": number(i), "text": "fine"} for i in range(20)])
        await p.wait_status([f"ok{i}" for i in range(20)] + ["boom"], "delivered", 15)
    assert len(crashes) == 2
    assert p.statuses("boom") == ["accepted", "submitted", "delivered"]
    assert gw.dispatcher.counters["internal_errors"] == 2  # type: ignore[union-attr]
    assert sim.submits == 21
    assert "dispatch_job_error" in s.log_stream.getvalue()


async def test_opt_out_not_committed_is_not_acknowledged(sqlite_setup: GatewaySetup) -> None:
    """The store fails while an opt-out MO is handled: the deliver_sm is answered with a
    temporary error (the SMSC delivers it again), not with 0 (lost opt-out)."""
    s = sqlite_setup
    s.add_carrier("alpha")
    s.route("", "alpha")
    sim = await s.start_sim("alpha")
    gw = await s.start_gateway()
    store = gw.store
    assert store is not None
    real = store.add_opt_out
    fail = [True]

    async def flaky(number, source, at):  # type: ignore[no-untyped-def]
        if fail.pop() if fail else False:
            raise ConnectionError("database went away")
        return await real(number, source, at)

    store.add_opt_out = flaky  # type: ignore[method-assign]
    async with s.probe() as p:
        sim.send_mo("STOP", source_addr="8613911113333")
        await until(lambda: sim.deliver_failures == 1, 10, "the MO's error response")
        assert sim.receipts_acked == 0 and not p.mo
        assert not await store.is_opted_out("+8613911113333")
        sim.send_mo("STOP", source_addr="8613911113333")  # the SMSC's redelivery
        await until(lambda: len(p.mo) == 1, 10, "the MO")
    assert await store.is_opted_out("+8613911113333")
    assert sim.receipts_acked == 1  # the simulator counts every deliver_sm_resp 0 here


async def test_a_bug_with_one_submission_does_not_block_intake(
        sqlite_setup: GatewaySetup, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception while admitting one submission rejects that one
    (`internal_error`) instead of failing its batch for ever (nothing acked, intake stopped)."""
    import gateway.queue.admit as admit

    s = sqlite_setup
    s.add_carrier("alpha")
    s.route("", "alpha")
    await s.start_sim("alpha")
    await s.start_gateway()
    real = admit.describe

    def buggy(text, **kw):  # type: ignore[no-untyped-def]
        if text == "poison":
            raise RuntimeError("bug")
        return real(text, **kw)

    monkeypatch.setattr(admit, "describe", buggy)
    async with s.probe() as p:
        await p.publish([{"id": "pz", "to": "+8613800138000", "text": "poison"}]
                        + [{"id": f"pok{i}", "to": number(i), "text": "fine"} for i in range(5)])
        await p.wait_status(["pz"] + [f"pok{i}" for i in range(5)], timeout=10)
    assert p.final("pz")["reason"] == "internal_error"  # type: ignore[index]
    assert all(p.final(f"pok{i}")["status"] == "delivered" for i in range(5))  # type: ignore[index]


async def test_stop_during_a_flush_loses_no_event(sqlite_setup: GatewaySetup) -> None:
    """Shutdown while the dispatcher's flush is between the store's commit and its events: the
    flush completes (the commit cannot be undone), `submitted` and `delivered` go out."""
    s = sqlite_setup
    s.add_carrier("alpha")
    s.route("", "alpha")
    sim = await s.start_sim("alpha")
    gw = await s.start_gateway()
    store = gw.store
    assert store is not None
    real = store.record_parts_accepted
    in_flush = asyncio.Event()

    async def slow_after_commit(items):  # type: ignore[no-untyped-def]
        out = await real(items)
        if items:
            in_flush.set()
            await asyncio.sleep(0.5)  # committed; the caller has not seen the outcome yet
        return out

    store.record_parts_accepted = slow_after_commit  # type: ignore[method-assign]
    real_fetch = store.fetch_due

    async def slow_fetch(*args, **kw):  # type: ignore[no-untyped-def]
        out = await real_fetch(*args, **kw)
        await asyncio.sleep(0.2)  # the feeder is busy when the stop comes
        return out

    store.fetch_due = slow_fetch  # type: ignore[method-assign]
    async with s.probe() as p:
        await p.send("st1", "+8613800138000", "stop now")
        await asyncio.wait_for(in_flush.wait(), 5)
        assert sim.submits == 1
        await s.stop_gateway()
        await p.wait_status(["st1"], "delivered", 5)
    assert p.statuses("st1") == ["accepted", "submitted", "delivered"]
