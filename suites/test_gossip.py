"""Gossip: broadcast delivery, propagation latency and duplicates; CRDT convergence.

Some nodes publish one message each; every other peer node is asked whether it received it
(polled until the suite timeout). Recorded: delivery ratio, latency p50/p95/max, duplicates.
Then every node increments a grow-only counter by a distinct amount and all nodes must converge
on the same digest with value = baseline + the sum of the increments.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import pytest

from pytest_vpstest.fleet.probes import ProbeResult, ProbeRunner
from pytest_vpstest.plugin.fixtures import (
    Recorder,
    RunContext,
    mark_unhealthy,
    parametrize,
    skip_if_not_deployed,
    skipped_nodes,
)
from pytest_vpstest.plugin.pairs import gossip_publishers, peer_nodes
from pytest_vpstest.suite import GossipCrdtMeasurement, GossipDeliveryMeasurement

from ._support import describe, each

pytestmark = [pytest.mark.vps_suite("gossip"), pytest.mark.soak]

POLL_SECONDS = 0.25


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    def publishers(run: RunContext) -> list[str]:
        count = int(run.suite_extra("gossip", "publishers", 2))
        return [n.name for n in gossip_publishers(run.inventory, count)]

    parametrize(metafunc, "publisher", publishers, lambda n: f"{n}[publish]")


def test_broadcast(publisher: str, probe: ProbeRunner, vps_run: RunContext, vps_record: Recorder) -> None:
    skip_if_not_deployed(vps_run, publisher)
    settings = vps_run.suite("gossip")
    sick = skipped_nodes(vps_run)  # a node not to test is no receiver, not counted as undelivered
    receivers = [n.name for n in peer_nodes(vps_run.inventory) if n.name != publisher and n.name not in sick]
    topic = f"vpstest-{vps_run.run_id}"
    if probe.has("subscribe"):  # pub/sub systems deliver only to subscribers: subscribe first
        subscribed = [probe.subscribe(n, topic, settings.timeout_seconds) for n in receivers]
        for r in subscribed:  # a receiver that cannot be reached is unhealthy, not a delivery failure
            if r.transport_error:
                mark_unhealthy(vps_run, r.node, f"unreachable during the run: {r.reason}")
                receivers.remove(r.node)
        refused = [r for r in subscribed if not r.ok and not r.transport_error]
        if refused:
            pytest.fail(
                f"{publisher}[publish]: subscribe to {topic!r} failed on "
                f"{', '.join(r.node for r in refused)}\n{describe(refused)}",
                pytrace=False,
            )
    published = probe.publish(publisher, topic, settings.timeout_seconds)
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
    message_id = str(published.get("message_id"))
    deadline = time.monotonic() + settings.timeout_seconds
    pending = set(receivers)
    latencies: dict[str, float] = {}
    duplicates = 0
    last: dict[str, Any] = {}
    while pending and time.monotonic() < deadline:
        # One round asks every receiver still pending at once (bounded per node by the probe's slots);
        # its {timeout} is what is left of the suite's: a round never outlasts the deadline.
        timeout = round(max(0.5, deadline - time.monotonic()), 1)
        answers = each(sorted(pending), functools.partial(_received, probe, message_id, timeout))
        for name, r in answers.items():
            last[name] = r
            if r.ok and r.get("received") is True:
                pending.discard(name)
                latency = r.get("latency_ms")
                if isinstance(latency, int | float):
                    latencies[name] = float(latency)
                duplicates += int(r.get("duplicates") or 0)
        if pending:
            time.sleep(POLL_SECONDS)
    delivered = len(receivers) - len(pending)
    vps_record(
        GossipDeliveryMeasurement(
            suite="gossip",
            kind="delivery",
            publisher=publisher,
            message_id=message_id,
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


def _received(probe: ProbeRunner, message_id: str, timeout: float, node: str) -> ProbeResult:
    return probe.received(node, message_id, timeout)


def test_crdt_convergence(probe: ProbeRunner, vps_run: RunContext, vps_record: Recorder) -> None:
    sick = skipped_nodes(vps_run)
    nodes = [n.name for n in peer_nodes(vps_run.inventory) if n.name not in sick]
    if not probe.has("crdt"):
        pytest.skip("optional action crdt has no template (probes.crdt is null)")
    skip_if_not_deployed(vps_run, *nodes)
    if len(nodes) < 2:
        pytest.skip("CRDT convergence needs at least two peer nodes")
    settings = vps_run.suite("gossip")
    before = {n: probe.crdt(n, 0, settings.timeout_seconds) for n in nodes}
    bad = [r for r in before.values() if not r.ok]
    if bad:
        pytest.fail(f"CRDT read failed on {len(bad)} node(s)\n{describe(bad)}", pytrace=False)
    baseline = max(int(r.get("value")) for r in before.values())
    increments = {n: i + 1 for i, n in enumerate(nodes)}
    for n, amount in increments.items():
        r = probe.crdt(n, amount, settings.timeout_seconds)
        if not r.ok:
            pytest.fail(f"{n}: CRDT increment failed\n{describe([r])}", pytrace=False)
    expected = baseline + sum(increments.values())
    deadline = time.monotonic() + max(settings.timeout_seconds, 5.0)
    while True:
        now = {n: probe.crdt(n, 0, settings.timeout_seconds) for n in nodes}
        values = {n: r.get("value") for n, r in now.items()}
        digests = {n: r.get("digest") for n, r in now.items()}
        converged = (
            all(r.ok for r in now.values())
            and len(set(digests.values())) == 1
            and all(v == expected for v in values.values())
        )
        if converged or time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS)
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
