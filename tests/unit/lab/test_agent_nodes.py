"""Real agents on loopback (real UDP, a real registry and bootstrap, each a process): they learn
their address from the bootstrap and register; connect by direct, holepunch (no NAT here, so the
punch must succeed and report a direct path) and relay (path relayed); flood gossip to every node
with duplicates counted; converge a replicated counter; measure throughput; answer the probe
contract with exactly one JSON object, also when the agent is dead; stop cleanly on SIGTERM."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_vpstest.lab.agent import control
from pytest_vpstest.lab.agent.cli import main as agent_main
from pytest_vpstest.lab.agent.paths import control_socket
from tests.unit.lab.test_agent_services import call, free_port, stop, wait_tcp

AGENT = [sys.executable, "-m", "pytest_vpstest.lab.agent"]


def probe(agent: list[str], home: Path, *args: str) -> dict[str, Any]:
    """Run ``agent probe ARGS --json --home HOME``; exactly one JSON object and exit status 0."""
    done = subprocess.run(
        [*agent, "probe", *args, "--json", "--home", str(home)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    answer = json.loads(lines[0])
    assert isinstance(answer, dict)
    return answer


class Cluster:
    """A registry, a bootstrap and named agents on 127.0.0.x, all real processes."""

    def __init__(self, agent: list[str], base: int) -> None:
        self.agent = agent
        # Short paths: a unix socket path must fit in 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="vpa", dir="/tmp"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.reg_host = f"127.0.{base}.1"
        self.reg_port = free_port(self.reg_host)
        self.bs = (f"127.0.{base}.2", free_port(f"127.0.{base}.2", 2))
        self.base = base
        self.homes: dict[str, Path] = {}
        self._spawn("registry", ["registry", "--bind", f"{self.reg_host}:{self.reg_port}"])
        self._spawn("bootstrap", ["bootstrap", "--bind", f"{self.bs[0]}:{self.bs[1]}"])
        wait_tcp(self.reg_host, self.reg_port)

    @property
    def registry_url(self) -> str:
        return f"http://{self.reg_host}:{self.reg_port}"

    def _spawn(self, key: str, args: list[str]) -> None:
        log = open(self.root / f"{key}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[key] = subprocess.Popen([*self.agent, *args], stdout=log, stderr=log)
        log.close()

    def start_node(self, name: str) -> None:
        host = f"127.0.{self.base}.{10 + len(self.homes)}"
        port = free_port(host, 2)
        home = self.root / name
        home.mkdir()
        self.homes[name] = home
        self._spawn(
            name,
            [
                "run",
                "--node",
                name,
                "--bind",
                f"{host}:{port}",
                "--registry",
                self.registry_url,
                "--bootstrap",
                f"{self.bs[0]}:{self.bs[1]}",
                "--home",
                str(home),
            ],
        )

    def probe(self, name: str, *args: str) -> dict[str, Any]:
        return probe(self.agent, self.homes[name], *args)

    def ask(self, name: str, **request: Any) -> dict[str, Any]:
        """The same question straight over the control socket: cheap enough for polling loops."""
        try:
            return control.request(control_socket(self.homes[name]), request, timeout=30)
        except control.AgentNotRunning:
            return {"ok": False}

    def wait_until(self, check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; logs in {self.root}")

    def wait_mesh(self) -> None:
        """Every agent registered and seeing all the others."""
        names = set(self.homes)

        def ready() -> bool:
            listed = {p["name"] for p in call(self.reg_host, self.reg_port, "GET", "/api/peers")[1]["peers"]}
            if listed != names:
                return False
            return all(set(self.ask(n, action="status").get("peers", ())) == names - {n} for n in names)

        self.wait_until(ready, "all agents registered and known to each other")

    def close(self) -> None:
        for key in [k for k in self.procs if k not in ("registry", "bootstrap")] + ["bootstrap", "registry"]:
            stop(self.procs[key])
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(AGENT, base=71)
    try:
        for name in ("n1", "n2", "n3"):
            c.start_node(name)
        c.wait_mesh()
        yield c
    finally:
        c.close()


def test_status_reports_the_mapped_address_from_the_bootstrap(cluster: Cluster) -> None:
    status = cluster.probe("n1", "status")
    assert status["ok"] is True and status["node"] == "n1"
    [address] = status["addresses"]
    assert address.startswith("127.0.71.") and status["mapped"] == address  # no NAT on loopback
    assert status["nat"] == "none" and status["peers"] == ["n2", "n3"]


@pytest.mark.parametrize(
    ("method", "path"), [("direct", "direct"), ("holepunch", "direct"), ("relay", "relayed")]
)
def test_connect_by_each_method(cluster: Cluster, method: str, path: str) -> None:
    answer = cluster.probe("n1", "connect", "--peer", "n2", "--method", method, "--timeout", "5")
    assert answer["ok"] is True, answer
    assert (answer["method"], answer["path"], answer["error"]) == (method, path, None)
    assert 0 <= answer["rtt_ms"] < 5000
    expected = (
        f"{cluster.bs[0]}:{cluster.bs[1]}"
        if method == "relay"
        else cluster.probe("n2", "status")["addresses"][0]
    )
    assert answer["address"] == expected


def test_connect_to_an_unknown_peer_fails_with_a_reason(cluster: Cluster) -> None:
    for method in ("direct", "holepunch", "relay"):
        answer = cluster.probe("n1", "connect", "--peer", "ghost", "--method", method, "--timeout", "1")
        assert answer["ok"] is False and answer["path"] is None and answer["rtt_ms"] is None
        assert "ghost" in answer["error"], answer


def test_gossip_reaches_every_node_once_with_duplicates_counted(cluster: Cluster) -> None:
    published = cluster.probe("n2", "publish", "--topic", "blocks")
    assert published["ok"] is True
    message_id = published["message_id"]

    def everywhere() -> bool:
        return all(cluster.ask(n, action="received", id=message_id)["received"] for n in ("n1", "n3"))

    cluster.wait_until(everywhere, "gossip delivery")

    # With three nodes a receiver can get the message twice at most: from the origin and from the other
    # receiver's forward (which only happens if that one heard from the origin first). At least one of
    # the two forwards crosses an origin copy, so the flood settles on one or two duplicates in total.
    def settled() -> bool:
        counts = [cluster.ask(n, action="received", id=message_id)["duplicates"] for n in ("n1", "n3")]
        return sum(counts) >= 1 and max(counts) <= 1

    cluster.wait_until(settled, "duplicate counts")
    time.sleep(0.3)
    assert settled()
    for name in ("n1", "n3"):
        answer = cluster.probe(name, "received", "--id", message_id)
        assert answer["ok"] is True and answer["latency_ms"] >= 0 and answer["topic"] == "blocks"
    unknown = cluster.probe("n1", "received", "--id", "n9-doesnotexist")
    assert unknown == {
        "ok": True,
        "received": False,
        "latency_ms": None,
        "duplicates": 0,
        "message_id": "n9-doesnotexist",
    }


def test_counter_converges_on_every_replica(cluster: Cluster) -> None:
    before = cluster.probe("n1", "crdt", "--increment", "0")["value"]
    cluster.probe("n1", "crdt", "--increment", "5")
    cluster.probe("n2", "crdt", "--increment", "7")
    cluster.probe("n3", "crdt", "--increment", "1")

    def converged() -> bool:
        answers = [cluster.ask(n, action="crdt", increment=0) for n in ("n1", "n2", "n3")]
        return len({a["digest"] for a in answers}) == 1 and answers[0]["value"] == before + 13

    cluster.wait_until(converged, "counter convergence")


def test_throughput_measures_received_bytes(cluster: Cluster) -> None:
    answer = cluster.probe("n3", "throughput", "--peer", "n1", "--seconds", "0.5")
    assert answer["ok"] is True, answer
    assert answer["bytes"] > 0 and 0.1 < answer["seconds"] < 2
    assert answer["mbps"] == pytest.approx(answer["bytes"] * 8 / answer["seconds"] / 1e6, rel=0.01)
    assert answer["bytes"] <= answer["sent_bytes"]


def test_usage_errors_exit_non_zero(cluster: Cluster) -> None:
    done = subprocess.run(
        [*AGENT, "probe", "connect", "--peer", "n2", "--method", "teleport", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and done.stdout == ""


def test_probe_against_a_dead_agent_is_a_json_failure_with_exit_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for action in (
        ["status"],
        ["connect", "--peer", "x", "--method", "relay"],
        ["publish"],
        ["received", "--id", "m"],
        ["throughput", "--peer", "x"],
        ["crdt"],
    ):
        assert agent_main(["probe", *action, "--json", "--home", str(tmp_path)]) == 0
        [line] = capsys.readouterr().out.splitlines()
        answer = json.loads(line)
        assert answer["ok"] is False and answer["error"].startswith("agent not running:"), answer
    connect = probe(AGENT, tmp_path, "connect", "--peer", "x", "--method", "relay")  # the real command
    assert connect == {
        "ok": False,
        "method": "relay",
        "path": None,
        "rtt_ms": None,
        "error": f"agent not running: no control socket at {tmp_path}/run/agent.sock",
    }


def test_sigterm_stops_cleanly_and_deregisters() -> None:
    cluster = Cluster(AGENT, base=73)
    try:
        cluster.start_node("solo")
        cluster.wait_until(
            lambda: call(cluster.reg_host, cluster.reg_port, "GET", "/health")[1]["peers"] == 1,
            "registration",
        )
        proc = cluster.procs["solo"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not (cluster.homes["solo"] / "run" / "agent.sock").exists()
        assert call(cluster.reg_host, cluster.reg_port, "GET", "/health")[1]["peers"] == 0
        assert cluster.probe("solo", "status")["error"].startswith("agent not running:")
    finally:
        cluster.close()


def test_a_second_agent_on_the_same_home_refuses_to_start(cluster: Cluster) -> None:
    done = subprocess.run(
        [
            *AGENT,
            "run",
            "--node",
            "n1b",
            "--bind",
            "127.0.71.99:0",
            "--registry",
            cluster.registry_url,
            "--bootstrap",
            f"{cluster.bs[0]}:{cluster.bs[1]}",
            "--home",
            str(cluster.homes["n1"]),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1 and "another agent is running" in done.stderr
    assert cluster.probe("n1", "status")["node"] == "n1"
