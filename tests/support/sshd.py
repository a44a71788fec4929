"""A real OpenSSH server on loopback for tests and benchmarks.

``start_sshd(directory)`` runs ``/usr/sbin/sshd -D -e -f <generated config>`` on 127.0.0.1 with a
free port, a fresh host key, an ``authorized_keys`` holding a generated client key, and appends the
host key to ``<directory>/known_hosts``. Several servers started in the same directory share the
client key and the known_hosts file, so they form a small fleet of loopback "nodes".

Use the ``sshd`` pytest fixture (one server) or ``sshd_factory`` (several), importing them
explicitly: ``from tests.support.sshd import sshd, sshd_factory  # noqa: F401``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from pytest_vpstest.config import Inventory, Node

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


def sshd_unavailable_reason() -> str | None:
    """Why a real sshd cannot be started here, or None when it can."""
    if not SSHD.exists():
        return f"{SSHD} is not installed (install openssh-server; scripts/setup does)"
    if not Path(SSH_KEYGEN).exists():
        return "ssh-keygen is not installed (install openssh-client)"
    return None


def require_sshd() -> None:
    """Skip the calling test when no sshd can be started."""
    reason = sshd_unavailable_reason()
    if reason:
        pytest.skip(reason)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class SshdHandle:
    """A running loopback sshd and everything a client needs to reach it."""

    name: str
    host: str
    port: int
    user: str
    directory: Path
    known_hosts: Path
    identity_file: Path
    host_key: Path
    log_path: Path
    config_path: Path
    process: subprocess.Popen[bytes] | None = field(repr=False, default=None)

    def node(self, name: str | None = None, **overrides: Any) -> Node:
        """An inventory node pointing at this server (process service manager by default)."""
        base = Node(
            name=name or self.name,
            host=self.host,
            port=self.port,
            user=self.user,
            service_manager="process",
            p2p_address=self.host,
        )
        return replace(base, **overrides)

    def inventory(self, *nodes: Node, **overrides: Any) -> Inventory:
        """An inventory of ``nodes`` (default: this server as one node) with its keys."""
        base = Inventory(
            nodes=nodes or (self.node(),),
            known_hosts=self.known_hosts,
            identity_file=self.identity_file,
            connect_timeout=5.0,
        )
        return replace(base, **overrides)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def accepted_logins(self) -> int:
        """How many SSH connections the server authenticated (one per client connection)."""
        return self.log_text().count("Accepted publickey for ")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Stop the listener (established sessions are left to their clients)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def start(self) -> None:
        """(Re)start the listener on the same port with the same keys."""
        if self.running:
            return
        self.process = _spawn(self.config_path, self.log_path)
        _wait_listening(self.host, self.port, self.process, self.log_path)

    def ssh_command(self, *remote: str) -> list[str]:
        """An ``ssh`` command line reaching this server with strict host-key checking."""
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.identity_file),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-p",
            str(self.port),
            f"{self.user}@{self.host}",
            *remote,
        ]


def _keygen(path: Path, comment: str) -> None:
    if not path.exists():
        subprocess.run(
            [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
        )


def _spawn(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )


def _wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text(errors='replace')}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"sshd did not listen on {host}:{port} within 10 s: {log.read_text(errors='replace')}")


def start_sshd(directory: Path, *, name: str = "node-1", host: str = "127.0.0.1") -> SshdHandle:
    """Start a loopback sshd in ``directory/name`` (keys shared through ``directory``)."""
    reason = sshd_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    directory.mkdir(parents=True, exist_ok=True)
    own = directory / name
    own.mkdir(parents=True, exist_ok=True)
    client_key = directory / "id_ed25519"
    _keygen(client_key, "vpstest-client")
    host_key = own / "ssh_host_ed25519_key"
    _keygen(host_key, f"vpstest-host-{name}")
    authorized = directory / "authorized_keys"
    pub = (directory / "id_ed25519.pub").read_text()
    if not authorized.exists() or pub not in authorized.read_text():
        with authorized.open("a") as f:
            f.write(pub)
    authorized.chmod(0o600)
    if os.geteuid() == 0:
        # sshd refuses to start without its privilege-separation directory.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = free_port(host)
    config = own / "sshd_config"
    log = own / "sshd.log"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                f"ListenAddress {host}",
                f"HostKey {host_key}",
                f"PidFile {own / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "Subsystem sftp internal-sftp",
                "LogLevel INFO",
                "MaxStartups 200:30:400",
                "MaxSessions 64",
                "UseDNS no",
                # bash sources ~/.bashrc for commands run by sshd only at shell level 1; a heavy
                # bashrc (pyenv, conda) would otherwise cost every test command ~100 ms.
                "SetEnv SHLVL=1",
                "",
            ]
        )
    )
    host_pub = (own / "ssh_host_ed25519_key.pub").read_text().split()
    known_hosts = directory / "known_hosts"
    with known_hosts.open("a") as f:
        f.write(f"[{host}]:{port} {host_pub[0]} {host_pub[1]}\n")
    handle = SshdHandle(
        name=name,
        host=host,
        port=port,
        user=getpass.getuser(),
        directory=own,
        known_hosts=known_hosts,
        identity_file=client_key,
        host_key=host_key,
        log_path=log,
        config_path=config,
    )
    handle.start()
    return handle


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshdHandle]:
    """One running loopback sshd (skips the test when sshd is not installed)."""
    require_sshd()
    handle = start_sshd(tmp_path / "ssh")
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def sshd_factory(tmp_path: Path) -> Iterator[Callable[[str], SshdHandle]]:
    """Start several loopback sshd "nodes" sharing one client key and known_hosts."""
    require_sshd()
    started: list[SshdHandle] = []

    def start(name: str) -> SshdHandle:
        handle = start_sshd(tmp_path / "ssh", name=name)
        started.append(handle)
        return handle

    try:
        yield start
    finally:
        for h in started:
            h.stop()
