"""The start interview through its I/O seam: no parameters (all asked), some (the rest asked), all
(summary only); proceed, modify and cancel; invalid answers are asked again; the summary lists the
plan's fields, nodes by role and NAT type, and the binary source."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_vpstest.config import BuildConfig, Inventory, Node, ProjectConfig
from pytest_vpstest.interview import Cancelled, InterviewIO, Plan, plan_summary, prefill_from, run_interview

CONFIG = ProjectConfig(path=None, project="demo", workspace=Path("/tmp/ws"),
                       build=BuildConfig(command="python3 build.py"))
INVENTORY = Inventory(nodes=(
    Node(name="vps-1", host="h", role="registry"),
    Node(name="vps-2", host="h", role="bootstrap"),
    Node(name="vps-4", host="h", role="nat", nat="full-cone"),
    Node(name="vps-10", host="h", role="nat", nat="symmetric"),
    Node(name="vps-7", host="h", role="test"),
))


class Script:
    def __init__(self, answers: list[str]) -> None:
        self._answers: Iterator[str] = iter(answers)
        self.prompts: list[str] = []
        self.output: list[str] = []

    def ask(self, prompt: str) -> str:
        self.prompts.append(prompt)
        try:
            return next(self._answers)
        except StopIteration:
            raise AssertionError(f"unexpected question: {prompt}\n" + "\n".join(self.output)) from None

    @property
    def io(self) -> InterviewIO:
        return InterviewIO(ask=self.ask, say=self.output.append)

    @property
    def text(self) -> str:
        return "\n".join(self.output)


def _run(prefill: dict[str, str | None], answers: list[str]) -> tuple[Plan, Script]:
    s = Script(answers)
    plan = run_interview(prefill, config=CONFIG, inventory=INVENTORY, io=s.io)
    return plan, s


def test_no_parameters_asks_everything_with_its_options() -> None:
    plan, s = _run(prefill_from([]), ["", "2", "threshold", "4", "1"])
    assert (plan.project, plan.focus, plan.criteria, plan.proof) == ("demo", "nat-traversal", "threshold",
                                                                     "all-evidence")
    assert "Project: Which project are you testing?" in s.text
    assert "  2. nat-traversal   NAT hole-punching across different NAT types" in s.text
    assert "Success criteria: What result indicates success?" in s.text
    assert "Proof method: How should success be proven/verified?" in s.text
    assert "Confirm: Confirm test plan and proceed?" in s.text
    assert plan.sources["focus"] == "confirmed via interview"
    assert len(s.prompts) == 5


def test_some_parameters_are_prefilled_and_the_rest_asked() -> None:
    plan, s = _run(prefill_from(["ant-quic", "connectivity"]), ["all-pass", "logs", "proceed"])
    chosen = (plan.project, plan.focus, plan.criteria, plan.proof)
    assert chosen == ("ant-quic", "connectivity", "all-pass", "logs")
    assert "Project: ant-quic (from parameter)" in s.text
    assert "Success: 100% of tests must pass [all-pass] (confirmed via interview)" in s.text
    assert "Project: Which project" not in s.text


def test_all_parameters_show_the_summary_and_ask_only_for_confirmation() -> None:
    plan, s = _run(prefill_from(["demo", "gossip", "threshold", "metrics"]), [""])
    assert plan.focus == "gossip"
    assert len(s.prompts) == 1
    assert "Test Plan Summary" in s.text


def test_modify_changes_one_answer_then_proceeds() -> None:
    plan, s = _run(prefill_from(["demo", "gossip", "threshold", "metrics"]),
                   ["modify", "focus", "throughput", "proceed"])
    assert plan.focus == "throughput"
    assert plan.sources["focus"] == "chosen in interview"
    assert s.text.count("Test Plan Summary") == 2


def test_cancel_raises_cancelled() -> None:
    with pytest.raises(Cancelled):
        _run(prefill_from(["demo", "gossip", "threshold", "metrics"]), ["3"])


def test_invalid_answers_are_asked_again() -> None:
    plan, s = _run(prefill_from(["demo", None, "all-pass", "logs"]), ["9", "nonsense", "gossip", "proceed"])
    assert plan.focus == "gossip"
    assert s.text.count("is not one of the options") == 2


def test_custom_criteria_asks_for_the_expression() -> None:
    plan, s = _run(prefill_from(["demo", "connectivity", "custom", "logs"]),
                   ["connectivity.relay.rate >= 90", "proceed"])
    assert plan.criteria_expr == "connectivity.relay.rate >= 90"
    assert "  Expression: connectivity.relay.rate >= 90" in s.text
    assert plan.apply(CONFIG).criteria_expr == "connectivity.relay.rate >= 90"


def test_summary_lists_nodes_by_role_and_nat_type_and_binary_source() -> None:
    plan = Plan("demo", "nat-traversal", "threshold", "logs", sources={"project": "from parameter"})
    text = plan_summary(plan, config=CONFIG, inventory=INVENTORY)
    assert text.splitlines()[:2] == ["Test Plan Summary", "================="]
    assert "  Registry: vps-1" in text
    assert "  Bootstrap: vps-2" in text
    assert "  Standard: vps-7" in text
    assert "    - vps-4 (Full Cone)" in text and "    - vps-10 (Symmetric)" in text
    assert "Binary source: Local build (python3 build.py)" in text
    assert text.endswith("Ready to proceed?")


def test_plan_applies_to_the_config() -> None:
    cfg = Plan("demo", "gossip", "all-pass", "logs").apply(CONFIG)
    assert (cfg.focus, cfg.criteria, cfg.proof) == ("gossip", "all-pass", "logs")
