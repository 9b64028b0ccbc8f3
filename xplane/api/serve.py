"""Run the API on uvicorn: in the foreground (``xplane api``) or in a thread (tests, ``up``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from xplane.api.http_limits import DEFAULT_MAX_HEADER_BYTES, header_limited_protocol
from xplane.netutil import free_port, wait_for_port


def uvicorn_config(app: FastAPI, host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    # No uvicorn access log: heartbeats would flood it; errors are logged by the app.
    settings = getattr(app.state, "settings", None)
    max_header_bytes = getattr(settings, "max_header_bytes", DEFAULT_MAX_HEADER_BYTES)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        http=header_limited_protocol(max_header_bytes),
    )


def serve_forever(app: FastAPI, host: str, port: int) -> None:
    uvicorn.Server(uvicorn_config(app, host, port)).run()


@dataclass
class RunningApi:
    app: FastAPI
    url: str


@contextmanager
def serve_in_thread(
    app: FastAPI, host: str = "127.0.0.1", port: int | None = None
) -> Iterator[RunningApi]:
    """Serve ``app`` on a (free) loopback port until the block ends, then stop cleanly."""
    port = port or free_port(host)
    server = uvicorn.Server(uvicorn_config(app, host, port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"xplane-api-{port}", daemon=True)
    thread.start()
    try:
        wait_for_port(host, port, timeout=15)
        yield RunningApi(app=app, url=f"http://{host}:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=15)
