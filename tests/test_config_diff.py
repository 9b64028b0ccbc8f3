"""The config diff (pure): what changed between two trees, by the loop that must hear of it."""

from __future__ import annotations

import copy
from typing import Any

from xplane.config.diff import AutoscaleTarget as T
from xplane.config.diff import (
    ConfigChanges,
    ConfigDocs,
    diff_docs,
    docs_service_regions,
    docs_tree,
    tree_docs,
)
from xplane.config.models import ConfigTree

BASE: dict[str, Any] = {
    "regions": {
        "jp": {"name": "jp", "provider": "aws", "location": "ap-northeast-1"},
        "sg": {"name": "sg", "provider": "aws", "base_weight": 10},
        "eu": {"name": "eu", "provider": "local"},
    },
    "gtm": {
        "svc-plus": {
            "service": "svc-plus",
            "domain": "api.svc.plus",
            "regions": [{"name": "jp", "weight": 100}, {"name": "sg", "weight": 10}],
        },
        "web": {"service": "web", "domain": "www.svc.plus", "regions": [{"name": "eu"}]},
    },
    "autoscale": {
        "svc-plus": {
            "service": "svc-plus",
            "global": {"cpu_window": "60s"},
            "regions": {"jp": {"max_nodes": 5}, "sg": {"min_nodes": 0, "max_nodes": 5}},
        },
    },
}


def tree(edit: Any = None) -> ConfigTree:
    """The BASE tree, after ``edit(data)`` mutates a deep copy of it."""
    data = copy.deepcopy(BASE)
    if edit:
        edit(data)
    return ConfigTree.model_validate(data)


def svc(*regions: str) -> list[T]:
    """Autoscale targets of svc-plus."""
    return [T(service="svc-plus", region=r) for r in regions]


def diff(old: ConfigTree | None, new: ConfigTree) -> ConfigChanges:
    return diff_docs(tree_docs(old) if old else ConfigDocs(), tree_docs(new))


def test_first_tree_adds_everything() -> None:
    changes = diff(None, tree())

    assert changes.regions == changes.added_regions == ["eu", "jp", "sg"]
    assert changes.gtm == changes.added_gtm == ["svc-plus", "web"]
    assert changes.autoscale == changes.added_autoscale == svc("jp", "sg")
    assert not changes.removed_regions and not changes.removed_gtm and not changes.removed_autoscale


def test_same_tree_is_empty() -> None:
    changes = diff(tree(), tree())

    assert changes.empty
    assert changes == ConfigChanges()
    assert changes.describe() == "no changes"


def test_one_autoscale_region_changes_only_that_target() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["autoscale"]["svc-plus"]["regions"]["sg"]["max_nodes"] = 8

    changes = diff(tree(), tree(edit))

    assert changes.autoscale == svc("sg")
    assert changes.gtm == [] and changes.regions == []
    assert not changes.empty


def test_service_wide_autoscale_field_changes_every_region_of_the_service() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["autoscale"]["svc-plus"]["cooldown"] = {"scale_down": "10m"}

    changes = diff(tree(), tree(edit))

    assert changes.autoscale == [
        T(service="svc-plus", region="jp"),
        T(service="svc-plus", region="sg"),
    ]
    assert changes.added_autoscale == [] and changes.removed_autoscale == []


def test_autoscale_region_added_and_removed() -> None:
    def edit(d: dict[str, Any]) -> None:
        regions = d["autoscale"]["svc-plus"]["regions"]
        regions["eu"] = regions.pop("sg")

    changes = diff(tree(), tree(edit))

    assert changes.autoscale == [
        T(service="svc-plus", region="eu"),
        T(service="svc-plus", region="sg"),
    ]
    assert changes.added_autoscale == svc("eu")
    assert changes.removed_autoscale == svc("sg")
    assert changes.describe() == "autoscale: +svc-plus/eu, -svc-plus/sg"


def test_region_change_reports_only_that_region() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["regions"]["sg"]["instance_type"] = "t3.large"

    changes = diff(tree(), tree(edit))

    assert changes.regions == ["sg"]
    assert changes.gtm == [] and changes.autoscale == []


def test_removed_service_and_region_are_reported_as_removed() -> None:
    def edit(d: dict[str, Any]) -> None:
        del d["gtm"]["web"]
        del d["regions"]["eu"]

    changes = diff(tree(), tree(edit))

    assert changes.gtm == changes.removed_gtm == ["web"]
    assert changes.regions == changes.removed_regions == ["eu"]
    assert changes.autoscale == []
    assert changes.describe() == "gtm: -web; regions: -eu"


def test_service_regions_union_of_gtm_and_autoscale() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["autoscale"]["svc-plus"]["regions"]["eu"] = {}

    assert docs_service_regions(tree_docs(tree(edit))) == {
        "svc-plus": {"jp", "sg", "eu"},
        "web": {"eu"},
    }


def test_docs_round_trip_to_the_same_tree() -> None:
    original = tree()
    assert docs_tree(tree_docs(original)) == original
