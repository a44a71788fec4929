"""Node liveness by observer quorum: a pure state machine, no I/O and no clock of its own.

Each tracked node is watched by several observers (the SSH prober, the registry, peer reports).
An observation says "observer O saw node X alive, by an event stamped T". The machine moves a node

    Provisioning ──quorum──► Live ──T1 without quorum──► Suspect ──T2 more──► Evicted
                              ▲                            │                      │ restart policy
                              └──── quorum within T2 ──────┘                      ▼
                                                                 Respawning(attempt) ──► Failed(reason)

* quorum: at least ``m`` distinct observers whose latest observation of the node is fresh,
  ``|now - event_timestamp| <= stale_secs`` (a stale or far-future stamp never counts). The time of a
  quorum is the m-th newest of those stamps: the moment m observers had all seen the node.
* Live → Suspect once ``t1_secs`` passed since the last quorum; Suspect → Evicted ``t2_secs`` later,
  unless a quorum newer than the suspicion arrives first. Times are exact, so a late tick may cascade.
* Evicted → Respawning(attempt) under ``OnFailure(max_attempts)`` (``Respawn`` asks the runner to do
  it); the runner reports back with ``notify_respawned`` (→ Provisioning, older observations ignored)
  or ``notify_respawn_failed`` (next tick: ``RespawnFailed`` and another attempt, or ``Failed``).
  ``Never`` fails at once.

Roles: every node is tracked for a role (default: its own name). At most one node per role is Live,
the role's holder; other healthy nodes of the role wait in Provisioning as warm standbys. When the
holder of a ``WarmStandby`` role is evicted (or untracked), ``PublishLeaseRevocation(role, holder)`` is
emitted once its state has left Live, and only after that event may a standby become Live
(``BecameLive`` follows the revocation in the event list, which the runner executes in order).

Persistence: ``node_record(node)`` is what the machine knows of a node as a JSON-ready dict (state,
respawn attempts, the latest observation per observer with its stamp, the last quorum, the epoch
before which observations are ignored); ``restore_node(node, record)`` puts it back into a machine
that tracks the node (for the same role and restart policy). A restored machine decides exactly as
the one it was saved from; stale observations stay stale, since staleness is judged at each tick.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BecameLive",
    "BecameSuspect",
    "Event",
    "Evicted",
    "Failed",
    "Live",
    "LivenessMachine",
    "Never",
    "NodeEvicted",
    "NodeFailed",
    "NodeState",
    "Observation",
    "OnFailure",
    "Provisioning",
    "PublishLeaseRevocation",
    "QuorumConfig",
    "Replication",
    "Respawn",
    "RespawnFailed",
    "Respawning",
    "RestartPolicy",
    "Suspect",
    "WarmStandby",
]


@dataclass(frozen=True)
class QuorumConfig:
    """M-of-N observer quorum and the timeouts (seconds) of the liveness machine."""

    m: int
    n: int
    t1_secs: float
    t2_secs: float
    stale_secs: float

    def __post_init__(self) -> None:
        if not 1 <= self.m <= self.n:
            raise ValueError(f"quorum needs 1 <= m <= n, got m={self.m} n={self.n}")
        if self.t1_secs <= 0 or self.t2_secs <= 0 or self.stale_secs < 0:
            raise ValueError("t1_secs and t2_secs must be positive and stale_secs not negative")


# ---------------------------------------------------------------- policies


@dataclass(frozen=True)
class Never:
    """Do not respawn an evicted node: it fails."""


@dataclass(frozen=True)
class OnFailure:
    """Respawn an evicted node, at most ``max_attempts`` times over its tracked life."""

    max_attempts: int


RestartPolicy = Never | OnFailure


@dataclass(frozen=True)
class WarmStandby:
    """The role is exclusive with standbys: promotion waits for the revocation of the old holder.

    ``standbys`` are node names, in order of preference.
    """

    standbys: tuple[str, ...] = ()


Replication = WarmStandby | None


@dataclass(frozen=True)
class Observation:
    """``observer`` saw ``node`` alive at ``seen_at``, by an event stamped ``event_timestamp``."""

    node: str
    observer: str
    seen_at: float
    event_timestamp: float


# ---------------------------------------------------------------- states


@dataclass(frozen=True)
class Provisioning:
    since: float


@dataclass(frozen=True)
class Live:
    since: float


@dataclass(frozen=True)
class Suspect:
    since: float


@dataclass(frozen=True)
class Evicted:
    at: float


@dataclass(frozen=True)
class Respawning:
    attempt: int


@dataclass(frozen=True)
class Failed:
    reason: str


NodeState = Provisioning | Live | Suspect | Evicted | Respawning | Failed


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class BecameLive:
    node: str
    role: str
    at: float


@dataclass(frozen=True)
class BecameSuspect:
    node: str
    at: float


@dataclass(frozen=True)
class NodeEvicted:
    node: str
    at: float


@dataclass(frozen=True)
class PublishLeaseRevocation:
    """Tell the world the role's lease held by ``holder`` (on ``node``) is void."""

    role: str
    holder: str
    node: str


