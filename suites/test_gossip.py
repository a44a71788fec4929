"""Gossip: broadcast delivery, propagation latency and duplicates; CRDT convergence.

Some nodes publish one message each; every other peer node is asked whether it received it
(polled until the suite timeout). Recorded: delivery ratio, latency p50/p95/max, duplicates.
Then every node increments a grow-only counter by a distinct amount and all nodes must converge
on the same digest with value = baseline + the sum of the increments.

Every probe goes through the run's matrix engine (``matrix_parts``): a broadcast is planned as
cells — the receivers subscribe (with a ``subscribe`` template), then the publish, then each
receiver's polls, :data:`POLL_SECONDS` apart, until it has the message or the suite's timeout
after the publish has passed (each poll's ``{timeout}`` is what is left of it). All publishers'
broadcasts run at the same time. The CRDT check starts when they have ended: every node reads the
counter, then adds its amount, then each node is polled until it shows baseline + the sum of the
increments (or the deadline). The tests judge what the engine measured.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence

import pytest

from pytest_vpstest.fleet.probes import ProbeResult, ProbeRunner
from pytest_vpstest.plugin.engine import ProbeSpec
from pytest_vpstest.plugin.fixtures import (
    Recorder,
    RunContext,
    failed_nodes,
    mark_unhealthy,
    parametrize,
    skip_if_not_deployed,
    skipped_nodes,
)
from pytest_vpstest.plugin.pairs import gossip_publishers, peer_nodes
from pytest_vpstest.suite import GossipCrdtMeasurement, GossipDeliveryMeasurement

from ._support import describe

pytestmark = [pytest.mark.vps_suite("gossip"), pytest.mark.soak]

POLL_SECONDS = 0.25
# The CRDT polls go on for the suite's timeout after the increments, but at least this long.
CRDT_MIN_WINDOW = 5.0

Parts = dict[str, list[ProbeResult]]
Plan = list[tuple[str, ProbeSpec]]
Deps = Mapping[str, Sequence[ProbeResult]]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    def publishers(run: RunContext) -> list[str]:
        count = int(run.suite_extra("gossip", "publishers", 2))
        return [n.name for n in gossip_publishers(run.inventory, count)]

    parametrize(metafunc, "publisher", publishers, lambda n: f"{n}[publish]")


# --------------------------------------------------------------------------------------------
# The tests: each judges what the engine measured for it


def test_broadcast(
    publisher: str, matrix_parts: Callable[[], Parts], vps_run: RunContext, vps_record: Recorder
) -> None:
    skip_if_not_deployed(vps_run, publisher)
    parts = matrix_parts()
    sick = skipped_nodes(vps_run)  # a node not to test is no receiver, not counted as undelivered
    receivers = [n for n in _nodes_of(parts, "received") if n not in sick]
    subscribed = {n: parts[f"subscribe:{n}"][-1] for n in _nodes_of(parts, "subscribe") if n in receivers}
    for r in subscribed.values():  # a receiver that cannot be reached is unhealthy, not a delivery failure
        if r.transport_error:
            mark_unhealthy(vps_run, r.node, f"unreachable during the run: {r.reason}")
            receivers.remove(r.node)
    refused = [r for r in subscribed.values() if _refused(r)]
    if refused:
        pytest.fail(
            f"{publisher}[publish]: subscribe to {_topic(vps_run)!r} failed on "
            f"{', '.join(r.node for r in refused)}\n{describe(refused)}",
            pytrace=False,
        )
    published = parts["publish"][-1]
    if not published.ok:
        vps_record(
            GossipDeliveryMeasurement(
                suite="gossip",
                kind="delivery",
                publisher=publisher,
                expected=len(receivers),
                delivered=0,
                latencies_ms=[],
                duplicates=0,
                missing=receivers,
                failures=[published.evidence()],
            ),
            nodes=(publisher,),
        )
        pytest.fail(f"{publisher}: publish failed\n{describe([published])}", pytrace=False)
    latencies: dict[str, float] = {}
    duplicates = 0
    pending = set(receivers)
    last = {n: parts[f"received:{n}"][-1] for n in receivers if parts[f"received:{n}"]}
    for name in receivers:
        got = next((r for r in parts[f"received:{name}"] if _delivered(r)), None)
        if got is None:
            continue
        pending.discard(name)
        latency = got.get("latency_ms")
        if isinstance(latency, int | float):
            latencies[name] = float(latency)
        duplicates += int(got.get("duplicates") or 0)
    delivered = len(receivers) - len(pending)
    vps_record(
        GossipDeliveryMeasurement(
            suite="gossip",
            kind="delivery",
            publisher=publisher,
            message_id=str(published.get("message_id")),
            expected=len(receivers),
            delivered=delivered,
            latencies_ms=[latencies[n] for n in sorted(latencies)],
            duplicates=duplicates,
            missing=sorted(pending),
            failures=[last[n].evidence() for n in sorted(pending) if n in last][:3],
        ),
        nodes=(publisher, *receivers),
        delivered=f"{delivered}/{len(receivers)}",
    )


def test_crdt_convergence(
    matrix_parts: Callable[[], Parts], probe: ProbeRunner, vps_run: RunContext, vps_record: Recorder
) -> None:
    sick = skipped_nodes(vps_run)
    alive = [n.name for n in peer_nodes(vps_run.inventory) if n.name not in sick]
    if not probe.has("crdt"):
        pytest.skip("optional action crdt has no template (probes.crdt is null)")
    skip_if_not_deployed(vps_run, *alive)
    if len(alive) < 2:
        pytest.skip("CRDT convergence needs at least two peer nodes")
    parts = matrix_parts()
    planned = _nodes_of(parts, "read")
    sick = skipped_nodes(vps_run)  # also those found unhealthy while the engine ran: left out
    nodes = [n for n in planned if n not in sick]
    bad = [parts[f"read:{n}"][-1] for n in nodes if not parts[f"read:{n}"][-1].ok]
    if bad:
        pytest.fail(f"CRDT read failed on {len(bad)} node(s)\n{describe(bad)}", pytrace=False)
    for n in nodes:
        r = parts[f"add:{n}"][-1]
        if not r.ok:
            pytest.fail(f"{n}: CRDT increment failed\n{describe([r])}", pytrace=False)
    reads = {n: parts[f"read:{n}"] for n in planned}
    adds = {n: (amount, parts[f"add:{n}"]) for n, amount in _amounts(planned).items()}
    expected = _expected(reads.values(), adds.values())
    now = {n: parts[f"poll:{n}"][-1] for n in nodes}
    values = {n: r.get("value") for n, r in now.items()}
    digests = {n: r.get("digest") for n, r in now.items()}
    converged = (
        all(r.ok for r in now.values())
        and len(set(digests.values())) == 1
        and all(v == expected for v in values.values())
    )
    vps_record(
        GossipCrdtMeasurement(
            suite="gossip",
            kind="crdt",
            expected=expected,
            values=values,
            digests=digests,
            converged=converged,
        ),
        nodes=tuple(nodes),
        converged=str(converged),
    )


def _nodes_of(parts: Parts, kind: str) -> list[str]:
    """The nodes of the parts ``kind:NODE``, in the plan's order."""
    return [part.split(":", 1)[1] for part in parts if part.startswith(f"{kind}:")]


