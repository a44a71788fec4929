"""Notifications survive outages: a real loopback HTTP server is stopped and restarted while events
are emitted; afterwards every event has arrived once, in order — also across a restart of the
notifying process. Command and voice channels and the outbox's bookkeeping are covered too."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pytest_vpstest.config import ChannelConfig, NotifyConfig
from pytest_vpstest.loop.notify import (
    CommandChannel,
    LogChannel,
    Notifier,
    Outbox,
    VoiceChannel,
    WebhookChannel,
    build_channels,
)


class Receiver:
    """A real HTTP server on 127.0.0.1 that can be stopped and started again on the same port."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.status = 200

    def start(self) -> None:
        received = self.received
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.status == 200:
                    received.append(json.loads(body))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@pytest.fixture
def receiver() -> Any:
    r = Receiver()
    r.start()
    yield r
    if r._server is not None:
        r.stop()


def _notifier(tmp_path: Path, url: str, lines: list[str] | None = None) -> Notifier:
    out = lines if lines is not None else []
    return Notifier(
        tmp_path / "outbox",
        "demo",
        [LogChannel(out.append), WebhookChannel(url, timeout=2)],
        log=out.append,
        min_backoff=0.05,
        max_backoff=0.2,
    )


def test_events_during_an_outage_arrive_afterwards_in_order_once(tmp_path: Path, receiver: Receiver) -> None:
    n = _notifier(tmp_path, receiver.url)
    n.emit("loop_start", "event 1")
    assert n.flush()
    receiver.stop()
    for i in range(2, 6):
        n.emit("wait", f"event {i}")
        assert not n.flush()  # the webhook is down: nothing raised, delivery pending
    assert n.pending()["log"] == 0
    receiver.start()
    n.emit("complete", "event 6")
    assert n.flush()
    assert [e["message"] for e in receiver.received] == [f"event {i}" for i in range(1, 7)]
    assert len({e["id"] for e in receiver.received}) == 6
    # Every channel delivered everything: the outbox is empty again (numbers are never reused).
    assert not list((tmp_path / "outbox").glob("0*.json"))
    assert n.emit("wait", "event 7").seq == 7


def test_background_delivery_retries_with_backoff(tmp_path: Path, receiver: Receiver) -> None:
    receiver.stop()
    n = _notifier(tmp_path, receiver.url)
    n.start()
    try:
        for i in range(3):
            n.emit("wait", f"bg {i}")
        receiver.start()
        done = threading.Event()
        for _ in range(100):
            if len(receiver.received) == 3:
                break
            done.wait(0.05)
    finally:
        n.close()
    assert [e["message"] for e in receiver.received] == ["bg 0", "bg 1", "bg 2"]


