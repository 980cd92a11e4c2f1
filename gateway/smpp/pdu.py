"""SMPP 3.4 PDUs: command ids, status names, the wire codec and TCP framing.

Owns: turning one whole frame into a :class:`Pdu` and back (:func:`decode`, :func:`encode`),
cutting a byte stream into frames (:class:`FrameBuffer`), the tables of command ids, command_status
names and TLV tags (taken from ``smpplib.consts`` / ``smpplib.command_codes`` so both codecs agree),
the errors every part of ``gateway.smpp`` raises about bytes, and builders for the common PDUs.

Does not own: sequence numbers, bind state, windows, timers (``session.py``); text encoding, UDH
and splitting (``text.py``); receipt text parsing (``receipts.py``). No I/O, no clock, no globals
that change after import.

Why not smpplib's codec on the hot path: it is 2-15x slower (string-keyed tables walked per field),
truncates over-long fields silently, mutates the objects it encodes and raises arbitrary exception
types on bad input (see shared/research/style-anchors.md, 3.2/3.3). We keep it as the independent
reference the tests cross-check against byte for byte.

Invariant (after h11's fuzz rule): whatever bytes arrive, ``FrameBuffer.feed`` and ``decode``
either return frames/Pdus or raise an :class:`SmppError` subclass; anything else is a bug.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final, NamedTuple

from smpplib import command_codes as _smpplib_codes  # type: ignore[import-untyped]
from smpplib import consts as _smpplib_consts

__all__ = [
    "HEADER_LENGTH",
    "MAX_PDU_LENGTH",
    "SMPP_VERSION_34",
    "CommandId",
    "CommandStatus",
    "TlvTag",
    "status_name",
    "command_name",
    "is_response",
    "Pdu",
    "DestAddress",
    "UnsuccessSme",
    "encode",
    "decode",
    "FrameBuffer",
    "SmppError",
    "FramingError",
    "PduDecodeError",
    "PduEncodeError",
    "bind",
    "bind_transmitter",
    "bind_receiver",
    "bind_transceiver",
    "bind_resp",
    "outbind",
    "unbind",
    "unbind_resp",
    "enquire_link",
    "enquire_link_resp",
    "generic_nack",
    "submit_sm",
    "submit_sm_resp",
    "deliver_sm",
    "deliver_sm_resp",
    "data_sm",
    "data_sm_resp",
    "response_for",
    "error_response",
    "encode_submit_sm_resp",
    "encode_deliver_sm_resp",
]

#: command_length counts the whole PDU, header included; the header is four big-endian uint32.
HEADER_LENGTH: Final = 16
#: Default ceiling on command_length. SMPP 3.4 sets none; the largest legitimate PDU we expect is a
#: data_sm/submit_sm carrying a message_payload TLV (at most 64 KiB by the TLV's 16-bit length),
#: so 64 KiB bounds memory per connection without refusing anything real. (go-smpp uses 4 KiB,
#: cloudhopper defaults to none; Kannel and Jasmin accept a few KiB.)
MAX_PDU_LENGTH: Final = 65536
SMPP_VERSION_34: Final = _smpplib_consts.SMPP_VERSION_34

_RESPONSE_BIT: Final = 0x8000_0000
_CODES: Final = _smpplib_codes.commands  # 'submit_sm' -> 0x00000004, the 27 SMPP 3.4 commands


class CommandId(IntEnum):
    """Every SMPP 3.4 command_id; values come from smpplib's table (a test asserts it is complete)."""

    GENERIC_NACK = _CODES["generic_nack"]
    BIND_RECEIVER = _CODES["bind_receiver"]
    BIND_RECEIVER_RESP = _CODES["bind_receiver_resp"]
    BIND_TRANSMITTER = _CODES["bind_transmitter"]
    BIND_TRANSMITTER_RESP = _CODES["bind_transmitter_resp"]
    QUERY_SM = _CODES["query_sm"]
    QUERY_SM_RESP = _CODES["query_sm_resp"]
    SUBMIT_SM = _CODES["submit_sm"]
    SUBMIT_SM_RESP = _CODES["submit_sm_resp"]
    DELIVER_SM = _CODES["deliver_sm"]
    DELIVER_SM_RESP = _CODES["deliver_sm_resp"]
    UNBIND = _CODES["unbind"]
    UNBIND_RESP = _CODES["unbind_resp"]
    REPLACE_SM = _CODES["replace_sm"]
    REPLACE_SM_RESP = _CODES["replace_sm_resp"]
    CANCEL_SM = _CODES["cancel_sm"]
    CANCEL_SM_RESP = _CODES["cancel_sm_resp"]
    BIND_TRANSCEIVER = _CODES["bind_transceiver"]
    BIND_TRANSCEIVER_RESP = _CODES["bind_transceiver_resp"]
    OUTBIND = _CODES["outbind"]
    ENQUIRE_LINK = _CODES["enquire_link"]
    ENQUIRE_LINK_RESP = _CODES["enquire_link_resp"]
    SUBMIT_MULTI = _CODES["submit_multi"]
    SUBMIT_MULTI_RESP = _CODES["submit_multi_resp"]
    ALERT_NOTIFICATION = _CODES["alert_notification"]
    DATA_SM = _CODES["data_sm"]
    DATA_SM_RESP = _CODES["data_sm_resp"]

    @property
    def is_response(self) -> bool:
        """True for *_resp and generic_nack (the high bit of command_id)."""
        return bool(self & _RESPONSE_BIT)

    @property
    def smpp_name(self) -> str:
        """The spec's spelling, e.g. ``"submit_sm_resp"``."""
        return self.name.lower()

    @property
    def response(self) -> CommandId | None:
        """The *_resp answering this request; None for responses, outbind and alert_notification."""
        return _RESPONSE_OF.get(self)


_C = _smpplib_consts


class CommandStatus(IntEnum):
    """SMPP 3.4 command_status values, from ``smpplib.consts.SMPP_ESME_*`` (a test checks parity)."""

    ESME_ROK = _C.SMPP_ESME_ROK
    ESME_RINVMSGLEN = _C.SMPP_ESME_RINVMSGLEN
    ESME_RINVCMDLEN = _C.SMPP_ESME_RINVCMDLEN
    ESME_RINVCMDID = _C.SMPP_ESME_RINVCMDID
    ESME_RINVBNDSTS = _C.SMPP_ESME_RINVBNDSTS
    ESME_RALYBND = _C.SMPP_ESME_RALYBND
    ESME_RINVPRTFLG = _C.SMPP_ESME_RINVPRTFLG
    ESME_RINVREGDLVFLG = _C.SMPP_ESME_RINVREGDLVFLG
    ESME_RSYSERR = _C.SMPP_ESME_RSYSERR
    ESME_RINVSRCADR = _C.SMPP_ESME_RINVSRCADR
    ESME_RINVDSTADR = _C.SMPP_ESME_RINVDSTADR
    ESME_RINVMSGID = _C.SMPP_ESME_RINVMSGID
    ESME_RBINDFAIL = _C.SMPP_ESME_RBINDFAIL
    ESME_RINVPASWD = _C.SMPP_ESME_RINVPASWD
    ESME_RINVSYSID = _C.SMPP_ESME_RINVSYSID
    ESME_RCANCELFAIL = _C.SMPP_ESME_RCANCELFAIL
    ESME_RREPLACEFAIL = _C.SMPP_ESME_RREPLACEFAIL
    ESME_RMSGQFUL = _C.SMPP_ESME_RMSGQFUL
    ESME_RINVSERTYP = _C.SMPP_ESME_RINVSERTYP
    ESME_RINVNUMDESTS = _C.SMPP_ESME_RINVNUMDESTS
    ESME_RINVDLNAME = _C.SMPP_ESME_RINVDLNAME
    ESME_RINVDESTFLAG = _C.SMPP_ESME_RINVDESTFLAG
    ESME_RINVSUBREP = _C.SMPP_ESME_RINVSUBREP
    ESME_RINVESMCLASS = _C.SMPP_ESME_RINVESMCLASS
    ESME_RCNTSUBDL = _C.SMPP_ESME_RCNTSUBDL
    ESME_RSUBMITFAIL = _C.SMPP_ESME_RSUBMITFAIL
    ESME_RINVSRCTON = _C.SMPP_ESME_RINVSRCTON
    ESME_RINVSRCNPI = _C.SMPP_ESME_RINVSRCNPI
    ESME_RINVDSTTON = _C.SMPP_ESME_RINVDSTTON
    ESME_RINVDSTNPI = _C.SMPP_ESME_RINVDSTNPI
    ESME_RINVSYSTYP = _C.SMPP_ESME_RINVSYSTYP
    ESME_RINVREPFLAG = _C.SMPP_ESME_RINVREPFLAG
    ESME_RINVNUMMSGS = _C.SMPP_ESME_RINVNUMMSGS
    ESME_RTHROTTLED = _C.SMPP_ESME_RTHROTTLED
    ESME_RINVSCHED = _C.SMPP_ESME_RINVSCHED
    ESME_RINVEXPIRY = _C.SMPP_ESME_RINVEXPIRY
    ESME_RINVDFTMSGID = _C.SMPP_ESME_RINVDFTMSGID
    ESME_RX_T_APPN = _C.SMPP_ESME_RX_T_APPN
    ESME_RX_P_APPN = _C.SMPP_ESME_RX_P_APPN
    ESME_RX_R_APPN = _C.SMPP_ESME_RX_R_APPN
    ESME_RQUERYFAIL = _C.SMPP_ESME_RQUERYFAIL
    ESME_RINVOPTPARSTREAM = _C.SMPP_ESME_RINVOPTPARSTREAM
    ESME_ROPTPARNOTALLWD = _C.SMPP_ESME_ROPTPARNOTALLWD
    ESME_RINVPARLEN = _C.SMPP_ESME_RINVPARLEN
    ESME_RMISSINGOPTPARAM = _C.SMPP_ESME_RMISSINGOPTPARAM
    ESME_RINVOPTPARAMVAL = _C.SMPP_ESME_RINVOPTPARAMVAL
    ESME_RDELIVERYFAILURE = _C.SMPP_ESME_RDELIVERYFAILURE
    ESME_RUNKNOWNERR = _C.SMPP_ESME_RUNKNOWNERR


