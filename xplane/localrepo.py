"""Local git repositories for the embedded default (``xplane up``) and tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import git

AUTHOR = git.Actor("xplane", "xplane@localhost")


def seed_repo(path: Path, source_dir: Path, message: str) -> str:
    """Create a git repo at ``path`` holding a copy of ``source_dir`` (once) and return HEAD."""
    if (path / ".git").exists():
        return git.Repo(path).head.commit.hexsha
    path.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source_dir, path, dirs_exist_ok=True)
    repo = git.Repo.init(path, initial_branch="main")
    repo.git.add(A=True)
    repo.index.commit(message, author=AUTHOR, committer=AUTHOR)
    return repo.head.commit.hexsha


def example_dir(name: str) -> Path:
    """A folder of the repo's ``example/`` (XPlane runs from a checkout)."""
    here = Path(__file__).resolve().parent.parent / "example" / name
    if not here.is_dir():
        raise FileNotFoundError(f"example/{name} not found next to the xplane package ({here})")
    return here
