"""What to do when a carrier refuses a submit_sm: the command_status classification table.

Owns: command_status → Kind (OK / TRANSIENT / PERMANENT / REROUTE) and → Signal for the carrier's
throttle and pool (THROTTLE, PAUSE, REBIND); the same for failures that have no command_status
(response timeout, connection lost); per-carrier overrides parsed from the YAML. Pure data and
lookups; the dispatcher acts on the answers.

The kinds, precisely (the dispatcher's contract):
- TRANSIENT: the message is fine and so is the route; retry later with backoff and jitter, on the
  same carrier (any of its binds; if the carrier has no bind up, routing fails over anyway).
  Counts against the message's retry budget and maximum queue age.
- REROUTE: the message may be fine, but this carrier will not take it ("try another route"):
  move it to the next carrier of its route that it has not tried (`carriers_for(..., exclude=)`).
  When no untried carrier is left, fail it (FailReason.CARRIER_REJECTED, with the command_status):
  retrying a refusal on the carrier that refused is futile. So with one carrier, REROUTE is
  PERMANENT.
- PERMANENT: the message itself is wrong (bad destination, bad length): any carrier would refuse
  it; fail at once with the command_status in the `failed` event.
The question asked of each code below is "is the message bad (PERMANENT), is this carrier unable
or unwilling to take it (REROUTE), or will the same request succeed later (TRANSIENT)?".
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Kind",
    "Signal",
    "LocalFailure",
    "StatusRule",
    "STATUS_RULES",
    "DEFAULT_KIND",
    "ErrorPolicy",
    "classify",
    "signal_for",
    "classify_local",
    "parse_status_code",
    "parse_overrides",
]


class Kind(enum.StrEnum):
    OK = "ok"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    REROUTE = "reroute"


class Signal(enum.StrEnum):
    """What the carrier's throttle / pool should do besides retrying the message."""

    NONE = "none"
    THROTTLE = "throttle"  # throttle.on_throttled(now): multiplicative decrease of the rate
    PAUSE = "pause"  # throttle.on_queue_full(now): stop sending to this carrier briefly
    REBIND = "rebind"  # the SMSC says this session is not (properly) bound: drop and rebind it


class LocalFailure(enum.StrEnum):
    """Failures of a submit_sm that carry no command_status."""

    RESPONSE_TIMEOUT = "response_timeout"  # no submit_sm_resp within response_timeout_s
    CONNECTION_LOST = "connection_lost"  # the bind closed before the response arrived


@dataclass(frozen=True, slots=True)
class StatusRule:
    code: int
    name: str
    kind: Kind
    signal: Signal = Signal.NONE


_T, _P, _R = Kind.TRANSIENT, Kind.PERMANENT, Kind.REROUTE

