"""The MQTT 5 codec of gateway/queue/mqtt5.py: packets as the spec lays them out, framing of a
stream cut anywhere, and refusal of malformed input. (The client against a real Mosquitto is
covered by tests/integration/test_ingress.py and test_events.py.)"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.queue import mqtt5
from gateway.queue.mqtt5 import (
    ConnAck,
    Disconnect,
    Message,
    ProtocolError,
    PubAck,
    SubAck,
    check_topic,
    decode,
    encode_connect,
    encode_puback,
    encode_publish,
    encode_subscribe,
    split_packet,
    varint,
)


def frames(data: bytes) -> list[tuple[int, bytes]]:
    buf, pos, out = bytearray(data), 0, []
    while (f := split_packet(buf, pos)) is not None:
        first, start, end = f
        out.append((first, bytes(buf[start:end])))
        pos = end
    assert pos == len(buf), "trailing bytes"
    return out


@pytest.mark.parametrize(("n", "encoded"), [
    (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"), (268_435_455, b"\xff\xff\xff\x7f"),
])
def test_varint_matches_the_spec_examples(n: int, encoded: bytes) -> None:
    assert varint(n) == encoded
    assert mqtt5._read_varint(encoded, 0) == (n, len(encoded))


def test_varint_out_of_range() -> None:
    with pytest.raises(ValueError):
        varint(268_435_456)
    with pytest.raises(ProtocolError):
        mqtt5._read_varint(b"\xff\xff\xff\xff\x01", 0)


def test_connect_persistent_session_with_receive_maximum_and_credentials() -> None:
    pkt = encode_connect("smsgw-1", clean_start=False, keepalive=30, session_expiry=604_800,
                         receive_maximum=1000, username="gw", password="s3cret")
    [(first, body)] = frames(pkt)
    assert first == 0x10
    assert body[:7] == b"\x00\x04MQTT\x05"
    assert body[7] == 0x80 | 0x40  # user name, password; clean start off
    assert struct.unpack_from("!H", body, 8)[0] == 30
    # properties: length 8 = session expiry (1 + 4) + receive maximum (1 + 2)
    assert body[10] == 8
    assert body[11:16] == b"\x11" + struct.pack("!I", 604_800)
    assert body[16:19] == b"\x21" + struct.pack("!H", 1000)
    assert body[19:] == b"\x00\x07smsgw-1" + b"\x00\x02gw" + b"\x00\x06s3cret"


def test_connect_clean_start_without_properties() -> None:
    [(_, body)] = frames(encode_connect("ev", clean_start=True, keepalive=0))
    assert body[7] == 0x02 and body[10] == 0 and body[11:] == b"\x00\x02ev"


def test_publish_qos1_round_trip_and_the_publish_puback_subscribe_bytes() -> None:
    payload = "验证码 123456".encode() * 20  # > 127 bytes: a two-byte remaining length
    pkt = encode_publish(check_topic("sms/events/a-1"), payload, 0x1234)
    [(first, body)] = frames(pkt)
    assert first == 0x32
    msg = decode(first, body)
    assert msg == Message("sms/events/a-1", payload, 1, 0x1234, False)
    assert encode_puback(7) == b"\x40\x02\x00\x07"
    assert encode_subscribe(5, "sms/submit", 1) == b"\x82\x10\x00\x05\x00\x00\x0asms/submit\x01"


def test_publish_qos0_has_no_packet_id() -> None:
    [(first, body)] = frames(encode_publish(b"t", b"x", 9, qos=0))
    assert first == 0x30 and decode(first, body) == Message("t", b"x", 0, 0, False)


def test_incoming_publish_with_properties_and_dup_flag() -> None:
    props = b"\x01\x01" + b"\x03\x00\x10application/json" + b"\x26\x00\x01k\x00\x01v"
    body = b"\x00\x0asms/submit" + b"\x00\x2a" + varint(len(props)) + props + b'{"id":"x"}'
    assert decode(0x3A, body) == Message("sms/submit", b'{"id":"x"}', 1, 42, True)


def test_connack_suback_puback_disconnect() -> None:
    assert decode(0x20, b"\x01\x00\x03\x21\x00\x14") == ConnAck(True, 0, 20)
    assert decode(0x20, b"\x00\x87\x00") == ConnAck(False, 0x87, 65_535)
    assert decode(0x90, b"\x00\x05\x00\x01") == SubAck(5, (1,))
    assert decode(0x90, b"\x00\x05\x00\x87") == SubAck(5, (0x87,))
    assert decode(0x40, b"\x00\x09") == PubAck(9, 0)
    assert decode(0x40, b"\x00\x09\x87\x00") == PubAck(9, 0x87)
    assert decode(0xE0, b"\x8e") == Disconnect(0x8E)
    assert decode(0xE0, b"") == Disconnect(0)


@pytest.mark.parametrize(("first", "body"), [
    (0x36, b"\x00\x01t\x00\x01\x00"),  # QoS 3
    (0x32, b"\x00\x09t"),  # topic longer than the packet
    (0x32, b"\x00\x01t\x00\x01\x05\x7f"),  # unknown property
    (0x30, b"\x00\x02\xff\xfe\x00"),  # topic not UTF-8
    (0x40, b"\x00"),  # PUBACK too short
])
def test_malformed_packets_are_protocol_errors(first: int, body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(first, body)


def test_topics_that_cannot_be_published() -> None:
    for topic in ("", "a/+", "a/#", "a\x00b"):
        with pytest.raises(ValueError):
            check_topic(topic)
    assert check_topic("sms/events/é") == "sms/events/é".encode()


@given(st.lists(st.tuples(st.binary(max_size=300), st.integers(1, 0xFFFF)), max_size=20),
       st.lists(st.integers(1, 400), max_size=30))
def test_a_stream_cut_anywhere_frames_to_the_same_packets(
        pubs: list[tuple[bytes, int]], cuts: list[int]) -> None:
    stream = b"".join(encode_publish(b"t/x", p, pid) for p, pid in pubs)
    buf = bytearray()
    got: list[Message] = []
    pos = 0
    for size in [*cuts, len(stream)]:
        buf += stream[pos:pos + size]
        pos += size
        start = 0
        while (f := split_packet(buf, start)) is not None:
            first, s, e = f
            m = decode(first, bytes(buf[s:e]))
            assert isinstance(m, Message)
            got.append(m)
            start = e
        del buf[:start]
    assert [(m.payload, m.packet_id) for m in got] == pubs
