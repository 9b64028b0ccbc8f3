"""Commit changes to the infra repo (GitPython): the autoscaler's and the region lifecycle's hand.

Every mutation goes through one loop, :func:`commit_files`:

1. fetch the remote into a cached clone under ``workdir`` (one per source, locked
   with ``flock`` so two processes sharing a workdir take turns);
2. put the clone exactly on the remote branch tip (the clone is a private cache,
   so it is reset hard, never merged);
3. apply the edit *to that tip* -- an edit is a function of the checked-out tree,
   so a retry recomputes it on whatever others pushed meanwhile;
4. commit as the given author (author and committer) and push without force;
5. a rejected push (someone pushed first) goes back to 1, at most ``max_attempts``
   times. History stays linear and nobody's commit is overwritten.

If the edit changes nothing, nothing is committed (status ``unchanged``).

An ``operation`` (the id of the activity attempt chain that commits, stable across
its retries) is written as an ``Xplane-Operation:`` trailer. A retry whose earlier
attempt pushed and then died finds that commit among the branch's recent commits
and returns it (status ``committed``, ``already_pushed``) instead of editing again
and answering ``unchanged``: the caller still waits for Terraform to apply it.
Errors are :class:`RepoError`; URLs in their text have credentials masked.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import git
from pydantic import BaseModel

from xplane.config.errors import NAME_PATTERN
from xplane.filelock import exclusive_lock
from xplane.gitops.tfvars import TfvarsError, get_node_count, set_node_count

Author = tuple[str, str]  # (name, email)

AUTOSCALER_AUTHOR: Author = ("xplane-autoscaler", "xplane-autoscaler@users.noreply.xplane")
AUTOSCALER_SUBJECT = "feat(xplane-autoscaler): scale {region} pool to {count} nodes"
REGION_BOOTSTRAP_SUBJECT = "feat(xplane-region): bootstrap {region} node pool"
NODE_POOL_PATH = "infra/node-pool/{region}.tfvars"
OPERATION_TRAILER = "Xplane-Operation"
# How far back a retry looks for its own commit: it pushed minutes ago at most, and no
# infra repo takes hundreds of commits in that time; bounded so a long history costs nothing.
OPERATION_LOOKBACK = 200

_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")
_REJECTED = ("[rejected]", "non-fast-forward", "fetch first", "stale info", "cannot lock ref")
_NAME = re.compile(NAME_PATTERN)
_PREVIOUS_COUNT = re.compile(r"^node_count: (\S+) -> ", re.MULTILINE)  # see _format_body

# changes to write (path -> new text, None = delete) and the commit message, or None
Edit = Callable[[Path], tuple[Mapping[str, str | None], str] | None]


class RepoError(Exception):
    """The infra repo could not be read, edited or pushed (the message says which and why).

    ``permanent``: retrying cannot help (a malformed file, an invalid name), as opposed
    to a network failure or a lost push race.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class FilesCommitResult(BaseModel):
    status: Literal["committed", "unchanged"]
    sha: str  # the branch tip after the call ("" for a still-empty repo)
    message: str  # the commit message ("" when unchanged)
    changed: list[str] = []
    attempts: int = 1
    already_pushed: bool = False  # an earlier attempt of the same operation pushed it


class CommitResult(BaseModel):
    status: Literal["committed", "unchanged"]
    sha: str
    previous_count: int | None
    message: str
    path: str
    attempts: int = 1
    already_pushed: bool = False


def redact(text: str) -> str:
    """Mask ``user:token@`` in every URL of ``text``."""
    return _CREDENTIALS.sub("***@", text)


def _source_key(source: str) -> tuple[str, str]:
    """(what to clone, cache folder name): local paths made absolute, URLs as they are."""
    path = Path(source).expanduser()
    target = str(path.resolve()) if "://" not in source and path.exists() else source
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", target.rstrip("/").rsplit("/", 1)[-1])
    stem = stem.removesuffix(".git").strip("-.") or "repo"
    return target, f"{stem}-{hashlib.sha256(target.encode()).hexdigest()[:12]}"


def _git_error(action: str, source: str, exc: git.GitCommandError) -> RepoError:
    detail = (exc.stderr or str(exc)).strip().removeprefix("stderr:").strip(" '\n")
    return RepoError(redact(f"{action} {source}: {detail}"))