# code -> "ESME_RINVDSTADR". Built from smpplib's SMPP_ESME_* constants rather than our enum so that
# the name table and the enum are two independent readings of smpplib (test_pdu checks they agree).
_STATUS_NAMES: Final[dict[int, str]] = {
    value: name[len("SMPP_") :]
    for name, value in vars(_smpplib_consts).items()
    if name.startswith("SMPP_ESME_") and isinstance(value, int)
}
_COMMAND_NAMES: Final[dict[int, str]] = {code: name for name, code in _CODES.items()}
_COMMAND_IDS: Final[dict[int, CommandId]] = {int(c): c for c in CommandId}

_RESPONSE_OF: Final[dict[int, CommandId]] = {
    c: CommandId(c | _RESPONSE_BIT)
    for c in CommandId
    if not c & _RESPONSE_BIT and (c | _RESPONSE_BIT) in _COMMAND_IDS
}


def status_name(code: int) -> str:
    """``"ESME_RINVDSTADR"`` for a status SMPP 3.4 names, ``"0x%08X"`` otherwise (vendor codes)."""
    name = _STATUS_NAMES.get(code)
    return name if name is not None else "0x%08X" % code


def command_name(command_id: int) -> str:
    """``"submit_sm"`` for an SMPP 3.4 command id, ``"0x%08X"`` otherwise."""
    name = _COMMAND_NAMES.get(command_id)
    return name if name is not None else "0x%08X" % command_id


def is_response(command_id: int) -> bool:
    """True when the high bit of command_id is set (every *_resp and generic_nack)."""
    return bool(command_id & _RESPONSE_BIT)


# ---------------------------------------------------------------------------------------------
# Errors. One base, each carrying the command_status to answer with (h2's error_code, h11's
# error_status_hint); recoverable vs unrecoverable as cloudhopper splits them.
# ---------------------------------------------------------------------------------------------


class SmppError(Exception):
    """Base of every error ``gateway.smpp`` raises about PDUs. ``command_status`` says what to answer."""

    command_status: int = CommandStatus.ESME_RSYSERR

    def __init__(self, message: str, command_status: int | None = None) -> None:
        super().__init__(message)
        if command_status is not None:
            self.command_status = command_status

    @property
    def command_status_name(self) -> str:
        return status_name(self.command_status)


class FramingError(SmppError):
    """command_length is impossible (< 16 or > the maximum): PDU boundaries are lost.

    Unrecoverable: the caller must close the connection (and rebind). Nothing else in the stream
    can be trusted, so there is no sequence number to answer.
    """

    command_status = CommandStatus.ESME_RINVCMDLEN

    def __init__(self, message: str, command_length: int | None = None) -> None:
        super().__init__(message)
        self.command_length = command_length


class PduDecodeError(SmppError):
    """A well-framed PDU whose body cannot be decoded. Recoverable: the next frame is intact.

    Answer a request with ``error_response(err)`` (generic_nack, or the matching *_resp carrying
    ``command_status``) and carry on. ``pdu`` holds what could be decoded when the mandatory part
    was fine and only the TLVs were bad, so a caller may still use e.g. a submit_sm_resp's
    message_id; it is None otherwise.
    """

    def __init__(
        self,
        message: str,
        command_status: int,
        *,
        command_id: int,
        sequence_number: int,
        pdu: Pdu | None = None,
    ) -> None:
        super().__init__(message, command_status)
        self.command_id = command_id
        self.sequence_number = sequence_number
        self.pdu = pdu


class PduEncodeError(SmppError, ValueError):
    """We were asked to encode something SMPP cannot carry (over-long field, unknown TLV, ...).

    A local error: nothing was sent. Unlike smpplib we never truncate: a cut destination_addr
    would deliver to somebody else. ``command_status`` is the status an SMSC would have answered
    (e.g. ESME_RINVDSTADR for an over-long destination_addr), ``field`` names the culprit.
    """

    def __init__(self, message: str, command_status: int = CommandStatus.ESME_RSYSERR, field: str = "") -> None:
        super().__init__(message, command_status)
        self.field = field


# ---------------------------------------------------------------------------------------------
# The PDU value.
# ---------------------------------------------------------------------------------------------


class DestAddress(NamedTuple):
    """One entry of submit_multi's dest_address list: dest_flag 1 = SME address, 2 = distribution list."""

    dest_flag: int = 1
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    dl_name: str = ""


class UnsuccessSme(NamedTuple):
    """One entry of submit_multi_resp's unsuccess_sme list."""

    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    error_status_code: int = 0


_REDACTED_FIELDS: Final = frozenset({"short_message", "message_payload", "password"})
_MASKED_FIELDS: Final = frozenset({"source_addr", "destination_addr", "esme_addr"})


def _mask_number(value: object) -> object:
    # Logs must never hold a full number (CONTRACT: "masked as 138****8000"), and a Pdu repr ends
    # up in logs sooner or later, so the repr masks what log.py would.
    if isinstance(value, str) and len(value) > 7:
        return value[:3] + "****" + value[-4:]
    return value


@dataclass(slots=True, repr=False)
class Pdu:
    """One SMPP PDU. Plain data: no sequence allocation, no I/O.

    ``fields``: mandatory parameters by their SMPP 3.4 names; integers as ``int``, C-octet strings
    as ``str`` (latin-1, one char per octet), ``short_message`` as ``bytes``; on decode
    ``sm_length`` is present too (on encode it is derived from ``short_message`` and ignored).
    Missing mandatory fields encode as their zero value (0 / "" / b"").

    ``tlvs``: optional parameters by name (``receipted_message_id: str``, ``message_state: int``,
    ``network_error_code: bytes``, ``message_payload: bytes``, ``sar_*: int``, ...); unknown tags
    by their integer tag with the raw value bytes. Encoded in dict order.
    """

    command_id: int
    sequence_number: int
    command_status: int = 0
    fields: dict[str, Any] = field(default_factory=dict)
    tlvs: dict[str | int, Any] = field(default_factory=dict)

    @property
    def command_name(self) -> str:
        """``"submit_sm"``, or ``"0x%08X"`` for an id SMPP 3.4 does not define."""
        return command_name(self.command_id)

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & _RESPONSE_BIT)

    def __repr__(self) -> str:
        # Redacts message text and passwords and masks numbers: see _mask_number.
        shown = {
            k: (f"<{len(v)} bytes>" if isinstance(v, (bytes, bytearray)) else "***")
            if k in _REDACTED_FIELDS
            else _mask_number(v) if k in _MASKED_FIELDS else v
            for k, v in self.fields.items()
        }
        tl = {k: f"<{len(v)} bytes>" if k == "message_payload" else v for k, v in self.tlvs.items()}
        return (
            f"Pdu({self.command_name}, seq={self.sequence_number}, "
            f"status={status_name(self.command_status)}, fields={shown!r}, tlvs={tl!r})"
        )


