"""gateway.log: JSON lines, masked numbers, no secrets, no message text above debug."""

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.log import configure_logging, get_logger, mask_number, redact_event


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Logging configured into a buffer, restored to stderr afterwards."""
    buffer = io.StringIO()
    configure_logging("info", stream=buffer)
    yield buffer
    configure_logging("info")


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


# ---------------------------------------------------------------------------- mask_number


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("+8613800138000", "+86138****8000"),
        ("13800138000", "138****8000"),
        ("8613800138000", "861******8000"),
        ("+14155552671", "+1415****671"),
        ("+447911123456", "+44791****456"),
        ("to +8613800138000 and 13900139000.", "to +86138****8000 and 139****9000."),
        ("验证码已发送至13800138000，请查收", "验证码已发送至138****8000，请查收"),
        ("【Brand】您的验证码是123456，5分钟内有效", "【Brand】您的验证码是123456，5分钟内有效"),
        ('{"to": "+8613800138000", "id": "12345"}', '{"to": "+86138****8000", "id": "12345"}'),
        ("{'from': '8613800138000'}", "{'from': '861******8000'}"),
        ("1234567", "1****67"),
        ("123456", "123456"),
        ("id abc-123 seq 42", "id abc-123 seq 42"),
        ("2026-11-23T10:00:00.123456789+08:00", "2026-11-23T10:00:00.123456789+08:00"),
        ("2026-11-23T02:00:00.123456Z", "2026-11-23T02:00:00.123456Z"),
        ("20261123T100000Z", "20261123T100000Z"),
        ("０１２３４５６７８９０", "０１２****７８９０"),
        ("", ""),
    ],
)
def test_mask_number_vectors(text: str, masked: str) -> None:
    assert mask_number(text) == masked


def test_mask_keeps_length_of_national_numbers() -> None:
    for digits in range(7, 16):
        number = "9" * digits
        assert len(mask_number(number)) == digits
        assert mask_number(number).count("*") >= 4


NUMBER = st.from_regex(r"\+?[1-9][0-9]{10,14}", fullmatch=True)
FILLER = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(st.lists(st.tuples(FILLER, NUMBER), min_size=1, max_size=5), FILLER)
def test_no_eleven_digit_number_survives(pieces: list[tuple[str, str]], tail: str) -> None:
    text = "".join(a + b for a, b in pieces) + tail
    assert not re.search(r"\d{11}", mask_number(text))


@given(st.text())
def test_no_eleven_digit_run_survives_in_any_text(text: str) -> None:
    assert not re.search(r"\d{11}", mask_number(text))


@given(NUMBER)
def test_mask_keeps_at_most_seven_digits_of_a_number(number: str) -> None:
    assert sum(c.isdigit() for c in mask_number(number)) <= 7 + 3  # country code, 3 first, 4 last


# ---------------------------------------------------------------------------- the processor


def test_redact_event_masks_drops_secrets_and_text() -> None:
    event = {
        "event": "submit to 13800138000",
        "to": "+8613800138000",
        "password": "hunter2",
        "mqtt_password": "hunter3",
        "token": "t0k",
        "text": "您的验证码是 482913",
        "short_message": b"hello",
        "nested": {"secret": "x", "numbers": ["13800138000", 13800138000], "payload": "body"},
        "tokens_available": 3,
        "parts": 2,
    }
    out = redact_event(None, "info", dict(event))
    assert out["event"] == "submit to 138****8000"
    assert out["to"] == "+86138****8000"
    assert out["password"] == out["mqtt_password"] == out["token"] == "***"
    assert out["text"] == "<redacted 13 chars>"
    assert out["short_message"] == "<redacted 5 chars>"
    assert out["nested"] == {"secret": "***", "numbers": ["138****8000", 13800138000], "payload": "<redacted 4 chars>"}
    assert out["tokens_available"] == 3 and out["parts"] == 2


def test_redact_event_keeps_text_at_debug_but_still_masks() -> None:
    out = redact_event(None, "debug", {"text": "call 13800138000", "password": "p"})
    assert out == {"text": "call 138****8000", "password": "***"}


# ---------------------------------------------------------------------------- configured output


def test_json_lines_with_masking(stream: io.StringIO) -> None:
    log = get_logger("gateway.test")
    log.info("accepted", id="m-1", to="+8613800138000", text="code 482913", password="pw")
    log.debug("not shown at info", to="+8613800138000")
    [line] = lines(stream)
    assert line["event"] == "accepted"
    assert line["level"] == "info"
    assert line["logger"] == "gateway.test"
    assert line["to"] == "+86138****8000"
    assert line["text"] == "<redacted 11 chars>"
    assert line["password"] == "***"
    assert str(line["timestamp"]).endswith("Z")
    assert "482913" not in stream.getvalue() and "8613800138000" not in stream.getvalue()


def test_debug_level_shows_text(stream: io.StringIO) -> None:
    configure_logging("debug", stream=stream)
    get_logger("gateway.test").debug("mo", text="STOP", sender="+8613800138000")
    [line] = lines(stream)
    assert line["text"] == "STOP" and line["sender"] == "+86138****8000"


def test_reconfigure_changes_level_of_existing_loggers(stream: io.StringIO) -> None:
    log = get_logger("gateway.test")
    configure_logging("error", stream=stream)
    log.info("dropped")
    log.error("kept")
    assert [line["event"] for line in lines(stream)] == ["kept"]


def test_stdlib_logging_goes_through_the_same_redaction(stream: io.StringIO) -> None:
    logging.getLogger("aiomqtt.test").warning("connect failed for %s password=%s", "13800138000", "x")
    [line] = lines(stream)
    assert line["event"] == "connect failed for 138****8000 password=x"
    assert line["logger"] == "aiomqtt.test" and line["level"] == "warning"


def test_exceptions_are_rendered_and_masked(stream: io.StringIO) -> None:
    try:
        raise ValueError("bad number 13800138000")
    except ValueError:
        get_logger("gateway.test").exception("failed")
    [line] = lines(stream)
    assert "ValueError: bad number 138****8000" in str(line["exception"])


def test_unknown_level_is_rejected() -> None:
    with pytest.raises(ValueError):
        configure_logging("loud")