def _open_clone(target: str, folder: Path) -> git.Repo:
    env = {"GIT_TERMINAL_PROMPT": "0"}
    if (folder / ".git").is_dir():
        repo = git.Repo(folder)
        repo.git.update_environment(**env)
        repo.git.remote("set-url", "origin", target)
        return repo
    try:
        repo = git.Repo.clone_from(target, folder, env=env)
    except git.GitCommandError as exc:
        raise _git_error("cannot clone", target, exc) from exc
    repo.git.update_environment(**env)
    return repo


def _checkout_tip(repo: git.Repo, target: str, branch: str) -> str:
    """Fetch, then put the work tree on ``origin/<branch>``; return its sha ("" if empty)."""
    try:
        repo.git.fetch("origin", "--prune")
    except git.GitCommandError as exc:
        raise _git_error("cannot fetch", target, exc) from exc
    remote_ref = f"refs/remotes/origin/{branch}"
    has_branch = bool(repo.git.for_each_ref(remote_ref))
    if has_branch:
        repo.git.checkout("-f", "-B", branch, remote_ref)
        repo.git.reset("--hard", remote_ref)
        repo.git.clean("-fdx")
        return str(repo.head.commit.hexsha)
    if repo.git.for_each_ref("refs/remotes/origin/"):
        raise RepoError(redact(f"branch {branch!r} not found in {target}"))
    # An empty remote: the first commit starts the branch.
    repo.git.checkout("-f", "--orphan", branch)
    repo.git.rm("-r", "-q", "--cached", "--ignore-unmatch", ".")
    repo.git.clean("-fdx")
    return ""


def _safe_path(root: Path, rel: str) -> Path:
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or pure.parts[0] == ".git":
        raise RepoError(
            f"refusing to write {rel!r}: paths must stay inside the repo", permanent=True
        )
    return root / pure


