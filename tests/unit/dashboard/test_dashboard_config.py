"""The config's ``dashboard`` section: defaults, per-node test modes, one-line errors."""

from __future__ import annotations

import pytest

from pytest_vpstest.config import parse_project_config
from pytest_vpstest.errors import ConfigError


def test_defaults_when_absent() -> None:
    cfg = parse_project_config("project: p\n")
    assert cfg.dashboard.token is None
    assert cfg.dashboard.test_timeout_seconds == 60.0
    assert cfg.dashboard.tests_mode("any-node") == "auto"


def test_section_is_read() -> None:
    cfg = parse_project_config(
        "project: p\ndashboard:\n  token: abcdefghijklmnop1234\n  test_timeout_seconds: 15\n"
        "  node_tests: {saorsa-1: disabled, saorsa-4: manual}\n"
    )
    assert cfg.dashboard.token == "abcdefghijklmnop1234"
    assert cfg.dashboard.test_timeout_seconds == 15.0
    assert cfg.dashboard.tests_mode("saorsa-1") == "disabled"
    assert cfg.dashboard.tests_mode("saorsa-4") == "manual"
    assert cfg.dashboard.tests_mode("saorsa-2") == "auto"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("  token: short\n", "dashboard.token"),
        ("  test_timeout_seconds: 0\n", "dashboard.test_timeout_seconds"),
        ("  node_tests: {n1: sometimes}\n", "dashboard.node_tests.n1"),
        ("  colour: blue\n", "dashboard.colour"),
    ],
)
def test_bad_values_name_their_key(body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as info:
        parse_project_config("project: p\ndashboard:\n" + body)
    assert "\n" not in str(info.value)
