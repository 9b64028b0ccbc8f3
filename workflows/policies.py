"""Retry policies and timeouts for activities: every side effect gets one.

Transient failures (network, 5xx, 429, a locked DB) are retried with backoff;
errors raised as non-retryable ``ApplicationError`` (bad credentials, invalid
input) fail fast so the loop records them instead of hammering a provider.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

# Store reads/writes: quick, retried a few times (SQLite busy, PG failover).
DB = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=5,
)
DB_TIMEOUT = timedelta(seconds=30)

# Git and DNS provider calls: slower, rate-limited APIs.
EXTERNAL = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=6,
)
EXTERNAL_TIMEOUT = timedelta(minutes=2)

# Long activities (git fetch/push, DNS apply, the config pull, the world-state scan)
# heartbeat from beside their blocking call (activities/heartbeating.py). A worker that
# dies mid-call stops beating and Temporal retries the activity on a surviving worker
# after this, plus the retry's first interval, instead of after its start-to-close
# timeout (2 min). A worker's liveness, not a node's (that is xplane/heartbeat.py):
# beats go every third of it, so a busy worker is not mistaken for a dead one.
HEARTBEAT_TIMEOUT = timedelta(seconds=10)

# Publishing events to other workflows: must not be lost, so retried for long.
PUBLISH = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=20,
)
PUBLISH_TIMEOUT = timedelta(seconds=30)
