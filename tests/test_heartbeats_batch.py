"""A batch of heartbeats stores the same rows on both stores (PostgreSQL: unnest
statements sent in one round trip, xplane/store/heartbeats_pg.py; SQLite: executemany)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, text

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


def test_a_batch_stores_exactly_the_beats_it_answers(engine: Engine) -> None:
    """Duplicates of one node, a beat under a replaced token between them, an unknown
    node: a sample for every beat answered, none for the others, and the node row
    left with the latest answered beat and the last status it reported."""
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:
        register_node(s, reg(), T0, TIMEOUT, authorize=YES)
        register_node(s, reg("jp-2", "10.0.0.2", "h2"), T0, TIMEOUT, authorize=YES)
    t = [T0 + timedelta(seconds=i) for i in range(1, 7)]
    beats = [
        beat(at=t[0], cpu=0.1, reported_status="drain"),
        beat("jp-2", "h2", at=t[1], cpu=0.2),
        beat(token="stale", at=t[2], cpu=0.3, reported_status="up"),  # replaced token
        beat(at=t[3], cpu=0.4),  # no status: keeps "drain"
        beat("jp-9", "h9", at=t[4], cpu=0.5),  # unknown node
        beat(at=t[5], cpu=0.6),
    ]
    with transaction(factory) as s:
        results = apply_heartbeats(s, beats, TIMEOUT)
    answered = [b for b, r in zip(beats, results, strict=True) if r is not None]
    assert [b.cpu for b in answered] == [0.1, 0.2, 0.4, 0.6]
    with factory() as s:
        node = store.get_node(s, "jp-1")
        assert (node.last_heartbeat_at, node.cpu, node.reported_status) == (t[5], 0.6, "drain")
        stored = metric_samples(s, "web", "jp", T0)
    assert sorted((x.node_id, x.cpu) for x in stored) == sorted(
        (b.node_id, b.cpu) for b in answered
    )


def test_latest_per_node_keeps_the_last_beat_of_each_node_and_its_last_status() -> None:
    beats = [
        beat("b", at=T0, cpu=0.1, reported_status="drain"),
        beat("a", at=T0, cpu=0.2),
        beat("b", "other", at=T0, cpu=0.3, reported_status="up"),  # another token: apart
        beat("b", at=T0, cpu=0.4),
    ]
    latest = latest_per_node(beats)
    assert [(b.node_id, b.token_hash, b.cpu, b.reported_status) for b in latest] == [
        ("a", "h1", 0.2, None),
        ("b", "h1", 0.4, "drain"),
        ("b", "other", 0.3, "up"),
    ]


@pytest.mark.parametrize("synchronous", [True, False])
def test_synchronous_commit_off_holds_for_the_batch_transaction_only(
    engine: Engine, synchronous: bool
) -> None:
    """PostgreSQL: ``SET LOCAL``, so the next transaction on that connection is
    synchronous again. SQLite has no such setting: the beat is stored alike."""
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:
        register_node(s, reg(), T0, TIMEOUT, authorize=YES)
    at = T0 + timedelta(seconds=1)
    pg = engine.dialect.name == "postgresql"
    show = text("SHOW synchronous_commit")
    with transaction(factory) as s:
        results = apply_heartbeats(s, [beat(at=at)], TIMEOUT, synchronous_commit=synchronous)
        inside = s.execute(show).scalar_one() if pg else None
    assert results[0] is not None
    with factory() as s:
        after = s.execute(show).scalar_one() if pg else None
        assert store.get_node(s, "jp-1").last_heartbeat_at == at
        assert len(metric_samples(s, "web", "jp", T0)) == 1
    if pg:
        assert (inside, after) == ("on" if synchronous else "off", "on")
