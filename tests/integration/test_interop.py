"""Interoperability with independent SMPP implementations, over TCP on loopback.

* smpplib's blocking ``Client`` (in a thread) binds to our simulator, submits, gets its
  submit_sm_resp and a delivery receipt, answers it and unbinds: our server side speaks SMPP the
  way another client expects.
* Our ``Connection``/``Session`` against the npm package ``smpp`` as an SMSC
  (tests/interop/smsc_server.js, run with node): binds, submits, receives the receipt, answers it
  and unbinds: our client side speaks SMPP the way another server expects.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest

from gateway.config import CarrierConfig, Secret
from gateway.smpp.connection import Connection
from gateway.smpp.receipts import Receipt, parse_deliver
from gateway.smpp.session import (
    Bound,
    Closed,
    DeliverSmReceived,
    Event,
    SubmitResponse,
    Unbound,
)
from gateway.smpp.simulator import SmscSimulator

pytestmark = pytest.mark.timeout(30)

INTEROP = Path(__file__).resolve().parent.parent / "interop"
NODE = shutil.which("node")


def _smpplib_session(port: int) -> dict[str, Any]:
    """Runs in a thread: smpplib's own client, blocking, from bind to unbind."""
    import smpplib.client  # type: ignore[import-untyped]
    import smpplib.consts  # type: ignore[import-untyped]

    out: dict[str, Any] = {"sent": [], "received": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = smpplib.client.Client("127.0.0.1", port, timeout=5, allow_unknown_opt_params=True)

    def on_received(pdu: Any) -> None:
        out["received"].append(pdu)

    def on_sent(pdu: Any) -> None:
        out["sent"].append(pdu)

    client.set_message_received_handler(on_received)
    client.set_message_sent_handler(on_sent)
    client.connect()
    try:
        client.bind_transceiver(system_id="interop", password="secret")
        client.send_message(
            source_addr_ton=smpplib.consts.SMPP_TON_ALNUM, source_addr_npi=0, source_addr="Brand",
            dest_addr_ton=smpplib.consts.SMPP_TON_INTL, dest_addr_npi=smpplib.consts.SMPP_NPI_ISDN,
            destination_addr="8613800138000", short_message=b"interop hello",
            data_coding=0, esm_class=0, registered_delivery=1)
        for _ in range(10):
            if out["received"]:
                break
            client.read_once()  # submit_sm_resp, then the deliver_sm (answered by smpplib)
        client.unbind()
    finally:
        client.disconnect()
    return out


async def test_smpplib_client_against_our_simulator() -> None:
    sim = SmscSimulator(system_id="interop", password="secret")
    await sim.start()
    try:
        out = await asyncio.to_thread(_smpplib_session, sim.port)
        await sim.wait_for(lambda: sim.receipts_acked == 1 and sim.active_binds == 0)
    finally:
        await sim.stop()
    assert sim.binds == 1 and sim.submits == 1
    (resp,) = out["sent"]
    assert resp.command == "submit_sm_resp" and resp.status == 0
    message_id = resp.message_id.decode() if isinstance(resp.message_id, bytes) else resp.message_id
    (dlr,) = out["received"]
    assert dlr.command == "deliver_sm"
    receipted = dlr.receipted_message_id
    receipted = receipted.decode() if isinstance(receipted, bytes) else receipted
    assert receipted == message_id
    assert b"stat:DELIVRD" in dlr.short_message and f"id:{message_id}".encode() in dlr.short_message


@pytest.mark.node
async def test_our_connection_against_npm_smpp_server() -> None:
    if NODE is None:
        pytest.skip("node is not installed (the npm smpp interop test needs Node.js)")
    if not (INTEROP / "node_modules" / "smpp").is_dir():
        pytest.skip(f"npm package smpp missing: run `npm ci` in {INTEROP}")
    proc = await asyncio.create_subprocess_exec(
        NODE, str(INTEROP / "smsc_server.js"), "0", cwd=str(INTEROP),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    facts: list[dict[str, Any]] = []

    async def read_fact() -> dict[str, Any]:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert line, "node server exited"
        fact: dict[str, Any] = json.loads(line)
        facts.append(fact)
        return fact

    try:
        port = (await read_fact())["listening"]
        cfg = CarrierConfig(name="node", host="127.0.0.1", port=port, system_id="gw",
                            password=Secret("pw"), response_timeout_s=5.0)
        events: list[Event] = []
        receipt = asyncio.get_running_loop().create_future()

        def on_event(conn: Connection, ev: Event) -> None:
            events.append(ev)
            if isinstance(ev, DeliverSmReceived) and not receipt.done():
                receipt.set_result((conn.generation, ev))

        conn = Connection(cfg, on_event)
        conn.start()
        async with asyncio.timeout(10):
            while not conn.is_bound:
                await asyncio.sleep(0.01)
        assert isinstance(events[0], Bound) and events[0].system_id == "node-smsc"
        seq = conn.submit({"source_addr_ton": 5, "source_addr": "Brand", "dest_addr_ton": 1,
                           "dest_addr_npi": 1, "destination_addr": "8613800138000",
                           "registered_delivery": 1, "short_message": b"hello from smsgw"},
                          context="part-1")
        generation, dlr = await asyncio.wait_for(receipt, 10)
        (resp,) = [e for e in events if isinstance(e, SubmitResponse)]
        assert resp.seq == seq and resp.command_status == 0 and resp.context == "part-1"
        f = dlr.pdu.fields
        parsed = parse_deliver(f["esm_class"], f["short_message"], f["data_coding"], dlr.pdu.tlvs)
        assert isinstance(parsed, Receipt)
        assert parsed.message_id == resp.message_id and parsed.state.name == "DELIVRD"
        assert dlr.pdu.tlvs.get("receipted_message_id") == resp.message_id
        assert conn.respond(dlr.seq, generation=generation)
        while "deliver_sm_resp" not in facts[-1]:
            await read_fact()
        assert facts[-1] == {"deliver_sm_resp": resp.message_id, "command_status": 0}
        await conn.close(timeout=2.0)
        assert isinstance(events[-2], Unbound) and isinstance(events[-1], Closed)
        while "unbind" not in facts[-1]:
            await read_fact()
        assert any(f.get("bind") == "bind_transceiver" and f.get("system_id") == "gw" for f in facts)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
