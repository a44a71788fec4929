"""Properties of node health with the runner's keeper as the liveness machine's only writer, under
Hypothesis: random check outcomes (SSH down, service dead, healthy), respawns that work or fail, and
random gaps between rounds. After every round:

* a node the TEST may use is Live and its latest check was good;
* every recorded health change follows an edge of the liveness machine, from where the node was;
* no node is respawned more often than ``respawn_attempts``, and a Failed node stays Failed;
* a node whose every check is good is never evicted.

The same holds across runner restarts (a new keeper that restores the liveness records from the
state document, as a resumed runner does): respawn attempts count on and Failed stays Failed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_vpstest.config import HealthConfig, Inventory, Node, ProjectConfig
from pytest_vpstest.loop import liveness as lv
from pytest_vpstest.loop import machine as m
from pytest_vpstest.loop.health import NodeCheck
from pytest_vpstest.loop.health_keeper import HealthKeeper
from pytest_vpstest.loop.stage_context import StageContext

NAMES = ("a", "b", "c")
EDGES = {
    ("Provisioning", "Live"), ("Live", "Suspect"), ("Suspect", "Live"), ("Suspect", "Evicted"),
    ("Evicted", "Respawning"), ("Evicted", "Failed"), ("Respawning", "Provisioning"),
    ("Respawning", "Respawning"), ("Respawning", "Failed"),
}
CFG = HealthConfig(check_seconds=10, suspect_after_seconds=10, evict_after_seconds=10, respawn_attempts=2)

# One round: per node 0 = healthy, 1 = service dead, 2 = SSH down; whether respawns work; the gap before it.
rounds = st.lists(
    st.tuples(st.tuples(*(st.integers(0, 2) for _ in NAMES)), st.booleans(), st.floats(1, 40)),
    min_size=1, max_size=30,
)


class ScriptedChecker:
    def __init__(self) -> None:
        self.now: dict[str, int] = dict.fromkeys(NAMES, 0)
        self.respawn_ok = True
        self.respawns: dict[str, int] = dict.fromkeys(NAMES, 0)

    def health_targets(self, ctx: StageContext) -> tuple[str, ...]:
        return NAMES

    def check_nodes(self, ctx: StageContext, nodes: tuple[str, ...]) -> Mapping[str, NodeCheck]:
        out = {}
        for n in nodes:
            code = self.now[n]
            out[n] = NodeCheck(code != 2, code == 0, ("", "service dead", "ssh: refused")[code])
        return out

    def respawn(self, ctx: StageContext, node: str, *, redeploy: bool) -> str | None:
        self.respawns[node] += 1
        if self.respawn_ok and self.now[node] == 1:
            self.now[node] = 0
            return None
        return "ssh: refused" if self.now[node] == 2 else ("could not start" if not self.respawn_ok else None)


def _ctx(tmp: Path) -> StageContext:
    import threading

    config = ProjectConfig(path=None, project="p", workspace=tmp)
    inv = Inventory(nodes=tuple(Node(name=n, host="127.0.0.1") for n in NAMES))
    return StageContext(config=config, inventory=inv, state_dir=tmp, project_dir=tmp, stop=threading.Event(),
                        log=lambda _l: None, state=m.initial_state("p", datetime(2026, 1, 1, tzinfo=UTC)))


@settings(max_examples=150, deadline=None)
@given(rounds)
def test_health_rounds_keep_the_liveness_invariants(script: list[Any]) -> None:
    _check_rounds(script, frozenset())


@settings(max_examples=150, deadline=None)
@given(rounds, st.sets(st.integers(0, 29)))
def test_the_invariants_hold_across_runner_restarts(script: list[Any], restarts: set[int]) -> None:
    _check_rounds(script, frozenset(restarts))


def _check_rounds(script: list[Any], restarts: frozenset[int]) -> None:
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]
    checker = ScriptedChecker()

    def new_keeper() -> HealthKeeper:
        return HealthKeeper(checker, CFG, project="p", clock=lambda: clock[0], log=lambda _l: None,
                            notify=lambda *_a: None)

    keeper = new_keeper()
    document: dict[str, Any] = {}
    ctx = _ctx(Path("/nonexistent"))
    always_good = set(NAMES)
    seen_events = 0
    for i, (codes, respawn_ok, gap) in enumerate(script):
        if i in restarts:
            # A resumed runner: a new keeper, the document as the state file kept it.
            document = json.loads(json.dumps(document, allow_nan=False))
            keeper = new_keeper()
        clock[0] += timedelta(seconds=gap)
        for n, code in zip(NAMES, codes, strict=True):
            checker.now[n] = code
            if code:
                always_good.discard(n)
        checker.respawn_ok = respawn_ok
        health = keeper.round(ctx, document)
        assert health is not None
        for n in NAMES:
            state = health.state_of(n)
            if health.usable(n):
                assert isinstance(state, lv.Live) and health.last_check[n].good
            assert checker.respawns[n] <= CFG.respawn_attempts
        events = document["runner"]["health_events"]
        for e in events[seen_events:]:
            assert (e["from"], e["to"]) in EDGES, e
        seen_events = len(events)
        where: dict[str, str] = {}
        for e in events:
            assert where.get(e["node"], "Provisioning") == e["from"], e
            assert where.get(e["node"]) != "Failed"
            where[e["node"]] = e["to"]
        for n, entry in document["nodes"].items():
            assert entry["health"] == where.get(n, "Provisioning")
    for n in always_good:
        assert not any(e["node"] == n and e["to"] in ("Suspect", "Evicted") for e in
                       document["runner"]["health_events"])
