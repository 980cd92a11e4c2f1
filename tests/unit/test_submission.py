"""parse_submission: every payload gets exactly one decision, with the contract's reason codes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.model import Priority, RejectReason, Submission
from gateway.queue.submission import (
    MAX_PAYLOAD_BYTES,
    MAX_TEXT_CHARS,
    RAW_CHARS,
    Rejected,
    Unparseable,
    parse_submission,
    raw_prefix,
)

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
BASE = {"id": "m-1", "to": "+8613800138000", "text": "您的验证码是 123456"}


def parse(doc: object) -> Any:  # noqa: ANN401
    # stdlib json: it writes integers beyond 64 bits and deeper nesting than orjson.dumps does
    return parse_submission(json.dumps(doc, ensure_ascii=False).encode(), now=NOW)


def rejected(doc: Mapping[str, object]) -> Rejected:
    result = parse(doc)
    assert isinstance(result, Rejected), result
    assert result.id == doc["id"]
    return result


def unparseable(payload: bytes) -> Unparseable:
    result = parse_submission(payload, now=NOW)
    assert isinstance(result, Unparseable), result
    assert result.detail
    assert len(result.raw) <= RAW_CHARS
    return result


# ---- valid submissions ---------------------------------------------------------------------------


def test_minimal_submission_defaults() -> None:
    sub = parse(BASE)
    assert sub == Submission(id="m-1", to="+8613800138000", text=BASE["text"])
    assert sub.priority is Priority.TRANSACTIONAL


def test_all_fields() -> None:
    sub = parse(
        {
            **BASE,
            "priority": "otp",
            "sender": "MyBrand",
            "validity_s": 300,
            "not_before": "2026-11-23T10:00:00+08:00",
            "client": "billing",
            "unknown_future_key": [1, 2],  # extensions by producers are ignored
        }
    )
    assert isinstance(sub, Submission)
    assert sub.priority is Priority.OTP
    assert (sub.sender, sub.validity_s, sub.client) == ("MyBrand", 300, "billing")
    assert sub.not_before == datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
    assert sub.not_before.utcoffset() == timedelta(hours=8)  # the caller's offset is kept


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+8613800138000", "+8613800138000"),
        ("8613800138000", "+8613800138000"),  # '+' optional
        ("008613800138000", "+8613800138000"),  # international call prefix
        ("+86 138-0013-8000", "+8613800138000"),  # formatting tolerated
        ("+86 (138) 0013.8000", "+8613800138000"),
        ("447911123456", "+447911123456"),
        ("+1 202 555 0123", "+12025550123"),
    ],
)
def test_numbers_normalised_to_e164(raw: str, e164: str) -> None:
    sub = parse({**BASE, "to": raw})
    assert isinstance(sub, Submission), sub
    assert sub.to == e164


@pytest.mark.parametrize("priority", ["otp", "OTP", "transactional", "marketing", None])
def test_priorities(priority: str | None) -> None:
    assert isinstance(parse({**BASE, "priority": priority}), Submission)


@pytest.mark.parametrize("sender", ["+8610690000", "10690000", "Brand", "A Brand-1.0", "", None])
def test_senders_accepted(sender: str | None) -> None:
    assert isinstance(parse({**BASE, "sender": sender}), Submission)


def test_validity_float_with_integer_value_accepted() -> None:
    assert parse({**BASE, "validity_s": 300.0}).validity_s == 300


def test_not_before_with_z() -> None:
    assert parse({**BASE, "not_before": "2026-11-23T10:00:00Z"}).not_before.utcoffset() == timedelta(0)


def test_text_at_the_cap_is_accepted() -> None:
    assert isinstance(parse({**BASE, "text": "x" * MAX_TEXT_CHARS}), Submission)


# ---- rejected with an id: event `rejected` -------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "detail"),
    [
        ("+1800FLOWERS", "letters"),
        ("+86138abc38000", "letters"),
        ("13800138000x", "letters"),
        ("+86123", "too short"),
        ("+861380013800012", "too long"),
        ("+99912345678", "unknown country code"),
        ("+15555550100", "not a valid number"),  # possible length, unassigned range
        ("+86 138#0013", "only digits"),
        ("++8613800138000", "only digits"),
        ("", "empty"),
        ("   ", "empty"),
        ("+" + "1" * 30, "at most 15"),
        ("1" * 100, "characters long"),
    ],
)
def test_invalid_numbers(to: str, detail: str) -> None:
    r = rejected({**BASE, "to": to}).rejection
    assert r.reason is RejectReason.INVALID_NUMBER
    assert detail in r.detail
    assert "13800138000" not in r.detail  # details never echo a full number


@pytest.mark.parametrize("to", [None, 8613800138000, ["+8613800138000"]])
def test_missing_or_non_string_number(to: object) -> None:
    doc = {**BASE, "to": to}
    if to is None:
        del doc["to"]
    assert rejected(doc).rejection.reason is RejectReason.INVALID_NUMBER


@pytest.mark.parametrize("text", ["", "   \n\t", None])
def test_empty_text(text: str | None) -> None:
    doc = {**BASE, "text": text}
    if text is None:
        del doc["text"]
    assert rejected(doc).rejection.reason is RejectReason.EMPTY_TEXT


def test_text_of_10000_characters_is_too_long() -> None:
    for text in ("x" * 10_000, "验" * 10_000):
        r = rejected({**BASE, "text": text}).rejection
        assert r.reason is RejectReason.TOO_LONG
        assert "10,000" in r.detail
        assert r.extra == {"length": 10_000, "max_length": MAX_TEXT_CHARS}


@pytest.mark.parametrize(
    ("field", "value", "detail"),
    [
        ("text", 42, "must be a string"),
        ("priority", "urgent", "not one of"),
        ("priority", 0, "must be a string"),
        ("priority", "x" * 10_000, "not one of"),
        ("sender", 12345, "must be a string"),
        ("sender", "ThisIsWayTooLong", "at most 11"),
        ("sender", "品牌", "printable ASCII"),
        ("sender", "+1" + "2" * 25, "at most 11"),
        ("validity_s", "300", "must be an integer"),
        ("validity_s", True, "must be an integer"),
        ("validity_s", 1.5, "must be an integer"),
        ("validity_s", 0, "between 1 and"),
        ("validity_s", 10**12, "between 1 and"),
        ("not_before", "2026-11-23T10:00:00", "no UTC offset"),
        ("not_before", "tomorrow", "not an ISO 8601"),
        ("not_before", 1764000000, "ISO 8601 string"),
        ("not_before", "9999-12-31T23:59:59+00:00", "days ahead"),
        ("not_before", "9999-12-31T23:59:59-14:00", "days ahead"),  # overflows on conversion
        ("client", 7, "must be a string"),
        ("client", "c" * 65, "at most 64"),
    ],
)
def test_invalid_fields(field: str, value: object, detail: str) -> None:
    r = rejected({**BASE, field: value}).rejection
    assert r.reason is RejectReason.INVALID_FIELD
    assert r.extra == {"field": field}
    assert detail in r.detail
    assert len(r.detail) < 200


def test_checks_run_in_a_fixed_order() -> None:
    """The number is judged first, so one payload always gets the same reason."""
    r = rejected({**BASE, "to": "abc", "text": "", "priority": "nope"}).rejection
    assert r.reason is RejectReason.INVALID_NUMBER


# ---- unparseable: {prefix}/rejected --------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason", "detail"),
    [
        (b"", RejectReason.INVALID_JSON, "not valid JSON"),
        (b"hello", RejectReason.INVALID_JSON, "not valid JSON"),
        (b'{"id": "a",', RejectReason.INVALID_JSON, "not valid JSON"),
        (b"\xff\xfe{}", RejectReason.INVALID_JSON, "UTF-8"),
        (b'{"id": "a", "text": "\xc3\x28"}', RejectReason.INVALID_JSON, "UTF-8"),
        (b'{"id": "a", "text": "\\ud800"}', RejectReason.INVALID_JSON, "surrogate"),
        (b"[1, 2]", RejectReason.INVALID_JSON, "got an array"),
        (b'"x"', RejectReason.INVALID_JSON, "got a string"),
        (b"null", RejectReason.INVALID_JSON, "got null"),
        (b"1e400", RejectReason.INVALID_JSON, "not valid JSON"),
        (b"{}", RejectReason.INVALID_ID, "id is missing"),
        (b'{"id": null}', RejectReason.INVALID_ID, "id is missing"),
        (b'{"id": 12}', RejectReason.INVALID_ID, "must be a string"),
        (b'{"id": ""}', RejectReason.INVALID_ID, "id is empty"),
        (b'{"id": "a b"}', RejectReason.INVALID_ID, "' '"),
        (b'{"id": "a/b"}', RejectReason.INVALID_ID, "'/'"),
        (b'{"id": "sms/#"}', RejectReason.INVALID_ID, "'/'"),
        (b'{"id": "\xe4\xbd\xa0"}', RejectReason.INVALID_ID, "only A-Za-z0-9._:-"),
    ],
)
def test_unparseable(payload: bytes, reason: RejectReason, detail: str) -> None:
    u = unparseable(payload)
    assert u.reason is reason
    assert detail in u.detail, u.detail
    assert u.raw == payload.decode("utf-8", "replace")[:RAW_CHARS]


def test_id_too_long() -> None:
    u = unparseable(orjson.dumps({**BASE, "id": "a" * 65}))
    assert u.reason is RejectReason.INVALID_ID
    assert "65 characters" in u.detail
    assert isinstance(parse({**BASE, "id": "a" * 64}), Submission)


def test_one_megabyte_payload_with_a_leading_id_is_rejected_on_its_id_unparsed() -> None:
    payload = orjson.dumps({**BASE, "text": "x" * (1 << 20)})
    r = parse_submission(payload)
    assert isinstance(r, Rejected) and r.id == "m-1", r
    assert r.rejection.reason is RejectReason.TOO_LONG
    assert f"{MAX_PAYLOAD_BYTES:,}" in r.rejection.detail
    # An id that is not the first key cannot be told from a nested one without parsing.
    assert isinstance(parse_submission(b' { "id" : "x.1" }' + b" " * MAX_PAYLOAD_BYTES), Rejected)


def test_one_megabyte_payload_refused_without_parsing() -> None:
    payload = orjson.dumps({"to": BASE["to"], "id": "m-1", "text": "x" * (1 << 20)})
    u = unparseable(payload)
    assert u.reason is RejectReason.INVALID_JSON
    assert f"{MAX_PAYLOAD_BYTES:,}" in u.detail
    assert u.raw == payload[:RAW_CHARS].decode()
    assert isinstance(parse_submission(b"\xff" * (1 << 20)), Unparseable)


@pytest.mark.parametrize("depth", [1_025, 20_000, 100_000])
def test_deeply_nested_json(depth: int) -> None:
    for payload in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        payload = payload[:MAX_PAYLOAD_BYTES]  # within the size cap: orjson's depth limit decides
        u = unparseable(payload)
        assert u.reason is RejectReason.INVALID_JSON


def test_nesting_inside_a_field_is_harmless() -> None:
    deep = json.loads("[" * 500 + "]" * 500)
    r = rejected({**BASE, "priority": deep}).rejection
    assert r.reason is RejectReason.INVALID_FIELD


def test_raw_prefix_is_1024_characters_of_utf8_with_replacement() -> None:
    assert raw_prefix("验".encode() * 5_000) == "验" * 1_024
    assert raw_prefix(b"\xff" * 5_000) == "\ufffd" * 1_024
    assert raw_prefix(b"ab\xffcd") == "ab\ufffdcd"


# ---- properties ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
submission_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True), json_values),
        "to": st.one_of(st.from_regex(r"\+?[0-9 ()-]{0,20}", fullmatch=True), json_values),
        "text": st.one_of(st.text(max_size=50), json_values),
        "priority": st.one_of(st.sampled_from(["otp", "transactional", "marketing", "x"]), json_values),
        "sender": json_values,
        "validity_s": st.one_of(st.integers(-10, 10**7), json_values),
        "not_before": st.one_of(
            st.datetimes(timezones=st.just(timezone(timedelta(hours=8)))).map(datetime.isoformat),
            st.datetimes().map(datetime.isoformat),
            json_values,
        ),
        "client": json_values,
    },
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2_000))
def test_any_bytes_get_a_decision(payload: bytes) -> None:
    result = parse_submission(payload, now=NOW)
    assert isinstance(result, Submission | Rejected | Unparseable)
    if isinstance(result, Unparseable):
        assert result.raw == raw_prefix(payload)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(submission_like)
def test_any_object_gets_a_decision(doc: dict[str, object]) -> None:
    result = parse(doc)
    if isinstance(result, Submission):
        assert result.to.startswith("+") and result.to[1:].isdigit()
        assert result.text.strip() and len(result.text) <= MAX_TEXT_CHARS
        assert result.not_before is None or result.not_before.tzinfo is not None
    elif isinstance(result, Rejected):
        assert result.rejection.detail
    else:
        assert result.reason in (RejectReason.INVALID_JSON, RejectReason.INVALID_ID)


@settings(max_examples=200)
@given(st.text(max_size=300))
def test_any_text_gets_a_decision(text: str) -> None:
    """Lone surrogates cannot even be serialised to JSON; everything else gets a decision."""
    try:
        payload = orjson.dumps({**BASE, "text": text})
    except orjson.JSONEncodeError:
        return
    result = parse_submission(payload, now=NOW)
    assert isinstance(result, Submission) or (
        isinstance(result, Rejected) and result.rejection.reason is RejectReason.EMPTY_TEXT
    )
