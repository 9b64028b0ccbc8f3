"""Infra-repo mutations against real Git repositories (a bare remote and clones)."""

from __future__ import annotations

import stat
from pathlib import Path

import git
import pytest

from xplane.gitops.infra_repo import (
    REGION_BOOTSTRAP_SUBJECT,
    RepoError,
    commit_files,
    commit_node_count,
)

FIXTURE = Path(__file__).parent / "fixtures" / "node-pool" / "jp.tfvars"
JP_PATH = "infra/node-pool/jp.tfvars"
SEED = git.Actor("seed", "seed@example.test")


def _commit_all(repo: git.Repo, message: str) -> None:
    repo.git.add("-A")
    repo.index.commit(message, author=SEED, committer=SEED)


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """A bare 'origin' whose main holds the origin-format jp.tfvars and a README."""
    bare = tmp_path / "infra.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    seed = git.Repo.clone_from(str(bare), tmp_path / "seed")
    (tmp_path / "seed" / "infra" / "node-pool").mkdir(parents=True)
    (tmp_path / "seed" / JP_PATH).write_bytes(FIXTURE.read_bytes())
    (tmp_path / "seed" / "README.md").write_text("infra\n")
    _commit_all(seed, "initial")
    seed.git.push("origin", "HEAD:refs/heads/main")
    return bare


def _tip(bare: Path, branch: str = "main") -> git.Commit:
    return git.Repo(bare).commit(branch)


def _message(commit: git.Commit) -> str:
    message = commit.message
    return message if isinstance(message, str) else message.decode()


def _file_at(bare: Path, path: str, rev: str = "main") -> bytes:
    blob = git.Repo(bare).commit(rev).tree / path
    return bytes(blob.data_stream.read())


def test_commit_node_count_edits_one_value_with_exact_message_and_author(
    remote: Path, tmp_path: Path
) -> None:
    before = _tip(remote)
    result = commit_node_count(
        str(remote),
        "jp",
        3,
        "cpu 0.82 > 0.70 for 60s",
        {"cpu": 0.82, "nodes_reporting": 2},
        tmp_path / "work",
    )
    assert (result.status, result.previous_count, result.path) == ("committed", 2, JP_PATH)
    tip = _tip(remote)
    assert tip.hexsha == result.sha and tip.parents == (before,)
    assert _file_at(remote, JP_PATH) == FIXTURE.read_bytes().replace(
        b"node_count     = 2", b"node_count     = 3"
    )
    assert list(tip.stats.files) == [JP_PATH]  # nothing else touched
    for who in (tip.author, tip.committer):
        assert (who.name, who.email) == (
            "xplane-autoscaler",
            "xplane-autoscaler@users.noreply.xplane",
        )
    assert _message(tip) == (
        "feat(xplane-autoscaler): scale jp pool to 3 nodes\n"
        "\n"
        "cpu 0.82 > 0.70 for 60s\n"
        "\n"
        "node_count: 2 -> 3\n"
        "metrics:\n"
        "  cpu: 0.82\n"
        "  nodes_reporting: 2\n"
    )
    assert result.message == _message(tip)


def test_same_count_commits_nothing(remote: Path, tmp_path: Path) -> None:
    before = _tip(remote).hexsha
    result = commit_node_count(str(remote), "jp", 2, "steady", {}, tmp_path / "work")
    assert (result.status, result.sha, result.previous_count) == ("unchanged", before, 2)
    assert result.message == ""
    assert _tip(remote).hexsha == before


