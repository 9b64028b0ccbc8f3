"""Heartbeat load for the fault stack: a simulated fleet beating through a load balancer.

:class:`TcpBalancer` is the stack's load balancer in front of its API replicas (the
compose file's nginx, in small): each client connection goes to the next replica in
turn, to the one after it when that refuses, and is closed when its replica's side
closes -- a replica killed drops its connections, and a client's retry lands on a
live one. :class:`HeartbeatLoad` runs it and a :class:`bench.fleet.Fleet` of
simulated nodes (register, then beat every interval over keep-alive connections) on
an event loop of their own, in a thread, so the test's own polling never delays a
beat; the figures come back through :meth:`HeartbeatLoad.take_window`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from bench.fleet import Fleet, SimNode

T = TypeVar("T")


class TcpBalancer:
    """Round-robin TCP proxy on 127.0.0.1:``port`` over ``backends`` (host, port)."""

    def __init__(self, port: int, backends: list[tuple[str, int]]) -> None:
        self.port = port
        self.backends = backends
        self.connections = [0] * len(backends)  # client connections given to each backend
        self.refused = [0] * len(backends)  # connects each backend refused
        self._next = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        first, self._next = self._next, self._next + 1
        for step in range(len(self.backends)):
            index = (first + step) % len(self.backends)
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(*self.backends[index]), 2)
            except (OSError, TimeoutError):
                self.refused[index] += 1
                continue
            self.connections[index] += 1
            break
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until either side ends; then close ``dst`` (the other pipe ends with it)."""
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        dst.close()


class HeartbeatLoad:
    """``regions`` simulated nodes of ``service`` beating every ``interval_s`` through a
    :class:`TcpBalancer` on ``port`` in front of ``backends``; health checks answered on
    ``health_port``. :meth:`start` returns once every node is registered and beating."""

    def __init__(
        self,
        port: int,
        backends: list[tuple[str, int]],
        service: str,
        regions: dict[str, int],
        token: Callable[[str], str],
        interval_s: float,
        health_port: int,
    ) -> None:
        self.balancer = TcpBalancer(port, backends)
        self.fleet = Fleet(
            f"http://127.0.0.1:{port}", regions, token, interval_s=interval_s,
            health_port=health_port, service=service,
        )  # fmt: skip
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="load", daemon=True)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self, seed: Callable[[list[SimNode]], None] | None = None) -> None:
        """With ``seed``: each node gets an id and a token here, and ``seed`` puts them in
        the store (no registration through the API); else every node registers."""
        self._thread.start()
        self._call(self.balancer.start())
        if seed is not None:
            for i, node in enumerate(self.fleet.nodes):
                node.node_id, node.token = f"{node.region}-sim-{i:04d}", secrets.token_urlsafe()
            seed(self.fleet.nodes)
        self._call(self.fleet.start(register=seed is None))

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._call(self.fleet.stop(), 30)
            self._call(self.balancer.stop(), 10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def take_window(self) -> dict[str, Any]:
        """The fleet's figures since the last call (beats answered, lost, latencies)."""

        async def take() -> dict[str, Any]:
            return self.fleet.take_window()

        return self._call(take(), 10)

    def balancer_counts(self) -> dict[str, list[int]]:
        async def counts() -> dict[str, list[int]]:
            b = self.balancer
            return {"connections": list(b.connections), "refused": list(b.refused)}

        return self._call(counts(), 10)
