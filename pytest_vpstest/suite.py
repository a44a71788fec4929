"""The suites: the one registry every other module reads what a suite is from.

A suite has a **name** (``nat_traversal``: the key of its section in ``test_results.suites``, the
prefix of its metrics, the argument of its ``vps_suite`` marker, its ``tests.<name>`` config block)
and a **focus** (``nat-traversal``: the value users pick with ``--vps-focus`` or ``focus:``). Both
spellings are fields of the one :class:`Suite`; user input in either spelling is turned into the
suite by :func:`find_suite`, the only place that converts between them.

Each suite test records one measurement per test (see ``plugin.fixtures.Recorder``); its shape is
the TypedDict of that suite below, which the suite files build and the aggregators
(``plugin.aggregate``) read. Adding a suite: a ``Suite`` entry here, its measurement TypedDict, an
aggregator in ``plugin/aggregate.py`` and a ``suites/test_<name>.py`` (docs/internals.md).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NotRequired, TypedDict

from pytest_vpstest.errors import VpsTestError

__all__ = [
    "CATEGORIES",
    "CATEGORY_OF",
    "CONNECTIVITY",
    "FOCUSES",
    "FULL_SUITE",
    "GOSSIP",
    "MARKER",
    "METHODS",
    "NAT_TRAVERSAL",
    "SUITES",
    "THROUGHPUT",
    "Category",
    "ConnectivityMeasurement",
    "Focus",
    "GossipCrdtMeasurement",
    "GossipDeliveryMeasurement",
    "Measurement",
    "Method",
    "NatTraversalMeasurement",
    "Suite",
    "SuiteName",
    "ThroughputMeasurement",
    "find_suite",
    "suite_key",
    "suites_directory",
    "suites_of_focus",
]

SuiteName = Literal["connectivity", "nat_traversal", "gossip", "throughput"]
Focus = Literal["connectivity", "nat-traversal", "gossip", "throughput", "full-suite"]
FULL_SUITE: Focus = "full-suite"
MARKER = "vps_suite"

Method = Literal["direct", "holepunch", "relay"]
METHODS: tuple[Method, ...] = ("direct", "holepunch", "relay")
# Connectivity's categories: how a pair was connected, judged by its success rate.
Category = Literal["direct", "nat_traversed", "relay"]
CATEGORIES: tuple[Category, ...] = ("direct", "nat_traversed", "relay")
CATEGORY_OF: Mapping[Method, Category] = MappingProxyType(
    {"direct": "direct", "holepunch": "nat_traversed", "relay": "relay"}
)


@dataclass(frozen=True)
class Suite:
    """One suite: how it is named, selected, grouped and judged by default."""

    name: SuiteName
    focus: Focus
    summary: str
    # The suite's file under suites/ (installed as pytest_vpstest.suites).
    module: str
    # Fixed result categories (a target key naming one compares its ``rate``).
    categories: tuple[str, ...] = ()
    # Thresholds used when the config sets no ``tests.<name>.success_criteria``.
    default_targets: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}), hash=False)


CONNECTIVITY = Suite(
    "connectivity",
    "connectivity",
    "Connection matrix (direct, NAT, relay)",
    "test_connectivity",
    categories=CATEGORIES,
    default_targets=MappingProxyType({"direct": 99.0, "nat_traversed": 85.0, "relay": 100.0}),
)
NAT_TRAVERSAL = Suite(
    "nat_traversal", "nat-traversal", "NAT hole-punching across different NAT types", "test_nat_traversal"
)
# nat_traversal's defaults depend on the NAT pairings measured: criteria.nat_default_checks.
GOSSIP = Suite(
    "gossip",
    "gossip",
    "Message broadcast and CRDT sync",
    "test_gossip",
    default_targets=MappingProxyType({"delivery_rate": 95.0}),
)
THROUGHPUT = Suite(
    "throughput",
    "throughput",
    "Data transfer performance",
    "test_throughput",
    default_targets=MappingProxyType({"avg_mbps": 1.0}),
)

# In the order the full suite runs and reports them.
SUITES: tuple[Suite, ...] = (CONNECTIVITY, NAT_TRAVERSAL, GOSSIP, THROUGHPUT)
FOCUSES: tuple[Focus, ...] = (*(s.focus for s in SUITES), FULL_SUITE)


def find_suite(spelling: str) -> Suite | None:
    """The suite a user's spelling means: its name (``nat_traversal``) or its focus
    (``nat-traversal``); None for anything else."""
    for s in SUITES:
        if spelling in (s.name, s.focus):
            return s
    return None


def suite_key(spelling: str) -> str:
    """The ``tests.<key>`` config key for a spelling: a suite's name, or the spelling unchanged."""
    found = find_suite(spelling)
    return found.name if found is not None else spelling


def suites_of_focus(focus: str) -> tuple[SuiteName, ...]:
    """Names of the suites a focus runs (``full-suite``: all of them); () for an unknown focus."""
    if focus == FULL_SUITE:
        return tuple(s.name for s in SUITES)
    return tuple(s.name for s in SUITES if s.focus == focus)


# --------------------------------------------------------------------------------------------
# Measurements: what one suite test records (JSON; the collector adds ``test``, its node id).


class _PairMeasurement(TypedDict):
    src: str
    dst: str
    method: Method
    attempts: int
    success: int
    failures: list[dict[str, Any]]
    test: NotRequired[str]


class ConnectivityMeasurement(_PairMeasurement):
    suite: Literal["connectivity"]
    category: Category
    paths: list[Any]
    rtt_ms: list[float]
    # fleet.judging's outcome: pass | fail | xfail (expected by NAT theory) | xpass (unexpected pass)
    outcome: NotRequired[str]


class NatTraversalMeasurement(_PairMeasurement):
    suite: Literal["nat_traversal"]
    group: str  # the NAT-type pair, easiest first: "none~symmetric"
    paths: list[Any]
    rtt_ms: list[float]
    outcome: NotRequired[str]


class ThroughputMeasurement(_PairMeasurement):
    suite: Literal["throughput"]
    mbps: list[float]
    iperf3_mbps: float | None
    iperf3_note: str
    # the path the node reported per successful attempt (direct | punched | relayed | unreported)
    paths: NotRequired[list[str]]


class GossipDeliveryMeasurement(TypedDict):
    suite: Literal["gossip"]
    kind: Literal["delivery"]
    publisher: str
    message_id: NotRequired[str]
    expected: int
    delivered: int
    latencies_ms: list[float]
    duplicates: int
    missing: list[str]
    failures: list[dict[str, Any]]
    test: NotRequired[str]


class GossipCrdtMeasurement(TypedDict):
    suite: Literal["gossip"]
    kind: Literal["crdt"]
    expected: int
    values: dict[str, Any]
    digests: dict[str, Any]
    converged: bool
    test: NotRequired[str]


Measurement = (
    ConnectivityMeasurement
    | NatTraversalMeasurement
    | GossipDeliveryMeasurement
    | GossipCrdtMeasurement
    | ThroughputMeasurement
)


def suites_directory() -> Path:
    """Where the installed suites are: ``pytest_vpstest.suites`` (the repository's ``suites/``)."""
    spec = importlib.util.find_spec("pytest_vpstest.suites")
    if spec is None or not spec.submodule_search_locations:
        raise VpsTestError("the suites are not installed: reinstall pytest-vpstest (pytest_vpstest.suites)")
    return Path(next(iter(spec.submodule_search_locations)))
