"""Rich rendering of :class:`xplane.status.StatusReport`."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from xplane.status import StatusReport


def render(report: StatusReport) -> Group:
    head = Text(
        f"config revision {(report.revision or 'none')[:8]}   "
        f"Temporal UI {report.temporal_ui or '-'}   "
        f"Console {report.console or '-'}   "
        f"last DNS apply: {report.last_dns_apply or '-'}"
    )
    regions = Table(title="regions")
    for column in ("SERVICE", "REGION", "WEIGHT", "POOL", "PENDING COMMIT", "NODES BY STATE"):
        regions.add_column(column)
    for line in report.regions:
        regions.add_row(
            line.service,
            line.region,
            "-" if line.weight is None else f"{line.weight:g}",
            "-" if line.pool is None else str(line.pool),
            (line.pending_commit or "-")[:8],
            " ".join(f"{k}={v}" for k, v in sorted(line.nodes.items())) or "-",
        )
    nodes = Table(title="nodes")
    for column in ("ID", "REGION", "ADDRESS", "STATE", "STATUS"):
        nodes.add_column(column)
    for node in report.nodes:
        nodes.add_row(node.id, node.region, node.address, node.state, node.status)
    flows = Table(title="running workflows")
    flows.add_column("ID")
    flows.add_column("TYPE")
    flows.add_column("LINK", overflow="fold")
    for wf in report.workflows:
        flows.add_row(wf.id, wf.type, wf.link or "-")
    parts: list[Text | Table] = [head, regions, nodes, flows]
    for i, gate_line in enumerate(report.gate):
        style = "" if gate_line.startswith(("open", "rate")) else "bold red"
        parts.insert(1 + i, Text(f"self-health gate: {gate_line}", style=style))
    for service, on in report.fail_open.items():
        if on:
            parts.insert(1, Text(f"FAIL OPEN: {service}", style="bold red"))
    return Group(*parts)
