"""pytest-vpstest: build, deploy, test, fix and soak P2P software across a fleet of nodes."""

from __future__ import annotations

from pytest_vpstest.errors import (
    BuildError,
    ConfigError,
    CriteriaError,
    DeployError,
    LabError,
    LeaseHeldError,
    NodeError,
    ProbeError,
    StaleLeaseError,
    StateError,
    UnreachableNodeError,
    VpsTestError,
)

__version__ = "0.1.0"

__all__ = [
    "BuildError",
    "ConfigError",
    "CriteriaError",
    "DeployError",
    "LabError",
    "LeaseHeldError",
    "NodeError",
    "ProbeError",
    "StaleLeaseError",
    "StateError",
    "UnreachableNodeError",
    "VpsTestError",
    "__version__",
]
