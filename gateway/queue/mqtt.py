"""MQTT plumbing shared by the ingress and the event publisher: settings, clients, backoff.

Every reach under aiomqtt's public API lives here, each with the reason, so that an aiomqtt
upgrade has one file to check:

- manual PUBACK (aiomqtt#345): `enable_manual_ack` and `ack`, the ingress's durability rule;
- `Inbox`: aiomqtt's incoming queue (through its public `queue_type`), bounded by pausing reads
  from the socket, because the broker's in-flight window alone does not bound it (below);
- `on_puback`: learn which of our QoS 1 publishes the broker confirmed, so the publisher can keep
  a window of many publishes in flight instead of awaiting one round trip per event.

Protocol: MQTT 5, clean_start=False with a session expiry (CONTRACT.md allows 3.1.1 or 5). MQTT 5
because its Receive Maximum lets the gateway set how many unacknowledged submissions the broker may
push to it: Mosquitto honours the client's value over its own `max_inflight_messages` (20 by
default), so the ingress window does not depend on broker tuning; and the session expiry gives an
abandoned session a bounded life instead of "forever".

Measured on Mosquitto 2.0.11 (tests/integration/test_ingress.py): the window holds for the first
messages, but each PUBACK then releases up to a whole window of queued messages, so a client that
acknowledges steadily can be sent its entire backlog. The `Inbox` therefore stops reading the
socket at a high-water mark (TCP then pushes back on the broker, which keeps the messages) and
resumes below half of it: memory stays bounded whatever the broker does.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SESSION_EXPIRY_MIN_S: Final = 7 * 24 * 3600  # CONTRACT.md: at least 7 days


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """What the MQTT side needs from the configuration (`cfg.mqtt`), as plain values.

    A dataclass of our own so that this package does not depend on the config module's types;
    `from_config` adapts any object with the same attribute names.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "sms"
    client_id: str = "smsgw-1"
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in logs or /status
    tls_context: ssl.SSLContext | None = None
    keepalive_s: int = 30
    session_expiry_s: int = SESSION_EXPIRY_MIN_S
    reconnect_s: float = 0.25  # first retry delay after a lost connection, doubling ...
    reconnect_max_s: float = 15.0  # ... up to this, with jitter
    timeout_s: float = 10.0  # connect, subscribe and disconnect round trips

    def __post_init__(self) -> None:
        if self.session_expiry_s < SESSION_EXPIRY_MIN_S:
            raise ValueError(f"session_expiry_s must be at least {SESSION_EXPIRY_MIN_S}")
        if not self.topic_prefix or any(c in self.topic_prefix for c in "+#"):
            raise ValueError("topic_prefix must be non-empty and hold no MQTT wildcard")

    @classmethod
    def from_config(cls, mqtt: Any, **overrides: Any) -> MqttSettings:  # noqa: ANN401
        """Build from `cfg.mqtt` (any object with host/port/topic_prefix/client_id/...).

        Attributes it lacks keep their defaults; `tls_context` may be given as an override
        (the config module knows how to build one from its TLS options).
        """
        values: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            if hasattr(mqtt, name) and getattr(mqtt, name) is not None:
                values[name] = getattr(mqtt, name)
        password = values.get("password")
        if password is not None and hasattr(password, "get_secret_value"):  # pydantic SecretStr
            values["password"] = password.get_secret_value()
        values.update(overrides)
        return cls(**values)

    def topic(self, *parts: str) -> str:
        return "/".join((self.topic_prefix, *parts))


