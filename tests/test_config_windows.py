"""Calendar config: ``schedules:`` in autoscale regions, ``lead_min``, ``maintenance:`` in gtm.

Each bad field is a file/field/line error from the loader; the good forms load.
"""

from __future__ import annotations

import textwrap
from datetime import timedelta

import pytest

from xplane.config.errors import ConfigError
from xplane.config.loader import load_config_from_mapping

REGIONS = "regions:\n  - {name: jp, provider: aws}\n  - {name: sg, provider: aws}\n"
GTM = """\
service: svc
domain: api.svc.plus
regions:
  - name: jp
  - name: sg
"""
AUTOSCALE = """\
service: svc
regions:
  jp:
    min_nodes: 1
    max_nodes: 8
    schedules:
      - {window}
"""
GOOD_WINDOW = (
    "{name: tokyo-day, cron: '0 9 * * 1-5', timezone: Asia/Tokyo, duration: 9h, min_nodes: 6}"
)


def _tree(autoscale: str | None = None, gtm: str | None = None) -> dict[str, str]:
    return {
        "regions/all.yaml": REGIONS,
        "gtm/svc.yaml": gtm if gtm is not None else GTM,
        "autoscale/svc.yaml": autoscale
        if autoscale is not None
        else AUTOSCALE.format(window=GOOD_WINDOW),
    }


