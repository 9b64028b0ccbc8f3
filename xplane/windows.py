"""Calendar windows (pure): a cron line or a start/end pair, in a time zone, for a duration.

Shared by scheduled capacity (``autoscale/``: :mod:`xplane.autoscale.calendar`) and
maintenance (``gtm/``: :mod:`xplane.gtm.maintenance`). Cron is the 5-field Vixie form
(``minute hour day-of-month month day-of-week``), evaluated by ``cronsim`` in the
window's own time zone, so ``0 9 * * 1-5`` in ``Asia/Tokyo`` opens at 09:00 Tokyo time
whatever the server's clock zone, across DST changes. No I/O, no clock: every function
takes the instant it judges.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

# A window cannot open more than this long before an instant and still cover it: windows
# are at most a week (validated), so a search back that far finds any open occurrence.
MAX_WINDOW = timedelta(days=7)


def check_cron(expr: str) -> str:
    """The expression, stripped; ValueError naming the problem when it is not 5-field cron."""
    text = " ".join(expr.split())
    if len(text.split(" ")) != 5:
        raise ValueError(
            f"invalid cron {expr!r}: need 5 fields (minute hour day-of-month month day-of-week)"
        )
    try:
        CronSim(text, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ValueError(f"invalid cron {expr!r}: {exc}") from None
    return text


def check_timezone(name: str) -> str:
    """The IANA zone name; ValueError when the zone database does not know it."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r}: use an IANA name like Asia/Tokyo") from None
    return name


def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One opening of a window: ``[opens, closes)`` in UTC-aware datetimes."""

    opens: datetime
    closes: datetime

    def covers(self, at: datetime) -> bool:
        return self.opens <= at < self.closes

    @property
    def key(self) -> str:
        """Stable id of this occurrence (events are deduplicated by it)."""
        return self.opens.isoformat()


def cron_starts(expr: str, tz: str, after: datetime, until: datetime) -> list[datetime]:
    """Every start of ``expr`` in ``tz`` strictly after ``after`` and at or before ``until``."""
    local = after.astimezone(zone(tz))
    starts: list[datetime] = []
    for start in CronSim(expr, local):
        if start > until:
            break
        if start > after:
            starts.append(start)
    return starts


def cron_occurrences(
    expr: str, tz: str, duration: timedelta, frm: datetime, to: datetime
) -> list[Occurrence]:
    """Occurrences that are open at some instant of ``[frm, to]`` (at most a week back)."""
    back = frm - min(duration, MAX_WINDOW)
    return [
        Occurrence(start, start + duration)
        for start in cron_starts(expr, tz, back - timedelta(seconds=1), to)
        if start + duration > frm
    ]


def fixed_occurrence(start: datetime, end: datetime, tz: str) -> Occurrence:
    """A one-off window; a naive ``start``/``end`` is read in ``tz``."""
    tzinfo = zone(tz)
    opens = start if start.tzinfo else start.replace(tzinfo=tzinfo)
    closes = end if end.tzinfo else end.replace(tzinfo=tzinfo)
    return Occurrence(opens, closes)