def new_client(
    settings: MqttSettings,
    *,
    client_id: str,
    persistent: bool,
    receive_maximum: int | None = None,
    max_inflight_out: int | None = None,
    inbox: Inbox | None = None,
) -> aiomqtt.Client:
    """An aiomqtt client (not yet connected; must be called inside the event loop).

    persistent: clean_start=False and a session expiry of `settings.session_expiry_s`, so QoS 1
    messages for our subscriptions wait in the broker while we are away; otherwise a clean
    session that the broker forgets on disconnect.
    receive_maximum: how many unacknowledged QoS 1 messages the broker may have in flight to us.
    max_inflight_out: how many of our own QoS 1 publishes paho keeps in flight (paho's default
    is 20; beyond it paho queues them in memory, in order). 0 means no limit, which also spares
    paho's scan of every in-flight message on each PUBACK (O(window) per ack): use it when the
    caller keeps its own window, as the event publisher does.
    inbox: the incoming queue to use (bounded by pausing reads); default: aiomqtt's unbounded one.
    """
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = settings.session_expiry_s if persistent else 0
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    client = aiomqtt.Client(
        settings.host,
        settings.port,
        identifier=client_id,
        username=settings.username,
        password=settings.password,
        tls_context=settings.tls_context,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=not persistent,
        properties=props,
        keepalive=settings.keepalive_s,
        timeout=settings.timeout_s,
        max_inflight_messages=max_inflight_out,
        # Never let aiomqtt cap the incoming queue: it drops what exceeds the cap, and a dropped
        # message is never acknowledged. The Inbox bounds it by pausing reads instead.
        max_queued_incoming_messages=None,
        queue_type=(lambda maxsize=0: inbox) if inbox is not None else None,  # type: ignore[arg-type]
    )
    if inbox is not None:
        inbox.attach(client)
    return client


# --- Manual acknowledgement: aiomqtt has no public API for it (aiomqtt#345,
# https://github.com/empicano/aiomqtt/issues/345). paho, underneath, sends the PUBACK of a QoS 1
# message as soon as its on_message callback returns unless manual ack is on; then `ack(mid, qos)`
# sends it. The ingress acknowledges a submission only once its row is committed (or its
# rejection published), so a gateway that dies in between gets it again from the broker.
def enable_manual_ack(client: aiomqtt.Client) -> None:
    """Turn off paho's automatic PUBACK. Must be called before connecting."""
    client._client.manual_ack_set(True)  # noqa: SLF001 - aiomqtt#345


def ack(client: aiomqtt.Client, message: aiomqtt.Message) -> bool:
    """Send the PUBACK of `message` on `client`, the connection it arrived on.

    Only valid on that same connection: after a reconnect the broker resends unacknowledged
    messages and may reuse packet ids, so acking an old mid could acknowledge a newer message
    that is not committed yet. Returns False when the connection is gone (nothing was sent).
    """
    if message.qos == 0:
        return True  # nothing to acknowledge
    rc = client._client.ack(message.mid, message.qos)  # noqa: SLF001 - aiomqtt#345
    return rc == paho.MQTT_ERR_SUCCESS


