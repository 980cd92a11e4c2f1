"""From a message to the submit_sm PDUs that carry it: addressing, flags, text parts.

Pure. Owns the contract's SMPP addressing rules (CONTRACT.md, "SMPP"): destination in
international form (TON 1, NPI 1, digits without '+'); an alphanumeric sender with TON 5 NPI 0;
a sender of digits with TON 1 NPI 1 when it starts with '+', else the carrier's source_ton /
source_npi. Every part asks for a final receipt (registered_delivery 1); OTP sets priority_flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.model import Priority
from gateway.smpp.text import EncodedText, ReferenceAllocator, split

ESM_CLASS_UDHI = 0x40
REGISTERED_DELIVERY_FINAL = 0x01


@dataclass(frozen=True, slots=True)
class TextOptions:
    """A carrier's text settings (from its YAML)."""

    mode: str = "udh"  # udh | sar | payload
    reference_bits: int = 8
    max_parts: int = 10
    gsm_data_coding: int = 0
    source_ton: int = 0
    source_npi: int = 1
    default_sender: str | None = None


def source_address(sender: str | None, opts: TextOptions) -> tuple[str, int, int]:
    """(source_addr, ton, npi) for a sender per the contract's rules."""
    sender = sender or opts.default_sender or ""
    if not sender:
        return "", opts.source_ton, opts.source_npi
    if sender.startswith("+") and sender[1:].isdigit():
        return sender[1:], 1, 1
    if sender.isdigit():
        return sender, opts.source_ton, opts.source_npi
    return sender, 5, 0


def encode_text(text: str, to: str, opts: TextOptions, refs: ReferenceAllocator) -> EncodedText:
    """Split `text` for this carrier; the concatenation reference is allocated per destination
    only when the text needs more than one part. Raises text.TextRejected."""
    bits = opts.reference_bits
    return split(
        text,
        reference=lambda: refs.next(to, bits),
        mode=opts.mode,  # type: ignore[arg-type]
        reference_bits=bits,
        max_parts=opts.max_parts,
        gsm_data_coding=opts.gsm_data_coding,
    )


def submit_fields(
    encoded: EncodedText,
    index: int,
    *,
    to: str,
    sender: str | None,
    priority: Priority,
    opts: TextOptions,
) -> tuple[dict[str, Any], dict[str | int, Any] | None]:
    """The mandatory fields and TLVs of the submit_sm for part `index` (0-based)."""
    src, ton, npi = source_address(sender, opts)
    tlvs: dict[str | int, Any] | None = None
    short_message = encoded.parts[index]
    if encoded.mode == "payload":
        tlvs = {"message_payload": short_message}
        short_message = b""
    elif encoded.sar is not None:
        ref, total, seq = encoded.sar[index]
        tlvs = {"sar_msg_ref_num": ref, "sar_total_segments": total, "sar_segment_seqnum": seq}
    fields = {
        "service_type": "",
        "source_addr_ton": ton,
        "source_addr_npi": npi,
        "source_addr": src,
        "dest_addr_ton": 1,
        "dest_addr_npi": 1,
        "destination_addr": to[1:] if to.startswith("+") else to,
        "esm_class": ESM_CLASS_UDHI if encoded.udhi else 0,
        "protocol_id": 0,
        "priority_flag": 1 if priority is Priority.OTP else 0,
        "schedule_delivery_time": "",
        "validity_period": "",
        "registered_delivery": REGISTERED_DELIVERY_FINAL,
        "replace_if_present_flag": 0,
        "data_coding": encoded.data_coding,
        "sm_default_msg_id": 0,
        "short_message": short_message,
    }
    return fields, tlvs
