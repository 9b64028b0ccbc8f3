"""Activities of the autoscaler: decide, drain, commit to Git, record Terraform's answer.

The decision is :func:`xplane.autoscale.desired.desired` (pure) over metrics
aggregated from the heartbeat samples in the store; the commit is
:func:`xplane.gitops.infra_repo.commit_node_count`. XPlane never creates a
machine: it changes ``infra/node-pool/<region>.tfvars`` and waits for CI.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.calendar import region_calendar
from activities.errors import from_repo_error
from activities.heartbeating import heartbeating
from activities.operation import operation_id
from xplane import ids
from xplane.autoscale.calendar import CalendarFloor, Entered
from xplane.autoscale.desired import Decision, ScaleHistory, desired
from xplane.autoscale.metrics import RegionMetrics, Sample, aggregate, as_utc
from xplane.autoscale.scale_down import nodes_removed_by_scale_down
from xplane.domain import NodeState
from xplane.gate import GateSettings, RegionVerdict, unconfirmed_silence, verdict_for
from xplane.gitops.infra_repo import CommitResult, RepoError, commit_node_count
from xplane.heartbeat import HeartbeatSettings
from xplane.lifecycle.node_status import derive_status, is_coming_up, is_held, is_serving
from xplane.observability import metrics as prom
from xplane.probes.prometheus import PrometheusError, prometheus_region_metrics
from xplane.store import config_store
from xplane.store import gate as gate_store
from xplane.store import nodes as node_store
from xplane.store.db import transaction, utcnow
from xplane.store.events import list_events, record_event
from xplane.store.load_hours import add_load
from xplane.store.node_tables import NodeRow
from xplane.store.pools import NodePoolRow, finish_commit, set_pool
from xplane.store.samples import metric_samples

GONE = (NodeState.DELETE.value,)


class DecideRequest(BaseModel):
    service: str
    region: str
    history: ScaleHistory = Field(default_factory=ScaleHistory)
    lost_nodes: int = 0  # node_lost signals since the last decision
    # The workflow's clock (workflow.now()): cooldowns and windows are judged on the
    # same time line as the history the workflow keeps. None: the wall clock.
    now: datetime | None = None
    # Windows a Temporal Schedule's action told the workflow to enter (calendar, maintenance).
    windows: list[Entered] = Field(default_factory=list)
    maintenance: list[Entered] = Field(default_factory=list)


class DecideResult(BaseModel):
    exists: bool
    decision: Decision | None = None
    metrics: dict[str, float | int] = Field(default_factory=dict)
    ready_nodes: int = 0
    lost_nodes: list[str] = Field(default_factory=list)  # neither serving nor coming up
    held_nodes: list[str] = Field(default_factory=list)  # down, not given up: not replaced
    interval_seconds: float = 30.0
    jitter_seconds: float = 0.0
    terraform_timeout_seconds: float = 900.0
    node_ready_timeout_seconds: float = 600.0
    cooldown_seconds: float = 60.0
    gate: str | None = None  # the self-health gate's verdict when not normal
    calendar: CalendarFloor | None = None  # scheduled windows and maintenance now


class CommitRequest(BaseModel):
    service: str
    region: str
    count: int
    reason: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    subject: str | None = None  # default: the autoscaler's conventional-commit subject
    correlation_id: str | None = None


class PoolCommit(BaseModel):
    status: Literal["committed", "unchanged"]
    sha: str
    previous_count: int | None
    count: int
    already_pushed: bool = False  # a retry found its earlier attempt's commit in Git


class TerraformRecord(BaseModel):
    service: str
    region: str
    commit: str
    status: Literal["succeeded", "failed", "timeout"]
    detail: str = ""


class DrainRequestIn(BaseModel):
    service: str
    region: str
    keep: int  # the pool's node_count after the scale-down
    reason: str


class AutoscaleActivities:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        infra_repo: str | None,
        workdir: Path,
        branch: str = "main",
        *,
        heartbeat: HeartbeatSettings = HeartbeatSettings(),
        gate: GateSettings | None = None,
    ) -> None:
        self._sessions = session_factory
        self._infra_repo = infra_repo
        self._workdir = workdir
        self._branch = branch
        self._heartbeat = heartbeat  # serving = heartbeat younger than the one timeout
        self._gate = gate or GateSettings.from_env()

    @activity.defn(name="decide_autoscale")
    def decide_autoscale(self, request: DecideRequest) -> DecideResult:
        now = request.now or utcnow()
        with self._sessions() as session:
            config = config_store.current_config(session)
            policy = config.autoscale.get(request.service) if config else None
            region_policy = policy.regions.get(request.region) if policy else None
            if config is None or policy is None or region_policy is None:
                return DecideResult(exists=False)
            region = config.regions.get(request.region)
            if region is not None and region.quota is not None and region_policy.quota is None:
                region_policy = region_policy.model_copy(update={"quota": region.quota})
            window = policy.global_.cpu_window
            rows = metric_samples(session, request.service, request.region, now - window)
            nodes = [
                n
                for n in node_store.list_nodes(
                    session, service=request.service, region=request.region
                )
                if n.state not in GONE
            ]
            pool = session.get(NodePoolRow, (request.service, request.region))
            timeout = self._heartbeat.timeout
            serving = {n.id for n in nodes if is_serving(n, now, timeout)}
            # Healthy: serving or on its way (a warming node is not lost). Held: silent or
            # seen down, but its lifecycle has not given it up (down grace): never replaced
            # on silence alone. Lost: the rest, leaving on purpose (draining); the nodes
            # given up are deleted, so they are simply missing from the pool.
            healthy = serving | {n.id for n in nodes if is_coming_up(n, now, timeout)}
            stored = gate_store.read_gate(session)
            gate = self._verdict(stored, request.service, request.region, now)
            if stored.decision is not None:
                # A silence the world-state scan (and its gate) has not confirmed is no loss.
                healthy |= {
                    n.id
                    for n in nodes
                    if unconfirmed_silence(n.last_heartbeat_at, n.recorded_status, now, timeout)
                }
            held = sorted(
                n.id
                for n in nodes
                if is_held(n.state, derive_status(n, now, timeout), n.id in healthy)
            )
            lost = sorted(n.id for n in nodes if n.id not in healthy and n.id not in held)
        samples = [
            Sample(
                node_id=r.node_id,
                at=r.at,
                cpu=r.cpu,
                rtt_ms=r.rtt_ms,
                error_rate=r.error_rate,
                qps=r.qps,
            )
            for r in rows
        ]
        if pool is None:
            # The region lifecycle bootstraps the pool (its first commit); until then
            # there is no tfvars to edit and nothing to decide.
            return DecideResult(exists=True, decision=None)
        metrics: RegionMetrics = aggregate(samples, now, window)
        if region_policy.prometheus_url:
            metrics = _with_prometheus(metrics, region_policy.prometheus_url, request, window)
        current = pool.node_count
        # Replacement is judged once nodes can be expected: some registered, a lost one
        # signalled, or the pool applied long enough ago that its nodes should be up
        # (level-triggered: a pool whose every node was deleted is refilled even if no
        # node_lost signal arrived).
        settled = pool.pending_commit is None and now - as_utc(pool.updated_at) > (
            policy.node_ready_timeout
        )
        judge = bool(request.lost_nodes or nodes or (settled and current > 0))
        if gate.verdict == "held":
            judge = False  # no replacement while XPlane cannot trust its view; load still counts
        with transaction(self._sessions) as session:
            cal = region_calendar(
                session,
                config,
                policy,
                request.service,
                request.region,
                now,
                current,
                windows=request.windows,
                maintenance=request.maintenance,
            )
            if metrics.is_fresh(now, window) and metrics.cpu is not None:
                # The forecast's history (heartbeat samples are kept for minutes only).
                cpu_nodes = metrics.cpu * metrics.nodes_reporting
                add_load(
                    session,
                    request.service,
                    request.region,
                    now,
                    qps_total=metrics.qps_total,
                    cpu_nodes=cpu_nodes,
                )
        if cal.maintenance is not None:
            judge = False  # nodes drained for maintenance are not replaced
        decision = desired(
            metrics,
            region_policy,
            policy.cooldown,
            window,
            current,
            request.history,
            now,
            healthy_nodes=len(healthy) if judge else None,
            held_nodes=len(held),
            max_replace=policy.max_replace,
            calendar=cal.calendar,
        )
        if gate.verdict == "held" and decision.desired < decision.current:
            decision = decision.model_copy(  # nor a scale-down on data the gate distrusts
                update={
                    "desired": current,
                    "direction": "none",
                    "reason": f"scale-down held by the self-health gate: {gate.reason}",
                    "history": request.history,
                }
            )
        prom.autoscale_decision(request.service, request.region, decision.direction)
        prom.observe_loop(ids.autoscale_id(request.service, request.region), utcnow())
        return DecideResult(
            exists=True,
            decision=decision,
            metrics=metrics.summary(),
            ready_nodes=len(serving),
            lost_nodes=lost,
            held_nodes=held,
            interval_seconds=policy.interval.total_seconds(),
            jitter_seconds=policy.jitter.total_seconds(),
            terraform_timeout_seconds=policy.terraform_timeout.total_seconds(),
            node_ready_timeout_seconds=policy.node_ready_timeout.total_seconds(),
            cooldown_seconds=policy.cooldown.scale_up.total_seconds(),
            gate=None if gate.verdict == "normal" else f"{gate.verdict}: {gate.reason}",
            calendar=cal.calendar if cal.calendar.reason else None,
        )

    def _verdict(
        self, stored: gate_store.StoredGate, service: str, region: str, now: datetime
    ) -> RegionVerdict:
        return verdict_for(
            stored.decision,
            service,
            region,
            now,
            self._heartbeat,
            self._gate,
            operator_closed=stored.operator_closed,
            operator_reason=stored.operator_reason,
        )

    @activity.defn(name="commit_node_pool")
    def commit_node_pool(self, request: CommitRequest) -> PoolCommit:
        """Edit ``infra/node-pool/<region>.tfvars`` and push; remember the pending commit.

        Heartbeats through the fetch and push. A retry after an attempt that pushed and
        died finds that commit by its operation trailer and reports it ``committed``
        (the workflow still waits for Terraform), recording its event once.
        """
        if not self._infra_repo:
            raise ApplicationError(
                "no infra repo configured (XPLANE_INFRA_REPO): cannot change node pools",
                non_retryable=True,
            )
        extra: dict[str, Any] = {}
        if request.subject:
            extra["subject"] = request.subject
        try:
            with heartbeating():
                result = commit_node_count(
                    self._infra_repo,
                    request.region,
                    request.count,
                    request.reason,
                    request.metrics,
                    self._workdir,
                    self._branch,
                    operation=operation_id(),
                    **extra,
                )
        except RepoError as err:
            raise from_repo_error(err) from err
        now = utcnow()
        source = ids.autoscale_id(request.service, request.region)
        if result.status == "committed" and not result.already_pushed:
            prom.autoscale_commit(request.service, request.region)
        with transaction(self._sessions) as session:
            pending = result.sha if result.status == "committed" else None
            recorded = result.already_pushed and _commit_recorded(
                session, source, request.region, result.sha
            )
            if recorded:  # the attempt that pushed recorded it too, then died before reporting
                return _pool_commit(result, request.count)
            set_pool(
                session,
                request.service,
                request.region,
                request.count,
                at=now,
                pending_commit=pending,
            )
            record_event(
                session,
                "autoscale.committed" if pending else "autoscale.unchanged",
                f"{request.region}: pool {result.previous_count} -> {request.count} "
                + (f"(commit {result.sha[:8]})" if pending else "(already in Git)")
                + f": {request.reason}",
                source=source,
                service=request.service,
                region=request.region,
                correlation_id=request.correlation_id,
                data={"commit": result.sha, "metrics": request.metrics},
                at=now,
            )
        return _pool_commit(result, request.count)

    @activity.defn(name="record_terraform_result")
    def record_terraform_result(self, record: TerraformRecord) -> None:
        prom.terraform_result(record.service, record.region, record.status)
        with transaction(self._sessions) as session:
            finish_commit(session, record.service, record.region, record.commit, record.status)
            record_event(
                session,
                f"terraform.{record.status}",
                f"{record.region}: terraform for {record.commit[:8]} {record.status}"
                + (f": {record.detail}" if record.detail else ""),
                source=ids.autoscale_id(record.service, record.region),
                service=record.service,
                region=record.region,
                data={"commit": record.commit},
            )

    @activity.defn(name="count_ready_nodes")
    def count_ready_nodes(self, request: DecideRequest) -> int:
        now = request.now or utcnow()
        with self._sessions() as session:
            rows = node_store.list_nodes(session, service=request.service, region=request.region)
        timeout = self._heartbeat.timeout
        return sum(1 for n in rows if is_serving(n, now, timeout))

    @activity.defn(name="drain_nodes")
    def drain_nodes(self, request: DrainRequestIn) -> list[str]:
        """Request drain of the nodes the scale-down removes; returns their ids.

        Through the store, as an operator's drain: the world-state loop moves each
        node's lifecycle to drain (out of DNS, then deleted after TTL + drain timeout).
        """
        with transaction(self._sessions) as session:
            rows = node_store.list_nodes(session, service=request.service, region=request.region)
            chosen = nodes_removed_by_scale_down(rows, request.region, request.keep)
            asked = {row.id for row in rows if row.drain_requested}
            for node in chosen:
                if node not in asked:  # a retried attempt asks once
                    node_store.request_drain(session, node, by="autoscaler", reason=request.reason)
        return chosen

    @activity.defn(name="nodes_not_yet_drained")
    def nodes_not_yet_drained(self, node_ids: list[str]) -> list[str]:
        """Which of ``node_ids`` have not reached ``delete`` yet (unknown ids have)."""
        with self._sessions() as session:
            rows = [session.get(NodeRow, node) for node in node_ids]
        return [row.id for row in rows if row is not None and row.state not in GONE]


def _pool_commit(result: CommitResult, count: int) -> PoolCommit:
    return PoolCommit(
        status=result.status,
        sha=result.sha,
        previous_count=result.previous_count,
        count=count,
        already_pushed=result.already_pushed,
    )


def _commit_recorded(session: Session, source: str, region: str, sha: str) -> bool:
    """Whether ``source`` already recorded the commit of ``sha`` (among its recent events)."""
    recent = list_events(session, region=region, kind_prefix="autoscale.committed", limit=50)
    return any(e.source == source and e.data.get("commit") == sha for e in recent)


def _with_prometheus(
    heartbeats: RegionMetrics, url: str, request: DecideRequest, window: timedelta
) -> RegionMetrics:
    """Node exporter / blackbox data from Prometheus fills what heartbeats did not report.

    An unreachable Prometheus is not fatal: the heartbeat metrics still decide
    (and missing data never scales down).
    """
    try:
        prom_metrics = asyncio.run(
            prometheus_region_metrics(url, request.service, request.region, window)
        )
    except PrometheusError as err:
        activity.logger.warning("prometheus %s: %s", url, err)
        return heartbeats
    if prom_metrics is None:
        return heartbeats
    merged = heartbeats.model_dump()
    for field, value in prom_metrics.model_dump().items():
        if merged.get(field) in (None, 0) and value not in (None, 0):
            merged[field] = value
    return RegionMetrics.model_validate(merged)
