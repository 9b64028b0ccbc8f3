"""The API's bridge to Temporal: registrations and CI webhooks become signals.

Used by ``xplane api`` when a Temporal address is configured (and by ``xplane up``),
through the outbox dispatcher (:mod:`xplane.webhooks.dispatcher`) and the git
webhook's first try. Every call to Temporal is bounded by ``rpc_timeout`` (at most
5 s): an unreachable Temporal never holds the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import timedelta

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from workflows.autoscale import AutoscaleParams, AutoscaleWorkflow
from workflows.gitops_sync import GitOpsSyncWorkflow
from workflows.node_lifecycle import NodeLifecycleWorkflow
from workflows.region_lifecycle import RegionLifecycleWorkflow
from xplane import ids
from xplane.api.routes_webhooks import LoopNotRunning, TerraformWebhook
from xplane.messages import NodeLifecycleParams, NodeTimings, TerraformOutcome
from xplane.temporal.client import connect, signal_with_start

MAX_RPC_TIMEOUT = timedelta(seconds=5)


class TemporalNotifier:
    """Registration and CI webhooks as signals. Connects lazily, in the server's event loop."""

    def __init__(
        self,
        client: Client | None,
        task_queue: str,
        address: str | None = None,
        rpc_timeout: timedelta = MAX_RPC_TIMEOUT,
        namespace: str | None = None,
    ) -> None:
        self._given = client
        self._address = address
        # The workers' namespace (it was always "default" here, whatever they used).
        self._namespace = namespace or os.environ.get("XPLANE_TEMPORAL_NAMESPACE") or "default"
        self._task_queue = task_queue
        self._timeout = min(rpc_timeout, MAX_RPC_TIMEOUT)

    @property
    def _client(self) -> Client:
        if self._given is None:
            raise RuntimeError("Temporal client not connected yet")
        return self._given

    async def connect(self) -> None:
        if self._given is None:
            if not self._address:
                raise RuntimeError("no Temporal address configured")
            # A server that accepts connections but never answers would hang this.
            self._given = await asyncio.wait_for(
                connect(self._address, self._namespace), self._timeout.total_seconds()
            )

    async def node_registered(self, node_id: str, service: str, region: str) -> None:
        await self.connect()
        await signal_with_start(
            self._client,
            workflow_type=NodeLifecycleWorkflow.run,
            workflow_id=ids.node_workflow_id(node_id),
            start_arg=NodeLifecycleParams(
                node_id=node_id, service=service, region=region, timings=NodeTimings.from_env()
            ),
            signal=NodeLifecycleWorkflow.registered,
            signal_arg="",
            task_queue=self._task_queue,
            search_attributes=ids.search_attributes(service=service, region=region, node=node_id),
            rpc_timeout=self._timeout,
        )

    async def terraform_finished(self, hook: TerraformWebhook) -> None:
        await self.connect()
        outcome = TerraformOutcome(
            commit=hook.commit, status=hook.status, run_url=hook.run_url, outputs=hook.outputs
        )
        await signal_with_start(
            self._client,
            workflow_type=AutoscaleWorkflow.run,
            workflow_id=ids.autoscale_id(hook.service, hook.region),
            start_arg=AutoscaleParams(service=hook.service, region=hook.region),
            signal=AutoscaleWorkflow.terraform_finished,
            signal_arg=outcome,
            task_queue=self._task_queue,
            search_attributes=ids.search_attributes(service=hook.service, region=hook.region),
            rpc_timeout=self._timeout,
        )
        # The region lifecycle waits for its bootstrap/retire commits the same way.
        with contextlib.suppress(RPCError):
            await self._client.get_workflow_handle(ids.region_id(hook.region)).signal(
                RegionLifecycleWorkflow.terraform_finished, outcome, rpc_timeout=self._timeout
            )

    async def sync_now(self) -> None:
        await self.connect()
        try:
            await self._client.get_workflow_handle(ids.GITOPS_SYNC_ID).signal(
                GitOpsSyncWorkflow.sync_now, rpc_timeout=self._timeout
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:  # no `xplane sync` / `up` running
                raise LoopNotRunning(ids.GITOPS_SYNC_ID) from None
            raise
