"""Service managers: start, stop and inspect the software under test on one node.

``service_manager(session, ...)`` picks the manager the node's inventory entry asks for:
:class:`SystemdManager` (a unit per service, the journal as its log) or :class:`ProcessManager`
(detached processes with a pid file and ``<log dir>/<service>.log``, for nodes without systemd).
The paths they use come from the node's :class:`~pytest_vpstest.fleet.node.NodePlan`.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass
from typing import Protocol

from pytest_vpstest.fleet.remote import Session

__all__ = ["ProcessManager", "ServiceManager", "ServiceStatus", "SystemdManager", "service_manager"]

# Environment marker of a process started by ProcessManager (found again by stop and status).
_SERVICE_ENV = "VPSTEST_SERVICE"


@dataclass(frozen=True)
class ServiceStatus:
    service: str
    running: bool
    pid: int | None = None
    detail: str = ""


class ServiceManager(Protocol):
    """Start, stop and inspect one named service on one node."""

    def start(self, service: str, command: str) -> ServiceStatus:
        """Start ``command`` (a shell string) as ``service``; a running instance is left as is."""
        ...

    def stop(self, service: str) -> None:
        """Stop the service if it runs; stopping a stopped service is not an error."""
        ...

    def status(self, service: str) -> ServiceStatus: ...

    def logs(self, service: str, lines: int = 200) -> str: ...


def service_manager(session: Session, *, install_path: str, log_dir: str) -> ServiceManager:
    """The service manager the node's inventory entry asks for."""
    if session.node.service_manager == "process":
        return ProcessManager(session, install_path=install_path, log_dir=log_dir)
    return SystemdManager(session, install_path=install_path, log_dir=log_dir)


class ProcessManager:
    """Services as detached processes, for nodes without systemd (docs/internals.md).

    ``setsid nohup sh -c <cmd> >> <log_dir>/<service>.log 2>&1 < /dev/null &`` with the pid in
    ``<install_path>/run/<service>.pid``. The process carries ``VPSTEST_SERVICE=<service>`` in
    its environment, so status and stop only ever act on a pid that is still that service
    (a reused pid or a zombie counts as stopped). Stop sends TERM to the process group, then
    KILL after ``grace_seconds``.
    """

    def __init__(
        self, session: Session, *, install_path: str, log_dir: str, grace_seconds: float = 5.0
    ) -> None:
        self.session = session
        self.install_path = install_path
        self.log_dir = log_dir
        self.grace_seconds = grace_seconds

    def pid_file(self, service: str) -> str:
        return posixpath.join(self.install_path, "run", f"{service}.pid")

    def log_file(self, service: str) -> str:
        return posixpath.join(self.log_dir, f"{service}.log")

    def _alive_fn(self, service: str) -> str:
        marker = shlex.quote(f"{_SERVICE_ENV}={service}")
        # On Linux the environment marker proves the pid is still our service; elsewhere kill -0.
        return (
            'alive() { if [ -d /proc/self ]; then [ -r "/proc/$pid/environ" ] && '
            f"tr '\\000' '\\n' < \"/proc/$pid/environ\" 2>/dev/null | grep -qxF {marker}; "
            'else kill -0 "$pid" 2>/dev/null; fi; }'
        )

    def _read_pid(self, service: str) -> str:
        pf = shlex.quote(self.pid_file(service))
        return f'pid=$(cat {pf} 2>/dev/null || true); case "$pid" in ""|*[!0-9]*) pid=;; esac'

    def start(self, service: str, command: str) -> ServiceStatus:
        current = self.status(service)
        if current.running:
            return ServiceStatus(service, True, current.pid, "already running")
        run_dir = posixpath.join(self.install_path, "run")
        pid_file = shlex.quote(self.pid_file(service))
        # The service's own shell writes its pid (after setsid, so it is the session and group
        # leader whatever setsid had to do), then execs the command; the environment marker is
        # in place before the pid file exists, so status never sees a half-started service.
        launcher = shlex.quote('echo $$ > "$1"; exec sh -c "$2"')
        script = (
            f"set -e; mkdir -p {shlex.quote(run_dir)} {shlex.quote(self.log_dir)}; "
            f"cd {shlex.quote(self.install_path)}; rm -f {pid_file}; "
            f"{_SERVICE_ENV}={shlex.quote(service)} setsid nohup sh -c {launcher} {shlex.quote(service)} "
            f"{pid_file} {shlex.quote(command)} "
            f">> {shlex.quote(self.log_file(service))} 2>&1 < /dev/null & "
            f"i=0; while [ ! -s {pid_file} ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; "
            f"set +e; {self._read_pid(service)}; {self._alive_fn(service)}; "
            'if [ -n "$pid" ] && alive; then echo "running $pid"; else echo "stopped $pid"; fi'
        )
        res = self.session.run(f"sh -c {shlex.quote(script)}", timeout=30, check=True)
        word, _, pid_text = res.stdout.strip().partition(" ")
        pid = _int_or_none(pid_text)
        if word == "running":
            return ServiceStatus(service, True, pid, "started")
        return ServiceStatus(service, False, pid, "exited right after start")

    def stop(self, service: str) -> None:
        ticks = max(1, int(self.grace_seconds * 10))
        # The service leads its own process group (setsid): signal the group, so children go too.
        # ``kill -SIG -PGID`` (no "--": dash's kill rejects it). After the leader is gone or the
        # grace period ends, KILL whatever is left of the group.
        script = (
            f"{self._read_pid(service)}; {self._alive_fn(service)}; "
            'if [ -n "$pid" ] && alive; then '
            'kill -TERM -"$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; '
            f'i=0; while alive && [ "$i" -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done; '
            'kill -KILL -"$pid" 2>/dev/null || true; '
            'if alive; then kill -KILL "$pid" 2>/dev/null || true; fi; fi; '
            f"rm -f {shlex.quote(self.pid_file(service))}"
        )
        self.session.run(f"sh -c {shlex.quote(script)}", timeout=self.grace_seconds + 30, check=True)

    def status(self, service: str) -> ServiceStatus:
        script = (
            f"{self._read_pid(service)}; {self._alive_fn(service)}; "
            'if [ -z "$pid" ]; then echo "stopped -"; elif alive; then echo "running $pid"; '
            'else echo "stopped $pid"; fi'
        )
        res = self.session.run(f"sh -c {shlex.quote(script)}", timeout=30, check=True)
        word, _, pid_text = res.stdout.strip().partition(" ")
        pid = _int_or_none(pid_text)
        if word == "running":
            return ServiceStatus(service, True, pid, f"pid {pid}")
        detail = "no pid file" if pid is None else f"pid {pid} is not running"
        return ServiceStatus(service, False, pid, detail)

    def logs(self, service: str, lines: int = 200) -> str:
        log = shlex.quote(self.log_file(service))
        res = self.session.run(f"tail -n {int(lines)} {log} 2>/dev/null || true", timeout=30)
        return res.stdout


