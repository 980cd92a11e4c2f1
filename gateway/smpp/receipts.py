"""Delivery receipts: is this deliver_sm / data_sm a receipt, what does it say, for which part.

Owns: the esm_class message-type decision (receipt vs MO), reading a receipt from its TLVs
(receipted_message_id, message_state, network_error_code) or from the SMPP 3.4 Appendix B text
form (`id:… sub:… dlvrd:… submit date:… done date:… stat:… err:… text:…`), and the message-id
normalisation used to match a receipt to the part it reports on. Pure functions of plain values
(no dependency on pdu.py internals, no I/O, no clock); garbage in gives a named value out, never
an exception.

Formatting the text form (`format_receipt_text`) lives here too so that the simulator writes the
exact dialect this module reads.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from gateway.model import ReceiptState

__all__ = [
    "MessageType",
    "IdConversion",
    "Receipt",
    "NotAReceipt",
    "UnparseableReceipt",
    "ReceiptResult",
    "TlvMap",
    "message_type",
    "is_receipt_esm_class",
    "parse_deliver",
    "parse_receipt_text",
    "parse_state_word",
    "canonical_id",
    "candidate_ids",
    "format_receipt_text",
    "format_receipt_date",
]


# ---------------------------------------------------------------------------------------------
# esm_class


class MessageType(enum.IntEnum):
    """Message-type bits (2..5, mask 0x3C) of a deliver_sm / data_sm esm_class (SMPP 3.4 5.2.12)."""

    DEFAULT = 0x00  # an ordinary (MO) short message
    SMSC_DELIVERY_RECEIPT = 0x04
    SME_DELIVERY_ACK = 0x08
    SME_MANUAL_ACK = 0x10
    CONVERSATION_ABORT = 0x18  # Korean CDMA
    INTERMEDIATE_NOTIFICATION = 0x20


_MESSAGE_TYPE_MASK = 0x3C

# Which message types carry a delivery receipt for an MT we sent. 0x04 is the final receipt
# (registered_delivery 1); 0x20 is an intermediate notification (registered_delivery bit 4),
# normally ENROUTE/ACCEPTD, which the caller records but which is not final. 0x08 (SME delivery
# ack) is treated as a receipt too, as Kannel does (smsc_smpp.c tests esm_class & (0x04|0x08|0x20)):
# some SMSCs set it on ordinary receipts, and it is never a handset's MO text.
_RECEIPT_TYPES = frozenset(
    {
        MessageType.SMSC_DELIVERY_RECEIPT,
        MessageType.SME_DELIVERY_ACK,
        MessageType.INTERMEDIATE_NOTIFICATION,
    }
)


def message_type(esm_class: int) -> MessageType | None:
    """The esm_class's message type, or None for a combination SMPP 3.4 does not define."""
    try:
        return MessageType(esm_class & _MESSAGE_TYPE_MASK)
    except ValueError:
        return None


