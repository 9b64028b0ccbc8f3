"""The CI side: notify-xplane.sh's signed webhook, changed-regions.sh, the CI templates,
cloud-init rendered by terraform's own templatefile(), the shell scripts' syntax."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import git
import pytest
import sqlalchemy as sa
import yaml

from tests.test_infra_support import (
    ROOT,
    WEBHOOK_SECRET,
    capture_server,
    start_control_plane,
    tf_env,
)
from xplane.api.routes_webhooks import TerraformWebhook
from xplane.webhooks.signature import verify

CI = ROOT / "infra" / "ci"
NOTIFY = CI / "notify-xplane.sh"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _notify(url: str, *args: str, secret: str = WEBHOOK_SECRET) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XPLANE_WEBHOOK_URL": url, "XPLANE_WEBHOOK_SECRET": secret}
    return subprocess.run(
        ["sh", str(NOTIFY), *args], env=env, capture_output=True, text=True, timeout=60
    )


ARGS = ("--commit", COMMIT, "--service", "svc-plus", "--region", "jp", "--status", "succeeded")


def test_notify_signs_the_body_xplane_verifies() -> None:
    with capture_server() as capture:
        done = _notify(capture.url, *ARGS, "--run-url", 'https://ci/run/1?a="b"')
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("delivered") == 1
        (request,) = capture.requests
    assert verify(WEBHOOK_SECRET, request.body, request.headers["X-XPlane-Signature-256"])
    assert not verify("another-secret", request.body, request.headers["X-XPlane-Signature-256"])
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-XPlane-Delivery"].startswith("jp-0123456789ab-")
    hook = TerraformWebhook.model_validate(json.loads(request.body))  # XPlane's own model
    assert (hook.commit, hook.service, hook.region, hook.status) == (
        COMMIT,
        "svc-plus",
        "jp",
        "succeeded",
    )
    assert hook.run_url == 'https://ci/run/1?a="b"'
    assert abs(hook.timestamp.timestamp() - time.time()) < 60


NOTIFY_TOOLS = ("openssl", "curl", "od", "tr", "cut", "sed", "grep", "date")


def _argv_recording_path(tmp_path: Path) -> tuple[str, Path]:
    """A PATH holding only shims of the tools notify-xplane.sh runs; each shim appends
    its argv to a log, then runs the real tool (an unshimmed tool is not found)."""
    shims, log = tmp_path / "shims", tmp_path / "argv.log"
    shims.mkdir()
    for tool in NOTIFY_TOOLS:
        real = shutil.which(tool)
        assert real, f"{tool} is needed by notify-xplane.sh"
        (shims / tool).write_text(
            f"#!/bin/sh\nprintf '%s\\n' \"{tool} $*\" >> '{log}'\nexec '{real}' \"$@\"\n"
        )
        (shims / tool).chmod(0o755)
    return str(shims), log


@pytest.mark.parametrize(
    "secret",
    [
        WEBHOOK_SECRET,
        "k" * 64,  # exactly one block
        "long-" + "x" * 200,  # longer than a block: hashed first
        "späcial %s \\n 'quoted' \"too\" $HOME",
    ],
)
def test_notify_keeps_the_secret_off_every_command_line(tmp_path: Path, secret: str) -> None:
    path, log = _argv_recording_path(tmp_path)
    with capture_server() as capture:
        env = {
            "PATH": path,
            "XPLANE_WEBHOOK_URL": capture.url,
            "XPLANE_WEBHOOK_SECRET": secret,
        }
        done = subprocess.run(
            ["/bin/sh", str(NOTIFY), *ARGS], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        (request,) = capture.requests
    assert verify(secret, request.body, request.headers["X-XPlane-Signature-256"])
    argv = log.read_text()
    assert "openssl" in argv and "curl" in argv  # the shims did record
    assert secret not in argv
    assert secret.encode().hex() not in argv.replace(" ", "")


def test_notify_fails_when_refused_and_checks_its_arguments() -> None:
    with capture_server(status=401) as capture:
        refused = _notify(capture.url, *ARGS)
        assert refused.returncode != 0 and len(capture.requests) == 1  # 4xx: no retry
        bad_status = _notify(capture.url, *ARGS[:-1], "done")
        assert bad_status.returncode == 2 and "--status must be" in bad_status.stderr
        bad_commit = _notify(capture.url, "--commit", "HEAD", *ARGS[2:])
        assert bad_commit.returncode == 2 and "hex commit sha" in bad_commit.stderr
        no_secret = _notify(capture.url, *ARGS, secret="")
        assert no_secret.returncode == 2 and "XPLANE_WEBHOOK_SECRET" in no_secret.stderr
        assert len(capture.requests) == 1


@pytest.mark.slow
def test_notify_is_accepted_by_the_real_api(tmp_path: Path) -> None:
    plane = start_control_plane(tmp_path)
    try:
        # No workflow client here: the API stores the delivery (pending, for a replica
        # that has one) and acknowledges it at once.
        done = _notify(f"{plane.url}/webhooks/terraform", *ARGS)
        assert done.returncode == 0, done.stdout + done.stderr
        assert '"status":"accepted"' in done.stdout.replace(" ", "")
    finally:
        plane.stop()
    engine = sa.create_engine(plane.db_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT kind, region FROM events")).all()
    engine.dispose()
    assert ("webhook.terraform", "jp") in [tuple(row) for row in rows]


def test_changed_regions_script(tmp_path: Path) -> None:
    repo = git.Repo.init(tmp_path / "r", initial_branch="main")
    root = Path(repo.working_tree_dir or "")
    actor = git.Actor("t", "t@example.com")

    def commit(files: dict[str, str]) -> str:
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        repo.git.add(A=True)
        return str(repo.index.commit("c", author=actor, committer=actor).hexsha)

    def changed(base: str, head: str) -> list[str]:
        out = subprocess.run(
            ["sh", str(CI / "changed-regions.sh"), base, head],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.split()

    first = commit(
        {
            "infra/node-pool/modules/local/main.tf": "",
            "infra/node-pool/jp/main.tf": "",
            "infra/node-pool/jp.tfvars": "node_count = 1\n",
            "infra/node-pool/sg/main.tf": "",
            "infra/node-pool/sg.tfvars": "node_count = 0\n",
        }
    )
    assert changed("", first) == ["jp", "sg"]  # first push: everything
    second = commit({"infra/node-pool/jp.tfvars": "node_count = 2\n", "README.md": "x"})
    assert changed(first, second) == ["jp"]
    third = commit({"infra/node-pool/modules/local/main.tf": "# changed\n"})
    assert changed(second, third) == ["jp", "sg"]


def test_ci_templates() -> None:
    github = yaml.safe_load((CI / "github-actions.yml").read_text())
    trigger = github.get("on", github.get(True))  # YAML 1.1 reads `on` as true
    assert "infra/node-pool/**" in trigger["push"]["paths"]
    apply_steps = github["jobs"]["apply"]["steps"]
    scripts = "\n".join(step.get("run", "") for step in apply_steps)
    assert "terraform -chdir=" in scripts and "notify-xplane.sh" in scripts
    assert "always()" in apply_steps[-1]["if"]  # a failed apply is reported too
    gitlab = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
    job = gitlab["node-pool"]
    assert "infra/node-pool/**/*" in job["rules"][0]["changes"]
    script = "\n".join(job["script"])
    assert "changed-regions.sh" in script and "notify-xplane.sh" in script


def test_cloud_init_renders_with_terraform_templatefile(tmp_path: Path) -> None:
    template = ROOT / "infra" / "cloud-init" / "node.yaml"
    call = (
        f'templatefile("{template}", {{api_url = "https://cp.example:8443", '
        'bootstrap_token = "tok: #\\"quoted", service = "svc-plus", region = "jp", '
        'node_id = "jp-0", agent_version = "0.3.1"})'
    )
    done = subprocess.run(
        ["terraform", "console"],
        input=f"jsonencode({call})\n",
        cwd=tmp_path,
        env=tf_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rendered = json.loads(json.loads(done.stdout))
    assert rendered.startswith("#cloud-config\n")
    doc = yaml.safe_load(rendered)
    assert {"containerd", "prometheus-node-exporter", "prometheus-blackbox-exporter"} <= set(
        doc["packages"]
    )
    files = {f["path"]: f for f in doc["write_files"]}
    token = files["/etc/xplane/bootstrap-token"]
    assert token["content"] == 'tok: #"quoted' and token["permissions"] == "0600"
    env = files["/etc/xplane/agent.env"]["content"]
    assert "XPLANE_SERVER=https://cp.example:8443" in env and "XPLANE_NODE_ID=jp-0" in env
    unit = files["/etc/systemd/system/xplane-agent.service"]["content"]
    assert "EnvironmentFile=/etc/xplane/agent.env" in unit
    assert "--token-file ${XPLANE_TOKEN_FILE}" in unit  # systemd's, not terraform's
    assert "tok:" not in unit  # the token never on a command line
    assert "xplane==0.3.1" in files["/usr/local/sbin/install-xplane"]["content"]
    assert "nerdctl" in files["/usr/local/sbin/install-nerdctl"]["content"]
    enabled = [cmd[-1] for cmd in doc["runcmd"] if cmd[:2] == ["systemctl", "enable"]]
    assert enabled == [
        "containerd.service",
        "prometheus-node-exporter.service",
        "prometheus-blackbox-exporter.service",
        "xplane-agent.service",
    ]


@pytest.mark.parametrize(
    "script",
    sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "infra").rglob("*.sh")),
)
def test_shell_scripts_parse(script: str) -> None:
    shell = "bash" if (ROOT / script).read_text().startswith("#!/usr/bin/env bash") else "sh"
    done = subprocess.run([shell, "-n", str(ROOT / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_terraform_fmt_recursive(tmp_path: Path) -> None:
    done = subprocess.run(
        ["terraform", "fmt", "-check", "-recursive", "-diff", str(ROOT / "infra")],
        env=tf_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
