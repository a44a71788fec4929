"""Batch probes over the control socket: request lines in, one result line per request as each
finishes. The agent's real control server runs with a scripted handler behind its seam (the handler
is what a node would be), and the real ``agent probe batch`` command drives it: results come in
completion order and stream while slower requests still run, requests run concurrently up to the
limit, a hanging request times out without holding up the others, and bad lines get an error line
instead of ending the batch (or the agent)."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_vpstest.lab.agent import batch, control
from pytest_vpstest.lab.agent.paths import control_socket

AGENT = [sys.executable, "-m", "pytest_vpstest.lab.agent"]


class ScriptedAgent:
    """A control server whose handler sleeps ``delay`` s per connect request (its ``timeout`` field
    names the peer's delay via the peer name ``d<ms>``; ``hang`` never answers)."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="vpb", dir="/tmp"))
        self.inflight = 0
        self.max_inflight = 0
        self.seen: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.release = asyncio.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        self.seen.append(request)
        if request["action"] == "status":
            return {"ok": True, "node": "fake", "addresses": [], "mapped": None, "peers": []}
        peer = request["peer"]
        if peer == "boom":
            raise RuntimeError("handler broke")
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if peer == "hang":
                await self.release.wait()
            else:
                await asyncio.sleep(int(peer[1:]) / 1000)
        finally:
            self.inflight -= 1
        return {"ok": True, "method": request["method"], "path": "direct", "rtt_ms": 1.0, "error": None}

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> asyncio.AbstractServer:
            server = await control.start_server(control_socket(self.home), self.handle)
            self._ready.set()
            return server

        server = self.loop.run_until_complete(start())
        self.loop.run_forever()
        # Stopped: let hanging requests end so their connections close, then close everything.
        server.close()
        self.release.set()
        tasks = asyncio.all_tasks(self.loop)
        self.loop.run_until_complete(asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10))
        self.loop.run_until_complete(server.wait_closed())
        self.loop.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture
def agent() -> Iterator[ScriptedAgent]:
    fake = ScriptedAgent()
    yield fake
    fake.close()


def connect(ref: object, peer: str, timeout: float = 5.0) -> str:
    return json.dumps({"ref": ref, "action": "connect", "peer": peer, "method": "direct", "timeout": timeout})


def run(agent: ScriptedAgent, lines: list[str], concurrency: int = 64) -> list[dict[str, Any]]:
    out = io.StringIO()
    code = batch.run_batch(control_socket(agent.home), io.StringIO("\n".join(lines) + "\n"), out, concurrency)
    assert code == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_results_come_in_completion_order(agent: ScriptedAgent) -> None:
    answers = run(agent, [connect("slow", "d600"), connect("mid", "d300"), connect("fast", "d10")])
    assert [a["ref"] for a in answers] == ["fast", "mid", "slow"]
    assert [a["line"] for a in answers] == [3, 2, 1]
    assert all(a["ok"] is True and a["action"] == "connect" and a["path"] == "direct" for a in answers)


def test_requests_run_concurrently_up_to_the_limit(agent: ScriptedAgent) -> None:
    answers = run(agent, [connect(i, "d200") for i in range(20)])
    assert sorted(a["ref"] for a in answers) == list(range(20)) and all(a["ok"] for a in answers)
    assert agent.max_inflight == 20
    agent.max_inflight = 0
    answers = run(agent, [connect(i, "d50") for i in range(12)], concurrency=3)
    assert len(answers) == 12 and agent.max_inflight == 3


def test_a_hanging_request_times_out_without_holding_up_the_others(agent: ScriptedAgent) -> None:
    answers = run(agent, [connect("stuck", "hang", timeout=0.2), connect("a", "d10"), connect("b", "d50")])
    assert [a["ref"] for a in answers] == ["a", "b", "stuck"]
    stuck = answers[-1]
    assert stuck["ok"] is False and stuck["method"] == "direct" and stuck["path"] is None
    assert stuck["error"] == f"did not finish within {0.2 + batch.GRACE_S:g} s"


