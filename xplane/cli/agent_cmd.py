"""CLI: ``xplane agent``, the process that runs on every node."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

import typer
from pydantic import ValidationError

_HELP = "Run on a node: register with the control plane, heartbeat, act on drain/deregister."


def _labels(values: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--label")
        labels[key] = value
    return labels


def agent(
    server: list[str] = typer.Option(
        ...,
        "--server",
        envvar="XPLANE_SERVER",
        help="Control plane URL, e.g. http://cp:8080; repeat it (or separate with commas) "
        "for every API replica: the agent fails over between them at once.",
    ),
    service: str = typer.Option(..., "--service", help="Service this node serves."),
    region: str = typer.Option(..., "--region", help="Region this node is in."),
    token_file: Path = typer.Option(
        ..., "--token-file", help="File holding the bootstrap token (re-read on each register)."
    ),
    address: str | None = typer.Option(
        None, "--address", help="Address to advertise (default: local IP routing to --server)."
    ),
    node_id: str | None = typer.Option(None, "--node-id", help="Node id (default: server's)."),
    port: int | None = typer.Option(
        None, "--port", help="Port to advertise (default: the --serve-health port)."
    ),
    state_file: Path | None = typer.Option(
        None, "--state-file", help="Keep node id and node token here across restarts."
    ),
    label: list[str] = typer.Option([], "--label", help="KEY=VALUE node label (repeatable)."),
    probe: list[str] = typer.Option(
        [], "--probe", help="Blackbox probe: http://host[:port]/path or tcp://host:port."
    ),
    probe_timeout: float = typer.Option(2.0, "--probe-timeout", help="Seconds per probe."),
    metrics_url: str | None = typer.Option(
        None, "--metrics-url", help="Prometheus text page of the workload (rates of counters)."
    ),
    metrics_file: Path | None = typer.Option(
        None, "--metrics-file", help='JSON file {"error_rate": .., "qps": ..}.'
    ),
    cpu_default: float | None = typer.Option(
        None,
        "--cpu-default",
        help="CPU share (0-1) to report when the metrics give none (default: this machine's).",
    ),
    requests_metric: str = typer.Option(
        "http_requests_total", "--requests-metric", help="Counter of requests (--metrics-url)."
    ),
    errors_metric: str | None = typer.Option(
        None, "--errors-metric", help="Counter of failed requests (default: by label)."
    ),
    error_label: str = typer.Option(
        "status", "--error-label", help="Label of --requests-metric marking errors."
    ),
    error_pattern: str = typer.Option(
        "5..", "--error-pattern", help="Regex the --error-label value must fully match."
    ),
    serve_health: str | None = typer.Option(
        None, "--serve-health", help="HOST:PORT to serve GET /healthz (503 when draining) and /."
    ),
    max_backoff: float = typer.Option(
        30.0, "--max-backoff", help="Cap in seconds of the retry backoff."
    ),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    """Run on a node: register with the control plane, heartbeat, act on drain/deregister."""
    from xplane.agent.config import AgentConfig
    from xplane.agent.log import NodeIdHolder, setup_logging
    from xplane.agent.runner import Agent, TokenFileError, read_token, run_until_signalled
    from xplane.agent.state import StateFileError

    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise typer.BadParameter(f"{log_level!r}: use debug, info, warning or error")
    try:
        config = AgentConfig.model_validate(
            {
                "servers": server,
                "service": service,
                "region": region,
                "token_file": token_file,
                "address": address,
                "node_id": node_id,
                "port": port,
                "state_file": state_file,
                "labels": _labels(label),
                "probes": probe,
                "probe_timeout_s": probe_timeout,
                "metrics_url": metrics_url,
                "metrics_file": metrics_file,
                "cpu_default": cpu_default,
                "counters": {
                    "requests_metric": requests_metric,
                    "errors_metric": errors_metric,
                    "error_label": error_label,
                    "error_pattern": error_pattern,
                },
                "serve_health": serve_health,
                "backoff": {"cap": max_backoff, "base": min(0.5, max_backoff)},
            }
        )
        read_token(config.token_file)  # fail fast on a missing file; later reads retry
    except (ValidationError, TokenFileError) as exc:
        typer.echo(f"xplane agent: {_first_error(exc)}", err=True)
        raise typer.Exit(2) from None

    node = NodeIdHolder()
    log = setup_logging(node, level)
    try:
        code = asyncio.run(run_until_signalled(Agent(config, log, node)))
    except (StateFileError, OSError) as exc:
        # A bad state file or a health port in use: configuration, not a network blip.
        log.error(f"cannot run: {exc}")
        raise typer.Exit(2) from None
    if Path(sys.argv[0]).name == "xplane":  # we own the process (not a test's CliRunner)
        _exit_now(code)
    raise typer.Exit(code)


def _exit_now(code: int) -> NoReturn:
    """End the process without interpreter teardown.

    ``xplane.cli.main`` imports every command's dependencies (FastAPI, SQLAlchemy, Temporal,
    GitPython: ~950 modules); unloading them costs ~1 s of CPU on a busy node, which would
    break "exit promptly on SIGTERM". Nothing is left to finalise: the state file is written
    atomically, sockets are closed by the loop, and the streams are flushed here.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc)


def register(root: typer.Typer) -> None:
    """Attach this module's commands to the root `xplane` app."""
    root.command("agent", help=_HELP)(agent)