@dataclass(frozen=True)
class Respawn:
    node: str
    attempt: int


@dataclass(frozen=True)
class RespawnFailed:
    node: str
    attempt: int
    reason: str


@dataclass(frozen=True)
class NodeFailed:
    node: str
    reason: str


Event = (
    BecameLive | BecameSuspect | NodeEvicted | PublishLeaseRevocation | Respawn | RespawnFailed | NodeFailed
)


# ---------------------------------------------------------------- machine


@dataclass
class _Node:
    name: str
    role: str
    holder: str
    replication: Replication
    restart_policy: RestartPolicy
    state: NodeState
    order: int
    # Observations stamped before this are from an earlier incarnation and ignored.
    epoch: float
    seen: dict[str, float] = field(default_factory=dict)
    last_quorum: float | None = None
    attempts: int = 0
    respawn_failure: str | None = None


@dataclass
class _Role:
    holder: str | None = None  # node name of the Live (or Suspect) holder
    warm: bool = False  # some node declared WarmStandby: every change of holder needs a revocation
    revocation_due: tuple[str, str] | None = None  # (node, holder) whose revocation is to be published
    preference: tuple[str, ...] = ()


class LivenessMachine:
    """Tracks nodes and turns observations plus the time into state changes and events.

    Pure: every method takes the time it needs; nothing here sleeps, reads a clock or does I/O.
    """

    def __init__(self, cfg: QuorumConfig) -> None:
        self.cfg = cfg
        self._nodes: dict[str, _Node] = {}
        self._roles: dict[str, _Role] = {}
        self._order = 0
        self._now: float | None = None

    # ------------------------------------------------------------ tracking

    def track(
        self,
        node: str,
        role: str | None = None,
        holder: str | None = None,
        replication: Replication = None,
        restart_policy: RestartPolicy = OnFailure(3),
        now: float = 0.0,
    ) -> None:
        """Start watching ``node`` (Provisioning). ``holder`` names who runs it (default: the node)."""
        if node in self._nodes:
            raise ValueError(f"node {node!r} is already tracked")
        if isinstance(restart_policy, OnFailure) and restart_policy.max_attempts < 0:
            raise ValueError("max_attempts must not be negative")
        role_name = role if role is not None else node
        self._order += 1
        self._nodes[node] = _Node(
            name=node,
            role=role_name,
            holder=holder if holder is not None else node,
            replication=replication,
            restart_policy=restart_policy,
            state=Provisioning(now),
            order=self._order,
            epoch=float("-inf"),
        )
        role_state = self._roles.setdefault(role_name, _Role())
        if isinstance(replication, WarmStandby):
            role_state.warm = True
            role_state.preference = replication.standbys

    def untrack(self, node: str) -> None:
        """Stop watching ``node``. If it held a warm-standby role, its revocation is published next tick."""
        tracked = self._nodes.pop(node, None)
        if tracked is None:
            return
        role = self._roles[tracked.role]
        if role.holder == node:
            role.holder = None
            if role.warm:
                role.revocation_due = (node, tracked.holder)

    def state_of(self, node: str) -> NodeState | None:
        tracked = self._nodes.get(node)
        return tracked.state if tracked is not None else None

    def role_holder(self, role: str) -> str | None:
        """The node holding ``role`` (Live, or Suspect and not yet evicted), if any."""
        state = self._roles.get(role)
        return state.holder if state is not None else None

    @property
    def now(self) -> float | None:
        """The time of the latest tick (None before the first)."""
        return self._now

    # ------------------------------------------------------------ persistence

    def node_record(self, node: str) -> dict[str, Any] | None:
        """What the machine knows of ``node``, JSON-ready (see the module docstring); None if untracked."""
        tracked = self._nodes.get(node)
        if tracked is None:
            return None
        return {
            "state": _state_record(tracked.state),
            "attempts": tracked.attempts,
            "seen": dict(sorted(tracked.seen.items())),
            "last_quorum": tracked.last_quorum,
            "epoch": None if tracked.epoch == float("-inf") else tracked.epoch,
            "respawn_failure": tracked.respawn_failure,
            "ticked": self._now,
        }

    def restore_node(self, node: str, record: Mapping[str, Any]) -> None:
        """Put a ``node_record`` back; ``node`` must be tracked. ValueError (naming the field) for a
        record that does not make sense; the machine is then unchanged."""
        tracked = self._nodes.get(node)
        if tracked is None:
            raise ValueError(f"node {node!r} is not tracked")
        state = _state_from(record.get("state"))
        attempts = record.get("attempts")
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
            raise ValueError(f"node {node!r}: attempts must be a whole number >= 0, got {attempts!r}")
        seen_doc = record.get("seen")
        if not isinstance(seen_doc, Mapping):
            raise ValueError(f"node {node!r}: seen must be a map of observer to time")
        seen = {str(k): _time(v, f"seen.{k}") for k, v in seen_doc.items()}
        last_quorum = _time_or_none(record.get("last_quorum"), "last_quorum")
        epoch = _time_or_none(record.get("epoch"), "epoch")
        ticked = _time_or_none(record.get("ticked"), "ticked")
        failure = record.get("respawn_failure")
        if failure is not None and not isinstance(failure, str):
            raise ValueError(f"node {node!r}: respawn_failure must be text or null")
        role = self._roles[tracked.role]
        if role.holder not in (None, node) and isinstance(state, Live | Suspect):
            raise ValueError(f"node {node!r}: role {tracked.role!r} is already held by {role.holder!r}")
        tracked.state, tracked.attempts, tracked.seen = state, attempts, seen
        tracked.last_quorum, tracked.respawn_failure = last_quorum, failure
        tracked.epoch = float("-inf") if epoch is None else epoch
        if isinstance(state, Live | Suspect):
            role.holder = node
        elif role.holder == node:
            role.holder = None
        if ticked is not None and (self._now is None or ticked > self._now):
            self._now = ticked

    # ------------------------------------------------------------ feedback

    def notify_respawn_failed(self, node: str, reason: str) -> None:
        """The runner's respawn attempt failed; the next tick retries or fails the node."""
        tracked = self._nodes.get(node)
        if tracked is not None and isinstance(tracked.state, Respawning):
            tracked.respawn_failure = reason

    def notify_respawned(self, node: str, now: float) -> None:
        """A new instance of ``node`` started at ``now``: Provisioning again, older observations ignored."""
        tracked = self._nodes.get(node)
        if tracked is None or not isinstance(tracked.state, Respawning):
            return
        tracked.state = Provisioning(now)
        tracked.epoch = now
        tracked.seen.clear()
        tracked.last_quorum = None
        tracked.respawn_failure = None

    # ------------------------------------------------------------ the step

    def tick(self, now: float, observations: Iterable[Observation] = ()) -> list[Event]:
        """Take in ``observations``, advance every node to ``now`` and return the events, in order."""
        if self._now is not None and now < self._now:
            raise ValueError(f"time went backwards: tick at {now} after {self._now}")
        self._now = now
        for obs in observations:
            tracked = self._nodes.get(obs.node)
            if tracked is None or obs.event_timestamp < tracked.epoch:
                continue
            if obs.event_timestamp - now > self.cfg.stale_secs:
                # Far in the future (a broken observer clock): kept, it would shadow that observer's
                # later, correct stamps, since only its newest one counts.
                continue
            if obs.event_timestamp > tracked.seen.get(obs.observer, float("-inf")):
                tracked.seen[obs.observer] = obs.event_timestamp

        events: list[Event] = []
        for tracked in sorted(self._nodes.values(), key=lambda t: t.order):
            quorum_at = self._quorum_at(tracked, now)
            if quorum_at is not None and (tracked.last_quorum is None or quorum_at > tracked.last_quorum):
                tracked.last_quorum = quorum_at
            self._advance(tracked, now, events)
        for role_name, role in self._roles.items():
            self._settle_role(role_name, role, now, events)
        return events

    # ------------------------------------------------------------ internals

    def _quorum_at(self, tracked: _Node, now: float) -> float | None:
        fresh = sorted(
            (stamp for stamp in tracked.seen.values() if abs(now - stamp) <= self.cfg.stale_secs),
            reverse=True,
        )
        return fresh[self.cfg.m - 1] if len(fresh) >= self.cfg.m else None

    def _recent_quorum(self, tracked: _Node, now: float) -> bool:
        """A quorum no older than T1, and fresh now."""
        quorum_at = self._quorum_at(tracked, now)
        return quorum_at is not None and now - quorum_at <= self.cfg.t1_secs

    def _advance(self, tracked: _Node, now: float, events: list[Event]) -> None:
        cfg = self.cfg
        # Replay the timeline up to now with exact times, so the outcome does not depend on how often
        # tick() is called. Each pass moves forward in time; Live → Suspect → Live → Suspect at most.
        while True:
            state, last = tracked.state, tracked.last_quorum
            if isinstance(state, Live):
                quiet_since = last if last is not None else state.since
                if now - quiet_since > cfg.t1_secs:
                    tracked.state = Suspect(quiet_since + cfg.t1_secs)
                    events.append(BecameSuspect(tracked.name, quiet_since + cfg.t1_secs))
                    continue
            elif isinstance(state, Suspect):
                if last is not None and state.since < last <= state.since + cfg.t2_secs:
                    tracked.state = Live(last)
                    events.append(BecameLive(tracked.name, tracked.role, last))
                    continue
                if now > state.since + cfg.t2_secs:
                    self._evict(tracked, state.since + cfg.t2_secs, events)
            break
        if isinstance(tracked.state, Evicted):
            self._respawn_or_fail(tracked, f"evicted at {tracked.state.at:g}", events)
        elif isinstance(tracked.state, Respawning) and tracked.respawn_failure is not None:
            reason, tracked.respawn_failure = tracked.respawn_failure, None
            events.append(RespawnFailed(tracked.name, tracked.state.attempt, reason))
            self._respawn_or_fail(tracked, f"respawn failed: {reason}", events)

    def _evict(self, tracked: _Node, at: float, events: list[Event]) -> None:
        # The state leaves Live/Suspect first; only then may the revocation be published.
        tracked.state = Evicted(at)
        events.append(NodeEvicted(tracked.name, at))
        role = self._roles[tracked.role]
        if role.holder == tracked.name:
            role.holder = None
            if role.warm:
                events.append(PublishLeaseRevocation(tracked.role, tracked.holder, tracked.name))

    def _respawn_or_fail(self, tracked: _Node, why: str, events: list[Event]) -> None:
        policy = tracked.restart_policy
        if isinstance(policy, OnFailure) and tracked.attempts < policy.max_attempts:
            tracked.attempts += 1
            tracked.state = Respawning(tracked.attempts)
            events.append(Respawn(tracked.name, tracked.attempts))
            return
        if isinstance(policy, Never):
            reason = f"{why}; restart policy is never"
        else:
            reason = f"{why}; {tracked.attempts} respawn attempt(s) used of {policy.max_attempts}"
        tracked.state = Failed(reason)
        events.append(NodeFailed(tracked.name, reason))

    def _settle_role(self, role_name: str, role: _Role, now: float, events: list[Event]) -> None:
        if role.revocation_due is not None:
            node, holder = role.revocation_due
            role.revocation_due = None
            events.append(PublishLeaseRevocation(role_name, holder, node))
        if role.holder is not None:
            return
        candidates = [
            t
            for t in self._nodes.values()
            if t.role == role_name and isinstance(t.state, Provisioning) and self._recent_quorum(t, now)
        ]
        if not candidates:
            return

        def rank(t: _Node) -> tuple[bool, int, int]:
            # The primary (the node that declared the standbys) first, then its standbys in its order.
            preferred = role.preference.index(t.name) if t.name in role.preference else len(role.preference)
            return not isinstance(t.replication, WarmStandby), preferred, t.order

        chosen = min(candidates, key=rank)
        chosen.state = Live(now)
        role.holder = chosen.name
        events.append(BecameLive(chosen.name, role_name, now))


