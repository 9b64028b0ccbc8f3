"""The scale-down victim choice (pure): the nodes Terraform's ``count`` destroys."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from xplane.autoscale.scale_down import nodes_removed_by_scale_down, pool_index


@dataclass(frozen=True)
class Node:
    id: str
    state: str = "active"


POOL = [
    Node("jp-0"),
    Node("jp-1"),
    Node("jp-2"),
    Node("jp-10"),
    Node("jp-3", "delete"),  # already gone
    Node("jp-east-4"),  # another pool's name: not this pool's
    Node("jp-1x"),  # not a pool index
]


def test_the_highest_indexes_go_first() -> None:
    assert nodes_removed_by_scale_down(POOL, "jp", keep=2) == ["jp-10", "jp-2"]
    assert nodes_removed_by_scale_down(POOL, "jp", keep=0) == ["jp-10", "jp-2", "jp-1", "jp-0"]


def test_keeping_the_whole_pool_removes_nothing() -> None:
    assert nodes_removed_by_scale_down(POOL, "jp", keep=11) == []
    assert nodes_removed_by_scale_down([], "jp", keep=0) == []


def test_draining_and_idle_nodes_are_removed_too_but_deleted_ones_are_not() -> None:
    nodes = [Node("jp-0"), Node("jp-1", "drain"), Node("jp-2", "idle"), Node("jp-3", "delete")]
    assert nodes_removed_by_scale_down(nodes, "jp", keep=1) == ["jp-2", "jp-1"]


@pytest.mark.parametrize(
    ("node_id", "index"),
    [
        ("jp-0", 0),
        ("jp-10", 10),
        ("jp-east-4", None),
        ("jp-1x", None),
        ("jp-", None),
        ("sg-1", None),
        ("jp", None),
    ],
)
def test_pool_index_reads_only_the_names_the_pool_gives(node_id: str, index: int | None) -> None:
    assert pool_index(node_id, "jp") == index
