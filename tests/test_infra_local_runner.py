"""The local CI runner end to end: git push -> post-receive hook -> terraform -> agents -> webhook.

Real pieces only: a bare repo with the hook installed, `git push` from a clone, terraform
applying the `local` module (real `xplane agent`s registering with the real API), and the
signed webhook from infra/ci/notify-xplane.sh arriving at a capture server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import git
import pytest

from tests.support.waiting import until
from tests.test_infra_support import (
    WEBHOOK_SECRET,
    XPLANE,
    CaptureServer,
    ControlPlane,
    agent_pids,
    capture_server,
    kill_agents,
    pid_running,
    start_control_plane,
    tf_env,
    unique_prefix,
)
from xplane.config.models import Region
from xplane.infra.changes import service_of, touched_regions
from xplane.infra.local_runner import install_hook, wait_idle
from xplane.infra.render import render_region
from xplane.infra.skeleton import skeleton_files
from xplane.netutil import free_port
from xplane.webhooks.signature import verify

AUTHOR = git.Actor("ci-test", "ci-test@example.com")


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    control = start_control_plane(tmp_path)
    try:
        yield control
    finally:
        control.stop()


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    with capture_server() as server:
        yield server


def _commit(clone: git.Repo, files: Mapping[str, str | None], message: str) -> str:
    root = Path(clone.working_tree_dir or ".")
    for rel, text in files.items():
        if text is None:
            clone.git.rm("-r", "-q", rel)
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        clone.git.add(rel)
    clone.index.commit(message, author=AUTHOR, committer=AUTHOR)
    clone.git.push("origin", "HEAD:refs/heads/main")
    return str(clone.head.commit.hexsha)


@pytest.mark.slow
def test_push_applies_node_pool_and_signals_xplane(
    tmp_path: Path, plane: ControlPlane, capture: CaptureServer
) -> None:
    bare = tmp_path / "infra.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    state_dir = tmp_path / "agents"
    runner_dir = install_hook(
        bare,
        {
            "TF_CLI_CONFIG_FILE": tf_env(tmp_path)["TF_CLI_CONFIG_FILE"],
            "TF_VAR_api_url": plane.url,
            "TF_VAR_token_file": str(plane.token_file),
            "TF_VAR_state_dir": str(state_dir),
            "TF_VAR_agent_command": XPLANE,
            "XPLANE_WEBHOOK_URL": capture.url,
            "XPLANE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        },
    )
    clone = git.Repo.clone_from(str(bare), tmp_path / "clone")
    region = Region(name="jp", provider="local")
    extra = {"address_prefix": unique_prefix(), "health_port": free_port()}

    def pool(count: int) -> dict[str, str | None]:
        return dict(render_region(region, service="svc-plus", node_count=count, extra_vars=extra))

    def hook_for(commit: str) -> dict[str, object]:
        def arrived() -> dict[str, object] | None:
            for request in capture.requests:
                body = request.body
                if b'"commit":"' + commit.encode() in body:
                    assert verify(WEBHOOK_SECRET, body, request.headers["X-XPlane-Signature-256"])
                    assert request.headers["X-XPlane-Delivery"]
                    return capture.bodies()[capture.requests.index(request)]
            return None

        return dict(until(arrived, f"the webhook of {commit[:8]}", timeout=60))

    try:
        # First push: the shared modules and the pool at 1 node.
        started = time.monotonic()
        first = _commit(clone, {**skeleton_files(), **pool(1)}, "jp pool")
        assert time.monotonic() - started < 10  # the hook does not wait for terraform
        body = hook_for(first)
        assert {k: body[k] for k in ("service", "region", "status")} == {
            "service": "svc-plus",
            "region": "jp",
            "status": "succeeded",
        }
        assert abs(int(str(body["timestamp"])) - time.time()) < 120
        until(lambda: [n["id"] for n in plane.nodes()] == ["jp-0"], "jp-0 registered")
        first_pid = agent_pids(state_dir)["jp-0"]

        # The autoscaler's edit: node_count 1 -> 2. The same state is scaled, not re-created.
        second = _commit(clone, pool(2), "scale jp to 2")
        assert hook_for(second)["status"] == "succeeded"
        until(lambda: len(plane.nodes()) == 2, "jp-1 registered")
        assert agent_pids(state_dir)["jp-0"] == first_pid

        # The region's directory removed: terraform destroy from the saved state.
        pids = agent_pids(state_dir)
        gone: dict[str, str | None] = dict.fromkeys(pool(2))
        third = _commit(clone, gone, "remove jp pool")
        assert hook_for(third)["status"] == "succeeded"
        assert agent_pids(state_dir) == {}
        assert not any(map(pid_running, pids.values()))
        wait_idle(runner_dir)
        log = (runner_dir / "runner.log").read_text()
        assert "terraform destroy succeeded" in log
        assert WEBHOOK_SECRET not in log
    finally:
        try:
            wait_idle(runner_dir, timeout=60)
        finally:
            kill_agents(state_dir)


@pytest.mark.slow
def test_failed_apply_is_reported_failed(
    tmp_path: Path, plane: ControlPlane, capture: CaptureServer
) -> None:
    bare = tmp_path / "infra.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    runner_dir = install_hook(
        bare,
        {
            "TF_CLI_CONFIG_FILE": tf_env(tmp_path)["TF_CLI_CONFIG_FILE"],
            "TF_VAR_api_url": plane.url,
            "TF_VAR_token_file": str(tmp_path / "no-such-token"),  # start.sh refuses
            "TF_VAR_state_dir": str(tmp_path / "agents"),
            "TF_VAR_agent_command": XPLANE,
            "XPLANE_WEBHOOK_URL": capture.url,
            "XPLANE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        },
    )
    clone = git.Repo.clone_from(str(bare), tmp_path / "clone")
    files = render_region(
        Region(name="sg", provider="local"),
        service="svc-plus",
        node_count=1,
        extra_vars={"address_prefix": unique_prefix(), "health_port": free_port()},
    )
    try:
        commit = _commit(clone, {**skeleton_files(), **files}, "sg pool")
        body = until(lambda: capture.bodies() and capture.bodies()[0], "the webhook", timeout=60)
        assert (body["commit"], body["region"], body["status"]) == (commit, "sg", "failed")
        assert plane.nodes() == []
    finally:
        try:
            wait_idle(runner_dir, timeout=60)
        finally:
            kill_agents(tmp_path / "agents")


def test_touched_regions() -> None:
    changed = ["infra/node-pool/jp.tfvars", "infra/node-pool/sg/main.tf", "README.md"]
    assert touched_regions(changed, present=["jp", "sg", "us"]) == ["jp", "sg"]
    # A module change touches every pool of the pushed tree.
    shared = ["infra/node-pool/modules/local/start.sh"]
    assert touched_regions(shared, present=["jp", "us"]) == ["jp", "us"]
    assert touched_regions(["infra/cloud-init/node.yaml"], present=["jp"]) == ["jp"]
    assert touched_regions(["infra/ci/gitlab-ci.yml"], present=["jp"]) == []


def test_service_of_tfvars() -> None:
    assert service_of('region  = "jp"\nservice = "svc-plus" # owner\n') == "svc-plus"
    assert service_of('region = "jp"\n') is None
