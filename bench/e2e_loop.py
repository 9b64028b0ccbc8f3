"""End-to-end reaction times of the closed loop, on a real ``xplane up`` (subprocess).

* failover: an agent is killed (SIGKILL) -> its address is gone from what the
  real PowerDNS answers (checked with DNS queries, not only the record);
* scale-up: a region's agents report high CPU -> the autoscaler commits to the
  infra repo -> the local CI runner's ``terraform apply`` -> the new node is active.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import git

from tests.support.stack import BIN, Stack, kill_leftover_agents, wait_for


def _active(stack: Stack, region: str) -> list[dict[str, Any]]:
    return [
        n
        for n in stack.status().get("nodes", [])
        if n["region"] == region and n["state"] == "active"
    ]


def measure() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp))
        try:
            wait_for("XPlane is up", lambda: "XPlane is up" in stack.output(), 120)
            started = time.monotonic()
            wait_for("jp in DNS", lambda: any(_active(stack, "jp")) and stack.answers(), 180)
            first_answer = time.monotonic() - started
            infra = git.Repo(stack.info()["infra_repo"])

            # Scale-up reaction.
            t0 = time.monotonic()
            subprocess.run(
                [str(BIN / "xplane"), "demo", "load", "jp", "--data-dir", str(stack.data)],
                check=True, capture_output=True,
            )  # fmt: skip

            def committed() -> bool:
                return "scale jp pool to 2" in str(infra.commit("main").message)

            wait_for("the scale-up commit", committed, 300, every=1)
            t_commit = time.monotonic() - t0
            wait_for("two active jp nodes", lambda: len(_active(stack, "jp")) >= 2, 300, every=1)
            t_active = time.monotonic() - t0
            subprocess.run(
                [str(BIN / "xplane"), "demo", "load", "jp", "--stop",
                 "--data-dir", str(stack.data)],
                check=True, capture_output=True,
            )  # fmt: skip

            # Failover: kill one jp agent; its address must leave the DNS answers.
            victim = _active(stack, "jp")[0]
            subprocess.run(
                [str(BIN / "xplane"), "demo", "fail-node", "--node", victim["id"],
                 "--data-dir", str(stack.data)],
                check=True, capture_output=True,
            )  # fmt: skip
            t_kill = time.monotonic()

            def gone() -> bool:
                if victim["address"] in stack.published_weights():
                    return False
                return all(victim["address"] not in stack.answers() for _ in range(20))

            wait_for("the killed node to leave DNS", gone, 120, every=0.2)
            failover = time.monotonic() - t_kill
        finally:
            stack.stop()
            kill_leftover_agents(stack)
    return {
        "first_dns_answer_after_up_s": round(first_answer, 1),
        "scale_up_load_to_commit_s": round(t_commit, 1),
        "scale_up_load_to_node_active_s": round(t_active, 1),
        "failover_kill_to_gone_from_dns_s": round(failover, 1),
        "heartbeat_timeout_s": 6.0,
    }


def run() -> dict[str, Any]:
    result = measure()
    print("| measure | seconds |\n| --- | --- |")
    for key, value in result.items():
        print(f"| {key} | {value} |")
    return result


if __name__ == "__main__":
    run()
