"""gateway.smpp.pdu: tables, hex vectors, cross-checks against smpplib, framing, and the fuzz invariant.

The cross-checks are the point of this file: smpplib is an independent SMPP 3.4 implementation, so
where both encoders produce the same bytes and each decodes the other's, our field layouts are right.
Where smpplib deviates from the spec (its quirks), the exclusions are listed explicitly below.
"""

from __future__ import annotations

import struct
import warnings
from typing import Any

import pytest
import smpplib.client  # type: ignore[import-untyped]
import smpplib.command  # type: ignore[import-untyped]
import smpplib.command_codes  # type: ignore[import-untyped]
import smpplib.consts  # type: ignore[import-untyped]
import smpplib.smpp  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smpplib.ptypes import flag as lib_flag  # type: ignore[import-untyped]
from smpplib.ptypes import ostr as lib_ostr

from gateway.smpp import pdu as P
from gateway.smpp.pdu import CommandId, CommandStatus, FrameBuffer, Pdu

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def lib_client() -> smpplib.client.Client:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return smpplib.client.Client("127.0.0.1", 2775, allow_unknown_opt_params=True)


CLIENT = lib_client()


def frame(cid: int, seq: int, body: bytes = b"", status: int = 0) -> bytes:
    return struct.pack(">IIII", 16 + len(body), cid, status, seq) + body


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------


def test_command_ids_are_smpplibs_table() -> None:
    assert {c.smpp_name: int(c) for c in CommandId} == smpplib.command_codes.commands


def test_command_status_is_smpplibs_table() -> None:
    lib = {k[5:]: v for k, v in vars(smpplib.consts).items() if k.startswith("SMPP_ESME_")}
    assert {s.name: int(s) for s in CommandStatus} == lib


@pytest.mark.parametrize(
    ("code", "name"),
    [(0, "ESME_ROK"), (11, "ESME_RINVDSTADR"), (0x58, "ESME_RTHROTTLED"), (0x14, "ESME_RMSGQFUL"),
     (0x400, "0x00000400"), (0x09, "0x00000009"), (0xFFFFFFFF, "0xFFFFFFFF")],
)
def test_status_name(code: int, name: str) -> None:
    assert P.status_name(code) == name


def test_command_names_and_responses() -> None:
    assert P.command_name(4) == "submit_sm"
    assert P.command_name(0x1234) == "0x00001234"
    assert CommandId.SUBMIT_SM.response is CommandId.SUBMIT_SM_RESP
    assert CommandId.OUTBIND.response is None and CommandId.ALERT_NOTIFICATION.response is None
    assert CommandId.GENERIC_NACK.is_response and not CommandId.DATA_SM.is_response


def test_every_smpplib_tlv_has_a_type() -> None:
    assert {t.name.lower(): int(t) for t in P.TlvTag} == smpplib.consts.OPTIONAL_PARAMS
    assert set(P._TLV_BY_NAME) == set(smpplib.consts.OPTIONAL_PARAMS)


# ------------------------------------------------------------------------------------------------
# Hex vectors (cloudhopper PduDecoderTest style: every field asserted, nothing left over)
# ------------------------------------------------------------------------------------------------


def test_vector_enquire_link_resp() -> None:
    p = P.decode(bytes.fromhex("0000001080000015000000000a342ee7"))
    assert (p.command_id, p.command_status, p.sequence_number, p.fields, p.tlvs) == (
        CommandId.ENQUIRE_LINK_RESP, 0, 0x0A342EE7, {}, {})


def test_vector_submit_sm_resp() -> None:
    data = bytes.fromhex("0000001c80000004000000000a342ee1393432353834333135393700")
    p = P.decode(data)
    assert p.command_id == CommandId.SUBMIT_SM_RESP and p.sequence_number == 0x0A342EE1
    assert p.fields == {"message_id": "94258431597"}
    assert P.encode(p) == data == P.encode_submit_sm_resp(0x0A342EE1, "94258431597")


def test_vector_bind_transceiver() -> None:
    data = bytes.fromhex("0000001f000000090000000000000001" "677700736563726574000034010100")
    p = P.decode(data)
    assert p.fields == {"system_id": "gw", "password": "secret", "system_type": "", "interface_version": 0x34,
                        "addr_ton": 1, "addr_npi": 1, "address_range": ""}
    assert P.encode(P.bind_transceiver(1, "gw", "secret", addr_ton=1, addr_npi=1)) == data


