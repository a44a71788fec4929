"""The ``vpstest start`` interview and the test plan summary (docs/cli.md).

Every missing parameter is asked with its options and their descriptions; parameters given on
the command line are pre-filled (shown in the summary as "from parameter"); then the Test Plan
Summary is shown with a proceed / modify / cancel choice. All I/O goes through ``InterviewIO``
(``ask(prompt) -> answer``, ``say(text)``) so tests drive it without a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from pytest_vpstest.config import CRITERIA, FOCUSES, PROOFS, Inventory, ProjectConfig
from pytest_vpstest.nat_types import nat_info
from pytest_vpstest.suite import FULL_SUITE, SUITES

__all__ = [
    "QUESTIONS",
    "Cancelled",
    "InterviewIO",
    "Option",
    "Plan",
    "Question",
    "console_io",
    "plan_summary",
    "prefill_from",
    "run_interview",
]

Source = Literal["from parameter", "from config", "confirmed via interview", "chosen in interview"]


class Cancelled(Exception):
    """The user cancelled at the confirmation, or the input ended."""


@dataclass(frozen=True)
class Option:
    value: str
    description: str


@dataclass(frozen=True)
class Question:
    key: str
    header: str
    text: str
    options: tuple[Option, ...]


KNOWN_PROJECTS: tuple[Option, ...] = (
    Option("ant-quic", "QUIC transport with NAT traversal"),
    Option("saorsa-gossip", "Gossip protocol layer"),
    Option("communitas-mcp", "MCP server for Communitas"),
    Option("saorsa-node", "Full Saorsa network node"),
    Option("saorsa-core", "Core library (integration tests)"),
)
_FOCUS = (*(Option(s.focus, s.summary) for s in SUITES), Option(FULL_SUITE, "All tests in sequence"))
_CRITERIA = (
    Option("all-pass", "100% of tests must pass"),
    Option("threshold", "Meet configured success thresholds (e.g., 85% NAT)"),
    Option("improvement", "Better than previous run"),
    Option("custom", "I'll specify custom criteria"),
)
_PROOF = (
    Option("logs", "Gather and analyze logs from all VPS nodes"),
    Option("metrics", "Check dashboard metrics and Prometheus data"),
    Option("manual-verify", "I'll manually verify after tests complete"),
    Option("all-evidence", "Collect logs, metrics, and connection reports"),
)
assert tuple(o.value for o in _FOCUS) == FOCUSES
assert tuple(o.value for o in _CRITERIA) == CRITERIA
assert tuple(o.value for o in _PROOF) == PROOFS

QUESTIONS: tuple[Question, ...] = (
    Question("project", "Project", "Which project are you testing?", KNOWN_PROJECTS),
    Question("focus", "Test focus", "What specific functionality are you testing?", _FOCUS),
    Question("criteria", "Success criteria", "What result indicates success?", _CRITERIA),
    Question("proof", "Proof method", "How should success be proven/verified?", _PROOF),
)
_CONFIRM = Question(
    "confirm", "Confirm", "Confirm test plan and proceed?",
    (Option("proceed", "Yes, start the test loop"), Option("modify", "No, I want to change something"),
     Option("cancel", "Cancel and exit")),
)


@dataclass
class Plan:
    """The confirmed parameters of a run."""

    project: str
    focus: str
    criteria: str
    proof: str
    criteria_expr: str | None = None
    sources: dict[str, Source] = field(default_factory=dict)

    def apply(self, config: ProjectConfig) -> ProjectConfig:
        """The project config with this plan's choices."""
        return replace(
            config,
            project=self.project,
            focus=self.focus,  # type: ignore[arg-type]
            criteria=self.criteria,  # type: ignore[arg-type]
            proof=self.proof,  # type: ignore[arg-type]
            criteria_expr=self.criteria_expr if self.criteria_expr is not None else config.criteria_expr,
        )


@dataclass
class InterviewIO:
    """The interview's input and output (the seam tests replace)."""

    ask: Callable[[str], str]
    say: Callable[[str], None]


def console_io() -> InterviewIO:
    def ask(prompt: str) -> str:
        try:
            return input(prompt)
        except EOFError:
            raise Cancelled("input ended") from None

    return InterviewIO(ask=ask, say=lambda text: print(text, file=sys.stdout, flush=True))


def _project_question(config_project: str | None) -> Question:
    options = list(KNOWN_PROJECTS)
    if config_project and config_project not in {o.value for o in options}:
        options.insert(0, Option(config_project, "The project of this config file"))
    return replace(QUESTIONS[0], options=tuple(options))


def _describe(q: Question, value: str) -> str:
    for o in q.options:
        if o.value == value:
            return f"{o.description} [{value}]"
    return value


def _choose(io: InterviewIO, q: Question, default: str | None, *, free_text: bool = False) -> str:
    """Ask one question until the answer is an option (number or value) or, if allowed, any name."""
    io.say("")
    io.say(f"{q.header}: {q.text}")
    for i, o in enumerate(q.options, 1):
        io.say(f"  {i}. {o.value:<15} {o.description}")
    hint = f" [{default}]" if default else ""
    for _ in range(20):
        answer = io.ask(f"Choose 1-{len(q.options)}{' or type a name' if free_text else ''}{hint}: ").strip()
        if not answer and default:
            return default
        if answer.isdigit() and 1 <= int(answer) <= len(q.options):
            return q.options[int(answer) - 1].value
        for o in q.options:
            if answer.lower() == o.value:
                return o.value
        if free_text and answer and all(c.isalnum() or c in "._-" for c in answer) and answer[0].isalnum():
            return answer
        io.say(f"  '{answer}' is not one of the options; answer with a number or a name from the list.")
    raise Cancelled(f"no valid answer to '{q.text}'")


