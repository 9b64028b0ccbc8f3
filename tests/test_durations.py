"""Durations (pure): parsing is covered with the config; here the retry backoff."""

from __future__ import annotations

from datetime import timedelta

import pytest

from xplane.durations import retry_delay

BASE, CAP = timedelta(seconds=2), timedelta(minutes=5)


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [
        (0, BASE),  # no failure yet counts as the first
        (1, BASE),
        (2, 2 * BASE),
        (3, 4 * BASE),
        (8, 128 * BASE),  # 256 s
        (9, CAP),  # 512 s would pass the cap
        (10_000, CAP),  # a huge count neither overflows nor passes the cap
    ],
)
def test_retry_delay_doubles_per_failed_attempt_up_to_the_cap(
    attempts: int, expected: timedelta
) -> None:
    assert retry_delay(attempts, BASE, CAP) == expected
