"""A simulated fleet: N nodes in one asyncio process, talking to a real ``xplane api``.

Each simulated node registers with its region's bootstrap token (``POST
/nodes/register``), then beats every interval (``POST /nodes/heartbeat``, the
agent's payload: CPU, RTT and error rate with per-node noise, one probe result)
on its own phase, so the API sees a steady 1/interval beats per node. Beats go
over a pool of keep-alive HTTP/1.1 connections (many sockets, one event loop);
the client is a minimal one written for this (request bytes out, status line
and ``content-length`` body in), because httpx's per-request cost in Python
would make the simulator, not the API, the bottleneck at 1,000 beats/s on two
cores. Registration, rare, goes through httpx.

Active health checks: every node is registered at its own loopback address
(127.x.y.z: Linux answers the whole 127/8 on ``lo``) with one shared port; one
asyncio server bound to 0.0.0.0 on that port answers ``GET`` with 200, or 503
when the address it was reached on belongs to a killed node -- the checks in
:mod:`xplane.gtm.health_checks` only need ``address:port``.

Faults: :meth:`Fleet.kill_region`, :meth:`Fleet.kill_fraction` (spread over
regions), :meth:`Fleet.kill_all` and :meth:`Fleet.revive`; a killed node stops
beating and fails its checks. A small control server (:class:`Control`) exposes
them over HTTP for a fleet run as its own process::

    .venv/bin/python -m bench.fleet --api http://127.0.0.1:8080 --nodes 1000 \
        --regions 10 --token-env XPLANE_BOOTSTRAP_TOKEN --control-port 9400
    curl -XPOST 127.0.0.1:9400/kill?region=r007   # or ?fraction=0.05, or ?all=1
    curl 127.0.0.1:9400/stats

Per-beat latency (time from send to the whole answer) and lost beats (a beat
that failed, answered non-200, or whose slot passed unsent because the loop fell
more than one interval behind) are recorded per window (:meth:`Fleet.take_window`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

SERVICE = "web"


def region_names(count: int) -> list[str]:
    """``r000`` .. ``r099``: sortable, valid names, one per region."""
    return [f"r{i:03d}" for i in range(count)]


def node_address(index: int) -> str:
    """The ``index``-th node's loopback address: 127.100.0.1, 127.100.0.2, ... (no .0/.255)."""
    return f"127.{100 + index // 62500}.{index // 250 % 250}.{index % 250 + 1}"


@dataclass
class SimNode:
    region: str
    address: str
    node_id: str = ""
    token: str = ""
    alive: bool = True
    cpu: float = 0.4
    rtt_ms: float = 20.0
    error_rate: float = 0.001
    phase: float = 0.0  # seconds after the fleet's start of this node's first beat


@dataclass
class Window:
    """Beats since the last :meth:`Fleet.take_window`."""

    started: float
    latencies_ms: list[float] = field(default_factory=list)
    lost: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def summary(self, now: float) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "seconds": round(now - self.started, 1),
            "beats": len(lat),
            "beats_per_s": round(len(lat) / max(now - self.started, 1e-9), 1),
            "p50_ms": round(_quantile(lat, 0.50), 2),
            "p99_ms": round(_quantile(lat, 0.99), 2),
            "max_ms": round(lat[-1], 2) if lat else 0.0,
            "lost": self.lost,
            "failures": dict(self.failures),
        }


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class HttpPool:
    """Keep-alive HTTP/1.1 connections to one host:port, lent one request at a time."""

    def __init__(self, url: str, size: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.size = size
        self._idle: asyncio.Queue[_Conn | None] = asyncio.Queue()
        self.reconnects = 0  # kept-alive connections found closed by the server
        for _ in range(size):
            self._idle.put_nowait(None)  # a slot; connected on first use

    async def post(self, path: str, token: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        """One request; on a kept-alive connection the server closed meanwhile (no answer
        byte read), once more on a new one, as HTTP clients do."""
        conn = await self._idle.get()
        kept: _Conn | None = None
        try:
            try:
                status, answer, kept = await self._exchange(conn, path, token, body, timeout)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                partial = isinstance(exc, asyncio.IncompleteReadError) and exc.partial
                if conn is None or partial:
                    raise
                self.reconnects += 1
                status, answer, kept = await self._exchange(None, path, token, body, timeout)
            return status, answer
        finally:
            self._idle.put_nowait(kept)

    async def _exchange(
        self, conn: _Conn | None, path: str, token: str, body: bytes, timeout: float
    ) -> tuple[int, bytes, _Conn]:
        if conn is None:
            conn = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout)
        reader, writer = conn
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            writer.write(head + body)
            status, answer = await asyncio.wait_for(_read_response(reader), timeout)
        except BaseException:
            writer.close()
            raise
        return status, answer, conn

    async def close(self) -> None:
        while not self._idle.empty():
            conn = self._idle.get_nowait()
            if conn is not None:
                conn[1].close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length) if length else b""


