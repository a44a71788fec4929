"""The suite registry is the single source of what a suite is: focus values, markers, aggregators,
default targets, measurement shapes and the config spellings all derive from it."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args, get_type_hints

import pytest

from pytest_vpstest import config, criteria, interview, suite
from pytest_vpstest.errors import ConfigError
from pytest_vpstest.plugin import aggregate, entry
from pytest_vpstest.suite import FOCUSES, FULL_SUITE, SUITES, find_suite, suite_key, suites_of_focus

SUITES_DIR = Path(__file__).resolve().parents[2] / "suites"


def _markers_of(path: Path) -> list[str]:
    """Arguments of ``pytest.mark.vps_suite(...)`` in a suite file's ``pytestmark``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == suite.MARKER
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.append(str(node.args[0].value))
    return found


def test_focus_values_are_the_registry_focuses() -> None:
    assert config.FOCUSES is FOCUSES
    assert (*(s.focus for s in SUITES), FULL_SUITE) == FOCUSES
    assert get_args(suite.Focus) == FOCUSES
    assert get_args(suite.SuiteName) == tuple(s.name for s in SUITES)
    assert tuple(o.value for o in interview._FOCUS) == FOCUSES


def test_every_suite_file_marks_a_registered_suite_and_every_suite_has_its_file() -> None:
    files = sorted(SUITES_DIR.glob("test_*.py"))
    assert files
    marked = {}
    for path in files:
        markers = _markers_of(path)
        assert len(markers) == 1, f"{path.name}: one {suite.MARKER} marker expected, found {markers}"
        found = find_suite(markers[0])
        assert found is not None, f"{path.name}: {markers[0]!r} is not a registered suite"
        assert found.name == markers[0], f"{path.name}: mark with the suite's name {found.name!r}"
        marked[path.stem] = found.name
    assert marked == {s.module: s.name for s in SUITES}


def test_every_registered_suite_has_an_aggregator_and_a_measurement_type() -> None:
    assert set(aggregate.AGGREGATORS) == {s.name for s in SUITES}
    measured = set()
    for typed in get_args(suite.Measurement):
        (name,) = get_args(get_type_hints(typed)["suite"])
        measured.add(name)
    assert measured == {s.name for s in SUITES}


def test_default_targets_and_categories_come_from_the_registry() -> None:
    assert {s.name: dict(s.default_targets) for s in SUITES if s.default_targets} == criteria.DEFAULT_TARGETS
    assert criteria.DEFAULT_TARGETS["connectivity"] == {"direct": 99.0, "nat_traversed": 85.0, "relay": 100.0}
    assert suite.CONNECTIVITY.categories == suite.CATEGORIES
    # A target key that is a registered category compares the category's rate.
    verdict = criteria.threshold(
        {"connectivity.relay.rate": 100.0, "tests.failed": 0.0},
        {"connectivity": {"relay": 99}},
        ("connectivity",),
    )
    assert [c.metric for c in verdict.checks] == ["tests.failed", "connectivity.relay.rate"]


def test_marker_help_names_every_suite() -> None:
    (line,) = [m for m in entry.MARKERS if m.startswith(suite.MARKER)]
    assert all(s.name in line for s in SUITES)


def test_both_spellings_find_the_same_suite_and_nothing_else() -> None:
    assert find_suite("nat-traversal") is find_suite("nat_traversal") is suite.NAT_TRAVERSAL
    assert find_suite("full-suite") is None and find_suite("natTraversal") is None
    assert suite_key("nat-traversal") == "nat_traversal" and suite_key("my-suite") == "my-suite"
    assert suites_of_focus("nat-traversal") == ("nat_traversal",)
    assert suites_of_focus(FULL_SUITE) == ("connectivity", "nat_traversal", "gossip", "throughput")
    assert suites_of_focus("nope") == ()


def _config(tmp_path: Path, tests: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"project: demo\nworkspace: .\ntests:\n{tests}")
    return path


def test_config_reads_either_spelling_of_a_suite_block_under_its_name(tmp_path: Path) -> None:
    cfg = config.load_project_config(_config(tmp_path, "  nat-traversal:\n    attempts: 7\n"))
    assert [k for k, _ in cfg.tests] == ["nat_traversal"]
    assert cfg.suite("nat_traversal").attempts == 7 and cfg.suite("nat-traversal").attempts == 7


def test_config_with_both_spellings_of_one_suite_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = _config(tmp_path, "  nat_traversal:\n    attempts: 7\n  nat-traversal:\n    attempts: 2\n")
    with pytest.raises(ConfigError, match=r"configured twice") as info:
        config.load_project_config(path)
    assert ":6" in str(info.value) and "tests.nat-traversal" in str(info.value)
