"""gateway.smpp.receipts: receipt vs MO, TLV and text forms, message-id normalisation."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.model import ReceiptState
from gateway.smpp.receipts import (
    IdConversion,
    MessageType,
    NotAReceipt,
    Receipt,
    UnparseableReceipt,
    candidate_ids,
    canonical_id,
    format_receipt_text,
    is_receipt_esm_class,
    message_type,
    parse_deliver,
    parse_receipt_text,
    parse_state_word,
)

STANDARD = (
    b"id:0123456789 sub:001 dlvrd:001 submit date:2401151230 done date:2401151231 "
    b"stat:DELIVRD err:000 text:Your code is 987654"
)


# -- esm_class ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("esm_class", "expected"),
    [
        (0x00, False),
        (0x04, True),
        (0x08, True),
        (0x20, True),
        (0x10, False),
        (0x18, False),
        (0x40, False),  # UDHI on an MO
        (0x44, True),  # UDHI | receipt
        (0x24, False),  # undefined type combination
    ],
)
def test_esm_class_decides_receipt(esm_class: int, expected: bool) -> None:
    assert is_receipt_esm_class(esm_class) is expected


def test_message_type_of_undefined_combination_is_none() -> None:
    assert message_type(0x24) is None
    assert message_type(0x04) is MessageType.SMSC_DELIVERY_RECEIPT


def test_plain_mo_is_not_a_receipt() -> None:
    result = parse_deliver(0x00, b"T", 0, {})
    assert isinstance(result, NotAReceipt)
    assert result.message_type is MessageType.DEFAULT


def test_mo_that_looks_like_a_receipt_is_still_mo_unless_sniffing() -> None:
    assert isinstance(parse_deliver(0x00, STANDARD), NotAReceipt)
    sniffed = parse_deliver(0x00, STANDARD, sniff_text=True)
    assert isinstance(sniffed, Receipt)
    assert sniffed.state is ReceiptState.DELIVRD


def test_default_type_with_receipt_tlvs_is_a_receipt() -> None:
    result = parse_deliver(0x00, b"", 0, {"receipted_message_id": "abc", "message_state": 2})
    assert isinstance(result, Receipt)
    assert (result.message_id, result.state) == ("abc", ReceiptState.DELIVRD)


# -- text form ------------------------------------------------------------------------------


def test_standard_text_receipt() -> None:
    result = parse_deliver(0x04, STANDARD)
    assert result == Receipt(
        message_id="0123456789",
        state=ReceiptState.DELIVRD,
        error="000",
        submit_date=datetime(2024, 1, 15, 12, 30),
        done_date=datetime(2024, 1, 15, 12, 31),
    )


def test_text_field_is_not_kept() -> None:
    result = parse_deliver(0x04, STANDARD)
    assert "987654" not in repr(result)


@pytest.mark.parametrize(
    "text",
    [
        "ID:AbC-12 SUB:001 DLVRD:001 SUBMIT DATE:2401151230 DONE DATE:2401151231 "
        "STAT:DELIVRD ERR:000",
        "id:AbC-12  sub:001   dlvrd:001 submit_date:2401151230 done_date:2401151231 "
        "stat:delivrd err:0",
        "id: AbC-12 stat: DELIVERED",
        "id :AbC-12 submitdate:2401151230 donedate:2401151231 stat : Delivered",
        "stat:DELIVRD err:000 id:AbC-12",  # reordered
        "id:AbC-12 status:DELIVRD error:000",
        "id:AbC-12 sub:001 dlvrd:001 stat:DELIVRD err:000 text:id:999 stat:UNDELIV",
    ],
)
def test_text_variants(text: str) -> None:
    result = parse_deliver(0x04, text.encode())
    assert isinstance(result, Receipt), result
    assert result.message_id == "AbC-12"
    assert result.state is ReceiptState.DELIVRD


@pytest.mark.parametrize(
    ("word", "state"),
    [
        ("DELIVRD", ReceiptState.DELIVRD),
        ("DELIVERED", ReceiptState.DELIVRD),
        ("delivered", ReceiptState.DELIVRD),
        ("UNDELIV", ReceiptState.UNDELIV),
        ("UNDELIVERABLE", ReceiptState.UNDELIV),
        ("FAILED", ReceiptState.UNDELIV),
        ("ACCEPTED", ReceiptState.ACCEPTD),
        ("ACCEPTD", ReceiptState.ACCEPTD),
        ("REJECTED", ReceiptState.REJECTD),
        ("REJECTD", ReceiptState.REJECTD),
        ("EXPIRED", ReceiptState.EXPIRED),
        ("DELETED", ReceiptState.DELETED),
        ("UNKNOWN", ReceiptState.UNKNOWN),
        ("ENROUTE", ReceiptState.ENROUTE),
        ("EN_ROUTE", ReceiptState.ENROUTE),
        ("2", ReceiptState.DELIVRD),
        ("5", ReceiptState.UNDELIV),
        ("9", None),
        ("BANANAS", None),
        ("", None),
    ],
)
def test_state_words(word: str, state: ReceiptState | None) -> None:
    assert parse_state_word(word) is state


def test_unknown_stat_is_unparseable_but_keeps_id() -> None:
    result = parse_deliver(0x04, b"id:77 stat:WEIRD err:000")
    assert isinstance(result, UnparseableReceipt)
    assert result.message_id == "77"


def test_missing_id_is_unparseable() -> None:
    result = parse_deliver(0x04, b"sub:001 stat:DELIVRD")
    assert isinstance(result, UnparseableReceipt)
    assert result.message_id is None


def test_seconds_and_four_digit_year_dates() -> None:
    r = parse_receipt_text("id:1 submit date:240115123059 done date:20240115123100 stat:DELIVRD")
    assert isinstance(r, Receipt)
    assert r.submit_date == datetime(2024, 1, 15, 12, 30, 59)
    assert r.done_date == datetime(2024, 1, 15, 12, 31, 0)


def test_bad_dates_are_none_not_errors() -> None:
    r = parse_receipt_text("id:1 submit date:2413991299 done date:abc stat:DELIVRD")
    assert isinstance(r, Receipt)
    assert r.submit_date is None and r.done_date is None


def test_ucs2_receipt_text() -> None:
    body = STANDARD.decode().encode("utf-16-be")
    for dc in (8, 0):  # declared UCS-2, or UCS-2 under the wrong data_coding
        result = parse_deliver(0x04, body, dc)
        assert isinstance(result, Receipt)
        assert result.message_id == "0123456789"


def test_data_sm_text_in_message_payload() -> None:
    result = parse_deliver(0x04, b"", 0, {"message_payload": STANDARD})
    assert isinstance(result, Receipt)
    assert result.message_id == "0123456789"


# -- TLVs -----------------------------------------------------------------------------------


def test_tlv_receipt() -> None:
    tlvs = {
        "receipted_message_id": "5F3A\x00",
        "message_state": 5,
        "network_error_code": b"\x03\x00\x0b",
    }
    result = parse_deliver(0x04, b"", 0, tlvs)
    assert result == Receipt(
        message_id="5F3A",
        state=ReceiptState.UNDELIV,
        network_error=11,
        network_error_type=3,
    )


def test_tlvs_win_over_text_and_text_fills_the_rest() -> None:
    tlvs = {"receipted_message_id": "tlv-id", "message_state": 3}
    result = parse_deliver(0x04, STANDARD, 0, tlvs)
    assert isinstance(result, Receipt)
    assert result.message_id == "tlv-id"
    assert result.state is ReceiptState.EXPIRED
    assert result.error == "000"
    assert result.done_date == datetime(2024, 1, 15, 12, 31)


def test_numeric_tags_and_odd_types_are_accepted() -> None:
    tlvs: dict[str | int, object] = {0x001E: b"ab12", 0x0427: b"\x02", 0x0423: 0x030045}
    result = parse_deliver(0x04, b"", 0, tlvs)
    assert isinstance(result, Receipt)
    assert (result.message_id, result.state) == ("ab12", ReceiptState.DELIVRD)
    assert (result.network_error_type, result.network_error) == (3, 0x45)


def test_invalid_tlv_state_falls_back_to_text() -> None:
    tlvs = {"receipted_message_id": "x1", "message_state": 42}
    result = parse_deliver(0x04, STANDARD, 0, tlvs)
    assert isinstance(result, Receipt)
    assert (result.message_id, result.state) == ("x1", ReceiptState.DELIVRD)


def test_intermediate_notification_is_not_final() -> None:
    result = parse_deliver(0x20, b"", 0, {"receipted_message_id": "9", "message_state": 1})
    assert isinstance(result, Receipt)
    assert result.intermediate and not result.is_final


def test_final_states() -> None:
    assert Receipt("1", ReceiptState.DELIVRD).is_final
    assert not Receipt("1", ReceiptState.ACCEPTD).is_final


# -- never crash ----------------------------------------------------------------------------

_tlv_values = st.one_of(
    st.none(), st.integers(-(2**40), 2**40), st.binary(max_size=80), st.text(max_size=80),
    st.booleans(), st.floats(allow_nan=True),
)


@given(
    esm_class=st.integers(0, 255),
    body=st.binary(max_size=300),
    dc=st.integers(0, 255),
    tlvs=st.dictionaries(
        st.sampled_from(
            ["receipted_message_id", "message_state", "network_error_code", "message_payload",
             0x001E, 0x0427, 0x0423, 0x0424, "other"]
        ),
        _tlv_values,
        max_size=5,
    ),
    sniff=st.booleans(),
)
def test_garbage_never_raises(
    esm_class: int, body: bytes, dc: int, tlvs: dict[str | int, object], sniff: bool
) -> None:
    result = parse_deliver(esm_class, body, dc, tlvs, sniff_text=sniff)
    assert isinstance(result, Receipt | NotAReceipt | UnparseableReceipt)
    if isinstance(result, Receipt):
        assert result.message_id and result.message_id == result.message_id.strip()


@given(st.text(max_size=400))
def test_garbage_text_never_raises(text: str) -> None:
    assert isinstance(parse_receipt_text(text), Receipt | UnparseableReceipt)


_ids = st.text(alphabet="0123456789abcdefABCDEF-xyzXYZ", min_size=1, max_size=30).filter(
    lambda s: canonical_id(s) != ""
)


@given(
    message_id=_ids,
    state=st.sampled_from(list(ReceiptState)),
    submit=st.datetimes(datetime(2000, 1, 1), datetime(2068, 12, 31)),
    done=st.datetimes(datetime(2000, 1, 1), datetime(2068, 12, 31)),
    err=st.from_regex(r"[0-9A-Za-z]{1,3}", fullmatch=True),
    text=st.text(max_size=30),
)
def test_format_then_parse_round_trip(
    message_id: str, state: ReceiptState, submit: datetime, done: datetime, err: str, text: str
) -> None:
    body = format_receipt_text(message_id, state, submit, done, err=err, text=text)
    # as written (the standard-layout fast path) and with spacing that only the tolerant scan reads
    for variant in (body, body.replace(" sub:", "  sub:").replace("done date", "Done_Date")):
        result = parse_deliver(0x04, variant.encode("utf-8"), 0)
        assert isinstance(result, Receipt)
        assert result.message_id == message_id
        assert result.state is state
        assert result.error == err
        assert result.submit_date == submit.replace(second=0, microsecond=0)
        assert result.done_date == done.replace(second=0, microsecond=0)


# -- message ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("00B8BE19", "b8be19"),
        ("b8be19", "b8be19"),
        ("0xB8BE19", "b8be19"),
        ("  000024\x00", "24"),
        ("0000", "0"),
        ("AbC-12", "abc-12"),
        ("550E8400-E29B-41D4-A716-446655440000", "550e8400-e29b-41d4-a716-446655440000"),
        ("", ""),
        ("   ", ""),
    ],
)
def test_canonical_id(raw: str, canonical: str) -> None:
    assert canonical_id(raw) == canonical


def test_candidates_exact_first_then_conversions() -> None:
    # Jasmin #1129: the response said 00B8BE19, the receipt says 12107289 (decimal of it).
    assert candidate_ids("12107289") == ("12107289", "b8be19", str(0x12107289))
    assert canonical_id("00B8BE19") in candidate_ids("12107289")
    # and the other way round
    assert candidate_ids("B8BE19") == ("b8be19", "12107289")
    # Jasmin #375: stored 000024, looked up 24
    assert canonical_id("000024") == candidate_ids("24")[0]


def test_ambiguous_id_prefers_exact_then_dec_to_hex() -> None:
    # "123" is valid decimal and valid hex.
    assert candidate_ids("123") == ("123", "7b", "291")
    store = {"7b": "part-hex", "291": "part-dec", "123": "part-exact"}

    def lookup(receipt_id: str) -> str | None:
        return next((store[k] for k in candidate_ids(receipt_id) if k in store), None)

    assert lookup("123") == "part-exact"
    del store["123"]
    assert lookup("0123") == "part-hex"  # decimal receipt for a hex response id
    del store["7b"]
    assert lookup("123") == "part-dec"


def test_conversion_can_be_narrowed() -> None:
    assert candidate_ids("123", IdConversion.NONE) == ("123",)
    assert candidate_ids("123", IdConversion.DEC_TO_HEX) == ("123", "7b")
    assert candidate_ids("123", IdConversion.HEX_TO_DEC) == ("123", "291")
    assert candidate_ids("7b", IdConversion.DEC_TO_HEX) == ("7b",)


def test_no_conversion_for_non_numeric_or_long_ids() -> None:
    assert candidate_ids("abc-12") == ("abc-12",)
    long_id = "1" * 41
    assert candidate_ids(long_id) == (long_id,)
    assert candidate_ids("") == ()
    assert candidate_ids("0") == ("0",)  # same in both bases: no repeats


@given(st.integers(0, 2**128 - 1), st.integers(0, 4), st.booleans())
def test_hex_response_matches_decimal_receipt(value: int, pad: int, upper: bool) -> None:
    hex_id = "0" * pad + (format(value, "X") if upper else format(value, "x"))
    assert canonical_id(hex_id) in candidate_ids(str(value))


@given(st.integers(0, 2**128 - 1), st.integers(0, 4), st.booleans())
def test_decimal_response_matches_hex_receipt(value: int, pad: int, upper: bool) -> None:
    hex_receipt = "0" * pad + (format(value, "X") if upper else format(value, "x"))
    assert canonical_id(str(value)) in candidate_ids(hex_receipt)


@given(st.text(max_size=70))
def test_canonical_properties(s: str) -> None:
    c = canonical_id(s)
    assert canonical_id(c) == c  # idempotent
    keys = candidate_ids(s)
    if c:
        assert keys[0] == c  # exact first
        assert len(keys) == len(set(keys)) <= 3
        assert all(canonical_id(k) == k for k in keys)  # every key is a canonical form
    else:
        assert keys == ()


@given(_ids.filter(lambda s: not s.lower().startswith(("x", "0x"))), st.integers(0, 3))
def test_case_and_padding_variants_share_the_key(s: str, pad: int) -> None:
    # (ids starting with "x" excluded: zero padding would turn "x1" into the hex literal "0x1")
    assert canonical_id("0" * pad + s.upper()) == canonical_id(s.lower())
