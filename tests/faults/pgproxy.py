"""A TCP proxy in front of PostgreSQL that cuts a connection right after the server committed a
transaction and before the client hears so: the "COMMIT outcome unknown" fault of a crash, a
failover or a network cut, made deterministic.

It reads the server's side of the protocol (typed messages: one byte, a 4-byte length), and
when armed, instead of forwarding a CommandComplete `COMMIT` it closes both sides. The server
has committed; the client gets a lost connection. Connect with `sslmode=disable` and
`gssencmode=disable` so that the server's stream starts with typed messages (no 'N'/'S' byte
answering an SSL or GSS request).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

_COMMIT = b"C\x00\x00\x00\x0bCOMMIT\x00"  # CommandComplete "COMMIT": type, length 11, tag


class CommitCutter:
    """`await start()`; `arm(n)`: cut the connection at each of the next `n` COMMIT answers."""

    def __init__(self, server_port: int, host: str = "127.0.0.1") -> None:
        self.host, self.server_port = host, server_port
        self.port = 0
        self.armed = 0
        self.cuts = 0  # commits whose answer was withheld
        self.commits = 0  # COMMIT answers seen
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url_params(self) -> str:
        return "sslmode=disable&gssencmode=disable"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t

    def arm(self, n: int = 1) -> None:
        self.armed += n

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(self.host, self.server_port)
        except OSError:
            c_writer.close()
            return
        up = asyncio.create_task(self._pipe(c_reader, s_writer))
        down = asyncio.create_task(self._server_to_client(s_reader, c_writer))
        self._tasks |= {up, down}
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (up, down):
                t.cancel()
                self._tasks.discard(t)
            for w in (c_writer, s_writer):
                w.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def _server_to_client(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        """Forward whole messages; withhold an armed COMMIT answer and end the connection."""
        while True:
            head = await reader.readexactly(5)
            (length,) = struct.unpack("!I", head[1:])
            msg = head + await reader.readexactly(length - 4)
            if msg == _COMMIT:
                self.commits += 1
                if self.armed > 0:
                    self.armed -= 1
                    self.cuts += 1
                    return
            writer.write(msg)
            await writer.drain()
