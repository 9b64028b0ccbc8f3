"""The XPlane worker: every workflow and activity on one task queue.

Activities that do blocking I/O (git, SQL, boto3, the Cloudflare SDK) are
plain functions run in a thread pool; the rest are async. Task queues can be
split later (e.g. a DNS queue per provider) without touching the workflows.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client
from temporalio.worker import Worker

from activities.autoscale import AutoscaleActivities
from activities.calendar import CalendarActivities
from activities.gitops import GitOpsActivities
from activities.gtm import GtmActivities
from activities.nodes import NodeActivities
from activities.publish import PublishActivities
from activities.regions import RegionActivities
from activities.schedules import ScheduleActivities
from workers.limits import WorkerLimits
from workflows.autoscale import AutoscaleWorkflow
from workflows.cluster import ClusterWorkflow
from workflows.gitops_sync import GitOpsSyncWorkflow
from workflows.gtm_loop import GtmLoopWorkflow
from workflows.node_lifecycle import NodeLifecycleWorkflow
from workflows.region_lifecycle import RegionLifecycleWorkflow
from workflows.window_action import WindowActionWorkflow
from workflows.world_state import WorldStateWorkflow
from xplane.settings import Settings

WORKFLOWS: list[type] = [
    GitOpsSyncWorkflow,
    WorldStateWorkflow,
    GtmLoopWorkflow,
    AutoscaleWorkflow,
    NodeLifecycleWorkflow,
    RegionLifecycleWorkflow,
    ClusterWorkflow,
    WindowActionWorkflow,
]


def activities_for(
    client: Client,
    settings: Settings,
    session_factory: sessionmaker[Session],
    *,
    pool_provider_override: str | None = None,
) -> list[Any]:
    """Every activity, bound to this process's store, Temporal client and repos."""
    workdir = settings.data_dir / "checkouts"
    gitops = GitOpsActivities(session_factory, workdir)
    publish = PublishActivities(client, settings.task_queue)
    # One notion of down (XPLANE_HEARTBEAT_*) for every activity that judges liveness.
    heartbeat = settings.heartbeat
    nodes = NodeActivities(session_factory, client, settings.task_queue, heartbeat)
    gtm = GtmActivities(session_factory, heartbeat)
    autoscale = AutoscaleActivities(
        session_factory, settings.infra_repo, workdir, settings.infra_branch, heartbeat=heartbeat
    )
    regions = RegionActivities(
        session_factory,
        client,
        settings.infra_repo,
        workdir,
        settings.infra_branch,
        provider_override=pool_provider_override,
        heartbeat=heartbeat,
    )
    calendar = CalendarActivities(session_factory)
    schedules = ScheduleActivities(session_factory, client, settings.task_queue)
    return [
        gitops.sync_config_repo,
        publish.publish_config_events,
        nodes.record_node_state,
        nodes.scan_node_transitions,
        nodes.gate_verdict,
        gtm.observe_gtm,
        gtm.apply_dns,
        autoscale.decide_autoscale,
        autoscale.commit_node_pool,
        autoscale.record_terraform_result,
        autoscale.count_ready_nodes,
        autoscale.drain_nodes,
        autoscale.nodes_not_yet_drained,
        calendar.record_nodes_active,
        schedules.reconcile_schedules,
        schedules.deliver_window,
        regions.describe_region,
        regions.commit_region_pool,
        regions.region_nodes,
        regions.drain_region_nodes,
        regions.record_region_event,
    ]


def build_worker(
    client: Client,
    settings: Settings,
    session_factory: sessionmaker[Session],
    *,
    max_threads: int | None = None,
    pool_provider_override: str | None = None,
    limits: WorkerLimits | None = None,
) -> Worker:
    limits = limits or WorkerLimits.from_env()
    if max_threads is not None:
        limits = limits.model_copy(update={"max_concurrent_activities": max_threads})
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        activities=activities_for(
            client, settings, session_factory, pool_provider_override=pool_provider_override
        ),
        activity_executor=ThreadPoolExecutor(
            limits.max_concurrent_activities, thread_name_prefix="xplane-activity"
        ),
        max_cached_workflows=limits.max_cached_workflows,
        max_concurrent_workflow_tasks=limits.max_concurrent_workflow_tasks,
        max_concurrent_activities=limits.max_concurrent_activities,
        max_concurrent_workflow_task_polls=limits.max_concurrent_workflow_task_polls,
    )
