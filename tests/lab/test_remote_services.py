"""The plain-process service manager over real SSH.

Proves: a service started over one SSH session keeps running after that session and its pool are
closed; status sees it from a new session; logs show its output; stop ends it (TERM, and KILL
after the grace period for a service ignoring TERM, including its children); a pid file pointing at
an unrelated live process counts as stopped and that process is never signalled; paths with spaces
and quotes work.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_vpstest.fleet.remote import SessionPool
from pytest_vpstest.fleet.services import ProcessManager, service_manager
from tests.support.sshd import SshdHandle, sshd  # noqa: F401

pytestmark = pytest.mark.lab


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _wait_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[tuple[str, str]]:
    install = tmp_path / "install dir 'quoted' $(x)"
    logs = tmp_path / "logs"
    yield str(install), str(logs)
    # Never leave a service behind, whatever the test did.
    for pid_file in (install / "run").glob("*.pid"):
        text = pid_file.read_text().strip()
        if text.isdigit() and _alive(int(text)):
            os.killpg(int(text), 9)


def test_service_survives_the_session_that_started_it(sshd: SshdHandle, paths: tuple[str, str]) -> None:  # noqa: F811
    install, logs = paths
    with SessionPool(sshd.inventory()) as pool:
        manager = service_manager(pool.session("node-1"), install_path=install, log_dir=logs)
        assert isinstance(manager, ProcessManager)
        started = manager.start("vpstest-agent", "echo hello from $VPSTEST_SERVICE; exec sleep 300")
        assert started.running and started.pid
        again = manager.start("vpstest-agent", "exec sleep 300")
        assert again.detail == "already running" and again.pid == started.pid
    # The pool and its SSH connection are gone; the service is not.
    assert started.pid is not None and _alive(started.pid)
    with SessionPool(sshd.inventory()) as pool:
        manager = ProcessManager(pool.session("node-1"), install_path=install, log_dir=logs)
        status = manager.status("vpstest-agent")
        assert status.running and status.pid == started.pid
        assert "hello from vpstest-agent" in manager.logs("vpstest-agent")
        manager.stop("vpstest-agent")
        assert not manager.status("vpstest-agent").running
        manager.stop("vpstest-agent")  # stopping a stopped service is fine
    assert _wait_gone(started.pid)


def test_stop_kills_a_service_ignoring_term_with_its_children(
    sshd: SshdHandle,  # noqa: F811
    paths: tuple[str, str],
) -> None:
    install, logs = paths
    with SessionPool(sshd.inventory()) as pool:
        manager = ProcessManager(
            pool.session("node-1"), install_path=install, log_dir=logs, grace_seconds=0.5
        )
        status = manager.start("stubborn", "trap '' TERM; sleep 300 & while :; do sleep 0.2; done")
        assert status.pid is not None
        time.sleep(0.3)
        group = subprocess.run(
            ["pgrep", "-g", str(status.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(group) >= 2  # the shell and its background sleep
        started = time.monotonic()
        manager.stop("stubborn")
        assert time.monotonic() - started >= 0.5
        assert not manager.status("stubborn").running
    for pid in group:
        assert _wait_gone(int(pid)), f"pid {pid} of the service's group survived stop"


def test_stale_pid_file_is_stopped_and_never_signals_the_stranger(
    sshd: SshdHandle,  # noqa: F811
    paths: tuple[str, str],
) -> None:
    install, logs = paths
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        run_dir = Path(install) / "run"
        run_dir.mkdir(parents=True)
        (run_dir / "ghost.pid").write_text(f"{stranger.pid}\n")
        with SessionPool(sshd.inventory()) as pool:
            manager = ProcessManager(pool.session("node-1"), install_path=install, log_dir=logs)
            status = manager.status("ghost")
            assert not status.running and status.pid == stranger.pid
            manager.stop("ghost")
        assert stranger.poll() is None
        assert not (run_dir / "ghost.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_service_that_exits_is_reported_stopped(sshd: SshdHandle, paths: tuple[str, str]) -> None:  # noqa: F811
    install, logs = paths
    with SessionPool(sshd.inventory()) as pool:
        manager = ProcessManager(pool.session("node-1"), install_path=install, log_dir=logs)
        status = manager.start("short", "echo bye; exit 3")
        assert status.pid is not None
        assert _wait_gone(status.pid)
        after = manager.status("short")
        assert not after.running and "not running" in after.detail
        assert "bye" in manager.logs("short", lines=5)
