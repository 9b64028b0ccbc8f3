"""Config store: the pure diff between trees; revision and policy tables (SQLite + PostgreSQL)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, func, select

from xplane.config.errors import ConfigIssue
from xplane.config.models import ConfigTree
from xplane.store import config_store as cs
from xplane.store.config_store import AutoscaleTarget as T
from xplane.store.db import make_sessionmaker, transaction

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


def diff(old: ConfigTree | None, new: ConfigTree) -> cs.ConfigChanges:
    return cs.diff_docs(cs.tree_docs(old) if old else cs.ConfigDocs(), cs.tree_docs(new))


# ------------------------------------------------------------------ pure diff
def test_first_tree_adds_everything() -> None:
    changes = diff(None, tree())

    assert changes.regions == changes.added_regions == ["eu", "jp", "sg"]
    assert changes.gtm == changes.added_gtm == ["svc-plus", "web"]
    assert changes.autoscale == changes.added_autoscale == svc("jp", "sg")
    assert not changes.removed_regions and not changes.removed_gtm and not changes.removed_autoscale


def test_same_tree_is_empty() -> None:
    changes = diff(tree(), tree())

    assert changes.empty
    assert changes == cs.ConfigChanges()
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

    assert cs.docs_service_regions(cs.tree_docs(tree(edit))) == {
        "svc-plus": {"jp", "sg", "eu"},
        "web": {"eu"},
    }


def test_docs_round_trip_to_the_same_tree() -> None:
    original = tree()
    assert cs.docs_tree(cs.tree_docs(original)) == original


# ---------------------------------------------------------------- repository
def _count(engine: Engine, table: type[Any]) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_empty_store_has_no_config(engine: Engine) -> None:
    with make_sessionmaker(engine)() as session:
        assert cs.current_config(session) is None
        assert cs.current_revision(session) is None
        assert cs.last_revision(session) is None
        assert cs.list_revisions(session) == []
        assert cs.service_regions(session) == {}


def test_save_revision_makes_the_tree_current(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    with transaction(factory) as session:
        changes = cs.save_revision(session, "a" * 40, tree(), "repo#main")

    assert changes.added_regions == ["eu", "jp", "sg"]
    with factory() as session:
        assert cs.current_config(session) == tree()
        current = cs.current_revision(session)
        assert current is not None and current.sha == "a" * 40
        assert current.status is cs.RevisionStatus.APPLIED and current.source == "repo#main"
        assert "3 regions, 2 gtm policies, 1 autoscale policy" in current.summary
        assert cs.service_regions(session) == {"svc-plus": {"jp", "sg"}, "web": {"eu"}}
        row = session.get(cs.RegionRow, "jp")
        assert row is not None and row.provider == "aws" and row.retired is False
        assert session.get(cs.GtmPolicyRow, "web").domain == "www.svc.plus"  # type: ignore[union-attr]


def test_second_revision_rewrites_only_changed_rows_and_deletes_removed(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    with transaction(factory) as session:
        cs.save_revision(session, "a" * 40, tree(), "repo#main")

    def edit(d: dict[str, Any]) -> None:
        d["regions"]["jp"]["retired"] = True
        del d["gtm"]["web"]

    with transaction(factory) as session:
        changes = cs.save_revision(session, "b" * 40, tree(edit), "repo#main")

    assert changes.regions == ["jp"] and changes.removed_gtm == ["web"]
    with factory() as session:
        first, second = sorted(r.id for r in cs.list_revisions(session))
        jp, sg = session.get(cs.RegionRow, "jp"), session.get(cs.RegionRow, "sg")
        assert jp is not None and sg is not None
        assert (jp.revision_id, jp.retired) == (second, True)
        assert sg.revision_id == first  # untouched row keeps the revision that wrote it
        assert session.get(cs.GtmPolicyRow, "web") is None
        assert cs.current_config(session) == tree(edit)
    assert _count(engine, cs.GtmPolicyRow) == 1


def test_rejected_revision_is_last_but_not_current(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    issues = [
        ConfigIssue(
            file="gtm/svc-plus.yaml", path="regions[0].weight", message="must be >= 0", line=7
        ),
        ConfigIssue(file="regions/x.yaml", message="cannot parse"),
    ]
    with transaction(factory) as session:
        cs.save_revision(session, "a" * 40, tree(), "repo#main")
    with transaction(factory) as session:
        cs.record_rejected(session, "b" * 40, "repo#main", issues)

    with factory() as session:
        current, last = cs.current_revision(session), cs.last_revision(session)
        assert current is not None and current.sha == "a" * 40
        assert last is not None and last.sha == "b" * 40
        assert last.status is cs.RevisionStatus.REJECTED
        assert last.errors == issues
        assert last.summary == "rejected: 2 issues"
        assert cs.current_config(session) == tree()
        assert [r.sha for r in cs.list_revisions(session)] == ["b" * 40, "a" * 40]
        assert [r.sha for r in cs.list_revisions(session, limit=1)] == ["b" * 40]


def test_failed_transaction_leaves_nothing(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    with pytest.raises(RuntimeError), transaction(factory) as session:
        cs.save_revision(session, "a" * 40, tree(), "repo#main")
        raise RuntimeError("crash before commit")

    assert _count(engine, cs.ConfigRevisionRow) == 0
    assert _count(engine, cs.RegionRow) == 0
    with engine.connect() as conn:  # the schema itself is intact
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
