"""Workflow types, deterministic IDs, signal names, the task queue and search attributes.

The contract between whoever starts or signals a workflow (activities, the API, the
CLI) and the workflows themselves, in the core so both import it without an upward
arrow. Workflow histories record these names: change one only with a migration.

IDs are derived from what a workflow owns, so signal-with-start always reaches
the one owner: ``gtm-<service>``, ``autoscale-<service>-<region>``,
``region-<region>``, ``node-<node_id>``, ``gitops-sync``, ``world-state``,
``xplane-cluster`` (the cluster's identity, see :mod:`xplane.temporal.cluster`).
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

TASK_QUEUE = "xplane"  # the default; XPLANE_TASK_QUEUE overrides it (xplane.settings)

GITOPS_SYNC_ID = "gitops-sync"
WORLD_STATE_ID = "world-state"
CLUSTER_ID = "xplane-cluster"

GITOPS_SYNC = "GitOpsSyncWorkflow"
GTM_LOOP = "GtmLoopWorkflow"
AUTOSCALE = "AutoscaleWorkflow"
REGION_LIFECYCLE = "RegionLifecycleWorkflow"
NODE_LIFECYCLE = "NodeLifecycleWorkflow"
WORLD_STATE = "WorldStateWorkflow"
CLUSTER = "ClusterWorkflow"

# The GitOps events (`docs/roadmap.md` phase 0.2) are delivered as signals of these names.
ON_GTM_POLICY_CHANGED = "OnGtmPolicyChanged"
ON_AUTOSCALE_CHANGED = "OnAutoscaleChanged"
ON_REGION_CONFIG_CHANGED = "OnRegionConfigChanged"
# Signals activities send (they cannot import the workflows to name them by reference);
# the workflows declare their handlers with these names.
# world-state scan -> node-<id>; the wire name predates the rename: recorded histories carry it
NODE_STATUS_CHANGED = "heartbeat_state_changed"
WORLD_CHANGED = "world_changed"  # -> gtm-<service>: observed nodes changed
DRAIN = "drain"  # -> node-<id>: drain it (region retire, operator)

SA_SERVICE = SearchAttributeKey.for_keyword("XplaneService")
SA_REGION = SearchAttributeKey.for_keyword("XplaneRegion")
SA_NODE = SearchAttributeKey.for_keyword("XplaneNode")
SA_STATE = SearchAttributeKey.for_keyword("XplaneState")


def gtm_id(service: str) -> str:
    return f"gtm-{service}"


def autoscale_id(service: str, region: str) -> str:
    return f"autoscale-{service}-{region}"


def region_id(region: str) -> str:
    return f"region-{region}"


def node_workflow_id(node_id: str) -> str:
    """The id of the node's lifecycle workflow (not the node's own id)."""
    return f"node-{node_id}"


def search_attributes(
    *, service: str | None = None, region: str | None = None, node: str | None = None
) -> TypedSearchAttributes:
    pairs: list[SearchAttributePair[str]] = []
    if service:
        pairs.append(SearchAttributePair(SA_SERVICE, service))
    if region:
        pairs.append(SearchAttributePair(SA_REGION, region))
    if node:
        pairs.append(SearchAttributePair(SA_NODE, node))
    return TypedSearchAttributes(pairs)
