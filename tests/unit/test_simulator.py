"""The simulator's pure parts, without sockets: its hand-written receipt bytes equal the codec's,
read back as the gateway's receipt parser reads them; the throttle's token bucket."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.model import ReceiptState
from gateway.smpp import pdu as P
from gateway.smpp.receipts import Receipt, parse_deliver
from gateway.smpp.simulator import SmscSimulator

SUBMIT: dict[str, Any] = {
    "source_addr_ton": 5, "source_addr_npi": 0, "source_addr": "Brand",
    "dest_addr_ton": 1, "dest_addr_npi": 1, "destination_addr": "8613800138000",
    "registered_delivery": 1, "data_coding": 0, "esm_class": 0,
    "short_message": b"Your code is 123456, valid 5 minutes",
}


def receipt_frame(sim: SmscSimulator, fields: dict[str, Any], n: int = 0x1F4) -> bytes:
    item = sim._receipt(n, sim._fmt_resp_id(n), fields, 0.0)
    assert item is not None
    # The session puts the header in front of the queued body; do the same with seq 1.
    return struct.pack(">IIII", 16 + len(item.body), P.CommandId.DELIVER_SM, 0, 1) + item.body


@pytest.mark.parametrize(("share", "state", "tlvs"), [
    ({}, ReceiptState.DELIVRD, {"message_state": 2}),
    ({"undeliv": 1.0}, ReceiptState.UNDELIV, {"message_state": 5, "network_error_code": b"\x03\x00\x01"}),
    ({"expired": 1.0}, ReceiptState.EXPIRED, {"message_state": 3}),
    ({"rejectd": 1.0}, ReceiptState.REJECTD, {"message_state": 8, "network_error_code": b"\x03\x00\x02"}),
])
def test_receipt_bytes_equal_the_codec_and_parse_back(share: dict[str, float], state: ReceiptState,
                                                      tlvs: dict[str, Any]) -> None:
    sim = SmscSimulator(**share)  # type: ignore[arg-type]
    frame = receipt_frame(sim, SUBMIT)
    pdu = P.decode(frame)
    text = pdu.fields["short_message"]
    reference = P.deliver_sm(1, "8613800138000", "Brand", text, source_addr_ton=1,
                             source_addr_npi=1, dest_addr_ton=5, dest_addr_npi=0, esm_class=4,
                             tlvs={"receipted_message_id": "1F4", **tlvs})
    assert frame == P.encode(reference)
    assert text.endswith(b"stat:" + state.value.encode() + b" err:" + text.split(b"err:")[1][:3]
                         + b" text:Your code is 123456,")  # the first 20 characters
    result = parse_deliver(4, text, 0, pdu.tlvs)
    assert isinstance(result, Receipt)
    assert (result.message_id, result.state) == ("1F4", state)
    text_only = parse_deliver(4, text, 0, {})  # the text form alone says the same
    assert isinstance(text_only, Receipt) and (text_only.message_id, text_only.state) == ("1F4", state)


def test_receipt_quotes_no_udh_and_no_ucs2() -> None:
    sim = SmscSimulator()
    udh = b"\x05\x00\x03\x2a\x02\x01"
    text = P.decode(receipt_frame(sim, {**SUBMIT, "esm_class": 0x40,
                                        "short_message": udh + b"part one"})).fields["short_message"]
    assert text.endswith(b"text:part one")
    text = P.decode(receipt_frame(sim, {**SUBMIT, "data_coding": 8,
                                        "short_message": "退订".encode("utf-16-be")})).fields["short_message"]
    assert text.endswith(b"text:")


def test_registered_delivery_failure_only() -> None:
    sim = SmscSimulator()
    assert sim._receipt(1, "1", {**SUBMIT, "registered_delivery": 2}, 0.0) is None
    sim.undeliv = 1.0
    assert sim._receipt(1, "1", {**SUBMIT, "registered_delivery": 2}, 0.0) is not None


@given(n=st.integers(0, 2**63), fmt=st.sampled_from(["hex", "decimal"]))
def test_receipt_id_formats(n: int, fmt: str) -> None:
    sim = SmscSimulator(message_id_format="hex", receipt_id_format=fmt)
    pdu = P.decode(receipt_frame(sim, SUBMIT, n))
    rid = pdu.tlvs["receipted_message_id"]
    assert int(rid, 16 if fmt == "hex" else 10) == n


def test_unknown_id_format_is_refused() -> None:
    with pytest.raises(ValueError):
        SmscSimulator(message_id_format="base64")


def test_throttle_bucket_allows_the_rate_with_one_second_of_burst() -> None:
    sim = SmscSimulator(throttle_tps=100)
    sim._tokens, sim._tokens_at = 100.0, 0.0
    assert sum(sim._take_token(0.0) for _ in range(150)) == 100
    assert sum(sim._take_token(0.5) for _ in range(100)) == 50  # refilled half a second's worth
    assert not sim._take_token(0.5)
