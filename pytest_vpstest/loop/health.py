"""Node health in the loop: checks in, the liveness machine decides, the runner acts.

The runner is the only writer of the :class:`~pytest_vpstest.loop.liveness.LivenessMachine` it
owns through a :class:`NodeHealth`. A round is: the runner checks every node (its ``NodeChecker``
seam: SSH answered, the service runs), :meth:`NodeHealth.observe` turns the checks into time-stamped
observations and ticks the machine, and the runner carries out the events that come back
(``Respawn``: restart the node's service, and report back with :meth:`NodeHealth.respawned` or
:meth:`NodeHealth.respawn_failed`).

Observers of a node: ``ssh`` (a command ran on it) and ``service`` (its service manager says the
service runs). Both must have seen it (a 2-of-2 quorum): a node whose SSH works but whose service
died is not Live, nor is one whose management connection is gone.

Peers are observers too when the software says whom it sees: a node's status answer may list the
peers it heard from and how long ago (``peers_seen``, docs/contract.md). Once any node's check
carries such a list, a third observer, ``peers``, joins for good (a 3-of-3 quorum): it saw a node at
the freshest time any other tracked node heard from it, where a sighting no older than
``health.peer_seen_within_seconds`` counts as one at the time of the check (peers hear each other at
the software's own pace). A node SSH still reaches, whose service
runs, but that no peer has heard from lately is then not Live (Suspect, later Evicted). Software
whose status answer has no such list keeps the 2-of-2 quorum.

Nothing here does I/O or reads a clock; the times are the runner's (seconds since the epoch).

What the machine knows of each node is kept in the node's ``liveness`` record (``record``) and put
back by :meth:`NodeHealth.restore` when a runner resumes: a node Evicted, Respawning or Failed before
a crash is so after it, and its respawn attempts count on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pytest_vpstest.config import HealthConfig
from pytest_vpstest.loop import liveness as lv

__all__ = [
    "OBSERVERS",
    "PEER_OBSERVERS",
    "NodeCheck",
    "NodeHealth",
    "health_label",
    "infrastructure_only",
    "peers_seen_of",
]

OBSERVERS: tuple[str, ...] = ("ssh", "service")
PEER_OBSERVERS: tuple[str, ...] = (*OBSERVERS, "peers")


@dataclass(frozen=True)
class NodeCheck:
    """One look at one node. ``detail`` says what was wrong (one line, '' when nothing was)."""

    ssh: bool
    service: bool
    detail: str = ""
    # False when SSH worked and the installed binary is gone (a respawn then redeploys).
    binary_present: bool = True
    # The peers this node heard from, {node: seconds ago}, from its status answer; None when the
    # answer has no such list (or there was no answer).
    sees: Mapping[str, float] | None = None

    @property
    def good(self) -> bool:
        return self.ssh and self.service


def peers_seen_of(answer: Mapping[str, Any] | None) -> dict[str, float] | None:
    """``{peer: seconds ago}`` from a status answer's ``peers_seen`` list; None when it has none.
    Malformed entries are left out (the contract check reports them)."""
    listed = answer.get("peers_seen") if answer is not None else None
    if not isinstance(listed, list):
        return None
    out: dict[str, float] = {}
    for item in listed:
        if not isinstance(item, Mapping):
            continue
        name, age = item.get("node"), item.get("age_seconds")
        if isinstance(name, str) and name and isinstance(age, int | float) and not isinstance(age, bool) \
                and age >= 0:
            out[name] = min(float(age), out.get(name, float("inf")))
    return out


def health_label(state: lv.NodeState | None) -> str:
    """The state's name as written in the state file and shown by ``vpstest status``."""
    return type(state).__name__ if state is not None else "Untracked"