def test_vector_receipt_deliver_sm() -> None:
    text = b"id:ABC123 sub:001 dlvrd:001 submit date:2611231000 done date:2611231001 stat:DELIVRD err:000 text:"
    body = (b"\x00" b"\x01\x01" b"8613800138000\x00" b"\x05\x00" b"Brand\x00" b"\x04\x00\x00" b"\x00" b"\x00"
            b"\x00\x00\x00\x00" + bytes([len(text)]) + text
            + b"\x00\x1e\x00\x07ABC123\x00" b"\x04\x27\x00\x01\x02" b"\x04\x23\x00\x03\x03\x00\x00"
            + b"\x14\x00\x00\x02hi")  # + an unknown vendor TLV 0x1400
    p = P.decode(frame(5, 77, body))
    assert p.fields["source_addr"] == "8613800138000" and p.fields["esm_class"] == 4
    assert p.fields["short_message"] == text and p.fields["sm_length"] == len(text)
    assert p.tlvs == {"receipted_message_id": "ABC123", "message_state": 2,
                      "network_error_code": b"\x03\x00\x00", 0x1400: b"hi"}
    assert P.encode(p) == frame(5, 77, body)  # unknown TLV preserved byte for byte


def test_error_response_without_body_decodes_with_defaults() -> None:
    # SMPP 3.4: "the body is not returned when command_status is non-zero" - many SMSCs do that.
    p = P.decode(frame(CommandId.SUBMIT_SM_RESP, 5, status=0x58))
    assert p.command_status == CommandStatus.ESME_RTHROTTLED and p.fields == {"message_id": ""}
    p = P.decode(frame(CommandId.BIND_TRANSCEIVER_RESP, 1, status=0x0E))
    assert p.fields == {"system_id": ""}


def test_lenient_tlvs() -> None:
    # receipted_message_id without its NUL and a 4-octet message_state are seen in the wild.
    body = P.encode(P.deliver_sm_resp(1))[16:]
    data = frame(CommandId.DELIVER_SM_RESP, 1, body + b"\x00\x1e\x00\x03abc" + b"\x04\x27\x00\x04\x00\x00\x00\x02")
    assert P.decode(data).tlvs == {"receipted_message_id": "abc", "message_state": 2}


# ------------------------------------------------------------------------------------------------
# Cross-check against smpplib: same bytes from both encoders; each decodes the other's bytes.
# ------------------------------------------------------------------------------------------------

LIB_COMMANDS = [
    "bind_transmitter", "bind_receiver", "bind_transceiver", "bind_transmitter_resp", "bind_receiver_resp",
    "bind_transceiver_resp", "generic_nack", "submit_sm", "submit_sm_resp", "deliver_sm", "deliver_sm_resp",
    "data_sm", "data_sm_resp", "query_sm", "query_sm_resp", "unbind", "unbind_resp", "enquire_link",
    "enquire_link_resp", "alert_notification",
]


def _lib_class(name: str) -> type[smpplib.command.Command]:
    return type(smpplib.smpp.make_pdu(name, client=CLIENT))


def comparable_tlvs(name: str) -> tuple[list[tuple[str, Any]], set[str]]:
    """smpplib's optional params for `name` (in its encoding order) whose type agrees with SMPP 3.4
    as we implement it, and the set it disagrees on (its quirks)."""
    cls = _lib_class(name)
    ok: list[tuple[str, Any]] = []
    quirks: set[str] = set()
    for field in cls.params_order:
        if field not in smpplib.consts.OPTIONAL_PARAMS or field in getattr(cls, "mandatory_fields", ()):
            continue
        lib, ours = cls.params[field], P._TLV_BY_NAME[field]
        same = (
            (lib.type is int and ours.kind == P._INT and lib.size == ours.size)
            or (lib.type is lib_ostr and ours.kind == P._OCTETS)
            or (lib.type is str and ours.kind == P._CSTR)
        )
        if same and lib.type is not lib_flag:
            ok.append((field, lib))
        else:
            quirks.add(field)
    return ok, quirks


