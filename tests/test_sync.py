"""GitOps sync end to end on real git (a bare remote + a working clone that pushes to it)
and a real database (SQLite and PostgreSQL): fetch, validate, apply or reject."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from typer.testing import CliRunner

import xplane.store.tables  # noqa: F401  (registers every table on Base.metadata)
from activities.gitops import GitOpsActivities, SyncRequest
from xplane.cli import sync_cmd
from xplane.config.diff import AutoscaleTarget
from xplane.config.loader import load_config
from xplane.config.revisions import RevisionStatus
from xplane.gitops.repo import RepoError, fetch_repo
from xplane.gitops.sync import SyncResult, SyncStatus, sync_once
from xplane.store import config_store as cs
from xplane.store.config_tables import (
    AutoscalePolicyRow,
    ConfigRevisionRow,
    GtmPolicyRow,
    RegionRow,
)
from xplane.store.db import Base, make_engine, make_sessionmaker
from xplane.store.events import EventRow, list_events

EXAMPLE = Path(__file__).resolve().parents[1] / "example" / "gitops-config"

# The origin project's gtm/ and autoscale/ files, plus a regions/ group.
BASE: dict[str, Any] = {
    "regions/global.yaml": {
        "defaults": {"provider": "aws", "instance_type": "t3.small"},
        "regions": [
            {"name": "jp", "location": "ap-northeast-1"},
            {"name": "sg", "location": "ap-southeast-1", "base_weight": 10},
        ],
    },
    "gtm/svc-plus.yaml": {
        "service": "svc-plus",
        "domain": "api.svc.plus",
        "regions": [
            {"name": "jp", "weight": 100, "min_ready_nodes": 1, "fallback": True},
            {"name": "sg", "min_ready_nodes": 1, "fallback": True},  # weight from the region
        ],
        "health": {"type": "http", "path": "/healthz", "interval": "5s", "timeout": "2s"},
        "dns": {"provider": "cloudflare", "ttl": 30},
    },
    "autoscale/svc-plus.yaml": {
        "service": "svc-plus",
        "global": {"cpu_window": "60s", "min_regions": 1, "max_regions": 3},
        "regions": {
            "jp": {"min_nodes": 1, "max_nodes": 5, "scale_up_cpu": 0.7, "scale_down_cpu": 0.3},
            "sg": {"min_nodes": 0, "max_nodes": 5, "scale_up_cpu": 0.6, "scale_down_cpu": 0.25},
        },
    },
}

Files = dict[str, Any]


def _git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


class ConfigRepo:
    """A bare 'remote' (what the sync fetches) and a clone we commit to and push from."""

    def __init__(self, root: Path) -> None:
        self.remote = root / "remote.git"
        self.work = root / "work"
        root.mkdir(parents=True)
        _git(root, "init", "--quiet", "--bare", "--initial-branch=main", str(self.remote))
        _git(root, "init", "--quiet", "--initial-branch=main", str(self.work))
        _git(self.work, "remote", "add", "origin", str(self.remote))
        self.files: Files = {}

    def commit(
        self, files: Files, message: str = "change", branch: str = "main", force: bool = False
    ) -> str:
        """Make the tree exactly ``files`` (dicts become YAML), commit, push; return the sha."""
        for old in set(self.files) - set(files):
            (self.work / old).unlink()
        for name, content in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            text = content if isinstance(content, str) else yaml.safe_dump(content)
            path.write_text(text)
        self.files = copy.deepcopy(files)
        _git(self.work, "add", "--all")
        _git(self.work, "commit", "--quiet", "--allow-empty", "-m", message)
        _git(
            self.work,
            "push",
            "--quiet",
            *(["--force"] if force else []),
            "origin",
            f"HEAD:{branch}",
        )
        return _git(self.work, "rev-parse", "HEAD")

    def edit(self, change: Callable[[Files], None], message: str = "edit") -> str:
        files = copy.deepcopy(self.files)
        change(files)
        return self.commit(files, message)


@pytest.fixture
def repo(tmp_path: Path) -> ConfigRepo:
    return ConfigRepo(tmp_path / "git")


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture
def sqlite_factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """For tests about git or wiring rather than the database: SQLite only."""
    eng = make_engine(f"sqlite:///{tmp_path}/sync.db")
    Base.metadata.create_all(eng)
    yield make_sessionmaker(eng)
    eng.dispose()


def _rows(engine: Engine) -> dict[str, int]:
    """Row counts of every config table and of the event log."""
    counts: dict[str, int] = {}
    with engine.connect() as conn:
        tables = (ConfigRevisionRow, RegionRow, GtmPolicyRow, AutoscalePolicyRow)
        for table in (*tables, EventRow):
            name = table.__tablename__
            counts[name] = int(conn.execute(select(func.count()).select_from(table)).scalar_one())
    return counts


def _sync(factory: sessionmaker[Session], repo: ConfigRepo, tmp_path: Path) -> Any:
    return sync_once(factory, str(repo.remote), "main", tmp_path / "cache")


def targets(*pairs: str) -> list[AutoscaleTarget]:
    return [AutoscaleTarget(service="svc-plus", region=r) for r in pairs]


# ------------------------------------------------------------------ the sync
def test_new_commit_is_applied_then_unchanged_writes_nothing(
    engine: Engine, factory: sessionmaker[Session], repo: ConfigRepo, tmp_path: Path
) -> None:
    sha = repo.commit(BASE, "initial")

    first = _sync(factory, repo, tmp_path)

    assert first.status is SyncStatus.APPLIED
    assert (first.sha, first.previous_sha) == (sha, None)
    assert first.changes.added_regions == ["jp", "sg"]
    assert first.changes.added_gtm == ["svc-plus"]
    assert first.changes.added_autoscale == targets("jp", "sg")
    with factory() as session:
        assert cs.current_config(session) == load_config(repo.work)
        assert cs.service_regions(session) == {"svc-plus": {"jp", "sg"}}
        sg = cs.current_config(session).gtm_region("svc-plus", "sg")  # type: ignore[union-attr]
        assert sg is not None and sg.weight == 10  # stored resolved, as the loader made it
    before = _rows(engine)
    assert before["config_revisions"] == 1
    with factory() as session:
        [event] = list_events(session)
    assert (event.kind, event.source, event.data["sha"]) == ("config.applied", "gitops-sync", sha)
    assert event.data["changes"]["added_gtm"] == ["svc-plus"]

    again = _sync(factory, repo, tmp_path)

    assert again.status is SyncStatus.UNCHANGED
    assert again.changes.empty and again.issues == []
    assert (again.sha, again.previous_sha) == (sha, sha)
    assert _rows(engine) == before


def test_only_the_changed_kinds_are_reported(
    factory: sessionmaker[Session], repo: ConfigRepo, tmp_path: Path
) -> None:
    repo.commit(BASE, "initial")
    _sync(factory, repo, tmp_path)

    def autoscale_only(f: Files) -> None:
        f["autoscale/svc-plus.yaml"]["regions"]["sg"]["max_nodes"] = 9

    repo.edit(autoscale_only)
    result = _sync(factory, repo, tmp_path)
    assert result.status is SyncStatus.APPLIED
    assert result.changes.autoscale == targets("sg")
    assert result.changes.gtm == [] and result.changes.regions == []

    def cooldown(f: Files) -> None:  # service-wide: every region's loop must hear of it
        f["autoscale/svc-plus.yaml"]["cooldown"] = {"scale_down": "10m"}

    repo.edit(cooldown)
    assert _sync(factory, repo, tmp_path).changes.autoscale == targets("jp", "sg")

    def one_region(f: Files) -> None:
        f["regions/global.yaml"]["regions"][0]["instance_type"] = "t3.large"

    repo.edit(one_region)
    result = _sync(factory, repo, tmp_path)
    assert result.changes.regions == ["jp"]
    assert result.changes.gtm == [] and result.changes.autoscale == []

    def region_weight(f: Files) -> None:  # sg's GTM weight comes from the region: both change
        f["regions/global.yaml"]["regions"][1]["base_weight"] = 20

    repo.edit(region_weight)
    result = _sync(factory, repo, tmp_path)
    assert (result.changes.regions, result.changes.gtm) == (["sg"], ["svc-plus"])
    assert result.changes.autoscale == []

    def readme_only(f: Files) -> None:  # a new commit with the same config
        f["README.md"] = "# config\n"

    sha = repo.edit(readme_only)
    result = _sync(factory, repo, tmp_path)
    assert result.status is SyncStatus.APPLIED and result.changes.empty
    with factory() as session:
        assert cs.current_revision(session).sha == sha  # type: ignore[union-attr]


def test_removed_service_and_region_are_reported(
    factory: sessionmaker[Session], repo: ConfigRepo, tmp_path: Path
) -> None:
    files = copy.deepcopy(BASE)
    files["gtm/web.yaml"] = {
        "service": "web",
        "domain": "www.svc.plus",
        "regions": [{"name": "jp"}],
    }
    repo.commit(files, "initial")
    _sync(factory, repo, tmp_path)

    def drop(f: Files) -> None:
        del f["gtm/web.yaml"]
        f["regions/global.yaml"]["regions"].pop(1)  # sg
        f["gtm/svc-plus.yaml"]["regions"].pop(1)
        del f["autoscale/svc-plus.yaml"]["regions"]["sg"]

    repo.edit(drop)
    result = _sync(factory, repo, tmp_path)

    assert result.status is SyncStatus.APPLIED
    assert result.changes.removed_gtm == ["web"]
    assert result.changes.gtm == ["svc-plus", "web"]
    assert result.changes.regions == result.changes.removed_regions == ["sg"]
    assert result.changes.autoscale == result.changes.removed_autoscale == targets("sg")
    with factory() as session:
        assert cs.service_regions(session) == {"svc-plus": {"jp"}}
        assert session.get(GtmPolicyRow, "web") is None


def test_invalid_commit_is_rejected_whole_and_a_fix_is_applied(
    engine: Engine, factory: sessionmaker[Session], repo: ConfigRepo, tmp_path: Path
) -> None:
    good = repo.commit(BASE, "initial")
    _sync(factory, repo, tmp_path)
    applied_tree = load_config(repo.work)

    def break_it(f: Files) -> None:
        f["autoscale/svc-plus.yaml"]["regions"]["jp"]["max_nodes"] = 9  # valid on its own
        f["gtm/svc-plus.yaml"]["regions"].append({"name": "mars"})  # unknown region
        f["regions/global.yaml"]["regions"][0]["min_nodes"] = -1

    bad = repo.edit(break_it, "broken")
    result = _sync(factory, repo, tmp_path)

    assert result.status is SyncStatus.REJECTED and not result.ok
    assert (result.sha, result.previous_sha) == (bad, good)
    assert result.changes.empty
    files = {i.file for i in result.issues}
    assert files == {"gtm/svc-plus.yaml", "regions/global.yaml"}
    assert any("mars" in i.message for i in result.issues)
    with factory() as session:
        assert cs.current_revision(session).sha == good  # type: ignore[union-attr]
        assert cs.current_config(session) == applied_tree  # the valid part was not applied
        last = cs.last_revision(session)
        assert last is not None and last.sha == bad and last.status is RevisionStatus.REJECTED
        assert last.errors == result.issues
        event = list_events(session, kind_prefix="config.")[0]
        assert (event.kind, event.data["sha"]) == ("config.rejected", bad)
        assert len(event.data["issues"]) == len(result.issues)
    rows = _rows(engine)

    again = _sync(factory, repo, tmp_path)  # the next tick: same bad head

    assert again.status is SyncStatus.UNCHANGED_REJECTED and not again.ok
    assert again.issues == result.issues
    assert _rows(engine) == rows  # not re-recorded

    def fix(f: Files) -> None:
        f["gtm/svc-plus.yaml"]["regions"].pop()
        f["regions/global.yaml"]["regions"][0].pop("min_nodes")

    fixed = repo.edit(fix, "fixed")
    result = _sync(factory, repo, tmp_path)

    assert result.status is SyncStatus.APPLIED
    assert (result.sha, result.previous_sha) == (fixed, good)
    assert result.changes.autoscale == targets("jp")  # compared with the last applied revision
    assert result.changes.gtm == [] and result.changes.regions == []
    with factory() as session:
        statuses = [(r.sha, r.status.value) for r in cs.list_revisions(session)]
    assert statuses == [(fixed, "applied"), (bad, "rejected"), (good, "applied")]


def test_example_config_is_applied(
    sqlite_factory: sessionmaker[Session], repo: ConfigRepo, tmp_path: Path
) -> None:
    factory = sqlite_factory
    files = {str(p.relative_to(EXAMPLE)): p.read_text() for p in EXAMPLE.rglob("*") if p.is_file()}
    repo.commit(files, "example")

    result = _sync(factory, repo, tmp_path)

    assert result.status is SyncStatus.APPLIED, result.issues
    with factory() as session:
        assert cs.current_config(session) == load_config(EXAMPLE)


def test_unreachable_repo_or_unknown_branch_writes_nothing(
    sqlite_factory: sessionmaker[Session], repo: ConfigRepo, tmp_path: Path
) -> None:
    factory = sqlite_factory
    repo.commit(BASE, "initial")

    with pytest.raises(RepoError, match="branch 'nope' does not exist"):
        sync_once(factory, str(repo.remote), "nope", tmp_path / "cache")
    with pytest.raises(RepoError, match="does not appear to be a git repository"):
        sync_once(factory, str(tmp_path / "missing"), "main", tmp_path / "cache")

    with factory() as session:
        assert cs.last_revision(session) is None


# -------------------------------------------------------------- the git cache
def test_fetch_follows_the_branch_and_drops_deleted_files(repo: ConfigRepo, tmp_path: Path) -> None:
    first = repo.commit({"a.txt": "1", "b.txt": "2"})
    cache = tmp_path / "cache"

    fetched = fetch_repo(f"file://{repo.remote}", "main", cache)
    assert fetched.sha == first
    (fetched.path / "stray.txt").write_text("local junk")  # must not survive a fetch

    second = repo.commit({"a.txt": "changed"})
    again = fetch_repo(f"file://{repo.remote}", "main", cache)

    assert (again.sha, again.path) == (second, fetched.path)  # the same clone, updated
    assert sorted(p.name for p in again.path.iterdir() if p.name != ".git") == ["a.txt"]
    assert (again.path / "a.txt").read_text() == "changed"


def test_fetch_other_branch_and_force_push(repo: ConfigRepo, tmp_path: Path) -> None:
    repo.commit({"a.txt": "main"})
    staging = repo.commit({"a.txt": "staging"}, branch="staging")
    cache = tmp_path / "cache"
    assert fetch_repo(str(repo.remote), "staging", cache).sha == staging

    _git(repo.work, "reset", "--quiet", "--hard", "HEAD~1")  # rewrite history upstream
    rewritten = repo.commit({"a.txt": "rewritten"}, branch="staging", force=True)

    fetched = fetch_repo(str(repo.remote), "staging", cache)
    assert fetched.sha == rewritten
    assert (fetched.path / "a.txt").read_text() == "rewritten"


def test_credentials_never_appear_in_errors(tmp_path: Path) -> None:
    with pytest.raises(RepoError) as exc:
        fetch_repo("https://user:s3cret@127.0.0.1:9/x.git", "main", tmp_path / "cache")

    assert "s3cret" not in str(exc.value)
    assert "127.0.0.1:9" in str(exc.value)


# ------------------------------------------------------ activity and the CLI
def test_activity_runs_the_sync(
    sqlite_factory: sessionmaker[Session], repo: ConfigRepo, tmp_path: Path
) -> None:
    sha = repo.commit(BASE, "initial")
    activities = GitOpsActivities(sqlite_factory, tmp_path / "cache")

    result = ActivityEnvironment().run(
        activities.sync_config_repo, SyncRequest(source=str(repo.remote), branch="main")
    )

    assert result.status is SyncStatus.APPLIED and result.sha == sha
    # what the workflow receives: the result survives Temporal's pydantic converter
    converter = pydantic_data_converter.payload_converter
    payloads = converter.to_payloads([result])
    assert converter.from_payloads(payloads, [SyncResult]) == [result]


def test_activity_fails_fast_only_when_a_retry_cannot_help(
    sqlite_factory: sessionmaker[Session], repo: ConfigRepo, tmp_path: Path
) -> None:
    activities = GitOpsActivities(sqlite_factory, tmp_path / "cache")
    run = ActivityEnvironment().run
    repo.commit(BASE, "initial")
    with pytest.raises(ApplicationError) as bad_branch:
        run(activities.sync_config_repo, SyncRequest(source=str(repo.remote), branch="-x"))
    assert bad_branch.value.non_retryable and "invalid branch name" in str(bad_branch.value)
    with pytest.raises(ApplicationError) as unreachable:  # may come back: retried
        run(activities.sync_config_repo, SyncRequest(source=str(tmp_path / "gone.git")))
    assert not unreachable.value.non_retryable and unreachable.value.type == "RepoError"

    # A config nested 10,000 deep is a rejected revision, not a crash retried 6 times.
    sha = repo.commit({**BASE, "gtm/deep.yaml": "a: " + "[" * 10_000 + "]" * 10_000}, "deep")
    result = run(activities.sync_config_repo, SyncRequest(source=str(repo.remote)))
    assert (result.status, result.sha) == (SyncStatus.REJECTED, sha)
    assert [i.file for i in result.issues] == ["gtm/deep.yaml"]


def test_cli_migrates_syncs_and_exits_by_status(repo: ConfigRepo, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path}/cli.db"  # migrations on PostgreSQL: test_migrations.py
    app = typer.Typer()
    sync_cmd.register(app)
    app.command("noop")(lambda: None)  # a second command keeps `sync` a subcommand
    base = ["sync", "--once", "--repo", str(repo.remote), "--db", db_url]
    base += ["--workdir", str(tmp_path / "cache")]
    runner = CliRunner()
    sha = repo.commit(BASE, "initial")

    applied = runner.invoke(app, [*base, "--output", "json"])

    assert applied.exit_code == 0, applied.output
    out = json.loads(applied.stdout)
    assert (out["status"], out["sha"]) == ("applied", sha)
    assert out["changes"]["added_regions"] == ["jp", "sg"]

    def break_it(f: Files) -> None:
        f["gtm/svc-plus.yaml"]["regions"][0]["weight"] = -1

    repo.edit(break_it)
    rejected = runner.invoke(app, base)

    assert rejected.exit_code == 1
    assert rejected.stdout.startswith("rejected: ")
    assert "gtm/svc-plus.yaml:" in rejected.stderr and "regions[0].weight" in rejected.stderr

    missing = runner.invoke(app, [*base[:3], str(tmp_path / "nowhere"), *base[4:]])
    assert missing.exit_code == 2
    assert "does not appear to be a git repository" in missing.stderr

    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as session:
            assert cs.current_revision(session).sha == sha  # type: ignore[union-attr]
    finally:
        engine.dispose()
    shutil.rmtree(tmp_path / "cache")
