"""Single-writer properties of the liveness machine under Hypothesis, over random observation sequences
(fresh, stale and future stamps from three observers), clock advances, respawns and untracking:
a lease revocation is emitted only once the holder's local state has left Live; a standby is promoted
only after that revocation; at most one node per role is Live at every instant. The first test is a
seeded random walk; the second a rule-based machine checking every event against a model."""

from __future__ import annotations

import random

from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pytest_vpstest.loop.liveness import (
    BecameLive,
    BecameSuspect,
    Event,
    Live,
    LivenessMachine,
    NodeEvicted,
    Observation,
    OnFailure,
    PublishLeaseRevocation,
    QuorumConfig,
    Respawning,
    WarmStandby,
)

OBSERVERS = ("ssh-prober", "registry", "peer-reports")
ROLE = "registry"
PRIMARY, STANDBYS = "primary", ("standby-1", "standby-2")
ROLE_NODES = (PRIMARY, *STANDBYS)
SOLO = "solo"  # a node alone in its role, without replication
NODES = (*ROLE_NODES, SOLO)


def quorum() -> QuorumConfig:
    return QuorumConfig(m=2, n=3, t1_secs=120, t2_secs=300, stale_secs=180)


def track(sm: LivenessMachine, node: str, now: float) -> None:
    if node == PRIMARY:
        sm.track(node, role=ROLE, holder="provider-a", replication=WarmStandby(STANDBYS), now=now)
    elif node in STANDBYS:
        sm.track(node, role=ROLE, holder=f"provider-{node}", now=now)
    else:
        sm.track(node, now=now, restart_policy=OnFailure(2))


def live_per_role(sm: LivenessMachine) -> dict[str, list[str]]:
    roles = {ROLE: [n for n in ROLE_NODES if isinstance(sm.state_of(n), Live)]}
    roles[SOLO] = [SOLO] if isinstance(sm.state_of(SOLO), Live) else []
    return roles


@given(seed=st.integers(min_value=0, max_value=2**64 - 1))
def test_warm_standby_revocation_only_after_local_eviction(seed: int) -> None:
    """A seeded random walk, with the standbys tracked too: 100 ticks 10..119 s apart, each observer
    reporting each node with a per-node probability; respawned nodes come back as standbys."""
    rng = random.Random(seed)
    sm = LivenessMachine(quorum())
    for node in NODES:
        track(sm, node, 0)
    t = 0
    # Every node starts healthy, then stays healthy, turns flaky or fades, so holders do get evicted.
    later = {node: rng.choice([0.9, 0.6, 0.3, 0.05]) for node in NODES}
    for step in range(100):
        t += rng.randrange(10, 120)
        obs = [
            Observation(node, o, t, t)
            for node in NODES
            for o in OBSERVERS
            if rng.random() < (0.9 if step < 10 else later[node])
        ]
        events = sm.tick(t, obs)
        for ev in events:
            if isinstance(ev, PublishLeaseRevocation):
                event("revocation")
                assert not isinstance(sm.state_of(ev.node), Live), f"revocation while {ev.node} is Live"
        assert all(len(live) <= 1 for live in live_per_role(sm).values()), live_per_role(sm)
        for node in NODES:
            if isinstance(sm.state_of(node), Respawning) and rng.random() < 0.5:
                sm.notify_respawned(node, t)


class RoleMachine(RuleBasedStateMachine):
    """Drives the machine at random and replays each tick's events through a model of the role."""

    def __init__(self) -> None:
        super().__init__()
        self.sm = LivenessMachine(quorum())
        self.now = 0.0
        self.pending: list[Observation] = []
        self.tracked = set(NODES)
        for node in NODES:
            track(self.sm, node, 0.0)
        # The model: who owns each role (Live or Suspect) and whose revocation is still owed.
        self.owner: dict[str, str | None] = {ROLE: None, SOLO: None}
        self.owed_revocation: str | None = None

    @rule(
        node=st.sampled_from(NODES),
        observers=st.sets(st.sampled_from(OBSERVERS), min_size=1),
        age=st.one_of(st.floats(min_value=-30, max_value=400), st.just(0.0)),
    )
    def observe(self, node: str, observers: set[str], age: float) -> None:
        self.pending += [Observation(node, o, self.now, self.now - age) for o in sorted(observers)]

    @rule(nodes=st.sets(st.sampled_from(NODES), min_size=1))
    def heartbeats(self, nodes: set[str]) -> None:
        """A fresh quorum for each of ``nodes``, then a tick."""
        self.pending += [Observation(n, o, self.now, self.now) for n in sorted(nodes) for o in OBSERVERS[:2]]
        self.tick()

    @rule(seconds=st.one_of(st.floats(min_value=0, max_value=400), st.sampled_from([120.0, 300.0, 180.0])))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def tick(self) -> None:
        events = self.sm.tick(self.now, self.pending)
        self.pending = []
        self.replay(events)

    @rule(node=st.sampled_from(NODES))
    def respawned(self, node: str) -> None:
        self.sm.notify_respawned(node, self.now)

    @rule(node=st.sampled_from(NODES))
    def respawn_failed(self, node: str) -> None:
        self.sm.notify_respawn_failed(node, "no capacity")

    @rule(node=st.sampled_from(NODES))
    def untrack_or_track(self, node: str) -> None:
        if node in self.tracked:
            self.sm.untrack(node)
            self.tracked.discard(node)
            role = ROLE if node in ROLE_NODES else SOLO
            if self.owner[role] == node:
                self.owner[role] = None
                if role == ROLE:
                    self.owed_revocation = node
        else:
            track(self.sm, node, self.now)
            self.tracked.add(node)

    def replay(self, events: list[Event]) -> None:
        for index, ev in enumerate(events):
            if isinstance(ev, BecameLive):
                event("became live")
                previous = self.owner[ev.role]
                assert previous in (None, ev.node), f"{ev.node} Live while {previous} holds {ev.role}"
                if ev.role == ROLE:
                    assert self.owed_revocation is None, (
                        f"{ev.node} promoted before {self.owed_revocation} revoked"
                    )
                self.owner[ev.role] = ev.node
            elif isinstance(ev, BecameSuspect):
                role = ROLE if ev.node in ROLE_NODES else SOLO
                assert self.owner[role] == ev.node, f"{ev.node} suspect without holding {role}"
            elif isinstance(ev, NodeEvicted):
                role = ROLE if ev.node in ROLE_NODES else SOLO
                if self.owner[role] == ev.node:
                    self.owner[role] = None
                    if role == ROLE:
                        self.owed_revocation = ev.node
            elif isinstance(ev, PublishLeaseRevocation):
                event("revocation")
                assert ev.role == ROLE and ev.node == self.owed_revocation, (ev, self.owed_revocation)
                # The property: the revoked holder's own state has already left Live. (A node
                # untracked and tracked again may be promoted anew, but only after the revocation.)
                promoted_after = BecameLive(ev.node, ROLE, self.now) in events[index + 1 :]
                if not promoted_after:
                    assert not isinstance(self.sm.state_of(ev.node), Live), (
                        f"revocation while {ev.node} is Live"
                    )
                self.owed_revocation = None

    @invariant()
    def at_most_one_live_per_role(self) -> None:
        for role, live in live_per_role(self.sm).items():
            assert len(live) <= 1, f"{role} has two Live holders: {live}"
            assert not live or self.owner[role] == live[0], (role, live, self.owner)


TestRoleMachine = RoleMachine.TestCase
