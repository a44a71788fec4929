"""The liveness quorum machine, one deterministic test per transition: first the basic transitions
(with the numbers of a typical deployment: m=2 of n=3, T1=120 s, T2=300 s, stale=180 s), then the
generalisations — distinct observers, stale and future stamps, exact times, restart policies, respawn,
and warm-standby roles where a standby becomes Live only after the primary's revocation."""

from __future__ import annotations

import pytest

from pytest_vpstest.loop.liveness import (
    BecameLive,
    BecameSuspect,
    Evicted,
    Failed,
    Live,
    LivenessMachine,
    Never,
    NodeEvicted,
    NodeFailed,
    Observation,
    OnFailure,
    Provisioning,
    PublishLeaseRevocation,
    QuorumConfig,
    Respawn,
    RespawnFailed,
    Respawning,
    Suspect,
    WarmStandby,
)

PRIMARY = "saorsa-2"
STANDBY = "saorsa-3"
OBSERVERS = ("ssh-prober", "registry", "peer-reports")
THREE_ATTEMPTS = OnFailure(max_attempts=3)


def quorum() -> QuorumConfig:
    return QuorumConfig(m=2, n=3, t1_secs=120, t2_secs=300, stale_secs=180)


def machine(
    replication: WarmStandby | None = None, policy: OnFailure | Never = THREE_ATTEMPTS
) -> LivenessMachine:
    sm = LivenessMachine(quorum())
    sm.track(
        PRIMARY, role="registry", holder="provider-a", replication=replication, restart_policy=policy, now=0
    )
    return sm


def seen(node: str, when: float, observers: tuple[str, ...] = OBSERVERS) -> list[Observation]:
    return [Observation(node, observer, seen_at=when, event_timestamp=when) for observer in observers]


# ------------------------------------------------ the basic transitions


def test_initial_state_is_provisioning() -> None:
    assert machine().state_of(PRIMARY) == Provisioning(0)


def test_provisioning_advances_to_live_after_quorum() -> None:
    sm = machine()
    events = sm.tick(10, seen(PRIMARY, 10))
    assert sm.state_of(PRIMARY) == Live(10)
    assert events == [BecameLive(PRIMARY, "registry", 10)]


def test_live_stays_live_with_one_observer_silent() -> None:
    sm = machine()
    sm.tick(10, seen(PRIMARY, 10))
    sm.tick(70, seen(PRIMARY, 70, OBSERVERS[:2]))  # 2 of 3 meets m=2
    assert isinstance(sm.state_of(PRIMARY), Live)


def test_live_transitions_to_suspect_after_t1_silence() -> None:
    sm = machine()
    sm.tick(10, seen(PRIMARY, 10))
    events = sm.tick(200, [])
    assert sm.state_of(PRIMARY) == Suspect(130)  # exactly T1 after the last quorum
    assert events == [BecameSuspect(PRIMARY, 130)]


def test_suspect_recovers_to_live_within_t2() -> None:
    sm = machine()
    sm.tick(10, seen(PRIMARY, 10))
    sm.tick(200, [])
    events = sm.tick(220, seen(PRIMARY, 220))
    assert sm.state_of(PRIMARY) == Live(220)
    assert events == [BecameLive(PRIMARY, "registry", 220)]


def test_suspect_evicts_after_t2_silence() -> None:
    sm = machine()
    sm.tick(10, seen(PRIMARY, 10))
    sm.tick(200, [])
    events = sm.tick(600, [])
    assert isinstance(sm.state_of(PRIMARY), Evicted | Respawning | Failed)
    assert NodeEvicted(PRIMARY, 430) in events


def test_warm_standby_eviction_emits_lease_revocation() -> None:
    sm = machine(WarmStandby((STANDBY,)))
    sm.tick(10, seen(PRIMARY, 10))
    sm.tick(200, [])
    events = sm.tick(600, [])
    assert PublishLeaseRevocation("registry", "provider-a", PRIMARY) in events, events


