"""Every operation of the OpenAPI document, fuzzed by schemathesis against a real
``xplane api`` process (SQLite and PostgreSQL, Temporal dev server behind it).

Valid credentials for each route (bootstrap, node, admin token; webhook bodies
signed after generation), a fixed seed and a bounded number of examples per
operation, in both of its generation modes (valid and invalid input). Fails on any
5xx, an undocumented status code or content type, or a
response that does not match its schema.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from sqlalchemy import Engine

from tests.conftest import POSTGRES_AVAILABLE, _create_pg_database, _drop_pg_database
from tests.support.waiting import until
from tests.test_api_support import ADMIN, BOOT, seed_config
from xplane.netutil import free_port
from xplane.store.db import make_engine
from xplane.temporal.dev import TemporalDevServer
from xplane.webhooks.signature import sign

pytestmark = pytest.mark.slow

import schemathesis  # noqa: E402  (a dev dependency: a missing one fails, never skips)
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.result import Err  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

SECRET = "ci-secret"
GIT_SECRET = "git-secret"
EXAMPLES_PER_OPERATION = 60
# Every other case is steered onto a known service, node or fresh timestamp so the
# generated values reach the store instead of stopping at "unknown service".
_TURN = itertools.count()
# Operator actions (xplane.api.routes_actions): Workflow Updates, see _exercise.
ACTION_PATHS: tuple[str, ...] = ("/nodes/{node_id}/drain", "/nodes/{node_id}/undrain")
ACTION_PATHS += ("/loops/", "/sync", "/regions/{service}/{region}/retry", "/gtm/")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass
class RunningProcess:
    url: str
    engine: Engine
    node_id: str
    node_token: str


@pytest.fixture
def temporal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    # One per database: a Temporal server belongs to one XPlane cluster (one store), and
    # an API on another store refuses to serve it (workers/cluster identity).
    server = TemporalDevServer(tmp_path_factory.mktemp("temporal"), ui=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _database(backend: str, tmp: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp}/xplane.db"
        return
    if not POSTGRES_AVAILABLE:
        pytest.skip("PostgreSQL not running")
    url = _create_pg_database()
    try:
        yield url
    finally:
        _drop_pg_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(
    request: pytest.FixtureRequest, tmp_path: Path, temporal: TemporalDevServer
) -> Iterator[RunningProcess]:
    for db_url in _database(request.param, tmp_path):
        port = free_port()
        env = {
            **os.environ,
            "XPLANE_BOOTSTRAP_TOKEN": BOOT,
            "XPLANE_ADMIN_TOKEN": ADMIN,
            "XPLANE_WEBHOOK_SECRET": SECRET,
            "XPLANE_GIT_WEBHOOK_SECRET": GIT_SECRET,
        }
        xplane = str(Path(sys.executable).parent / "xplane")
        argv = [xplane, "api", "--db", db_url, "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--temporal", temporal.address, "--task-queue", "schemathesis"]
        log_path = tmp_path / "api.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        url = f"http://127.0.0.1:{port}"
        engine = make_engine(db_url)
        try:
            until(partial(_ready, url), "the API process answers /readyz", timeout=60)
            seed_config(engine)  # after the process migrated the schema
            with httpx.Client(base_url=url) as http:
                registered = http.post(
                    "/nodes/register",
                    json={"service": "web", "region": "jp", "address": "10.0.0.1"},
                    headers={"Authorization": f"Bearer {BOOT}"},
                )
            assert registered.status_code == 200, registered.text
            node = registered.json()
            yield RunningProcess(url, engine, node_id=node["node_id"], node_token=node["token"])
        finally:
            engine.dispose()
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            output = log_path.read_text(errors="replace")
            assert "Traceback" not in output, output[-4000:]


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _token_for(path: str, api: RunningProcess) -> str | None:
    if path == "/nodes/register":
        return BOOT
    if path == "/nodes/heartbeat":
        return api.node_token
    if path == "/console/events/stream":
        return None  # an authorised stream stays open: only its refusals are fuzzed
    routes = ("/nodes", "/regions", "/console", "/tokens", "/loops", "/sync", "/gate", "/gtm")
    if path.startswith((*routes, "/actions")):
        return ADMIN
    return None


def _steer(case: Any, api: RunningProcess) -> None:
    """On every other case, point the generated request at things that exist."""
    if next(_TURN) % 2:
        return
    path, body = case.operation.path, case.body
    if isinstance(body, dict) and path == "/nodes/register":
        body.update(service="web", region="jp")
    elif isinstance(body, dict) and path == "/nodes/heartbeat":
        body["node_id"] = api.node_id
    elif isinstance(body, dict) and path == "/webhooks/terraform":
        body.update(service="web", region="jp", timestamp=int(time.time()))
    elif "node_id" in (case.path_parameters or {}):
        case.path_parameters["node_id"] = api.node_id


def _raw(body: Any) -> bytes:
    """The bytes the transport would send for a generated body (JSON, raw or none)."""
    if isinstance(body, bytes):
        return body
    if type(body).__name__ == "NotSet":
        return b""
    return json.dumps(body).encode()


def _exercise(case: Any, api: RunningProcess) -> None:
    """Send ``case`` with the credentials its route needs, then run every check."""
    _steer(case, api)
    path = case.operation.path
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    token = _token_for(path, api)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if path.startswith("/webhooks/"):
        # Sign the bytes actually sent, as CI and GitHub do.
        body = _raw(case.body)
        extra["data"] = body
        headers["Content-Type"] = "application/json"
        if path == "/webhooks/terraform":
            headers["X-XPlane-Signature-256"] = sign(SECRET, body)
        else:
            headers["X-Hub-Signature-256"] = sign(GIT_SECRET, body)
    if not path.startswith(ACTION_PATHS):
        case.call_and_validate(
            base_url=api.url, headers=headers, checks=CHECKS, timeout=30, **extra
        )
        return
    # No worker serves this Temporal: an action that reaches a running workflow is a 503
    # ("nothing was sent") by design. Every other 5xx still fails.
    response = case.call_and_validate(
        base_url=api.url, headers=headers, checks=CHECKS[1:], timeout=30, **extra
    )
    if response.status_code >= 500:
        assert response.status_code == 503, response.text
        assert "no worker polls task queue schemathesis" in response.text, response.text


def test_every_operation_against_a_real_api_process(api: RunningProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # the document itself is invalid: that is a failure
            raise result.err()
        operations.append(result.ok())
    paths = {(op.method.upper(), op.path) for op in operations}
    assert ("POST", "/nodes/heartbeat") in paths and ("POST", "/webhooks/git") in paths
    for operation, mode in itertools.product(operations, GenerationMode):

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,  # the fixed seed: the same cases on every run
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            _exercise(case, api)

        try:
            run()
        except Unsatisfiable:
            # No invalid input exists for an operation without parameters (/healthz).
            assert (
                mode is GenerationMode.NEGATIVE
                and not operation.body
                and not any(True for _ in operation.iter_parameters())
            ), operation
