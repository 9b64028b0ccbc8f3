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


async def run_worker_forever(settings: Settings) -> None:
    from workers.main import build_worker
    from xplane.store.db import make_engine, make_sessionmaker
    from xplane.store.migrate import upgrade
    from xplane.temporal_client import connect

    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    client = await connect(settings.temporal_address, settings.temporal_namespace)
    stop = asyncio.Event()
    install_stop_signals(stop)
    worker = build_worker(client, settings, make_sessionmaker(engine))
    stop_metrics = None
    if os.environ.get("XPLANE_METRICS_PORT"):
        from xplane.observability.metrics import start_metrics_server

        stop_metrics = start_metrics_server(int(os.environ["XPLANE_METRICS_PORT"]))
    try:
        async with worker:
            await stop.wait()
    finally:
        if stop_metrics is not None:
            stop_metrics()
        engine.dispose()
