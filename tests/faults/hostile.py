"""Hostile-input material for the fault suite: the hypothesis strategies for submit payloads, the
fixed list of hand-made hostile payloads (1 MB, 100,000 levels of nesting, invalid UTF-8, ...), and
what the contract says each one must produce.

`expected_outcome(payload)` is an independent reading of CONTRACT.md (MQTT section): a payload whose
JSON is an object with a valid `id` gets events on `{prefix}/events/{id}`; anything else gets one
`{prefix}/rejected` message with `invalid_json` or `invalid_id`. It deliberately does not call the
gateway's parser, so a test comparing the two catches a parser that routes a payload wrongly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from gateway.queue.submission import MAX_PAYLOAD_BYTES

ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
VALID_TO = "+8613800138000"


@dataclass(frozen=True)
class Expected:
    """Where the answer to one payload goes: events of `id`, or `{prefix}/rejected`."""

    id: str | None  # None: a {prefix}/rejected message
    reason: str | None = None  # for {prefix}/rejected: invalid_json | invalid_id


def _refuse(value: str) -> Any:  # noqa: ANN401
    raise ValueError(f"not JSON (RFC 8259): {value}")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value


def _strings_encodable(value: Any) -> bool:  # noqa: ANN401
    """False when a string holds a lone surrogate (`"\\ud800"`): not Unicode text."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return True


