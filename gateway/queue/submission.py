"""Parse and validate one `{prefix}/submit` payload: bytes in, a decision out, never an exception.

Pure (no I/O, the clock is a parameter). The ingress calls `parse_submission` for every MQTT
message and routes the result three ways (CONTRACT.md, MQTT section):

- `Submission`: valid and normalised (`to` in E.164), handed to the admit callback;
- `Rejected(id, Rejection)`: the id is known, so the refusal is an event `rejected` on
  `{prefix}/events/{id}` and the id is recorded like any other (idempotency covers rejected ids);
- `Unparseable(reason, detail, raw)`: no usable id (not JSON, not an object, bad or missing `id`),
  so the refusal goes to `{prefix}/rejected` with the first 1,024 characters of the payload.

Hostile input (issue 8) is bounded before any real work: payloads over `MAX_PAYLOAD_BYTES` are
refused without being parsed, nesting is capped by orjson (depth 1024, raises cleanly; a
RecursionError is caught anyway), strings are length-checked before regexes or phonenumbers see
them, and every detail quotes at most a short, sanitised prefix of what it complains about.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from datetime import UTC, datetime, timedelta
from typing import Final

import orjson
import phonenumbers
from phonenumbers import NumberParseException, ValidationResult

from gateway.model import Priority, Rejection, RejectReason, Submission

# A submission is a few hundred bytes; 64 KiB leaves room for a maximal text in UCS-2 escapes
# (5,000 chars x "\\uXXXX" = 30 KB) and refuses megabyte payloads before parsing them.
MAX_PAYLOAD_BYTES: Final = 64 * 1024
# Hard cap on `text` in characters. The part-based check (max_parts per carrier, GSM vs UCS-2)
# is the text module's; this one only keeps absurd texts (10,000 characters) out of the store.
# 5,000 GSM characters are 33 parts of 153, well above any carrier's max_parts.
MAX_TEXT_CHARS: Final = 5_000
RAW_CHARS: Final = 1_024  # `raw` of {prefix}/rejected: the first 1,024 characters (CONTRACT.md)
MAX_VALIDITY_S: Final = 7 * 24 * 3600  # beyond a week an SMS is never worth sending
MAX_NOT_BEFORE_AHEAD: Final = timedelta(days=366)
MAX_CLIENT_CHARS: Final = 64
MAX_NUMERIC_SENDER: Final = 20  # SMPP source_addr is a C-octet string of 21 with its NUL
MAX_ALPHA_SENDER: Final = 11  # GSM 03.40 alphanumeric originator

ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_NUMBER_SEPARATORS: Final = str.maketrans("", "", " -.()\u00a0")
_DIGITS_RE: Final = re.compile(r"\+?[0-9]+")
_NUMERIC_SENDER_RE: Final = re.compile(r"\+?[0-9]{1,%d}" % MAX_NUMERIC_SENDER)
_PRINTABLE_ASCII_RE: Final = re.compile(r"[\x20-\x7e]+")


@dataclass(frozen=True, slots=True)
class Rejected:
    """A refusal of a submission whose `id` is valid: published as event `rejected` on its id."""

    id: str
    rejection: Rejection


@dataclass(frozen=True, slots=True)
class Unparseable:
    """A payload with no usable id: published on `{prefix}/rejected`, never silently dropped."""

    reason: RejectReason  # INVALID_JSON or INVALID_ID
    detail: str
    raw: str  # payload decoded as UTF-8 with replacement, first RAW_CHARS characters


ParseResult = Submission | Rejected | Unparseable


def raw_prefix(payload: bytes) -> str:
    """The first 1,024 characters of the payload as UTF-8 with replacement.

    A character takes at most 4 bytes and each invalid byte becomes one U+FFFD, so the first
    4,096 bytes always hold the first 1,024 characters: a 1 MB payload is never decoded whole.
    """
    return payload[: RAW_CHARS * 4].decode("utf-8", "replace")[:RAW_CHARS]


def parse_submission(payload: bytes, *, now: datetime | None = None) -> ParseResult:
    """Decide what one submit payload is. Never raises (hypothesis checks any bytes).

    `now` (aware) bounds how far ahead `not_before` may be; default: the current UTC time.
    """
    try:
        return _parse(payload, now)
    except Exception as exc:  # noqa: BLE001 - last line of defence: a bug must not kill ingress
        return Unparseable(
            RejectReason.INVALID_JSON, f"payload could not be processed ({type(exc).__name__})",
            raw_prefix(payload),
        )


# The id of an oversized payload, read without parsing it: only when `id` is the object's first
# key with a plain string value (what every JSON encoder writes for {"id": ..., ...} first), so
# the match is certainly the top-level id. Anything else goes to `{prefix}/rejected`.
_LEADING_ID: Final = re.compile(rb'\s*\{\s*"id"\s*:\s*"([A-Za-z0-9._:-]{1,64})"\s*[,}]')


def _parse(payload: bytes, now: datetime | None) -> ParseResult:
    if len(payload) > MAX_PAYLOAD_BYTES:
        leading = _LEADING_ID.match(payload, 0, 4096)
        if leading is not None:  # the client waits on events/{id}: answer there
            return Rejected(leading.group(1).decode("ascii"), Rejection(
                RejectReason.TOO_LONG,
                f"payload of {len(payload):,} bytes exceeds the limit of {MAX_PAYLOAD_BYTES:,} "
                "bytes (not parsed)",
                {"length": len(payload), "max_length": MAX_PAYLOAD_BYTES}))
        return Unparseable(
            RejectReason.INVALID_JSON,
            f"payload of {len(payload):,} bytes exceeds the limit of {MAX_PAYLOAD_BYTES:,} bytes",
            raw_prefix(payload),
        )
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        # orjson reports invalid UTF-8, lone surrogates, depth > 1024 and syntax errors here.
        return Unparseable(RejectReason.INVALID_JSON, f"not valid JSON: {exc}", raw_prefix(payload))
    except RecursionError:  # orjson caps depth itself; kept in case a future version does not
        return Unparseable(RejectReason.INVALID_JSON, "JSON nested too deeply", raw_prefix(payload))
    if not isinstance(doc, dict):
        return Unparseable(
            RejectReason.INVALID_JSON,
            f"expected a JSON object, got {_json_type(doc)}",
            raw_prefix(payload),
        )

    msg_id = doc.get("id")
    if msg_id is None:
        return Unparseable(RejectReason.INVALID_ID, "id is missing", raw_prefix(payload))
    if not isinstance(msg_id, str):
        return Unparseable(
            RejectReason.INVALID_ID, f"id must be a string, got {_json_type(msg_id)}",
            raw_prefix(payload),
        )
    if ID_RE.fullmatch(msg_id) is None:
        return Unparseable(RejectReason.INVALID_ID, _id_problem(msg_id), raw_prefix(payload))

    outcome = _validate(doc, msg_id, now)
    if isinstance(outcome, Rejection):
        return Rejected(msg_id, outcome)
    return outcome


def _validate(doc: dict[str, object], msg_id: str, now: datetime | None) -> Submission | Rejection:
    """Field checks in a fixed order so that the same payload always gets the same reason."""
    to = normalise_number(doc.get("to"))
    if isinstance(to, Rejection):
        return to

    text = doc.get("text")
    if text is None:
        return Rejection(RejectReason.EMPTY_TEXT, "text is missing")
    if not isinstance(text, str):
        return _invalid_field("text", f"text must be a string, got {_json_type(text)}")
    if not text.strip():
        return Rejection(RejectReason.EMPTY_TEXT, "text is empty")
    if len(text) > MAX_TEXT_CHARS:
        return Rejection(
            RejectReason.TOO_LONG,
            f"text of {len(text):,} characters exceeds the limit of {MAX_TEXT_CHARS:,}",
            {"length": len(text), "max_length": MAX_TEXT_CHARS},
        )

    priority = _priority(doc.get("priority"))
    if isinstance(priority, Rejection):
        return priority
    sender = _sender(doc.get("sender"))
    if isinstance(sender, Rejection):
        return sender
    validity_s = _validity(doc.get("validity_s"))
    if isinstance(validity_s, Rejection):
        return validity_s
    not_before = _not_before(doc.get("not_before"), now)
    if isinstance(not_before, Rejection):
        return not_before
    client = _client(doc.get("client"))
    if isinstance(client, Rejection):
        return client

    return Submission(
        id=msg_id,
        to=to,
        text=text,
        priority=priority,
        sender=sender,
        validity_s=validity_s,
        not_before=not_before,
        client=client,
    )


# Numbers recently normalised (OTPs and transactional traffic go to the same numbers again and
# again; phonenumbers costs ~15 µs a number): bounded, ~150 bytes an entry.
NUMBER_CACHE_SIZE: Final = 16_384


def normalise_number(value: object) -> str | Rejection:
    """An international number (`+` optional, `00` accepted) → E.164 with `+`, or the reason not.

    Letters are refused before phonenumbers sees the string: phonenumbers would otherwise turn
    vanity numbers (1-800-FLOWERS) into digits. Spaces, dots, hyphens and parentheses are
    tolerated as formatting. The number must be both possible (length) and valid (an assigned
    range of its country) per phonenumbers' metadata. The outcome of a string is cached (LRU).
    """
    if value is None:
        return Rejection(RejectReason.INVALID_NUMBER, "to is missing")
    if not isinstance(value, str):
        return Rejection(
            RejectReason.INVALID_NUMBER, f"to must be a string, got {_json_type(value)}"
        )
    if len(value) > 40:  # E.164 has at most 15 digits; generous room for formatting
        return Rejection(RejectReason.INVALID_NUMBER, f"to is {len(value)} characters long")
    result = _normalise_text(value)
    # A rejection is handed out as a copy: its `extra` dict must not be shared between callers.
    return result if isinstance(result, str) else Rejection(result.reason, result.detail)


@lru_cache(maxsize=NUMBER_CACHE_SIZE)
def _normalise_text(value: str) -> str | Rejection:
    compact = value.strip().translate(_NUMBER_SEPARATORS)
    if not compact:
        return Rejection(RejectReason.INVALID_NUMBER, "to is empty")
    if _DIGITS_RE.fullmatch(compact) is None:
        if any(c.isalpha() for c in compact):
            return Rejection(RejectReason.INVALID_NUMBER, "to contains letters")
        return Rejection(
            RejectReason.INVALID_NUMBER, "to may hold only digits, a leading + and separators"
        )
    digits = compact.removeprefix("+")
    if not compact.startswith("+") and digits.startswith("00"):
        digits = digits[2:]  # international call prefix used in most of the world
    if len(digits) > 15:
        return Rejection(
            RejectReason.INVALID_NUMBER, f"to has {len(digits)} digits; E.164 allows at most 15"
        )
    try:
        number = parse_international(digits)
    except NumberParseException as exc:
        problem = _PARSE_ERRORS.get(exc.error_type, "not an international number")
        return Rejection(RejectReason.INVALID_NUMBER, f"to is not a valid number: {problem}")
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible not in (ValidationResult.IS_POSSIBLE, ValidationResult.IS_POSSIBLE_LOCAL_ONLY):
        return Rejection(
            RejectReason.INVALID_NUMBER,
            f"to is not a possible number for +{number.country_code}: "
            f"{_POSSIBLE_REASONS.get(possible, 'wrong length')}",
        )
    if not phonenumbers.is_valid_number(number):
        region = phonenumbers.region_code_for_number(number) or "an unknown region"
        return Rejection(
            RejectReason.INVALID_NUMBER,
            f"to is not a valid number for +{number.country_code} ({region}): "
            "no such number range",
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def parse_international(digits: str) -> phonenumbers.PhoneNumber:
    """`phonenumbers.parse("+" + digits, None)` for a string of ASCII digits, ~2x faster.

    The first steps of `parse` (RFC 3966 context, extracting the number from text, the viability
    regex, the extension) change nothing on "+" and plain digits; this does the rest as `parse`
    does, with the internals of the pinned phonenumbers (pyproject). Anything unusual (too short
    to be sure, any error) goes through `parse` itself, so that errors are exactly its own;
    tests/unit check the outcome equals `parse` over every country code.
    """
    if _pn is None or len(digits) < 4:
        return phonenumbers.parse("+" + digits, None)
    try:
        numobj = phonenumbers.PhoneNumber()
        country_code, national = _pn._maybe_extract_country_code("+" + digits, None, False,
                                                                 numobj)
        metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(
            country_code, phonenumbers.region_code_for_country_code(country_code))
        if metadata is None or len(national) < _pn._MIN_LENGTH_FOR_NSN:
            raise LookupError
        _, stripped, _ = _pn._maybe_strip_national_prefix_carrier_code(national, metadata)
        if _pn._test_number_length(stripped, metadata) not in _KEEP_UNSTRIPPED:
            national = stripped
        if not _pn._MIN_LENGTH_FOR_NSN <= len(national) <= _pn._MAX_LENGTH_FOR_NSN:
            raise LookupError
        _pn._set_italian_leading_zeros_for_phone_number(national, numobj)
        numobj.national_number = int(national)
        return numobj
    except Exception:  # noqa: BLE001 - `parse` decides, and raises its own error
        return phonenumbers.parse("+" + digits, None)


try:
    import phonenumbers.phonenumberutil as _pn

    _KEEP_UNSTRIPPED: Final = (ValidationResult.TOO_SHORT, ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
                               ValidationResult.INVALID_LENGTH)
    for _name in ("_maybe_extract_country_code", "_maybe_strip_national_prefix_carrier_code",
                  "_test_number_length", "_set_italian_leading_zeros_for_phone_number",
                  "_MIN_LENGTH_FOR_NSN", "_MAX_LENGTH_FOR_NSN"):
        getattr(_pn, _name)
except (ImportError, AttributeError):  # another phonenumbers: the plain `parse`
    _pn = None  # type: ignore[assignment]


_PARSE_ERRORS: Final = {
    NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
    NumberParseException.TOO_SHORT_NSN: "too short",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    NumberParseException.TOO_LONG: "too long",
}
_POSSIBLE_REASONS: Final = {
    ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.TOO_LONG: "too long",
    ValidationResult.INVALID_LENGTH: "invalid length",
}

def _priority(value: object) -> Priority | Rejection:
    if value is None:
        return Priority.TRANSACTIONAL
    if not isinstance(value, str):
        return _invalid_field("priority", f"priority must be a string, got {_json_type(value)}")
    if len(value) <= 20:
        try:
            return Priority.parse(value)
        except ValueError:
            pass
    return _invalid_field(
        "priority", f"priority {_quote(value)} is not one of otp, transactional, marketing"
    )


def _sender(value: object) -> str | None | Rejection:
    """Numeric senders (`+` optional) up to 20 digits; alphanumeric ones up to 11 ASCII chars."""
    if value is None or value == "":
        return None  # the carrier's default_sender applies
    if not isinstance(value, str):
        return _invalid_field("sender", f"sender must be a string, got {_json_type(value)}")
    if _NUMERIC_SENDER_RE.fullmatch(value):
        return value
    if _PRINTABLE_ASCII_RE.fullmatch(value) is None or not value.strip():
        return _invalid_field("sender", "sender must be printable ASCII")
    if len(value) > MAX_ALPHA_SENDER:
        return _invalid_field(
            "sender",
            f"an alphanumeric sender has at most {MAX_ALPHA_SENDER} characters, got {len(value)}",
        )
    return value


def _validity(value: object) -> int | None | Rejection:
    if value is None:
        return None
    # bool is an int in Python, and JSON true is certainly not a duration.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return _invalid_field(
            "validity_s", f"validity_s must be an integer, got {_json_type(value)}"
        )
    if not 1 <= value <= MAX_VALIDITY_S:
        return _invalid_field(
            "validity_s", f"validity_s must be between 1 and {MAX_VALIDITY_S}, got {value}"
        )
    return value


def _not_before(value: object, now: datetime | None) -> datetime | None | Rejection:
    """ISO 8601 with an offset. A naive time is refused: guessing UTC (or the policy timezone)
    would silently shift a scheduled send by hours."""
    if value is None:
        return None
    if not isinstance(value, str):
        return _invalid_field(
            "not_before", f"not_before must be an ISO 8601 string, got {_json_type(value)}"
        )
    if len(value) > 40:
        return _invalid_field("not_before", "not_before is not an ISO 8601 time")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return _invalid_field("not_before", f"not_before {_quote(value)} is not an ISO 8601 time")
    if when.tzinfo is None or when.utcoffset() is None:
        return _invalid_field(
            "not_before",
            f"not_before {_quote(value)} has no UTC offset (write e.g. 2026-11-23T10:00:00+08:00)",
        )
    now = now if now is not None else datetime.now(UTC)
    try:
        too_far = when - now > MAX_NOT_BEFORE_AHEAD
    except OverflowError:
        too_far = True
    if too_far:
        return _invalid_field(
            "not_before", f"not_before is more than {MAX_NOT_BEFORE_AHEAD.days} days ahead"
        )
    return when


def _client(value: object) -> str | None | Rejection:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return _invalid_field("client", f"client must be a string, got {_json_type(value)}")
    if len(value) > MAX_CLIENT_CHARS or not value.isprintable():
        return _invalid_field(
            "client", f"client must be at most {MAX_CLIENT_CHARS} printable characters"
        )
    return value


def _invalid_field(name: str, detail: str) -> Rejection:
    return Rejection(RejectReason.INVALID_FIELD, detail, {"field": name})


def _id_problem(msg_id: str) -> str:
    if not msg_id:
        return "id is empty"
    if len(msg_id) > 64:
        return f"id has {len(msg_id)} characters; at most 64 of A-Za-z0-9._:- are allowed"
    bad = next(c for c in msg_id if ID_RE.fullmatch(c) is None)
    return f"id holds {bad!r}; only A-Za-z0-9._:- are allowed"


def _quote(value: str, limit: int = 40) -> str:
    """A short, printable rendering of user input for a detail message."""
    shown = value if len(value) <= limit else value[:limit] + "…"
    return repr(shown)


def _json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "an object"
    return type(value).__name__