def test_stale_observation_does_not_count_for_quorum() -> None:
    sm = machine()
    stale = Observation(PRIMARY, OBSERVERS[0], seen_at=10, event_timestamp=10 - 3600)
    sm.tick(10, [stale])
    assert isinstance(sm.state_of(PRIMARY), Provisioning)


def test_untrack_removes_node() -> None:
    sm = machine()
    sm.untrack(PRIMARY)
    assert sm.state_of(PRIMARY) is None


def test_respawn_failure_after_max_attempts_goes_to_failed() -> None:
    sm = machine(policy=OnFailure(max_attempts=1))
    sm.tick(10, seen(PRIMARY, 10))
    sm.tick(200, [])
    sm.tick(600, [])
    assert sm.state_of(PRIMARY) == Respawning(1)
    sm.notify_respawn_failed(PRIMARY, "backend down")
    events = sm.tick(1200, [])
    state = sm.state_of(PRIMARY)
    assert isinstance(state, Failed) and "backend down" in state.reason
    assert events[0] == RespawnFailed(PRIMARY, 1, "backend down")
    assert isinstance(events[1], NodeFailed)


# ------------------------------------------------ quorum details


def test_one_observer_repeating_itself_is_not_a_quorum() -> None:
    sm = machine()
    sm.tick(10, [Observation(PRIMARY, "registry", t, t) for t in (8, 9, 10)])
    assert isinstance(sm.state_of(PRIMARY), Provisioning)


def test_quorum_can_be_assembled_across_ticks() -> None:
    sm = machine()
    sm.tick(10, seen(PRIMARY, 10, OBSERVERS[:1]))
    assert isinstance(sm.state_of(PRIMARY), Provisioning)
    sm.tick(50, seen(PRIMARY, 50, OBSERVERS[1:2]))
    assert sm.state_of(PRIMARY) == Live(50)


def test_observation_exactly_stale_secs_old_still_counts_one_more_does_not() -> None:
    # Live from a quorum at 10; the next quorum is stamped 131 and arrives late. If it counts, the
    # node was last seen at 131 and turns Suspect T1 later (251); if not, T1 after 10 (130).
    exactly_stale = machine()
    exactly_stale.tick(10, seen(PRIMARY, 10))
    assert exactly_stale.tick(131 + 180, seen(PRIMARY, 131)) == [BecameSuspect(PRIMARY, 251)]
    one_second_more = machine()
    one_second_more.tick(10, seen(PRIMARY, 10))
    assert one_second_more.tick(131 + 181, seen(PRIMARY, 131)) == [BecameSuspect(PRIMARY, 130)]


def test_far_future_stamps_do_not_count() -> None:
    sm = machine()
    sm.tick(10, [Observation(PRIMARY, o, 10, 10 + 10_000) for o in OBSERVERS])
    assert isinstance(sm.state_of(PRIMARY), Provisioning)


def test_a_far_future_stamp_does_not_shadow_the_observers_later_ones() -> None:
    sm = machine()
    sm.tick(10, [Observation(PRIMARY, o, 10, 10 + 10_000) for o in OBSERVERS])
    sm.tick(20, seen(PRIMARY, 20))
    assert sm.state_of(PRIMARY) == Live(20)


def test_observations_of_unknown_nodes_are_ignored() -> None:
    sm = machine()
    assert sm.tick(10, seen("saorsa-9", 10)) == []
    assert sm.state_of("saorsa-9") is None


def test_stale_quorum_does_not_keep_a_node_live() -> None:
    sm = machine()
    sm.tick(10, seen(PRIMARY, 10))
    # Two observers keep reporting old stamps: the quorum time does not move, so T1 still expires.
    sm.tick(140, [Observation(PRIMARY, o, 140, 10) for o in OBSERVERS])
    assert sm.state_of(PRIMARY) == Suspect(130)


def test_late_tick_cascades_with_exact_times() -> None:
    sm = machine(policy=Never())
    sm.tick(10, seen(PRIMARY, 10))
    events = sm.tick(10_000, [])
    assert events[:2] == [BecameSuspect(PRIMARY, 130), NodeEvicted(PRIMARY, 430)]
    assert isinstance(sm.state_of(PRIMARY), Failed)


