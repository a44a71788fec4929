"""Every error pytest-vpstest raises on purpose, drawn once.

    VpsTestError
    ├── ConfigError            a config or inventory file is wrong (file, line, key, allowed values)
    ├── StateError             the state file or transitions log cannot be used
    │   └── LeaseHeldError     another runner holds the project's single-writer lease
    │   └── StaleLeaseError    a write carried a fencing token that is no longer current
    │   └── InvalidEvent       the loop's state machine was offered an event its state does not accept
    ├── NodeError              a node could not be reached or a remote command failed
    │   └── UnreachableNodeError
    ├── BuildError             the local build failed (parsed diagnostics attached)
    ├── DeployError            too few nodes were deployed
    ├── ProbeError             a probe gave no usable answer (raw output kept)
    ├── CriteriaError          a custom criteria expression is malformed
    └── LabError               the embedded lab could not be built or torn down

Each error's ``str()`` is one line that says what was wrong and where; the CLI prints it
as is and exits non-zero, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BuildError",
    "ConfigError",
    "CriteriaError",
    "DeployError",
    "InvalidEvent",
    "LabError",
    "LeaseHeldError",
    "NodeError",
    "ProbeError",
    "StaleLeaseError",
    "StateError",
    "UnreachableNodeError",
    "VpsTestError",
]


class VpsTestError(Exception):
    """Base class: a problem the user can act on, described in one line."""


class ConfigError(VpsTestError):
    """A config or inventory file is invalid."""

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        line: int | None = None,
        key: str | None = None,
        allowed: tuple[str, ...] | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.key = key
        self.allowed = allowed
        where = ""
        if self.path is not None:
            where = self.path if line is None else f"{self.path}:{line}"
        parts = [p for p in (where, f"key '{key}'" if key else "") if p]
        text = ": ".join([", ".join(parts), message]) if parts else message
        if allowed:
            text += f" (allowed: {', '.join(allowed)})"
        super().__init__(text)


class StateError(VpsTestError):
    """The state file, transitions log or lease cannot be used as asked."""


class LeaseHeldError(StateError):
    """Another live runner holds the project's lease."""

    def __init__(self, project: str, pid: int, host: str, since: str) -> None:
        self.project, self.pid, self.host, self.since = project, pid, host, since
        super().__init__(
            f"project '{project}' is already being run by pid {pid} on {host} since {since}; "
            f"stop it with 'vpstest stop {project}' or wait for it to finish"
        )


class StaleLeaseError(StateError):
    """A write carried a fencing token older than the current lease."""


class InvalidEvent(StateError):
    """An event was offered to the loop's state machine in a state where it does not apply.

    Raised by ``machine.step``; the state it was given is unchanged.
    """

    def __init__(self, state: str, event: object, project: str, detail: str = "") -> None:
        self.state = state
        self.event = event
        self.project = project
        text = f"project '{project}': event {type(event).__name__} does not apply in state {state}"
        if detail:
            text += f" ({detail})"
        super().__init__(text)


class NodeError(VpsTestError):
    """A remote operation on a node failed."""

    def __init__(self, node: str, message: str, *, address: str | None = None) -> None:
        self.node, self.address = node, address
        where = f"{node} ({address})" if address else node
        super().__init__(f"{where}: {message}")


class UnreachableNodeError(NodeError):
    """No address of the node accepted an SSH session."""


class BuildError(VpsTestError):
    """The local build failed."""


class DeployError(VpsTestError):
    """Deployment reached too few nodes."""


class ProbeError(VpsTestError):
    """A probe command gave no usable answer."""


class CriteriaError(VpsTestError):
    """A success-criteria expression or setting is invalid."""


class LabError(VpsTestError):
    """The embedded lab could not be built, queried or removed."""
