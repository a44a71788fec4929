"""Cells that depend on others, on the matrix engine with a fake step runner: a gossip broadcast
(the publish, then each receiver's polls with the publish's message id, each ending when its
answer comes or its window is over), broadcasts of several publishers at the same time, and a
failed publish whose polls are not run."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_vpstest.fleet.probes import ProbeResult
from pytest_vpstest.plugin.engine import ProbeSpec
from pytest_vpstest.plugin.schedule import Cell, Task
from pytest_vpstest.plugin.spec import MIN_TIMEOUT, Flow

from .test_engine import FakeSteps, run

POLL = 0.05


def result(task: Task, data: dict[str, Any] | None, error: str | None = None) -> ProbeResult:
    spec = task.cell.spec
    assert isinstance(spec, ProbeSpec)
    return ProbeResult(spec.action, spec.node, spec.describe(), 0, "", "", 0.0, data=data, error=error)


def bind_message(publish: str, spec: ProbeSpec, deps: Mapping[str, Sequence[ProbeResult]]) -> ProbeSpec | str:
    published = deps[publish][-1]
    if not published.ok:
        return "the publish failed"
    message = (("message_id", published.get("message_id")),)
    return dataclasses.replace(spec, values=message, until=lambda r: r.get("received") is True)


def broadcast(publisher: str, receivers: Sequence[str], window: float = 2.0) -> list[Cell]:
    pub_key = f"{publisher}#publish"
    cells = [ProbeSpec("gossip_publish", publisher, None, 1, 1.0).cell(pub_key, "gossip")]
    for n in receivers:
        poll = ProbeSpec(
            "gossip_received",
            n,
            None,
            int(window / POLL) + 2,
            window,
            cooloff=POLL,
            after=(pub_key,),
            within=window,
            bind=functools.partial(bind_message, pub_key),
        )
        cells.append(poll.cell(f"{publisher}#received:{n}", "gossip"))
    return cells


class Gossip:
    """Publishes answer a message id (or fail); receiver ``n`` has the message from its
    ``arrives[n]``-th poll on (never when absent)."""

    def __init__(self, arrives: dict[str, int], publish_ok: bool = True) -> None:
        self.arrives = arrives
        self.publish_ok = publish_ok
        self.polls: dict[str, list[ProbeSpec]] = {}
        self.lock = threading.Lock()

    def __call__(self, task: Task) -> ProbeResult:
        spec = task.cell.spec
        assert isinstance(spec, ProbeSpec)
        if spec.action == "gossip_publish":
            if not self.publish_ok:
                return result(task, {"ok": False, "message_id": None, "error": "no peers"})
            return result(task, {"ok": True, "message_id": f"m-{spec.node}"})
        with self.lock:
            seen = self.polls.setdefault(task.cell.key, [])
            seen.append(spec)
            got = len(seen) >= self.arrives.get(spec.node, 10**6)
        return result(task, {"ok": True, "received": got, "latency_ms": 5, "duplicates": 0})


def test_each_receiver_is_polled_with_the_message_id_until_it_has_it() -> None:
    gossip = Gossip({"b": 1, "c": 3, "d": 5})
    steps = FakeSteps(gossip, delay=0.01)
    cells = broadcast("a", ["b", "c", "d"])
    engine, delivered = run(cells, steps, per_node=4)
    got = dict(delivered)
    assert [len(got[f"a#received:{n}"]) for n in "bcd"] == [1, 3, 5]  # the rest were dropped
    assert all(r.get("received") is True for n in "bcd" for r in got[f"a#received:{n}"][-1:])
    assert {v for specs in gossip.polls.values() for s in specs for v in s.values} == {("message_id", "m-a")}
    # No poll started before the publish had ended.
    publish_end = steps.ends[("a#publish", 0)]
    assert all(steps.starts[(f"a#received:{n}", 0)] >= publish_end for n in "bcd")
    # The polls of one receiver are a cool-off apart.
    polls = [steps.starts[("a#received:d", i)] for i in range(5)]
    assert all(b - a >= POLL for a, b in itertools.pairwise(polls))
    # Progress counts the steps that ran: the dropped ones leave the total.
    (phase,) = engine.snapshot()
    assert phase["done"] == phase["total"] == 1 + 1 + 3 + 5 and phase["finished"]


def test_broadcasts_of_several_publishers_run_at_the_same_time() -> None:
    gossip = Gossip({"c": 4, "d": 4, "a": 4, "b": 4})
    steps = FakeSteps(gossip, delay=0.05)
    cells = broadcast("a", ["b", "c", "d"]) + broadcast("b", ["a", "c", "d"])
    _, delivered = run(cells, steps, per_node=4)
    assert len(delivered) == len(cells)
    # The second publisher's publish started before the first broadcast's polls had ended.
    first_done = max(steps.ends[k] for k in steps.ends if k[0].startswith("a#received"))
    assert steps.starts[("b#publish", 0)] < first_done


def test_a_receiver_that_never_gets_it_is_polled_for_the_window_with_what_is_left_as_timeout() -> None:
    gossip = Gossip({})
    steps = FakeSteps(gossip, delay=0.01)
    window = 0.6
    _, delivered = run(broadcast("a", ["b"], window=window), steps, per_node=4)
    polls = dict(delivered)["a#received:b"]
    assert not any(r.get("received") for r in polls)
    started = sorted(v for k, v in steps.starts.items() if k[0] == "a#received:b")
    assert started[-1] - started[0] < window  # none started after the window
    assert 3 <= len(polls) <= window / POLL + 1
    timeouts = [s.timeout for s in gossip.polls["a#received:b"]]
    assert timeouts == sorted(timeouts, reverse=True) and timeouts[-1] >= MIN_TIMEOUT
    assert timeouts[0] == window


def test_polls_of_a_failed_publish_are_not_run_and_their_cells_still_end() -> None:
    gossip = Gossip({"b": 1}, publish_ok=False)
    steps = FakeSteps(gossip, delay=0.01)
    engine, delivered = run(broadcast("a", ["b", "c"]), steps, per_node=4)
    got = dict(delivered)
    for n in "bc":
        (only,) = got[f"a#received:{n}"]
        assert only.error == "not run: the publish failed"
    assert not gossip.polls
    (phase,) = engine.snapshot()
    assert phase["done"] == phase["total"] == 3 and phase["finished"]


def test_flow_leaves_pair_cells_as_they_are() -> None:
    cell = ProbeSpec("connect", "a", "b", 3, 2.0, method="direct").cell("a->b", "connectivity")
    task = Task(cell, 0)
    flow = Flow()
    assert flow.prepare(task, 0.0, lambda key: []) is task
    assert not flow.done_after(task, result(task, {"ok": True}), 0.0)
