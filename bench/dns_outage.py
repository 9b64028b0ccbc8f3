"""Healthy addresses lost from DNS during a 60 s database outage (goal 0).

`docs/roadmap.md` phase 6.

The fault-injection stack (tests/support/fault_stack.py): 2 API replicas, 2 workers,
a PostgreSQL database of its own, the Temporal dev server, PowerDNS and 6 real
agents in 2 regions (2 s heartbeats, down after 6 s). Once every agent is in DNS
and the self-health gate is open, the database refuses every connection (and its
sessions are terminated) for 60 s; PowerDNS is polled every 0.5 s from then until
the gate has reopened and 10 s more. Every agent stays healthy throughout, so any
address missing from a poll is a healthy one lost.

    .venv/bin/python -m bench.dns_outage [--outage 60]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.fault_stack import FaultStack

NOTE = (
    "the fault-injection stack (2 API replicas, 2 workers, PostgreSQL, Temporal dev server, "
    "PowerDNS, 6 real agents in 2 regions, 2 s heartbeats); the database refuses every "
    "connection for 60 s (ALTER DATABASE ... ALLOW_CONNECTIONS false, sessions terminated); "
    "PowerDNS polled every 0.5 s until the gate reopened + 10 s. Goal: 0 healthy addresses lost."
)


def measure(outage_s: float = 60.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        stack = FaultStack(Path(tmp))
        try:
            stack.start()
            stack.wait_all_in_dns(120)
            stack._wait("the gate open", lambda: not stack.gate_holds(), 60)
            healthy = {a.address for a in stack.agents}
            commits, nodes = stack.scale_commits(), stack.node_states()
            before = stack.gate_counts()
            watch = stack.watch()
            started = time.monotonic()
            with stack.database_refusing():
                time.sleep(outage_s)
            back = time.monotonic()
            closings = stack.wait_gate_reopened(before, 120)
            reopened_s = time.monotonic() - back
            time.sleep(10)
            seen = watch.stop()
            lost = watch.lost(healthy)
            return {
                "outage_s": outage_s,
                "nodes": len(healthy),
                "polls": len(seen),
                "observed_s": round(time.monotonic() - started, 1),
                "healthy_addresses_lost": len(lost),
                "lost": sorted(lost),
                "polls_missing_a_healthy_address": sum(1 for _, got in seen if healthy - got),
                "fewest_addresses_in_a_poll": min(len(got) for _, got in seen),
                "empty_polls": watch.empty_polls(),
                "gate_reopened_after_recovery_s": round(reopened_s, 1),
                "gate_closings": closings,
                "replacement_commits": stack.scale_commits()[
                    : len(stack.scale_commits()) - len(commits)
                ],
                "nodes_deleted": sorted(set(nodes) - set(stack.node_states())),
            }
        finally:
            stack.stop()


def run() -> dict[str, Any]:
    result = measure()
    print("| outage | healthy addresses lost | fewest in a poll | empty polls | commits |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| {result['outage_s']:.0f} s | {result['healthy_addresses_lost']} of "
        f"{result['nodes']} | {result['fewest_addresses_in_a_poll']} | "
        f"{result['empty_polls']} | {len(result['replacement_commits'])} |"
    )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--outage", type=float, default=60.0)
    args = parser.parse_args()
    print(json.dumps(measure(args.outage), indent=2))