# ---------------------------------------------------------------------------------------------
# TLVs: tags from smpplib.consts.OPTIONAL_PARAMS, value types from SMPP 3.4 section 5.3.2 (where
# smpplib's per-command Param tables disagree with the spec we follow the spec; see test_pdu).
# ---------------------------------------------------------------------------------------------

_OPT: Final = _smpplib_consts.OPTIONAL_PARAMS


class TlvTag(IntEnum):
    """The SMPP 3.4 TLV tags we decode by name (every tag smpplib knows)."""

    DEST_ADDR_SUBUNIT = _OPT["dest_addr_subunit"]
    DEST_NETWORK_TYPE = _OPT["dest_network_type"]
    DEST_BEARER_TYPE = _OPT["dest_bearer_type"]
    DEST_TELEMATICS_ID = _OPT["dest_telematics_id"]
    SOURCE_ADDR_SUBUNIT = _OPT["source_addr_subunit"]
    SOURCE_NETWORK_TYPE = _OPT["source_network_type"]
    SOURCE_BEARER_TYPE = _OPT["source_bearer_type"]
    SOURCE_TELEMATICS_ID = _OPT["source_telematics_id"]
    QOS_TIME_TO_LIVE = _OPT["qos_time_to_live"]
    PAYLOAD_TYPE = _OPT["payload_type"]
    ADDITIONAL_STATUS_INFO_TEXT = _OPT["additional_status_info_text"]
    RECEIPTED_MESSAGE_ID = _OPT["receipted_message_id"]
    MS_MSG_WAIT_FACILITIES = _OPT["ms_msg_wait_facilities"]
    PRIVACY_INDICATOR = _OPT["privacy_indicator"]
    SOURCE_SUBADDRESS = _OPT["source_subaddress"]
    DEST_SUBADDRESS = _OPT["dest_subaddress"]
    USER_MESSAGE_REFERENCE = _OPT["user_message_reference"]
    USER_RESPONSE_CODE = _OPT["user_response_code"]
    SOURCE_PORT = _OPT["source_port"]
    DESTINATION_PORT = _OPT["destination_port"]
    SAR_MSG_REF_NUM = _OPT["sar_msg_ref_num"]
    LANGUAGE_INDICATOR = _OPT["language_indicator"]
    SAR_TOTAL_SEGMENTS = _OPT["sar_total_segments"]
    SAR_SEGMENT_SEQNUM = _OPT["sar_segment_seqnum"]
    SC_INTERFACE_VERSION = _OPT["sc_interface_version"]
    CALLBACK_NUM_PRES_IND = _OPT["callback_num_pres_ind"]
    CALLBACK_NUM_ATAG = _OPT["callback_num_atag"]
    NUMBER_OF_MESSAGES = _OPT["number_of_messages"]
    CALLBACK_NUM = _OPT["callback_num"]
    DPF_RESULT = _OPT["dpf_result"]
    SET_DPF = _OPT["set_dpf"]
    MS_AVAILABILITY_STATUS = _OPT["ms_availability_status"]
    NETWORK_ERROR_CODE = _OPT["network_error_code"]
    MESSAGE_PAYLOAD = _OPT["message_payload"]
    DELIVERY_FAILURE_REASON = _OPT["delivery_failure_reason"]
    MORE_MESSAGES_TO_SEND = _OPT["more_messages_to_send"]
    MESSAGE_STATE = _OPT["message_state"]
    USSD_SERVICE_OP = _OPT["ussd_service_op"]
    DISPLAY_TIME = _OPT["display_time"]
    SMS_SIGNAL = _OPT["sms_signal"]
    MS_VALIDITY = _OPT["ms_validity"]
    ALERT_ON_MESSAGE_DELIVERY = _OPT["alert_on_message_delivery"]
    ITS_REPLY_TYPE = _OPT["its_reply_type"]
    ITS_SESSION_INFO = _OPT["its_session_info"]


# TLV value kinds.
_INT: Final = 0  # unsigned big-endian integer of `size` octets
_CSTR: Final = 1  # C-octet string: value + NUL, length includes the NUL; Python str (latin-1)
_OCTETS: Final = 2  # raw octets; Python bytes
_FLAG: Final = 3  # zero-length "present" marker; Python True


class _TlvSpec(NamedTuple):
    tag: int
    name: str
    kind: int
    size: int  # _INT: exact octets; _CSTR/_OCTETS: max octets (incl. NUL for _CSTR)
    min_size: int = 0


# (name, kind, size[, min]) per SMPP 3.4 5.3.2. Deviations from smpplib's Param tables are deliberate
# (smpplib: source_addr_subunit size 2 in submit_sm, delivery_failure_reason a string,
# subaddresses/callback_num_atag NUL-terminated strings, network_error_code a 3-char string in
# data_sm_resp) and are listed in test_pdu.py.
_TLV_TYPES: Final[tuple[tuple[str, int, int, int], ...]] = (
    ("dest_addr_subunit", _INT, 1, 0),
    ("dest_network_type", _INT, 1, 0),
    ("dest_bearer_type", _INT, 1, 0),
    ("dest_telematics_id", _INT, 2, 0),
    ("source_addr_subunit", _INT, 1, 0),
    ("source_network_type", _INT, 1, 0),
    ("source_bearer_type", _INT, 1, 0),
    ("source_telematics_id", _INT, 2, 0),
    ("qos_time_to_live", _INT, 4, 0),
    ("payload_type", _INT, 1, 0),
    ("additional_status_info_text", _CSTR, 256, 1),
    ("receipted_message_id", _CSTR, 65, 1),
    ("ms_msg_wait_facilities", _INT, 1, 0),
    ("privacy_indicator", _INT, 1, 0),
    ("source_subaddress", _OCTETS, 23, 2),
    ("dest_subaddress", _OCTETS, 23, 2),
    ("user_message_reference", _INT, 2, 0),
    ("user_response_code", _INT, 1, 0),
    ("source_port", _INT, 2, 0),
    ("destination_port", _INT, 2, 0),
    ("sar_msg_ref_num", _INT, 2, 0),
    ("language_indicator", _INT, 1, 0),
    ("sar_total_segments", _INT, 1, 0),
    ("sar_segment_seqnum", _INT, 1, 0),
    ("sc_interface_version", _INT, 1, 0),
    ("callback_num_pres_ind", _INT, 1, 0),
    ("callback_num_atag", _OCTETS, 65, 0),
    ("number_of_messages", _INT, 1, 0),
    ("callback_num", _OCTETS, 19, 4),
    ("dpf_result", _INT, 1, 0),
    ("set_dpf", _INT, 1, 0),
    ("ms_availability_status", _INT, 1, 0),
    ("network_error_code", _OCTETS, 3, 3),
    ("message_payload", _OCTETS, 0xFFFF, 0),
    ("delivery_failure_reason", _INT, 1, 0),
    ("more_messages_to_send", _INT, 1, 0),
    ("message_state", _INT, 1, 0),
    ("ussd_service_op", _INT, 1, 0),
    ("display_time", _INT, 1, 0),
    ("sms_signal", _INT, 2, 0),
    ("ms_validity", _INT, 1, 0),
    ("alert_on_message_delivery", _FLAG, 0, 0),
    ("its_reply_type", _INT, 1, 0),
    ("its_session_info", _INT, 2, 0),
)
_TLV_BY_NAME: Final[dict[str, _TlvSpec]] = {
    name: _TlvSpec(_OPT[name], name, kind, size, mn) for name, kind, size, mn in _TLV_TYPES
}
_TLV_BY_TAG: Final[dict[int, _TlvSpec]] = {s.tag: s for s in _TLV_BY_NAME.values()}

_TLV_HEAD: Final = struct.Struct(">HH")
_HEADER: Final = struct.Struct(">IIII")


