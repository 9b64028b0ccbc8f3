"""The shared files of an infra repo (provider modules, cloud-init, CI), read from ``infra/``.

A new infra repo needs them next to the rendered pools: the root modules call
``../modules/<provider>``. Paths are repo-relative posix, like ``render_region``'s.
"""

from __future__ import annotations

from pathlib import Path

INFRA_ROOT = Path(__file__).resolve().parents[2] / "infra"
SHARED_DIRS = ("node-pool/modules", "cloud-init", "ci", "scripts")


def skeleton_files(root: Path = INFRA_ROOT) -> dict[str, str]:
    """``infra/<shared dir>/**`` path -> text (no pools, no state, no .terraform)."""
    if not root.is_dir():
        raise FileNotFoundError(f"infra templates not found at {root}")
    files: dict[str, str] = {}
    for sub in SHARED_DIRS:
        for path in sorted((root / sub).rglob("*")):
            relative = path.relative_to(root)
            if path.is_file() and not any(p.startswith(".") for p in relative.parts):
                files[f"infra/{relative.as_posix()}"] = path.read_text()
    return files
