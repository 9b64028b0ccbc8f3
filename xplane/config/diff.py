"""What changed between two config trees, by the loop that must hear of it (pure).

A tree is compared as stored: each entry's normalised JSON document
(``model_dump(mode="json")``), so the diff is the same whether the old tree
comes from the store or from Git, and is testable without a database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, Field

from xplane.config.models import AutoscalePolicy, ConfigTree, GtmPolicy, Region

Doc = dict[str, Any]


class AutoscaleTarget(BaseModel):
    """One autoscale loop: ``autoscale-<service>-<region>``."""

    model_config = {"frozen": True}

    service: str
    region: str


class ConfigChanges(BaseModel):
    """What one applied revision changed, by the loop that must hear of it.

    ``gtm``/``autoscale``/``regions`` list everything added, changed or removed;
    ``added_*``/``removed_*`` single out those added or gone, so their owner can
    start or retire the loop.
    """

    gtm: list[str] = Field(default_factory=list)
    autoscale: list[AutoscaleTarget] = Field(default_factory=list)
    regions: list[str] = Field(default_factory=list)
    added_gtm: list[str] = Field(default_factory=list)
    added_autoscale: list[AutoscaleTarget] = Field(default_factory=list)
    added_regions: list[str] = Field(default_factory=list)
    removed_gtm: list[str] = Field(default_factory=list)
    removed_autoscale: list[AutoscaleTarget] = Field(default_factory=list)
    removed_regions: list[str] = Field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.gtm or self.autoscale or self.regions)

    def describe(self) -> str:
        """``gtm: svc-plus; autoscale: svc-plus/jp; regions: -sg`` (``+`` added, ``-`` removed)."""
        if self.empty:
            return "no changes"

        def mark(item: str, added: Iterable[str], removed: Iterable[str]) -> str:
            return ("+" if item in added else "-" if item in removed else "") + item

        def key(t: AutoscaleTarget) -> str:
            return f"{t.service}/{t.region}"

        parts = []
        if self.gtm:
            items = [mark(s, self.added_gtm, self.removed_gtm) for s in self.gtm]
            parts.append("gtm: " + ", ".join(items))
        if self.autoscale:
            added, removed = map(key, self.added_autoscale), map(key, self.removed_autoscale)
            added_keys, removed_keys = set(added), set(removed)
            items = [mark(key(t), added_keys, removed_keys) for t in self.autoscale]
            parts.append("autoscale: " + ", ".join(items))
        if self.regions:
            items = [mark(r, self.added_regions, self.removed_regions) for r in self.regions]
            parts.append("regions: " + ", ".join(items))
        return "; ".join(parts)


class ConfigDocs(BaseModel):
    """A tree as stored: JSON documents by name (comparable with ``==``)."""

    regions: dict[str, Doc] = Field(default_factory=dict)
    gtm: dict[str, Doc] = Field(default_factory=dict)
    autoscale: dict[str, Doc] = Field(default_factory=dict)


def tree_docs(tree: ConfigTree) -> ConfigDocs:
    return ConfigDocs(
        regions={k: v.model_dump(mode="json") for k, v in tree.regions.items()},
        gtm={k: v.model_dump(mode="json") for k, v in tree.gtm.items()},
        autoscale={k: v.model_dump(mode="json") for k, v in tree.autoscale.items()},
    )


def docs_tree(docs: ConfigDocs) -> ConfigTree:
    return ConfigTree(
        regions={k: Region.model_validate(v) for k, v in docs.regions.items()},
        gtm={k: GtmPolicy.model_validate(v) for k, v in docs.gtm.items()},
        autoscale={k: AutoscalePolicy.model_validate(v) for k, v in docs.autoscale.items()},
    )


def _diff_names(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[str], ...]:
    """(changed incl. added and removed, added, removed), each sorted."""
    added = sorted(new.keys() - old.keys())
    removed = sorted(old.keys() - new.keys())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return changed, added, removed


def effective_autoscale(doc: Doc) -> dict[str, Doc]:
    """Per region, what that region's autoscale loop runs on: the region's entry plus
    the service-wide fields (global, cooldown, intervals...)."""
    shared = {k: v for k, v in doc.items() if k != "regions"}
    return {region: {"region": entry, **shared} for region, entry in doc["regions"].items()}


def _per_region(docs: Mapping[str, Doc]) -> dict[AutoscaleTarget, Doc]:
    return {
        AutoscaleTarget(service=service, region=region): policy
        for service, doc in docs.items()
        for region, policy in effective_autoscale(doc).items()
    }


def diff_docs(old: ConfigDocs, new: ConfigDocs) -> ConfigChanges:
    """What changed from ``old`` to ``new``; autoscale per (service, region).

    A service-wide autoscale field (e.g. ``cooldown``) changes every region of
    the service; a change of one region's entry changes only that region.
    """
    gtm, added_gtm, removed_gtm = _diff_names(old.gtm, new.gtm)
    regions, added_regions, removed_regions = _diff_names(old.regions, new.regions)
    autoscale, added_autoscale, removed_autoscale = _diff_targets(old.autoscale, new.autoscale)
    return ConfigChanges(
        gtm=gtm,
        added_gtm=added_gtm,
        removed_gtm=removed_gtm,
        regions=regions,
        added_regions=added_regions,
        removed_regions=removed_regions,
        autoscale=autoscale,
        added_autoscale=added_autoscale,
        removed_autoscale=removed_autoscale,
    )


def _diff_targets(
    old: Mapping[str, Doc], new: Mapping[str, Doc]
) -> tuple[list[AutoscaleTarget], ...]:
    """Like :func:`_diff_names`, per (service, region) effective autoscale policy."""
    old_by, new_by = _per_region(old), _per_region(new)
    keys = {(t.service, t.region): t for t in old_by.keys() | new_by.keys()}
    targets = [keys[k] for k in sorted(keys)]
    changed = [t for t in targets if old_by.get(t) != new_by.get(t)]
    added = [t for t in targets if t not in old_by]
    removed = [t for t in targets if t not in new_by]
    return changed, added, removed


def docs_service_regions(docs: ConfigDocs) -> dict[str, set[str]]:
    """Every service with a gtm or autoscale policy -> the regions it names."""
    result: dict[str, set[str]] = {}
    for service, doc in docs.gtm.items():
        result.setdefault(service, set()).update(r["name"] for r in doc["regions"])
    for service, doc in docs.autoscale.items():
        result.setdefault(service, set()).update(doc["regions"])
    return result
