"""``lab status`` judges a node's own status answer: ok, not ready, or no answer with its reason."""

from __future__ import annotations

from pytest_vpstest.fleet.probes import ProbeResult, parse_output
from pytest_vpstest.lab.sut_status import SutStatus, judge


def answer(stdout: str, stderr: str = "", timed_out: bool = False) -> ProbeResult:
    data, error = (None, "timed out after 7s") if timed_out else parse_output("status", stdout)
    return ProbeResult("status", "n1", "sut status", 0, stdout, stderr, 0.1, timed_out, data, error)


def test_ok_and_not_ready() -> None:
    assert judge(answer('{"ok": true, "node": "n1", "addresses": []}')) == SutStatus("ok")
    ready = judge(answer('{"ok": true, "node": "n1", "addresses": [], "ready": false}'))
    assert ready == SutStatus("not ready", "status answered ready: false")
    assert ready.text() == "not ready: status answered ready: false"


def test_no_answer_says_why_in_one_line() -> None:
    assert judge(answer("")).text() == "no answer: no output"
    refused = judge(answer('{"ok": false, "node": null, "addresses": null, "error": "dial\\nrefused"}',
                           stderr="boot: still loading\n"))
    assert refused.state == "no answer"
    assert refused.reason == "probe said ok=false: dial; stderr: boot: still loading"
    assert judge(answer('{"ok": true}')).reason == "missing keys node, addresses in status answer"
    late = judge(answer("", stderr="the management link did not return\n", timed_out=True))
    assert late.text() == "no answer: timed out after 7s; stderr: the management link did not return"
    assert SutStatus("-", "the registry runs no software under test").text() == "-"
