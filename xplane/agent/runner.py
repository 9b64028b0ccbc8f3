"""The agent's I/O loop: register, heartbeat on the server's interval, act on its answer.

Policy, in one place:
- the control plane being unreachable (network error, 5xx, 429) is never fatal: retry with
  capped, jittered exponential backoff;
- 401/403/404 on a heartbeat means the control plane no longer knows this token or node:
  register again, keeping the node id;
- action ``drain``: report status ``drain`` from then on, the health endpoint answers 503;
- action ``deregister``: forget the persisted identity and return (the process exits 0).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from xplane.agent.client import (
    ControlPlaneClient,
    ControlPlaneUnavailable,
    HeartbeatRequest,
    HeartbeatResponse,
    NeedsRegistration,
    RegisterRequest,
    Rejected,
)
from xplane.agent.config import AgentConfig
from xplane.agent.cpu import CpuSampler
from xplane.agent.health import HealthServer, HealthView
from xplane.agent.local_metrics import (
    FileSource,
    LocalSource,
    MetricsUnavailable,
    NoSource,
    PrometheusSource,
)
from xplane.agent.log import NodeIdHolder, remember_secret
from xplane.agent.probes import run_probes, summarise_rtt
from xplane.agent.prom import LocalMetrics
from xplane.agent.state import AgentState, forget_state, load_state, save_state
from xplane.procs import LIFELINE_ENV, lifeline

# The server's interval is trusted within sane bounds only.
MIN_INTERVAL_S = 0.1
MAX_INTERVAL_S = 3600.0


class TokenFileError(Exception):
    """The bootstrap token file is missing, unreadable or empty."""


def read_token(path: Path) -> str:
    """The bootstrap token; errors name the file, never the content."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise TokenFileError(f"token file {path}: {exc.strerror or exc}") from exc
    if not token:
        raise TokenFileError(f"token file {path}: empty")
    remember_secret(token)
    return token


def detect_address(server: str) -> str:
    """The local IP the kernel would use to reach the server (no packet is sent)."""
    parts = urlsplit(server)
    host = parts.hostname or "127.0.0.1"
    try:
        family = socket.getaddrinfo(host, None)[0][0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((host, parts.port or 80))
            return str(sock.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def agent_version() -> str | None:
    try:
        return version("xplane")
    except PackageNotFoundError:
        return None


def clamp_interval(seconds: float) -> float:
    return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, seconds))