# Every SMPP 3.4 command_status (Table 5-2), decided for a submit_sm_resp (or a generic_nack
# answering a submit_sm). Codes that only make sense for other operations (bind, cancel,
# submit_multi, query) still get a decision, since broken SMSCs do send them on submit_sm.
_RULES: tuple[StatusRule, ...] = (
    StatusRule(0x00, "ESME_ROK", Kind.OK),
    # Our part is longer than this SMSC accepts. Parts are ≤ 140 octets for every carrier, so
    # another carrier would refuse it too.
    StatusRule(0x01, "ESME_RINVMSGLEN", _P),
    # The SMSC cannot parse our PDU / does not accept submit_sm on this bind: an implementation or
    # account mismatch with this carrier; the message itself is fine elsewhere.
    StatusRule(0x02, "ESME_RINVCMDLEN", _R),
    StatusRule(0x03, "ESME_RINVCMDID", _R),
    # The SMSC thinks this session is not bound (e.g. it restarted, or we are bound as receiver).
    # Nothing wrong with the message: resend on a healthy bind, and rebind this one.
    StatusRule(0x04, "ESME_RINVBNDSTS", _T, Signal.REBIND),
    # Bind-phase codes arriving on a submit_sm: the SMSC is confused about our session state.
    StatusRule(0x05, "ESME_RALYBND", _T, Signal.REBIND),
    # priority_flag / registered_delivery values this carrier does not support: carrier policy.
    StatusRule(0x06, "ESME_RINVPRTFLG", _R),
    StatusRule(0x07, "ESME_RINVREGDLVFLG", _R),
    # Generic SMSC trouble; Kannel (temporary failure) and Jasmin (2 retries × 30 s) both retry.
    StatusRule(0x08, "ESME_RSYSERR", _T),
    # The contract lists "invalid source" with the permanent errors: the sender is malformed or
    # not allowed. Carriers that register sender ids per account can be overridden to reroute.
    StatusRule(0x0A, "ESME_RINVSRCADR", _P),
    # The destination number is invalid: no carrier will deliver it.
    StatusRule(0x0B, "ESME_RINVDSTADR", _P),
    # Not meaningful for submit_sm (query/cancel/replace): treated as a carrier oddity.
    StatusRule(0x0C, "ESME_RINVMSGID", _R),
    # Bind failures on a submit_sm: the session's credentials are no longer accepted.
    StatusRule(0x0D, "ESME_RBINDFAIL", _T, Signal.REBIND),
    StatusRule(0x0E, "ESME_RINVPASWD", _T, Signal.REBIND),
    StatusRule(0x0F, "ESME_RINVSYSID", _T, Signal.REBIND),
    StatusRule(0x11, "ESME_RCANCELFAIL", _R),
    StatusRule(0x13, "ESME_RREPLACEFAIL", _R),
    # The SMSC's queue is full: back off this carrier for a while (Kannel sleeps, Jasmin retries
    # 2 × 180 s), then resend the same part.
    StatusRule(0x14, "ESME_RMSGQFUL", _T, Signal.PAUSE),
    # service_type not accepted by this carrier: carrier configuration.
    StatusRule(0x15, "ESME_RINVSERTYP", _R),
    # submit_multi / distribution-list codes: we never send those; seeing one means the SMSC
    # misread our PDU.
    StatusRule(0x33, "ESME_RINVNUMDESTS", _R),
    StatusRule(0x34, "ESME_RINVDLNAME", _R),
    StatusRule(0x40, "ESME_RINVDESTFLAG", _R),
    # replace_if_present_flag not supported here.
    StatusRule(0x42, "ESME_RINVSUBREP", _R),
    # We only send esm_class 0x00 or 0x40 (UDHI for concatenated parts); a carrier refusing them
    # does not support UDH concatenation, which another carrier may.
    StatusRule(0x43, "ESME_RINVESMCLASS", _R),
    StatusRule(0x44, "ESME_RCNTSUBDL", _R),
    # "Submit failed": the SMSC could not forward this message (often no onward route or a
    # downstream refusal). The message is fine; this carrier cannot take it.
    StatusRule(0x45, "ESME_RSUBMITFAIL", _R),
    # TON/NPI combinations accepted differ per carrier (alphanumeric senders especially).
    StatusRule(0x48, "ESME_RINVSRCTON", _R),
    StatusRule(0x49, "ESME_RINVSRCNPI", _R),
    StatusRule(0x50, "ESME_RINVDSTTON", _R),
    StatusRule(0x51, "ESME_RINVDSTNPI", _R),
    StatusRule(0x53, "ESME_RINVSYSTYP", _R),
    StatusRule(0x54, "ESME_RINVREPFLAG", _R),
    StatusRule(0x55, "ESME_RINVNUMMSGS", _R),
    # Over the carrier's rate: resend later and lower our rate (AIMD in throttle.py).
    StatusRule(0x58, "ESME_RTHROTTLED", _T, Signal.THROTTLE),
    # schedule_delivery_time / validity_period outside what this carrier allows (limits differ).
    StatusRule(0x61, "ESME_RINVSCHED", _R),
    StatusRule(0x62, "ESME_RINVEXPIRY", _R),
    StatusRule(0x63, "ESME_RINVDFTMSGID", _R),
    # The receiving application: temporary → retry; permanent → the message is refused for good;
    # "reject message" → refused by this path's receiver, another carrier may route differently.
    StatusRule(0x64, "ESME_RX_T_APPN", _T),
    StatusRule(0x65, "ESME_RX_P_APPN", _P),
    StatusRule(0x66, "ESME_RX_R_APPN", _R),
    StatusRule(0x67, "ESME_RQUERYFAIL", _R),
    # Optional-parameter (TLV) trouble: the set of TLVs accepted is carrier-specific.
    StatusRule(0xC0, "ESME_RINVOPTPARSTREAM", _R),
    StatusRule(0xC1, "ESME_ROPTPARNOTALLWD", _R),
    StatusRule(0xC2, "ESME_RINVPARLEN", _R),
    StatusRule(0xC3, "ESME_RMISSINGOPTPARAM", _R),
    StatusRule(0xC4, "ESME_RINVOPTPARAMVAL", _R),
    # "Delivery failure" (data_sm transaction mode): the network refused delivery of this message.
    StatusRule(0xFE, "ESME_RDELIVERYFAILURE", _P),
    # The SMSC does not know what went wrong: like any unknown code (DEFAULT_KIND).
    StatusRule(0xFF, "ESME_RUNKNOWNERR", _R),
)

STATUS_RULES: Mapping[int, StatusRule] = {rule.code: rule for rule in _RULES}
_BY_NAME: Mapping[str, int] = {rule.name: rule.code for rule in _RULES}

# Codes outside the table: reserved ranges, SMPP 5.0 codes (0x100-0x112) that some 3.4 SMSCs
# send, and vendor-specific codes (0x400-0x4FF, often "blacklisted", "no credit", "spam").
# REROUTE: we do not know that a retry here would help (Kannel's default is "rejected", Jasmin
# retries only the codes it lists), so do not hammer this carrier; another carrier may well take
# the message, and with no other carrier it fails at once with the code in the event, where the
# operator sees it and can add an override.
DEFAULT_KIND = Kind.REROUTE

