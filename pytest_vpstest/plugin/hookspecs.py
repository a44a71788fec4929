"""Hooks pytest-vpstest adds to pytest; implement them in a ``conftest.py`` or a plugin.

Each receives the run (:class:`pytest_vpstest.plugin.fixtures.RunContext`): the loaded project config,
the inventory, the run id and the run directory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_vpstest.config import Inventory, ProjectConfig
    from pytest_vpstest.fleet.remote import Pool
    from pytest_vpstest.plugin.fixtures import RunContext

__all__ = [
    "pytest_vpstest_build",
    "pytest_vpstest_deploy",
    "pytest_vpstest_fetch_logs",
    "pytest_vpstest_make_pool",
    "pytest_vpstest_results",
]


@pytest.hookspec(firstresult=True)
def pytest_vpstest_make_pool(inventory: Inventory, project_config: ProjectConfig) -> Pool | None:
    """Return the node transport (default: ``remote.SessionPool(inventory)``): anything offering
    what :class:`pytest_vpstest.fleet.remote.Pool` names (``session``, ``run``, ``fan_out``,
    ``close_all``)."""


@pytest.hookspec(firstresult=True)
def pytest_vpstest_build(run: RunContext) -> dict[str, Any] | None:
    """Build the artifact locally, once per run; return ``{"ok", "artifact", "duration",
    "errors", "warnings"}`` (JSON-serialisable: it is shared with xdist workers)."""


@pytest.hookspec(firstresult=True)
def pytest_vpstest_deploy(run: RunContext, pool: Pool, artifact: str | None) -> dict[str, Any] | None:
    """Deploy ``artifact`` to the nodes, once per run; return ``{"ok", "deployed": {node: {"bin"}},
    "failed": {node: reason}}`` (JSON-serialisable)."""


@pytest.hookspec(firstresult=True)
def pytest_vpstest_fetch_logs(run: RunContext, pool: Pool, node: str) -> str | None:
    """Return the service log text of ``node`` for the evidence (default: the service manager's logs)."""


@pytest.hookspec
def pytest_vpstest_results(run: RunContext, results: dict[str, Any]) -> None:
    """Called on the controller once the run's results (the results.json document) are final."""
