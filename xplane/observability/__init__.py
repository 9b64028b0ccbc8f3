"""Observability: Prometheus metrics, structured JSON logs, optional OpenTelemetry tracing."""
