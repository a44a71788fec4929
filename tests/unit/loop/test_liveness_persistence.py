"""The liveness machine saved and put back (what a resumed runner does): under Hypothesis, a machine
restored from its JSON records after any tick equals the one it was saved from and keeps deciding
exactly like it, the single-writer invariants included; stale observations stay stale after a
restore; a damaged record is refused with the field named and leaves the machine unchanged."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_vpstest.loop.liveness import (
    Evicted,
    Failed,
    Live,
    LivenessMachine,
    Observation,
    Provisioning,
    Respawn,
    Respawning,
)
from tests.unit.loop.test_liveness_properties import (
    NODES,
    OBSERVERS,
    ROLE_NODES,
    live_per_role,
    quorum,
    track,
)


def fresh_machine() -> LivenessMachine:
    sm = LivenessMachine(quorum())
    for node in NODES:
        track(sm, node, 0.0)
    return sm


def records(sm: LivenessMachine) -> dict[str, Any]:
    # Through JSON, as the state file keeps them.
    out: dict[str, Any] = json.loads(json.dumps({n: sm.node_record(n) for n in NODES}, allow_nan=False))
    return out


def restored(saved: dict[str, Any]) -> LivenessMachine:
    sm = fresh_machine()
    for node, record in saved.items():
        sm.restore_node(node, record)
    return sm


def step(sm: LivenessMachine, rng: random.Random, now: float) -> list[Any]:
    """One random tick: observations (fresh, stale, future) and the runner's answer to each Respawn."""
    observations = [
        Observation(node, obs, now, now + rng.choice((0.0, -rng.uniform(0, 400), rng.uniform(0, 400))))
        for node in NODES for obs in OBSERVERS if rng.random() < 0.5
    ]
    events = sm.tick(now, observations)
    for ev in events:
        if isinstance(ev, Respawn):
            if rng.random() < 0.5:
                sm.notify_respawned(ev.node, now)
            else:
                sm.notify_respawn_failed(ev.node, "could not start")
    return events


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), save_after=st.integers(0, 30), more=st.integers(1, 30))
def test_a_restored_machine_equals_the_saved_one_and_decides_the_same(seed: int, save_after: int,
                                                                      more: int) -> None:
    rng = random.Random(seed)
    original = fresh_machine()
    now = 0.0
    for _ in range(save_after):
        now += rng.choice((1.0, 30.0, 130.0, 400.0))
        step(original, rng, now)
    copy = restored(records(original))
    assert records(copy) == records(original)
    assert copy.now == original.now
    assert [copy.role_holder(r) for r in ("registry", "solo")] == [original.role_holder(r)
                                                                    for r in ("registry", "solo")]
    # The same future for both: same events, same records; at most one Live per role throughout.
    for i in range(more):
        now += rng.choice((1.0, 30.0, 130.0, 400.0))
        state = rng.getstate()
        events_a = step(original, rng, now)
        rng.setstate(state)
        events_b = step(copy, rng, now)
        assert events_a == events_b, f"step {i}"
        assert records(copy) == records(original)
        assert all(len(live) <= 1 for live in live_per_role(copy).values())


def test_stale_observations_are_still_ignored_after_a_restore() -> None:
    sm = fresh_machine()
    sm.tick(100.0, [Observation("solo", o, 100.0, 100.0) for o in OBSERVERS[:2]])
    assert isinstance(sm.state_of("solo"), Live)
    copy = restored(records(sm))
    # Long after (the runner was down): the saved observations are stale, so no quorum keeps it Live.
    copy.tick(100.0 + 1000.0)
    assert not isinstance(copy.state_of("solo"), Live | Provisioning)
    # Fresh ones count again.
    copy2 = restored(records(sm))
    copy2.tick(1100.0, [Observation("solo", o, 1100.0, 1100.0) for o in OBSERVERS[:2]])
    assert isinstance(copy2.state_of("solo"), Live)


def test_attempts_and_terminal_states_survive_a_restore() -> None:
    sm = fresh_machine()
    sm.tick(0.0, [Observation("solo", o, 0.0, 0.0) for o in OBSERVERS[:2]])
    events = sm.tick(1000.0)
    assert Respawn("solo", 1) in events
    sm.notify_respawned("solo", 1000.0)
    copy = restored(records(sm))
    assert copy.node_record("solo")["attempts"] == 1  # type: ignore[index]
    assert isinstance(copy.state_of("solo"), Provisioning)
    # Live again, silent again: the second of two attempts, then Failed.
    copy.tick(1001.0, [Observation("solo", o, 1001.0, 1001.0) for o in OBSERVERS[:2]])
    assert Respawn("solo", 2) in copy.tick(2000.0)
    copy.notify_respawn_failed("solo", "no")
    copy.tick(2001.0)
    again = restored(records(copy))
    assert isinstance(again.state_of("solo"), Failed)
    again.tick(2002.0, [Observation("solo", o, 2002.0, 2002.0) for o in OBSERVERS])
    assert isinstance(again.state_of("solo"), Failed)


@pytest.mark.parametrize(("change", "field"), [
    ({"state": {"name": "Asleep"}}, "state must be one of"),
    ({"state": {"name": "Live", "since": "yesterday"}}, "state.since"),
    ({"state": {"name": "Respawning", "attempt": 0}}, "state.attempt"),
    ({"attempts": -1}, "attempts"),
    ({"seen": {"ssh": "now"}}, "seen.ssh"),
    ({"seen": [1]}, "seen must be a map"),
    ({"epoch": float("nan")}, "epoch"),
])
def test_a_damaged_record_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    sm = fresh_machine()
    sm.tick(5.0, [Observation("solo", o, 5.0, 5.0) for o in OBSERVERS[:2]])
    good = sm.node_record("solo")
    assert good is not None
    with pytest.raises(ValueError, match=field):
        sm.restore_node("solo", {**good, **change})
    assert sm.node_record("solo") == good


def test_a_restored_holder_keeps_its_role_from_the_standbys() -> None:
    sm = fresh_machine()
    obs = [Observation(n, o, 1.0, 1.0) for n in ROLE_NODES for o in OBSERVERS]
    sm.tick(1.0, obs)
    holder = sm.role_holder("registry")
    assert holder is not None
    copy = restored(records(sm))
    assert copy.role_holder("registry") == holder
    copy.tick(2.0, [Observation(n, o, 2.0, 2.0) for n in ROLE_NODES for o in OBSERVERS])
    assert [n for n in ROLE_NODES if isinstance(copy.state_of(n), Live)] == [holder]
    assert not isinstance(copy.state_of(holder), Evicted | Respawning)
