"""A local CI runner for the infra repo: a git ``post-receive`` hook that applies node pools.

``install_hook`` writes ``hooks/post-receive`` into a bare repo. On a push the hook
(``python -m xplane.infra.local_runner hook``) only queues the pushed ref updates and
starts a detached worker, so ``git push`` returns at once and never fails because of
terraform. The worker (``... run``) takes the queue in push order under a lock and, for
every region whose ``infra/node-pool/<region>.tfvars`` or ``<region>/`` changed,
exports that commit's ``infra/`` and runs ``terraform init`` + ``apply`` (``destroy``
with the previous commit's files when the region's directory was removed), with the
state kept per region in the runner's directory so later applies scale the same pool.
Each result is reported to XPlane by ``infra/ci/notify-xplane.sh``, the script the CI
templates use.

Runner directory layout: ``runner.json`` (settings, 0600), ``queue``, ``runner.log``,
``state/<region>/terraform.tfstate``, ``exports/``, ``pids/`` (running workers).

Under ``xplane up`` the worker watches ``XPLANE_LIFELINE`` and ends itself and its
terraform when ``xplane up`` is gone; terraform gets no secret (not even the webhook's).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import BaseModel, Field

from xplane.infra.changes import ZERO_SHA, regions_in_tree, service_of, touched_regions
from xplane.infra.render import NODE_POOL_DIR
from xplane.infra.skeleton import INFRA_ROOT
from xplane.procs import (
    die_with_parent,
    lifeline,
    lifeline_alive,
    read_pid_file,
    stop,
    without_secrets,
    write_pid_file,
)

NOTIFY_SCRIPT = INFRA_ROOT / "ci" / "notify-xplane.sh"
SETTINGS_FILE = "runner.json"
HOOK_TIMEOUT_S = 15 * 60

HOOK_TEMPLATE = """#!/bin/sh
# Installed by xplane (xplane.infra.local_runner): queue the push for the local CI
# runner, which applies terraform in the background. Never fails the push.
{python} -m xplane.infra.local_runner hook --dir {work_dir} || \\
  echo "xplane: could not queue this push for terraform; see {work_dir}/runner.log" >&2
exit 0
"""


class RunnerSettings(BaseModel):
    """What ``install_hook`` saved for the hook and the worker."""

    repo: Path  # the bare infra repo
    branch: str = "main"
    python: str
    env: dict[str, str] = Field(default_factory=dict)  # TF_VAR_*, XPLANE_WEBHOOK_*, ...


class RegionRun(BaseModel):
    """One region's terraform run for one pushed commit."""

    commit: str
    region: str
    service: str | None
    action: Literal["apply", "destroy"]
    status: Literal["succeeded", "failed"]
    notified: bool = False


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def install_hook(
    bare_repo: Path,
    runner_env: Mapping[str, str],
    *,
    work_dir: Path | None = None,
    branch: str = "main",
    python: str | None = None,
) -> Path:
    """Install the post-receive hook; returns the runner directory.

    ``runner_env`` is the environment of terraform and the webhook call:
    ``TF_VAR_api_url``, ``TF_VAR_token_file``, ``TF_VAR_state_dir``,
    ``TF_VAR_agent_command``, ``XPLANE_WEBHOOK_URL``, ``XPLANE_WEBHOOK_SECRET``, and
    anything else (``TF_CLI_CONFIG_FILE``, ``PATH``). It is saved readable by the owner only.
    """
    bare_repo = bare_repo.resolve()
    if not (bare_repo / "HEAD").is_file() or not (bare_repo / "objects").is_dir():
        raise ValueError(f"{bare_repo} is not a bare git repository")
    directory = (work_dir or bare_repo / "xplane-runner").resolve()
    directory.mkdir(parents=True, exist_ok=True)
    settings = RunnerSettings(
        repo=bare_repo, branch=branch, python=python or sys.executable, env=dict(runner_env)
    )
    path = directory / SETTINGS_FILE
    path.touch(mode=0o600)
    path.chmod(0o600)  # it holds the webhook secret
    path.write_text(settings.model_dump_json(indent=2))
    hook = bare_repo / "hooks" / "post-receive"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(
        HOOK_TEMPLATE.format(
            python=_shell_quote(settings.python), work_dir=_shell_quote(str(directory))
        )
    )
    hook.chmod(0o755)
    return directory


def load_settings(directory: Path) -> RunnerSettings:
    return RunnerSettings.model_validate_json((directory / SETTINGS_FILE).read_text())


# ------------------------------------------------------------------- queue & lock
@contextmanager
def _flock(path: Path, blocking: bool = True) -> Iterator[bool]:
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def enqueue(directory: Path, lines: Sequence[str]) -> None:
    """Append ``old new ref`` lines (post-receive's stdin) to the queue."""
    with _flock(directory / "queue.lock"), (directory / "queue").open("a") as queue:
        queue.writelines(line.strip() + "\n" for line in lines if line.strip())