def test_cached_clone_is_reused_and_follows_the_remote(remote: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    commit_node_count(str(remote), "jp", 3, "up", {}, work)
    other = git.Repo.clone_from(str(remote), tmp_path / "other")
    (tmp_path / "other" / JP_PATH).write_text("node_count = 7\n")
    _commit_all(other, "someone else set 7")
    other.git.push("origin", "main")
    result = commit_node_count(str(remote), "jp", 4, "up", {}, work)
    assert result.previous_count == 7  # edited on the new tip, not the cached one
    assert len([p for p in work.iterdir() if p.is_dir()]) == 1
    assert _file_at(remote, JP_PATH) == b"node_count = 4\n"


def _install_pre_push(clone: Path, script: str) -> None:
    hook = clone / ".git" / "hooks" / "pre-push"
    hook.write_text("#!/bin/sh\n" + script)
    hook.chmod(hook.stat().st_mode | stat.S_IEXEC)


def _racing_clone(remote: Path, tmp_path: Path) -> Path:
    """A second clone that can push a commit to README.md (a different file) on demand."""
    path = tmp_path / "racer"
    git.Repo.clone_from(str(remote), path)
    return path


RACE = """cd {racer} || exit 1
unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE
echo "race $$" >> README.md
git -c user.name=racer -c user.email=racer@example.test commit -qam "racer edits README"
git push -q origin HEAD:main
"""


def test_concurrent_push_is_rebased_not_overwritten(remote: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    commit_node_count(str(remote), "jp", 3, "warm the cache", {}, work)
    racer = _racing_clone(remote, tmp_path)
    (clone,) = [p for p in work.iterdir() if p.is_dir()]
    # The first push of our clone triggers the racer's push just before ours lands.
    _install_pre_push(
        clone,
        f'[ -e "{tmp_path}/raced" ] && exit 0\ntouch "{tmp_path}/raced"\n'
        + RACE.format(racer=racer),
    )
    before = _tip(remote)
    result = commit_node_count(str(remote), "jp", 4, "cpu high", {}, work)

    assert (result.status, result.attempts) == ("committed", 2)
    tip = _tip(remote)
    assert tip.hexsha == result.sha
    racer_commit = tip.parents[0]
    assert _message(racer_commit).startswith("racer edits README")
    assert racer_commit.parents == (before,)  # linear: before -> racer -> ours
    assert _message(tip).startswith("feat(xplane-autoscaler): scale jp pool to 4 nodes")
    assert b"race" in _file_at(remote, "README.md")
    assert _file_at(remote, JP_PATH).count(b"node_count     = 4") == 1


def test_endless_races_give_up_without_force(remote: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    commit_node_count(str(remote), "jp", 3, "warm the cache", {}, work)
    racer = _racing_clone(remote, tmp_path)
    (clone,) = [p for p in work.iterdir() if p.is_dir()]
    _install_pre_push(clone, RACE.format(racer=racer))
    with pytest.raises(RepoError, match="rejected 3 times"):
        commit_node_count(str(remote), "jp", 4, "cpu high", {}, work, max_attempts=3)
    tip = _tip(remote)
    assert _message(tip).startswith("racer edits README")  # nothing of theirs lost
    assert b"node_count     = 3" in _file_at(remote, JP_PATH)


def test_missing_tfvars_is_an_error_unless_create(remote: Path, tmp_path: Path) -> None:
    before = _tip(remote).hexsha
    with pytest.raises(RepoError, match=r"infra/node-pool/sg.tfvars not found .*create=True"):
        commit_node_count(str(remote), "sg", 1, "bootstrap", {}, tmp_path / "work")
    assert _tip(remote).hexsha == before

    result = commit_node_count(
        str(remote),
        "sg",
        1,
        "region sg declared in regions/",
        {},
        tmp_path / "work",
        author=("xplane-region", "xplane-region@users.noreply.xplane"),
        subject=REGION_BOOTSTRAP_SUBJECT,
        create=True,
    )
    assert (result.status, result.previous_count) == ("committed", None)
    tip = _tip(remote)
    assert _message(tip).startswith("feat(xplane-region): bootstrap sg node pool\n\n")
    assert "node_count: - -> 1" in _message(tip)
    assert (tip.author.name, tip.committer.name) == ("xplane-region", "xplane-region")
    assert _file_at(remote, "infra/node-pool/sg.tfvars") == b"node_count = 1\n"


def test_bad_tfvars_and_bad_region_are_clear_errors(remote: Path, tmp_path: Path) -> None:
    commit_files(
        str(remote),
        {JP_PATH: "node_count = 1\nnode_count = 2\n"},
        "break it",
        workdir=tmp_path / "work",
    )
    with pytest.raises(
        RepoError, match=r"infra/node-pool/jp.tfvars in .*: node_count is assigned 2"
    ):
        commit_node_count(str(remote), "jp", 3, "x", {}, tmp_path / "work")
    with pytest.raises(RepoError, match=r"invalid region name '\.\./etc'"):
        commit_node_count(str(remote), "../etc", 3, "x", {}, tmp_path / "work")


def test_commit_files_writes_and_deletes_in_one_commit(remote: Path, tmp_path: Path) -> None:
    result = commit_files(
        str(remote),
        {"infra/node-pool/sg/main.tf": "# sg\n", "README.md": None, "absent.txt": None},
        "feat(xplane-region): bootstrap sg node pool",
        ("xplane-region", "xplane-region@users.noreply.xplane"),
        workdir=tmp_path / "work",
    )
    assert result.status == "committed"
    assert sorted(result.changed) == ["README.md", "infra/node-pool/sg/main.tf"]
    tip = _tip(remote)
    assert _message(tip) == "feat(xplane-region): bootstrap sg node pool\n"
    assert sorted(str(f) for f in tip.stats.files) == ["README.md", "infra/node-pool/sg/main.tf"]
    assert "README.md" not in [b.path for b in tip.tree.blobs]

    again = commit_files(
        str(remote),
        {"infra/node-pool/sg/main.tf": "# sg\n", "README.md": None},
        "same again",
        workdir=tmp_path / "work",
    )
    assert (again.status, again.sha) == ("unchanged", tip.hexsha)
    with pytest.raises(RepoError, match="inside the repo"):
        commit_files(str(remote), {"../escape": "x"}, "m", workdir=tmp_path / "work")


def test_empty_remote_gets_its_first_commit(tmp_path: Path) -> None:
    bare = tmp_path / "empty.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    result = commit_files(
        str(bare),
        {"infra/node-pool/jp.tfvars": "node_count = 1\n"},
        "first",
        workdir=tmp_path / "w",
    )
    assert result.status == "committed"
    assert _tip(bare).hexsha == result.sha and _tip(bare).parents == ()


def test_unknown_branch_is_an_error(remote: Path, tmp_path: Path) -> None:
    with pytest.raises(RepoError, match="branch 'prod' not found"):
        commit_node_count(str(remote), "jp", 3, "x", {}, tmp_path / "work", branch="prod")


def test_unreachable_url_error_hides_credentials(tmp_path: Path) -> None:
    from xplane.netutil import free_port

    url = f"http://robot:t0ken-xyz@127.0.0.1:{free_port()}/infra.git"
    with pytest.raises(RepoError, match="cannot clone") as info:
        commit_node_count(url, "jp", 3, "x", {}, tmp_path / "work")
    assert "t0ken-xyz" not in str(info.value)
    assert "***@127.0.0.1" in str(info.value)


def test_a_retried_operation_finds_its_own_commit_even_under_newer_ones(
    remote: Path, tmp_path: Path
) -> None:
    """The retry of an operation whose push landed reports that commit, not "unchanged";
    another operation wanting the same count is "unchanged" (its count is someone's)."""
    op = "autoscale-svc-jp/run-1/7"
    first = commit_node_count(str(remote), "jp", 3, "up", {}, tmp_path / "w1", operation=op)
    assert first.status == "committed" and not first.already_pushed
    assert _message(_tip(remote)).endswith(f"\n\nXplane-Operation: {op}\n")
    other = git.Repo.clone_from(str(remote), tmp_path / "other")  # someone pushes after it
    (tmp_path / "other" / "README.md").write_text("later\n")
    _commit_all(other, "later change")
    other.git.push("origin", "main")

    # Another worker (another clone cache) retries the same operation.
    again = commit_node_count(str(remote), "jp", 3, "up", {}, tmp_path / "w2", operation=op)
    assert (again.status, again.sha, again.already_pushed) == ("committed", first.sha, True)
    assert again.previous_count == first.previous_count == 2
    assert again.message == first.message
    assert len(list(git.Repo(remote).iter_commits("main"))) == 3  # nothing pushed twice

    # A prefix of the id is another operation: not its commit.
    other_op = commit_node_count(str(remote), "jp", 3, "up", {}, tmp_path / "w2", operation=op[:-1])
    assert (other_op.status, other_op.already_pushed) == ("unchanged", False)
    files = commit_files(str(remote), {"x": "1\n"}, "m", workdir=tmp_path / "w3", operation="f/1")
    retried = commit_files(str(remote), {"x": "1\n"}, "m", workdir=tmp_path / "w1", operation="f/1")
    assert (retried.status, retried.sha, retried.already_pushed) == ("committed", files.sha, True)
