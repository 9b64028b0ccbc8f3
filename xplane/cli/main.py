"""The ``xplane`` command: one Typer app, each command group in its own module."""

from __future__ import annotations

import logging
import os
import sys

import typer

from xplane.cli import (
    actions_cmd,
    agent_cmd,
    api_cmd,
    autoscale_cmd,
    config_cmd,
    demo_cmd,
    events_cmd,
    gate_cmd,
    gtm_cmd,
    infra_cmd,
    login_cmd,
    nodes_cmd,
    regions_cmd,
    status_cmd,
    sync_cmd,
    tokens_cmd,
    up_cmd,
    worker_cmd,
)

app = typer.Typer(
    name="xplane",
    help="XPlane: a cloud-neutral control plane on Temporal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """XPlane: a cloud-neutral control plane on Temporal."""


for module in (
    config_cmd,
    sync_cmd,
    nodes_cmd,
    api_cmd,
    agent_cmd,
    gtm_cmd,
    autoscale_cmd,
    infra_cmd,
    events_cmd,
    gate_cmd,
    worker_cmd,
    up_cmd,
    status_cmd,
    demo_cmd,
    regions_cmd,
    login_cmd,
    tokens_cmd,
    actions_cmd,
):
    module.register(app)


@app.command("version")
def version() -> None:
    """Print XPlane's version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("xplane"))


def main() -> None:
    try:
        app()
        code = 0
    except SystemExit as done:
        code = _exit_code(done.code)
    if "temporalio.bridge.client" in sys.modules:
        # A process that held a Temporal client can abort at interpreter teardown
        # (Fatal Python error: PyGILState_Release, temporalio/sdk-python#300): the
        # SDK's Rust threads outlive the interpreter. Everything is closed by now,
        # so skip the teardown: flush what is buffered and leave with our own code.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _exit_code(code: object) -> int:
    """SystemExit's code the way the interpreter maps it: None is 0, a message is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    main()
