"""The agent's infrastructure services as real processes on loopback: the registry answers
health, peers and events over HTTP, refuses bad input with 400 and a message, persists peers to
its data file and binds only the address it was given; the bootstrap tells a UDP client the
source address it saw and relays datagrams between two registered clients."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

AGENT = [sys.executable, "-m", "pytest_vpstest.lab.agent"]


def free_port(host: str, kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_tcp(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {host}:{port}")


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9
    return int(proc.returncode)


def call(
    host: str, port: int, method: str, path: str, body: object = None, raw: bytes | None = None
) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    return response.status, payload


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[tuple[str, int, Path, subprocess.Popen[bytes]]]:
    host, port = "127.0.0.61", free_port("127.0.0.61")
    data = tmp_path / "peers.json"
    proc = subprocess.Popen(
        [*AGENT, "registry", "--bind", f"{host}:{port}", "--data", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_tcp(host, port)
        yield host, port, data, proc
    finally:
        stop(proc)
        assert proc.stderr is not None
        proc.stderr.close()


def test_registry_health_registration_and_listing(
    registry: tuple[str, int, Path, subprocess.Popen[bytes]],
) -> None:
    host, port, _, _ = registry
    assert call(host, port, "GET", "/health") == (200, {"ok": True, "peers": 0})
    status, answer = call(
        host,
        port,
        "POST",
        "/api/peers",
        {"name": "saorsa-7", "addresses": ["198.18.0.7:9000"], "mapped": "198.18.0.7:9000", "nat": "none"},
    )
    assert status == 200 and answer["ok"] is True
    status, listing = call(host, port, "GET", "/api/peers")
    [peer] = listing["peers"]  # type: ignore[misc]
    assert peer["name"] == "saorsa-7" and peer["addresses"] == ["198.18.0.7:9000"] and peer["nat"] == "none"
    assert abs(peer["last_seen"] - time.time()) < 30 and peer["age_seconds"] >= 0
    assert call(host, port, "GET", "/health") == (200, {"ok": True, "peers": 1})
    assert call(host, port, "DELETE", "/api/peers/saorsa-7") == (200, {"ok": True, "removed": True})
    assert call(host, port, "GET", "/health")[1]["peers"] == 0


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"name": "x"}', "addresses"),
        (b'{"name": "bad name", "addresses": ["1.2.3.4:5"]}', "name"),
        (b'["a"]', "JSON object"),
    ],
)
def test_registry_refuses_bad_registrations_with_a_message(
    registry: tuple[str, int, Path, subprocess.Popen[bytes]], raw: bytes, complaint: str
) -> None:
    host, port, _, _ = registry
    status, answer = call(host, port, "POST", "/api/peers", raw=raw)
    assert status == 400 and answer["ok"] is False and complaint in str(answer["error"])
    assert call(host, port, "GET", "/health")[1]["peers"] == 0


def test_registry_unknown_endpoint_is_404(registry: tuple[str, int, Path, subprocess.Popen[bytes]]) -> None:
    host, port, _, _ = registry
    assert call(host, port, "GET", "/nope")[0] == 404


def test_registry_keeps_a_bounded_event_list(
    registry: tuple[str, int, Path, subprocess.Popen[bytes]],
) -> None:
    host, port, _, _ = registry
    for n in range(3):
        assert call(host, port, "POST", "/api/events", {"project": "p", "state": "TEST", "n": n})[0] == 200
    assert call(host, port, "POST", "/api/events", raw=b"[1]")[0] == 400
    _, answer = call(host, port, "GET", "/api/events")
    events = answer["events"]
    assert [e["event"]["n"] for e in events] == [0, 1, 2]  # type: ignore[index, union-attr]
    assert [e["seq"] for e in events] == [1, 2, 3]  # type: ignore[index, union-attr]


def test_registry_persists_peers_across_restart(
    registry: tuple[str, int, Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    host, port, data, proc = registry
    call(host, port, "POST", "/api/peers", {"name": "n1", "addresses": ["198.18.0.9:9000"]})
    assert stop(proc) == 0
    saved = json.loads(data.read_text())
    assert saved["schema_version"] == 1 and [p["name"] for p in saved["peers"]] == ["n1"]
    again = subprocess.Popen(
        [*AGENT, "registry", "--bind", f"{host}:{port}", "--data", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_tcp(host, port)
        assert [p["name"] for p in call(host, port, "GET", "/api/peers")[1]["peers"]] == ["n1"]  # type: ignore[union-attr]
    finally:
        assert stop(again) == 0


def test_registry_binds_only_the_given_address(
    registry: tuple[str, int, Path, subprocess.Popen[bytes]],
) -> None:
    _, port, _, _ = registry
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.62", port), timeout=0.5).close()


def test_registry_on_a_taken_address_fails_with_a_one_line_reason(
    registry: tuple[str, int, Path, subprocess.Popen[bytes]],
) -> None:
    host, port, _, _ = registry
    done = subprocess.run(
        [*AGENT, "registry", "--bind", f"{host}:{port}"], capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 1 and "cannot start" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture
def bootstrap() -> Iterator[tuple[str, int]]:
    host = "127.0.0.63"
    port = free_port(host, socket.SOCK_DGRAM)
    proc = subprocess.Popen(
        [*AGENT, "bootstrap", "--bind", f"{host}:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield host, port
    finally:
        assert stop(proc) == 0


def _client(host: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(0.3)
    return s


def _ask(s: socket.socket, dest: tuple[str, int], payload: bytes) -> tuple[bytes, tuple[str, int]]:
    for _ in range(30):  # the service may still be starting
        s.sendto(payload, dest)
        try:
            data, src = s.recvfrom(65535)
            return data, (src[0], src[1])
        except TimeoutError:
            continue
    raise AssertionError("bootstrap did not answer")


def test_bootstrap_discovery_and_relay(bootstrap: tuple[str, int]) -> None:
    a, b = _client("127.0.0.64"), _client("127.0.0.65")
    try:
        answer, src = _ask(a, bootstrap, b'{"t":"hello","node":"a","id":"1"}')
        assert src == bootstrap
        assert json.loads(answer) == {
            "t": "hello_ok",
            "id": "1",
            "mapped": f"127.0.0.64:{a.getsockname()[1]}",
        }
        _ask(b, bootstrap, b'{"t":"hello","node":"b","id":"2"}')
        a.sendto(b"R\x01b" + b"payload through the relay", bootstrap)
        data, src = b.recvfrom(65535)
        assert src == bootstrap and data == b"F\x01a" + b"payload through the relay"
    finally:
        a.close()
        b.close()


def test_registry_queues_a_fleet_connecting_at_once() -> None:
    """Connections arriving before the registry accepts them wait in its listen backlog: a whole
    fleet's agents registering at the same moment all get through (a backlog of 5 admits 6)."""
    import select
    import threading

    from pytest_vpstest.lab.agent.registry import make_server

    server = make_server(("127.0.0.1", 0))  # listening, not yet accepting
    clients = [socket.socket() for _ in range(64)]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    try:
        for c in clients:
            c.setblocking(False)
            c.connect_ex(server.server_address[:2])
        pending, deadline = list(clients), time.monotonic() + 5
        while pending and time.monotonic() < deadline:
            _, writable, _ = select.select([], pending, [], 0.2)
            pending = [c for c in pending if c not in writable]
        assert not pending, f"{len(pending)} of {len(clients)} connections were not queued"
        thread.start()
        for c in clients[:: len(clients) // 4]:
            c.setblocking(True)
            c.settimeout(10)
            c.sendall(b"GET /health HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
            assert c.recv(64).startswith(b"HTTP/1.1 200 OK")
    finally:
        for c in clients:
            c.close()
        if thread.is_alive():
            server.shutdown()
        server.server_close()
