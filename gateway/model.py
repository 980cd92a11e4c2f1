"""Domain types of the gateway: priorities, statuses, submissions, messages and parts.

No I/O here. Every other layer speaks these types; the store maps them to rows, the ingress
builds them from MQTT payloads, the dispatcher moves them through their states.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class Priority(enum.IntEnum):
    """Lower value goes first: OTP ahead of transactional ahead of marketing, on every carrier."""

    OTP = 0
    TRANSACTIONAL = 1
    MARKETING = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Priority:
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValueError(f"unknown priority {value!r}") from None


class Status(enum.StrEnum):
    """The `status` of an event on `{prefix}/events/{id}` (CONTRACT.md)."""

    ACCEPTED = "accepted"
    DEFERRED = "deferred"
    REJECTED = "rejected"
    SUBMITTED = "submitted"
    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"
    EXPIRED = "expired"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {Status.REJECTED, Status.DELIVERED, Status.UNDELIVERABLE, Status.EXPIRED, Status.FAILED}
)


class MessageState(enum.IntEnum):
    """Where a stored message is in the pipeline (the store's `state` column).

    Distinct from the published Status: a message can be `submitted` (event) while its row
    waits in SUBMITTED for receipts, and a QUEUED message may have been `deferred`.
    """

    QUEUED = 0  # due at `due_at`, waiting for a carrier
    SENDING = 1  # handed to a session, parts in flight
    SUBMITTED = 2  # every part acknowledged by one carrier; waiting for receipts
    FINAL = 3  # delivered / undeliverable / expired / failed / rejected


class PartState(enum.IntEnum):
    PENDING = 0
    IN_FLIGHT = 1
    ACCEPTED = 2  # submit_sm_resp ok: message_id known
    DELIVERED = 3
    UNDELIVERABLE = 4
    EXPIRED = 5
    FAILED = 6


class RejectReason(enum.StrEnum):
    """Closed set of `reason` codes of `rejected` events and `{prefix}/rejected` messages."""

    INVALID_JSON = "invalid_json"
    INVALID_ID = "invalid_id"
    INVALID_NUMBER = "invalid_number"
    INVALID_FIELD = "invalid_field"
    EMPTY_TEXT = "empty_text"
    TOO_LONG = "too_long"
    OPTED_OUT = "opted_out"
    RATE_LIMITED = "rate_limited"
    FREQUENCY_CAPPED = "frequency_capped"
    DUPLICATE_CONTENT = "duplicate_content"
    NO_ROUTE = "no_route"
    BLOCKED_CONTENT = "blocked_content"


class FailReason(enum.StrEnum):
    """`reason` codes of `failed` events."""

    CARRIER_REJECTED = "carrier_rejected"  # permanent command_status
    RETRIES_EXHAUSTED = "retries_exhausted"
    EXPIRED_IN_QUEUE = "expired_in_queue"  # validity / max queue age passed before sending
    NO_ROUTE = "no_route"


class ReceiptState(enum.StrEnum):
    """Delivery receipt `stat:` values (SMPP 3.4 message_state names)."""

    ENROUTE = "ENROUTE"
    DELIVRD = "DELIVRD"
    EXPIRED = "EXPIRED"
    DELETED = "DELETED"
    UNDELIV = "UNDELIV"
    ACCEPTD = "ACCEPTD"
    UNKNOWN = "UNKNOWN"
    REJECTD = "REJECTD"

    @property
    def part_state(self) -> PartState | None:
        """The final part state this receipt means, or None while the message is not final."""
        return _RECEIPT_TO_PART.get(self)


_RECEIPT_TO_PART = {
    ReceiptState.DELIVRD: PartState.DELIVERED,
    ReceiptState.EXPIRED: PartState.EXPIRED,
    ReceiptState.UNDELIV: PartState.UNDELIVERABLE,
    ReceiptState.REJECTD: PartState.UNDELIVERABLE,
    ReceiptState.DELETED: PartState.UNDELIVERABLE,
    ReceiptState.UNKNOWN: PartState.UNDELIVERABLE,
}


@dataclass(frozen=True, slots=True)
class Submission:
    """One validated, normalised submission from `{prefix}/submit`."""

    id: str
    to: str  # E.164 with '+'
    text: str
    priority: Priority = Priority.TRANSACTIONAL
    sender: str | None = None
    validity_s: int | None = None
    not_before: datetime | None = None  # aware
    client: str | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refusal before any send: a reason from the closed set and a human detail."""

    reason: RejectReason
    detail: str
    extra: dict[str, object] = field(default_factory=dict)


def aggregate_final(part_states: list[PartState]) -> Status | None:
    """The message status that a set of part states means, or None while not final.

    `undeliverable` / `expired` as soon as any part is; `delivered` when every part is.
    """
    if PartState.UNDELIVERABLE in part_states:
        return Status.UNDELIVERABLE
    if PartState.EXPIRED in part_states:
        return Status.EXPIRED
    if PartState.FAILED in part_states:
        return Status.FAILED
    if part_states and all(s is PartState.DELIVERED for s in part_states):
        return Status.DELIVERED
    return None