class SystemdManager:
    """Services as systemd units (``<service>.service``), installing the unit file if missing.

    The unit runs ``sh -c <command>`` in ``install_path``; its journal is the log. A unit file
    whose content differs from what the command needs is rewritten (the start command changed).
    """

    unit_dir = "/etc/systemd/system"

    def __init__(self, session: Session, *, install_path: str, log_dir: str) -> None:
        self.session = session
        self.install_path = install_path
        self.log_dir = log_dir

    def unit_file(self, service: str) -> str:
        return posixpath.join(self.unit_dir, f"{service}.service")

    def unit_text(self, service: str, command: str) -> str:
        exec_start = "/bin/sh -c " + _systemd_quote(command)
        return (
            "[Unit]\n"
            f"Description=pytest-vpstest service {service}\n"
            "After=network-online.target\n\n"
            "[Service]\n"
            f"WorkingDirectory={self.install_path}\n"
            f"ExecStart={exec_start}\n"
            "Restart=on-failure\nRestartSec=2\nKillMode=control-group\nTimeoutStopSec=5\n\n"
            "[Install]\nWantedBy=multi-user.target\n"
        )

    def start(self, service: str, command: str) -> ServiceStatus:
        unit = shlex.quote(self.unit_file(service))
        text = shlex.quote(self.unit_text(service, command))
        name = shlex.quote(f"{service}.service")
        script = (
            f"set -e; want={text}; "
            # $(...) drops trailing newlines on both sides, so an unchanged unit compares equal.
            f'if [ ! -f {unit} ] || [ "$(cat {unit})" != "$(printf %s "$want")" ]; then '
            f'printf %s "$want" > {unit}; systemctl daemon-reload; fi; '
            f"systemctl start {name}"
        )
        self.session.run(f"sh -c {shlex.quote(script)}", timeout=60, check=True)
        return self.status(service)

    def stop(self, service: str) -> None:
        name = shlex.quote(f"{service}.service")
        self.session.run(f"systemctl stop {name} 2>/dev/null || true", timeout=60)

    def status(self, service: str) -> ServiceStatus:
        name = shlex.quote(f"{service}.service")
        res = self.session.run(
            f"systemctl is-active {name}; systemctl show -p MainPID --value {name}", timeout=30
        )
        lines = res.stdout.split()
        state = lines[0] if lines else "unknown"
        pid = _int_or_none(lines[1]) if len(lines) > 1 else None
        running = state == "active"
        return ServiceStatus(service, running, pid if pid else None, state)

    def logs(self, service: str, lines: int = 200) -> str:
        name = shlex.quote(f"{service}.service")
        return self.session.run(f"journalctl -u {name} -n {int(lines)} --no-pager", timeout=30).stdout


def _systemd_quote(command: str) -> str:
    # systemd's ExecStart has its own quoting: double quotes, backslash escapes, and % and $
    # expanded unless doubled.
    escaped = command.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
