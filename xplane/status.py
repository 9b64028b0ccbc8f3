"""``xplane status``: one view of the control plane (store + Temporal), for humans and tests."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field

from xplane import ids
from xplane.gate import GateSettings
from xplane.heartbeat import HeartbeatSettings
from xplane.lifecycle.node_status import derive_status
from xplane.store import gate as gate_store
from xplane.store import nodes as node_store
from xplane.store.config_store import current_config, current_revision
from xplane.store.db import make_engine, make_sessionmaker, sqlite_file, utcnow
from xplane.store.events import list_events
from xplane.store.pools import list_pools


class RegionLine(BaseModel):
    service: str
    region: str
    weight: float | None = None
    pool: int | None = None
    pending_commit: str | None = None
    nodes: dict[str, int] = Field(default_factory=dict)  # lifecycle state -> count


class NodeLine(BaseModel):
    id: str
    service: str
    region: str
    address: str
    state: str
    status: str


class WorkflowLine(BaseModel):
    id: str
    type: str
    status: str
    link: str | None = None


class StatusReport(BaseModel):
    revision: str | None = None
    temporal_ui: str | None = None
    console: str | None = None  # the API's web console (/ui)
    regions: list[RegionLine] = Field(default_factory=list)
    nodes: list[NodeLine] = Field(default_factory=list)
    last_dns_apply: str | None = None
    fail_open: dict[str, bool] = Field(default_factory=dict)
    gate: list[str] = Field(default_factory=list)  # the self-health gate, one line per hold
    workflows: list[WorkflowLine] = Field(default_factory=list)


def read_up_info(data_dir: Path) -> dict[str, Any]:
    path = data_dir / "up.json"
    return json.loads(path.read_text()) if path.exists() else {}


class NoStore(RuntimeError):
    pass


def store_report(db_url: str, heartbeat_timeout: timedelta | None = None) -> StatusReport:
    """The store's view; a node is down after ``heartbeat_timeout`` (None: XPLANE_HEARTBEAT_*)."""
    timeout = heartbeat_timeout or HeartbeatSettings.from_env().timeout
    missing = f"no XPlane database at {db_url}: is `xplane up` running (or --db right)?"
    if (path := sqlite_file(db_url)) is not None and not path.exists():
        raise NoStore(missing)  # don't let a read create an empty database file
    engine = make_engine(db_url)
    now = utcnow()
    if not sa.inspect(engine).has_table("config_revisions"):
        engine.dispose()
        raise NoStore(missing)
    try:
        with make_sessionmaker(engine)() as session:
            revision = current_revision(session)
            config = current_config(session)
            rows = node_store.list_nodes(session)
            pools = {(p.service, p.region): p for p in list_pools(session)}
            applies = list_events(session, kind_prefix="dns.applied", limit=1)
            stored_gate = gate_store.read_gate(session)
    finally:
        engine.dispose()
    report = StatusReport(revision=revision.sha if revision else None)
    heartbeat = HeartbeatSettings.from_env()
    if heartbeat_timeout is not None and heartbeat_timeout > heartbeat.interval:
        heartbeat = heartbeat.model_copy(update={"timeout": heartbeat_timeout})
    report.gate = gate_store.describe(stored_gate, now, heartbeat, GateSettings.from_env())
    lines: dict[tuple[str, str], RegionLine] = {}
    if config is not None:
        for service, policy in config.gtm.items():
            for region in policy.regions:
                lines[(service, region.name)] = RegionLine(service=service, region=region.name)
    for row in rows:
        status = derive_status(row, now, timeout)
        report.nodes.append(
            NodeLine(
                id=row.id,
                service=row.service,
                region=row.region,
                address=row.address,
                state=row.state,
                status=status.value,
            )
        )
        line = lines.setdefault(
            (row.service, row.region), RegionLine(service=row.service, region=row.region)
        )
        line.nodes[row.state] = line.nodes.get(row.state, 0) + 1
    for key, pool in pools.items():
        line = lines.setdefault(key, RegionLine(service=key[0], region=key[1]))
        line.pool, line.pending_commit = pool.node_count, pool.pending_commit
    report.regions = [lines[k] for k in sorted(lines)]
    if applies:
        report.last_dns_apply = f"{applies[0].at:%H:%M:%S} {applies[0].message}"
    return report


async def add_temporal(report: StatusReport, address: str, ui: str | None) -> None:
    """Workflow list, and current weights from each GTM loop's ``status`` query."""
    from workflows.gtm_loop import GtmLoopWorkflow
    from xplane.temporal.client import connect

    client = await connect(address)
    report.temporal_ui = ui
    async for wf in client.list_workflows('ExecutionStatus="Running"', limit=200):
        link = f"{ui}/namespaces/default/workflows/{wf.id}" if ui else None
        status = wf.status.name.lower() if wf.status else "unknown"
        report.workflows.append(
            WorkflowLine(id=wf.id, type=wf.workflow_type, status=status, link=link)
        )
    services = {line.service for line in report.regions}
    for service in services:
        try:
            loop = await client.get_workflow_handle(ids.gtm_id(service)).query(
                GtmLoopWorkflow.status
            )
        except Exception:
            continue
        weights = loop.details.get("weights", {})
        report.fail_open[service] = bool(loop.details.get("fail_open"))
        for line in report.regions:
            if line.service == service and line.region in weights:
                line.weight = weights[line.region]
    report.workflows.sort(key=lambda w: w.id)