def test_quorum_inside_t2_then_silence_again_is_seen_by_a_late_tick() -> None:
    sm = machine()
    sm.tick(10, seen(PRIMARY, 10))
    sm.tick(200, [])  # Suspect since 130
    events = sm.tick(400, seen(PRIMARY, 250))  # quorum came back at 250, then silence for 150 s
    assert events == [BecameLive(PRIMARY, "registry", 250), BecameSuspect(PRIMARY, 370)]


def test_time_must_not_go_backwards() -> None:
    sm = machine()
    sm.tick(100, [])
    with pytest.raises(ValueError, match="backwards"):
        sm.tick(99, [])


@pytest.mark.parametrize(("m", "n"), [(0, 3), (4, 3)])
def test_quorum_config_is_validated(m: int, n: int) -> None:
    with pytest.raises(ValueError):
        QuorumConfig(m=m, n=n, t1_secs=120, t2_secs=300, stale_secs=180)


# ------------------------------------------------ restart policy and respawn


def test_never_policy_fails_on_eviction() -> None:
    sm = machine(policy=Never())
    sm.tick(10, seen(PRIMARY, 10))
    sm.tick(200, [])
    events = sm.tick(600, [])
    state = sm.state_of(PRIMARY)
    assert isinstance(state, Failed) and "never" in state.reason
    assert not any(isinstance(e, Respawn) for e in events)


def test_failed_respawns_retry_until_max_attempts() -> None:
    sm = machine(policy=OnFailure(3))
    sm.tick(10, seen(PRIMARY, 10))
    assert Respawn(PRIMARY, 1) in sm.tick(600, [])
    for attempt in (1, 2):
        sm.notify_respawn_failed(PRIMARY, f"try {attempt}")
        events = sm.tick(600 + attempt, [])
        assert events == [RespawnFailed(PRIMARY, attempt, f"try {attempt}"), Respawn(PRIMARY, attempt + 1)]
    sm.notify_respawn_failed(PRIMARY, "try 3")
    sm.tick(700, [])
    assert isinstance(sm.state_of(PRIMARY), Failed)


def test_respawning_waits_for_the_runner() -> None:
    sm = machine()
    sm.tick(10, seen(PRIMARY, 10))
    sm.tick(600, [])
    assert sm.tick(5000, seen(PRIMARY, 5000)) == []  # heartbeats do not end Respawning
    assert sm.state_of(PRIMARY) == Respawning(1)


def test_respawned_node_provisions_again_ignoring_old_observations() -> None:
    sm = machine()
    sm.tick(10, seen(PRIMARY, 10))
    sm.tick(600, [])
    sm.notify_respawned(PRIMARY, 650)
    assert sm.state_of(PRIMARY) == Provisioning(650)
    sm.tick(660, seen(PRIMARY, 640))  # stamped before the new instance started
    assert isinstance(sm.state_of(PRIMARY), Provisioning)
    sm.tick(670, seen(PRIMARY, 670))
    assert sm.state_of(PRIMARY) == Live(670)


def test_respawn_attempts_count_over_the_nodes_tracked_life() -> None:
    sm = machine(policy=OnFailure(1))
    sm.tick(10, seen(PRIMARY, 10))
    sm.tick(600, [])
    sm.notify_respawned(PRIMARY, 600)
    sm.tick(610, seen(PRIMARY, 610))
    events = sm.tick(2000, [])
    assert isinstance(sm.state_of(PRIMARY), Failed)
    assert isinstance(events[-1], NodeFailed)


# ------------------------------------------------ roles and warm standbys


def standby_machine() -> LivenessMachine:
    sm = machine(WarmStandby((STANDBY,)))
    sm.track(STANDBY, role="registry", holder="provider-b", now=0)
    return sm


