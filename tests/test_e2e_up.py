"""End to end: the README's first command (``xplane up``) on real parts, as a subprocess.

Temporal dev server, API, worker, PowerDNS, the local CI runner (git hook ->
terraform) and the local node pool (real ``xplane agent`` processes). The test
waits for the example service to resolve through PowerDNS in proportion to its
weights, kills an agent, sees its address leave DNS and a replacement become
active, scrapes ``/metrics``, then stops everything with Ctrl-C and checks that
no process is left. Each step's time is recorded in the test output.

See tests/support/stack.py for how ``xplane up`` is started.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import git
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.stack import BIN, Stack, alive, kill_leftover_agents, wait_for
from tests.support.tools import needs_tool

pytestmark = [
    pytest.mark.slow,
    needs_tool("pdns_server", "terraform"),
]


@pytest.fixture
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    s = Stack(tmp_path, pin_cpu=0.5)  # inside every region's CPU band: no load scale-ups
    try:
        yield s
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:  # explain the failure before stopping
            print(s.diagnostics())
        s.stop()
        kill_leftover_agents(s)  # never leave agents behind
        print(s.output()[-3000:])


def test_up_resolves_fails_over_replaces_and_stops_clean(stack: Stack) -> None:
    wait_for("XPlane is up", lambda: "XPlane is up" in stack.output(), 120)
    stack.mark("up")
    info = stack.info()
    env = {**os.environ, "TEMPORAL_ADDRESS": info["temporal_address"]}
    listed = subprocess.run(
        [str(BIN / "temporal"), "workflow", "list", "--address", info["temporal_address"]],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert "gitops-sync" in listed.stdout and "world-state" in listed.stdout

    # The example service resolves to live local agents, in proportion to the weights.
    wait_for("DNS answers", stack.answers, 120)
    stack.mark("first DNS answer")
    wait_for("two regions in DNS", lambda: len(stack.published_weights()) >= 2, 120)
    stack.mark("two regions published")
    weights = stack.published_weights()
    counts: Counter[str] = Counter()
    for _ in range(600):
        for address in stack.answers():
            counts[address] += 1
    total_w, total_n = sum(weights.values()), sum(counts.values())
    weights = stack.published_weights()  # still ramping? compare with what was published
    for address, weight in weights.items():
        assert abs(counts[address] / total_n - weight / total_w) < 0.08, (counts, weights)
    # Custom search attributes: the region's workflows are found by XplaneRegion.
    jp_flows = subprocess.run(
        [str(BIN / "temporal"), "workflow", "list", "--address", info["temporal_address"],
         "--query", 'XplaneRegion="jp"'],
        capture_output=True, text=True, env=env, timeout=60,
    ).stdout  # fmt: skip
    assert "region-jp" in jp_flows and "autoscale-svc-plus-jp" in jp_flows
    assert "region-sg" not in jp_flows
    by_region = {n["address"]: n for n in stack.status()["nodes"]}
    assert set(weights) <= set(by_region)

    # /metrics, scraped from the running API.
    text = httpx.get(f"{info['api_url']}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    beats = sum(s.value for s in families["xplane_heartbeats_ingested"].samples)
    assert beats >= 4
    active = [s for s in families["xplane_nodes"].samples if s.labels.get("state") == "active"]
    assert sum(s.value for s in active) >= 2
    region_weights = {
        s.labels["region"]: s.value for s in families["xplane_gtm_effective_weight"].samples
    }
    assert region_weights["jp"] > 0 and region_weights["sg"] == 0
    applies = [s for s in families["xplane_dns_applies"].samples if s.labels.get("result") == "ok"]
    assert sum(s.value for s in applies) >= 1

    # Kill jp's agent: its address leaves DNS, the autoscaler replaces it.
    jp = next(n for n in stack.status()["nodes"] if n["region"] == "jp" and n["state"] == "active")
    killed = subprocess.run(
        [str(BIN / "xplane"), "demo", "fail-node", "--node", jp["id"],
         "--data-dir", str(stack.data)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert killed.returncode == 0, killed.stderr
    stack.mark(f"killed {jp['id']}")
    t_kill = time.monotonic()
    wait_for(
        "the dead node to leave DNS", lambda: jp["address"] not in stack.published_weights(), 60
    )
    failover = time.monotonic() - t_kill
    stack.mark(f"{jp['address']} gone from DNS ({failover:.1f}s after the kill)")
    assert failover < 6 + 20  # heartbeat timeout + a few scan/apply rounds

    def replacement() -> str | None:
        for node in stack.status().get("nodes", []):
            if node["region"] == "jp" and node["id"] != jp["id"] and node["state"] == "active":
                return str(node["address"])
        return None

    new_address = wait_for("a replacement jp node to become active", replacement, 180, every=2)
    stack.mark(f"replacement {new_address} active")
    wait_for("the replacement in DNS", lambda: new_address in stack.published_weights(), 120)
    stack.mark("replacement in DNS")

    # The apply of that commit also revived the dead agent in its slot: back through warm.
    def revived() -> bool:
        return any(
            n["id"] == jp["id"] and n["state"] == "active" for n in stack.status().get("nodes", [])
        )

    wait_for(f"{jp['id']} revived and active again", revived, 90, every=2)
    stack.mark(f"{jp['id']} revived")
    commits = [str(c.message).splitlines()[0] for c in git.Repo(info["infra_repo"]).iter_commits()]
    assert "feat(xplane-autoscaler): scale jp pool to 2 nodes" in commits
    scaled = stack.events("autoscale.committed", region="jp")
    assert len(scaled) == 1 and "replace 1" in scaled[0]["message"], scaled  # for the loss only

    # Ctrl-C stops everything it started.
    pids = [int(p.read_text().split()[0]) for p in (stack.data / "pool").glob("*.pid")]
    pids += [info["temporal_pid"], info["pid"]]
    assert stack.stop() == 0
    stack.mark("stopped")
    wait_for("every process gone", lambda: not any(alive(p) for p in pids), 20)
    assert "stopped" in stack.output()
    assert not stack.answers()  # PowerDNS is gone too
    print("e2e timings:", json.dumps(stack.times))
