"""`vpstest start` on a real terminal (a pseudo-terminal): the interview asks its four questions,
shows the Test Plan Summary and honours "cancel" without starting anything."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_interview_on_a_terminal_then_cancel(tmp_path: Path) -> None:
    (tmp_path / "known_hosts").write_text("")
    (tmp_path / "nodes.yaml").write_text(
        "schema_version: 1\nknown_hosts: known_hosts\nnodes:\n"
        "  - {name: n-4, host: 127.0.0.1, port: 1, role: nat, nat: symmetric}\n"
        "  - {name: n-7, host: 127.0.0.1, port: 1, role: test}\n"
    )
    (tmp_path / "vpstest.yaml").write_text(
        f"project: ttyproj\nworkspace: {tmp_path}\ninventory: nodes.yaml\nstate_dir: {tmp_path / 'state'}\n"
    )
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "pytest_vpstest.cli", "start", "--config", "vpstest.yaml"],
                            cwd=tmp_path, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    # Enter keeps the default project; focus 2; criteria by name; proof 4; then cancel (3).
    os.write(master, b"\n2\nthreshold\n4\n3\n")
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=30)
    os.close(master)
    text = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    assert proc.returncode == 1, text
    assert "Project: Which project are you testing?" in text
    assert "Test focus: What specific functionality are you testing?" in text
    assert "Test Plan Summary" in text
    assert "Project: ttyproj (confirmed via interview)" in text
    assert "Focus: NAT hole-punching across different NAT types [nat-traversal]" in text
    assert "    - n-4 (Symmetric)" in text
    assert "cancelled" in text
    assert not (tmp_path / "state").exists()  # nothing was started
