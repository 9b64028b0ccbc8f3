"""JSON logs (with Temporal context from a real worker), secret redaction, tracing switch."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from xplane.observability.logging import (
    CHATTY_HTTP_LOGGERS,
    REDACTED,
    configure_logging,
    configure_logging_from_env,
)
from xplane.observability.tracing import tracing_interceptors, tracing_requested

ADMIN_SECRET = "adm-" + uuid.uuid4().hex
REGION_SECRET = "boot-jp-" + uuid.uuid4().hex


@contextmanager
def logging_to_buffer(level: str) -> Iterator[io.StringIO]:
    """Root logging to a buffer as JSON at ``level``; restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buffer = io.StringIO()
    configure_logging(level, json=True, stream=buffer)
    try:
        yield buffer
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        for name in CHATTY_HTTP_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        configure_logging_restore_temporal()


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    with logging_to_buffer("DEBUG") as buffer:
        yield buffer


def configure_logging_restore_temporal() -> None:
    # configure_logging(json=True) moves Temporal's info from the message to fields.
    import temporalio.activity
    import temporalio.workflow

    temporalio.workflow.logger.workflow_info_on_message = True
    temporalio.activity.logger.activity_info_on_message = True


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_one_json_object_per_line_with_extras(captured: io.StringIO) -> None:
    log = logging.getLogger("xplane.test")
    log.info("weights for %s: %d regions", "svc-plus", 3, extra={"service": "svc-plus"})
    log.debug("second\nline kept inside one JSON string")
    logging.getLogger("xplane.quiet").log(5, "below DEBUG: not written")
    first, second = lines(captured)
    assert first["message"] == "weights for svc-plus: 3 regions"
    assert first["level"] == "INFO" and first["logger"] == "xplane.test"
    assert first["service"] == "svc-plus"
    assert first["time"].endswith("+00:00")
    assert "workflow_id" not in first  # not from Temporal: no Temporal fields
    assert second["message"].count("\n") == 1