class Agent:
    def __init__(self, config: AgentConfig, log: logging.Logger, node: NodeIdHolder) -> None:
        self.config = config
        self.log = log
        self.node = node  # shared with the log formatter: every line carries the node id
        self.node_id: str | None = config.node_id
        self.address = config.address or detect_address(config.server)
        self.port = config.port or (config.health_address[1] if config.health_address else None)
        self.draining = False
        self.interval_s = 5.0
        self._token: str | None = None
        self._failures = 0
        self._just_registered = False

    # ----------------------------------------------------------------- identity
    def _set_node_id(self, node_id: str) -> None:
        self.node_id = node_id
        self.node.value = node_id

    def _restore(self) -> None:
        """Reuse the persisted node id (and token, when issued for this same registration)."""
        path = self.config.state_file
        state = load_state(path) if path else None
        if state is None:
            return
        if (state.service, state.region) != (self.config.service, self.config.region):
            # Written for another service or region: its node id is another node's, and
            # presenting it would at best be refused.
            self.log.info(
                "state file is for another service or region; ignoring it",
                extra={"fields": {"state_file": str(path)}},
            )
            return
        if self.config.node_id and state.node_id != self.config.node_id:
            self.log.info(
                "state file is for another node id; ignoring it",
                extra={"fields": {"state_file": str(path)}},
            )
            return
        self._set_node_id(state.node_id)
        same = (state.server, state.service, state.region, state.address) == (
            self.config.server,
            self.config.service,
            self.config.region,
            self.address,
        )
        if same:
            self._token = state.token
            remember_secret(state.token)
        self.log.info("restored identity", extra={"fields": {"reused_token": same}})

    def _persist(self, token: str) -> None:
        if not (self.config.state_file and self.node_id):
            return
        state = AgentState(
            node_id=self.node_id,
            token=token,
            server=self.config.server,
            service=self.config.service,
            region=self.config.region,
            address=self.address,
        )
        try:
            save_state(self.config.state_file, state)
        except OSError as exc:
            # Not fatal: the node keeps working, it only registers afresh after a restart.
            self.log.error(f"cannot write state file {self.config.state_file}: {exc.strerror}")

    # ------------------------------------------------------------------ waiting
    async def _back_off(
        self, reason: str, level: int = logging.WARNING, cap: float | None = None
    ) -> None:
        delay = self.config.backoff.delay(self._failures)
        if cap is not None:
            delay = min(delay, cap)
        self._failures += 1
        self.log.log(
            level,
            reason,
            extra={"fields": {"attempt": self._failures, "retry_in_s": round(delay, 3)}},
        )
        await asyncio.sleep(delay)

    # ------------------------------------------------------------ control plane
    async def _register(self, cp: ControlPlaneClient) -> None:
        """Register, retrying until the control plane accepts; never raises on network errors."""
        while True:
            request = RegisterRequest(
                node_id=self.node_id,
                service=self.config.service,
                region=self.config.region,
                address=self.address,
                hostname=socket.gethostname(),
                labels=self.config.labels,
                agent_version=agent_version(),
                port=self.port,
            )
            try:
                # Re-read every attempt: an operator can fix or rotate the file without a restart.
                reply = await cp.register(read_token(self.config.token_file), request)
            except TokenFileError as exc:
                await self._back_off(f"cannot register: {exc}", logging.ERROR)
                continue
            except ControlPlaneUnavailable as exc:
                await self._back_off(f"control plane unavailable: {exc}")
                continue
            except Rejected as exc:
                # 401/409/422 can heal (token fixed, old node expired, config synced): keep trying.
                await self._back_off(f"registration rejected: {exc}", logging.ERROR)
                continue
            self._failures = 0
            self._just_registered = True
            self._set_node_id(reply.node_id)
            self._token = reply.token
            remember_secret(reply.token)
            self.interval_s = clamp_interval(reply.heartbeat_interval_seconds)
            self._persist(reply.token)
            self.log.info(
                "registered",
                extra={
                    "fields": {
                        "state": reply.state,
                        "address": self.address,
                        "port": self.port,
                        "heartbeat_interval_s": self.interval_s,
                    }
                },
            )
            if reply.state == "drain":
                self._start_draining("registered in state drain")
            return

    async def _measure(
        self, cpu: CpuSampler | None, source: LocalSource, probe_http: httpx.AsyncClient
    ) -> HeartbeatRequest:
        assert self.node_id is not None
        probes = await run_probes(probe_http, self.config.probes, self.config.probe_timeout_s)
        try:
            local = await source.read()
        except MetricsUnavailable as exc:
            self.log.warning(str(exc))
            local = LocalMetrics()
        return HeartbeatRequest(
            node_id=self.node_id,
            cpu=self._cpu(local, cpu),
            rtt_ms=summarise_rtt(probes, self.config.probe_timeout_s),
            error_rate=local.error_rate,
            qps=local.qps,
            probes=probes,
            status="drain" if self.draining else "up",
        )

    def _cpu(self, local: LocalMetrics, cpu: CpuSampler | None) -> float:
        """The workload's figure first, then the configured default, then this machine's."""
        if local.cpu is not None:
            return local.cpu
        if self.config.cpu_default is not None:
            return self.config.cpu_default
        return cpu.sample() if cpu else 0.0

    def _start_draining(self, why: str) -> None:
        if not self.draining:
            self.draining = True
            self.log.info(
                "draining: health endpoint now answers 503", extra={"fields": {"reason": why}}
            )

    def _act(self, reply: HeartbeatResponse) -> bool:
        """Apply the server's answer; True when the agent must stop (deregistered)."""
        self.interval_s = clamp_interval(reply.heartbeat_interval_seconds)
        if reply.action == "deregister":
            self.log.info("deregistered by the control plane; exiting")
            if self.config.state_file:
                forget_state(self.config.state_file)
            return True
        if reply.action == "drain" or reply.state == "drain":
            self._start_draining(f"action {reply.action}, state {reply.state}")
        elif self.draining and reply.action == "none":
            # Only the control plane starts a drain, so only it ends one (an undrain).
            self.draining = False
            self.log.info(
                "drain withdrawn: health endpoint answers 200 again",
                extra={"fields": {"state": reply.state}},
            )
        return False

    # --------------------------------------------------------------------- loop
    def health_view(self) -> HealthView:
        return HealthView(node_id=self.node_id, draining=self.draining)

    async def run(self) -> None:
        """Run until deregistered (returns) or cancelled (SIGTERM/SIGINT)."""
        self._restore()
        try:
            cpu: CpuSampler | None = CpuSampler()
        except (OSError, ValueError) as exc:
            self.log.warning(f"no CPU figures, reporting 0: {exc}")
            cpu = None
        health = None
        if self.config.health_address:
            health = HealthServer(*self.config.health_address, view=self.health_view)
            await health.start()
            self.log.info("serving health", extra={"fields": {"listen": self.config.serve_health}})
        try:
            async with httpx.AsyncClient() as http, httpx.AsyncClient() as probe_http:
                cp = ControlPlaneClient(
                    http,
                    self.config.servers,
                    self.config.request_timeout_s,
                    self.config.connect_timeout_s,
                    log=self.log,
                )
                source: LocalSource = NoSource()
                if self.config.metrics_url:
                    source = PrometheusSource(http, self.config.metrics_url, self.config.counters)
                elif self.config.metrics_file:
                    source = FileSource(self.config.metrics_file)
                await self._loop(cp, cpu, source, probe_http)
        finally:
            if health:
                await health.stop()

    async def _loop(
        self,
        cp: ControlPlaneClient,
        cpu: CpuSampler | None,
        source: LocalSource,
        probe_http: httpx.AsyncClient,
    ) -> None:
        while True:
            if self._token is None:
                await self._register(cp)
            assert self._token is not None
            started = time.monotonic()
            request = await self._measure(cpu, source, probe_http)
            try:
                reply = await cp.heartbeat(self._token, request)
            except NeedsRegistration as exc:
                self._token = None
                if self._just_registered:
                    # Refused with a token fresh from the server: don't spin register/refuse.
                    await self._back_off(f"{exc} right after registering; registering again")
                else:
                    self.log.warning(f"{exc}; registering again")
                continue
            except ControlPlaneUnavailable as exc:
                # Never wait longer than a beat: a node still backing off when the control
                # plane is back stays silent past the gate's recovery quiet period, and is
                # judged down although it is healthy.
                await self._back_off(f"control plane unavailable: {exc}", cap=self.interval_s)
                continue
            except Rejected as exc:
                await self._back_off(f"heartbeat rejected: {exc}", logging.ERROR)
                continue
            if self._failures:
                self.log.info("control plane reachable again")
            self._failures = 0
            self._just_registered = False
            self.log.debug(
                "heartbeat",
                extra={
                    "fields": {
                        "cpu": round(request.cpu, 4),
                        "rtt_ms": round(request.rtt_ms, 3),
                        "error_rate": request.error_rate,
                        "qps": request.qps,
                        "probes_ok": sum(p.ok for p in request.probes),
                        "probes": len(request.probes),
                        "status": request.status,
                        "action": reply.action,
                    }
                },
            )
            if self._act(reply):
                return
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))


async def watch_lifeline(on_gone: Callable[[], None], every: float = 0.5) -> None:
    """Call ``on_gone`` once the process ``XPLANE_LIFELINE`` names has ended.

    ``xplane up`` sets it: agents started for its local pool (through git, terraform and
    ``setsid``) are not its children, so it cannot take them down when it is killed."""
    ref = lifeline()
    if ref is None:
        return
    while ref.alive():
        await asyncio.sleep(every)
    on_gone()


async def run_until_signalled(agent: Agent) -> int:
    """Run the agent; SIGTERM/SIGINT, or the end of its lifeline (``xplane up``), cancel it
    at once. Returns the exit code (0 either way)."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(agent.run())
    signalled: list[str] = []

    def stop(name: str) -> None:
        signalled.append(name)
        task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig.name)
    watcher = asyncio.create_task(watch_lifeline(lambda: stop(LIFELINE_ENV)))
    try:
        await task
    except asyncio.CancelledError:
        if not signalled:
            raise
        agent.log.info("stopped", extra={"fields": {"signal": signalled[0]}})
    finally:
        watcher.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0
