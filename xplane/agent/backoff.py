"""Retry schedule for talking to the control plane: exponential, capped, jittered.

Pure (the random source is injected) so the schedule is testable without waiting.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from pydantic import Field

from xplane.domain import StrictModel


class Backoff(StrictModel):
    """``base * factor**n`` capped at ``cap``, then scaled by a random factor in [1-jitter, 1]."""

    base: float = Field(default=0.5, gt=0)
    factor: float = Field(default=2.0, ge=1)
    cap: float = Field(default=30.0, gt=0)
    jitter: float = Field(default=0.5, ge=0, le=1)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        # Cap the exponent first: factor**attempt overflows a float after ~1000 attempts,
        # and an agent keeps retrying for as long as the control plane is down.
        raw = self.cap
        if attempt < 64:
            raw = min(self.cap, self.base * self.factor ** max(0, attempt))
        # "Equal-ish" jitter: never below (1 - jitter) of the nominal delay, so a fleet of
        # agents restarted together spreads out but none hammers the API.
        spread = (rng or random).random() * self.jitter
        return raw * (1.0 - spread)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The endless schedule ``delay(0), delay(1), ...``."""
        attempt = 0
        while True:
            yield self.delay(attempt, rng)
            attempt += 1
