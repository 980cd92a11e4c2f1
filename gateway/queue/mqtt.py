"""MQTT plumbing shared by the ingress and the event publisher: settings, connections, the
ingress's bounded inbox, backoff.

The wire protocol is `mqtt5.py`, a lean MQTT 5 client of our own (paho under aiomqtt cost about
half of the daemon's CPU; see that module). What the gateway needs of it:

- manual PUBACK: a received QoS 1 submission is acknowledged only by `Client.ack`, which the
  ingress calls after the commit (its durability rule);
- `Inbox`: the incoming messages of one connection, bounded by pausing reads from the socket,
  because the broker's in-flight window alone does not bound it (below);
- `on_puback`: which of our QoS 1 publishes the broker confirmed, so the publisher can keep a
  window of many publishes in flight instead of awaiting one round trip per event.

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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.queue.mqtt5 import Client, Message, MqttError, check_topic

__all__ = ["Backoff", "Client", "Inbox", "Message", "MqttError", "MqttSettings", "check_topic",
           "connect"]

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
    tls_server_hostname: str | None = None  # name to verify the broker's certificate against
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


async def connect(
    settings: MqttSettings,
    *,
    client_id: str,
    persistent: bool,
    receive_maximum: int | None = None,
    on_message: Callable[[Message], None] | None = None,
    on_puback: Callable[[int, int], None] | None = None,
) -> Client:
    """A connected client (MqttError when refused or unreachable).

    persistent: clean_start=False and a session expiry of `settings.session_expiry_s`, so QoS 1
    messages for our subscriptions wait in the broker while we are away; otherwise a clean
    session that the broker forgets on disconnect.
    receive_maximum: how many unacknowledged QoS 1 messages the broker may have in flight to us.
    on_message: every PUBLISH received (QoS 1 ones are acknowledged only by `client.ack`).
    on_puback(packet_id, reason_code): one of our QoS 1 publishes confirmed; with MQTT 5 a
    reason code >= 0x80 means the broker refused it (e.g. not authorised).
    """
    return await Client.connect(
        settings.host, settings.port, client_id,
        clean_start=not persistent,
        keepalive=settings.keepalive_s,
        session_expiry=settings.session_expiry_s if persistent else 0,
        receive_maximum=receive_maximum,
        username=settings.username,
        password=settings.password,
        tls=settings.tls_context,
        server_hostname=settings.tls_server_hostname,
        timeout=settings.timeout_s,
        on_message=on_message,
        on_puback=on_puback,
    )


class Inbox:
    """The received messages of one connection, bounded without dropping: past `max_messages`
    or `max_bytes` of payload it stops reading the client's socket (and parsing what was already
    read), and resumes once the reader has taken it below half of both.

    One Inbox per connection: pass `inbox.put` as the client's `on_message`, then `attach` the
    client; `arm()` it once the subscription is acknowledged (the broker's first burst, up to its
    window, is taken as is). While paused nothing is read, PINGRESP included; the broker still
    gets our PINGREQs, so a long pause does not lose the connection.
    """

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.bytes = 0
        self.paused = False
        self.pauses = 0
        self.peak = 0  # most messages held at once (for tests and /status)
        self.armed = False
        self._items: deque[Message] = deque()
        self._ready = asyncio.Event()
        self._error: BaseException | None = None
        self._client: Client | None = None

    def attach(self, client: Client) -> None:
        self._client = client
        client.closed.add_done_callback(self._on_closed)

    def arm(self) -> None:
        """Start bounding (pausing reads when full)."""
        self.armed = True
        if self._full() and not self.paused:
            self._pause()

    def __len__(self) -> int:
        return len(self._items)

    def _full(self) -> bool:
        return len(self._items) >= self.max_messages or self.bytes >= self.max_bytes

    def put(self, item: Message) -> None:
        self._items.append(item)
        self.bytes += len(item.payload)
        n = len(self._items)
        if n > self.peak:
            self.peak = n
        self._ready.set()
        if self.armed and not self.paused and self._full():
            self._pause()

    def take(self, limit: int) -> list[Message]:
        """Up to `limit` messages already here, without waiting."""
        items = self._items
        out: list[Message] = []
        while items and len(out) < limit:
            item = items.popleft()
            self.bytes -= len(item.payload)
            out.append(item)
        if self.paused and len(items) <= self.max_messages // 2 and self.bytes <= self.max_bytes // 2:
            self._resume()
        return out

    async def wait(self) -> None:
        """Until a message is here; MqttError once the connection is lost and none is left."""
        while not self._items:
            if self._error is not None:
                raise self._error
            self._ready.clear()
            await self._ready.wait()

    def _on_closed(self, fut: asyncio.Future[None]) -> None:
        exc = None if fut.cancelled() else fut.exception()
        self._error = exc if exc is not None else MqttError("connection closed")
        self._ready.set()

    def _pause(self) -> None:
        if self._client is not None:
            self._client.pause_reading()
        self.paused = True
        self.pauses += 1

    def _resume(self) -> None:
        self.paused = False
        if self._client is not None:
            self._client.resume_reading()


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