def test_only_one_node_of_a_role_is_live() -> None:
    sm = standby_machine()
    events = sm.tick(10, seen(PRIMARY, 10) + seen(STANDBY, 10))
    assert events == [BecameLive(PRIMARY, "registry", 10)]
    assert isinstance(sm.state_of(STANDBY), Provisioning)
    assert sm.role_holder("registry") == PRIMARY


def test_standby_is_not_promoted_while_primary_is_suspect() -> None:
    sm = standby_machine()
    sm.tick(10, seen(PRIMARY, 10) + seen(STANDBY, 10))
    events = sm.tick(200, seen(STANDBY, 200))
    assert events == [BecameSuspect(PRIMARY, 130)]
    assert isinstance(sm.state_of(STANDBY), Provisioning)


def test_standby_is_promoted_after_the_revocation() -> None:
    sm = standby_machine()
    sm.tick(10, seen(PRIMARY, 10) + seen(STANDBY, 10))
    sm.tick(200, seen(STANDBY, 200))
    events = sm.tick(440, seen(STANDBY, 440))
    revoke = events.index(PublishLeaseRevocation("registry", "provider-a", PRIMARY))
    promote = events.index(BecameLive(STANDBY, "registry", 440))
    assert events.index(NodeEvicted(PRIMARY, 430)) < revoke < promote
    assert sm.role_holder("registry") == STANDBY


def test_unhealthy_standby_is_not_promoted() -> None:
    sm = standby_machine()
    sm.tick(10, seen(PRIMARY, 10) + seen(STANDBY, 10))
    events = sm.tick(440, [])
    assert PublishLeaseRevocation("registry", "provider-a", PRIMARY) in events
    assert sm.role_holder("registry") is None and isinstance(sm.state_of(STANDBY), Provisioning)
    assert sm.tick(450, seen(STANDBY, 450)) == [BecameLive(STANDBY, "registry", 450)]


def test_standby_preference_order_is_followed() -> None:
    sm = LivenessMachine(quorum())
    sm.track("a", role="r", replication=WarmStandby(("c", "b")), now=0)
    sm.track("b", role="r", now=0)
    sm.track("c", role="r", now=0)
    sm.tick(10, seen("a", 10) + seen("b", 10) + seen("c", 10))
    events = sm.tick(440, seen("b", 440) + seen("c", 440))
    assert events[-1] == BecameLive("c", "r", 440)


def test_untracking_the_holder_publishes_revocation_before_promotion() -> None:
    sm = standby_machine()
    sm.tick(10, seen(PRIMARY, 10) + seen(STANDBY, 10))
    sm.untrack(PRIMARY)
    events = sm.tick(20, seen(STANDBY, 20))
    assert events == [
        PublishLeaseRevocation("registry", "provider-a", PRIMARY),
        BecameLive(STANDBY, "registry", 20),
    ]


def test_revived_primary_becomes_a_standby_and_the_role_moves_back_only_via_revocation() -> None:
    sm = standby_machine()
    sm.tick(10, seen(PRIMARY, 10) + seen(STANDBY, 10))
    sm.tick(440, seen(STANDBY, 440))  # primary evicted, standby promoted
    sm.notify_respawned(PRIMARY, 450)
    sm.tick(460, seen(PRIMARY, 460) + seen(STANDBY, 460))
    assert isinstance(sm.state_of(PRIMARY), Provisioning) and sm.role_holder("registry") == STANDBY
    events = sm.tick(900, seen(PRIMARY, 900))  # standby silent since 460: evicted at 880
    revoke = events.index(PublishLeaseRevocation("registry", "provider-b", STANDBY))
    assert revoke < events.index(BecameLive(PRIMARY, "registry", 900))


def test_nodes_without_a_role_are_independent() -> None:
    sm = LivenessMachine(quorum())
    for node in ("n1", "n2", "n3"):
        sm.track(node, now=0)
    sm.tick(10, seen("n1", 10) + seen("n2", 10) + seen("n3", 10))
    assert all(isinstance(sm.state_of(n), Live) for n in ("n1", "n2", "n3"))
