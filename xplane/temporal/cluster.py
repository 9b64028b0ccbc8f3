"""Store identity: a worker or API replica runs only against its own cluster's database.

The database carries a cluster id (:mod:`xplane.store.cluster`, created at its
first migration); the Temporal namespace carries the id of the cluster it serves
in the memo of the ``xplane-cluster`` workflow. The first replica to start
claims the namespace for its store (start with ``USE_EXISTING``: when two start
at once one workflow wins and both read its id); every replica then compares the
two ids and refuses to run on a mismatch, naming both, rather than applying
another cluster's config or taking its tasks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from workflows.cluster import MEMO_KEY, ClusterWorkflow
from xplane import ids

log = logging.getLogger(__name__)

MISMATCH_EXIT_CODE = 2
CHECK_TIMEOUT_S = 5.0  # at most this long on Temporal per attempt (the API must not hang)
RETRY_EVERY_S = 5.0


class ClusterMismatch(RuntimeError):
    """The database belongs to another cluster than the Temporal namespace serves."""

    def __init__(self, store_id: str, temporal_id: str | None, namespace: str) -> None:
        self.store_id = store_id
        self.temporal_id = temporal_id
        super().__init__(
            f"cluster id mismatch: the database belongs to cluster {store_id}, but Temporal "
            f"namespace {namespace!r} serves cluster {temporal_id or '(none recorded)'} "
            f"(memo of workflow {ids.CLUSTER_ID!r}); this process points at another "
            "cluster's database or namespace and refuses to run"
        )


async def claim_cluster(client: Client, store_id: str, task_queue: str) -> str:
    """Claim the namespace for ``store_id`` unless already claimed; raise on a mismatch.

    Returns the namespace's cluster id (== ``store_id``)."""
    await client.start_workflow(
        ClusterWorkflow.run,
        store_id,
        id=ids.CLUSTER_ID,
        task_queue=task_queue,
        memo={MEMO_KEY: store_id},
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    # By id, not run: whoever won the start, this reads the one open run.
    description = await client.get_workflow_handle(ids.CLUSTER_ID).describe()
    held = await description.memo_value(MEMO_KEY, None, type_hint=str)
    if held != store_id:
        raise ClusterMismatch(store_id, held, client.namespace)
    return held


def store_id_of(db_url: str) -> str:
    from xplane.store.cluster import store_cluster_id
    from xplane.store.db import make_engine, make_sessionmaker

    engine = make_engine(db_url)
    try:
        return store_cluster_id(make_sessionmaker(engine))
    finally:
        engine.dispose()


async def check_once(db_url: str, address: str, namespace: str, task_queue: str) -> str:
    """Connect, claim or compare, within :data:`CHECK_TIMEOUT_S`."""
    from xplane.temporal.client import connect

    store_id = await asyncio.to_thread(store_id_of, db_url)

    async def attempt() -> str:
        client = await connect(address, namespace)
        return await claim_cluster(client, store_id, task_queue)

    return await asyncio.wait_for(attempt(), timeout=CHECK_TIMEOUT_S)


def check_api_replica(
    db_url: str, address: str, namespace: str, task_queue: str, *, exit_now: bool
) -> None:
    """The API's check at start. A mismatch raises :class:`ClusterMismatch`. Temporal
    unreachable does not stop the API (heartbeats must not depend on Temporal): it is
    checked again in the background until it answers, and a mismatch found then ends
    the process (exit code 2) when ``exit_now``."""
    try:
        asyncio.run(check_once(db_url, address, namespace, task_queue))
        return
    except ClusterMismatch:
        raise
    except Exception as exc:  # unreachable, timed out: not a verdict
        log.warning(
            "cannot check the cluster id against Temporal yet (%s); retrying in the background",
            type(exc).__name__,
        )

    def retry() -> None:
        while True:
            time.sleep(RETRY_EVERY_S)
            try:
                asyncio.run(check_once(db_url, address, namespace, task_queue))
                log.info("cluster id checked against Temporal: it matches")
                return
            except ClusterMismatch as exc:
                log.error(str(exc))
                if exit_now:
                    sys.stderr.flush()
                    os._exit(MISMATCH_EXIT_CODE)
                return
            except Exception:
                continue

    threading.Thread(target=retry, name="xplane-cluster-check", daemon=True).start()