def test_smpplib_tlv_quirks_are_the_known_ones() -> None:
    """Where smpplib's per-command TLV types disagree with SMPP 3.4 5.3.2 (we follow the spec)."""
    quirks = {name: comparable_tlvs(name)[1] for name in LIB_COMMANDS}
    assert {k: v for k, v in quirks.items() if v} == {
        # source_addr_subunit size 2 (spec: 1); subaddresses as NUL-terminated strings (spec: octets);
        # alert_on_message_delivery never encoded (flag type ignored by its encoder).
        "submit_sm": {"source_addr_subunit", "source_subaddress", "dest_subaddress", "alert_on_message_delivery"},
        "deliver_sm": {"source_subaddress", "dest_subaddress"},
        "data_sm": {"source_subaddress", "dest_subaddress", "callback_num_atag", "alert_on_message_delivery"},
        # delivery_failure_reason as a string (spec: 1-octet int), network_error_code as a C-string.
        "data_sm_resp": {"delivery_failure_reason", "network_error_code"},
    }


def _tlv_value(name: str, lib: Any) -> st.SearchStrategy[Any]:
    ours = P._TLV_BY_NAME[name]
    if ours.kind == P._INT:
        return st.integers(0, (1 << (8 * ours.size)) - 1)
    if ours.kind == P._OCTETS:
        lo = max(1, ours.min_size)  # smpplib omits empty octet strings
        hi = min(ours.size, 300)
        return st.binary(min_size=lo, max_size=hi)
    # smpplib encodes string TLVs as UTF-8 and ours as latin-1: ASCII is where they agree.
    return st.text(st.characters(min_codepoint=1, max_codepoint=127), min_size=1, max_size=min(ours.size - 1, 80))


LATIN1_NO_NUL = st.characters(min_codepoint=1, max_codepoint=255)