def run_interview(
    prefill: Mapping[str, str | None],
    *,
    config: ProjectConfig,
    inventory: Inventory | None,
    io: InterviewIO,
) -> Plan:
    """Ask what is missing, show the Test Plan Summary, and loop on modify until proceed.

    ``prefill`` holds the command-line parameters (project, focus, criteria, proof); the config's
    own focus/criteria/proof serve as defaults for questions asked. Raises ``Cancelled``.
    """
    questions = {q.key: q for q in QUESTIONS}
    questions["project"] = _project_question(config.project)
    values: dict[str, str] = {}
    sources: dict[str, Source] = {}
    config_defaults = {"project": config.project, "focus": config.focus, "criteria": config.criteria,
                       "proof": config.proof}
    for q in QUESTIONS:
        given = prefill.get(q.key)
        if given:
            values[q.key] = given
            sources[q.key] = "from parameter"
        else:
            values[q.key] = _choose(io, questions[q.key], config_defaults.get(q.key),
                                    free_text=q.key == "project")
            sources[q.key] = "confirmed via interview"
    expr = config.criteria_expr
    if values["criteria"] == "custom" and not expr:
        expr = _ask_expression(io)
    while True:
        plan = Plan(values["project"], values["focus"], values["criteria"], values["proof"], expr,
                    dict(sources))
        io.say("")
        io.say(plan_summary(plan, config=config, inventory=inventory))
        choice = _choose(io, _CONFIRM, "proceed")
        if choice == "proceed":
            return plan
        if choice == "cancel":
            raise Cancelled("cancelled at the test plan confirmation")
        which = _choose(io, Question("modify", "Modify", "What do you want to change?",
                                     tuple(Option(q.key, q.text) for q in QUESTIONS)), None)
        values[which] = _choose(io, questions[which], values[which], free_text=which == "project")
        sources[which] = "chosen in interview"
        if which == "criteria" and values["criteria"] == "custom" and not expr:
            expr = _ask_expression(io)


def _ask_expression(io: InterviewIO) -> str:
    io.say("Custom criteria: an expression over the metrics, e.g. "
           "connectivity.nat_traversed.rate >= 85 and throughput.avg_mbps > 10")
    for _ in range(20):
        answer = io.ask("Expression: ").strip()
        if answer:
            return answer
    raise Cancelled("no custom criteria expression given")




def _nodes_by_role(inventory: Inventory) -> list[str]:
    lines = ["Nodes to use:"]
    groups: dict[str, list[str]] = {}
    nat: list[str] = []
    for n in inventory.nodes:
        if n.nat != "none":
            nat.append(f"    - {n.name} ({nat_info(n.nat).label})")
        else:
            label = {"registry": "Registry", "bootstrap": "Bootstrap"}.get(n.role, "Standard")
            groups.setdefault(label, []).append(n.name)
    for label in ("Registry", "Bootstrap", "Standard"):
        if label in groups:
            lines.append(f"  {label}: {', '.join(groups[label])}")
    if nat:
        lines.append("  NAT Emulation:")
        lines.extend(nat)
    if not inventory.nodes:
        lines.append("  (none)")
    return lines


def plan_summary(plan: Plan, *, config: ProjectConfig, inventory: Inventory | None) -> str:
    """The "Test Plan Summary" block."""
    qs = {q.key: q for q in QUESTIONS}
    qs["project"] = _project_question(config.project)
    s = plan.sources
    lines = [
        "Test Plan Summary",
        "=================",
        f"Project: {plan.project} ({s.get('project', 'from config')})",
        f"Focus: {_describe(qs['focus'], plan.focus)} ({s.get('focus', 'from config')})",
        f"Success: {_describe(qs['criteria'], plan.criteria)} ({s.get('criteria', 'from config')})",
    ]
    if plan.criteria == "custom" and plan.criteria_expr:
        lines.append(f"  Expression: {plan.criteria_expr}")
    lines.append(f"Proof: {_describe(qs['proof'], plan.proof)} ({s.get('proof', 'from config')})")
    lines.append("")
    if inventory is not None:
        lines.extend(_nodes_by_role(inventory))
        where = f" ({inventory.path})" if inventory.path else ""
        lab = f", embedded lab: {inventory.lab}" if inventory.lab else ""
        lines.append(f"  Inventory: {len(inventory.nodes)} node(s){lab}{where}")
        lines.append("")
    if config.build is not None:
        lines.append(f"Binary source: Local build ({config.build.command})")
    else:
        lines.append("Binary source: none configured (deploy uses what is on the nodes)")
    lines.append("")
    lines.append("Ready to proceed?")
    return "\n".join(lines)


def prefill_from(args: Sequence[str | None]) -> dict[str, str | None]:
    """The positional ``project focus criteria proof`` as a prefill mapping."""
    keys = ("project", "focus", "criteria", "proof")
    return {k: (args[i] if i < len(args) else None) for i, k in enumerate(keys)}
