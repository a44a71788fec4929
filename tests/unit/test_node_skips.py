"""Which nodes a loop's TEST leaves out and why (health and ``dashboard.node_tests``), and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_vpstest.config_operations import DashboardConfig
from pytest_vpstest.errors import ConfigError
from pytest_vpstest.node_skips import nodes_to_skip, read_skip_file, unhealthy_reason, unhealthy_why


def test_disabled_and_manual_nodes_are_left_out_with_their_reason_and_unhealthy_ones_with_theirs() -> None:
    modes = DashboardConfig(node_tests=(("b", "disabled"), ("c", "manual"), ("d", "auto")))
    skip = nodes_to_skip(["a", "b", "c", "d", "e"], {"e": "provisioning: ssh refused"}, modes.tests_mode)
    assert skip == {
        "b": "tests disabled for node b",
        "c": "tests run manually for node c",
        "e": "node unhealthy: e (provisioning: ssh refused)",
    }
    assert [unhealthy_why(n, r) for n, r in skip.items()] == [None, None, "provisioning: ssh refused"]
    assert unhealthy_why("x", unhealthy_reason("x", "agent (pid 3) gone")) == "agent (pid 3) gone"


def test_the_configs_choice_wins_over_health_and_auto_nodes_are_tested() -> None:
    modes = DashboardConfig(node_tests=(("b", "disabled"),))
    assert nodes_to_skip(["a", "b"], {"b": "Suspect"}, modes.tests_mode) == {"b": "tests disabled for node b"}
    assert nodes_to_skip(["a", "b"], {}, DashboardConfig().tests_mode) == {}


def test_a_bad_skip_file_is_one_line_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "skip.json"
    bad.write_text('{"a": 1}')
    with pytest.raises(ConfigError, match=r"--vps-skip-nodes .*skip.json: must be a JSON object"):
        read_skip_file(bad)
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not a readable JSON file"):
        read_skip_file(bad)
    bad.write_text('{"a": "tests disabled for node a"}')
    assert read_skip_file(bad) == {"a": "tests disabled for node a"}
