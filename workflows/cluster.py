"""ClusterWorkflow (ID ``xplane-cluster``): which store this Temporal namespace serves.

It does nothing but exist: started once with the store's cluster id in its memo
(the first replica to start wins, see :func:`xplane.temporal.cluster.claim_cluster`) and
open for ever, so later starts find it and read the memo by ``describe``, which
needs no worker. Its history is the start and one workflow task.
"""

from __future__ import annotations

from temporalio import workflow

from xplane import ids

MEMO_KEY = "cluster_id"


@workflow.defn(name=ids.CLUSTER)
class ClusterWorkflow:
    def __init__(self) -> None:
        self._cluster_id = ""

    @workflow.run
    async def run(self, cluster_id: str) -> None:
        self._cluster_id = cluster_id
        await workflow.wait_condition(lambda: False)  # open for ever, no timers

    @workflow.query
    def cluster_id(self) -> str:
        return self._cluster_id
