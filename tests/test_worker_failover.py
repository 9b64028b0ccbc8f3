"""A worker SIGKILLed during a git push: a surviving worker resumes the commit within seconds.

Real processes all the way (tests/support/worker_failover.py): the Temporal dev server, two
worker processes, a bare git repo whose post-receive hook holds the first push open
after the remote took the commit. Before heartbeats the retry waited for the 2-minute
start-to-close timeout; before operation trailers it found the count already in Git,
answered "unchanged" and skipped the Terraform wait.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.worker_failover import run_failover

pytestmark = pytest.mark.slow


async def test_a_killed_workers_push_is_resumed_within_the_heartbeat_timeout(
    tmp_path: Path,
) -> None:
    result = await run_failover(tmp_path, deadline_s=40)
    # Held past the heartbeat timeout, the live worker's attempt was not given up.
    assert result["held_before_kill_s"] > result["heartbeat_timeout_s"], result
    assert result["attempt_before_kill"] == 1 and result["attempt"] == 2, result
    # Detected by the missed heartbeats, retried after the first backoff (1 s).
    assert result["resume_after_kill_s"] < result["heartbeat_timeout_s"] + 3, result
    assert result["resume_after_kill_s"] < 15 < result["start_to_close_timeout_s"], result
    # The retry found its own commit on the remote: one commit, and the autoscaler
    # waits for Terraform to apply that very commit.
    assert result["scale_commits"] == ["feat(xplane-autoscaler): scale jp pool to 2 nodes"]
    assert result["pushes"] == 1, result
    assert result["waiting_for_commit"] == result["tip"], result
    assert result["events"] == ["autoscale.committed"], result
