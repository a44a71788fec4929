"""Nodes a test run leaves out, and why: the file the loop hands to the plugin (``--vps-skip-nodes``).

Before each TEST the loop decides which nodes are not to be tested: those that are not Live (node
health) and those whose tests the config keeps from automatic runs (``dashboard.node_tests``:
``disabled``, ``manual``). It writes ``{node: reason}`` to ``<run dir>/skip-nodes.json``; the plugin
skips every test touching such a node with that reason, and leaves the node out of the tests of the
whole fleet (gossip receivers, CRDT convergence). A skipped test measures nothing, so the node is
out of every rate and of the verdict. Nodes found unreachable during the run join them with an
unhealthy reason (``unhealthy_reason``), which is how results.json tells node faults apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from pytest_vpstest.errors import ConfigError

__all__ = [
    "SKIP_FILE",
    "SKIP_NODES_OPTION",
    "UNHEALTHY_PREFIX",
    "nodes_to_skip",
    "read_skip_file",
    "tests_mode_reason",
    "unhealthy_reason",
    "unhealthy_why",
]

SKIP_FILE = "skip-nodes.json"
SKIP_NODES_OPTION = "--vps-skip-nodes"
UNHEALTHY_PREFIX = "node unhealthy: "


def unhealthy_reason(node: str, why: str) -> str:
    """``node unhealthy: saorsa-3 (provisioning: ssh: connection refused)``."""
    return f"{UNHEALTHY_PREFIX}{node} ({why})"


def unhealthy_why(node: str, reason: str) -> str | None:
    """What was wrong with ``node`` when its skip reason says the node itself was at fault (the
    inverse of :func:`unhealthy_reason`), else None (the config's choice)."""
    head = f"{UNHEALTHY_PREFIX}{node} ("
    if reason.startswith(head) and reason.endswith(")"):
        return reason[len(head) : -1]
    return None


def tests_mode_reason(node: str, mode: str) -> str | None:
    """Why a loop's TEST leaves ``node`` out for its ``dashboard.node_tests`` mode, or None (``auto``)."""
    if mode == "disabled":
        return f"tests disabled for node {node}"
    if mode == "manual":
        return f"tests run manually for node {node}"
    return None


def nodes_to_skip(
    names: Iterable[str], unhealthy: Mapping[str, str], tests_mode: Callable[[str], str]
) -> dict[str, str]:
    """{node: reason} of the nodes a loop's TEST leaves out, in name order.

    ``unhealthy`` maps nodes that are not Live to why; ``tests_mode(node)`` is the node's
    ``dashboard.node_tests`` mode. The config's choice wins over health: a disabled node is left out
    as disabled (it is gray on the dashboard) whether or not it is also unhealthy.
    """
    out: dict[str, str] = {}
    for node in sorted(set(names) | set(unhealthy)):
        reason = tests_mode_reason(node, tests_mode(node))
        if reason is None and node in unhealthy:
            reason = unhealthy_reason(node, unhealthy[node])
        if reason is not None:
            out[node] = reason
    return out


def read_skip_file(path: Path) -> dict[str, str]:
    """The ``--vps-skip-nodes`` file: a JSON object {node: reason}; a one-line error otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{SKIP_NODES_OPTION} {path}: not a readable JSON file: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f"{SKIP_NODES_OPTION} {path}: must be a JSON object {{node: reason}}")
    return {str(k): v for k, v in data.items()}