def _topic(run: RunContext) -> str:
    return f"vpstest-{run.run_id}"


# --------------------------------------------------------------------------------------------
# The plan: what the engine runs for each test


def matrix_parts(
    item: pytest.Item, run: RunContext, key: Callable[[str], str], earlier: Sequence[str]
) -> Plan:
    """The test's cells as (part, spec), see the module docstring; none for a test that will skip.
    ``key(part)`` is a part's cell key, ``earlier`` the keys of the suite's cells planned before."""
    name = getattr(item, "originalname", "")
    if name == "test_broadcast":
        callspec = getattr(item, "callspec", None)
        publisher = callspec.params.get("publisher") if callspec is not None else None
        return [] if publisher is None else _broadcast_plan(str(publisher), run, key)
    if name == "test_crdt_convergence":
        return _crdt_plan(run, key, earlier)
    return []


def _broadcast_plan(publisher: str, run: RunContext, key: Callable[[str], str]) -> Plan:
    if publisher in failed_nodes(run) or publisher in skipped_nodes(run):
        return []  # the test skips
    timeout = run.suite("gossip").timeout_seconds
    topic = (("topic", _topic(run)),)
    sick = skipped_nodes(run)  # a node not to test is no receiver, not counted as undelivered
    receivers = [n.name for n in peer_nodes(run.inventory) if n.name != publisher and n.name not in sick]
    subscribes = bool(run.project_config.probes.subscribe)
    plan: Plan = []
    if subscribes:  # pub/sub systems deliver only to subscribers: subscribe first
        plan += [
            (f"subscribe:{n}", ProbeSpec("subscribe", n, None, 1, timeout, values=topic)) for n in receivers
        ]
    after = tuple(key(part) for part, _ in plan)
    publish = ProbeSpec(
        "gossip_publish", publisher, None, 1, timeout, values=topic, after=after, bind=_bind_publish
    )
    plan.append(("publish", publish))
    for n in receivers:
        subscribe = key(f"subscribe:{n}") if subscribes else None
        poll = ProbeSpec(
            "gossip_received",
            n,
            None,
            _polls(timeout),
            timeout,
            cooloff=POLL_SECONDS,
            after=(key("publish"),) + ((subscribe,) if subscribe else ()),
            within=timeout,
            bind=functools.partial(_bind_received, key("publish"), subscribe),
        )
        plan.append((f"received:{n}", poll))
    return plan


