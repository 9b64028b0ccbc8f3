"""The live inputs of the GTM brain, read from the store (for ``xplane gtm apply``)."""

from __future__ import annotations

from datetime import timedelta

from xplane.config.models import ConfigTree
from xplane.domain import WorldSnapshot
from xplane.store import nodes as node_store
from xplane.store.config_store import current_config
from xplane.store.db import db_url_from_env, make_engine, make_sessionmaker, utcnow
from xplane.store.pools import pool_snapshots


def live_inputs(db_url: str | None, timeout: timedelta) -> tuple[ConfigTree, WorldSnapshot]:
    """The config in force and the world as the store sees it now (down after ``timeout``)."""
    engine = make_engine(db_url_from_env(db_url))
    now = utcnow()
    try:
        with make_sessionmaker(engine)() as session:
            config = current_config(session)
            if config is None:
                raise LookupError("no config revision in the store yet: run `xplane sync --once`")
            world = node_store.world_snapshot(session, now, timeout)
            world.pools = pool_snapshots(session)
    finally:
        engine.dispose()
    return config, world
