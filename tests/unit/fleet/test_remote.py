"""Session pool, quoting and service managers through the session seam (no SSH).

Proves: ``quote_command`` quotes every value so the shell reads it back literally (property test)
and rejects unknown, formatted or empty placeholders; the pool caches one session per node and
names unknown nodes; ``fan_out`` keeps order, bounds concurrency and turns each node's exception
into that node's ``NodeError``; the systemd manager installs its unit only when missing or changed
(its shell script run for real against stand-in ``systemctl``); registry answers are parsed from
a node's output and bad answers are one-line errors.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_vpstest.config import Inventory, Node, RegistryAccess
from pytest_vpstest.errors import ConfigError, NodeError
from pytest_vpstest.fleet.remote import CommandResult, SessionPool, query_registry, quote_command
from pytest_vpstest.fleet.services import ProcessManager, SystemdManager, service_manager
from tests.support.fake_session import LocalSession, ScriptedSession, local_session_factory

NODES = tuple(Node(name=f"n{i}", host="127.0.0.1") for i in range(6))
INVENTORY = Inventory(nodes=NODES)


@given(st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=60))
def test_quoted_values_read_back_literally(value: str) -> None:
    command = quote_command("printf %s {v} {v}", v=value)
    assert shlex.split(command) == ["printf", "%s", value, value]


def test_quoted_values_through_a_real_shell(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    value = f"; touch {sentinel}; $(touch {sentinel}) `touch {sentinel}` '\" \\ *"
    out = subprocess.run(
        ["sh", "-c", quote_command("printf %s {v}", v=value)], capture_output=True, text=True, check=True
    ).stdout
    assert out == value and not sentinel.exists()


def test_quote_command_rejects_bad_placeholders() -> None:
    assert quote_command("{bin} --x {{literal}} {n}", bin="/opt/a b", n=3) == "'/opt/a b' --x {literal} 3"
    with pytest.raises(ConfigError, match=r"unknown placeholder \{peer\}.*\(allowed: bin, node\)"):
        quote_command("{bin} {peer}", bin="b", node="n")
    with pytest.raises(ConfigError, match="must be a plain name"):
        quote_command("{bin.upper}", bin="b")
    with pytest.raises(ConfigError, match="must be a plain name"):
        quote_command("{bin!r}", bin="b")
    with pytest.raises(ConfigError, match="has no value"):
        quote_command("{bin}", bin=None)
    with pytest.raises(ConfigError, match="malformed"):
        quote_command("{bin", bin="b")


def test_pool_caches_sessions_and_names_unknown_nodes() -> None:
    factory = local_session_factory()
    with SessionPool(INVENTORY, session_factory=factory) as pool:
        assert pool.session("n1") is pool.session("n1")
        assert pool.run("n1", "echo hi").stdout == "hi\n"
        with pytest.raises(NodeError, match="ghost: not in the inventory"):
            pool.session("ghost")
    assert factory.sessions["n1"].closed  # type: ignore[attr-defined]


def test_fan_out_order_bound_and_per_node_errors() -> None:
    active = 0
    peak = 0
    lock = threading.Lock()

    def work(session: object) -> str:
        nonlocal active, peak
        name = session.node.name  # type: ignore[attr-defined]
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        if name == "n2":
            raise NodeError(name, "exit 1: boom")
        if name == "n4":
            raise ValueError("bad value")
        return name.upper()

    with SessionPool(INVENTORY, session_factory=local_session_factory()) as pool:
        results = pool.fan_out(["n5", "n2", "n0", "n4", "n1", "n3", "n0"], work, parallelism=2)
    assert list(results) == ["n5", "n2", "n0", "n4", "n1", "n3"]
    assert results["n5"] == "N5" and results["n0"] == "N0"
    assert isinstance(results["n2"], NodeError) and str(results["n2"]) == "n2: exit 1: boom"
    err = results["n4"]
    assert isinstance(err, NodeError) and str(err) == "n4: ValueError: bad value"
    assert isinstance(err.__cause__, ValueError)
    assert peak == 2
    assert SessionPool(INVENTORY).fan_out([], work) == {}


def test_command_result_summary() -> None:
    assert CommandResult("n", "c", 2, "", "a\nlast error\n", 0.1).summary() == "exit 2: last error"
    assert CommandResult("n", "c", None, "partial\n", "", 1.0, True).summary() == "timed out: partial"
    assert CommandResult("n", "c", 0, "", "", 0.0).ok


def test_service_manager_follows_the_node() -> None:
    process = ScriptedSession(Node("p", "h", service_manager="process"))
    systemd = ScriptedSession(Node("s", "h", service_manager="systemd"))
    assert isinstance(service_manager(process, install_path="/opt/x", log_dir="/var/log/x"), ProcessManager)
    assert isinstance(service_manager(systemd, install_path="/opt/x", log_dir="/var/log/x"), SystemdManager)


def test_systemd_unit_installed_when_missing_or_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool in ("systemctl", "journalctl"):
        (bin_dir / tool).write_text(
            f'#!/bin/sh\necho "{tool} $*" >> {calls}\n'
            'case "$*" in is-active*) echo active; echo 4242;; *"-n 5"*) echo line1; echo line2;; esac\n'
        )
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    session = LocalSession(Node("s", "h"), INVENTORY)
    manager = SystemdManager(session, install_path="/opt/my app", log_dir="/var/log/x")
    manager.unit_dir = str(tmp_path)
    command = "'/opt/my app/agent' run --node s --registry 'http://r/?a=1&b=$HOME%x'"
    status = manager.start("vpstest-agent", command)
    assert status.running and status.pid == 4242
    unit = (tmp_path / "vpstest-agent.service").read_text()
    assert "WorkingDirectory=/opt/my app\n" in unit
    assert (
        "ExecStart=/bin/sh -c \"'/opt/my app/agent' run --node s --registry 'http://r/?a=1&b=$$HOME%%x'\""
        in unit
    )
    manager.start("vpstest-agent", command)
    manager.start("vpstest-agent", command + " --verbose")
    log = calls.read_text().splitlines()
    assert log.count("systemctl daemon-reload") == 2  # first install and the changed command
    assert log.count("systemctl start vpstest-agent.service") == 3
    manager.stop("vpstest-agent")
    assert "systemctl stop vpstest-agent.service" in calls.read_text()
    assert manager.logs("vpstest-agent", lines=5) == "line1\nline2\n"


def test_registry_via_node_parses_and_reports_bad_answers() -> None:
    answers = {
        "good": (0, '{"peers": [{"name": "n1"}, {"name": "n2"}]}'),
        "list": (0, '[{"name": "n3"}]'),
        "junk": (0, "<html>502</html>"),
        "shape": (0, '{"peers": "none"}'),
        "down": (1, ""),
    }

    def factory(node: Node, inventory: Inventory) -> ScriptedSession:
        return ScriptedSession(node, lambda command: answers[node.name])

    inventory = Inventory(nodes=tuple(Node(n, "h") for n in answers))
    with SessionPool(inventory, session_factory=factory) as pool:
        assert query_registry(pool, RegistryAccess("http://198.18.0.1:8080", "good")) == [
            {"name": "n1"},
            {"name": "n2"},
        ]
        command = pool.session("good").commands[-1]  # type: ignore[attr-defined]
        assert shlex.split(command)[:2] == ["python3", "-c"]
        assert shlex.split(command)[3] == "http://198.18.0.1:8080/api/peers"
        assert query_registry(pool, RegistryAccess("http://r", "list")) == [{"name": "n3"}]
        for bad, words in (("junk", "invalid JSON"), ("shape", "no peer list"), ("down", "exit 1")):
            with pytest.raises(NodeError, match=words) as info:
                query_registry(pool, RegistryAccess("http://r", bad))
            assert "\n" not in str(info.value)
