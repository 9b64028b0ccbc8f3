"""Activities of the region lifecycle: render and commit node pools, drain, count nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.errors import from_repo_error, permanent
from activities.heartbeating import heartbeating
from activities.operation import operation_id
from xplane import ids
from xplane.config.models import Region
from xplane.domain import NodeState
from xplane.gitops.infra_repo import RepoError, commit_files
from xplane.heartbeat import HeartbeatSettings
from xplane.infra.render import RenderError, render_region
from xplane.lifecycle.node_status import is_serving
from xplane.messages import DrainRequest
from xplane.store import config_store
from xplane.store import nodes as node_store
from xplane.store.db import transaction, utcnow
from xplane.store.events import list_events, record_event
from xplane.store.pools import set_pool

REGION_AUTHOR = ("xplane-region", "xplane-region@users.noreply.xplane")


class RegionView(BaseModel):
    """The region as config says now, and the service whose pool it hosts."""

    region: str
    exists: bool
    retired: bool = False
    service: str | None = None
    min_nodes: int = 0
    ttl_seconds: int = 30


class RegionCommitRequest(BaseModel):
    region: str
    service: str
    action: Literal["bootstrap", "scale_to_zero", "remove"]
    node_count: int = 0


class RegionCommit(BaseModel):
    status: Literal["committed", "unchanged"]
    sha: str


class RegionNodes(BaseModel):
    active: int = 0
    live: int = 0  # not deleted
    ids: list[str] = Field(default_factory=list)


class RegionEvent(BaseModel):
    region: str
    service: str | None
    kind: str
    message: str


class RegionActivities:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        client: Client | None,
        infra_repo: str | None,
        workdir: Path,
        branch: str = "main",
        provider_override: str | None = None,
        heartbeat: HeartbeatSettings = HeartbeatSettings(),
    ) -> None:
        # `xplane up` renders every pool with the `local` module (no cloud account).
        self._provider_override = provider_override
        self._sessions = session_factory
        self._client = client
        self._infra_repo = infra_repo
        self._workdir = workdir
        self._branch = branch
        self._heartbeat = heartbeat  # serving = heartbeat younger than the one timeout

    @activity.defn(name="describe_region")
    def describe_region(self, region: str) -> RegionView:
        with self._sessions() as session:
            config = config_store.current_config(session)
        if config is None or region not in config.regions:
            return RegionView(region=region, exists=False)
        spec = config.regions[region]
        service = next(
            (name for name, policy in sorted(config.autoscale.items()) if region in policy.regions),
            next(
                (
                    n
                    for n, p in sorted(config.gtm.items())
                    if any(r.name == region for r in p.regions)
                ),
                None,
            ),
        )
        ttl = 30
        if service and service in config.gtm:
            ttls = [p.ttl for p in config.gtm[service].dns_providers()]
            ttl = max(ttls, default=30)
        min_nodes = spec.min_nodes
        if service and service in config.autoscale and region in config.autoscale[service].regions:
            min_nodes = config.autoscale[service].regions[region].min_nodes
        return RegionView(
            region=region,
            exists=True,
            retired=spec.retired,
            service=service,
            min_nodes=min_nodes,
            ttl_seconds=ttl,
        )

    @activity.defn(name="commit_region_pool")
    def commit_region_pool(self, request: RegionCommitRequest) -> RegionCommit:
        """Render ``infra/node-pool/<region>/`` and its tfvars; commit them (or remove)."""
        if not self._infra_repo:
            raise ApplicationError(
                "no infra repo configured (XPLANE_INFRA_REPO)", non_retryable=True
            )
        with self._sessions() as session:
            config = config_store.current_config(session)
        spec = config.regions.get(request.region) if config else None
        if spec is None and request.action == "bootstrap":
            raise ApplicationError(f"region {request.region} is not in config", non_retryable=True)
        region = spec if spec is not None else _placeholder(request.region)
        if self._provider_override:
            region = region.model_copy(update={"provider": self._provider_override})
        try:
            files = render_region(
                region,
                service=request.service,
                node_count=request.node_count,
            )
        except RenderError as err:  # the config cannot be rendered: no retry will change it
            raise permanent(err) from err
        changes: dict[str, str | None]
        if request.action == "remove":
            changes = dict.fromkeys(files, None)
            message = f"feat(xplane-region): remove {request.region} node pool"
        elif request.action == "scale_to_zero":
            tfvars = f"infra/node-pool/{request.region}.tfvars"
            changes = {tfvars: files[tfvars]}
            message = f"feat(xplane-region): scale {request.region} pool to 0 nodes (retire)"
        else:
            changes = dict(files)
            message = f"feat(xplane-region): bootstrap {request.region} node pool"
        try:
            with heartbeating():  # fetch and push can be slow: a dead worker shows in seconds
                result = commit_files(
                    self._infra_repo,
                    changes,
                    message,
                    REGION_AUTHOR,
                    workdir=self._workdir,
                    branch=self._branch,
                    operation=operation_id(),  # a retry finds its own pushed commit
                )
        except RepoError as err:
            raise from_repo_error(err) from err
        kind = f"region.{request.action}.committed"
        with transaction(self._sessions) as session:
            if result.already_pushed and any(
                e.data.get("commit") == result.sha
                for e in list_events(session, region=request.region, kind_prefix=kind, limit=50)
            ):  # the attempt that pushed recorded it too, then died before reporting back
                return RegionCommit(status=result.status, sha=result.sha)
            pending = result.sha if result.status == "committed" else None
            set_pool(
                session, request.service, request.region, request.node_count, pending_commit=pending
            )
            record_event(
                session,
                kind,
                f"{message} ({result.status}, {result.sha[:8]})",
                source=ids.region_id(request.region),
                service=request.service,
                region=request.region,
                data={"commit": result.sha},
            )
        return RegionCommit(status=result.status, sha=result.sha)

    @activity.defn(name="region_nodes")
    def region_nodes(self, region: str) -> RegionNodes:
        now = utcnow()
        with self._sessions() as session:
            rows = node_store.list_nodes(session, region=region)
        live = [r for r in rows if r.state != NodeState.DELETE.value]
        timeout = self._heartbeat.timeout
        active = [r for r in live if is_serving(r, now, timeout)]
        return RegionNodes(active=len(active), live=len(live), ids=[r.id for r in live])

    @activity.defn(name="drain_region_nodes")
    async def drain_region_nodes(self, region: str) -> list[str]:
        nodes = self.region_nodes(region)
        if self._client is not None:
            for node in nodes.ids:
                await self._client.get_workflow_handle(ids.node_workflow_id(node)).signal(
                    ids.DRAIN, DrainRequest(by="region-retire", reason=f"region {region} retired")
                )
        return nodes.ids

    @activity.defn(name="record_region_event")
    def record_region_event(self, event: RegionEvent) -> None:
        with transaction(self._sessions) as session:
            record_event(
                session,
                event.kind,
                event.message,
                source=ids.region_id(event.region),
                service=event.service,
                region=event.region,
            )


def _placeholder(region: str) -> Region:
    """A removed region still needs its file names to delete them."""
    return Region(name=region, provider="local", min_nodes=0)
