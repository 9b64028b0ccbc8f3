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

from activities.gitops import GitOpsActivities
from activities.publish import PublishActivities
from workflows.gitops_sync import GitOpsSyncWorkflow
from xplane.settings import Settings

WORKFLOWS: list[type] = [GitOpsSyncWorkflow]


def activities_for(
    client: Client, settings: Settings, session_factory: sessionmaker[Session]
) -> list[Any]:
    gitops = GitOpsActivities(session_factory, settings.data_dir / "checkouts")
    publish = PublishActivities(client, settings.task_queue)
    return [gitops.sync_config_repo, publish.publish_config_events]


def build_worker(
    client: Client,
    settings: Settings,
    session_factory: sessionmaker[Session],
    *,
    max_threads: int = 16,
) -> Worker:
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        activities=activities_for(client, settings, session_factory),
        activity_executor=ThreadPoolExecutor(max_threads, thread_name_prefix="xplane-activity"),
    )