def expected_outcome(payload: bytes) -> Expected:
    """What CONTRACT.md promises for `payload`, read without the gateway's code: strict JSON
    (RFC 8259: no NaN or Infinity, no number beyond a double, no lone surrogate) in UTF-8.

    One gateway choice is taken as given: a payload above `MAX_PAYLOAD_BYTES` (64 KiB) is not
    parsed: when it starts with `{"id": "<valid id>"` it is rejected `too_long` on that id (the
    first key is certainly the top-level one), otherwise `invalid_json` on `{prefix}/rejected`."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        leading = re.match(rb'\s*\{\s*"id"\s*:\s*"([A-Za-z0-9._:-]{1,64})"\s*[,}]', payload[:4096])
        if leading is not None:
            return Expected(leading.group(1).decode(), "too_long")
        return Expected(None, "invalid_json")
    try:
        doc = json.loads(payload.decode("utf-8"), parse_constant=_refuse, parse_float=_finite)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return Expected(None, "invalid_json")
    if not _strings_encodable(doc):
        return Expected(None, "invalid_json")
    if not isinstance(doc, dict):
        return Expected(None, "invalid_json")
    msg_id = doc.get("id")
    if not isinstance(msg_id, str) or ID_RE.fullmatch(msg_id) is None:
        return Expected(None, "invalid_id")
    return Expected(msg_id)


# ----------------------------------------------------------------------------- fixed payloads

@dataclass(frozen=True)
class Hostile:
    """One hand-made hostile payload and the answer it must get: `event` is the status (and
    `reason` the reason) of the final event on its id, or None for a `{prefix}/rejected` message
    with `reason`."""

    payload: bytes
    event: str | None
    reason: str | None = None


def hostile_payloads(tag: str) -> dict[str, Hostile]:
    """Named hostile payloads; those with a usable id use the id `{tag}-{name}`."""

    def doc(name: str, **fields: Any) -> bytes:
        return json.dumps({"id": f"{tag}-{name}", **fields}, ensure_ascii=False).encode()

    def raw_doc(name: str, rest: bytes) -> bytes:
        return b'{"id": "' + f"{tag}-{name}".encode() + b'", ' + rest

    def rejected(reason: str, payload: bytes) -> Hostile:
        return Hostile(payload, "rejected", reason)

    def unparseable(reason: str, payload: bytes) -> Hostile:
        return Hostile(payload, None, reason)

    base = {"to": VALID_TO, "text": "hostile"}
    field_reason = {"to": "invalid_number", "text": "invalid_field"}
    cases: dict[str, Hostile] = {}
    for field, values in {
        "to": [13800138000, None, ["+8613800138000"], {"n": 1}, True, ""],
        "text": [42, None, ["a"], {"t": "x"}, False, "   "],
        "priority": [1, ["otp"], {"p": 1}, True, "urgent", ""],
        "sender": [123, ["s"], {"s": 1}, True, "x" * 40, "\u0000bad"],
        "validity_s": ["300", [300], {"v": 1}, True, -5, 10**30, 1.5],
        "not_before": [12345, ["2026"], {"t": 1}, True, "tomorrow", "2026-11-23T10:00:00"],
        "client": [1, ["c"], {"c": 1}, True, "c" * 200],
    }.items():
        for i, value in enumerate(values):
            name = f"type-{field}-{i}"
            reason = field_reason.get(field, "invalid_field")
            if field == "text" and (value is None or value == "   "):
                reason = "empty_text"  # a missing or blank text is empty, not mistyped
            cases[name] = rejected(reason, doc(name, **{**base, field: value}))

    return {
        # Mosquitto's message_size_limit is 0 (none) by default: 1 MB passes the broker. The
        # gateway parses nothing above 64 KiB; a leading id still gets its `rejected` event.
        "one-megabyte-valid-id": rejected(
            "too_long", doc("one-megabyte-valid-id", to=VALID_TO, text="x" * 1_000_000)),
        "one-megabyte-no-id": unparseable("invalid_json", b'{"text": "' + b"y" * 1_000_000 + b'"}'),
        "one-megabyte-garbage": unparseable("invalid_json", bytes(range(256)) * 4096),
        "nested-100k-arrays": unparseable("invalid_json", b"[" * 100_000),
        "nested-100k-closed": unparseable("invalid_json", b"[" * 100_000 + b"]" * 100_000),
        "nested-100k-objects": unparseable("invalid_json",
                                           b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
        "nested-5k-in-field": unparseable("invalid_json", raw_doc(
            "nested-5k-in-field", b'"to": "+8613800138000", "text": "x", "client": '
            + b"[" * 5_000 + b"]" * 5_000 + b"}")),
        "invalid-utf8": unparseable("invalid_json", raw_doc(
            "invalid-utf8", b'"to": "+8613800138000", "text": "\xff\xfe\xc3\x28 bad"}')),
        "invalid-utf8-no-id": unparseable("invalid_json", b"\xff\xfe\xfd\x80\x81 not json \xc3\x28"),
        "lone-surrogate": unparseable("invalid_json", raw_doc(
            "lone-surrogate", b'"to": "+8613800138000", "text": "\\ud800"}')),
        "number-with-letters": rejected("invalid_number",
                                        doc("number-with-letters", to="+86138ABC38000", text="x")),
        "number-vanity": rejected("invalid_number", doc("number-vanity", to="1-800-FLOWERS", text="x")),
        "number-too-long": rejected("invalid_number",
                                    doc("number-too-long", to="+86" + "1" * 60, text="x")),
        "number-unassigned": rejected("invalid_number",
                                      doc("number-unassigned", to="+999123456789", text="x")),
        "text-10000-ucs2": rejected("too_long", doc("text-10000-ucs2", to=VALID_TO, text="长" * 10_000)),
        "text-10000-gsm": rejected("too_long", doc("text-10000-gsm", to=VALID_TO, text="a" * 10_000)),
        "empty-payload": unparseable("invalid_json", b""),
        "whitespace-payload": unparseable("invalid_json", b"   \n\t "),
        "json-null": unparseable("invalid_json", b"null"),
        "json-number": unparseable("invalid_json", b"12345"),
        "json-string": unparseable("invalid_json", b'"just a string"'),
        "json-array": unparseable("invalid_json",
                                  json.dumps([{"id": f"{tag}-in-array", **base}]).encode()),
        "json-true": unparseable("invalid_json", b"true"),
        "id-missing": unparseable("invalid_id", json.dumps(base).encode()),
        "id-number": unparseable("invalid_id", json.dumps({"id": 12345, **base}).encode()),
        "id-too-long": unparseable("invalid_id", json.dumps({"id": "a" * 65, **base}).encode()),
        "id-bad-chars": unparseable("invalid_id", json.dumps({"id": "a/b#c", **base}).encode()),
        "id-empty": unparseable("invalid_id", json.dumps({"id": "", **base}).encode()),
        "id-null": unparseable("invalid_id", json.dumps({"id": None, **base}).encode()),
        "text-missing": rejected("empty_text", doc("text-missing", to=VALID_TO)),
        "to-missing": rejected("invalid_number", doc("to-missing", text="x")),
        "huge-integer": unparseable("invalid_json", raw_doc(
            "huge-integer", b'"to": "+8613800138000", "text": "x", "validity_s": ' + b"9" * 5_000 + b"}")),
        "nan": unparseable("invalid_json", raw_doc(
            "nan", b'"to": "+8613800138000", "text": "x", "validity_s": NaN}')),
        # Valid, if odd: the last duplicate key wins (as in every mainstream JSON parser).
        "duplicate-keys": Hostile(raw_doc(
            "duplicate-keys", b'"to": 1, "to": "+8613800138000", "text": "", "text": "dup"}'),
            "delivered"),
        "nul-in-text": Hostile(raw_doc(
            "nul-in-text", b'"to": "+8613800138000", "text": "a\\u0000b"}'), "delivered"),
        **cases,
    }


# ------------------------------------------------------------------------------ strategies

_JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
)
_JSON = st.recursive(_JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
_NUMBERISH = st.one_of(
    st.from_regex(r"\+?(86|1|44|49)?[0-9 ()\-.]{0,16}", fullmatch=True),
    st.from_regex(r"\+?[0-9]{3,12}[A-Za-z]{1,3}[0-9]{0,4}", fullmatch=True),
    st.just(VALID_TO), st.just("+8613912345678"), st.text(max_size=20),
)


_RIGHT: dict[str, st.SearchStrategy[Any]] = {
    "to": st.sampled_from([VALID_TO, "+8613912345678", "8613800138000", "+44 7700 900123",
                           "+1 (415) 555-2671", "0086 138 0013 8000"]),
    "text": st.text(min_size=1, max_size=200).filter(str.strip),
    "priority": st.sampled_from(["otp", "transactional", "marketing"]),
    "sender": st.sampled_from(["Brand", "10690", "+8610690", ""]),
    "validity_s": st.integers(60, 86_400),
    "not_before": st.sampled_from(["2026-01-01T10:00:00+08:00", "2020-02-29T00:00:00Z"]),
    "client": st.sampled_from(["billing", "ops"]),
}
_WRONG: dict[str, st.SearchStrategy[Any]] = {
    "to": _NUMBERISH | _JSON,
    "text": st.text(max_size=20).map(lambda t: " " * len(t)) | _JSON,
    "priority": st.sampled_from(["OTP ", "x", "urgent"]) | _JSON,
    "sender": st.from_regex(r"[A-Za-z0-9+ ]{12,30}", fullmatch=True) | _JSON,
    "validity_s": st.integers(-10, 0) | st.integers(10**7, 10**9) | _JSON,
    "not_before": st.sampled_from(["2026-11-23T10:00:00", "yesterday",
                                   "9999-12-31T23:59:59+00:00"]) | _JSON,
    "client": st.text(min_size=65, max_size=80) | st.just("a\nb") | _JSON,
}


@st.composite
def submission_objects(draw: st.DrawFn, id_prefix: str = "") -> dict[str, Any]:
    """JSON objects shaped like submissions: each field right, wrong or absent (right most
    often, so that a good share passes every check but one, or all of them)."""
    doc: dict[str, Any] = {}
    how = draw(st.integers(0, 9))
    if how < 7:
        doc["id"] = id_prefix + draw(st.from_regex(r"[A-Za-z0-9._:-]{1,20}", fullmatch=True))
    elif how < 9:
        doc["id"] = draw(st.text(max_size=70) | _JSON)
    for key in _RIGHT:
        roll = draw(st.integers(0, 9))
        required = key in ("to", "text")
        if roll < (8 if required else 3):
            doc[key] = draw(_RIGHT[key])
        elif roll < (9 if required else 5):
            doc[key] = draw(_WRONG[key])
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.text(max_size=8))] = draw(_JSON)  # unknown keys are ignored
    return doc


def _dumps(doc: Any) -> bytes:  # noqa: ANN401
    try:
        return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
    except (ValueError, TypeError):
        return b"{}"


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A payload with a few bytes replaced, inserted or cut."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "cut"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[pos:pos + draw(st.integers(1, 8))]
    return bytes(data)


@st.composite
def payloads(draw: st.DrawFn, id_prefix: str = "") -> bytes:
    """Any submit payload: mostly submission-like objects (each field right, wrong or absent),
    then mutations of them (near misses reach the deepest checks), raw bytes, JSON of any shape
    and text."""
    objects = submission_objects(id_prefix).map(_dumps)
    kind = draw(st.sampled_from(["object"] * 6 + ["mutated", "bytes", "json", "text"]))
    if kind == "object":
        return draw(objects)
    if kind == "mutated":
        return draw(mutated(objects))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return _dumps(draw(_JSON))
    return draw(st.text(max_size=100)).encode("utf-8", "surrogatepass")
