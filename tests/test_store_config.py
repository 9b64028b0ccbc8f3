"""Config store: revision and policy tables (SQLite + PostgreSQL); the diff: test_config_diff.py."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, func, select

from tests.test_config_diff import tree
from xplane.config.errors import ConfigIssue
from xplane.config.revisions import RevisionStatus
from xplane.store import config_store as cs
from xplane.store.config_tables import ConfigRevisionRow, GtmPolicyRow, RegionRow
from xplane.store.db import make_sessionmaker, transaction


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
        assert current.status is RevisionStatus.APPLIED and current.source == "repo#main"
        assert "3 regions, 2 gtm policies, 1 autoscale policy" in current.summary
        assert cs.service_regions(session) == {"svc-plus": {"jp", "sg"}, "web": {"eu"}}
        row = session.get(RegionRow, "jp")
        assert row is not None and row.provider == "aws" and row.retired is False
        assert session.get(GtmPolicyRow, "web").domain == "www.svc.plus"  # type: ignore[union-attr]


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
        jp, sg = session.get(RegionRow, "jp"), session.get(RegionRow, "sg")
        assert jp is not None and sg is not None
        assert (jp.revision_id, jp.retired) == (second, True)
        assert sg.revision_id == first  # untouched row keeps the revision that wrote it
        assert session.get(GtmPolicyRow, "web") is None
        assert cs.current_config(session) == tree(edit)
    assert _count(engine, GtmPolicyRow) == 1


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
        assert last.status is RevisionStatus.REJECTED
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

    assert _count(engine, ConfigRevisionRow) == 0
    assert _count(engine, RegionRow) == 0
    with engine.connect() as conn:  # the schema itself is intact
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