def test_outbox_survives_a_restart_of_the_notifying_process(tmp_path: Path, receiver: Receiver) -> None:
    receiver.stop()
    script = f"""
import sys
from pathlib import Path
from pytest_vpstest.loop.notify import Notifier, WebhookChannel, LogChannel
chans = [LogChannel(print), WebhookChannel({receiver.url!r}, timeout=1)]
n = Notifier(Path({str(tmp_path / "outbox")!r}), "demo", chans)
for i in range(4):
    n.emit("wait", f"proc {{i}}")
    n.flush()
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=60)
    assert receiver.received == []
    receiver.start()
    n = _notifier(tmp_path, receiver.url)  # a new process's notifier on the same outbox
    assert n.flush()
    assert n.flush()  # a second flush sends nothing again
    assert [e["message"] for e in receiver.received] == [f"proc {i}" for i in range(4)]
    assert [e["seq"] for e in receiver.received] == [1, 2, 3, 4]


def test_http_error_status_is_retried(tmp_path: Path, receiver: Receiver) -> None:
    receiver.status = 503
    n = _notifier(tmp_path, receiver.url)
    n.emit("critical", "x")
    assert not n.flush()
    receiver.status = 200
    assert n.flush()
    assert [e["message"] for e in receiver.received] == ["x"]


def test_failing_channel_does_not_hold_back_others(tmp_path: Path, receiver: Receiver) -> None:
    lines: list[str] = []
    bad = CommandChannel("false")
    n = Notifier(tmp_path / "ob", "p", [LogChannel(lines.append), bad, WebhookChannel(receiver.url)],
                 log=lines.append)
    n.emit("fix_committed", "fixed")
    assert not n.flush()
    assert [e["message"] for e in receiver.received] == ["fixed"]
    assert any("notify[fix_committed] fixed" in x for x in lines)
    assert any("failed" in x and bad.name in x for x in lines)
    assert n.pending()[bad.name] == 1


def test_command_channel_gets_json_on_stdin_and_message_argument(tmp_path: Path) -> None:
    out = tmp_path / "got"
    prog = tmp_path / "hook.py"
    prog.write_text(
        "import sys, json\n"
        "doc = json.load(sys.stdin)\n"
        f"open({str(out)!r}, 'a').write(doc['kind'] + '|' + sys.argv[1] + '\\n')\n"
    )
    ch = CommandChannel(f"{sys.executable} {prog}")
    n = Notifier(tmp_path / "ob", "p", [ch])
    n.emit("complete", "all\ngood")
    n.emit("transition", "SETUP -> BUILD")  # transitions are not for notification programs
    assert n.flush()
    assert out.read_text() == "complete|all good\n"


def test_voice_is_skipped_with_a_log_line_when_espeak_is_missing(tmp_path: Path) -> None:
    lines: list[str] = []
    ch = VoiceChannel(lines.append, program="no-such-speaker-program")
    n = Notifier(tmp_path / "ob", "p", [ch])
    n.emit("wait", "entering wait")
    n.emit("wait", "again")
    assert n.flush()
    assert lines == ["voice: no-such-speaker-program is not installed; voice notifications are skipped"]


def test_dashboard_gets_transitions_webhook_only_notifications(tmp_path: Path, receiver: Receiver) -> None:
    dash = Receiver()
    dash.start()
    try:
        cfg = NotifyConfig(channels=(ChannelConfig(kind="webhook", url=receiver.url),
                                     ChannelConfig(kind="log")),
                           dashboard_url=dash.url)
        lines: list[str] = []
        chans = build_channels(cfg, lines.append)
        assert [c.name.split("-")[0] for c in chans] == ["log", "webhook", "dashboard"]
        n = Notifier(tmp_path / "ob", "p", chans)
        n.emit("transition", "IDLE -> SETUP", {"from": "IDLE", "to": "SETUP"})
        n.emit("loop_start", "started")
        assert n.flush()
        assert [e["kind"] for e in dash.received] == ["transition", "loop_start"]
        assert dash.received[0]["data"] == {"from": "IDLE", "to": "SETUP"}
        assert [e["kind"] for e in receiver.received] == ["loop_start"]
    finally:
        dash.stop()


def test_outbox_files_are_complete_json_and_numbered(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "ob")
    for i in range(3):
        ob.append("p", "wait", f"m{i}")
    files = sorted(p.name for p in (tmp_path / "ob").glob("0*.json"))
    assert files == ["000000000001.json", "000000000002.json", "000000000003.json"]
    for f in files:
        json.loads((tmp_path / "ob" / f).read_text())
    assert [e.message for e in ob.events_after(1)] == ["m1", "m2"]
    assert not list((tmp_path / "ob").glob(".*.tmp"))


def test_voice_speaks_the_message_with_the_installed_program(tmp_path: Path) -> None:
    spoken = tmp_path / "spoken"
    speaker = tmp_path / "fake-espeak"
    speaker.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$1\" >> {spoken}\n")
    speaker.chmod(0o755)
    lines: list[str] = []
    n = Notifier(tmp_path / "ob", "p", [VoiceChannel(lines.append, program=str(speaker))])
    n.emit("complete", "VPS test complete for p")
    n.emit("transition", "TEST -> COMPLETE")  # not spoken
    assert n.flush()
    assert spoken.read_text() == "VPS test complete for p\n"
    assert lines == []
