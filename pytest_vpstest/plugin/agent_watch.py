"""Noticing during a run that a node's agent stopped answering while SSH still works (pure).

The matrix engine feeds every probe result to an :class:`AgentWatch`. A result counts against the
node that ran the probe when it carries the *agent down* signature (:func:`agent_down`): SSH ran the
probe command, but the node's own agent did not answer it. ``threshold`` such results from one node
in a row make the node down for the rest of the run (the engine then marks it unhealthy, runs none
of its remaining steps, and its pairs skip as ``node unhealthy``). Any valid answer from the node's
agent starts the count again. Results that say nothing about the node's own agent — a timeout, an
SSH failure (handled as "unreachable"), output without the signature — neither count nor reset.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field

from pytest_vpstest.fleet.probes import ProbeResult

__all__ = ["AGENT_DOWN_AFTER", "AgentWatch", "agent_down"]

# Probe results from one node in a row with the signature before the node counts as down.
AGENT_DOWN_AFTER = 3

# In a valid answer's ``error`` (docs/contract.md asks a probe whose agent is not running to say so).
# The reference agent's batch command says "agent closed the batch before answering" for requests in
# flight when its agent went away.
_ANSWER_SIGNATURE = re.compile(
    r"^\s*agent ((is )?not (running|answering)\b|closed the batch before answering)", re.IGNORECASE
)
# In the output of a probe command that gave no valid answer: its local daemon refused it.
_OUTPUT_SIGNATURE = re.compile(
    r"agent (is )?not (running|answering)|connection refused|no control socket|control socket.*no such file",
    re.IGNORECASE,
)


def agent_down(result: ProbeResult) -> str | None:
    """The signature of a node whose agent is not answering, as a one-line reason; None otherwise."""
    if result.transport_error or result.timed_out:
        return None
    if result.valid:
        said = result.get("error")
        if result.get("ok") is not True and isinstance(said, str) and _ANSWER_SIGNATURE.search(said):
            return said.splitlines()[0][:200]
        return None
    text = "\n".join(part for part in (result.error or "", result.stdout, result.stderr) if part)
    match = _OUTPUT_SIGNATURE.search(text)
    if match is None:
        return None
    line = next((ln for ln in text.splitlines() if match.group(0) in ln), match.group(0)).strip()
    with contextlib.suppress(ValueError):  # an answer missing contract keys: its own error says it best
        said = json.loads(line).get("error") if line.startswith("{") else None
        if isinstance(said, str) and _OUTPUT_SIGNATURE.search(said):
            line = said
    return line[:200]


@dataclass
class AgentWatch:
    """Counts each node's agent-down results in a row; see the module docstring."""

    threshold: int = AGENT_DOWN_AFTER
    in_a_row: dict[str, int] = field(default_factory=dict)
    down: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError(f"threshold must be at least 1, got {self.threshold}")

    def observe(self, result: ProbeResult) -> str | None:
        """Take in one result; the reason when it makes its node down (once per node), else None."""
        node = result.node
        if node in self.down:
            return None
        why = agent_down(result)
        if why is None:
            if result.valid:
                self.in_a_row[node] = 0
            return None
        self.in_a_row[node] = count = self.in_a_row.get(node, 0) + 1
        if count < self.threshold:
            return None
        reason = f"agent not answering on {node}: {count} probes in a row said {why!r}"
        self.down[node] = reason
        return reason
