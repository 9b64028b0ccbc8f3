"""Fetch one branch of a config repo into a local clone cache.

The first fetch of a source makes a clone under ``workdir`` (one folder per
source); later fetches reuse it: ``git fetch`` the branch, then hard-reset and
clean the work tree to exactly ``origin/<branch>``, so files deleted upstream
disappear and nothing local survives. Works for local paths (bare or not),
``file://``, ssh and https URLs.

Git never prompts (a sync runs unattended): a repo needing credentials fails
with a :class:`RepoError` instead of hanging. Credentials embedded in a URL
are removed from every message.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from git import GitCommandError, InvalidGitRepositoryError, Repo
from pydantic import BaseModel

from xplane.filelock import exclusive_lock

GIT_TIMEOUT_SECONDS = 120
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


class RepoError(Exception):
    """The repo or branch cannot be fetched; the message says which and why.

    ``permanent``: retrying cannot help (an invalid branch name).
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class FetchedRepo(BaseModel):
    path: Path  # checkout of the branch's head (the cache folder: don't write to it)
    sha: str


def redact(source: str) -> str:
    """``https://user:token@host/x.git`` -> ``https://***@host/x.git``."""
    return _USERINFO.sub("***@", source)


def _remote_url(source: str) -> str:
    """URLs as given; a local path made absolute (git resolves it from the clone otherwise)."""
    if "://" in source or re.match(r"^[\w.-]+@[\w.-]+:", source):  # URL or scp-like ssh
        return source
    return str(Path(source).expanduser().resolve())


def cache_dir(source: str, workdir: Path) -> Path:
    """``<workdir>/<name>-<hash>``: one clone per source, readable in ``ls``."""
    url = _remote_url(source)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", url.rstrip("/").rsplit("/", 1)[-1]) or "repo"
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return workdir / f"{name.removesuffix('.git')}-{digest}"


def _open_cache(path: Path, url: str) -> Repo:
    """The cached clone, (re)initialised when missing, broken or pointing elsewhere."""
    try:
        repo = Repo(path)
        if "origin" in repo.remotes and repo.remotes.origin.url == url:
            return repo
    except (InvalidGitRepositoryError, OSError):  # missing or half-made folder
        pass
    if path.exists():
        shutil.rmtree(path)
    repo = Repo.init(path)
    repo.create_remote("origin", url)
    return repo


def _explain(exc: GitCommandError, source: str, branch: str) -> str:
    stderr = redact(str(exc.stderr or "")).strip()
    lines = [ln.strip().removeprefix("stderr: ").strip("'") for ln in stderr.splitlines()]
    fatal = [ln for ln in lines if ln.startswith(("fatal:", "error:"))]
    detail = (fatal or [ln for ln in lines if ln] or [f"git exited with {exc.status}"])[0]
    if "couldn't find remote ref" in stderr:
        return f"branch {branch!r} does not exist in {redact(source)}"
    return f"cannot fetch {redact(source)} (branch {branch!r}): {detail}"


def fetch_repo(source: str, branch: str, workdir: Path) -> FetchedRepo:
    """Bring ``branch`` of ``source`` into the cache under ``workdir``; return its head.

    Raises RepoError when the repo is unreachable or the branch is unknown.
    """
    if not branch or branch.startswith("-"):
        raise RepoError(f"invalid branch name {branch!r}", permanent=True)
    url = _remote_url(source)
    path = cache_dir(source, workdir)
    env = {
        "GIT_TERMINAL_PROMPT": "0",  # fail instead of asking for a password
        "GIT_SSH_COMMAND": os.environ.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes"),
    }
    # Serialise fetches of one cache (the worker's activity and a CLI sync may overlap).
    with exclusive_lock(path.with_name(path.name + ".lock")):
        repo = _open_cache(path, url)
        try:
            with repo.git.custom_environment(**env):
                refspec = f"+refs/heads/{branch}:refs/remotes/origin/{branch}"
                repo.git.fetch(
                    "--prune",
                    "--no-tags",
                    "origin",
                    refspec,
                    kill_after_timeout=GIT_TIMEOUT_SECONDS,
                )
                # -B --force: point the local branch at the remote head, discarding local
                # edits (also after a force-push upstream)
                repo.git.checkout("--force", "-B", branch, f"refs/remotes/origin/{branch}")
                repo.git.clean("-ffdx")
        except GitCommandError as exc:
            # from None: git's own message may carry the URL's credentials
            raise RepoError(_explain(exc, source, branch)) from None
        return FetchedRepo(path=path, sha=repo.head.commit.hexsha)
