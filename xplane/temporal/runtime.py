"""Long-running processes shared by ``xplane worker`` and ``xplane up``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from xplane.settings import Settings


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGINT/SIGTERM set ``stop`` so the caller can shut down in order."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


async def run_worker_forever(settings: Settings, *, ensure_loops: bool = True) -> None:
    """Migrate, check the store's cluster id against Temporal's (raises
    :class:`xplane.temporal.cluster.ClusterMismatch` before taking any task), ensure the
    singleton loops, then poll until SIGINT/SIGTERM."""
    from workers.loops import ensure_loops as ensure
    from workers.main import build_worker
    from xplane.store.cluster import store_cluster_id
    from xplane.store.db import make_engine, make_sessionmaker
    from xplane.store.migrate import upgrade
    from xplane.temporal.client import connect
    from xplane.temporal.cluster import claim_cluster

    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    sessions = make_sessionmaker(engine)
    client = await connect(settings.temporal_address, settings.temporal_namespace)
    try:
        await claim_cluster(client, store_cluster_id(sessions), settings.task_queue)
    except BaseException:
        engine.dispose()
        raise
    stop = asyncio.Event()
    install_stop_signals(stop)
    worker = build_worker(client, settings, sessions)
    from xplane.observability.metrics import worker_metrics_server

    # /metrics on XPLANE_METRICS_PORT, behind XPLANE_METRICS_TOKEN when that is set.
    stop_metrics = worker_metrics_server(os.environ)
    try:
        async with worker:
            if ensure_loops:
                await ensure(client, settings)
            await stop.wait()
    finally:
        if stop_metrics is not None:
            stop_metrics()
        engine.dispose()