class _Bad(Exception):
    """Internal: a body decode failure, turned into PduDecodeError by decode() (which knows the header)."""

    def __init__(self, status: int, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.fields = fields


_S = CommandStatus


# name -> (pack, tag, size) for integer TLVs: one precompiled struct writes tag, length and value,
# which is most TLVs the gateway sends (sar_*, user_message_reference, message_state).
_INT_TLV_PACK: Final[dict[str | int, tuple[Callable[..., bytes], int, int]]] = {
    s.name: (struct.Struct(">HH" + {1: "B", 2: "H", 4: "I"}[s.size]).pack, s.tag, s.size)
    for s in _TLV_BY_NAME.values()
    if s.kind == _INT
}


def _encode_tlvs(tlvs: Mapping[str | int, Any]) -> bytes:
    """TLVs in dict order. Raises PduEncodeError for unknown names and values SMPP cannot carry."""
    out: list[bytes] = []
    append = out.append
    int_pack = _INT_TLV_PACK
    for key, value in tlvs.items():
        fast = int_pack.get(key)
        if fast is not None:
            pack, tag, size = fast
            try:
                append(pack(tag, size, value))
            except struct.error as e:
                raise PduEncodeError(
                    f"TLV {key}: {value!r} is not a {size}-octet unsigned int", _S.ESME_RINVOPTPARAMVAL, str(key)
                ) from e
            continue
        if isinstance(key, int):
            # Raw pass-through by integer tag (vendor TLVs, or a caller who wants exact bytes).
            raw = bytes(value)
            tag = key
            name = f"0x{key:04X}"
        else:
            spec = _TLV_BY_NAME.get(key)
            if spec is None:
                raise PduEncodeError(f"unknown TLV name {key!r}; pass vendor TLVs by integer tag", field=key)
            tag, name, kind, size = spec.tag, key, spec.kind, spec.size
            if kind == _CSTR:
                raw = _latin1(value, key) + b"\x00"
                if len(raw) > size or 0 in raw[:-1]:
                    raise PduEncodeError(
                        f"TLV {key}: longer than {size - 1} characters or holds NUL", _S.ESME_RINVPARLEN, key
                    )
            elif kind == _OCTETS:
                raw = bytes(value)
                if not spec.min_size <= len(raw) <= size:
                    raise PduEncodeError(
                        f"TLV {key}: {len(raw)} octets, must be {spec.min_size}..{size}", _S.ESME_RINVPARLEN, key
                    )
            else:  # _FLAG
                raw = b""
        if not 0 <= tag <= 0xFFFF or len(raw) > 0xFFFF:
            raise PduEncodeError(f"TLV {name}: tag or length does not fit 16 bits", _S.ESME_RINVPARLEN, name)
        append(_TLV_HEAD.pack(tag, len(raw)))
        append(raw)
    return b"".join(out)


# tag -> (name, kind): plain tuples, cheaper to unpack than NamedTuple attributes on the hot path.
_TLV_DECODE: Final[dict[int, tuple[str, int]]] = {s.tag: (s.name, s.kind) for s in _TLV_BY_NAME.values()}


def _decode_tlvs(b: bytes, p: int, end: int, into: dict[str | int, Any]) -> None:
    """Parse TLVs from b[p:end] into `into` (so a partial result survives an error).

    Liberal where carriers are known to be sloppy and it costs nothing: a C-string TLV without its
    NUL (several SMSCs send receipted_message_id that way) and integer TLVs of 1-4 octets whatever
    their nominal size. A receipt we refuse is resent by the carrier forever, so we only refuse what
    cannot be parsed at all.
    """
    by_tag = _TLV_DECODE
    unpack_head = _TLV_HEAD.unpack_from
    while p < end:
        if end - p < 4:
            raise _Bad(_S.ESME_RINVOPTPARSTREAM, f"{end - p} stray octets where a TLV header should be")
        tag, length = unpack_head(b, p)
        p += 4
        e = p + length
        if e > end:
            raise _Bad(_S.ESME_RINVOPTPARSTREAM, f"TLV 0x{tag:04X} length {length} overruns the body")
        spec = by_tag.get(tag)
        if spec is None:
            into[tag] = b[p:e]
        else:
            name, kind = spec
            if kind == _INT:
                if length == 1:
                    into[name] = b[p]
                elif length == 2:
                    into[name] = (b[p] << 8) | b[p + 1]
                elif 2 < length <= 4:
                    into[name] = int.from_bytes(b[p:e], "big")
                else:
                    raise _Bad(_S.ESME_RINVPARLEN, f"TLV {name}: integer of {length} octets")
            elif kind == _CSTR:
                nul = b.find(b"\x00", p, e)
                into[name] = b[p : nul if nul >= 0 else e].decode("latin-1")
            elif kind == _OCTETS:
                into[name] = b[p:e]
            else:  # _FLAG: the spec says length 0; tolerate junk rather than nack.
                into[name] = True
        p = e


def _latin1(value: object, name: str) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError as e:
            raise PduEncodeError(f"{name}: not representable in latin-1 octets", field=name) from e
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if value is None:
        return b""
    raise PduEncodeError(f"{name}: expected str, got {type(value).__name__}", field=name)


# ---------------------------------------------------------------------------------------------
# Mandatory-field layouts (SMPP 3.4 section 4), compiled at import into one straight-line encoder
# and decoder per command: no per-field dispatch at run time, consecutive integers packed by one
# precompiled struct, the NUL ending a C-string folded into the next struct as a pad byte.
# This is what makes the codec several times faster than a table walk (bench/bench_codec.py).
# ---------------------------------------------------------------------------------------------


class _F(NamedTuple):
    name: str
    kind: str  # "u8" | "cstr" | "sm" (sm_length + short_message)
    max: int = 0  # cstr: maximum octets including the NUL, as the spec states it
    status: int = CommandStatus.ESME_RINVPARLEN  # answer when the value is too long


def _u8(name: str) -> _F:
    return _F(name, "u8")


def _cstr(name: str, max_len: int, status: int = CommandStatus.ESME_RINVPARLEN) -> _F:
    return _F(name, "cstr", max_len, status)


_SM: Final = _F("short_message", "sm", 255, CommandStatus.ESME_RINVMSGLEN)

_BIND: Final = (
    _cstr("system_id", 16, _S.ESME_RINVSYSID),
    _cstr("password", 9, _S.ESME_RINVPASWD),
    _cstr("system_type", 13, _S.ESME_RINVSYSTYP),
    _u8("interface_version"),
    _u8("addr_ton"),
    _u8("addr_npi"),
    _cstr("address_range", 41),
)
_BIND_RESP: Final = (_cstr("system_id", 16, _S.ESME_RINVSYSID),)
_MESSAGE_ID: Final = (_cstr("message_id", 65, _S.ESME_RINVMSGID),)
_SM_BODY: Final = (
    _cstr("service_type", 6, _S.ESME_RINVSERTYP),
    _u8("source_addr_ton"),
    _u8("source_addr_npi"),
    _cstr("source_addr", 21, _S.ESME_RINVSRCADR),
    _u8("dest_addr_ton"),
    _u8("dest_addr_npi"),
    _cstr("destination_addr", 21, _S.ESME_RINVDSTADR),
    _u8("esm_class"),
    _u8("protocol_id"),
    _u8("priority_flag"),
    _cstr("schedule_delivery_time", 17, _S.ESME_RINVSCHED),
    _cstr("validity_period", 17, _S.ESME_RINVEXPIRY),
    _u8("registered_delivery"),
    _u8("replace_if_present_flag"),
    _u8("data_coding"),
    _u8("sm_default_msg_id"),
    _SM,
)

_LAYOUTS: Final[dict[CommandId, tuple[_F, ...]]] = {
    CommandId.GENERIC_NACK: (),
    CommandId.BIND_RECEIVER: _BIND,
    CommandId.BIND_TRANSMITTER: _BIND,
    CommandId.BIND_TRANSCEIVER: _BIND,
    CommandId.BIND_RECEIVER_RESP: _BIND_RESP,
    CommandId.BIND_TRANSMITTER_RESP: _BIND_RESP,
    CommandId.BIND_TRANSCEIVER_RESP: _BIND_RESP,
    CommandId.OUTBIND: (_cstr("system_id", 16, _S.ESME_RINVSYSID), _cstr("password", 9, _S.ESME_RINVPASWD)),
    CommandId.UNBIND: (),
    CommandId.UNBIND_RESP: (),
    CommandId.ENQUIRE_LINK: (),
    CommandId.ENQUIRE_LINK_RESP: (),
    CommandId.SUBMIT_SM: _SM_BODY,
    CommandId.SUBMIT_SM_RESP: _MESSAGE_ID,
    CommandId.DELIVER_SM: _SM_BODY,
    CommandId.DELIVER_SM_RESP: _MESSAGE_ID,
    # data_sm addresses are 65 octets in SMPP 3.4 (5.2.8 vs 21 for submit_sm; smpplib says 21).
    CommandId.DATA_SM: (
        _cstr("service_type", 6, _S.ESME_RINVSERTYP),
        _u8("source_addr_ton"),
        _u8("source_addr_npi"),
        _cstr("source_addr", 65, _S.ESME_RINVSRCADR),
        _u8("dest_addr_ton"),
        _u8("dest_addr_npi"),
        _cstr("destination_addr", 65, _S.ESME_RINVDSTADR),
        _u8("esm_class"),
        _u8("registered_delivery"),
        _u8("data_coding"),
    ),
    CommandId.DATA_SM_RESP: _MESSAGE_ID,
    CommandId.QUERY_SM: (
        _cstr("message_id", 65, _S.ESME_RINVMSGID),
        _u8("source_addr_ton"),
        _u8("source_addr_npi"),
        _cstr("source_addr", 21, _S.ESME_RINVSRCADR),
    ),
    CommandId.QUERY_SM_RESP: (
        _cstr("message_id", 65, _S.ESME_RINVMSGID),
        _cstr("final_date", 17),
        _u8("message_state"),
        _u8("error_code"),
    ),
    CommandId.CANCEL_SM: (
        _cstr("service_type", 6, _S.ESME_RINVSERTYP),
        _cstr("message_id", 65, _S.ESME_RINVMSGID),
        _u8("source_addr_ton"),
        _u8("source_addr_npi"),
        _cstr("source_addr", 21, _S.ESME_RINVSRCADR),
        _u8("dest_addr_ton"),
        _u8("dest_addr_npi"),
        _cstr("destination_addr", 21, _S.ESME_RINVDSTADR),
    ),
    CommandId.CANCEL_SM_RESP: (),
    CommandId.REPLACE_SM: (
        _cstr("message_id", 65, _S.ESME_RINVMSGID),
        _u8("source_addr_ton"),
        _u8("source_addr_npi"),
        _cstr("source_addr", 21, _S.ESME_RINVSRCADR),
        _cstr("schedule_delivery_time", 17, _S.ESME_RINVSCHED),
        _cstr("validity_period", 17, _S.ESME_RINVEXPIRY),
        _u8("registered_delivery"),
        _u8("sm_default_msg_id"),
        _SM,
    ),
    CommandId.REPLACE_SM_RESP: (),
    # alert_notification addresses are 65 octets in SMPP 3.4 4.12.1 (smpplib says 21).
    CommandId.ALERT_NOTIFICATION: (
        _u8("source_addr_ton"),
        _u8("source_addr_npi"),
        _cstr("source_addr", 65, _S.ESME_RINVSRCADR),
        _u8("esme_addr_ton"),
        _u8("esme_addr_npi"),
        _cstr("esme_addr", 65, _S.ESME_RINVDSTADR),
    ),
    # SUBMIT_MULTI / SUBMIT_MULTI_RESP carry lists: hand-written codecs below.
}

# Encoder signature: (command_id, command_status, sequence_number, fields, tlvs) -> whole frame.
_Encoder = Callable[[int, int, int, Mapping[str, Any], Mapping[str | int, Any]], bytes]
# Decoder signature: (frame, body_start, frame_end) -> (fields, end_of_mandatory_part).
_Decoder = Callable[[bytes, int, int], tuple[dict[str, Any], int]]


def _bad_cstr(name: str, value: bytes, max_len: int, status: int) -> PduEncodeError:
    if 0 in value:
        return PduEncodeError(f"{name}: holds a NUL octet", status, name)
    return PduEncodeError(f"{name}: {len(value)} octets, at most {max_len - 1} allowed", status, name)


def _cstr_fail(b: bytes, p: int, end: int, f: _F) -> _Bad:
    # No NUL inside the field's window: either the body ended first (truncated PDU) or the value
    # is longer than the spec allows.
    if p + f.max > end:
        return _Bad(_S.ESME_RINVCMDLEN, f"{f.name}: C-string not terminated before the end of the PDU")
    return _Bad(f.status, f"{f.name}: longer than {f.max - 1} octets")


def _defaults(layout: tuple[_F, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in layout:
        if f.kind == "u8":
            out[f.name] = 0
        elif f.kind == "cstr":
            out[f.name] = ""
        else:
            out["sm_length"] = 0
            out["short_message"] = b""
    return out


def _compile(cid: CommandId, layout: tuple[_F, ...]) -> tuple[_Encoder, _Decoder]:
    """Generate straight-line encode/decode functions for one layout (namedtuple-style codegen)."""
    ns: dict[str, Any] = {
        "_hdr": _HEADER.pack,
        "_enc_tlvs": _encode_tlvs,
        "_bad_cstr": _bad_cstr,
        "_cstr_fail": _cstr_fail,
        "_Bad": _Bad,
        "_PduEncodeError": PduEncodeError,
        "_RINVMSGLEN": int(_S.ESME_RINVMSGLEN),
        "_RINVCMDLEN": int(_S.ESME_RINVCMDLEN),
    }
    fname = cid.name.lower()

    # ---- encoder ----
    enc = [f"def _enc_{fname}(cid, status, seq, f, tlvs):", "    g = f.get"]
    items: list[str] = []  # join items after the header
    lens: list[str] = []
    fixed = 0
    fmt = ""
    args: list[str] = []
    nul = False

    def flush() -> None:
        nonlocal fmt, args, nul, fixed
        if fmt:
            full = (">x" if nul else ">") + fmt
            sname = f"_P{len(ns)}"
            ns[sname] = struct.Struct(full).pack
            items.append(f"{sname}({', '.join(args)})")
            fixed += struct.calcsize(full)
        elif nul:
            items.append('b"\\x00"')
            fixed += 1
        fmt, args, nul = "", [], False

    for i, f in enumerate(layout):
        if f.kind == "cstr":
            flush()
            ns[f"_F{i}"] = f
            enc += [
                f"    v{i} = g({f.name!r}) or ''",
                f"    v{i} = v{i}.encode('latin-1') if v{i}.__class__ is str else _latin1(v{i}, {f.name!r})",
                f"    if len(v{i}) >= {f.max} or 0 in v{i}: raise _bad_cstr({f.name!r}, v{i}, {f.max}, {int(f.status)})",
            ]
            items.append(f"v{i}")
            lens.append(f"len(v{i})")
            nul = True
        elif f.kind == "u8":
            fmt += "B"
            args.append(f"g({f.name!r}) or 0")
        else:  # sm
            enc += [
                "    sm = g('short_message') or b''",
                "    if len(sm) > 254: raise _PduEncodeError("
                "f'short_message: {len(sm)} octets, at most 254 (use message_payload)', _RINVMSGLEN, 'short_message')",
                "    if sm and tlvs and 'message_payload' in tlvs: raise _PduEncodeError("
                "'short_message and message_payload are mutually exclusive', _RINVMSGLEN, 'short_message')",
            ]
            fmt += "B"
            args.append("len(sm)")
            flush()
            items.append("sm")
            lens.append("len(sm)")
    flush()
    ns["_latin1"] = _latin1
    enc.append("    t = _enc_tlvs(tlvs) if tlvs else b''")
    total = " + ".join([str(HEADER_LENGTH + fixed), *lens, "len(t)"])
    enc.append(f"    return b''.join((_hdr({total}, cid, status, seq), {', '.join(items + ['t'])}))")

    # ---- decoder ----
    dec = [f"def _dec_{fname}(b, p, end):"]
    names: list[str] = []
    group: list[tuple[int, _F]] = []

    def flush_ints() -> None:
        if not group:
            return
        full = ">" + "B" * len(group)
        sname = f"_U{len(ns)}"
        ns[sname] = struct.Struct(full).unpack_from
        targets = ", ".join(f"x{i}" for i, _ in group)
        dec.append(f"    {targets}, = {sname}(b, p)")
        dec.append(f"    p += {len(group)}")
        group.clear()

    for i, f in enumerate(layout):
        if f.kind == "cstr":
            flush_ints()
            ns[f"_F{i}"] = f
            dec += [
                f"    i = b.find(b'\\x00', p, p + {f.max})",
                f"    if i < 0: raise _cstr_fail(b, p, end, _F{i})",
                f"    x{i} = b[p:i].decode('latin-1')",
                "    p = i + 1",
            ]
            names.append(f"{f.name!r}: x{i}")
        elif f.kind == "u8":
            group.append((i, f))
            names.append(f"{f.name!r}: x{i}")
        else:  # sm: sm_length then that many octets
            group.append((i, f))
            flush_ints()
            dec += [
                f"    e = p + x{i}",
                f"    if x{i} > 254: raise _Bad(_RINVMSGLEN, f'sm_length {{x{i}}} exceeds 254')",
                f"    if e > end: raise _Bad(_RINVCMDLEN, f'sm_length {{x{i}}} overruns the PDU')",
                "    sm = b[p:e]",
                "    p = e",
            ]
            names.append(f"'sm_length': x{i}")
            names.append("'short_message': sm")
    flush_ints()
    dec.append(f"    return {{{', '.join(names)}}}, p")

    source = "\n".join(enc) + "\n\n" + "\n".join(dec) + "\n"
    exec(compile(source, f"<gateway.smpp.pdu:{fname}>", "exec"), ns)  # noqa: S102 - our own tables
    encoder: _Encoder = ns[f"_enc_{fname}"]
    decoder: _Decoder = ns[f"_dec_{fname}"]
    encoder.__doc__ = decoder.__doc__ = source  # inspectable: help(pdu._ENCODERS[...])
    return encoder, decoder


# ---- submit_multi / submit_multi_resp: lists inside the mandatory part, written by hand ----

_SM_HEAD: Final = _SM_BODY[:4]  # service_type .. source_addr
_SM_TAIL: Final = _SM_BODY[7:]  # esm_class .. short_message
_DEST_SME: Final = (_u8("dest_addr_ton"), _u8("dest_addr_npi"), _cstr("destination_addr", 21, _S.ESME_RINVDSTADR))
_DEST_DL: Final = _cstr("dl_name", 21, _S.ESME_RINVDLNAME)


def _read_cstr(b: bytes, p: int, end: int, f: _F) -> tuple[str, int]:
    i = b.find(b"\x00", p, p + f.max)
    if i < 0:
        raise _cstr_fail(b, p, end, f)
    return b[p:i].decode("latin-1"), i + 1


def _read_u8(b: bytes, p: int, end: int) -> tuple[int, int]:
    if p >= end:
        raise _Bad(_S.ESME_RINVCMDLEN, "PDU ends inside its mandatory part")
    return b[p], p + 1


def _read_layout(b: bytes, p: int, end: int, layout: Iterable[_F], out: dict[str, Any]) -> int:
    for f in layout:
        if f.kind == "cstr":
            out[f.name], p = _read_cstr(b, p, end, f)
        elif f.kind == "u8":
            out[f.name], p = _read_u8(b, p, end)
        else:
            n, p = _read_u8(b, p, end)
            if n > 254:
                raise _Bad(_S.ESME_RINVMSGLEN, f"sm_length {n} exceeds 254")
            if p + n > end:
                raise _Bad(_S.ESME_RINVCMDLEN, f"sm_length {n} overruns the PDU")
            out["sm_length"], out["short_message"], p = n, b[p : p + n], p + n
    return p


def _write_layout(layout: Iterable[_F], f: Mapping[str, Any], out: list[bytes]) -> None:
    for spec in layout:
        if spec.kind == "cstr":
            v = _latin1(f.get(spec.name) or "", spec.name)
            if len(v) >= spec.max or 0 in v:
                raise _bad_cstr(spec.name, v, spec.max, spec.status)
            out.append(v + b"\x00")
        elif spec.kind == "u8":
            out.append(bytes((f.get(spec.name) or 0,)))
        else:
            sm = bytes(f.get("short_message") or b"")
            if len(sm) > 254:
                raise PduEncodeError("short_message: more than 254 octets", _S.ESME_RINVMSGLEN, "short_message")
            out.append(bytes((len(sm),)) + sm)


def _dec_submit_multi(b: bytes, p: int, end: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    p = _read_layout(b, p, end, _SM_HEAD, out)
    n, p = _read_u8(b, p, end)
    if n == 0 or n > 254:
        raise _Bad(_S.ESME_RINVNUMDESTS, f"number_of_dests {n} (1..254)")
    dests: list[DestAddress] = []
    for _ in range(n):
        flag, p = _read_u8(b, p, end)
        if flag == 1:
            d: dict[str, Any] = {}
            p = _read_layout(b, p, end, _DEST_SME, d)
            dests.append(DestAddress(1, d["dest_addr_ton"], d["dest_addr_npi"], d["destination_addr"]))
        elif flag == 2:
            name, p = _read_cstr(b, p, end, _DEST_DL)
            dests.append(DestAddress(2, dl_name=name))
        else:
            raise _Bad(_S.ESME_RINVDESTFLAG, f"dest_flag {flag}")
    out["number_of_dests"] = n
    out["dest_addresses"] = dests
    p = _read_layout(b, p, end, _SM_TAIL, out)
    return out, p


def _enc_submit_multi(cid: int, status: int, seq: int, f: Mapping[str, Any], tlvs: Mapping[str | int, Any]) -> bytes:
    out: list[bytes] = []
    _write_layout(_SM_HEAD, f, out)
    dests = list(f.get("dest_addresses") or ())
    if not 1 <= len(dests) <= 254:
        raise PduEncodeError("dest_addresses: 1..254 entries", _S.ESME_RINVNUMDESTS, "dest_addresses")
    out.append(bytes((len(dests),)))
    for d in dests:
        d = DestAddress(*d)
        if d.dest_flag == 1:
            out.append(b"\x01")
            _write_layout(_DEST_SME, d._asdict(), out)
        elif d.dest_flag == 2:
            out.append(b"\x02")
            _write_layout((_DEST_DL,), d._asdict(), out)
        else:
            raise PduEncodeError(f"dest_flag {d.dest_flag}", _S.ESME_RINVDESTFLAG, "dest_addresses")
    _write_layout(_SM_TAIL, f, out)
    out.append(_encode_tlvs(tlvs) if tlvs else b"")
    body = b"".join(out)
    return _HEADER.pack(HEADER_LENGTH + len(body), cid, status, seq) + body


_UNSUCCESS: Final = struct.Struct(">I")


def _dec_submit_multi_resp(b: bytes, p: int, end: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    out["message_id"], p = _read_cstr(b, p, end, _MESSAGE_ID[0])
    n, p = _read_u8(b, p, end)
    failed: list[UnsuccessSme] = []
    for _ in range(n):
        d: dict[str, Any] = {}
        p = _read_layout(b, p, end, _DEST_SME, d)
        if p + 4 > end:
            raise _Bad(_S.ESME_RINVCMDLEN, "PDU ends inside unsuccess_sme")
        (code,) = _UNSUCCESS.unpack_from(b, p)
        p += 4
        failed.append(UnsuccessSme(d["dest_addr_ton"], d["dest_addr_npi"], d["destination_addr"], code))
    out["no_unsuccess"] = n
    out["unsuccess_sme"] = failed
    return out, p


def _enc_submit_multi_resp(
    cid: int, status: int, seq: int, f: Mapping[str, Any], tlvs: Mapping[str | int, Any]
) -> bytes:
    out: list[bytes] = []
    _write_layout(_MESSAGE_ID, f, out)
    failed = list(f.get("unsuccess_sme") or ())
    if len(failed) > 255:
        raise PduEncodeError("unsuccess_sme: at most 255 entries", _S.ESME_RINVNUMDESTS, "unsuccess_sme")
    out.append(bytes((len(failed),)))
    for u in failed:
        u = UnsuccessSme(*u)
        _write_layout(_DEST_SME, u._asdict(), out)
        out.append(_UNSUCCESS.pack(u.error_status_code))
    out.append(_encode_tlvs(tlvs) if tlvs else b"")
    body = b"".join(out)
    return _HEADER.pack(HEADER_LENGTH + len(body), cid, status, seq) + body


_ENCODERS: Final[dict[int, _Encoder]] = {}
# command_id -> (CommandId, decoder, empty_fields): empty_fields makes the fields of an empty-bodied
# PDU, allowed for responses (SMPP 3.4 4.1.2, 4.4.2: "the body ... is not returned if the command_status is
# non-zero", which many SMSCs do) and for commands without mandatory fields; None for requests,
# whose empty body is an error.
_DECODERS: Final[dict[int, tuple[CommandId, _Decoder, Callable[[], dict[str, Any]] | None]]] = {}
for _cid, _layout in _LAYOUTS.items():
    _e, _d = _compile(_cid, _layout)
    _ENCODERS[_cid] = _e
    _DECODERS[_cid] = (_cid, _d, _defaults(_layout).copy if (_cid.is_response or not _layout) else None)
_ENCODERS[CommandId.SUBMIT_MULTI] = _enc_submit_multi
_ENCODERS[CommandId.SUBMIT_MULTI_RESP] = _enc_submit_multi_resp
_DECODERS[CommandId.SUBMIT_MULTI] = (CommandId.SUBMIT_MULTI, _dec_submit_multi, None)
_DECODERS[CommandId.SUBMIT_MULTI_RESP] = (
    CommandId.SUBMIT_MULTI_RESP,
    _dec_submit_multi_resp,
    lambda: {"message_id": "", "no_unsuccess": 0, "unsuccess_sme": []},
)
del _cid, _layout, _e, _d


# ---------------------------------------------------------------------------------------------
# Public codec.
# ---------------------------------------------------------------------------------------------


def encode(pdu: Pdu) -> bytes:
    """The whole frame for ``pdu``, header included.

    Raises PduEncodeError (a ValueError) when a field cannot be carried: over-long or non-latin-1
    C-string, short_message over 254 octets, integer out of range, unknown TLV name, unknown
    command_id. Never truncates.
    """
    enc = _ENCODERS.get(pdu.command_id)
    if enc is None:
        raise PduEncodeError(f"cannot encode command_id 0x{pdu.command_id:08X}", _S.ESME_RINVCMDID)
    try:
        return enc(pdu.command_id, pdu.command_status, pdu.sequence_number, pdu.fields, pdu.tlvs)
    except PduEncodeError:
        raise
    except (struct.error, TypeError, AttributeError, ValueError, OverflowError) as e:
        # struct.error: an int field out of 0..255 or a header value out of uint32; TypeError /
        # AttributeError: a value of the wrong type (e.g. str short_message).
        raise PduEncodeError(f"{pdu.command_name}: {e}") from e


def decode(frame: bytes | bytearray | memoryview) -> Pdu:
    """One whole frame (as FrameBuffer returns it) → Pdu.

    Raises FramingError when the frame is shorter than a header or its command_length disagrees
    with its size (framing is lost: close), PduDecodeError for everything else (unknown command_id
    → ESME_RINVCMDID, truncated body → ESME_RINVCMDLEN, over-long field → the field's status,
    bad TLV stream → ESME_RINVOPTPARSTREAM / ESME_RINVPARLEN); never any other exception.
    """
    if not isinstance(frame, bytes):
        frame = bytes(frame)
    n = len(frame)
    if n < HEADER_LENGTH:
        raise FramingError(f"frame of {n} octets is shorter than the SMPP header", n)
    length, cid, status, seq = _HEADER.unpack_from(frame)
    if length != n:
        raise FramingError(f"command_length {length} but the frame holds {n} octets", length)
    entry = _DECODERS.get(cid)
    if entry is None:
        raise PduDecodeError(
            f"unknown command_id 0x{cid:08X}", _S.ESME_RINVCMDID, command_id=cid, sequence_number=seq
        )
    command, dec, empty = entry
    fields: dict[str, Any] | None = None
    tlvs: dict[str | int, Any] = {}
    try:
        if n == HEADER_LENGTH and empty is not None:
            fields = empty()
            return Pdu(command, seq, status, fields, tlvs)
        fields, p = dec(frame, HEADER_LENGTH, n)
        if p < n:
            _decode_tlvs(frame, p, n, tlvs)
        return Pdu(command, seq, status, fields, tlvs)
    except _Bad as e:
        partial = Pdu(command, seq, status, fields, tlvs) if fields is not None else None
        raise PduDecodeError(
            f"{command.smpp_name}: {e}", e.status, command_id=cid, sequence_number=seq, pdu=partial
        ) from None
    except struct.error:
        # unpack_from past the end of the frame: the mandatory part is cut short.
        raise PduDecodeError(
            f"{command.smpp_name}: PDU ends inside its mandatory part",
            _S.ESME_RINVCMDLEN,
            command_id=cid,
            sequence_number=seq,
        ) from None
    except Exception as e:  # pragma: no cover - a decoder bug must cost one PDU, not the bind
        raise PduDecodeError(
            f"{command.smpp_name}: internal decode error {e!r}",
            _S.ESME_RSYSERR,
            command_id=cid,
            sequence_number=seq,
        ) from e


class FrameBuffer:
    """Cuts a TCP byte stream into whole SMPP frames. No I/O; linear in the bytes fed.

    ``feed(data)`` returns the frames completed by ``data`` (possibly none). It raises FramingError
    as soon as a header announces a command_length below 16 or above ``max_length`` — before
    buffering that frame — so at most ``max_length`` octets are ever held. Once broken, the buffer
    stays broken: every later ``feed`` raises the same error. If good frames precede the bad header
    in the same ``feed``, they are returned and the error is raised by the next ``feed`` (call
    ``feed(b"")`` to surface it immediately), so no complete PDU is lost.
    """

    __slots__ = ("_buf", "_max", "_error")

    def __init__(self, max_length: int = MAX_PDU_LENGTH) -> None:
        if max_length < HEADER_LENGTH:
            raise ValueError(f"max_length must be at least {HEADER_LENGTH}")
        self._buf = bytearray()
        self._max = max_length
        self._error: FramingError | None = None

    @property
    def max_length(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        """Octets held for an incomplete frame."""
        return len(self._buf)

    @property
    def error(self) -> FramingError | None:
        """The framing error this buffer has hit, if any (it will raise it on the next feed)."""
        return self._error

    def _check(self, length: int) -> None:
        if length < HEADER_LENGTH or length > self._max:
            self._error = FramingError(
                f"command_length {length} outside {HEADER_LENGTH}..{self._max}: framing lost", length
            )
            self._buf = bytearray()
            raise self._error

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the complete frames (header included), oldest first."""
        if self._error is not None:
            raise self._error
        frames: list[bytes] = []
        buf = self._buf
        view = memoryview(data)
        pos = 0
        n = len(view)
        try:
            if buf:
                # Finish the frame already started; take only the octets it needs.
                if len(buf) < 4:
                    take = min(4 - len(buf), n)
                    buf += view[:take]
                    pos = take
                    if len(buf) < 4:
                        return frames
                length = int.from_bytes(buf[:4], "big")
                self._check(length)
                take = min(length - len(buf), n - pos)
                buf += view[pos : pos + take]
                pos += take
                if len(buf) < length:
                    return frames
                frames.append(bytes(buf))
                buf.clear()
            # Fast path: frames straight out of `data`, no copy into the buffer.
            while n - pos >= 4:
                length = int.from_bytes(view[pos : pos + 4], "big")
                self._check(length)
                if n - pos < length:
                    break
                frames.append(bytes(view[pos : pos + length]))
                pos += length
            if pos < n:
                buf += view[pos:]
        except FramingError:
            if frames:
                return frames  # self._error is set: the next feed raises it
            raise
        finally:
            view.release()
        return frames


# ---------------------------------------------------------------------------------------------
# Builders for the PDUs the gateway and the simulator send. They return Pdu values; call encode().
# ---------------------------------------------------------------------------------------------


def bind(
    command_id: int,
    sequence_number: int,
    system_id: str,
    password: str = "",
    *,
    system_type: str = "",
    interface_version: int = SMPP_VERSION_34,
    addr_ton: int = 0,
    addr_npi: int = 0,
    address_range: str = "",
) -> Pdu:
    """bind_transmitter / bind_receiver / bind_transceiver, chosen by ``command_id``."""
    return Pdu(
        command_id,
        sequence_number,
        0,
        {
            "system_id": system_id,
            "password": password,
            "system_type": system_type,
            "interface_version": interface_version,
            "addr_ton": addr_ton,
            "addr_npi": addr_npi,
            "address_range": address_range,
        },
    )


def bind_transmitter(sequence_number: int, system_id: str, password: str = "", **kw: Any) -> Pdu:
    return bind(CommandId.BIND_TRANSMITTER, sequence_number, system_id, password, **kw)


def bind_receiver(sequence_number: int, system_id: str, password: str = "", **kw: Any) -> Pdu:
    return bind(CommandId.BIND_RECEIVER, sequence_number, system_id, password, **kw)


def bind_transceiver(sequence_number: int, system_id: str, password: str = "", **kw: Any) -> Pdu:
    return bind(CommandId.BIND_TRANSCEIVER, sequence_number, system_id, password, **kw)


def bind_resp(
    command_id: int,
    sequence_number: int,
    system_id: str = "",
    status: int = 0,
    sc_interface_version: int | None = SMPP_VERSION_34,
) -> Pdu:
    """The response to a bind; ``command_id`` may be the bind's own id or its *_resp id."""
    tlvs: dict[str | int, Any] = {}
    if sc_interface_version is not None and status == 0:
        tlvs["sc_interface_version"] = sc_interface_version
    return Pdu(command_id | _RESPONSE_BIT, sequence_number, status, {"system_id": system_id}, tlvs)


def outbind(sequence_number: int, system_id: str, password: str = "") -> Pdu:
    return Pdu(CommandId.OUTBIND, sequence_number, 0, {"system_id": system_id, "password": password})


def unbind(sequence_number: int) -> Pdu:
    return Pdu(CommandId.UNBIND, sequence_number)


def unbind_resp(sequence_number: int, status: int = 0) -> Pdu:
    return Pdu(CommandId.UNBIND_RESP, sequence_number, status)


def enquire_link(sequence_number: int) -> Pdu:
    return Pdu(CommandId.ENQUIRE_LINK, sequence_number)


def enquire_link_resp(sequence_number: int, status: int = 0) -> Pdu:
    return Pdu(CommandId.ENQUIRE_LINK_RESP, sequence_number, status)


def generic_nack(sequence_number: int, status: int) -> Pdu:
    return Pdu(CommandId.GENERIC_NACK, sequence_number, status)


def _sm_fields(
    service_type: str,
    source_addr_ton: int,
    source_addr_npi: int,
    source_addr: str,
    dest_addr_ton: int,
    dest_addr_npi: int,
    destination_addr: str,
    esm_class: int,
    protocol_id: int,
    priority_flag: int,
    schedule_delivery_time: str,
    validity_period: str,
    registered_delivery: int,
    replace_if_present_flag: int,
    data_coding: int,
    sm_default_msg_id: int,
    short_message: bytes,
) -> dict[str, Any]:
    return {
        "service_type": service_type,
        "source_addr_ton": source_addr_ton,
        "source_addr_npi": source_addr_npi,
        "source_addr": source_addr,
        "dest_addr_ton": dest_addr_ton,
        "dest_addr_npi": dest_addr_npi,
        "destination_addr": destination_addr,
        "esm_class": esm_class,
        "protocol_id": protocol_id,
        "priority_flag": priority_flag,
        "schedule_delivery_time": schedule_delivery_time,
        "validity_period": validity_period,
        "registered_delivery": registered_delivery,
        "replace_if_present_flag": replace_if_present_flag,
        "data_coding": data_coding,
        "sm_default_msg_id": sm_default_msg_id,
        "sm_length": len(short_message),
        "short_message": short_message,
    }


def submit_sm(
    sequence_number: int,
    destination_addr: str,
    short_message: bytes = b"",
    *,
    source_addr: str = "",
    source_addr_ton: int = 0,
    source_addr_npi: int = 0,
    dest_addr_ton: int = 0,
    dest_addr_npi: int = 0,
    esm_class: int = 0,
    registered_delivery: int = 0,
    data_coding: int = 0,
    service_type: str = "",
    protocol_id: int = 0,
    priority_flag: int = 0,
    schedule_delivery_time: str = "",
    validity_period: str = "",
    replace_if_present_flag: int = 0,
    sm_default_msg_id: int = 0,
    tlvs: dict[str | int, Any] | None = None,
) -> Pdu:
    """A submit_sm. TON/NPI policy (CONTRACT: international TON 1 NPI 1, ...) is the caller's."""
    return Pdu(
        CommandId.SUBMIT_SM,
        sequence_number,
        0,
        _sm_fields(
            service_type, source_addr_ton, source_addr_npi, source_addr, dest_addr_ton, dest_addr_npi,
            destination_addr, esm_class, protocol_id, priority_flag, schedule_delivery_time,
            validity_period, registered_delivery, replace_if_present_flag, data_coding,
            sm_default_msg_id, short_message,
        ),
        tlvs if tlvs is not None else {},
    )


def submit_sm_resp(sequence_number: int, message_id: str = "", status: int = 0) -> Pdu:
    return Pdu(CommandId.SUBMIT_SM_RESP, sequence_number, status, {"message_id": message_id})


def deliver_sm(
    sequence_number: int,
    source_addr: str,
    destination_addr: str,
    short_message: bytes = b"",
    *,
    source_addr_ton: int = 0,
    source_addr_npi: int = 0,
    dest_addr_ton: int = 0,
    dest_addr_npi: int = 0,
    esm_class: int = 0,
    data_coding: int = 0,
    service_type: str = "",
    protocol_id: int = 0,
    priority_flag: int = 0,
    registered_delivery: int = 0,
    tlvs: dict[str | int, Any] | None = None,
) -> Pdu:
    """A deliver_sm (MO, or a receipt with esm_class 0x04 and receipted_message_id/message_state TLVs)."""
    return Pdu(
        CommandId.DELIVER_SM,
        sequence_number,
        0,
        _sm_fields(
            service_type, source_addr_ton, source_addr_npi, source_addr, dest_addr_ton, dest_addr_npi,
            destination_addr, esm_class, protocol_id, priority_flag, "", "", registered_delivery, 0,
            data_coding, 0, short_message,
        ),
        tlvs if tlvs is not None else {},
    )


def deliver_sm_resp(sequence_number: int, message_id: str = "", status: int = 0) -> Pdu:
    return Pdu(CommandId.DELIVER_SM_RESP, sequence_number, status, {"message_id": message_id})


def data_sm(
    sequence_number: int,
    source_addr: str,
    destination_addr: str,
    *,
    source_addr_ton: int = 0,
    source_addr_npi: int = 0,
    dest_addr_ton: int = 0,
    dest_addr_npi: int = 0,
    esm_class: int = 0,
    registered_delivery: int = 0,
    data_coding: int = 0,
    service_type: str = "",
    tlvs: dict[str | int, Any] | None = None,
) -> Pdu:
    return Pdu(
        CommandId.DATA_SM,
        sequence_number,
        0,
        {
            "service_type": service_type,
            "source_addr_ton": source_addr_ton,
            "source_addr_npi": source_addr_npi,
            "source_addr": source_addr,
            "dest_addr_ton": dest_addr_ton,
            "dest_addr_npi": dest_addr_npi,
            "destination_addr": destination_addr,
            "esm_class": esm_class,
            "registered_delivery": registered_delivery,
            "data_coding": data_coding,
        },
        tlvs if tlvs is not None else {},
    )


def data_sm_resp(sequence_number: int, message_id: str = "", status: int = 0) -> Pdu:
    return Pdu(CommandId.DATA_SM_RESP, sequence_number, status, {"message_id": message_id})


def response_for(request: Pdu, status: int = 0, **fields: Any) -> Pdu:
    """The response to ``request``: its *_resp with the same sequence_number, or generic_nack when
    the request has none (unknown id, outbind, alert_notification, or a response itself)."""
    resp = _RESPONSE_OF.get(request.command_id)
    if resp is None:
        return Pdu(CommandId.GENERIC_NACK, request.sequence_number, status or _S.ESME_RINVCMDID)
    return Pdu(resp, request.sequence_number, status, fields)


# Statuses that mean "we could not read what you sent" rather than "we read it and refuse":
# the spec's answer to those is generic_nack (SMPP 3.4 4.3.1, generic_nack).
_NACK_STATUSES: Final = frozenset({_S.ESME_RINVCMDLEN, _S.ESME_RINVCMDID})


def error_response(err: PduDecodeError) -> Pdu | None:
    """What to send back for a PDU that failed to decode, or None when nothing should be sent.

    Requests whose command we know get their *_resp with the error status (so the peer can match
    it to its window), unless the PDU could not be read at all (bad length/unknown id), which gets
    generic_nack. A response that fails to decode is never answered (there is nothing to answer;
    log it and let the request time out).
    """
    if err.command_id & _RESPONSE_BIT:
        return None
    resp = _RESPONSE_OF.get(err.command_id)
    if resp is None or err.command_status in _NACK_STATUSES:
        return Pdu(CommandId.GENERIC_NACK, err.sequence_number, err.command_status)
    empty = _DECODERS[resp][2]
    return Pdu(resp, err.sequence_number, err.command_status, empty() if empty is not None else {})


# ---------------------------------------------------------------------------------------------
# Byte-level fast paths for the two responses sent once per message (simulator: submit_sm_resp;
# gateway: deliver_sm_resp). Same bytes as encode(submit_sm_resp(...)), without the Pdu.
# ---------------------------------------------------------------------------------------------


_SUBMIT_SM_RESP: Final = int(CommandId.SUBMIT_SM_RESP)
_DELIVER_SM_RESP: Final = int(CommandId.DELIVER_SM_RESP)


def encode_submit_sm_resp(sequence_number: int, message_id: str = "", status: int = 0) -> bytes:
    """== encode(submit_sm_resp(sequence_number, message_id, status)), about twice as fast."""
    mid = message_id.encode("latin-1") if message_id.__class__ is str else _latin1(message_id, "message_id")
    if len(mid) >= 65 or 0 in mid:
        raise _bad_cstr("message_id", mid, 65, _S.ESME_RINVMSGID)
    try:
        return b"".join((_HEADER.pack(17 + len(mid), _SUBMIT_SM_RESP, status, sequence_number), mid, b"\x00"))
    except struct.error as e:
        raise PduEncodeError(f"submit_sm_resp: {e}") from e


def encode_deliver_sm_resp(sequence_number: int, status: int = 0) -> bytes:
    """== encode(deliver_sm_resp(sequence_number, "", status)), without building a Pdu."""
    try:
        return _HEADER.pack(17, _DELIVER_SM_RESP, status, sequence_number) + b"\x00"
    except struct.error as e:
        raise PduEncodeError(f"deliver_sm_resp: {e}") from e