class Inbox(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's incoming message queue, bounded without dropping: past `max_messages` or
    `max_bytes` of payload it stops reading the client's socket, and resumes once the reader has
    taken it below half of both.

    One Inbox per connection (pass it to `new_client`); `arm()` it once the subscription is
    acknowledged: before that a pause would also hold back the SUBACK (the broker's first burst,
    up to its window, is taken as is). While paused nothing is read, PINGRESP included: a pause longer than ~1.5 keepalive makes paho drop the connection, which is safe
    (nothing unacknowledged is lost) and is retried like any loss.
    """

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        super().__init__()
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.bytes = 0
        self.paused = False
        self.pauses = 0
        self.peak = 0  # most messages held at once (for tests and /status)
        self.armed = False
        self._client: aiomqtt.Client | None = None

    def attach(self, client: aiomqtt.Client) -> None:
        self._client = client

    def arm(self) -> None:
        """Start bounding (pausing reads when full)."""
        self.armed = True
        if self._full() and not self.paused:
            self._pause()

    def _full(self) -> bool:
        return self.qsize() >= self.max_messages or self.bytes >= self.max_bytes

    def put_nowait(self, item: aiomqtt.Message) -> None:
        super().put_nowait(item)
        self.bytes += len(item.payload) if isinstance(item.payload, bytes | bytearray) else 0
        self.peak = max(self.peak, self.qsize())
        if self.armed and not self.paused and self._full():
            self._pause()

    def get_nowait(self) -> aiomqtt.Message:
        item = super().get_nowait()
        self.bytes -= len(item.payload) if isinstance(item.payload, bytes | bytearray) else 0
        if self.paused and self.qsize() <= self.max_messages // 2 and self.bytes <= self.max_bytes // 2:
            self._resume()
        return item

    def take(self, limit: int) -> list[aiomqtt.Message]:
        """Up to `limit` messages already here, without waiting (aiomqtt's iterator costs a task
        and an asyncio.wait per message; this is a get_nowait each)."""
        out: list[aiomqtt.Message] = []
        while len(out) < limit and not self.empty():
            out.append(self.get_nowait())
        return out

    # Pausing replaces aiomqtt's socket reader, so it mirrors what that reader does (aiomqtt
    # 2.5.1 client.py, _on_socket_open): loop_read, drain TLS-pending bytes, and report an
    # exception as the disconnection.
    def _pause(self) -> None:
        sock = self._sock()
        if sock is None:
            return
        asyncio.get_running_loop().remove_reader(sock.fileno())
        self.paused = True
        self.pauses += 1

    def _resume(self) -> None:
        self.paused = False
        sock = self._sock()
        if sock is None:
            return
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._on_readable)
        loop.call_soon(self._on_readable)  # TLS may hold decrypted bytes select() won't report

    def _sock(self) -> Any:  # noqa: ANN401
        if self._client is None:
            return None
        sock = self._client._client.socket()  # noqa: SLF001
        return sock if sock is not None and sock.fileno() >= 0 else None

    def _on_readable(self) -> None:
        assert self._client is not None
        paho_client = self._client._client  # noqa: SLF001
        try:
            while not self.paused:
                paho_client.loop_read()
                sock = paho_client.socket()
                if sock is not None and hasattr(sock, "pending") and sock.pending() > 0:
                    continue
                break
        except Exception as exc:  # noqa: BLE001 - as aiomqtt: a broken socket ends the connection
            disconnected = self._client._disconnected  # noqa: SLF001
            if not disconnected.done():
                disconnected.set_exception(exc)


def on_puback(client: aiomqtt.Client, callback: Callable[[int, int], None]) -> None:
    """Call `callback(mid, reason_code)` when the broker confirms one of our QoS 1 publishes.

    Chains paho's on_publish (aiomqtt's handler still runs first, for its own awaiting calls).
    With MQTT 5 a reason code >= 0x80 means the broker refused the message (e.g. not authorised).
    """
    paho_client = client._client  # noqa: SLF001 - aiomqtt has no "confirmed" hook
    inner = cast("Callable[..., None] | None", paho_client.on_publish)

    def chained(
        c: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any  # noqa: ANN401
    ) -> None:
        if inner is not None:
            inner(c, userdata, mid, reason_code, properties)
        value = getattr(reason_code, "value", 0)
        callback(mid, int(value) if isinstance(value, int) else 0)

    paho_client.on_publish = chained


def publish_nowait(client: aiomqtt.Client, topic: str, payload: bytes, qos: int = 1) -> int | None:
    """Hand one publish to paho without awaiting its PUBACK; its mid, or None when not connected.

    paho writes packets in the order they are handed over, which is what keeps events in order.
    """
    info = client._client.publish(topic, payload, qos)  # noqa: SLF001 - see on_puback
    if info.rc != paho.MQTT_ERR_SUCCESS:
        return None
    return int(info.mid)


class Backoff:
    """Reconnect delays: `first`, doubling up to `maximum`, each with +-25 % jitter so that a
    fleet of gateways does not reconnect in lockstep after a broker restart."""

    def __init__(self, first: float, maximum: float, rng: random.Random | None = None) -> None:
        self.first = first
        self.maximum = maximum
        self._next = first
        self._rng = rng or random.Random()

    def next(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        return delay * self._rng.uniform(0.75, 1.25)

    def reset(self) -> None:
        self._next = self.first
