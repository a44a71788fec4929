"""Probe batches: every request line carries the probe's {timeout}, and its result keeps it."""

from __future__ import annotations

import json
import queue
import threading

from pytest_vpstest.fleet.batch import REQUESTS, BatchLane, batch_request
from pytest_vpstest.fleet.probes import ProbeResult


class EchoStream:
    """Answers each status request line with a valid status answer carrying its ``ref``."""

    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()

    def send(self, text: str) -> None:
        request = json.loads(text)
        self.sent.append(request)
        self._lines.put(json.dumps({"ref": request["ref"], "ok": True, "node": "a", "addresses": []}) + "\n")

    def close_input(self) -> None:
        self._lines.put("")

    def readline(self) -> str:
        return self._lines.get()

    def exit_code(self) -> int | None:
        return 0

    def close(self) -> None:
        pass


def test_every_batch_request_carries_the_timeout() -> None:
    values = {"peer": "b", "peer_address": "", "peer_id": "", "peer_public_address": "", "method": "direct",
              "topic": "t", "message_id": "m", "seconds": 1, "amount": 0, "timeout": 4}
    for action in REQUESTS:
        assert batch_request(action, 1, values)["timeout"] == 4, action


def test_a_batch_answer_keeps_its_timeout() -> None:
    stream = EchoStream()
    lane = BatchLane("a", "agent batch", lambda _command: stream)
    got: list[ProbeResult] = []
    done = threading.Event()
    lane.submit("status", {"timeout": 2.5}, lambda r: (got.append(r), done.set()))
    assert done.wait(5)
    lane.close()
    assert got[0].ok and got[0].timeout == 2.5 and stream.sent[0]["timeout"] == 2.5