# A missing response tells nothing about the message. Timeout: the part may or may not have been
# accepted; it is resent (`resent: true`), since the contract prefers a rare duplicate to a loss.
# Connection lost: other binds of the carrier may be up; if none is, routing fails over.
_LOCAL: Mapping[LocalFailure, Kind] = {
    LocalFailure.RESPONSE_TIMEOUT: Kind.TRANSIENT,
    LocalFailure.CONNECTION_LOST: Kind.TRANSIENT,
}


def classify(
    status: int, overrides: Mapping[int, Kind] | None = None, default: Kind = DEFAULT_KIND
) -> Kind:
    """The kind of a command_status: the carrier's override, else the table, else `default`.

    ESME_ROK is always OK (an override cannot turn success into failure).
    """
    if status == 0:
        return Kind.OK
    if overrides:
        kind = overrides.get(status)
        if kind is not None:
            return kind
    rule = STATUS_RULES.get(status)
    return rule.kind if rule is not None else default


def signal_for(status: int, overrides: Mapping[int, Signal] | None = None) -> Signal:
    """What the throttle / pool should do on this command_status (NONE for most)."""
    if overrides:
        signal = overrides.get(status)
        if signal is not None:
            return signal
    rule = STATUS_RULES.get(status)
    return rule.signal if rule is not None else Signal.NONE


def classify_local(failure: LocalFailure) -> Kind:
    return _LOCAL[failure]


@dataclass(frozen=True, slots=True)
class ErrorPolicy:
    """One carrier's classification: the table plus its YAML overrides."""

    kinds: Mapping[int, Kind] = field(default_factory=dict)
    signals: Mapping[int, Signal] = field(default_factory=dict)
    default: Kind = DEFAULT_KIND

    def classify(self, status: int) -> Kind:
        return classify(status, self.kinds, self.default)

    def signal(self, status: int) -> Signal:
        return signal_for(status, self.signals)


# YAML words → (kind, signal). "throttle" and "pause" let an operator declare that a vendor code
# means "slow down" or "queue full" (e.g. 0x400 used for rate limiting).
_WORDS: Mapping[str, tuple[Kind, Signal | None]] = {
    "transient": (Kind.TRANSIENT, None),
    "permanent": (Kind.PERMANENT, None),
    "reroute": (Kind.REROUTE, None),
    "throttle": (Kind.TRANSIENT, Signal.THROTTLE),
    "pause": (Kind.TRANSIENT, Signal.PAUSE),
}


def parse_status_code(key: object) -> int:
    """`11`, `"11"`, `"0x0B"`, `"0x0000000B"` or `"ESME_RINVDSTADR"` → 11. ValueError otherwise."""
    if isinstance(key, bool):
        raise ValueError(f"{key!r} is not a command_status")
    if isinstance(key, int):
        code = key
    elif isinstance(key, str):
        text = key.strip()
        if text.upper() in _BY_NAME:
            return _BY_NAME[text.upper()]
        try:
            code = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
        except ValueError:
            raise ValueError(
                f"{key!r} is not a command_status (a number or an ESME_ name)"
            ) from None
    else:
        raise ValueError(f"{key!r} is not a command_status")
    if not 0 <= code <= 0xFFFFFFFF:
        raise ValueError(f"{key!r} is not a 32-bit command_status")
    return code


def _table_signal(code: int) -> Signal:
    rule = STATUS_RULES.get(code)
    return rule.signal if rule is not None else Signal.NONE


def parse_overrides(raw: Mapping[Any, object]) -> ErrorPolicy:
    """A carrier's YAML `errors:` mapping → ErrorPolicy.

    Keys: a command_status as a number, "0x…" or its ESME_ name; values: transient | permanent |
    reroute | throttle | pause (case-insensitive). Raises ValueError naming the bad entry;
    ESME_ROK cannot be overridden.
    """
    kinds: dict[int, Kind] = {}
    signals: dict[int, Signal] = {}
    for key, value in raw.items():
        code = parse_status_code(key)
        if code == 0:
            raise ValueError(f"{key!r}: ESME_ROK cannot be overridden")
        word = str(value).strip().lower()
        if word not in _WORDS:
            raise ValueError(f"{key!r}: {value!r} is not one of {', '.join(_WORDS)}")
        kind, signal = _WORDS[word]
        kinds[code] = kind
        if signal is not None:
            signals[code] = signal
        elif kind is not Kind.TRANSIENT and _table_signal(code) in (Signal.THROTTLE, Signal.PAUSE):
            # "permanent"/"reroute" on 0x58 or 0x14 reads the code as a refusal: it must not keep
            # cutting the rate or pausing the carrier. REBIND (a session fact) is kept.
            signals[code] = Signal.NONE
    return ErrorPolicy(kinds=kinds, signals=signals)
