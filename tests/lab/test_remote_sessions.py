"""Node sessions against a real OpenSSH server on loopback.

Proves: commands run with exit codes and output; timeouts give ``timed_out``; put/get move bytes;
one SSH connection serves many commands; host keys are checked strictly (mismatch and unknown keys
refused with one-line errors, known_hosts never written); refused and silent ports give one-line
errors naming the address and cause; the fallback address is used when the host fails; hostile
values stay literal through ``quote_command``; fan-out returns per-node results and errors;
``close_all`` closes every session; the registry is queried directly and through a node.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest

from pytest_vpstest.config import RegistryAccess
from pytest_vpstest.errors import NodeError, UnreachableNodeError
from pytest_vpstest.fleet.remote import NodeSession, SessionPool, query_registry, quote_command
from tests.support.sshd import SshdHandle, free_port, sshd, sshd_factory  # noqa: F401

pytestmark = pytest.mark.lab


def test_command_output_and_exit_codes(sshd: SshdHandle) -> None:  # noqa: F811
    with SessionPool(sshd.inventory()) as pool:
        ok = pool.run("node-1", "echo out; echo err >&2")
        assert (ok.exit_code, ok.stdout, ok.stderr, ok.timed_out) == (0, "out\n", "err\n", False)
        assert ok.ok and ok.node == "node-1"
        bad = pool.run("node-1", "echo nope >&2; exit 7")
        assert bad.exit_code == 7 and not bad.ok
        assert bad.summary() == "exit 7: nope"
        with pytest.raises(NodeError) as info:
            pool.run("node-1", "echo broken >&2; exit 3", check=True)
        assert "\n" not in str(info.value)
        assert "exit 3: broken" in str(info.value) and "node-1" in str(info.value)


def _processes_with(argv: list[str]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
            except OSError:
                continue
            if [c.decode(errors="replace") for c in cmdline] == argv:
                found.append(int(entry.name))
    return found


def test_timeout_marks_result_kills_the_command_and_session_stays_usable(sshd: SshdHandle) -> None:  # noqa: F811
    with SessionPool(sshd.inventory()) as pool:
        res = pool.run("node-1", "echo started; sleep 21.5; echo never", timeout=1)
        assert res.timed_out and res.exit_code is None and not res.ok
        assert res.duration < 10 and res.command == "echo started; sleep 21.5; echo never"
        assert res.stdout == "started\n"
        assert _processes_with(["sleep", "21.5"]) == []
        assert pool.run("node-1", "echo again").stdout == "again\n"


def test_put_and_get_round_trip(sshd: SshdHandle, tmp_path: Path) -> None:  # noqa: F811
    payload = bytes(range(256)) * 1000
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    remote = str(tmp_path / "remote dir" / "copy.bin")
    (tmp_path / "remote dir").mkdir()
    back = tmp_path / "back.bin"
    with SessionPool(sshd.inventory()) as pool:
        session = pool.session("node-1")
        session.put(src, remote)
        assert pool.run("node-1", f"wc -c < {quote_command('{p}', p=remote)}").stdout.strip() == "256000"
        session.get(remote, back)
        assert back.read_bytes() == payload
        with pytest.raises(NodeError, match=r"upload .* failed"):
            session.put(src, str(tmp_path / "missing-dir" / "x"))


def test_one_connection_serves_many_commands(sshd: SshdHandle) -> None:  # noqa: F811
    with SessionPool(sshd.inventory()) as pool:
        for i in range(20):
            assert pool.run("node-1", f"echo {i}").stdout == f"{i}\n"
        session = pool.session("node-1")
        assert session is pool.session("node-1")
        assert isinstance(session, NodeSession) and session.connects == 1
    assert sshd.accepted_logins() == 1


def test_host_key_mismatch_is_refused_in_one_line(sshd: SshdHandle, tmp_path: Path) -> None:  # noqa: F811
    other = start_other_key(tmp_path)
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[{sshd.host}]:{sshd.port} {other}\n")
    before = wrong.read_text()
    session = NodeSession(sshd.node(), sshd.inventory(known_hosts=wrong))
    with pytest.raises(UnreachableNodeError) as info:
        session.run("true")
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"node-1 ({sshd.host}:{sshd.port}): ")
    assert f"host key mismatch for {sshd.host} (known_hosts: {wrong})" in text
    assert wrong.read_text() == before
    assert sshd.accepted_logins() == 0


def test_unknown_host_key_is_refused_and_never_added(sshd: SshdHandle, tmp_path: Path) -> None:  # noqa: F811
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    session = NodeSession(sshd.node(), sshd.inventory(known_hosts=empty))
    with pytest.raises(UnreachableNodeError, match="not in known_hosts") as info:
        session.run("true")
    assert "\n" not in str(info.value)
    assert empty.read_text() == ""
    missing = tmp_path / "no_such_known_hosts"
    session = NodeSession(sshd.node(), sshd.inventory(known_hosts=missing))
    with pytest.raises(UnreachableNodeError, match=f"known_hosts {missing} does not exist"):
        session.run("true")
    assert not missing.exists()


def test_refused_port_names_address_and_cause() -> None:
    port = free_port()
    from pytest_vpstest.config import Inventory, Node

    node = Node(name="down", host="127.0.0.1", port=port)
    session = NodeSession(node, Inventory(nodes=(node,), connect_timeout=2))
    with pytest.raises(UnreachableNodeError) as info:
        session.run("true")
    assert str(info.value) == (f"down (127.0.0.1:{port}): unreachable: 127.0.0.1:{port} connection refused")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never speaks (an SSH banner never comes)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield int(server.getsockname()[1])
    finally:
        server.close()


def test_silent_server_times_out_with_the_configured_timeout(silent_port: int) -> None:
    from pytest_vpstest.config import Inventory, Node

    node = Node(name="mute", host="127.0.0.1", port=silent_port)
    session = NodeSession(node, Inventory(nodes=(node,), connect_timeout=0.5))
    with pytest.raises(UnreachableNodeError) as info:
        session.run("true")
    assert "timed out after 0.5 s" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad_host", ["127.0.0.2", "no-such-node.invalid"])
def test_fallback_ip_is_used_when_the_host_fails(sshd: SshdHandle, bad_host: str) -> None:  # noqa: F811
    node = sshd.node(host=bad_host, fallback_ip=sshd.host)
    session = NodeSession(node, sshd.inventory(node))
    assert session.run("echo via-fallback").stdout == "via-fallback\n"
    assert session.address == sshd.host
    session.close()


def test_both_addresses_reported_when_host_and_fallback_fail(sshd: SshdHandle) -> None:  # noqa: F811
    node = sshd.node(host="no-such-node.invalid", fallback_ip="127.0.0.3")
    session = NodeSession(node, sshd.inventory(node))
    with pytest.raises(UnreachableNodeError) as info:
        session.run("true")
    text = str(info.value)
    assert "\n" not in text
    assert f"no-such-node.invalid:{sshd.port} cannot resolve" in text
    assert f"127.0.0.3:{sshd.port} connection refused" in text


HOSTILE = [
    "; touch {sentinel}",
    "$(touch {sentinel})",
    "`touch {sentinel}`",
    "' ; touch {sentinel} ; '",
    '" ; touch {sentinel} ; "',
    "a\nb; touch {sentinel}",
    "; rm -rf {sentinel}",
]


@pytest.mark.parametrize("pattern", HOSTILE)
def test_hostile_values_stay_literal(sshd: SshdHandle, tmp_path: Path, pattern: str) -> None:  # noqa: F811
    sentinel = tmp_path / "sentinel"
    value = pattern.format(sentinel=sentinel)
    with SessionPool(sshd.inventory()) as pool:
        res = pool.run("node-1", quote_command("printf %s {value}", value=value), check=True)
    assert res.stdout == value
    assert not sentinel.exists()


def test_fan_out_gives_per_node_results_and_errors(sshd_factory: Callable[[str], SshdHandle]) -> None:  # noqa: F811
    a = sshd_factory("node-a")
    b = sshd_factory("node-b")
    down = b.node("node-down", port=free_port())
    inventory = a.inventory(a.node(), b.node(), down)
    with SessionPool(inventory) as pool:
        results = pool.fan_out(["node-a", "node-b", "node-down"], lambda s: s.run("echo hi").stdout)
    assert list(results) == ["node-a", "node-b", "node-down"]
    assert results["node-a"] == results["node-b"] == "hi\n"
    err = results["node-down"]
    assert isinstance(err, UnreachableNodeError) and "connection refused" in str(err)


def test_lost_connection_is_a_node_error_and_the_next_command_reconnects(sshd: SshdHandle) -> None:  # noqa: F811
    with SessionPool(sshd.inventory()) as pool:
        # $PPID of the command's shell is the server process of this very connection.
        with pytest.raises(NodeError, match="connection lost running") as info:
            pool.run("node-1", "kill -9 $PPID; sleep 2", timeout=10)
        assert "\n" not in str(info.value) and f"({sshd.host})" in str(info.value)
        assert pool.run("node-1", "echo back").stdout == "back\n"
        session = pool.session("node-1")
        assert isinstance(session, NodeSession) and session.connects == 2


def test_close_all_closes_sessions_and_pool_reconnects(sshd: SshdHandle) -> None:  # noqa: F811
    pool = SessionPool(sshd.inventory())
    first = pool.session("node-1")
    first.run("true")
    assert isinstance(first, NodeSession) and first.connected
    pool.close_all()
    assert not first.connected
    second = pool.session("node-1")
    assert second is not first
    assert second.run("echo back").stdout == "back\n"
    pool.close_all()
    assert sshd.accepted_logins() == 2


class _PeersHandler(http.server.BaseHTTPRequestHandler):
    peers: ClassVar[list[dict[str, str]]] = [{"node": "node-1", "address": "198.18.0.10:9000"}]

    def do_GET(self) -> None:
        body = json.dumps({"peers": self.peers} if self.path == "/api/peers" else {}).encode()
        self.send_response(200 if self.path == "/api/peers" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def registry_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PeersHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_registry_direct_and_via_node(sshd: SshdHandle, registry_url: str) -> None:  # noqa: F811
    inventory = sshd.inventory()
    with SessionPool(inventory) as pool:
        direct = query_registry(pool, RegistryAccess(url=registry_url))
        via = query_registry(pool, RegistryAccess(url=registry_url + "/", via_node="node-1"))
        assert direct == via == _PeersHandler.peers
        dead = f"http://127.0.0.1:{free_port()}"
        with pytest.raises(NodeError, match="registry query") as info:
            query_registry(pool, RegistryAccess(url=dead, via_node="node-1"), timeout=2)
        assert "\n" not in str(info.value)


def start_other_key(tmp_path: Path) -> str:
    """A freshly generated ed25519 public key (type and base64) that no server holds."""
    import subprocess

    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    return f"{kind} {blob}"


def test_identity_from_node_overrides_inventory(sshd: SshdHandle, tmp_path: Path) -> None:  # noqa: F811
    stranger = tmp_path / "stranger"
    start_other_key(tmp_path)
    (tmp_path / "other_key").rename(stranger)
    node = replace(sshd.node(), identity_file=str(stranger))
    session = NodeSession(node, sshd.inventory(node))
    with pytest.raises(UnreachableNodeError, match="authentication failed"):
        session.run("true")
