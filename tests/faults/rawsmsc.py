"""A misbehaving "SMSC" on a raw asyncio TCP server, for the faults the simulator cannot play
because it always speaks SMPP: a carrier that accepts TCP and never answers the bind, one that
answers with a command_length of 0xFFFFFFFF, one that answers with pure garbage.

It records when each connection came (loop time) and what it received, so a test can count the
gateway's bind attempts and check their spacing (backoff, at most 2 a second).
"""

from __future__ import annotations

import asyncio
import random
from typing import Literal

Mode = Literal["silent", "huge_length", "garbage"]

#: A header claiming a 4 GiB PDU (command_length 0xFFFFFFFF) as a bind_transceiver_resp, then a
#: little of a body: the peer must refuse the frame, never try to buffer it.
HUGE_LENGTH = b"\xff\xff\xff\xff\x80\x00\x00\x09\x00\x00\x00\x00\x00\x00\x00\x01smsc\x00"


class _Conn(asyncio.Protocol):
    def __init__(self, server: RawSmsc) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connect_times.append(asyncio.get_running_loop().time())
        self.server.conns.add(self)

    def data_received(self, data: bytes) -> None:
        self.server.received += len(data)
        reply = self.server.reply()
        if reply and self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)


class RawSmsc:
    """``mode``: ``silent`` reads and never answers (the bind must time out); ``huge_length``
    answers whatever comes with ``HUGE_LENGTH``; ``garbage`` with random bytes (seeded)."""

    def __init__(self, port: int, mode: Mode, *, seed: int = 8) -> None:
        self.port = port
        self.mode = mode
        self.connect_times: list[float] = []
        self.received = 0
        self.conns: set[_Conn] = set()
        self._random = random.Random(seed)
        self._server: asyncio.base_events.Server | None = None

    def reply(self) -> bytes:
        if self.mode == "huge_length":
            return HUGE_LENGTH
        if self.mode == "garbage":
            return self._random.randbytes(self._random.randint(1, 300))
        return b""

    async def start(self) -> RawSmsc:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", self.port,
                                                reuse_address=True)
        return self

    async def stop(self) -> None:
        """Stop listening and abort every connection (the port is free again afterwards)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
