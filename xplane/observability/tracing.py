"""Optional OpenTelemetry tracing of Temporal calls (client, workflows, activities).

Off by default. On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set *and* the
OpenTelemetry SDK and OTLP/HTTP exporter are installed (``pip install
'xplane[otel]'``); the exporter then reads the standard ``OTEL_*`` variables
itself (endpoint, headers, ``OTEL_SERVICE_NAME``). Without the packages the
switch logs one warning and tracing stays off: a missing extra never stops
the control plane.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
_provider_lock = threading.Lock()
_provider_installed = False


def tracing_requested(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(env.get(ENDPOINT_ENV, "").strip())


def tracing_interceptors(environ: Mapping[str, str] | None = None) -> list[Any]:
    """``[TracingInterceptor()]`` when tracing is on, else ``[]``.

    Pass the result as ``interceptors=`` to ``Client.connect``: Temporal then
    applies it to the client's calls and to every worker built on that client.
    """
    if not tracing_requested(environ):
        return []
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from temporalio.contrib.opentelemetry import TracingInterceptor
    except ImportError as exc:
        log.warning(
            "%s is set but OpenTelemetry is not installed (pip install 'xplane[otel]'): "
            "tracing stays off (%s)",
            ENDPOINT_ENV,
            exc,
        )
        return []
    global _provider_installed
    with _provider_lock:
        # One provider per process; an application that set its own keeps it.
        if not _provider_installed and not isinstance(trace.get_tracer_provider(), TracerProvider):
            provider = TracerProvider()
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            trace.set_tracer_provider(provider)
        _provider_installed = True
    return [TracingInterceptor()]
