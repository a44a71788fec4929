"""The runner's hands for node health: one round is the nodes' checks → the liveness machine →
respawns → the record (the state file's ``nodes`` map, health events, log lines, notifications).

The runner owns one :class:`HealthKeeper`; through it the runner is the only writer of the
liveness machine (``loop.health.NodeHealth``). The checks and respawns go through the
:class:`NodeChecker` seam (``FleetStages`` over SSH; fakes in unit tests).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from pytest_vpstest.config import HealthConfig
from pytest_vpstest.loop import liveness as lv
from pytest_vpstest.loop.health import NodeCheck, NodeHealth
from pytest_vpstest.loop.stage_context import StageContext, iso

__all__ = ["HEALTH_EVENTS_KEPT", "HealthKeeper", "NodeChecker"]

# The state file keeps this many recent health events (runner.log keeps every one).
HEALTH_EVENTS_KEPT = 200


class NodeChecker(Protocol):
    """The runner's eyes and hands for node health."""

    def health_targets(self, ctx: StageContext) -> tuple[str, ...]:
        """The nodes whose health is tracked (those the software is deployed to)."""
        ...

    def check_nodes(self, ctx: StageContext, nodes: tuple[str, ...]) -> Mapping[str, NodeCheck]:
        """Look at each node once (SSH answers, the service runs); never raises for a node's fault."""
        ...

    def respawn(self, ctx: StageContext, node: str, *, redeploy: bool) -> str | None:
        """Restart the node's service (``redeploy``: install the artifact again first); the error or None."""
        ...


Change = tuple[str, str, str]  # (node, new health, why)


class HealthKeeper:
    """Runs health rounds for the runner (see the module docstring)."""

    def __init__(
        self,
        checker: NodeChecker,
        cfg: HealthConfig,
        *,
        project: str,
        clock: Callable[[], datetime],
        log: Callable[[str], None],
        notify: Callable[[str, str, Mapping[str, Any]], object],
    ) -> None:
        self.checker = checker
        self.cfg = cfg
        self.project = project
        self.clock = clock
        self.log = log
        self.notify = notify
        self.health: NodeHealth | None = None
        # Nodes whose check in the latest round was bad, before any respawn repaired them.
        self.found_bad: set[str] = set()

    def round(self, ctx: StageContext, document: dict[str, Any]) -> NodeHealth | None:
        """One round; its outcome is written into ``document`` (the runner saves it). None when the
        checks themselves could not run (nothing is decided then)."""
        if self.health is None:
            self.health = NodeHealth(self.checker.health_targets(ctx), self.cfg, self.clock().timestamp())
            # A resumed run: each node goes on from where the last runner left it.
            for problem in self.health.restore(document.get("nodes") or {}):
                self.log(problem)
        health = self.health
        try:
            checks = self.checker.check_nodes(ctx, health.names)
        except Exception as exc:  # the checks are the runner's own I/O: say so, decide nothing
            self.log(f"health check failed: {type(exc).__name__}: {exc}")
            return None
        self.found_bad = {name for name, check in checks.items() if not check.good}
        changes: list[Change] = []
        respawned = self._act(ctx, health.observe(self.clock().timestamp(), checks), changes)
        if respawned:
            # Give the restarted nodes their first look now rather than a whole period later.
            later = self.checker.check_nodes(ctx, tuple(respawned))
            self._act(ctx, health.observe(self.clock().timestamp(), later), changes)
        self._record(document, changes)
        return health

    def _act(self, ctx: StageContext, events: list[lv.Event], changes: list[Change]) -> list[str]:
        """Carry out the liveness machine's events; return the nodes respawned successfully."""
        assert self.health is not None
        health = self.health
        respawned: list[str] = []
        pending = list(events)
        while pending:
            ev = pending.pop(0)
            if isinstance(ev, lv.BecameLive):
                changes.append((ev.node, "Live", "checks good"))
            elif isinstance(ev, lv.BecameSuspect):
                changes.append((ev.node, "Suspect", health.detail(ev.node)))
            elif isinstance(ev, lv.NodeEvicted):
                changes.append((ev.node, "Evicted", health.detail(ev.node)))
            elif isinstance(ev, lv.NodeFailed):
                changes.append((ev.node, "Failed", ev.reason))
            elif isinstance(ev, lv.Respawn):
                check = health.last_check.get(ev.node)
                redeploy = check is not None and check.ssh and not check.binary_present
                changes.append((ev.node, "Respawning", f"attempt {ev.attempt}"
                                + (" (binary missing: redeploying)" if redeploy else "")))
                try:
                    error = self.checker.respawn(ctx, ev.node, redeploy=redeploy)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                if error is None:
                    health.respawned(ev.node, self.clock().timestamp())
                    changes.append((ev.node, "Provisioning", f"service restarted (attempt {ev.attempt})"))
                    respawned.append(ev.node)
                else:
                    self.log(f"node {ev.node}: respawn attempt {ev.attempt} failed: {error}")
                    health.respawn_failed(ev.node, error)
                    pending.extend(health.tick(self.clock().timestamp()))
        return respawned

    def _record(self, document: dict[str, Any], changes: list[Change]) -> None:
        """Each node's health into the ``nodes`` map; every change logged, notified and kept as an event."""
        assert self.health is not None
        nodes = document.setdefault("nodes", {})
        runner = document.setdefault("runner", {})
        events = runner.setdefault("health_events", [])
        now = iso(self.clock())
        first_look = {n for n in self.health.names if "health" not in (nodes.get(n) or {})}
        for name, new, reason in changes:
            old = (nodes.get(name) or {}).get("health", "Provisioning")
            events.append({"time": now, "node": name, "from": old, "to": new, "reason": reason})
            self.log(f"node {name}: {old} -> {new} ({reason})")
            self.notify("node_health", f"{self.project}: node {name} {old} -> {new}: {reason}",
                        {"node": name, "from": old, "to": new, "reason": reason})
            nodes[name] = {**(nodes.get(name) or {}), "health": new}
        for name in self.health.names:
            entry = dict(nodes.get(name) or {})
            entry.update(self.health.record(name), health_checked=now)
            nodes[name] = entry
            if name in first_look and entry["health"] != "Live":
                self.log(f"node {name}: not live ({entry['health_reason']})")
        del events[:-HEALTH_EVENTS_KEPT]
        runner["unhealthy"] = self.health.unhealthy()
