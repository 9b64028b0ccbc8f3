"""DNS writes of the live GTM loop on a real ``xplane up`` (the example config, real PowerDNS).

Counts the loop's ``dns.applied`` events (one PowerDNS PATCH each) in two phases:

* the initial slow-start ramps: from start until ``slow_start`` + 20 s after the last
  node became active (every region that starts nodes ramps up from 0 once);
* a steady loop afterwards: nothing changes, so any write is noise (goal: 0 a minute).

The agents report a pinned CPU (between the scale-up and scale-down thresholds), so no
autoscaling moves the world during the measurement.
"""

from __future__ import annotations

import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.support.stack import Stack, kill_leftover_agents, wait_for

SLOW_START_S = 120.0  # the example's slow_start
SETTLE_S = 20.0
STEADY_S = 120.0


def _active(stack: Stack) -> frozenset[str]:
    return frozenset(n["id"] for n in stack.status().get("nodes", []) if n["state"] == "active")


def measure(steady_s: float = STEADY_S) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), pin_cpu=0.5)
        try:
            wait_for("XPlane is up", lambda: "XPlane is up" in stack.output(), 180)
            wait_for("a first DNS write", lambda: stack.events("dns.applied"), 240, every=1)
            active, changed = _active(stack), time.monotonic()
            while time.monotonic() - changed < SLOW_START_S + SETTLE_S:
                time.sleep(2)
                now_active = _active(stack)
                if now_active != active:
                    active, changed = now_active, time.monotonic()
                if time.monotonic() - changed > 600:
                    raise TimeoutError("nodes kept changing for 10 minutes")
            ramp_events = stack.events("dns.applied")
            time.sleep(steady_s)
            all_events = stack.events("dns.applied")
        finally:
            stack.stop()
            kill_leftover_agents(stack)
    t0 = datetime.fromisoformat(ramp_events[0]["at"])
    timeline = [
        {
            "at_s": round((datetime.fromisoformat(e["at"]) - t0).total_seconds(), 1),
            "regions": {
                k: round(v, 1) for k, v in ((e.get("data") or {}).get("regions") or {}).items()
            },
        }
        for e in all_events
    ]
    steady = len(all_events) - len(ramp_events)
    return {
        "active_nodes": len(active),
        "writes_during_initial_ramps": len(ramp_events),
        "steady_minutes": round(steady_s / 60, 1),
        "writes_in_steady_window": steady,
        "writes_per_steady_minute": round(steady / (steady_s / 60), 2),
        "timeline": timeline,
    }


def run() -> dict[str, Any]:
    result = measure()
    print("| measure | value |\n| --- | --- |")
    for key, value in result.items():
        if key != "timeline":
            print(f"| {key} | {value} |")
    return result


if __name__ == "__main__":
    run()
