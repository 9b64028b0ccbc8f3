"""Activities against a real infra repo: a failure no retry can fix is non-retryable
(Temporal gives up at once), a failure that may heal stays retryable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import git
import pytest
from sqlalchemy.orm import Session, sessionmaker
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import xplane.store.tables  # noqa: F401  (registers every table on Base.metadata)
from activities.autoscale import AutoscaleActivities, CommitRequest
from activities.regions import RegionActivities, RegionCommitRequest
from xplane.config.loader import load_config_from_mapping
from xplane.gitops.infra_repo import commit_files
from xplane.store.config_store import save_revision
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction

JP = "infra/node-pool/jp.tfvars"


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    bare = tmp_path / "infra.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    commit_files(str(bare), {JP: "node_count = 1\n"}, "seed", workdir=tmp_path / "seed")
    return bare


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path}/x.db")
    Base.metadata.create_all(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


def _failure(fn: object, *args: object) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        ActivityEnvironment().run(fn, *args)  # type: ignore[arg-type]
    return info.value


def test_malformed_tfvars_is_not_retried_but_an_unreachable_repo_is(
    remote: Path, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    commit_files(str(remote), {JP: "node_count = 1\nnode_count = 2\n"}, "break", workdir=tmp_path)
    request = CommitRequest(service="svc", region="jp", count=3, reason="load")
    acts = AutoscaleActivities(sessions, str(remote), tmp_path / "work")
    malformed = _failure(acts.commit_node_pool, request)
    assert malformed.non_retryable and malformed.type == "RepoError"
    assert "node_count is assigned 2 times" in str(malformed)
    bad_region = _failure(acts.commit_node_pool, request.model_copy(update={"region": "../x"}))
    assert bad_region.non_retryable

    gone = AutoscaleActivities(sessions, str(tmp_path / "gone.git"), tmp_path / "work2")
    unreachable = _failure(gone.commit_node_pool, request)
    assert not unreachable.non_retryable and unreachable.type == "RepoError"


def test_a_region_the_renderer_rejects_is_not_retried(
    remote: Path, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    tree = load_config_from_mapping(
        {"regions/jp.yaml": "provider: aws\nlocation: ap-northeast-1\n"}  # no instance_type
    )
    with transaction(sessions) as session:
        save_revision(session, "a" * 40, tree, "test")
    acts = RegionActivities(sessions, None, str(remote), tmp_path / "work")
    request = RegionCommitRequest(region="jp", service="svc", node_count=1, action="bootstrap")
    failure = _failure(acts.commit_region_pool, request)
    assert failure.non_retryable and failure.type == "RenderError"
    assert "needs instance_type" in str(failure)