def test_bad_lines_get_an_error_line_and_the_batch_goes_on(agent: ScriptedAgent) -> None:
    lines = [
        "not json",
        "[1, 2]",
        json.dumps({"ref": "x", "action": "explode"}),
        json.dumps({"ref": "y", "action": "connect", "peer": "d10"}),
        json.dumps({"ref": "z", "action": "connect", "peer": "d10", "method": "direct", "timeout": -1}),
        json.dumps({"ref": "w", "action": "connect", "peer": "bad name", "method": "direct"}),
        json.dumps({"ref": "v", "action": "status", "extra": 1}),
        connect("boom", "boom"),
        connect("good", "d10"),
        json.dumps({"ref": "s", "action": "status"}),
    ]
    answers = {a["line"]: a for a in run(agent, lines)}
    assert sorted(answers) == list(range(1, 11))
    errors = {n: answers[n]["error"] for n in range(1, 8)}
    assert errors[1].startswith("bad request line 1: not JSON")
    assert errors[2] == "bad request line 2: a request is a JSON object with an 'action'"
    assert errors[3].startswith("bad request line 3: unknown action 'explode'")
    assert errors[4] == "bad request line 4: connect needs 'method'"
    assert errors[5] == "bad request line 5: 'timeout' must be a number > 0 and at most 3600"
    assert "'bad name' is not a valid node name" in errors[6]
    assert errors[7] == "bad request line 7: unknown key(s) for status: extra"
    assert all(answers[n]["ok"] is False for n in range(1, 9))
    assert [answers[n].get("ref") for n in (3, 4, 5)] == ["x", "y", "z"]
    assert answers[8]["error"] == "agent error: RuntimeError: handler broke" and answers[8]["ref"] == "boom"
    assert answers[9]["ok"] is True and answers[10]["node"] == "fake"
    # The agent survived all of it.
    assert control.request(control_socket(agent.home), {"action": "status"}, 5)["ok"] is True


def test_the_command_streams_results_while_slower_requests_run(agent: ScriptedAgent) -> None:
    with subprocess.Popen(
        [*AGENT, "probe", "batch", "--home", str(agent.home)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(connect("stuck", "hang", timeout=30) + "\n" + connect("quick", "d10") + "\n")
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())
        # The quick answer arrived while the other request still hangs in the agent (stdin still open).
        assert first["ref"] == "quick" and first["ok"] is True and proc.poll() is None
        proc.kill()


def test_without_an_agent_every_request_gets_a_failure_line(tmp_path: Path) -> None:
    out = io.StringIO()
    lines = connect(1, "d10") + "\n\n" + json.dumps({"action": "status"}) + "\nnope\n"
    batch.run_batch(control_socket(tmp_path), io.StringIO(lines), out)
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [a["line"] for a in answers] == [1, 2, 3]
    assert all(a["ok"] is False and a["error"].startswith("agent not running:") for a in answers)
    assert answers[0]["method"] is None and answers[0]["ref"] == 1 and answers[1]["node"] is None


def test_what_the_harness_says_of_a_peer_is_accepted_and_left_out_of_the_request() -> None:
    line = json.dumps(
        {"ref": 3, "action": "connect", "peer": "n2", "method": "relay", "timeout": 2,
         "peer_address": "198.18.1.2:9000", "peer_id": "", "peer_public_address": "198.18.0.9"}
    )
    request, deadline = batch.parse_request(line)
    assert request == {"action": "connect", "peer": "n2", "method": "relay", "timeout": 2.0}
    assert deadline == 2.0 + batch.GRACE_S
    # Only pair actions take them: a status request with a peer fact is still refused.
    with pytest.raises(batch.BadRequest, match="unknown key"):
        batch.parse_request(json.dumps({"action": "status", "peer_id": "x"}))


def test_every_request_may_carry_its_timeout_and_is_answered_by_then() -> None:
    request, deadline = batch.parse_request(json.dumps({"action": "throughput", "peer": "n2", "seconds": 1,
                                                        "timeout": 6}))
    assert request == {"action": "throughput", "peer": "n2", "seconds": 1.0} and deadline == 6.0
    _, deadline = batch.parse_request(json.dumps({"action": "received", "id": "m", "timeout": 0.5}))
    assert deadline == 0.5
    with pytest.raises(batch.BadRequest, match="'timeout' must be a number"):
        batch.parse_request(json.dumps({"action": "status", "timeout": "soon"}))
