"""Judging connect attempts: ok=false fails, NAT theory's expected failures, punched paths, stderr tails."""

from __future__ import annotations

from typing import Any

from pytest_vpstest.fleet.judging import connected, judge_connect, path_of, stderr_tail
from pytest_vpstest.fleet.probes import ProbeResult


def answer(ok: bool, path: Any = "direct", stderr: str = "", error: str | None = None) -> ProbeResult:
    data = {"ok": ok, "method": "holepunch", "path": path if ok else None, "rtt_ms": 1.0 if ok else None,
            "error": None if ok else "no answer"}
    return ProbeResult("connect", "a", "agent connect b", 0, "{}", stderr, 0.1, data=data, error=error)


def test_all_attempts_ok_passes() -> None:
    assert judge_connect("a->b", [answer(True), answer(True, "punched")], "holepunch").outcome == "pass"


def test_one_ok_false_fails_the_pair_and_shows_its_stderr_tail() -> None:
    results = [answer(True), answer(False, stderr="dial: noise handshake\npunch: timed out after 5 s\n")]
    v = judge_connect("a->b", results, "direct")
    assert v.outcome == "fail" and v.success == 1
    assert "1 of 2 attempts failed" in v.message
    assert "stderr: punch: timed out after 5 s" in v.message


def test_a_relayed_hole_punch_fails() -> None:
    v = judge_connect("a->b", [answer(True, "relayed")], "holepunch")
    assert v.outcome == "fail" and "path 'relayed'" in v.message


def test_no_valid_answer_fails() -> None:
    bad = ProbeResult("connect", "a", "agent", 139, "segfault", "", 0.1, error="invalid JSON")
    assert "never gave a valid answer" in judge_connect("a->b", [bad], "direct").message


def test_expected_failure_is_xfail_and_a_success_there_is_xpass() -> None:
    why = "symmetric meets port-restricted"
    failed = judge_connect("a->b", [answer(False)], "holepunch", why)
    assert failed.outcome == "xfail" and failed.message == f"expected by NAT theory: {why}"
    v = judge_connect("a->b", [answer(False), answer(True, "punched")], "holepunch", why)
    assert v.outcome == "xpass" and "unexpected pass: connected 1/2" in v.message


def test_where_theory_cannot_tell_a_failure_is_expected_and_a_success_plain() -> None:
    why = "depends on earlier traffic"
    mixed = judge_connect("a->b", [answer(True), answer(False)], "direct", None, why)
    assert mixed.outcome == "xfail" and mixed.message == f"may fail by NAT theory: {why}"
    assert judge_connect("a->b", [answer(True), answer(True)], "direct", None, why).outcome == "pass"


def test_paths_are_reported_never_guessed() -> None:
    assert path_of(answer(True, "relayed")) == "relayed"
    assert path_of(answer(True, None)) == "unreported"
    assert path_of(answer(True, "teleported")) == "unreported"
    assert path_of(answer(False)) == "unreported"
    assert connected(answer(True, "punched"), "holepunch") and not connected(answer(True, None), "holepunch")


def test_stderr_tail_keeps_the_last_lines() -> None:
    r = answer(False, stderr="\n".join(f"line {i}" for i in range(10)) + "\n\n")
    assert stderr_tail(r, lines=2) == "line 8\nline 9"
