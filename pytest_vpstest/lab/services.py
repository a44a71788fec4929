"""The lab's infrastructure services: the registry and the bootstrap (rendezvous/relay) service.

Both come from the reference agent (``python -m pytest_vpstest.lab.agent registry|bootstrap``);
``lab up`` starts them detached inside the node namespaces (or on loopback addresses), with pid
files in the lab directory.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pytest_vpstest.lab import sshd

__all__ = ["AGENT_MODULE", "Service", "ServiceKind", "service_argv", "start_service"]

AGENT_MODULE = "pytest_vpstest.lab.agent"
ServiceKind = Literal["registry", "bootstrap"]


@dataclass(frozen=True)
class Service:
    kind: ServiceKind
    node: str
    bind: str  # ADDR:PORT
    netns: str | None  # None on the loopback flavour

    @property
    def port(self) -> int:
        return int(self.bind.rsplit(":", 1)[1])

    @property
    def proto(self) -> str:
        return "tcp" if self.kind == "registry" else "udp"

    def pid_file(self, lab_dir: Path) -> Path:
        return lab_dir / "run" / f"{self.kind}-{self.node}.pid"

    def log_file(self, lab_dir: Path) -> Path:
        return lab_dir / "log" / f"{self.kind}-{self.node}.log"


def service_argv(service: Service, python: str | None = None) -> list[str]:
    """The command that runs ``service`` (inside its namespace when it has one)."""
    argv = [python or sys.executable, "-m", AGENT_MODULE, service.kind, "--bind", service.bind]
    if service.netns:
        argv = ["ip", "netns", "exec", service.netns, *argv]
    return argv


def start_service(service: Service, lab_dir: Path) -> None:
    sshd.spawn_detached(
        service_argv(service), pid_file=service.pid_file(lab_dir), log_file=service.log_file(lab_dir)
    )
