"""Which nodes a scale-down removes (pure): the ones Terraform's ``count`` destroys."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from xplane.domain import NodeState


class PoolNode(Protocol):
    """What :func:`nodes_removed_by_scale_down` reads of a node."""

    @property
    def id(self) -> str: ...
    @property
    def state(self) -> str: ...


def nodes_removed_by_scale_down(nodes: Iterable[PoolNode], region: str, keep: int) -> list[str]:
    """The nodes Terraform destroys when ``region``'s node_count drops to ``keep``.

    Every node-pool module names node *i* ``<region>-<i>`` and uses ``count``, so the
    highest indexes go. Those are the nodes to drain: draining any other would leave a
    drained node running while a serving one is destroyed without notice. Nodes already
    deleted need nothing; nodes the pool does not name are not the pool's to remove.
    """
    removed = [
        (index, node.id)
        for node in nodes
        if (index := pool_index(node.id, region)) is not None
        and index >= keep
        and node.state != NodeState.DELETE.value
    ]
    return [node for _, node in sorted(removed, reverse=True)]


def pool_index(node_id: str, region: str) -> int | None:
    """*i* of a node named ``<region>-<i>``; None for a name the pool does not give."""
    suffix = node_id.removeprefix(f"{region}-")
    return int(suffix) if suffix != node_id and suffix.isdigit() else None
