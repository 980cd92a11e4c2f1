"""The operator's HTTP listener (loopback by default): /healthz, /status, /metrics, and `/`.

A deliberately small HTTP/1.1 server on asyncio streams: GET only, one request per connection
(`Connection: close`), bounded request size and read time, so a slow or hostile client can
neither hold the daemon nor make it buffer. The daemon supplies the handlers; this module knows
nothing of carriers or the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from gateway.log import get_logger

log = get_logger("gateway.http")

MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_S = 5.0
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request",
            503: "Service Unavailable", 500: "Internal Server Error"}


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()  # extra response headers (e.g. a CSP)

    @classmethod
    def json(cls, status: int, doc: object) -> Response:
        return cls(status, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")


Handler = Callable[[], Awaitable[Response]]


class HttpServer:
    """Routes a path to a handler; everything else is 404."""

    def __init__(self, host: str, port: int, routes: dict[str, Handler]) -> None:
        self.host = host
        self.port = port
        self.routes = routes
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  limit=MAX_REQUEST_BYTES)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        log.info("http_listening", host=self.host, port=str(self.port))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head_only = False
        try:
            resp, head_only = await asyncio.wait_for(self._handle(reader), READ_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, ConnectionError):
            resp = Response.json(400, {"error": "bad request"})
        except Exception as exc:  # a handler bug must not take the listener down
            log.error("http_handler_failed", error=str(exc))
            resp = Response.json(500, {"error": "internal error"})
        extra = "".join(f"{k}: {v}\r\n" for k, v in resp.headers)
        head = (f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'OK')}\r\n"
                f"Content-Type: {resp.content_type}\r\nContent-Length: {len(resp.body)}\r\n"
                f"{extra}Cache-Control: no-store\r\nConnection: close\r\n\r\n").encode()
        with contextlib.suppress(Exception):
            writer.write(head if head_only else head + resp.body)
            await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()
            await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader) -> tuple[Response, bool]:
        """The response, and whether to send its head only (HEAD)."""
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) != 3:
            return Response.json(400, {"error": "bad request line"}), False
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return Response.json(405, {"error": "only GET"}), False
        handler = self.routes.get(target.split("?", 1)[0])
        if handler is None:
            return Response.json(404, {"error": "not found"}), method == "HEAD"
        return await handler(), method == "HEAD"
