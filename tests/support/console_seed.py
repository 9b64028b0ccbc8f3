"""A store seeded the way the console sees a live cluster: config, nodes in every
lifecycle state, pools, DNS applies, lifecycle/autoscale/terraform events and a
rejected config revision (the console tests and the overview benchmark share it)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from xplane.config.errors import ConfigIssue
from xplane.config.models import ConfigTree, GtmPolicy, GtmRegion, LatencyPolicy, Region
from xplane.store.config_store import record_rejected, save_revision
from xplane.store.db import transaction, utcnow
from xplane.store.events import EventRow, record_event
from xplane.store.node_tables import NodeRow
from xplane.store.pools import set_pool

SERVICE = "web"
REJECTED_SHA = "badc0ffee" + "0" * 31
REJECTED_ISSUE = ConfigIssue(
    file="gtm/web.yaml", path="regions.0.weight", message="must be greater than or equal to 0"
)


@dataclass
class Seeded:
    service: str
    regions: list[str]
    nodes: dict[str, list[str]] = field(default_factory=dict)  # region -> node ids
    slow_region: str = ""  # its ready nodes answer slowly (latency factor < 1)
    thin_region: str = ""  # fewer ready nodes than min_ready_nodes: weight 0
    drained_node: str = ""


def region_name(i: int) -> str:
    return f"r{i:03d}"


def seed_console_store(
    factory: sessionmaker[Session],
    *,
    regions: int = 3,
    nodes_per_region: int = 4,
    now: datetime | None = None,
    history: bool = True,
) -> Seeded:
    """Seed ``regions`` x ``nodes_per_region`` nodes of one service, all active and fresh
    except: the second region's RTT is 180 ms (target 100), the third has one ready
    node (< min_ready_nodes 2), and one node of the first region is drained."""
    now = now or utcnow()
    names = [region_name(i) for i in range(regions)]
    seeded = Seeded(service=SERVICE, regions=names)
    if regions > 1:
        seeded.slow_region = names[1]
    if regions > 2:
        seeded.thin_region = names[2]
    tree = ConfigTree(
        regions={
            n: Region(name=n, min_ready_nodes=2, max_nodes=max(10, nodes_per_region)) for n in names
        },
        gtm={
            SERVICE: GtmPolicy(
                service=SERVICE,
                domain="web.svc.plus",
                regions=[GtmRegion(name=n) for n in names],
                latency=LatencyPolicy(target_ms=100),
            )
        },
    )
    with transaction(factory) as session:
        save_revision(session, "a" * 40, tree, "console-seed")
    nodes: list[dict[str, object]] = []
    for r, region in enumerate(names):
        ids = [f"{region}-n{i:05d}" for i in range(nodes_per_region)]
        seeded.nodes[region] = ids
        for i, node_id in enumerate(ids):
            ready = not (region == seeded.thin_region and i > 0)
            nodes.append(
                {
                    "id": node_id,
                    "service": SERVICE,
                    "region": region,
                    "address": f"10.{r // 250}.{r % 250}.{i % 250 + 1}",
                    "port": 8080,
                    "labels": {},
                    "token_hash": hashlib.sha256(node_id.encode()).hexdigest(),
                    "registered_at": now - timedelta(hours=2),
                    "state": "active",
                    "state_changed_at": now - timedelta(minutes=50),
                    "drain_requested": False,
                    "last_heartbeat_at": now if ready else now - timedelta(minutes=10),
                    "reported_status": "up",
                    "cpu": 0.35,
                    "rtt_ms": 180.0 if region == seeded.slow_region else 40.0 + i % 7,
                    "error_rate": 0.001,
                    "qps": 50.0,
                    "probes_ok": 3,
                    "probes_total": 3,
                    "recorded_status": "up",
                }
            )
    first = names[0]
    seeded.drained_node = seeded.nodes[first][-1] if nodes_per_region > 1 else ""
    with transaction(factory) as session:
        for start in range(0, len(nodes), 5000):
            session.execute(insert(NodeRow), nodes[start : start + 5000])
        if seeded.drained_node:
            row = session.get(NodeRow, seeded.drained_node)
            assert row is not None
            row.state, row.drain_requested = "drain", True
            row.drain_reason, row.drain_requested_by = "kernel upgrade", "operator"
        for region in names:
            set_pool(session, SERVICE, region, nodes_per_region, at=now - timedelta(minutes=30))
        set_pool(session, SERVICE, first, nodes_per_region + 1, pending_commit="c0ffee12" * 5)
    if history:
        _history(factory, seeded, now)
    with transaction(factory) as session:
        record_rejected(session, REJECTED_SHA, "console-seed", [REJECTED_ISSUE])
    return seeded


def _history(factory: sessionmaker[Session], seeded: Seeded, now: datetime) -> None:
    """An hour of events: applies ramping the regions up, a lifecycle for the first node,
    an autoscale commit and a Terraform run; recorded in time order, as they happen live."""
    service, first = seeded.service, seeded.regions[0]
    node = seeded.nodes[first][0]
    events: list[tuple[str, str, dict[str, Any]]] = []

    def add(kind: str, message: str, minutes_ago: int, **fields: Any) -> None:
        events.append((kind, message, {**fields, "at": now - timedelta(minutes=minutes_ago)}))

    for minutes_ago, share in ((55, 0.2), (40, 0.6), (20, 1.0)):
        # Each region ramps to its own level, so the chart's lines part.
        weights = {
            n: round(100 * share * (1 - 0.12 * (i % 6)), 1) for i, n in enumerate(seeded.regions)
        }
        add(
            "dns.applied",
            f"powerdns: {len(weights)} regions updated (slow start)",
            minutes_ago,
            source=f"gtm-{service}",
            service=service,
            data={"provider": "powerdns", "changes": [], "regions": weights},
        )
    where = {"service": service, "region": first, "node_id": node}
    add("node.registered", f"node {node} registered at 10.0.0.1", 59, source="api", **where)
    for to_state, from_state, minutes_ago in (("warm", "idle", 58), ("active", "warm", 57)):
        add(
            f"node.{to_state}",
            f"node {node}: {from_state} -> {to_state} (ready): health checks passed",
            minutes_ago,
            source=f"node-{node}",
            correlation_id=node,
            data={"from": from_state, "event": "ready"},
            **where,
        )
    loop = f"autoscale-{service}-{first}"
    add(
        "autoscale.committed",
        f"{first}: pool 4 -> 5 (commit c0ffee12): cpu 0.82 > target 0.6",
        5,
        source=loop,
        service=service,
        region=first,
        data={"commit": "c0ffee12" * 5, "metrics": {}},
    )
    add(
        "terraform.succeeded",
        f"{first}: terraform for 0badf00d succeeded",
        25,
        source=loop,
        service=service,
        region=first,
        data={"commit": "0badf00d" * 5},
    )
    with transaction(factory) as session:
        for kind, message, fields in sorted(events, key=lambda e: e[2]["at"]):
            record_event(session, kind, message, **fields)


def add_event(factory: sessionmaker[Session], message: str, kind: str = "audit.drain") -> int:
    with transaction(factory) as session:
        row: EventRow = record_event(session, kind, message, source="console-test", service=SERVICE)
        session.flush()
        return row.id
