"""``--serve-health``: a tiny HTTP endpoint XPlane's active health checks can probe.

``GET /healthz`` -> 200 ``ok`` (503 ``draining`` once drained); ``GET /`` -> the node id.
Pure asyncio: it lives on the agent's event loop, no thread and no extra dependency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import NamedTuple

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class HealthView(NamedTuple):
    node_id: str | None
    draining: bool


def respond(method: str, path: str, view: HealthView) -> tuple[int, str]:
    """Status and body for one request (pure, so the routing is testable alone)."""
    if method not in ("GET", "HEAD"):
        return 405, "method not allowed\n"
    route = path.split("?", 1)[0]
    if route == "/healthz":
        return (503, "draining\n") if view.draining else (200, "ok\n")
    if route == "/":
        return (200, f"{view.node_id}\n") if view.node_id else (503, "not registered yet\n")
    return 404, "not found\n"


def parse_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6); raise ValueError naming the value."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--serve-health {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


class HealthServer:
    def __init__(self, host: str, port: int, view: Callable[[], HealthView]) -> None:
        self.host = host
        self.port = port
        self._view = view
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5.0)
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) == 3:
                method = parts[0]
                status, body = respond(method, parts[1], self._view())
            else:
                method, status, body = "GET", 400, "bad request\n"
            payload = body.encode()
            writer.write(
                (
                    f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                    "Content-Type: text/plain; charset=utf-8\r\n"
                    f"Content-Length: {len(payload)}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                + (b"" if method == "HEAD" else payload)
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that hangs up or sends garbage gets nothing
        finally:
            writer.close()
