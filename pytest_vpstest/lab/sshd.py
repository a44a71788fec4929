"""Real OpenSSH for lab nodes: keys, ``known_hosts``, per-node sshd configs, starting sshd.

The lab generates one ed25519 host key per node and one client key for the harness
(``id_ed25519``); ``known_hosts`` lists every node's management address with its host key, so the
harness connects with strict host-key checking exactly as to a real fleet.
"""

from __future__ import annotations

import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pytest_vpstest.errors import LabError
from pytest_vpstest.lab import netns

__all__ = [
    "NODE_MOUNTS",
    "SSHD",
    "SshdNode",
    "keygen",
    "loopback_sshd_argv",
    "netns_sshd_argv",
    "prepare_keys",
    "render_config",
    "spawn_detached",
    "write_config",
]

SSHD = "/usr/sbin/sshd"
# Mount points of a netns node's own filesystem view (bind mounts from the lab directory).
NODE_MOUNTS: tuple[tuple[str, str], ...] = (
    ("opt", "/opt"),
    ("log", "/var/log/vpstest"),
    ("run", "/run/vpstest"),
)


@dataclass(frozen=True)
class SshdNode:
    """What an sshd needs to know about its node."""

    name: str
    listen: str  # address sshd listens on
    port: int
    node_dir: Path  # <labdir>/nodes/<name>

    @property
    def host_key(self) -> Path:
        return self.node_dir / "ssh_host_ed25519_key"

    @property
    def config(self) -> Path:
        return self.node_dir / "sshd_config"

    def known_hosts_name(self) -> str:
        return self.listen if self.port == 22 else f"[{self.listen}]:{self.port}"


def keygen(path: Path, comment: str) -> None:
    """Create an ed25519 key pair at ``path`` unless one is already there."""
    if path.exists() and path.with_suffix(".pub").exists():
        return
    path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    netns.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def prepare_keys(lab_dir: Path, nodes: list[SshdNode], prefix: str) -> None:
    """Client key, host keys (kept across ``lab up`` runs), authorized_keys and known_hosts."""
    jobs = [(lab_dir / "id_ed25519", f"vpstest-lab-{prefix}-harness")]
    jobs += [(n.host_key, f"{n.name}@vpstest-lab-{prefix}") for n in nodes]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda job: keygen(*job), jobs))
    (lab_dir / "id_ed25519").chmod(0o600)
    (lab_dir / "authorized_keys").write_text(
        (lab_dir / "id_ed25519.pub").read_text(encoding="ascii"), encoding="ascii"
    )
    lines = []
    for n in nodes:
        key_type, key = n.host_key.with_suffix(".pub").read_text(encoding="ascii").split()[:2]
        lines.append(f"{n.known_hosts_name()} {key_type} {key}\n")
    (lab_dir / "known_hosts").write_text("".join(lines), encoding="ascii")


def render_config(node: SshdNode, lab_dir: Path, *, loopback: bool) -> str:
    """The sshd_config of one node. Loopback sshds run as the current user and skip PAM."""
    lines = [
        f"ListenAddress {node.listen}:{node.port}",
        f"HostKey {node.host_key}",
        f"PidFile {lab_dir / 'run' / f'sshd-{node.name}.pid'}",
        f"AuthorizedKeysFile {lab_dir / 'authorized_keys'}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        # The lab directory may be group-writable (a user's state dir); keys are lab-generated.
        "StrictModes no",
        "PrintMotd no",
        "UseDNS no",
        "X11Forwarding no",
        "Subsystem sftp internal-sftp",
        # The harness fans out to many sessions at once.
        "MaxStartups 200:30:400",
        "MaxSessions 100",
        "LogLevel INFO",
        # A lab node behaves like a clean server: at shell level 1 bash skips the host user's
        # ~/.bashrc for commands run by sshd, so the host's pyenv or conda set-up neither leaks
        # into the nodes (PATH, python3) nor costs every remote command ~0.1 s of CPU.
        "SetEnv SHLVL=1",
    ]
    if loopback:
        lines.append("AllowTcpForwarding no")
    return "\n".join(lines) + "\n"


def write_config(node: SshdNode, lab_dir: Path, *, loopback: bool) -> None:
    node.config.write_text(render_config(node, lab_dir, loopback=loopback), encoding="ascii")


def spawn_detached(
    argv: list[str], *, pid_file: Path | None, log_file: Path, env: dict[str, str] | None = None
) -> None:
    """Start ``argv`` as a daemon (new session, stdin from /dev/null, output to ``log_file``).

    With ``pid_file`` the daemon's pid is written there before it execs ``argv``; ``setsid -f``
    returns at once, so no child of ours outlives the call.
    """
    write_pid = f"echo $$ > {shlex.quote(str(pid_file))}; " if pid_file else ""
    script = f"{write_pid}exec {shlex.join(argv)} < /dev/null >> {shlex.quote(str(log_file))} 2>&1"
    try:
        subprocess.run(
            ["setsid", "-f", "sh", "-c", script],
            check=True,
            env=env,
            timeout=10,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError) as exc:
        raise LabError(f"could not start '{argv[0]}': {exc}") from None


def netns_sshd_argv(node: SshdNode, ns: str, node_fs: Path) -> list[str]:
    """sshd in namespace ``ns`` and a private mount namespace with the node's own /opt and logs."""
    mounts = " && ".join(
        f"mount --bind {shlex.quote(str(node_fs / src))} {shlex.quote(dst)}" for src, dst in NODE_MOUNTS
    )
    inner = f"{mounts} && exec {SSHD} -D -f {shlex.quote(str(node.config))}"
    return ["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private", "sh", "-c", inner]


def loopback_sshd_argv(node: SshdNode) -> list[str]:
    return [SSHD, "-D", "-f", str(node.config)]