def test_secrets_are_redacted_from_messages_and_tracebacks(
    captured: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XPLANE_ADMIN_TOKEN", ADMIN_SECRET)
    monkeypatch.setenv("XPLANE_BOOTSTRAP_TOKEN_JP_EAST", REGION_SECRET)
    log = logging.getLogger("xplane.test")
    log.warning("auth header was Bearer %s", ADMIN_SECRET)
    log.info(f"region token {REGION_SECRET} and admin {ADMIN_SECRET}")
    try:
        raise RuntimeError(f"request failed with token={ADMIN_SECRET}")
    except RuntimeError:
        log.exception("call failed")
    out = captured.getvalue()
    assert ADMIN_SECRET not in out and REGION_SECRET not in out
    first, second, third = lines(captured)
    assert first["message"] == f"auth header was Bearer {REDACTED}"
    assert second["message"] == f"region token {REDACTED} and admin {REDACTED}"
    assert f"token={REDACTED}" in third["exception"]
    assert "RuntimeError" in third["exception"]


def test_temporal_api_key_and_database_url_passwords_are_redacted(
    captured: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    api_key = "tmprl-" + uuid.uuid4().hex
    monkeypatch.setenv("XPLANE_TEMPORAL_API_KEY", api_key)
    log = logging.getLogger("xplane.test")
    log.info("connecting to Temporal Cloud with key %s", api_key)
    log.warning("store at postgresql+psycopg://xplane:pg-pass-123@db.internal:5432/xplane")
    try:
        raise RuntimeError("cannot connect to postgresql://admin:s3cr%40t@10.0.0.5/x")
    except RuntimeError:
        log.exception("store down")
    log.info("no password: postgresql://xplane@db/x and http://host:8080/a@b")
    out = captured.getvalue()
    assert api_key not in out and "pg-pass-123" not in out and "s3cr%40t" not in out
    key, url, error, plain = lines(captured)
    assert key["message"] == f"connecting to Temporal Cloud with key {REDACTED}"
    assert url["message"] == "store at postgresql+psycopg://xplane:***@db.internal:5432/xplane"
    assert "postgresql://admin:***@10.0.0.5/x" in error["exception"]
    assert plain["message"] == "no password: postgresql://xplane@db/x and http://host:8080/a@b"


def test_agent_log_lines_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    from xplane.agent.log import NodeIdHolder, agent_formatter, remember_secret

    node_token = "node-" + uuid.uuid4().hex
    monkeypatch.setenv("XPLANE_BOOTSTRAP_TOKEN", REGION_SECRET)
    remember_secret(node_token)
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(agent_formatter(NodeIdHolder()))
    log = logging.getLogger(f"xplane.agent.test-{uuid.uuid4().hex}")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    log.warning(f"heartbeat with {node_token} refused")
    log.info(
        "registered", extra={"fields": {"server": "https://u:pw-9@cp.example", "t": [node_token]}}
    )
    try:
        raise RuntimeError(f"bootstrap {REGION_SECRET} rejected")
    except RuntimeError:
        log.exception("register failed")
    out = buffer.getvalue()
    assert node_token not in out and REGION_SECRET not in out and "pw-9" not in out
    refused, registered, failed = lines(buffer)
    assert refused["msg"] == f"heartbeat with {REDACTED} refused"
    assert registered["server"] == "https://u:***@cp.example" and registered["t"] == [REDACTED]
    assert f"bootstrap {REDACTED} rejected" in failed["error"]


def test_one_formatter_writes_control_plane_and_agent_lines() -> None:
    from xplane.agent.log import NodeIdHolder, agent_formatter
    from xplane.observability.logging import JsonFormatter

    record = logging.LogRecord("xplane.x", logging.WARNING, __file__, 1, "beat %s", ("late",), None)
    record.fields = {"attempt": 2}
    record.region = "jp"
    node = NodeIdHolder()
    node.value = "jp-3"
    plane = json.loads(JsonFormatter().format(record))
    agent = json.loads(agent_formatter(node).format(record))
    assert plane.keys() == {"time", "level", "logger", "message", "attempt", "region"}
    assert (plane["level"], plane["message"], plane["attempt"]) == ("WARNING", "beat late", 2)
    assert agent.keys() == {"ts", "level", "msg", "node_id", "attempt", "region"}
    assert (agent["level"], agent["msg"], agent["node_id"]) == ("warning", "beat late", "jp-3")
    assert agent["ts"] == plane["time"]


def test_level_and_format_are_checked() -> None:
    with pytest.raises(ValueError, match="invalid log level 'LOUD'"):
        configure_logging("LOUD", stream=io.StringIO())
    with pytest.raises(ValueError, match="XPLANE_LOG_FORMAT must be json or text"):
        configure_logging_from_env({"XPLANE_LOG_FORMAT": "xml"})


def test_text_format_and_reconfiguring_replaces_our_handler(captured: io.StringIO) -> None:
    root = logging.getLogger()
    before = len(root.handlers)
    text = io.StringIO()
    configure_logging("INFO", json=False, stream=text)
    assert len(root.handlers) == before  # replaced, not added
    logging.getLogger("xplane.test").info("plain %s", "text")
    assert text.getvalue().rstrip().endswith("INFO xplane.test: plain text")
    assert captured.getvalue() == ""


# ------------------------------------------------------- from a real worker
@activity.defn(name="log_probe")
async def log_probe(target: str) -> str:
    activity.logger.info("probing %s", target)
    return target


@workflow.defn(name="LogProbeWorkflow")
class LogProbeWorkflow:
    @workflow.run
    async def run(self, target: str) -> str:
        workflow.logger.info("starting probe of %s", target)
        return await workflow.execute_activity(
            log_probe, target, start_to_close_timeout=timedelta(seconds=10)
        )


async def test_workflow_and_activity_lines_carry_their_ids(
    captured: io.StringIO, time_env: WorkflowEnvironment
) -> None:
    queue = f"log-{uuid.uuid4().hex[:8]}"
    workflow_id = f"log-probe-{uuid.uuid4().hex[:8]}"
    async with Worker(
        time_env.client, task_queue=queue, workflows=[LogProbeWorkflow], activities=[log_probe]
    ):
        handle = await time_env.client.start_workflow(
            LogProbeWorkflow.run, "10.0.0.7", id=workflow_id, task_queue=queue
        )
        assert await handle.result() == "10.0.0.7"
    records = lines(captured)
    from_workflow = [r for r in records if r["message"] == "starting probe of 10.0.0.7"]
    from_activity = [r for r in records if r["message"] == "probing 10.0.0.7"]
    assert len(from_workflow) == 1 and len(from_activity) == 1, records
    wf, act = from_workflow[0], from_activity[0]
    assert wf["workflow_id"] == workflow_id and wf["workflow_type"] == "LogProbeWorkflow"
    assert wf["run_id"] == handle.result_run_id
    assert "activity" not in wf
    assert act["workflow_id"] == workflow_id and act["run_id"] == handle.result_run_id
    assert act["activity"] == "log_probe" and act["attempt"] == 1
    assert act["logger"] == "temporalio.activity"


# ----------------------------------------------------------------- tracing
def test_tracing_is_off_by_default_and_without_the_packages(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert tracing_interceptors({}) == []
    assert not tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "})
    assert not tracing_requested(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318", "OTEL_SDK_DISABLED": "true"}
    )
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert tracing_requested(env)
    try:
        import opentelemetry.exporter.otlp.proto.http
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        with caplog.at_level(logging.WARNING, logger="xplane.observability.tracing"):
            assert tracing_interceptors(env) == []
        assert "OpenTelemetry is not installed" in caplog.text
    else:
        from temporalio.contrib.opentelemetry import TracingInterceptor

        (interceptor,) = tracing_interceptors(env)
        assert isinstance(interceptor, TracingInterceptor)


@pytest.mark.parametrize(("level", "shown"), [("INFO", False), ("DEBUG", True)])
def test_http_request_lines_only_at_debug(level: str, shown: bool) -> None:
    """Per-request INFO lines of httpx (health checks every few seconds) are noise."""
    with logging_to_buffer(level) as buffer:
        logging.getLogger("httpx").info("HTTP Request: GET http://10.0.0.1:18080/healthz")
        logging.getLogger("httpx").warning("a retry the operator should see")
    messages = [line["message"] for line in lines(buffer)]
    assert ("HTTP Request: GET http://10.0.0.1:18080/healthz" in messages) is shown
    assert "a retry the operator should see" in messages