# ---------------------------------------------------------------- records


def _state_record(state: NodeState) -> dict[str, Any]:
    return {"name": type(state).__name__, **state.__dict__}


_STATE_NAMES = ("Provisioning", "Live", "Suspect", "Evicted", "Respawning", "Failed")


def _state_from(doc: object) -> NodeState:
    if not isinstance(doc, Mapping) or doc.get("name") not in _STATE_NAMES:
        raise ValueError(f"state must be one of {', '.join(_STATE_NAMES)} with its field, got {doc!r}")
    name = doc["name"]
    if name == "Respawning":
        attempt = doc.get("attempt")
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
            raise ValueError(f"state.attempt must be a whole number >= 1, got {attempt!r}")
        return Respawning(attempt)
    if name == "Failed":
        reason = doc.get("reason")
        if not isinstance(reason, str):
            raise ValueError(f"state.reason must be text, got {reason!r}")
        return Failed(reason)
    if name == "Evicted":
        return Evicted(_time(doc.get("at"), "state.at"))
    since = _time(doc.get("since"), "state.since")
    if name == "Provisioning":
        return Provisioning(since)
    return Live(since) if name == "Live" else Suspect(since)


def _time(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where} must be a time in seconds, got {value!r}")
    return float(value)


def _time_or_none(value: object, where: str) -> float | None:
    return None if value is None else _time(value, where)
