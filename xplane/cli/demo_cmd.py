"""CLI: ``xplane demo``: make something happen under a running ``xplane up``.

``fail-node`` kills one node agent (SIGKILL, as a crash would): watch its address
leave DNS, the autoscaler commit a replacement, and the new node join.
``load REGION`` makes that region's local agents report high CPU: watch the
autoscaler scale the pool up through Git and Terraform. ``--stop`` empties the file: the
agents report the pool's default again (``--cpu-default`` in the local module's start.sh).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import typer

app = typer.Typer(help="Watch failover and scale-up happen (needs `xplane up`).")


def _pool_dir(data_dir: Path) -> Path:
    from xplane.status import read_up_info

    info = read_up_info(data_dir)
    if not info:
        typer.echo(f"error: XPlane is not up (no {data_dir / 'up.json'})", err=True)
        raise typer.Exit(1)
    return Path(info["pool_state_dir"])


@app.command("fail-node")
def fail_node(
    node: str = typer.Option(None, "--node", help="node id (default: the first running one)"),
    data_dir: Path = typer.Option(Path(".xplane"), "--data-dir"),
) -> None:
    """Kill one local node agent as a crash would."""
    pool = _pool_dir(data_dir)
    pid_files = sorted(pool.glob("*.pid"))
    if node:
        pid_files = [p for p in pid_files if p.stem == node]
    if not pid_files:
        typer.echo("error: no running node agent found", err=True)
        raise typer.Exit(1)
    from xplane.procs import read_pid_file

    running = [(p, ref) for p in pid_files if (ref := read_pid_file(p)) is not None]
    if not running:
        typer.echo("error: no running node agent found", err=True)
        raise typer.Exit(1)
    target, ref = running[0]
    pid = ref.pid
    os.kill(pid, signal.SIGKILL)
    typer.echo(f"killed node {target.stem} (pid {pid}). Watch: xplane status --watch; "
               f"xplane events --node {target.stem}")  # fmt: skip


@app.command("load")
def load(
    region: str = typer.Argument(..., help="region whose nodes report the load"),
    cpu: float = typer.Option(0.95, min=0, max=1, help="CPU share the agents report"),
    stop: bool = typer.Option(False, "--stop", help="end the simulated load"),
    data_dir: Path = typer.Option(Path(".xplane"), "--data-dir"),
) -> None:
    """Make a region's agents report high CPU (through their local metrics file)."""
    path = _pool_dir(data_dir) / f"{region}.metrics.json"
    path.write_text(json.dumps({} if stop else {"cpu": cpu}))
    if stop:
        typer.echo(f"{region}: load stopped (agents report the pool's default CPU, 30%)")
    else:
        typer.echo(f"{region}: agents now report cpu {cpu}. Watch: xplane status --watch; "
                   f"xplane events --region {region}")  # fmt: skip


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="demo")
