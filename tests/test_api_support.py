"""Helpers for the API tests (no tests here): a seeded config and a live API server.

Creating a PostgreSQL database and its schema takes seconds on a busy machine,
so the API test modules share one database per backend (:func:`module_database`)
and empty it before each test (:func:`reset_database`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

import xplane.store.tables  # noqa: F401  (registers every table)
from tests.conftest import POSTGRES_AVAILABLE, _create_pg_database, _drop_pg_database
from xplane.api import ApiSettings, create_app
from xplane.api.actions import WorkflowActions
from xplane.api.context import NodeNotifier
from xplane.api.serve import serve_in_thread
from xplane.config.models import ConfigTree, GtmPolicy, GtmRegion, Region
from xplane.store.config_store import save_revision
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction
from xplane.store.events import AUDIT_PREFIX, EventRow
from xplane.store.node_tables import MetricSampleRow, NodeRow

BOOT = "boot-secret"
ADMIN = "admin-secret"
JP_BOOT = "jp-only-secret"
DB_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def module_database(backend: str, tmp_dir: str) -> Iterator[tuple[str, Engine]]:
    """(url, engine) of a fresh database with every table, dropped afterwards."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_dir}/xplane.db"
    elif not POSTGRES_AVAILABLE:
        pytest.skip("PostgreSQL not running")
    else:
        url = _create_pg_database()
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    try:
        yield url, engine
    finally:
        engine.dispose()
        if backend != "sqlite":
            _drop_pg_database(url)


def reset_database(engine: Engine) -> None:
    """Empty every table, then seed the config."""
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    seed_config(engine)


def seed_config(engine: Engine) -> None:
    """Service ``web`` in regions jp and sg-east; service ``api`` in jp."""
    tree = ConfigTree(
        regions={name: Region(name=name) for name in ("jp", "sg-east")},
        gtm={
            "web": GtmPolicy(
                service="web",
                domain="web.svc.plus",
                regions=[GtmRegion(name="jp"), GtmRegion(name="sg-east")],
            ),
            "api": GtmPolicy(service="api", domain="api.svc.plus", regions=[GtmRegion(name="jp")]),
        },
    )
    with transaction(make_sessionmaker(engine)) as session:
        save_revision(session, "a" * 40, tree, "test")


@dataclass
class Api:
    url: str
    engine: Engine
    http: httpx.Client
    app: Any

    def register(self, token: str = BOOT, **body: Any) -> httpx.Response:
        payload = {"service": "web", "region": "jp", "address": "10.0.0.1", **body}
        return self.http.post("/nodes/register", json=payload, headers=bearer(token))

    def registered(self, **body: Any) -> tuple[str, str]:
        """Register and return (node_id, token); fails the test on a non-200."""
        response = self.register(**body)
        assert response.status_code == 200, response.text
        data = response.json()
        return data["node_id"], data["token"]

    def heartbeat(self, node_id: str, token: str, **body: Any) -> httpx.Response:
        payload = {"node_id": node_id, "cpu": 0.5, "rtt_ms": 12.0, "error_rate": 0.01, **body}
        return self.http.post("/nodes/heartbeat", json=payload, headers=bearer(token))

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, headers=bearer(ADMIN), **kwargs)

    def counts(self) -> tuple[int, int, int]:
        """(nodes, metric samples, events) rows; not audit events (every mutating call,
        refused or failed too, leaves one)."""
        with self.engine.connect() as conn:
            nodes, samples = (
                conn.scalar(select(func.count()).select_from(table)) or 0
                for table in (NodeRow, MetricSampleRow)
            )
            events = conn.scalar(
                select(func.count())
                .select_from(EventRow)
                .where(~EventRow.kind.startswith(AUDIT_PREFIX))
            )
            return nodes, samples, events or 0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def settings_for(db_url: str, **overrides: Any) -> ApiSettings:
    values: dict[str, Any] = {
        "db_url": db_url,
        "bootstrap_token": BOOT,
        "admin_token": ADMIN,
        "region_bootstrap_tokens": {"JP": JP_BOOT},
        **overrides,
    }
    return ApiSettings(**values)


@contextmanager
def running_api(
    engine: Engine,
    db_url: str,
    notifier: NodeNotifier | None = None,
    actions: WorkflowActions | None = None,
    **overrides: Any,
) -> Iterator[Api]:
    app = create_app(settings_for(db_url, **overrides), notifier=notifier, actions=actions)
    with serve_in_thread(app) as served, httpx.Client(base_url=served.url, timeout=30) as http:
        yield Api(url=served.url, engine=engine, http=http, app=app)
