"""A lean MQTT 5 client for the gateway's hot path: a sans-IO codec and an asyncio protocol.

Why not paho (under aiomqtt): every message through paho costs ~50-60 µs of CPU on the event loop
(Properties objects, MQTTMessageInfo, locks, logging hooks, a socket call per packet), and the
gateway handles four per SMS (the submission and its PUBACK; `accepted`, `submitted`, `delivered`
and their PUBACKs). Measured with bench/bench_e2e.py: paho was half the daemon's CPU. This client
does only what the ingress and the event publisher need, with one write per loop iteration:

- CONNECT (clean start or a persistent session with a session expiry, Receive Maximum, user name
  and password, TLS through the asyncio transport), CONNACK (session present, reason code, the
  server's Receive Maximum);
- SUBSCRIBE / SUBACK (one filter, its reason code);
- PUBLISH in (QoS 0/1; properties skipped), handed to `on_message`; the PUBACK is sent only when
  the caller calls `ack(packet_id)` (the ingress's durability rule: ack after the commit);
- PUBLISH out QoS 1 (`publish` returns the packet id at once) and PUBACK in (`on_puback(packet_id,
  reason_code)`); the server's Receive Maximum is the limit of publishes in flight, which the
  caller keeps (`send_quota`);
- PINGREQ every keepalive/2 while nothing was written; the connection is declared dead when
  nothing was read for 1.5 keepalives while reading (reads may be paused for back-pressure);
- DISCONNECT both ways. QoS 2, will messages, topic aliases and AUTH are not used by the gateway.

`pause_reading()` stops reading the socket AND stops parsing what is already buffered, so that a
bounded inbox really stays bounded (`resume_reading()` parses the rest first).

Codec functions (`encode_*`, `Parser`) are pure and tested in tests/unit/test_mqtt5.py; the
protocol is tested against Mosquitto through the ingress and event publisher tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

CONNECT: Final = 0x10
CONNACK: Final = 0x20
PUBLISH: Final = 0x30
PUBACK: Final = 0x40
SUBSCRIBE: Final = 0x82
SUBACK: Final = 0x90
PINGREQ: Final = 0xC0
PINGRESP: Final = 0xD0
DISCONNECT: Final = 0xE0

PROP_SESSION_EXPIRY: Final = 0x11
PROP_RECEIVE_MAXIMUM: Final = 0x21
MAX_REMAINING: Final = 268_435_455

# Reason codes a CONNACK or DISCONNECT may carry (MQTT 5 §3.2.2.2, §3.14.2.1): logged by name, so
# that an operator reads "not authorized", not "0x87".
REASON_NAMES: Final = {
    0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error",
    0x83: "implementation specific error", 0x84: "unsupported protocol version",
    0x85: "client identifier not valid", 0x86: "bad user name or password",
    0x87: "not authorized", 0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned",
    0x8B: "server shutting down", 0x8C: "bad authentication method", 0x8D: "keep alive timeout",
    0x8E: "session taken over", 0x90: "topic name invalid", 0x93: "receive maximum exceeded",
    0x95: "packet too large", 0x97: "quota exceeded", 0x99: "payload format invalid",
    0x9C: "use another server", 0x9D: "server moved", 0x9F: "connection rate exceeded",
}


def reason_name(code: int) -> str:
    """`not authorized, reason 0x87`, or just the code when MQTT 5 gives it no name."""
    name = REASON_NAMES.get(code)
    return f"{name}, reason 0x{code:02X}" if name else f"reason 0x{code:02X}"


_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_PINGREQ_PKT: Final = b"\xc0\x00"
_DISCONNECT_PKT: Final = b"\xe0\x00"

# Property identifiers → how long their value is (None: variable, by kind). MQTT 5 §2.2.2.2.
_BYTE, _U16K, _U32K, _VARINT, _UTF8, _BIN, _PAIR = range(7)
_PROP_KIND: Final = {
    0x01: _BYTE, 0x02: _U32K, 0x03: _UTF8, 0x08: _UTF8, 0x09: _BIN, 0x0B: _VARINT,
    0x11: _U32K, 0x12: _UTF8, 0x13: _U16K, 0x15: _UTF8, 0x16: _BIN, 0x17: _BYTE, 0x18: _U32K,
    0x19: _BYTE, 0x1A: _UTF8, 0x1C: _UTF8, 0x1F: _UTF8, 0x21: _U16K, 0x22: _U16K, 0x23: _U16K,
    0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _U32K, 0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}


class MqttError(Exception):
    """The connection was refused, lost or broke the protocol."""


class ProtocolError(MqttError):
    """Bytes from the server that are not MQTT 5."""


# --------------------------------------------------------------------------------------------
# Codec (pure)


def varint(n: int) -> bytes:
    """The Variable Byte Integer encoding of `n` (0 ≤ n ≤ 268,435,455)."""
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"variable byte integer out of range: {n}")
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _utf8(s: str) -> bytes:
    b = s.encode()
    if len(b) > 0xFFFF:
        raise ValueError("string longer than 65,535 bytes")
    return _U16.pack(len(b)) + b


def _bin(b: bytes) -> bytes:
    if len(b) > 0xFFFF:
        raise ValueError("binary data longer than 65,535 bytes")
    return _U16.pack(len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def encode_connect(client_id: str, *, clean_start: bool, keepalive: int,
                   session_expiry: int = 0, receive_maximum: int | None = None,
                   username: str | None = None, password: str | None = None) -> bytes:
    flags = 0x02 if clean_start else 0
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    props = b""
    if session_expiry:
        props += bytes((PROP_SESSION_EXPIRY,)) + _U32.pack(session_expiry)
    if receive_maximum is not None:
        props += bytes((PROP_RECEIVE_MAXIMUM,)) + _U16.pack(receive_maximum)
    body = b"".join((_utf8("MQTT"), bytes((5, flags)), _U16.pack(keepalive), varint(len(props)),
                     props, _utf8(client_id),
                     _utf8(username) if username is not None else b"",
                     _bin(password.encode()) if password is not None else b""))
    return _packet(CONNECT, body)


def encode_subscribe(packet_id: int, topic_filter: str, qos: int) -> bytes:
    return _packet(SUBSCRIBE, _U16.pack(packet_id) + b"\x00" + _utf8(topic_filter) + bytes((qos,)))


def check_topic(topic: str) -> bytes:
    """The topic as UTF-8, or ValueError for one that may not be published to."""
    b = topic.encode()
    if not b or len(b) > 0xFFFF or "+" in topic or "#" in topic or "\x00" in topic:
        raise ValueError(f"invalid topic for a publish: {topic[:80]!r}")
    return b


def encode_publish(topic: bytes, payload: bytes, packet_id: int, qos: int = 1) -> bytes:
    """A PUBLISH (no properties). `topic` as returned by `check_topic`."""
    if qos:
        header = _U16.pack(len(topic)) + topic + _U16.pack(packet_id) + b"\x00"
    else:
        header = _U16.pack(len(topic)) + topic + b"\x00"
    n = len(header) + len(payload)
    if n > MAX_REMAINING:
        raise ValueError("payload too large for MQTT")
    return b"".join((b"\x32" if qos else b"\x30", varint(n), header, payload))


def encode_puback(packet_id: int) -> bytes:
    """PUBACK, reason Success (MQTT 5 lets a success omit the reason code and properties)."""
    return b"\x40\x02" + _U16.pack(packet_id)


@dataclass(slots=True)
class Message:
    """A PUBLISH received: what the ingress needs of it (not frozen: a frozen dataclass's
    __init__ costs an object.__setattr__ per field, and one is built per submission)."""

    topic: str
    payload: bytes
    qos: int
    packet_id: int  # 0 for QoS 0
    dup: bool = False


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    reason_code: int
    receive_maximum: int = 65_535


@dataclass(frozen=True, slots=True)
class SubAck:
    packet_id: int
    reason_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PubAck:
    packet_id: int
    reason_code: int


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason_code: int


class PingResp:
    pass


Packet = Message | ConnAck | SubAck | PubAck | Disconnect | PingResp


def _skip_properties(body: bytes, pos: int) -> tuple[int, dict[int, int]]:
    """Position after the properties at `pos`, and the integer-valued ones among them."""
    length, pos = _read_varint(body, pos)
    end = pos + length
    if end > len(body):
        raise ProtocolError("properties longer than the packet")
    values: dict[int, int] = {}
    while pos < end:
        ident = body[pos]
        pos += 1
        kind = _PROP_KIND.get(ident)
        if kind is None:
            raise ProtocolError(f"unknown property 0x{ident:02X}")
        if kind == _BYTE:
            values[ident] = body[pos]
            pos += 1
        elif kind == _U16K:
            values[ident] = _U16.unpack_from(body, pos)[0]
            pos += 2
        elif kind == _U32K:
            values[ident] = _U32.unpack_from(body, pos)[0]
            pos += 4
        elif kind == _VARINT:
            values[ident], pos = _read_varint(body, pos)
        elif kind == _PAIR:
            pos += 2 + _U16.unpack_from(body, pos)[0]
            pos += 2 + _U16.unpack_from(body, pos)[0]
        else:
            pos += 2 + _U16.unpack_from(body, pos)[0]
    if pos != end:
        raise ProtocolError("malformed properties")
    return end, values


def _read_varint(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    for _ in range(4):
        if pos >= len(buf):
            raise ProtocolError("truncated variable byte integer")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
    raise ProtocolError("variable byte integer longer than 4 bytes")


def decode(first: int, body: bytes) -> Packet | None:
    """One packet from its first byte and body; None for a type the client ignores."""
    kind = first & 0xF0
    try:
        if kind == PUBLISH:
            qos = (first >> 1) & 0x03
            if qos == 3:
                raise ProtocolError("PUBLISH with QoS 3")
            tlen = _U16.unpack_from(body, 0)[0]
            topic = body[2:2 + tlen].decode()
            pos = 2 + tlen
            packet_id = 0
            if qos:
                packet_id = _U16.unpack_from(body, pos)[0]
                pos += 2
            if pos < len(body) and body[pos] == 0:  # no properties: the usual case
                pos += 1
            else:
                pos, _ = _skip_properties(body, pos)
            return Message(topic, body[pos:], qos, packet_id, bool(first & 0x08))
        if kind == PUBACK:
            packet_id = _U16.unpack_from(body, 0)[0]
            return PubAck(packet_id, body[2] if len(body) > 2 else 0)
        if kind == CONNACK:
            pos, props = _skip_properties(body, 2) if len(body) > 2 else (2, {})
            return ConnAck(bool(body[0] & 0x01), body[1],
                           props.get(PROP_RECEIVE_MAXIMUM, 65_535))
        if kind == SUBACK:
            packet_id = _U16.unpack_from(body, 0)[0]
            pos, _ = _skip_properties(body, 2)
            return SubAck(packet_id, tuple(body[pos:]))
        if kind == PINGRESP:
            return PingResp()
        if kind == DISCONNECT:
            return Disconnect(body[0] if body else 0)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed packet 0x{first:02X}: {exc}") from None
    return None


def split_packet(buf: bytearray, pos: int) -> tuple[int, int, int] | None:
    """(first byte, body start, body end) of the packet at `pos` when it is complete."""
    n = len(buf)
    if n - pos < 2:
        return None
    length, shift, i = 0, 0, pos + 1
    while True:
        if i >= n:
            return None
        b = buf[i]
        i += 1
        length |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 21:
            raise ProtocolError("remaining length longer than 4 bytes")
    end = i + length
    if end > n:
        return None
    return buf[pos], i, end


# --------------------------------------------------------------------------------------------
# The asyncio client


class Client(asyncio.Protocol):
    """One MQTT 5 connection. `await Client.connect(...)`; the connection is lost (or was closed)
    when `closed` is done: its exception (MqttError) says why.

    on_message(Message): every PUBLISH received, in order (QoS 1: `ack(packet_id)` later).
    on_puback(packet_id, reason_code): one of our QoS 1 publishes is confirmed.
    """

    def __init__(self, *, keepalive: int,
                 on_message: Callable[[Message], None] | None = None,
                 on_puback: Callable[[int, int], None] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.keepalive = keepalive
        self.on_message = on_message
        self.on_puback = on_puback
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.session_present = False
        self.send_quota = 65_535  # the server's Receive Maximum
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._waiters: dict[object, asyncio.Future[Packet]] = {}
        self._next_id = 0
        self._in_flight: set[int] = set()  # our QoS 1 publishes not yet acknowledged
        self._paused = False
        self._last_read = time.monotonic()
        self._last_write = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    @classmethod
    async def connect(cls, host: str, port: int, client_id: str, *, clean_start: bool,
                      keepalive: int = 30, session_expiry: int = 0,
                      receive_maximum: int | None = None, username: str | None = None,
                      password: str | None = None, tls: ssl.SSLContext | None = None,
                      server_hostname: str | None = None, timeout: float = 10.0,
                      on_message: Callable[[Message], None] | None = None,
                      on_puback: Callable[[int, int], None] | None = None) -> Client:
        """Connect and wait for the CONNACK; MqttError when refused or unreachable."""
        loop = asyncio.get_running_loop()
        client = cls(keepalive=keepalive, on_message=on_message, on_puback=on_puback)
        try:
            await asyncio.wait_for(loop.create_connection(
                lambda: client, host, port, ssl=tls,
                server_hostname=(server_hostname or host) if tls else None),
                timeout)
        except (OSError, TimeoutError) as exc:
            raise MqttError(f"cannot connect to {host}:{port}: {exc or 'timeout'}") from None
        client._write(encode_connect(client_id, clean_start=clean_start, keepalive=keepalive,
                                     session_expiry=session_expiry,
                                     receive_maximum=receive_maximum, username=username,
                                     password=password))
        try:
            ack = await client._expect(ConnAck, timeout)
        except BaseException:
            client.abort()
            raise
        assert isinstance(ack, ConnAck)
        if ack.reason_code >= 0x80:
            client.abort()
            raise MqttError(f"connection refused by the broker ({reason_name(ack.reason_code)})")
        client.session_present = ack.session_present
        client.send_quota = ack.receive_maximum
        client._arm_keepalive()
        return client

    async def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 10.0) -> int:
        """Subscribe one filter; the SUBACK's reason code (granted QoS, or >= 0x80: refused)."""
        packet_id = self._packet_id()
        self._write(encode_subscribe(packet_id, topic_filter, qos))
        ack = await self._expect(("suback", packet_id), timeout)
        assert isinstance(ack, SubAck)
        return ack.reason_codes[0] if ack.reason_codes else 0x80

    async def disconnect(self, timeout: float = 2.0) -> None:
        """Send DISCONNECT (normal), wait for the broker to close the connection, close.

        Not closed from our side first: Mosquitto reads one packet per wake-up, and a socket
        closed under it (its next write answered by a reset) drops the PUBACKs it had not read
        yet, which the broker would then redeliver on the next session."""
        if self.transport is None or self.closed.done():
            return
        self._write(_DISCONNECT_PKT)
        self._flush()
        if self._paused:
            self.resume_reading()  # the broker's close must be seen
        with contextlib.suppress(MqttError, TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        self.transport.close()
        self._lost(MqttError("disconnected"))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._lost(MqttError("connection aborted"))

    # -- sending ----------------------------------------------------------------------------------

    def publish(self, topic: bytes, payload: bytes, qos: int = 1) -> int | None:
        """Queue a PUBLISH (written at the end of this loop iteration); its packet id (0 for
        QoS 0), or None when the connection is gone. `topic` as returned by `check_topic`."""
        if self.closed.done():
            return None
        packet_id = self._packet_id() if qos else 0
        self._write(encode_publish(topic, payload, packet_id, qos))
        if qos:
            self._in_flight.add(packet_id)
        return packet_id

    def ack(self, packet_id: int) -> bool:
        """PUBACK a received QoS 1 message; False when the connection is gone."""
        if self.closed.done():
            return False
        self._write(encode_puback(packet_id))
        return True

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self._last_read = time.monotonic()
            self._parse()  # what was read before the pause
            if not self._paused and not self.closed.done():
                self.transport.resume_reading()

    @property
    def paused(self) -> bool:
        return self._paused

    def _packet_id(self) -> int:
        in_flight = self._in_flight
        pid = self._next_id
        while True:
            pid = pid % 0xFFFF + 1
            if pid not in in_flight:
                self._next_id = pid
                return pid

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if not self._out:
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self._last_write = time.monotonic()

    # -- receiving --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(MqttError(f"connection lost: {exc}" if exc else "connection closed"))

    def data_received(self, data: bytes) -> None:
        self._last_read = time.monotonic()
        self._buf += data
        self._parse()

    def _parse(self) -> None:
        buf = self._buf
        pos = 0
        on_message = self.on_message
        try:
            while not self._paused:
                framed = split_packet(buf, pos)
                if framed is None:
                    break
                first, start, end = framed
                body = bytes(buf[start:end])
                pos = end
                kind = first & 0xF0
                if kind == PUBACK:  # the hot path first: our event publishes confirmed
                    packet_id = (body[0] << 8) | body[1]
                    self._in_flight.discard(packet_id)
                    if self.on_puback is not None:
                        self.on_puback(packet_id, body[2] if len(body) > 2 else 0)
                    continue
                packet = decode(first, body)
                if isinstance(packet, Message):
                    if on_message is not None:
                        on_message(packet)
                elif isinstance(packet, SubAck):
                    self._resolve(("suback", packet.packet_id), packet)
                elif isinstance(packet, ConnAck):
                    self._resolve(ConnAck, packet)
                elif isinstance(packet, Disconnect):
                    raise MqttError(f"disconnected by the broker ({reason_name(packet.reason_code)})")
        except MqttError as exc:
            del buf[:pos]
            self._lost(exc)
            if self.transport is not None:
                self.transport.abort()
            return
        del buf[:pos]

    async def _expect(self, key: object, timeout: float) -> Packet:
        fut: asyncio.Future[Packet] = self.loop.create_future()
        self._waiters[key] = fut
        try:
            done, _ = await asyncio.wait({fut, self.closed}, timeout=timeout,
                                        return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiters.pop(key, None)
        if fut in done:
            return fut.result()
        if self.closed.done():
            exc = self.closed.exception()
            raise exc if exc is not None else MqttError("connection closed")
        raise MqttError(f"no answer from the broker within {timeout}s")

    def _resolve(self, key: object, packet: Packet) -> None:
        fut = self._waiters.get(key)
        if fut is not None and not fut.done():
            fut.set_result(packet)

    def _lost(self, exc: MqttError) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.closed.done():
            self.closed.set_exception(exc)
            self.closed.exception()  # retrieved: nobody has to await it

    # -- keepalive --------------------------------------------------------------------------------

    def _arm_keepalive(self) -> None:
        if self.keepalive > 0 and not self.closed.done():
            self._timer = self.loop.call_later(self.keepalive / 2, self._on_keepalive)

    def _on_keepalive(self) -> None:
        now = time.monotonic()
        if not self._paused and now - self._last_read > 1.5 * self.keepalive:
            self._lost(MqttError("keepalive: nothing from the broker"))
            if self.transport is not None:
                self.transport.abort()
            return
        if now - self._last_write >= self.keepalive / 2 or now - self._last_read >= self.keepalive / 2:
            self._write(_PINGREQ_PKT)
        self._arm_keepalive()
