"""``vpstest lab status`` for the software under test: each node asked through the project's own
``status`` probe (the contract's status answer), not through the reference agent's port.

:func:`judge` (pure) turns one status answer into ``ok``, ``not ready`` or ``no answer`` with a
one-line reason; :func:`ask_nodes` runs the probe on the lab's nodes over SSH, all at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the SSH client behind the probes is imported only when nodes are asked
    from pytest_vpstest.config import ProjectConfig
    from pytest_vpstest.fleet.probes import ProbeResult

__all__ = ["SutState", "SutStatus", "ask_nodes", "judge"]

SutState = Literal["ok", "not ready", "no answer", "-"]


@dataclass(frozen=True)
class SutStatus:
    """What a node's ``status`` probe said: its state and, unless ok, why in one line."""

    state: SutState
    reason: str = ""

    def text(self) -> str:
        """``ok``, ``not ready: why`` or ``no answer: why`` (``-`` for the registry)."""
        return f"{self.state}: {self.reason}" if self.reason and self.state != "-" else self.state


def judge(result: ProbeResult) -> SutStatus:
    """``ok``: a valid answer with ``ok: true`` and not ``ready: false``; ``not ready``: ok but
    ``ready: false``; ``no answer``: anything else (timeout, no JSON, a schema gap, ``ok: false``)."""
    if result.ok:
        if result.get("ready", True) is False:
            return SutStatus("not ready", "status answered ready: false")
        return SutStatus("ok")
    reason = (result.reason or "failed").splitlines()[0]
    tail = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    if tail and tail[-1] not in reason:
        reason += f"; stderr: {tail[-1]}"
    return SutStatus("no answer", reason)


def ask_nodes(
    inventory_path: Path,
    config: ProjectConfig,
    reachable: Sequence[str],
    timeout: float = 5.0,
) -> dict[str, SutStatus]:
    """Run the config's ``status`` probe on every node of the lab's inventory but the registry
    (nodes not in ``reachable`` — their sshd is down — are not asked)."""
    from pytest_vpstest.fleet.probes import ProbeRunner
    from pytest_vpstest.fleet.remote import SessionPool
    from pytest_vpstest.inventory import load_inventory

    inventory = load_inventory(inventory_path)
    out: dict[str, SutStatus] = {}
    asked: list[str] = []
    for node in inventory.nodes:
        if node.role == "registry":
            out[node.name] = SutStatus("-", "the registry runs no software under test")
        elif node.name not in reachable:
            out[node.name] = SutStatus("no answer", "sshd is down")
        else:
            asked.append(node.name)
    if not asked:
        return out
    with SessionPool(inventory) as pool:
        runner = ProbeRunner.for_project(pool, inventory, config, default_timeout=timeout, grace=2.0)
        with ThreadPoolExecutor(max_workers=min(16, len(asked)), thread_name_prefix="vps-lab-status") as ex:
            answers = dict(zip(asked, ex.map(runner.status, asked), strict=True))
    for name, result in answers.items():
        out[name] = judge(result)
    return {n.name: out[n.name] for n in inventory.nodes}