def _issues(files: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_from_mapping(files)
    return [str(i) for i in info.value.issues]


def test_windows_lead_and_maintenance_load() -> None:
    gtm = GTM + textwrap.dedent("""\
        maintenance:
          - {name: patch-tuesday, region: jp, cron: '0 2 * * 2', timezone: Asia/Tokyo, duration: 1h}
          - {region: sg, start: '2026-12-20T01:00:00', end: '2026-12-20T03:00:00', weight: 0.5}
        """)
    tree = load_config_from_mapping(_tree(gtm=gtm))
    jp = tree.autoscale["svc"].regions["jp"]
    assert [w.name for w in jp.schedules] == ["tokyo-day"]
    assert jp.schedules[0].duration == timedelta(hours=9)
    assert jp.schedules[0].cron == "0 9 * * 1-5"
    assert tree.autoscale["svc"].lead_min == timedelta(minutes=10)  # the default
    windows = tree.gtm["svc"].maintenance
    assert [w.label(i) for i, w in enumerate(windows)] == ["patch-tuesday", "sg-1"]
    assert windows[0].weight == 0 and windows[1].weight == 0.5
    # The tree round-trips through the config store's JSON.
    again = type(tree).model_validate_json(tree.model_dump_json(by_alias=True))
    assert again.gtm["svc"].maintenance == windows
    assert again.autoscale["svc"].regions["jp"].schedules == jp.schedules


BAD_WINDOWS = {
    "bad cron": (
        "{name: w, cron: '0 25 * * *', duration: 1h, min_nodes: 2}",
        "regions.jp.schedules[0].cron: invalid cron '0 25 * * *'",
    ),
    "cron with 6 fields": (
        "{name: w, cron: '0 0 9 * * 1', duration: 1h, min_nodes: 2}",
        "regions.jp.schedules[0].cron: invalid cron '0 0 9 * * 1': need 5 fields",
    ),
    "unknown timezone": (
        "{name: w, cron: '0 9 * * *', timezone: Asia/Tokio, duration: 1h, min_nodes: 2}",
        "regions.jp.schedules[0].timezone: unknown timezone 'Asia/Tokio'",
    ),
    "min above max": (
        "{name: w, cron: '0 9 * * *', duration: 1h, min_nodes: 9}",
        "regions.jp.schedules[0].min_nodes: must be <= the region's max_nodes (8), not 9",
    ),
    "bad duration": (
        "{name: w, cron: '0 9 * * *', duration: 9 hours, min_nodes: 2}",
        "regions.jp.schedules[0].duration: invalid duration '9 hours'",
    ),
    "zero duration": (
        "{name: w, cron: '0 9 * * *', duration: 0s, min_nodes: 2}",
        "regions.jp.schedules[0].duration: must be longer than 0",
    ),
    "duration over a week": (
        "{name: w, cron: '0 9 * * *', duration: 8d, min_nodes: 2}",
        "regions.jp.schedules[0].duration: must be at most 7d",
    ),
    "missing duration": (
        "{name: w, cron: '0 9 * * *', min_nodes: 2}",
        "regions.jp.schedules[0].duration: is required",
    ),
    "bad name": (
        "{name: Tokyo Day, cron: '0 9 * * *', duration: 1h, min_nodes: 2}",
        "regions.jp.schedules[0].name: invalid name 'Tokyo Day'",
    ),
    "unknown field": (
        "{name: w, cron: '0 9 * * *', duration: 1h, min_nodes: 2, max_nodes: 3}",
        "regions.jp.schedules[0].max_nodes: unknown field 'max_nodes'",
    ),
}


@pytest.mark.parametrize(("window", "expected"), list(BAD_WINDOWS.values()), ids=list(BAD_WINDOWS))
def test_bad_schedule_window_fields(window: str, expected: str) -> None:
    issues = _issues(_tree(autoscale=AUTOSCALE.format(window=window)))
    assert len(issues) == 1, issues
    assert issues[0].startswith("autoscale/svc.yaml:7: "), issues
    assert expected in issues[0]


def test_duplicate_window_names_and_bad_lead_min() -> None:
    text = AUTOSCALE.format(window=GOOD_WINDOW) + f"      - {GOOD_WINDOW}\nlead_min: soon\n"
    issues = _issues(_tree(autoscale=text))
    assert any("schedules[1].name: window 'tokyo-day' is listed twice" in i for i in issues)
    assert any("lead_min: invalid duration 'soon'" in i for i in issues)


BAD_MAINTENANCE = {
    "cron and start": (
        "{region: jp, cron: '0 2 * * 2', start: '2026-12-20T01:00:00', duration: 1h}",
        "maintenance[0].cron: set either cron or start (with end or duration): both are set",
    ),
    "neither cron nor start": (
        "{region: jp, duration: 1h}",
        "maintenance[0].cron: set either cron or start (with end or duration): neither is set",
    ),
    "cron without duration": (
        "{region: jp, cron: '0 2 * * 2'}",
        "maintenance[0].duration: is required with cron",
    ),
    "end before start": (
        "{region: jp, start: '2026-12-20T03:00:00', end: '2026-12-20T01:00:00'}",
        "maintenance[0].end: must be after start",
    ),
    "start with end and duration": (
        "{region: jp, start: '2026-12-20T01:00:00', end: '2026-12-20T03:00:00', duration: 1h}",
        "maintenance[0].end: set end or duration (one of them) with start",
    ),
    "weight above 1": (
        "{region: jp, cron: '0 2 * * 2', duration: 1h, weight: 1.5}",
        "maintenance[0].weight: must be <= 1, not 1.5",
    ),
    "negative weight": (
        "{region: jp, cron: '0 2 * * 2', duration: 1h, weight: -0.1}",
        "maintenance[0].weight: must be >= 0, not -0.1",
    ),
    "unknown timezone": (
        "{region: jp, cron: '0 2 * * 2', duration: 1h, timezone: Mars/Olympus}",
        "maintenance[0].timezone: unknown timezone 'Mars/Olympus'",
    ),
    "bad cron": (
        "{region: jp, cron: 'every tuesday', duration: 1h}",
        "maintenance[0].cron: invalid cron 'every tuesday'",
    ),
    "region not in the policy": (
        "{region: us, cron: '0 2 * * 2', duration: 1h}",
        "maintenance[0].region: region 'us' is not one of this service's gtm regions (jp, sg)",
    ),
}


@pytest.mark.parametrize(
    ("window", "expected"), list(BAD_MAINTENANCE.values()), ids=list(BAD_MAINTENANCE)
)
def test_bad_maintenance_fields(window: str, expected: str) -> None:
    issues = _issues(_tree(gtm=GTM + f"maintenance:\n  - {window}\n"))
    assert len(issues) == 1, issues
    assert issues[0].startswith("gtm/svc.yaml:7: "), issues
    assert expected in issues[0]
