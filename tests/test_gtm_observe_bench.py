"""bench/gtm_observe_scale.py in small (300 nodes, 6 regions, SQLite): it runs, its
observe publishes every seeded node and then loses exactly the silent region, the scan
finds that region's nodes, and its summary rows render."""

from __future__ import annotations

from pathlib import Path

from bench.__main__ import gtm_observe_rows
from bench.gtm_observe_scale import measure


def test_the_observe_benchmark_runs_small(tmp_path: Path) -> None:
    out = measure(f"sqlite:///{tmp_path}/bench.db", nodes=300, regions=6)
    assert out["records"] == 300
    assert out["records_region_silent"] == 250
    assert out["scan_region_silent"]["signals"] == 50 + 1  # 50 nodes, one GTM wake-up
    assert out["probed_per_tick"] > 0
    assert 0 < out["payload_bytes"]["observe_result"] < 100_000
    rows = gtm_observe_rows({"backend": "sqlite", **out})
    assert len(rows) == 3 and all(r.startswith("| ") and r.endswith(" |") for r in rows)