def is_receipt_esm_class(esm_class: int) -> bool:
    """True when esm_class marks a delivery receipt / notification rather than an MO message."""
    return message_type(esm_class) in _RECEIPT_TYPES


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a delivery receipt says about one part.

    `message_id` is exactly as the carrier wrote it (stripped); match it with `candidate_ids`.
    `error` is the text form's `err:` value as given (e.g. "000", "0x0b"), `network_error_type`
    and `network_error` the network_error_code TLV (type: 1 ANSI-136, 2 IS-95, 3 GSM, ...; code:
    the 2-octet error). Dates are the SMSC's local time with no zone (the text form has none).
    The `text:` field is deliberately not kept: it is the first 20 characters of the message,
    which for an OTP is the code itself (CONTRACT: no message text in logs or after finality).
    """

    message_id: str
    state: ReceiptState
    error: str | None = None
    network_error: int | None = None
    network_error_type: int | None = None
    submit_date: datetime | None = None
    done_date: datetime | None = None
    intermediate: bool = False  # esm_class said "intermediate delivery notification" (0x20)

    @property
    def is_final(self) -> bool:
        return self.state.part_state is not None


@dataclass(frozen=True, slots=True)
class NotAReceipt:
    """The deliver_sm is an ordinary MO message (or an SME ack): hand it to the MO path."""

    message_type: MessageType | None
    reason: str


@dataclass(frozen=True, slots=True)
class UnparseableReceipt:
    """Marked (or shaped) as a receipt, but no message id or no known state could be read.

    Answer the deliver_sm with status 0 anyway, count and log it (masked); never publish it as an
    MO. `message_id` is set when the id was readable but the state was not.
    """

    reason: str
    message_id: str | None = None


ReceiptResult = Receipt | NotAReceipt | UnparseableReceipt

# TLVs as pdu.py gives them: known ones by name, unknown ones by integer tag. `Any` keys because
# Mapping is invariant in its key type (a dict[str, object] must be accepted too).
TlvMap: TypeAlias = Mapping[Any, object]


# ---------------------------------------------------------------------------------------------
# States

# message_state TLV values (SMPP 3.4 5.3.2.35). 0 (SCHEDULED) and 9 (SKIPPED) are SMPP 5.0 only;
# they are treated as an absent TLV so that the text form, if any, decides.
_TLV_STATES: dict[int, ReceiptState] = {
    1: ReceiptState.ENROUTE,
    2: ReceiptState.DELIVRD,
    3: ReceiptState.EXPIRED,
    4: ReceiptState.DELETED,
    5: ReceiptState.UNDELIV,
    6: ReceiptState.ACCEPTD,
    7: ReceiptState.UNKNOWN,
    8: ReceiptState.REJECTD,
}

# `stat:` words seen in the field, upper-cased with '_', '-' and ' ' removed. The canonical
# 7-letter names (Appendix B) plus their spelled-out message_state names, a few truncations, and
# FAILED (several aggregators write it for UNDELIV). A word not listed is *not* guessed at:
# mapping an unknown word to UNKNOWN would mark a possibly delivered message undeliverable.
_STATE_WORDS: dict[str, ReceiptState] = {
    "ENROUTE": ReceiptState.ENROUTE,
    "ENROUT": ReceiptState.ENROUTE,
    "DELIVRD": ReceiptState.DELIVRD,
    "DELIVERED": ReceiptState.DELIVRD,
    "DELIVER": ReceiptState.DELIVRD,
    "DELIVRED": ReceiptState.DELIVRD,
    "DELIVR": ReceiptState.DELIVRD,
    "EXPIRED": ReceiptState.EXPIRED,
    "EXPIRD": ReceiptState.EXPIRED,
    "DELETED": ReceiptState.DELETED,
    "DELETD": ReceiptState.DELETED,
    "UNDELIV": ReceiptState.UNDELIV,
    "UNDELIVERABLE": ReceiptState.UNDELIV,
    "UNDELIVERED": ReceiptState.UNDELIV,
    "UNDELIVRD": ReceiptState.UNDELIV,
    "UNDELIVR": ReceiptState.UNDELIV,
    "FAILED": ReceiptState.UNDELIV,
    "ACCEPTD": ReceiptState.ACCEPTD,
    "ACCEPTED": ReceiptState.ACCEPTD,
    "UNKNOWN": ReceiptState.UNKNOWN,
    "UNKNOWNN": ReceiptState.UNKNOWN,
    "UNKNWN": ReceiptState.UNKNOWN,
    "REJECTD": ReceiptState.REJECTD,
    "REJECTED": ReceiptState.REJECTD,
}


def parse_state_word(word: str) -> ReceiptState | None:
    """A `stat:` value (any case, abbreviated, or a message_state number 1..8) → state, or None."""
    key = re.sub(r"[\s_\-]", "", word).upper()
    if key.isdigit() and len(key) <= 3:
        return _TLV_STATES.get(int(key))
    return _STATE_WORDS.get(key)


# ---------------------------------------------------------------------------------------------
# Parsing

# Bounds that keep a hostile or broken PDU cheap: short_message is ≤ 254 octets, but
# message_payload may be 64 KiB; no receipt needs more than this.
_MAX_TEXT = 2048
_MAX_ID = 65  # SMPP 3.4: message_id is a C-octet string of at most 65 octets

# One key of the text form, anchored at a word boundary so that e.g. "msgid:" is not "id:".
# Longer alternatives first (submit date before sub). Variants seen in the field:
# "submit date", "submit_date", "submitdate", "Submit Date"; "stat"/"status"; "err"/"error".
_KEY_PATTERN = (
    r"(?<![A-Za-z0-9_])"
    r"(?P<key>id|submit[\s_]*date|done[\s_]*date|sub|dlvrd|stat(?:us)?|err(?:or)?|text)"
    r"\s*:"
)
_KEY_RE = re.compile(_KEY_PATTERN, re.IGNORECASE)
# Matching a lower-cased copy without IGNORECASE is ~2x faster (receipts are a hot path).
_KEY_RE_LOWER = re.compile(_KEY_PATTERN)

# The exact Appendix B layout, which nearly every SMSC sends: one anchored match instead of the
# tolerant scan below (a receipt arrives for every part, so this is on the hot path).
_STANDARD_RE = re.compile(
    r"id:(?P<id>\S+) sub:\S* dlvrd:\S* submit date:(?P<submitdate>\d*)"
    r" done date:(?P<donedate>\d*) stat:(?P<stat>\S+) err:(?P<err>\S*)(?: text:|$)",
    re.IGNORECASE,
)

_KEY_NAMES = {"status": "stat", "stat": "stat", "err": "err", "error": "err"}


def _key_name(raw: str) -> str:
    k = raw.lower()
    if " " in k or "_" in k or "\t" in k or "\n" in k or "\r" in k:
        k = re.sub(r"[\s_]", "", k)
    return _KEY_NAMES.get(k, k)  # id, sub, dlvrd, submitdate, donedate, text, stat, err


def _text_fields(text: str) -> dict[str, str]:
    """Key → raw value of the text form; the first occurrence of a key wins.

    A value runs from its key to the next key. "First wins" keeps a `text:` field that happens
    to contain "id:" or "stat:" (it is the message's own text, last in the standard order) from
    overriding the real fields, and still reads receipts whose fields come in another order.
    """
    standard = _STANDARD_RE.match(text)
    if standard is not None:
        return standard.groupdict()
    lowered = text.lower()
    if len(lowered) == len(text):  # same offsets (lower() can change length outside ASCII)
        matches = list(_KEY_RE_LOWER.finditer(lowered))
    else:
        matches = list(_KEY_RE.finditer(text))
    fields: dict[str, str] = {}
    for i, m in enumerate(matches):
        name = _key_name(m.group("key"))
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        if name not in fields:
            fields[name] = text[m.end() : end].strip()
    return fields


def _first_token(value: str) -> str:
    parts = value.split()
    return parts[0] if parts else ""


def _parse_date(value: str | None) -> datetime | None:
    """YYMMDDhhmm (Appendix B), YYMMDDhhmmss or YYYYMMDDhhmmss (seen in the field); else None."""
    if not value:
        return None
    digits = _first_token(value)
    if not (digits.isascii() and digits.isdigit()) or len(digits) not in (10, 12, 14):
        return None
    # Sliced by hand: strptime costs ~5 µs a call, on every receipt.
    if len(digits) == 14:
        year, rest = int(digits[:4]), digits[4:]
    else:
        yy, rest = int(digits[:2]), digits[2:]
        year = 1900 + yy if yy >= 69 else 2000 + yy  # strptime's %y pivot
    second = int(rest[8:10]) if len(rest) == 10 else 0
    try:
        month, day, hour, minute = int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8])
        return datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None


def _clean_id(value: object) -> str | None:
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("latin-1")
    if not isinstance(value, str):
        return None
    cleaned = value.replace("\x00", "").strip()
    if not cleaned or len(cleaned) > _MAX_ID:
        return None
    return cleaned


def _tlv(tlvs: TlvMap, name: str, tag: int) -> object | None:
    # pdu.py keys known TLVs by name; accept the numeric tag too, in case a codec keeps it raw.
    value = tlvs.get(name)
    if value is None:
        value = tlvs.get(tag)
    return value


def _tlv_state(value: object) -> ReceiptState | None:
    if isinstance(value, bytes | bytearray) and len(value) == 1:
        value = value[0]
    if isinstance(value, int) and not isinstance(value, bool):
        return _TLV_STATES.get(value)
    return None


def _tlv_network_error(value: object) -> tuple[int, int] | None:
    """network_error_code: 3 octets, network type then a 2-octet big-endian error code."""
    if isinstance(value, bytes | bytearray) and len(value) == 3:
        return value[0], int.from_bytes(value[1:3], "big")
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFFFF:
        return value >> 16, value & 0xFFFF
    return None


def _decode_text(short_message: bytes, data_coding: int) -> str:
    if not short_message:
        return ""
    raw = short_message[: _MAX_TEXT * 2]
    # Receipts are ASCII; latin-1 never fails and leaves ASCII (and unpacked GSM 03.38
    # letters/digits, which coincide with ASCII) readable. UCS-2 (data_coding 8) is decoded
    # as UTF-16BE: some SMSCs send their receipts in the coding of the original message.
    if data_coding == 8:
        text = raw.decode("utf-16-be", errors="replace")
    else:
        text = raw.decode("latin-1")
        # A UCS-2 receipt under the wrong data_coding: "i\0d\0:" never matches; try UTF-16BE.
        if b"\x00" in raw and not _KEY_RE.search(text.replace("\x00", "")):
            text = raw.decode("utf-16-be", errors="replace")
    return text.replace("\x00", "")[:_MAX_TEXT]


def parse_receipt_text(text: str) -> Receipt | UnparseableReceipt:
    """Read the Appendix B text form. Tolerates case, spacing, missing and reordered fields."""
    fields = _text_fields(text[:_MAX_TEXT])
    if "id" not in fields and "stat" not in fields:
        return UnparseableReceipt("no id: or stat: field in the text")
    message_id = _clean_id(_first_token(fields.get("id", "")))
    stat = _first_token(fields.get("stat", ""))
    state = parse_state_word(stat) if stat else None
    if message_id is None:
        return UnparseableReceipt("no readable id: in the text")
    if state is None:
        reason = f"unknown stat: {stat[:16]!r}" if stat else "no stat: in the text"
        return UnparseableReceipt(reason, message_id=message_id)
    err = _first_token(fields.get("err", "")) or None
    return Receipt(
        message_id=message_id,
        state=state,
        error=err[:16] if err else None,
        submit_date=_parse_date(fields.get("submitdate")),
        done_date=_parse_date(fields.get("donedate")),
    )


def parse_deliver(
    esm_class: int,
    short_message: bytes = b"",
    data_coding: int = 0,
    tlvs: TlvMap | None = None,
    *,
    sniff_text: bool = False,
) -> ReceiptResult:
    """Decide whether a deliver_sm / data_sm is a receipt and read it.

    The esm_class message type decides (0x04, 0x08, 0x20 → receipt). A default-type PDU is an MO
    unless it carries both receipted_message_id and message_state TLVs: those are set by the SMSC,
    never typed by a handset, so carriers that forget the esm_class bit are still understood.
    With `sniff_text=True` (a per-carrier option for SMSCs that send receipts as plain MO text) a
    default-type PDU whose text reads as a complete receipt is one too. Off by default: otherwise
    a subscriber could forge a receipt by texting "id:… stat:DELIVRD".

    Field by field, TLVs win over the text form (the contract matches by receipted_message_id,
    else the text `id:`); the text supplies what the TLVs lack (dates, `err:`).
    For data_sm, the text form is read from message_payload when short_message is empty.
    Never raises on malformed input.
    """
    tlvs = tlvs or {}
    mtype = message_type(esm_class)
    tlv_id = _clean_id(_tlv(tlvs, "receipted_message_id", 0x001E))
    tlv_state = _tlv_state(_tlv(tlvs, "message_state", 0x0427))
    tlv_net = _tlv_network_error(_tlv(tlvs, "network_error_code", 0x0423))

    body = short_message
    if not body:
        payload = _tlv(tlvs, "message_payload", 0x0424)
        if isinstance(payload, bytes | bytearray):
            body = bytes(payload)
    text = _decode_text(body, data_coding)

    marked = mtype in _RECEIPT_TYPES
    if not marked:
        if tlv_id is not None and tlv_state is not None:
            pass  # an SMSC-set TLV pair: a receipt whatever the esm_class says
        elif sniff_text and isinstance(parse_receipt_text(text), Receipt):
            pass
        else:
            label = mtype.name if mtype is not None else f"0x{esm_class & _MESSAGE_TYPE_MASK:02X}"
            return NotAReceipt(mtype, f"esm_class message type {label}")

    from_text = parse_receipt_text(text) if text else UnparseableReceipt("empty text")
    text_receipt = from_text if isinstance(from_text, Receipt) else None

    message_id = tlv_id if tlv_id is not None else from_text.message_id
    state = tlv_state if tlv_state is not None else (text_receipt.state if text_receipt else None)
    if message_id is None:
        return UnparseableReceipt("no receipted_message_id TLV and " + _text_reason(from_text))
    if state is None:
        return UnparseableReceipt(
            "no message_state TLV and " + _text_reason(from_text), message_id=message_id
        )
    return Receipt(
        message_id=message_id,
        state=state,
        error=text_receipt.error if text_receipt else None,
        network_error=tlv_net[1] if tlv_net else None,
        network_error_type=tlv_net[0] if tlv_net else None,
        submit_date=text_receipt.submit_date if text_receipt else None,
        done_date=text_receipt.done_date if text_receipt else None,
        intermediate=mtype is MessageType.INTERMEDIATE_NOTIFICATION,
    )


def _text_reason(result: Receipt | UnparseableReceipt) -> str:
    return "the text form had them" if isinstance(result, Receipt) else result.reason


# ---------------------------------------------------------------------------------------------
# Message id normalisation


class IdConversion(enum.Flag):
    """Which base conversions `candidate_ids` may try after the exact match.

    Kannel's `msg-id-type` is the precedent: there the operator states per SMSC whether the
    submit_sm_resp id and the receipt id are hex or decimal (bit 0x01: submit_sm_resp in hex,
    0x02: deliver_sm in hex; unset: compared as plain strings). Here both directions are tried by
    default, exact match first, so a carrier needs no setting; a carrier whose ids collide can be
    narrowed to one direction or to NONE.
    """

    NONE = 0
    # the receipt's id is decimal, the response's was hex (Kannel msg-id-type 0x01)
    DEC_TO_HEX = enum.auto()
    # the receipt's id is hex, the response's was decimal (Kannel msg-id-type 0x02)
    HEX_TO_DEC = enum.auto()
    BOTH = DEC_TO_HEX | HEX_TO_DEC


_HEX_DIGITS = frozenset("0123456789abcdef")
_DEC_DIGITS = frozenset("0123456789")
# Base conversion only for ids that could be a number the SMSC printed: 32 hex digits is a
# 128-bit id (UUIDs without dashes); longer strings are opaque. It also keeps int() far from
# Python's 4,300-digit conversion limit.
_MAX_NUMERIC_ID = 40


def canonical_id(message_id: str) -> str:
    """The one key under which the store indexes a part's carrier message id.

    Rule, applied identically to the submit_sm_resp id (when storing) and the receipt id (when
    looking up): strip surrounding whitespace and NULs; case-fold; drop a "0x" prefix before hex
    digits; strip leading zeros (an all-zero id becomes "0"). No base conversion happens here, so
    two ids have the same canonical key only if they are the same string up to case, padding and
    leading zeros: "00B8BE19", "b8be19" and "0xB8BE19" → "b8be19"; "000024" → "24". An empty id
    stays "" (the caller must not index it).
    """
    s = message_id.replace("\x00", "").strip().casefold()
    if s.startswith("0x") and len(s) > 2 and set(s[2:]) <= _HEX_DIGITS:
        s = s[2:]
    stripped = s.lstrip("0")
    if not stripped and s:
        return "0"
    # Stripping zeros can expose whitespace ("0\r0" → "\r0"): strip again so the rule is
    # idempotent (the same key whether applied once or twice).
    if stripped != stripped.strip():
        return canonical_id(stripped)
    return stripped


def candidate_ids(
    message_id: str, conversion: IdConversion = IdConversion.BOTH
) -> tuple[str, ...]:
    """Canonical keys to look a receipt's id up with, most likely first; the first hit wins.

    1. `canonical_id(message_id)`, the exact match (up to case, padding, leading zeros). It is
       always tried first so that an id is never matched through a conversion while its exact
       form exists (CONTRACT: conversion only "when there is no exact match").
    2. DEC_TO_HEX, when the id is all decimal digits: its value written in hex
       (receipt "12107289" → "b8be19", for a response id "00B8BE19"). Tried before 3 because it
       is the common field case: SMSCs give a hex id in submit_sm_resp and print Appendix B's
       "decimal" id in the receipt text (Vonage tells Kannel users to set msg-id-type 0x01).
    3. HEX_TO_DEC, when the id is all hex digits (letters or not): its value in decimal
       (receipt "b8be19" → "12107289", for a response id "12107289").

    Ambiguity: "123" is valid in both bases, so its candidates are ("123", "7b", "291"). The
    exact "123" wins; a part stored as "7b" (hex) is next; "291" last. Two outstanding parts whose
    ids are base-conversions of each other can only be told apart by the exact form: narrow
    `conversion` for such a carrier. Ids longer than 40 characters get no conversion.
    """
    exact = canonical_id(message_id)
    if not exact:
        return ()
    keys = [exact]
    if len(exact) <= _MAX_NUMERIC_ID:
        chars = set(exact)
        if conversion & IdConversion.DEC_TO_HEX and chars <= _DEC_DIGITS:
            keys.append(format(int(exact, 10), "x"))
        if conversion & IdConversion.HEX_TO_DEC and chars <= _HEX_DIGITS:
            keys.append(str(int(exact, 16)))
    # Keep order, drop repeats ("0"..."9" are the same in both bases).
    return tuple(dict.fromkeys(keys))


# ---------------------------------------------------------------------------------------------
# Formatting (the simulator's side)


def format_receipt_date(value: datetime) -> str:
    """YYMMDDhhmm, as Appendix B writes `submit date:` and `done date:`."""
    return value.strftime("%y%m%d%H%M")


def format_receipt_text(
    message_id: str,
    state: ReceiptState,
    submit_date: datetime,
    done_date: datetime,
    *,
    err: str = "000",
    text: str = "",
    sub: int = 1,
    dlvrd: int | None = None,
) -> str:
    """The Appendix B text form:
    `id:… sub:001 dlvrd:001 submit date:… done date:… stat:… err:… text:…`.

    `dlvrd` defaults to 1 for DELIVRD and 0 otherwise; `text` is cut to 20 characters.
    """
    if dlvrd is None:
        dlvrd = 1 if state is ReceiptState.DELIVRD else 0
    return (
        f"id:{message_id} sub:{sub:03d} dlvrd:{dlvrd:03d}"
        f" submit date:{format_receipt_date(submit_date)}"
        f" done date:{format_receipt_date(done_date)}"
        f" stat:{state.value} err:{err} text:{text[:20]}"
    )
