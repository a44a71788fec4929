"""pytest entry point (pytest11): declares the --vps-* options; inert without --vps-config."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vpstest", "pytest-vpstest: test P2P software across a node fleet")
    group.addoption("--vps-config", default=None, help="project config file (enables the plugin)")