class NodeHealth:
    """The loop's view of its nodes' liveness (one per runner; the runner is its only writer)."""

    def __init__(self, nodes: Iterable[str], cfg: HealthConfig, now: float) -> None:
        self.cfg = cfg
        self.names: tuple[str, ...] = tuple(nodes)
        self.observers = OBSERVERS
        self.machine = self._machine(now)
        self.last_check: dict[str, NodeCheck] = {}
        self.respawns: dict[str, int] = dict.fromkeys(self.names, 0)
        self.last_round: float | None = None

    # -------------------------------------------------------------- input

    def _machine(self, now: float) -> lv.LivenessMachine:
        cfg = self.cfg
        # Observations stay fresh for two check periods: one late round does not lose the quorum.
        stale = max(2 * cfg.check_seconds, cfg.suspect_after_seconds)
        n = len(self.observers)
        machine = lv.LivenessMachine(lv.QuorumConfig(
            m=n, n=n, t1_secs=cfg.suspect_after_seconds, t2_secs=cfg.evict_after_seconds, stale_secs=stale))
        for name in self.names:
            machine.track(name, restart_policy=lv.OnFailure(cfg.respawn_attempts), now=now)
        return machine

    def _count_peers(self, now: float) -> None:
        """Peers report whom they see: from now on ``peers`` is an observer (the machine is carried
        over with every node's record, so nothing it knew is lost)."""
        old = self.machine
        self.observers = PEER_OBSERVERS
        self.machine = self._machine(now)
        for name in self.names:
            record = old.node_record(name)
            if record is not None:
                self.machine.restore_node(name, record)

    @property
    def peers_counted(self) -> bool:
        return self.observers == PEER_OBSERVERS

    def restore(self, nodes: Mapping[str, Any]) -> list[str]:
        """Put back each node's ``liveness`` record from the state file's ``nodes`` map (a resumed
        runner); return one line per record that could not be used (that node starts afresh)."""
        problems: list[str] = []
        records = [e.get("liveness") for e in nodes.values() if isinstance(e, Mapping)]
        if any(isinstance(r, Mapping) and r.get("observers") == list(PEER_OBSERVERS) for r in records):
            self._count_peers(self.machine.now or 0.0)
        for name in self.names:
            entry = nodes.get(name)
            if not isinstance(entry, Mapping) or entry.get("liveness") is None:
                continue
            record = entry["liveness"]
            try:
                if not isinstance(record, Mapping):
                    raise ValueError("not a map")
                self.machine.restore_node(name, record)
            except ValueError as exc:
                problems.append(f"node {name}: liveness record not restored ({exc}); starting it afresh")
                continue
            cut_off = record.get("respawn_failure") is None
            if isinstance(self.machine.state_of(name), lv.Respawning) and cut_off:
                # The last runner died while respawning it: the outcome is unknown, so that attempt
                # counts as failed (the next tick tries again or fails the node) rather than hanging.
                self.machine.notify_respawn_failed(name, "the runner stopped during the respawn")
            # Every attempt the machine counted was a respawn (done, failed or cut off by the crash).
            self.respawns[name] = int(record["attempts"])
        return problems

    def _clamp(self, now: float) -> float:
        # The machine refuses time going backwards; a resumed runner's wall clock may be behind the
        # last tick it restored (or step back): hold the time still instead.
        last = self.machine.now
        return now if last is None else max(now, last)

    def observe(self, now: float, checks: Mapping[str, NodeCheck]) -> list[lv.Event]:
        """Feed one round of checks taken at ``now``; return the machine's events, in order."""
        now = self._clamp(now)
        if not self.peers_counted and any(c.sees is not None for c in checks.values()):
            self._count_peers(now)
        heard = self._heard_by_peers(now, checks)
        observations = []
        for name, check in checks.items():
            if name not in self.names:
                continue
            if check.ssh:
                observations.append(lv.Observation(name, "ssh", now, now))
            if check.good:
                observations.append(lv.Observation(name, "service", now, now))
            last = heard.get(name)
            if last is not None:
                observations.append(lv.Observation(name, "peers", now, last))
            if self.peers_counted and check.good and not check.detail and (last is None or last < now):
                # (A stamp is the sighting's age beyond the allowance: add the allowance back.)
                age = None if last is None else now - last + self.cfg.peer_seen_within_seconds
                ago = "" if age is None else f" (last {age:.0f} s ago)"
                check = replace(check, detail=f"no peer has heard from it lately{ago}")
            self.last_check[name] = check
        self.last_round = now
        return self.machine.tick(now, observations)

    def _heard_by_peers(self, now: float, checks: Mapping[str, NodeCheck]) -> dict[str, float]:
        """For each tracked node, the latest time another tracked node whose check was good heard
        from it: ``now`` minus the age it reported beyond ``peer_seen_within_seconds``."""
        heard: dict[str, float] = {}
        for observer, check in checks.items():
            if observer not in self.names or not check.good or not check.sees:
                continue
            for peer, age in check.sees.items():
                if peer in self.names and peer != observer and age >= 0:
                    # Heard within the allowance counts as heard now; older sightings age from there.
                    stamp = now - max(0.0, age - self.cfg.peer_seen_within_seconds)
                    heard[peer] = max(heard.get(peer, float("-inf")), stamp)
        return heard

    def tick(self, now: float) -> list[lv.Event]:
        """Advance the time without new checks (a respawn's outcome is taken in at the next tick)."""
        return self.machine.tick(self._clamp(max(now, self.last_round or now)))

    def respawned(self, node: str, now: float) -> None:
        self.respawns[node] = self.respawns.get(node, 0) + 1
        self.machine.notify_respawned(node, self._clamp(now))

    def respawn_failed(self, node: str, reason: str) -> None:
        self.respawns[node] = self.respawns.get(node, 0) + 1
        self.machine.notify_respawn_failed(node, reason)

    # -------------------------------------------------------------- decisions

    def state_of(self, node: str) -> lv.NodeState | None:
        return self.machine.state_of(node)

    def usable(self, node: str) -> bool:
        """Live, and its latest check was good: the only nodes a TEST may use."""
        check = self.last_check.get(node)
        return isinstance(self.state_of(node), lv.Live) and check is not None and check.good

    def live_count(self) -> int:
        return sum(1 for n in self.names if self.usable(n))

    def reason(self, node: str) -> str:
        """Why ``node`` is not usable, in a few words ('' when it is)."""
        if self.usable(node):
            return ""
        state = self.state_of(node)
        check = self.last_check.get(node)
        detail = check.detail if check is not None and check.detail else ""
        if isinstance(state, lv.Failed):
            return f"failed: {state.reason}" + (f"; last check: {detail}" if detail else "")
        label = health_label(state).lower()
        if check is None:
            return f"{label}: not checked yet"
        return f"{label}: {detail or 'no quorum of checks'}"

    def detail(self, node: str) -> str:
        """What the latest check of ``node`` found wrong."""
        check = self.last_check.get(node)
        return (check.detail if check is not None else "") or "no quorum of checks"

    def unhealthy(self) -> dict[str, str]:
        """Every node that a TEST must leave out, with the reason."""
        return {n: self.reason(n) for n in self.names if not self.usable(n)}

    def record(self, node: str) -> dict[str, Any]:
        """The health fields of ``node`` for the state file's ``nodes`` map."""
        check = self.last_check.get(node)
        out: dict[str, Any] = {
            "health": health_label(self.state_of(node)),
            "health_reason": self.reason(node) or None,
            "respawns": self.respawns.get(node, 0),
            "liveness": {**(self.machine.node_record(node) or {}), "observers": list(self.observers)},
        }
        if check is not None:
            out["ssh"] = check.ssh
            out["service"] = check.service
        return out


def infrastructure_only(
    has_results: bool, failed_nodes: tuple[frozenset[str], ...], unhealthy: set[str]
) -> bool:
    """A failed TEST whose every failed test touched an unhealthy node (or, when pytest recorded no
    results at all, any node was unhealthy): the nodes are at fault, not the software."""
    if not unhealthy:
        return False
    if not failed_nodes:
        return not has_results
    return all(nodes & unhealthy for nodes in failed_nodes)
