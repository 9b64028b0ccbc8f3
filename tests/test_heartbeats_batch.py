"""A batch of heartbeats stores the same rows on both stores (PostgreSQL: one unnest
statement per batch, xplane/store/heartbeats_pg.py; SQLite: executemany)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine

from tests.test_node_store import T0, TIMEOUT, YES, beat, reg
from xplane.store import nodes as store
from xplane.store.db import make_sessionmaker, transaction
from xplane.store.heartbeats import apply_heartbeats
from xplane.store.heartbeats_pg import latest_per_node
from xplane.store.registration import register_node
from xplane.store.samples import metric_samples


def test_a_batch_of_many_nodes_stores_each_node_and_every_sample(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:
        for i in range(50):
            register_node(s, reg(f"jp-{i}", f"10.0.0.{i}", f"h{i}"), T0, TIMEOUT, authorize=YES)
    at = T0 + timedelta(seconds=1)
    beats = [beat(f"jp-{i}", f"h{i}", at=at, cpu=i / 100, probes_ok=i % 2) for i in range(50)]
    beats.append(beat("jp-7", "wrong-hash", at=at, cpu=0.99))  # a replaced token
    with transaction(factory) as s:
        results = apply_heartbeats(s, beats, TIMEOUT)
    assert [r is not None for r in results] == [True] * 50 + [False]
    with factory() as s:
        for i in (0, 7, 49):
            node = store.get_node(s, f"jp-{i}")
            assert (node.last_heartbeat_at, node.cpu, node.probes_ok) == (at, i / 100, i % 2)
        samples = metric_samples(s, "web", "jp", T0)
    assert len(samples) == 50  # the refused beat stored nothing
    assert sorted(x.cpu for x in samples) == [i / 100 for i in range(50)]


def test_two_beats_of_one_node_in_a_batch_leave_the_later_one(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:
        register_node(s, reg(), T0, TIMEOUT, authorize=YES)
    first, second = T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)
    with transaction(factory) as s:
        apply_heartbeats(
            s,
            [beat(at=first, cpu=0.1, reported_status="drain"), beat(at=second, cpu=0.2)],
            TIMEOUT,
        )
    with factory() as s:
        node = store.get_node(s, "jp-1")
        # The second beat said nothing of its status: the first one's "drain" is kept.
        assert (node.last_heartbeat_at, node.cpu, node.reported_status) == (second, 0.2, "drain")
        assert sorted(x.cpu for x in metric_samples(s, "web", "jp", T0)) == [0.1, 0.2]


def test_latest_per_node_keeps_the_last_update_of_each_node_in_id_order() -> None:
    updates = [{"b_id": "b", "v": 1}, {"b_id": "a", "v": 2}, {"b_id": "b", "v": 3}]
    assert latest_per_node(updates) == [{"b_id": "a", "v": 2}, {"b_id": "b", "v": 3}]