def _apply(repo: git.Repo, root: Path, changes: Mapping[str, str | None]) -> list[str]:
    """Write/delete files and stage them; the paths that really changed."""
    for rel, text in changes.items():
        path = _safe_path(root, rel)
        if text is None:
            if path.exists():
                repo.git.rm("-q", "--", rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        repo.git.add("--", rel)
    staged = repo.git.diff("--cached", "--name-only", "--no-renames")
    return [line for line in staged.splitlines() if line]


def _with_trailer(message: str, operation: str | None) -> str:
    body = message.rstrip("\n")
    return f"{body}\n\n{OPERATION_TRAILER}: {operation}\n" if operation else body + "\n"


def _find_operation(repo: git.Repo, tip: str, operation: str) -> tuple[str, str] | None:
    """(sha, message) of the commit carrying ``operation``'s trailer among the tip's recent ones."""
    if not tip:
        return None
    wanted = f"{OPERATION_TRAILER}: {operation}"
    log = repo.git.log(f"-n{OPERATION_LOOKBACK}", "--format=%H%x00%B%x1e", tip)
    for entry in log.split("\x1e"):
        sha, _, message = entry.strip("\n").partition("\x00")
        if wanted in message.splitlines():  # the exact trailer line, not a prefix of another id
            return sha, message.rstrip("\n") + "\n"
    return None


def _commit_loop(
    source: str,
    edit: Edit,
    workdir: Path,
    branch: str,
    author: Author,
    max_attempts: int,
    operation: str | None = None,
) -> FilesCommitResult:
    target, name = _source_key(source)
    with exclusive_lock(workdir / f"{name}.lock"):
        try:
            return _attempts(target, workdir / name, edit, branch, author, max_attempts, operation)
        except git.GitCommandError as exc:  # an unexpected git failure, named with its command
            verb = exc.command[1] if isinstance(exc.command, list) and len(exc.command) > 1 else ""
            raise _git_error(f"git {verb} failed on", target, exc) from exc


def _attempts(
    target: str,
    folder: Path,
    edit: Edit,
    branch: str,
    author: Author,
    max_attempts: int,
    operation: str | None,
) -> FilesCommitResult:
    name, email = author
    env = {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }
    repo = _open_clone(target, folder)
    root = Path(repo.working_tree_dir or folder)
    for attempt in range(1, max_attempts + 1):
        tip = _checkout_tip(repo, target, branch)
        if operation and (mine := _find_operation(repo, tip, operation)):
            return FilesCommitResult(
                status="committed",
                sha=mine[0],
                message=mine[1],
                attempts=attempt,
                already_pushed=True,
            )
        planned = edit(root)
        changed = _apply(repo, root, planned[0]) if planned else []
        if not planned or not changed:
            return FilesCommitResult(status="unchanged", sha=tip, message="", attempts=attempt)
        message = _with_trailer(planned[1], operation)  # verbatim: what we return is in Git
        repo.git.commit(
            "--no-verify", "--no-gpg-sign", "--cleanup=verbatim", "-q", "-m", message, env=env
        )
        try:
            repo.git.push("origin", f"HEAD:refs/heads/{branch}")
        except git.GitCommandError as exc:
            if any(marker in (exc.stderr or "") for marker in _REJECTED):
                continue  # someone pushed first: redo the edit on their tip
            raise _git_error("cannot push to", target, exc) from exc
        return FilesCommitResult(
            status="committed",
            sha=str(repo.head.commit.hexsha),
            message=message,
            changed=changed,
            attempts=attempt,
        )
    raise RepoError(redact(f"push to {target} ({branch}) rejected {max_attempts} times"))


def commit_files(
    source: str,
    changes: Mapping[str, str | None],
    message: str,
    author: Author = AUTOSCALER_AUTHOR,
    *,
    workdir: Path,
    branch: str = "main",
    max_attempts: int = 5,
    operation: str | None = None,
) -> FilesCommitResult:
    """Write ``changes`` (repo-relative posix path -> text; None deletes) in one commit."""

    def edit(_root: Path) -> tuple[Mapping[str, str | None], str]:
        return changes, message

    return _commit_loop(source, edit, workdir, branch, author, max_attempts, operation)


def _format_body(reason: str, previous: int | None, count: int, metrics: Mapping[str, Any]) -> str:
    lines = [
        reason.strip(),
        "",
        f"node_count: {previous if previous is not None else '-'} -> {count}",
    ]
    if metrics:
        lines.append("metrics:")
        lines.extend(f"  {key}: {metrics[key]}" for key in sorted(metrics))
    return "\n".join(lines).strip()


def commit_node_count(
    source: str,
    region: str,
    count: int,
    reason: str,
    metrics: Mapping[str, Any],
    workdir: Path,
    branch: str = "main",
    author: Author = AUTOSCALER_AUTHOR,
    *,
    subject: str = AUTOSCALER_SUBJECT,
    path: str = NODE_POOL_PATH,
    create: bool = False,
    max_attempts: int = 5,
    operation: str | None = None,
) -> CommitResult:
    """Set ``node_count = count`` in ``infra/node-pool/<region>.tfvars`` and push.

    ``subject`` and ``path`` are ``str.format`` templates (fields ``region``,
    ``count``); the body holds ``reason``, the old and new count and ``metrics``.
    A missing file is a RepoError unless ``create``.
    """
    if not _NAME.match(region):
        raise RepoError(f"invalid region name {region!r}", permanent=True)
    if count < 0:
        raise RepoError(f"node count must be >= 0, not {count}", permanent=True)
    rel = path.format(region=region, count=count)
    seen: dict[str, int | None] = {}

    def edit(root: Path) -> tuple[Mapping[str, str | None], str] | None:
        file = _safe_path(root, rel)
        exists = file.is_file()
        if not exists and not create:
            msg = f"{rel} not found in {source} ({branch}); pass create=True to create it"
            raise RepoError(redact(msg), permanent=True)
        try:
            text = file.read_bytes().decode("utf-8") if exists else ""  # keep CRLF as is
            previous = get_node_count(text)
            updated = set_node_count(text, count)
        except (TfvarsError, UnicodeDecodeError) as exc:
            msg = f"{rel} in {source} ({branch}): {exc}"
            raise RepoError(redact(msg), permanent=True) from exc
        seen["previous"] = previous
        if exists and previous == count:
            return None
        title = subject.format(region=region, count=count)
        return {rel: updated}, f"{title}\n\n{_format_body(reason, previous, count, metrics)}\n"

    result = _commit_loop(source, edit, workdir, branch, author, max_attempts, operation)
    previous = seen.get("previous")
    if result.already_pushed:  # the edit did not run: the count it replaced is in the body
        found = _PREVIOUS_COUNT.search(result.message)
        previous = int(found[1]) if found and found[1].isdigit() else None
    return CommitResult(
        status=result.status,
        sha=result.sha,
        previous_count=previous,
        message=result.message,
        path=rel,
        attempts=result.attempts,
        already_pushed=result.already_pushed,
    )


def default_workdir() -> Path:
    """Operators' cached clones: ``$XPLANE_WORKDIR/infra``, else ``~/.cache/xplane/infra``."""
    base = os.environ.get("XPLANE_WORKDIR")
    return Path(base) / "infra" if base else Path.home() / ".cache" / "xplane" / "infra"
