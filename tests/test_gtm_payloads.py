"""What the GTM loop's history carries per node stays small, and old histories still read.

At 10,000 nodes the observe result carried one object per record and per health
tracker (1.8 MB, near Temporal's 2 MB payload limit). Records now travel as runs of
one region and share, trackers as ``[healthy, ok, fail]``; the full forms recorded
before still decode to the same values (tests/histories/ holds both kinds).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pydantic_core import to_json
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.gtm import GtmTargets, HealthCheckResult, ObserveRequest
from workflows.gtm_loop import GtmLoopParams
from xplane.gtm.health_checks import CheckState
from xplane.gtm.weights import (
    RegionWeight,
    ServiceWeights,
    WeightedRecord,
    pack_records,
    unpack_records,
)

CONVERTER = pydantic_data_converter.payload_converter
NODES = 10_000


def _targets(nodes: int = NODES) -> GtmTargets:
    records = [
        WeightedRecord(
            f"127.100.{i // 250}.{i % 250 + 1}",
            f"r{i // 100:03d}",
            f"r{i // 100:03d}-n{i % 100:05d}",
            # A region's records share one weight, except in r001 (runs must split).
            (i // 100 + 1) / 3 + (i % 2 if i // 100 == 1 else 0),
        )
        for i in range(nodes)
    ]
    region = RegionWeight(
        base_weight=100, health_ratio=1, ready_nodes_factor=1, latency_factor=1,
        effective_weight=100, ready_nodes=100, registered_nodes=100, desired_nodes=100,
    )  # fmt: skip
    states = {
        r.node_id: CheckState(healthy=[True, False, None][i % 3], consecutive_ok=i % 7)
        for i, r in enumerate(records)
    }
    return GtmTargets(
        service="web",
        exists=True,
        weights=ServiceWeights(
            service="web", regions={r.region: region for r in records}, records=records
        ),
        health=HealthCheckResult(states=states, probed=3),
        observed_at=datetime(2026, 12, 6, tzinfo=UTC),
        unready=["10.0.0.9"],
    )


def _roundtrip(value: object, kind: type) -> tuple[object, int]:
    payload = CONVERTER.to_payloads([value])[0]
    return CONVERTER.from_payloads([payload], [kind])[0], payload.ByteSize()


def test_the_observe_result_round_trips_packed_and_small() -> None:
    targets = _targets()
    back, size = _roundtrip(targets, GtmTargets)
    assert isinstance(back, GtmTargets)
    assert back.model_dump() == targets.model_dump()  # records in order, every tracker
    full = len(to_json(targets.model_dump()))  # the form histories held before
    assert size < 0.4 * full and size < 700_000, (size, full)


def test_the_full_form_of_older_histories_still_reads() -> None:
    targets = _targets(300)
    full = json.loads(to_json(targets.model_dump()))
    assert isinstance(full["weights"]["records"][0], dict)
    assert isinstance(full["health"]["states"]["r000-n00000"], dict)
    back = GtmTargets.model_validate_json(json.dumps(full))
    assert back.model_dump() == targets.model_dump()
    old_request = {"service": "web", "health": full["health"]["states"]}
    assert ObserveRequest.model_validate(old_request).health == targets.health.states  # type: ignore[union-attr]


def test_health_trackers_are_packed_wherever_the_loop_carries_them() -> None:
    states = _targets(50).health.states  # type: ignore[union-attr]
    for value, kind in (
        (ObserveRequest(service="web", health=states), ObserveRequest),
        (GtmLoopParams(service="web", health=states), GtmLoopParams),
    ):
        text = CONVERTER.to_payloads([value])[0].data
        assert b'"r000-n00000":[true,0,0]' in text
        back, _ = _roundtrip(value, kind)
        assert back.health == states  # type: ignore[attr-defined]


def test_runs_keep_order_and_split_where_region_or_share_changes() -> None:
    records = [
        WeightedRecord("a", "jp", "1", 0.5),
        WeightedRecord("b", "jp", "2", 0.5),
        WeightedRecord("c", "jp", "3", 0.25),
        WeightedRecord("d", "sg", "4", 0.25),
        WeightedRecord("e", "jp", "5", 0.5),
    ]
    packed = pack_records(records)
    assert [run[:2] for run in packed["runs"]] == [
        ["jp", 0.5], ["jp", 0.25], ["sg", 0.25], ["jp", 0.5]
    ]  # fmt: skip
    assert unpack_records(packed) == records
    assert unpack_records(records) is records  # the full form passes through
    assert pack_records([]) == {"runs": []}


def test_other_json_keeps_one_object_per_record() -> None:
    """The API and the what-if CLI serialise ServiceWeights itself: unchanged."""
    weights = _targets(3).weights
    assert weights is not None
    dumped = json.loads(weights.model_dump_json())
    assert dumped["records"][0] == {
        "address": "127.100.0.1",
        "region": "r000",
        "node_id": "r000-n00000",
        "weight": 1 / 3,
    }
