"""One notion of "down": the heartbeat interval and the silence after which a node is down.

Every reader of node liveness takes its timeout from here: the world-state loop
(status transitions), the GTM (ready nodes), the autoscaler and region
lifecycles (serving and healthy nodes), ``xplane status`` and the API (its
views, and the interval it tells agents at registration). Two readers with two
timeouts would disagree about the same node: GTM sending traffic to a node the
world state already declared down, or the autoscaler replacing one GTM still
serves.

Set with ``XPLANE_HEARTBEAT_INTERVAL`` (default ``10s``) and
``XPLANE_HEARTBEAT_TIMEOUT`` (default 3 x the interval), durations like the
GitOps files (``5s``, ``500ms``, a bare number of seconds). Every process of a
deployment (API, worker, CLI) must see the same values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, model_validator

from xplane.durations import Duration, format_duration, parse_duration

INTERVAL_ENV = "XPLANE_HEARTBEAT_INTERVAL"
TIMEOUT_ENV = "XPLANE_HEARTBEAT_TIMEOUT"
DEFAULT_INTERVAL = timedelta(seconds=10)
# The range the agent honours (xplane/agent/runner.py clamps to it): outside it agents
# would beat at another pace than the one the timeout was derived from.
MIN_INTERVAL = timedelta(milliseconds=100)
MAX_INTERVAL = timedelta(hours=1)
# Three missed heartbeats: one lost packet or a slow request never marks a node down.
MISSED_BEATS = 3


class HeartbeatSettings(BaseModel):
    """The agents' heartbeat interval and the heartbeat age after which a node is down."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval: Duration = DEFAULT_INTERVAL
    timeout: Duration = MISSED_BEATS * DEFAULT_INTERVAL  # unset: MISSED_BEATS x interval

    @model_validator(mode="before")
    @classmethod
    def _derive_timeout(cls, data: Any) -> Any:
        """No timeout given (or None): MISSED_BEATS x the interval, whatever the interval."""
        if isinstance(data, dict) and data.get("timeout") is None:
            interval = parse_duration(data.get("interval", DEFAULT_INTERVAL))
            data = {**data, "timeout": MISSED_BEATS * interval}
        return data

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not MIN_INTERVAL <= self.interval <= MAX_INTERVAL:
            raise ValueError(
                f"{INTERVAL_ENV} ({format_duration(self.interval)}) must be between "
                f"{format_duration(MIN_INTERVAL)} and {format_duration(MAX_INTERVAL)}"
            )
        if self.timeout <= self.interval:
            # A timeout within one interval marks healthy nodes down between two beats.
            raise ValueError(
                f"{TIMEOUT_ENV} ({format_duration(self.timeout)}) must be longer than "
                f"{INTERVAL_ENV} ({format_duration(self.interval)})"
            )
        return self

    @property
    def interval_seconds(self) -> float:
        return self.interval.total_seconds()

    @property
    def timeout_seconds(self) -> float:
        return self.timeout.total_seconds()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> HeartbeatSettings:
        """From ``XPLANE_HEARTBEAT_*``; ``overrides`` that are not None win (CLI flags).

        Only a timeout given explicitly (environment or override) is kept; otherwise
        it is derived from the interval in force, overridden or not.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get(INTERVAL_ENV):
            values["interval"] = _seconds_or_duration(env[INTERVAL_ENV])
        if env.get(TIMEOUT_ENV):
            values["timeout"] = _seconds_or_duration(env[TIMEOUT_ENV])
        values.update({k: _seconds_or_duration(v) for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)


def _seconds_or_duration(value: Any) -> Any:
    """``"0.5"`` from a flag or the environment is seconds, as a number would be."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


DEFAULT = HeartbeatSettings()