@st.composite
def lib_pdu_args(draw: st.DrawFn, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(mandatory fields, tlvs) valid for both codecs."""
    cid = CommandId[name.upper()]
    cls = _lib_class(name)
    fields: dict[str, Any] = {}
    for f in P._LAYOUTS[cid]:
        if f.kind == "u8":
            fields[f.name] = draw(st.integers(0, 255))
        elif f.kind == "cstr":
            # data_sm/alert_notification: smpplib allows 21 octets where the spec allows 65.
            cap = min(f.max, cls.params[f.name].max) - 1
            fields[f.name] = draw(st.text(LATIN1_NO_NUL, max_size=cap))
        else:
            fields["short_message"] = draw(st.binary(max_size=254))
    if name.startswith("bind_") and not name.endswith("_resp"):
        fields["interface_version"] = 0x34  # smpplib overwrites it with 0x34 whatever it is given
    if name == "query_sm" and not fields["message_id"]:
        fields["message_id"] = "1"  # smpplib refuses an empty one
    ok, _ = comparable_tlvs(name)
    tlvs: dict[str, Any] = {}
    for tname, lib in ok:
        if draw(st.integers(0, 3)) == 0:  # about a quarter of the allowed TLVs
            tlvs[tname] = draw(_tlv_value(tname, lib))
    if "message_payload" in tlvs and fields.get("short_message"):
        fields["short_message"] = b""  # mutually exclusive (both codecs refuse)
    return fields, tlvs


def _lib_make(name: str, seq: int, status: int, fields: dict[str, Any], tlvs: dict[str, Any]) -> Any:
    kw = {k: v for k, v in fields.items() if k != "sm_length"}
    p = smpplib.smpp.make_pdu(name, client=CLIENT, **kw, **tlvs)
    p.sequence = seq  # smpplib ignores sequence= for most commands (style-anchors 3.2.4)
    p.status = status
    return p


def _as_lib(v: Any) -> Any:
    return v.encode("latin-1") if isinstance(v, str) else v


@pytest.mark.parametrize("name", LIB_COMMANDS)
@FAST
@given(data=st.data())
def test_cross_check_with_smpplib(name: str, data: st.DataObject) -> None:
    fields, tlvs = data.draw(lib_pdu_args(name))
    seq = data.draw(st.integers(0, 0x7FFFFFFF))
    status = data.draw(st.sampled_from([0, 0x58, 0x0B, 0x400])) if name.endswith(("_resp", "nack")) else 0
    cid = CommandId[name.upper()]

    tlv_arg: dict[str | int, Any] = dict(tlvs.items())
    ours = P.encode(Pdu(cid, seq, status, dict(fields), tlv_arg))
    theirs = _lib_make(name, seq, status, fields, tlvs).generate()
    assert ours == theirs

    # Ours decodes smpplib's bytes back into exactly what was given.
    back = P.decode(theirs)
    assert (back.command_id, back.sequence_number, back.command_status) == (cid, seq, status)
    expect = dict(fields)
    if "short_message" in expect:
        expect["sm_length"] = len(expect["short_message"])
    assert back.fields == expect
    assert back.tlvs == tlvs

    # smpplib decodes our bytes into the same values (it returns C-strings as bytes).
    parsed = smpplib.smpp.parse_pdu(ours, client=CLIENT, allow_unknown_opt_params=True)
    assert (parsed.sequence, parsed.status) == (seq, status)
    for k, v in {**fields, **tlvs}.items():
        assert getattr(parsed, k) == _as_lib(v), k


# ------------------------------------------------------------------------------------------------
# Round trips for every command (including those smpplib cannot encode)
# ------------------------------------------------------------------------------------------------

ADDR = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)


@st.composite
def any_pdu(draw: st.DrawFn) -> Pdu:
    cid = draw(st.sampled_from(list(CommandId)))
    fields: dict[str, Any] = {}
    if cid == CommandId.SUBMIT_MULTI:
        for f in P._SM_HEAD + P._SM_TAIL:
            fields.update(_draw_field(draw, f))
        dests = draw(st.lists(
            st.one_of(
                st.builds(lambda t, n, a: P.DestAddress(1, t, n, a), st.integers(0, 255), st.integers(0, 255), ADDR),
                st.builds(lambda d: P.DestAddress(2, dl_name=d), ADDR)),
            min_size=1, max_size=5))
        fields["number_of_dests"] = len(dests)
        fields["dest_addresses"] = dests
    elif cid == CommandId.SUBMIT_MULTI_RESP:
        fields["message_id"] = draw(ADDR)
        fails = draw(st.lists(st.builds(P.UnsuccessSme, st.integers(0, 255), st.integers(0, 255), ADDR,
                                        st.integers(0, 0xFFFFFFFF)), max_size=4))
        fields["no_unsuccess"] = len(fails)
        fields["unsuccess_sme"] = fails
    else:
        for f in P._LAYOUTS[cid]:
            fields.update(_draw_field(draw, f))
    names = sorted(P._TLV_BY_NAME)
    tlvs: dict[str | int, Any] = {}
    for tname in draw(st.lists(st.sampled_from(names), max_size=4, unique=True)):
        spec = P._TLV_BY_NAME[tname]
        if spec.kind == P._FLAG:
            tlvs[tname] = True
        elif spec.kind == P._CSTR:
            tlvs[tname] = draw(st.text(LATIN1_NO_NUL, max_size=spec.size - 1))
        else:
            tlvs[tname] = draw(_tlv_value(tname, None) if spec.kind == P._INT
                               else st.binary(min_size=spec.min_size, max_size=min(spec.size, 300)))
    if "message_payload" in tlvs and fields.get("short_message"):
        del tlvs["message_payload"]
    for tag in draw(st.lists(st.integers(0x1400, 0x3FFF), max_size=2, unique=True)):
        tlvs[tag] = draw(st.binary(max_size=10))
    return Pdu(cid, draw(st.integers(0, 0xFFFFFFFF)), draw(st.integers(0, 0xFFFFFFFF)), fields, tlvs)


def _draw_field(draw: st.DrawFn, f: Any) -> dict[str, Any]:
    if f.kind == "u8":
        return {f.name: draw(st.integers(0, 255))}
    if f.kind == "cstr":
        return {f.name: draw(st.text(LATIN1_NO_NUL, max_size=f.max - 1))}
    sm = draw(st.binary(max_size=254))
    return {"sm_length": len(sm), "short_message": sm}


@settings(max_examples=300, deadline=None)
@given(pdu=any_pdu())
def test_round_trip_every_command(pdu: Pdu) -> None:
    data = P.encode(pdu)
    assert struct.unpack(">I", data[:4])[0] == len(data)
    back = P.decode(data)
    assert back == pdu
    assert P.encode(back) == data
    assert FrameBuffer().feed(data) == [data]


def test_builders_fill_every_mandatory_field() -> None:
    p = P.submit_sm(3, "8613800138000", b"hi", source_addr="Brand", source_addr_ton=5, registered_delivery=1)
    assert set(p.fields) == {f.name for f in P._SM_BODY if f.kind != "sm"} | {"sm_length", "short_message"}
    assert P.decode(P.encode(p)) == p
    d = P.deliver_sm(4, "8613800138000", "Brand", b"id:1 stat:DELIVRD", esm_class=4,
                     tlvs={"receipted_message_id": "1", "message_state": 2})
    assert P.decode(P.encode(d)) == d
    assert P.encode(P.deliver_sm_resp(4)) == P.encode_deliver_sm_resp(4)
    assert P.encode(P.submit_sm_resp(4, "abc", 0)) == P.encode_submit_sm_resp(4, "abc")
    r = P.bind_resp(CommandId.BIND_TRANSCEIVER, 1, "smsc")
    assert r.command_id == CommandId.BIND_TRANSCEIVER_RESP and r.tlvs == {"sc_interface_version": 0x34}
    for p in (P.unbind(1), P.unbind_resp(1), P.enquire_link(2), P.enquire_link_resp(2),
              P.generic_nack(3, 3), P.outbind(1, "gw", "pw"), P.data_sm(5, "1", "2"), P.data_sm_resp(5, "x"),
              P.bind_transmitter(1, "gw"), P.bind_receiver(1, "gw")):
        assert P.decode(P.encode(p)) == p


def test_missing_fields_encode_as_zero_values() -> None:
    assert P.encode(Pdu(CommandId.SUBMIT_SM, 1)) == frame(4, 1, b"\x00" * 17)
    assert P.encode(Pdu(CommandId.SUBMIT_SM_RESP, 1, 0, {"message_id": None})) == frame(0x80000004, 1, b"\x00")


def test_response_for_and_error_response() -> None:
    req = P.submit_sm(9, "1", b"x")
    resp = P.response_for(req, 0, message_id="m1")
    assert (resp.command_id, resp.sequence_number, resp.fields) == (CommandId.SUBMIT_SM_RESP, 9, {"message_id": "m1"})
    nack = P.response_for(Pdu(CommandId.OUTBIND, 2))
    assert (nack.command_id, nack.command_status) == (CommandId.GENERIC_NACK, CommandStatus.ESME_RINVCMDID)

    with pytest.raises(P.PduDecodeError) as ei:
        P.decode(frame(0x00000200, 44))
    r = P.error_response(ei.value)
    assert r is not None and (r.command_id, r.sequence_number, r.command_status) == (
        CommandId.GENERIC_NACK, 44, CommandStatus.ESME_RINVCMDID)
    with pytest.raises(P.PduDecodeError) as ei:  # destination_addr of 30 digits
        P.decode(frame(4, 45, b"\x00\x00\x00\x00\x01\x01" + b"1" * 30 + b"\x00" + b"\x00" * 10))
    assert ei.value.command_status == CommandStatus.ESME_RINVDSTADR
    r = P.error_response(ei.value)
    assert r is not None and (r.command_id, r.command_status) == (CommandId.SUBMIT_SM_RESP, 0x0B)
    assert P.decode(P.encode(r)).fields == {"message_id": ""}
    with pytest.raises(P.PduDecodeError) as ei:  # a broken response is never answered
        P.decode(frame(CommandId.SUBMIT_SM_RESP, 46, b"abc"))
    assert P.error_response(ei.value) is None


def test_repr_hides_text_password_and_numbers() -> None:
    text = repr(P.submit_sm(1, "8613800138000", b"secret code 1234", source_addr="8613911112222"))
    assert "secret" not in text and "8613800138000" not in text and "861****8000" in text
    assert "hunter2" not in repr(P.bind_transceiver(1, "gw", "hunter2"))


# ------------------------------------------------------------------------------------------------
# Encode refusals: never truncate (smpplib does).
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pdu", "status", "field"),
    [
        (P.submit_sm(1, "1" * 21), CommandStatus.ESME_RINVDSTADR, "destination_addr"),
        (P.submit_sm(1, "1", source_addr="x" * 21), CommandStatus.ESME_RINVSRCADR, "source_addr"),
        (P.submit_sm(1, "1\x002"), CommandStatus.ESME_RINVDSTADR, "destination_addr"),
        (P.submit_sm(1, "1", b"x" * 255), CommandStatus.ESME_RINVMSGLEN, "short_message"),
        (P.submit_sm(1, "1", b"x", tlvs={"message_payload": b"y"}), CommandStatus.ESME_RINVMSGLEN, "short_message"),
        (P.bind_transceiver(1, "s" * 16, "p"), CommandStatus.ESME_RINVSYSID, "system_id"),
        (P.bind_transceiver(1, "s", "p" * 9), CommandStatus.ESME_RINVPASWD, "password"),
        (P.submit_sm_resp(1, "m" * 65), CommandStatus.ESME_RINVMSGID, "message_id"),
        (P.submit_sm(1, "1", tlvs={"no_such_tlv": 1}), CommandStatus.ESME_RSYSERR, "no_such_tlv"),
        (P.submit_sm(1, "1", tlvs={"sar_msg_ref_num": 70000}), CommandStatus.ESME_RINVOPTPARAMVAL, "sar_msg_ref_num"),
        (P.submit_sm(1, "1", tlvs={"network_error_code": b"\x01"}), CommandStatus.ESME_RINVPARLEN,
         "network_error_code"),
        (P.submit_sm(1, "1", tlvs={"receipted_message_id": "r" * 65}), CommandStatus.ESME_RINVPARLEN,
         "receipted_message_id"),
    ],
)
def test_encode_refuses(pdu: Pdu, status: int, field: str) -> None:
    with pytest.raises(P.PduEncodeError) as ei:
        P.encode(pdu)
    assert ei.value.command_status == status and ei.value.field == field
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, P.SmppError)


@pytest.mark.parametrize(
    "pdu",
    [
        P.submit_sm(1, "中国"),  # not latin-1
        P.submit_sm(1, "1", "text"),  # type: ignore[arg-type]  # str short_message
        P.submit_sm(1, "1", esm_class=256),
        P.submit_sm(-1, "1"),
        P.submit_sm(1 << 32, "1"),
        Pdu(0x12345, 1),
        Pdu(CommandId.SUBMIT_MULTI, 1),  # no destinations
    ],
)
def test_encode_refuses_bad_values(pdu: Pdu) -> None:
    with pytest.raises(P.PduEncodeError):
        P.encode(pdu)


# ------------------------------------------------------------------------------------------------
# Decode errors: recoverable, carrying the header and the status to answer with.
# ------------------------------------------------------------------------------------------------

SUBMIT = P.encode(P.submit_sm(0x0102, "8613800138000", b"hello", source_addr="Brand",
                              tlvs={"sar_msg_ref_num": 1, "sar_total_segments": 2, "sar_segment_seqnum": 1}))


def test_every_truncation_of_a_submit_sm_is_a_decode_error() -> None:
    mandatory_end = len(P.encode(P.submit_sm(0x0102, "8613800138000", b"hello", source_addr="Brand")))
    tlv_ends = [mandatory_end, mandatory_end + 6, mandatory_end + 11]  # sar_msg_ref_num is 2 octets
    for cut in range(16, len(SUBMIT)):
        body = SUBMIT[16:cut]
        data = frame(4, 0x0102, body)
        if cut in tlv_ends:  # ends exactly between TLVs: a valid PDU with fewer of them
            assert len(P.decode(data).tlvs) == tlv_ends.index(cut)
            continue
        with pytest.raises(P.PduDecodeError) as ei:
            P.decode(data)
        e = ei.value
        assert (e.command_id, e.sequence_number) == (4, 0x0102)
        if cut < mandatory_end:
            assert e.command_status == CommandStatus.ESME_RINVCMDLEN and e.pdu is None
        else:
            assert e.command_status == CommandStatus.ESME_RINVOPTPARSTREAM
            assert e.pdu is not None and e.pdu.fields["destination_addr"] == "8613800138000"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (frame(0x00000099, 7), CommandStatus.ESME_RINVCMDID),
        (frame(0x80000099, 7), CommandStatus.ESME_RINVCMDID),
        (frame(4, 7), CommandStatus.ESME_RINVCMDLEN),  # request with no body
        (frame(0x80000004, 7, b"abc"), CommandStatus.ESME_RINVCMDLEN),  # C-string without NUL
        (frame(0x80000004, 7, b"m" * 70 + b"\x00"), CommandStatus.ESME_RINVMSGID),  # over-long
        (frame(0x80000004, 7, b"m\x00\x00"), CommandStatus.ESME_RINVOPTPARSTREAM),  # stray octet
        (frame(0x80000004, 7, b"m\x00\x04\x27\x00\x09\x01"), CommandStatus.ESME_RINVOPTPARSTREAM),  # overrun
        (frame(0x80000004, 7, b"m\x00\x04\x27\x00\x05\x01\x02\x03\x04\x05"), CommandStatus.ESME_RINVPARLEN),
        (frame(9, 7, b"gw\x00" + b"p" * 12 + b"\x00"), CommandStatus.ESME_RINVPASWD),
        (frame(4, 7, b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff" + b"x" * 255),
         CommandStatus.ESME_RINVMSGLEN),  # sm_length 255
        (frame(4, 7, b"\x00" * 16 + b"\x09abc"), CommandStatus.ESME_RINVCMDLEN),  # sm_length overruns
        (frame(0x21, 7, b"\x00\x00\x00\x00" + b"\x01\x07"), CommandStatus.ESME_RINVDESTFLAG),
        (frame(0x21, 7, b"\x00\x00\x00\x00" + b"\x00"), CommandStatus.ESME_RINVNUMDESTS),
    ],
)
def test_decode_errors(data: bytes, status: int) -> None:
    with pytest.raises(P.PduDecodeError) as ei:
        P.decode(data)
    assert ei.value.command_status == status and ei.value.sequence_number == 7
    assert ei.value.command_status_name == P.status_name(status)


def test_decode_framing_errors() -> None:
    with pytest.raises(P.FramingError):
        P.decode(b"\x00\x00\x00\x10\x00")
    with pytest.raises(P.FramingError):
        P.decode(SUBMIT + b"\x00")  # command_length disagrees with the frame
    assert P.decode(bytearray(SUBMIT)) == P.decode(memoryview(SUBMIT)) == P.decode(SUBMIT)


# ------------------------------------------------------------------------------------------------
# FrameBuffer
# ------------------------------------------------------------------------------------------------

STREAM_PDUS = [P.encode(p) for p in (
    P.enquire_link(1), P.decode(SUBMIT), P.submit_sm_resp(2, "abc"), P.unbind(3),
    P.deliver_sm(4, "1", "2", b"x" * 200, tlvs={"user_message_reference": 7}),
)]


@given(cuts=st.lists(st.integers(0, sum(map(len, STREAM_PDUS))), max_size=12))
@settings(max_examples=200, deadline=None)
def test_frame_buffer_any_chunking(cuts: list[int]) -> None:
    stream = b"".join(STREAM_PDUS)
    points = sorted({0, len(stream), *cuts})
    fb, got = FrameBuffer(), []
    for a, b in zip(points, points[1:]):
        got += fb.feed(stream[a:b])
    assert got == STREAM_PDUS and fb.buffered == 0


def test_frame_buffer_byte_at_a_time_and_whole() -> None:
    stream = b"".join(STREAM_PDUS)
    fb = FrameBuffer()
    got = [f for i in range(len(stream)) for f in fb.feed(stream[i : i + 1])]
    assert got == STREAM_PDUS
    assert FrameBuffer().feed(stream) == STREAM_PDUS
    assert FrameBuffer().feed(b"") == []


@pytest.mark.parametrize("length", [0, 15, 1025, 0xFFFFFFFF])
def test_frame_buffer_rejects_impossible_lengths_before_buffering(length: int) -> None:
    fb = FrameBuffer(max_length=1024)
    head = struct.pack(">I", length)
    assert fb.feed(head[:3]) == [] and fb.buffered == 3
    with pytest.raises(P.FramingError) as ei:
        fb.feed(head[3:] + b"\x00" * 100)
    assert ei.value.command_length == length and ei.value.command_status == CommandStatus.ESME_RINVCMDLEN
    assert fb.buffered == 0 and fb.error is ei.value
    with pytest.raises(P.FramingError):  # sticky: the stream is lost
        fb.feed(STREAM_PDUS[0])


def test_frame_buffer_accepts_exactly_max_and_bounds_memory() -> None:
    fb = FrameBuffer(max_length=1024)
    room = 1024 - len(P.encode(P.data_sm(1, "1", "2", tlvs={"message_payload": b""})))
    big = P.encode(P.data_sm(1, "1", "2", tlvs={"message_payload": b"z" * room}))
    assert len(big) == 1024
    assert fb.feed(big[:1000]) == [] and fb.buffered == 1000
    assert fb.feed(big[1000:] + big[:10]) == [big] and fb.buffered == 10


def test_frame_buffer_returns_good_frames_before_a_bad_header() -> None:
    fb = FrameBuffer(max_length=1024)
    good = STREAM_PDUS[0] + STREAM_PDUS[2]
    assert fb.feed(good + b"\x7f\xff\xff\xff junk") == [STREAM_PDUS[0], STREAM_PDUS[2]]
    assert fb.error is not None
    with pytest.raises(P.FramingError):
        fb.feed(b"")


# ------------------------------------------------------------------------------------------------
# The fuzz invariant (h11): any bytes -> frames/Pdus or SmppError, nothing else.
# ------------------------------------------------------------------------------------------------

CORPUS = [*STREAM_PDUS] + [
    P.encode(p) for p in (
        P.bind_transceiver(1, "gw", "pw"), P.bind_resp(9, 1, "smsc"), P.outbind(1, "gw", "pw"),
        Pdu(CommandId.SUBMIT_MULTI, 5, 0, {"dest_addresses": [P.DestAddress(1, 1, 1, "86138"),
                                                              P.DestAddress(2, dl_name="list")]}),
        Pdu(CommandId.SUBMIT_MULTI_RESP, 5, 0, {"message_id": "m", "unsuccess_sme": [P.UnsuccessSme(1, 1, "8", 11)]}),
        Pdu(CommandId.QUERY_SM_RESP, 6, 0, {"message_id": "m", "final_date": "261123100000000+"}),
        Pdu(CommandId.REPLACE_SM, 6, 0, {"message_id": "m", "short_message": b"abc"}),
        Pdu(CommandId.CANCEL_SM, 6, 0, {"message_id": "m"}),
        Pdu(CommandId.ALERT_NOTIFICATION, 6, 0, {"esme_addr": "x"}, {"ms_availability_status": 1}),
        P.data_sm(7, "1", "2", tlvs={"message_payload": b"p" * 40, "alert_on_message_delivery": True, 0x1500: b"v"}),
    )
]


def run_invariant(stream: bytes, chunk: int | None) -> None:
    fb = FrameBuffer(max_length=512)
    pieces = [stream] if chunk is None else [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
    try:
        for piece in pieces:
            for f in fb.feed(piece):
                try:
                    p = P.decode(f)
                except P.PduDecodeError as e:
                    # RSYSERR would mean decode()'s safety net caught a bug in the decoder itself.
                    assert e.command_status != CommandStatus.ESME_RSYSERR, e
                    P.error_response(e)  # must not raise either
                else:
                    try:
                        P.encode(p)  # re-encoding may refuse what decode tolerated (long TLV), no more
                    except P.PduEncodeError:
                        pass
        fb.feed(b"")
    except P.FramingError:
        pass


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), chunk=st.one_of(st.none(), st.just(1), st.integers(2, 40)))
def test_fuzz_random_bytes(data: bytes, chunk: int | None) -> None:
    run_invariant(data, chunk)


@settings(max_examples=400, deadline=None)
@given(
    cid=st.sampled_from([int(c) for c in CommandId] + [0x7FFF]),
    body=st.binary(max_size=200),
    chunk=st.one_of(st.none(), st.just(1)),
)
def test_fuzz_random_bodies_behind_valid_headers(cid: int, body: bytes, chunk: int | None) -> None:
    run_invariant(frame(cid, 1, body), chunk)


@settings(max_examples=400, deadline=None)
@given(
    base=st.sampled_from(CORPUS),
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.integers(0, 400),
    fix_length=st.booleans(),
)
def test_fuzz_mutated_valid_pdus(base: bytes, edits: list[tuple[int, int]], cut: int, fix_length: bool) -> None:
    b = bytearray(base)
    for i, v in edits:
        if i < len(b):
            b[i] = v
    b = b[: max(16, cut)] if cut < len(b) else b
    if fix_length:
        b[:4] = struct.pack(">I", len(b))
    run_invariant(bytes(b), None)
    run_invariant(bytes(b) * 2, 7)
