"""Thin, checked wrappers around ``ip``, ``nft`` and the kernel's namespace files.

Every command is an argument vector (no shell); a failure raises :class:`LabError` naming the
command and the kernel's message in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from pytest_vpstest._proc import pid_alive as pid_alive
from pytest_vpstest.errors import LabError

__all__ = [
    "NETNS_DIR",
    "cmdline",
    "ip_batch",
    "is_lab_process",
    "kill_all",
    "lab_processes",
    "listening",
    "namespaces",
    "netns_available",
    "netns_inode",
    "nft_load",
    "pids_in",
    "processes_matching",
    "read_pid",
    "root_links",
    "run",
    "wait_for_orphaned_batches",
]

NETNS_DIR = Path("/run/netns")


def run(
    argv: Sequence[str], *, input_text: str | None = None, check: bool = True, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; on failure raise LabError with the first line of its error output."""
    try:
        proc = subprocess.run(
            list(argv), input=input_text, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise LabError(f"'{argv[0]}' is not installed (needed by the netns lab)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"'{' '.join(argv)}' did not finish within {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        reason = lines[0] if lines else f"exit status {proc.returncode}"
        raise LabError(f"'{' '.join(argv)}' failed: {reason}")
    return proc


def ip_batch(commands: Iterable[str], *, netns: str | None = None) -> None:
    """Run ``ip`` commands (one per line, without the leading ``ip``) in one process."""
    text = "\n".join(commands)
    if not text:
        return
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    run(argv, input_text=text + "\n")


def nft_load(ruleset: str, *, netns: str | None = None) -> None:
    """Load an nft ruleset (atomically) in ``netns`` (or the root namespace)."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    run([*prefix, "nft", "-f", "-"], input_text=ruleset)


def namespaces(prefix: str) -> list[str]:
    """Named network namespaces of the lab ``prefix`` (``<prefix>-...``), including leftovers."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(f"{prefix}-"))


def root_links(prefix: str) -> list[str]:
    """Links of the root namespace that belong to lab ``prefix`` (its management veth ends)."""
    proc = run(["ip", "-j", "link", "show"], check=False)
    try:
        links = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        return []
    return sorted(
        str(link["ifname"]) for link in links if str(link.get("ifname", "")).startswith(f"{prefix}-m")
    )


def netns_inode(name: str) -> int | None:
    try:
        return (NETNS_DIR / name).stat().st_ino
    except OSError:
        return None


def pids_in(inodes: set[int]) -> list[int]:
    """Every process whose network namespace is one of ``inodes`` (one pass over /proc)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ino = os.stat(f"/proc/{entry.name}/ns/net").st_ino
        except OSError:
            continue
        if ino in inodes:
            found.append(int(entry.name))
    return found


def kill_all(pids: Iterable[int], *, grace_s: float = 1.0) -> None:
    """TERM ``pids``, then KILL whatever is still alive after ``grace_s``."""
    pending = [p for p in set(pids) if p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pending:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 2.0)
        while pending and time.monotonic() < deadline:
            pending = [p for p in pending if pid_alive(p)]
            if pending:
                time.sleep(0.02)
        if not pending:
            return


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def netns_available() -> tuple[bool, str]:
    """Whether this process can build a netns lab, and why not."""
    if os.geteuid() != 0:
        return False, "not running as root"
    for tool in ("ip", "nft", "unshare"):
        if shutil.which(tool) is None:
            return False, f"'{tool}' is not installed"
    if not Path("/usr/sbin/sshd").exists():
        return False, "/usr/sbin/sshd is not installed (package openssh-server)"
    if not Path("/proc/self/ns/net").exists():
        return False, "the kernel has no network namespaces"
    return True, ""


def listening(pid: int, port: int, proto: str) -> bool:
    """Whether a socket is bound to local ``port`` in ``pid``'s network namespace.

    ``proto`` is ``tcp`` (listening sockets) or ``udp`` (bound sockets).
    """
    want = f"{port:04X}"
    for fam in ("", "6"):
        try:
            with open(f"/proc/{pid}/net/{proto}{fam}", encoding="ascii") as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()
                    local, state = fields[1], fields[3]
                    if local.rsplit(":", 1)[1] == want and (proto == "udp" or state == "0A"):
                        return True
        except OSError:
            continue
    return False


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def is_lab_process(pid: int, lab_dir: Path) -> bool:
    """Whether ``pid`` runs from ``lab_dir`` (an sshd with its config there) or is a lab service."""
    args = cmdline(pid)
    root = str(lab_dir)
    return any(root in a or a == "pytest_vpstest.lab.agent" for a in args)


def processes_matching(markers: tuple[str, ...]) -> list[int]:
    """Processes whose command line (joined by spaces) contains one of ``markers``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        line = " ".join(cmdline(int(entry.name)))
        if any(m in line for m in markers):
            found.append(int(entry.name))
    return found


def lab_processes(lab_dir: Path) -> list[int]:
    """The sshds of ``lab_dir``, found by their command line (``sshd -D -f <lab>/nodes/...``), which
    sshd keeps in its rewritten process title too."""
    return processes_matching((f"sshd -D -f {lab_dir}/nodes/",))


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            # The command name (field 2) may hold spaces; the fields after its closing ')' do not.
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def wait_for_orphaned_batches(timeout_s: float = 10.0) -> list[int]:
    """Wait until no orphaned ``ip``/``tc`` ``-batch`` process runs; return those still running.

    A ``lab up`` killed with SIGKILL leaves its batch children running: they go on creating the
    namespaces and links of the batch they were given, and would recreate what a new ``up`` or a
    ``down`` just removed. Their stdin carries no prefix, so they are waited for, never killed: an
    orphaned batch has all its input and ends within moments.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        orphans = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            args = cmdline(pid)
            if len(args) < 2 or Path(args[0]).name not in ("ip", "tc") or "-batch" not in args:
                continue
            parent = _parent_pid(pid)
            if parent is None or parent == 1 or not pid_alive(parent):
                orphans.append(pid)
        if not orphans or time.monotonic() >= deadline:
            return orphans
        time.sleep(0.05)