def _crdt_plan(run: RunContext, key: Callable[[str], str], earlier: Sequence[str]) -> Plan:
    sick = skipped_nodes(run)
    nodes = [n.name for n in peer_nodes(run.inventory) if n.name not in sick]
    if not run.project_config.probes.crdt or len(nodes) < 2 or set(nodes) & set(failed_nodes(run)):
        return []  # the test skips
    timeout = run.suite("gossip").timeout_seconds
    amounts = _amounts(nodes)
    reads = {n: key(f"read:{n}") for n in nodes}
    adds = {n: key(f"add:{n}") for n in nodes}
    window = max(timeout, CRDT_MIN_WINDOW)
    read = (("amount", 0),)
    plan: Plan = [
        (f"read:{n}", ProbeSpec("crdt", n, None, 1, timeout, values=read, after=tuple(earlier)))
        for n in nodes
    ]
    for n, amount in amounts.items():
        add = ProbeSpec(
            "crdt",
            n,
            None,
            1,
            timeout,
            values=(("amount", amount),),
            after=tuple(reads.values()),
            bind=_bind_add,
        )
        plan.append((f"add:{n}", add))
    converge = functools.partial(_bind_converge, reads, {n: (amounts[n], adds[n]) for n in nodes})
    for n in nodes:
        poll = ProbeSpec(
            "crdt",
            n,
            None,
            _polls(window),
            timeout,
            values=read,
            cooloff=POLL_SECONDS,
            after=(*reads.values(), *adds.values()),
            within=window,
            bind=converge,
        )
        plan.append((f"poll:{n}", poll))
    return plan


def _polls(window: float) -> int:
    """The most polls a window can hold (fewer run: the poll that gets its answer ends them)."""
    return int(window / POLL_SECONDS) + 2


def _amounts(nodes: Sequence[str]) -> dict[str, int]:
    """Each node's distinct increment."""
    return {n: i + 1 for i, n in enumerate(nodes)}


def _expected(
    reads: Iterable[Sequence[ProbeResult]], adds: Iterable[tuple[int, Sequence[ProbeResult]]]
) -> int:
    """baseline (the highest value read) + the increments the nodes took."""
    baseline = max((int(rs[-1].get("value")) for rs in reads if rs and rs[-1].ok), default=0)
    return baseline + sum(amount for amount, rs in adds if rs and rs[-1].ok)


def _not_run(r: ProbeResult) -> bool:
    return (r.error or "").startswith("not run:")


def _refused(r: ProbeResult) -> bool:
    """A subscribe the node refused (not one it could not be asked: that node is unhealthy)."""
    return not r.ok and not r.transport_error and not _not_run(r)


def _delivered(r: ProbeResult) -> bool:
    return r.ok and r.get("received") is True


def _shows(expected: int, r: ProbeResult) -> bool:
    return r.ok and r.get("value") == expected


def _bind_publish(spec: ProbeSpec, deps: Deps) -> ProbeSpec | str:
    refused = sorted(rs[-1].node for rs in deps.values() if rs and _refused(rs[-1]))
    return f"subscribe failed on {', '.join(refused)}" if refused else spec


def _bind_received(publish: str, subscribe: str | None, spec: ProbeSpec, deps: Deps) -> ProbeSpec | str:
    published = deps[publish][-1] if deps[publish] else None
    if published is None or not published.ok or published.get("message_id") is None:
        return "the publish failed"
    if subscribe is not None and not (deps[subscribe] and deps[subscribe][-1].ok):
        return "its subscribe failed"
    message = (("message_id", str(published.get("message_id"))),)
    return dataclasses.replace(spec, values=message, until=_delivered)


def _bind_add(spec: ProbeSpec, deps: Deps) -> ProbeSpec | str:
    # A node found unhealthy meanwhile (its read not run) is left out, as its test leaves it out.
    failed = sorted(rs[-1].node for rs in deps.values() if rs and not rs[-1].ok and not _not_run(rs[-1]))
    return f"CRDT read failed on {', '.join(failed)}" if failed else spec


def _bind_converge(
    reads: Mapping[str, str], adds: Mapping[str, tuple[int, str]], spec: ProbeSpec, deps: Deps
) -> ProbeSpec | str:
    expected = _expected([deps[k] for k in reads.values()], [(a, deps[k]) for a, k in adds.values()])
    return dataclasses.replace(spec, until=functools.partial(_shows, expected))