class Fleet:
    """N simulated nodes; :meth:`start` registers them and starts beating."""

    def __init__(
        self,
        api_url: str,
        regions: dict[str, int],
        tokens: Callable[[str], str],
        interval_s: float = 10.0,
        health_port: int = 0,
        connections: int = 64,
        seed: int = 16,
        timeout_s: float = 5.0,
        service: str = SERVICE,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.service = service
        self.tokens = tokens
        self.interval = interval_s
        self.health_port = health_port
        self.timeout = timeout_s
        self.rng = random.Random(seed)
        self.nodes: list[SimNode] = []
        index = 0
        for region in sorted(regions):
            # Per-region character: a base RTT, then per-node noise around it.
            base_rtt = self.rng.uniform(5, 120)
            for _ in range(regions[region]):
                self.nodes.append(
                    SimNode(
                        region=region,
                        address=node_address(index),
                        cpu=self.rng.uniform(0.2, 0.6),
                        rtt_ms=base_rtt * self.rng.uniform(0.8, 1.2),
                        error_rate=self.rng.choice([0.0, 0.001, 0.002, 0.01]),
                        phase=self.rng.uniform(0, interval_s),
                    )
                )
                index += 1
        self._by_address = {n.address: n for n in self.nodes}
        self.pool = HttpPool(self.api_url, connections)
        self.window = Window(time.monotonic())
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._health_loop: asyncio.AbstractEventLoop | None = None
        self._health_thread: threading.Thread | None = None
        self.health_requests = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self, register_concurrency: int = 32, register: bool = True) -> None:
        """``register=False``: the nodes' ids and tokens were set by the caller (nodes
        put in the store directly); they only beat."""
        if self.health_port:
            self._start_health_thread()
        if register:
            await self.register(self.nodes, register_concurrency)
        t0 = time.monotonic()
        self.window = Window(t0)
        self._tasks = [asyncio.create_task(self._beat_forever(n, t0)) for n in self.nodes]

    async def register(self, nodes: Iterable[SimNode], concurrency: int = 32) -> None:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=self.api_url, limits=limits, timeout=30) as client:
            gate = asyncio.Semaphore(concurrency)

            async def one(node: SimNode) -> None:
                body = {"service": self.service, "region": node.region, "address": node.address}
                if self.health_port:
                    body["port"] = self.health_port  # type: ignore[assignment]
                headers = {"Authorization": f"Bearer {self.tokens(node.region)}"}
                async with gate:
                    # Retried like an agent: a 5xx/429, or a kept-alive connection the
                    # API closed just as it was reused (uvicorn's keep-alive timeout).
                    for attempt in range(6):
                        try:
                            answer = await client.post(
                                "/nodes/register", json=body, headers=headers
                            )
                        except httpx.TransportError:
                            if attempt == 5:
                                raise
                        else:
                            if answer.status_code < 500 and answer.status_code != 429:
                                break
                        await asyncio.sleep(0.2 * (attempt + 1))
                    data = answer.raise_for_status().json()
                node.node_id, node.token = data["node_id"], data["token"]

            await asyncio.gather(*(one(n) for n in nodes))

    async def stop(self) -> None:
        # The flag as well as the cancel: Python 3.11's wait_for can swallow a cancel that
        # races a completed read, and the beat loop would then go on forever.
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        self._tasks = []
        if self._health_loop is not None:
            self._health_loop.call_soon_threadsafe(self._health_loop.stop)
            if self._health_thread is not None:
                await asyncio.to_thread(self._health_thread.join, 5)
        await self.pool.close()

    # ------------------------------------------------------------------ beats
    def _body(self, node: SimNode) -> bytes:
        rng = self.rng
        cpu = min(1.0, max(0.0, node.cpu + rng.gauss(0, 0.03)))
        rtt = max(0.1, node.rtt_ms * rng.lognormvariate(0, 0.1))
        errors = min(1.0, node.error_rate * rng.uniform(0, 2))
        probe_rtt = max(0.1, rtt * 0.05)
        return (
            f'{{"node_id":"{node.node_id}","cpu":{cpu:.3f},"rtt_ms":{rtt:.2f},'
            f'"error_rate":{errors:.4f},"qps":{rng.uniform(10, 50):.1f},'
            f'"probes":[{{"target":"http://{node.address}/","ok":true,"rtt_ms":{probe_rtt:.2f}}}]}}'
        ).encode()

    async def _beat_forever(self, node: SimNode, t0: float) -> None:
        slot = 0
        while not self._stopping:
            due = t0 + node.phase + slot * self.interval
            now = time.monotonic()
            if now - due > self.interval:  # fell a whole interval behind: those slots are lost
                skipped = int((now - due) // self.interval)
                if node.alive:
                    self.window.lost += skipped
                slot += skipped
                continue
            if due > now:
                await asyncio.sleep(due - now)
            slot += 1
            if node.alive:
                await self.beat(node)

    async def beat(self, node: SimNode) -> None:
        sent = time.monotonic()
        window = self.window
        try:
            status, _ = await self.pool.post(
                "/nodes/heartbeat", node.token, self._body(node), self.timeout
            )
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            window.lost += 1
            kind = type(exc).__name__
            window.failures[kind] = window.failures.get(kind, 0) + 1
            return
        if status != 200:
            window.lost += 1
            window.failures[str(status)] = window.failures.get(str(status), 0) + 1
            return
        window.latencies_ms.append((time.monotonic() - sent) * 1000)

    def take_window(self) -> dict[str, Any]:
        """The figures since the last call, and a new window from now."""
        now = time.monotonic()
        done, self.window = self.window, Window(now)
        return done.summary(now) | {"reconnects_so_far": self.pool.reconnects}

    # ------------------------------------------------------------------ faults
    def kill_region(self, region: str) -> list[SimNode]:
        return self._kill(n for n in self.nodes if n.region == region)

    def kill_fraction(self, fraction: float, exclude: Iterable[str] = ()) -> list[SimNode]:
        """``fraction`` of every region's live nodes (at least one each), regions in
        ``exclude`` untouched: a failure spread over the fleet, not one region."""
        skip = set(exclude)
        victims: list[SimNode] = []
        for region in sorted({n.region for n in self.nodes} - skip):
            live = [n for n in self.nodes if n.region == region and n.alive]
            count = min(len(live), max(1, round(fraction * len(live))))
            victims += self.rng.sample(live, count)
        return self._kill(victims)

    def kill_all(self) -> list[SimNode]:
        return self._kill(self.nodes)

    def revive(self, nodes: Iterable[SimNode] | None = None) -> int:
        count = 0
        for node in self.nodes if nodes is None else nodes:
            count += not node.alive
            node.alive = True
        return count

    def _kill(self, nodes: Iterable[SimNode]) -> list[SimNode]:
        killed = [n for n in nodes if n.alive]
        for node in killed:
            node.alive = False
        return killed

    def live_addresses(self) -> set[str]:
        return {n.address for n in self.nodes if n.alive}

    # ------------------------------------------------------------------ health checks
    def _start_health_thread(self) -> None:
        """The health server on an event loop of its own: checks are answered at once
        even while the beating loop is busy (a real node's checks never wait on
        9,999 other nodes' heartbeats), so a slow check is XPlane's, not the fleet's."""
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)  # this thread's loop (gather at the end needs it)
            try:
                server = loop.run_until_complete(
                    asyncio.start_server(self._serve_health, "0.0.0.0", self.health_port)
                )
            except BaseException as exc:
                failed.append(exc)
                ready.set()
                loop.close()
                return
            self._health_loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                # Probers keep their connections open: end their handlers while the
                # loop still runs, or they are destroyed pending when it closes.
                handlers = asyncio.all_tasks(loop)
                for task in handlers:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*handlers, return_exceptions=True))
                loop.run_until_complete(server.wait_closed())
                loop.close()

        self._health_thread = threading.Thread(target=run, name="fleet-health", daemon=True)
        self._health_thread.start()
        ready.wait(10)
        if failed:
            raise failed[0]

    async def _serve_health(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        local = writer.get_extra_info("sockname")[0]
        node = self._by_address.get(local)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.health_requests += 1
                ok = node is not None and node.alive
                status = b"200 OK" if ok else b"503 Service Unavailable"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


class Control:
    """HTTP control of a running fleet: ``POST /kill?region=R|fraction=F|all=1``,
    ``POST /revive``, ``GET /stats`` (the window since the last ``/stats``)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    async def serve(self, port: int, host: str = "127.0.0.1") -> asyncio.Server:
        return await asyncio.start_server(self._handle, host, port)

    def answer(self, method: str, target: str) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        fleet = self.fleet
        if method == "GET" and parts.path == "/stats":
            live = sum(n.alive for n in fleet.nodes)
            return 200, {"nodes": len(fleet.nodes), "live": live, **fleet.take_window()}
        if method == "POST" and parts.path == "/kill":
            if "region" in query:
                killed = fleet.kill_region(query["region"])
            elif "fraction" in query:
                try:
                    fraction = float(query["fraction"])
                except ValueError:
                    return 422, {"error": "fraction: not a number"}
                if not 0 < fraction <= 1:
                    return 422, {"error": "fraction: must be in (0, 1]"}
                killed = fleet.kill_fraction(fraction)
            elif query.get("all"):
                killed = fleet.kill_all()
            else:
                return 422, {"error": "one of region, fraction, all is required"}
            return 200, {"killed": [n.node_id for n in killed]}
        if method == "POST" and parts.path == "/revive":
            return 200, {"revived": fleet.revive()}
        return 404, {"error": f"no {method} {parts.path}"}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            status, body = self.answer(method, target)
            data = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ValueError, ConnectionError):
            pass
        finally:
            writer.close()


def spread(nodes: int, regions: int) -> dict[str, int]:
    """``nodes`` over ``regions`` regions as evenly as possible."""
    names = region_names(regions)
    return {r: nodes // regions + (i < nodes % regions) for i, r in enumerate(names)}


async def _main(args: argparse.Namespace) -> None:
    token = os.environ[args.token_env]
    fleet = Fleet(
        args.api,
        spread(args.nodes, args.regions),
        lambda region: os.environ.get(f"{args.token_env}_{region.upper()}", token),
        interval_s=args.interval,
        health_port=args.health_port,
        connections=args.connections,
    )
    await fleet.start()
    server = await Control(fleet).serve(args.control_port)
    print(f"fleet: {len(fleet.nodes)} nodes beating; control on :{args.control_port}", flush=True)
    try:
        while True:
            await asyncio.sleep(args.report_every)
            print(json.dumps(fleet.take_window()), flush=True)
    finally:
        server.close()
        await fleet.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", required=True)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--regions", type=int, default=10)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--health-port", type=int, default=0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--token-env", default="XPLANE_BOOTSTRAP_TOKEN")
    parser.add_argument("--control-port", type=int, default=9400)
    parser.add_argument("--report-every", type=float, default=10.0)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(parser.parse_args()))
