"""Static checks of docker-compose.yml and the Dockerfile.

No Docker engine runs here, so nothing is built or started: these tests read the
files (YAML, with compose's ``x-`` anchors resolved by the loader) and check the
properties a reviewer would otherwise check by eye: the services exist, images
are pinned, every long-running service has a health check, the XPlane processes
are wired to the compose service names, start in dependency order, and no
secret value is written inline.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

SERVICES = {
    "postgresql",
    "temporal",
    "temporal-ui",
    "pdns",
    "xplane-api-1",
    "xplane-api-2",
    "xplane-worker-1",
    "xplane-worker-2",
    "xplane-lb",
}
APIS = ("xplane-api-1", "xplane-api-2")
WORKERS = ("xplane-worker-1", "xplane-worker-2")
SECRET_KEY = re.compile(r"TOKEN|SECRET|PASSWORD|PWD|KEY", re.IGNORECASE)
REFERENCE = re.compile(r"^\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}$")
# name:1.2.3[-variant][@sha256:...], or name:${VAR:-1.2.3}: a full version, never a moving one.
PINNED_TAG = re.compile(
    r"""^[\w.-]+(/[\w.-]+)*:
        (\d+(\.\d+)+ | \$\{[A-Z0-9_]+:-\d+(\.\d+)+\})
        (-[\w.-]+)? (@sha256:[0-9a-f]{64})?$""",
    re.VERBOSE,
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (compose also allows a KEY=VALUE list)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) for item in raw)
    return {k: "" if v is None else str(v) for k, v in raw.items()}


def one_shot_jobs(compose: dict[str, Any]) -> set[str]:
    """Services that run once and exit (migrations, setup): ``restart: "no"`` and every
    dependent waits for ``service_completed_successfully``, so a health check is moot."""
    jobs = {n for n, s in services(compose).items() if str(s.get("restart")) in ("no", "False")}
    for name, svc in services(compose).items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            if dep in jobs:
                assert spec.get("condition") == "service_completed_successfully", (name, dep)
    return jobs


def test_the_services_exist(compose: dict[str, Any]) -> None:
    missing = SERVICES - set(services(compose))
    assert not missing, f"docker-compose.yml lacks {sorted(missing)}"


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for name, svc in services(compose).items():
        assert "image" in svc or "build" in svc, f"{name}: no image and no build"
        image = svc.get("image")
        if image is None:
            continue
        assert ":latest" not in image, f"{name}: image {image!r} uses latest"
        assert PINNED_TAG.match(image), f"{name}: image {image!r} is not pinned to a full version"


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    jobs = one_shot_jobs(compose)
    for name, svc in services(compose).items():
        if name in jobs:
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name}: no healthcheck"


def test_dependencies_wait_for_health(compose: dict[str, Any]) -> None:
    jobs = one_shot_jobs(compose)
    for name, svc in services(compose).items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on must use conditions"
        for dep, spec in deps.items():
            assert dep in services(compose), f"{name} depends on unknown {dep}"
            wanted = "service_completed_successfully" if dep in jobs else "service_healthy"
            assert spec.get("condition") == wanted, f"{name} -> {dep}: {spec}"
    for name in (*APIS, *WORKERS):
        deps = services(compose)[name]["depends_on"]
        assert {"postgresql", "temporal"} <= set(deps), name
        # The schema is migrated once, before any replica starts.
        migrations = [
            d
            for d in deps
            if "migrate" in " ".join(map(str, services(compose)[d].get("command", [])))
        ]
        assert migrations, f"{name} does not wait for the migration job"


def test_xplane_processes_are_wired_to_the_compose_services(compose: dict[str, Any]) -> None:
    for name in (*APIS, *WORKERS):
        svc = services(compose)[name]
        assert "build" in svc, f"{name}: built from the Dockerfile"
        values = env(svc)
        db = values.get("XPLANE_DB_URL", "")
        assert db.startswith("postgresql+psycopg://") and "@postgresql:5432/" in db, (name, db)
        assert values.get("XPLANE_TEMPORAL_ADDRESS") == "temporal:7233", name
    for name in APIS:
        assert services(compose)[name]["command"] == ["xplane", "api"]
        values = env(services(compose)[name])
        assert values.get("XPLANE_API_HOST") == "0.0.0.0", f"{name} must listen beyond loopback"
        for key in ("XPLANE_BOOTSTRAP_TOKEN", "XPLANE_ADMIN_TOKEN", "XPLANE_WEBHOOK_SECRET"):
            assert key in values, f"{name}: {key} not passed"
    for name in WORKERS:
        assert services(compose)[name]["command"] == ["xplane", "worker"]
        values = env(services(compose)[name])
        assert "XPLANE_CONFIG_REPO" in values and "PDNS_API_KEY" in values, name
    pdns = env(services(compose)["pdns"])
    assert pdns.get("PDNS_AUTH_API_KEY", "").startswith("${PDNS_API_KEY")
    assert "--enable-lua-records=yes" in services(compose)["pdns"]["command"]


def test_no_secret_is_written_inline(compose: dict[str, Any]) -> None:
    checked = urls = 0
    for name, svc in services(compose).items():
        for key, val in env(svc).items():
            if SECRET_KEY.search(key):
                checked += 1
                assert REFERENCE.match(val), f"{name}: {key} must be a ${{...}} reference"
        # A password inside a URL must be a reference too.
        for key, val in env(svc).items():
            bare = re.sub(r"\$\{[^}]*\}", "REF", val)
            match = re.search(r"://([^@/]+)@", bare)
            if match:
                urls += 1
                _, _, password = match.group(1).partition(":")
                assert password in ("", "REF"), f"{name}: {key} has an inline password"
    # The checks ran over the real secrets and the DB URLs, not over nothing.
    assert checked >= 8 and urls >= 4
    # Required secrets fail loudly when unset (${VAR:?...}), not silently empty.
    api = env(services(compose)["xplane-api-1"])
    assert api["XPLANE_BOOTSTRAP_TOKEN"].startswith("${XPLANE_BOOTSTRAP_TOKEN:?")


def test_dockerfile_pins_its_base_and_drops_root() -> None:
    lines = [
        line.strip()
        for line in DOCKERFILE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    bases = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    assert bases, "Dockerfile has no FROM"
    for base in bases:
        assert base.startswith("python:3.11"), base
        assert PINNED_TAG.match(base) and "latest" not in base, f"base {base!r} is not pinned"
    users = [line.split()[1] for line in lines if line.upper().startswith("USER ")]
    assert users, "Dockerfile never switches away from root"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    assert any("pip install ." in line for line in lines)
    cmd = [line for line in lines if line.upper().startswith("CMD ")]
    assert cmd and cmd[-1] == 'CMD ["xplane", "api"]'


def test_dockerignore_keeps_secrets_and_state_out_of_the_build() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".env", ".xplane"} <= ignored


def test_a_load_balancer_fronts_every_api_replica(compose: dict[str, Any]) -> None:
    lb = services(compose)["xplane-lb"]
    mounts = [str(v).split(":") for v in lb.get("volumes", [])]
    configs = [ROOT / src for src, dst, *_ in mounts if dst.startswith("/etc/nginx/")]
    assert configs and all(c.is_file() for c in configs), mounts
    text = "\n".join(c.read_text() for c in configs)
    upstreams = set(re.findall(r"^\s*server\s+([\w.-]+):8080\b", text, re.MULTILINE))
    assert upstreams == set(APIS), upstreams
    # A dead replica's request is retried on the next one (POSTs too: heartbeats).
    assert re.search(r"proxy_next_upstream\s+error timeout.*non_idempotent", text)
    assert all(lb["depends_on"][api]["condition"] == "service_healthy" for api in APIS), lb[
        "depends_on"
    ]
    published = [str(p).rsplit(":", 1)[-1] for p in lb.get("ports", [])]
    assert published == ["8080"], "the balancer is the one well-known API port"


def test_agents_are_given_every_api_url(compose: dict[str, Any]) -> None:
    agent = services(compose)["xplane-agent"]
    assert agent["command"][:2] == ["xplane", "agent"]
    urls = env(agent)["XPLANE_SERVER"].split(",")
    assert {f"http://{api}:8080" for api in APIS} <= set(urls), urls
    # The bootstrap token reaches it as a file, never inline.
    assert "/run/secrets/bootstrap_token" in agent["command"]
    assert compose["secrets"]["bootstrap_token"] == {"environment": "XPLANE_BOOTSTRAP_TOKEN"}


def test_workers_start_the_loops_with_no_manual_step(compose: dict[str, Any]) -> None:
    """Nothing in the file starts a workflow: each worker ensures gitops-sync and world-state
    itself (``xplane worker`` does unless told not to), given the config repo."""
    import typer.main

    from xplane.cli.main import app

    worker = typer.main.get_command(app).commands["worker"]  # type: ignore[attr-defined]
    ensure = next(p for p in worker.params if p.name == "ensure_loops")
    assert ensure.default is True
    for name in WORKERS:
        svc = services(compose)[name]
        assert "--no-ensure-loops" not in svc["command"], name
        values = env(svc)
        assert values.get("XPLANE_CONFIG_REPO", "").startswith("${XPLANE_CONFIG_REPO:?"), name
        assert values.get("XPLANE_ENSURE_LOOPS", "1") not in ("0", "false", "no"), name
    for name, svc in services(compose).items():
        command = " ".join(map(str, svc.get("command") or []))
        assert "workflow start" not in command, f"{name} starts a workflow by hand"