def _pop(directory: Path) -> str | None:
    with _flock(directory / "queue.lock"):
        queue = directory / "queue"
        lines = queue.read_text().splitlines() if queue.exists() else []
        if not lines:
            return None
        queue.write_text("".join(line + "\n" for line in lines[1:]))
        return lines[0]


def wait_idle(directory: Path, timeout: float = 60.0) -> None:
    """Block until the queue is empty and no worker runs (tests, `xplane infra`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _flock(directory / "worker.lock", blocking=False) as free:
            queue = directory / "queue"
            if free and (not queue.exists() or not queue.read_text().strip()):
                return
        time.sleep(0.1)
    raise TimeoutError(f"local runner in {directory} still busy after {timeout:.0f}s")


# ---------------------------------------------------------------------- git & tf
def _clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    # Hooks run with GIT_DIR & co. set for the receiving repo; the runner names it itself.
    # The pusher's secrets (admin token, DB URL, ...) are not passed on: only ``extra``'s.
    env = {k: v for k, v in without_secrets().items() if not k.startswith("GIT_")}
    env.update(extra)
    env.setdefault("TF_IN_AUTOMATION", "1")
    env.setdefault("TF_INPUT", "0")
    return env


def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", f"--git-dir={repo}", *args],
        check=True,
        capture_output=True,
        env=_clean_env({}),
    ).stdout


def _tree(repo: Path, commit: str) -> list[str]:
    out = _git(repo, "ls-tree", "-r", "--name-only", commit, "--", "infra")
    return out.decode().splitlines()


def _changed(repo: Path, old: str, new: str) -> list[str]:
    if old == ZERO_SHA:
        return _tree(repo, new)
    out = _git(repo, "diff", "--name-only", "--no-renames", old, new, "--", "infra")
    return out.decode().splitlines()


def _export(repo: Path, commit: str, into: Path) -> None:
    """``infra/`` of ``commit`` into ``into`` (a plain copy: the repo's index is untouched)."""
    data = _git(repo, "archive", "--format=tar", commit, "infra")
    with tarfile.open(fileobj=BytesIO(data)) as archive:
        archive.extractall(into, filter="data")


class Runner:
    """Applies the queued pushes of one runner directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.settings = load_settings(directory)
        self.repo = self.settings.repo

    def log(self, message: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with (self.dir / "runner.log").open("a") as out:
            out.write(f"{stamp} {message}\n")

    def work(self) -> list[RegionRun]:
        """Drain the queue in push order (one worker at a time)."""
        runs: list[RegionRun] = []
        with _flock(self.dir / "worker.lock"):
            while (line := _pop(self.dir)) is not None:
                try:
                    runs.extend(self.process(line))
                except Exception as exc:  # one bad push must not stop the queue
                    self.log(f"push {line!r} failed: {type(exc).__name__}: {exc}")
        return runs

    def process(self, line: str) -> list[RegionRun]:
        old, new, ref = line.split()
        if ref != f"refs/heads/{self.settings.branch}" or new == ZERO_SHA:
            self.log(f"ignoring {ref} {new[:12]}")
            return []
        present = regions_in_tree(_tree(self.repo, new))
        regions = touched_regions(_changed(self.repo, old, new), present)
        self.log(f"push {old[:12]}..{new[:12]}: regions {', '.join(regions) or 'none'}")
        runs = []
        for region in regions:
            if region in present:
                runs.append(self.run_region(new, new, region, "apply"))
            elif old != ZERO_SHA and region in regions_in_tree(_tree(self.repo, old)):
                runs.append(self.run_region(new, old, region, "destroy"))
            else:
                self.log(f"{region}: no root module {NODE_POOL_DIR}/{region}/ in either commit")
        return runs

    def run_region(
        self, commit: str, source: str, region: str, action: Literal["apply", "destroy"]
    ) -> RegionRun:
        """terraform ``action`` for ``region`` with the files of ``source``; report ``commit``."""
        exports = self.dir / "exports"
        exports.mkdir(exist_ok=True)
        state = self.dir / "state" / region
        state.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{region}-{commit[:12]}-", dir=exports) as tmp:
            _export(self.repo, source, Path(tmp))
            root = Path(tmp) / NODE_POOL_DIR / region
            tfvars = root.parent / f"{region}.tfvars"
            service = service_of(tfvars.read_text()) if tfvars.is_file() else None
            ok = self._terraform(root, state / "terraform.tfstate", region, action, commit)
        status: Literal["succeeded", "failed"] = "succeeded" if ok else "failed"
        self.log(f"{region}: terraform {action} {status} at {commit[:12]}")
        run = RegionRun(commit=commit, region=region, service=service, action=action, status=status)
        run.notified = self._notify(run)
        return run

    def _terraform(self, root: Path, state: Path, region: str, action: str, commit: str) -> bool:
        tf = self.settings.env.get("TERRAFORM", shutil.which("terraform") or "terraform")
        var_file = f"-var-file=../{region}.tfvars"
        steps = [
            ["init", "-input=false", "-no-color", "-reconfigure", f"-backend-config=path={state}"],
            (
                ["apply", "-auto-approve", "-input=false", "-no-color", var_file]
                if action == "apply"
                else ["destroy", "-auto-approve", "-input=false", "-no-color", var_file]
            ),
        ]
        # The commit as a variable: the local module revives dead agents on a new revision.
        # Terraform (and the agents it starts) never needs the webhook secret: only _notify.
        tf_env = {k: v for k, v in self.settings.env.items() if k != "XPLANE_WEBHOOK_SECRET"}
        env = _clean_env({**tf_env, "TF_VAR_revision": commit})
        with (self.dir / "runner.log").open("ab") as out:
            for step in steps:
                self.log(f"{region}: terraform {step[0]}")
                out.flush()
                try:
                    done = subprocess.run(
                        [tf, f"-chdir={root}", *step],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=env,
                        timeout=HOOK_TIMEOUT_S,
                        preexec_fn=die_with_parent(),  # a killed runner leaves no terraform
                    )
                except (OSError, subprocess.TimeoutExpired) as exc:
                    self.log(f"{region}: terraform {step[0]}: {exc}")
                    return False
                if done.returncode != 0:
                    self.log(f"{region}: terraform {step[0]} exited {done.returncode}")
                    return False
        return True

    def _notify(self, run: RegionRun) -> bool:
        env = self.settings.env
        if not env.get("XPLANE_WEBHOOK_URL") or not env.get("XPLANE_WEBHOOK_SECRET"):
            self.log(f"{run.region}: no XPLANE_WEBHOOK_URL/SECRET: XPlane not notified")
            return False
        if run.service is None:
            self.log(f"{run.region}: no service in {run.region}.tfvars: XPlane not notified")
            return False
        args = ["--commit", run.commit, "--service", run.service, "--region", run.region]
        args += ["--status", run.status, "--run-url", f"file://{self.dir / 'runner.log'}"]
        with (self.dir / "runner.log").open("ab") as out:
            done = subprocess.run(
                ["sh", str(NOTIFY_SCRIPT), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_clean_env(env),
                timeout=120,
            )
        return done.returncode == 0


# ---------------------------------------------------------------------------- cli
def start_runner(directory: Path) -> None:
    """Start a detached worker on ``directory``'s queue (it logs to ``runner.log``)."""
    settings = load_settings(directory)
    with (directory / "runner.log").open("ab") as log:
        subprocess.Popen(
            [settings.python, "-m", "xplane.infra.local_runner", "run", "--dir", str(directory)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the hook and git's process group
            env=_clean_env({}),
            cwd=directory,
        )


def _watch_lifeline(directory: Path, every: float = 0.5) -> None:
    """When the process in ``XPLANE_LIFELINE`` (``xplane up``) is gone, end this worker's
    process group (it and its terraform) at once: the worker outlives the hook that
    started it, so no parent-death signal can reach it."""
    if lifeline() is None or os.getpgid(0) != os.getpid():
        return

    def watch() -> None:
        while lifeline_alive():
            time.sleep(every)
        with contextlib.suppress(OSError), (directory / "runner.log").open("a") as out:
            out.write(f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} xplane up is gone: stopping\n")
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def _run(directory: Path) -> int:
    """The worker: drain the queue, recorded in ``pids/<pid>.pid`` while it runs."""
    _watch_lifeline(directory)
    pid_file = directory / "pids" / f"{os.getpid()}.pid"
    write_pid_file(pid_file, os.getpid())
    try:
        runs = Runner(directory).work()
    finally:
        pid_file.unlink(missing_ok=True)
    print(json.dumps([run.model_dump() for run in runs]))
    return 0 if all(run.status == "succeeded" for run in runs) else 1


def stop_workers(directory: Path) -> int:
    """Stop the workers (and their terraform) still running in ``directory``."""
    pid_files = sorted((directory / "pids").glob("*.pid"))
    refs = [ref for path in pid_files if (ref := read_pid_file(path)) is not None]
    count = stop(refs, group=True)
    for path in pid_files:
        path.unlink(missing_ok=True)
    return count


def _hook(directory: Path) -> int:
    """post-receive: queue stdin's ref updates, start a detached worker, return at once."""
    enqueue(directory, sys.stdin.read().splitlines())
    start_runner(directory)
    print("xplane: push queued for terraform (log: " + str(directory / "runner.log") + ")")
    return 0


cli = typer.Typer(
    help="The infra repo's local CI runner.", no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False,
)  # fmt: skip
DirOption = Annotated[Path, typer.Option("--dir", help="runner directory")]


@cli.command("hook", help="post-receive: queue the pushed ref updates, start a worker")
def _hook_command(directory: DirOption) -> None:
    raise typer.Exit(_hook(directory))


@cli.command("run", help="apply the queued pushes (the detached worker)")
def _run_command(directory: DirOption) -> None:
    raise typer.Exit(_run(directory))


def main(argv: Sequence[str] | None = None) -> None:
    cli(
        args=list(argv) if argv is not None else None,
        prog_name="python -m xplane.infra.local_runner",
    )


if __name__ == "__main__":
    main()
