"""The lab's NAT routers give TCP the same mapping and filtering as UDP, shown with real connections.

Reflectors (UDP and TCP) run in two public node namespaces. From each NATed node the classifier
opens TCP connections from one local port to A:P1, B:P1 and B:P2 and reads the endpoint each saw
(mapping); then, from a fresh port that has connected to A:P1 only and listens there with
``SO_REUSEPORT``, it asks for connections back from B:P2 and from A:P2 (filtering). The raw
observations are checked against the type's RFC 4787 behaviour, and so is the UDP classification
of the same router, so one router is shown to treat both protocols alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_vpstest.lab.nat import BEHAVIOUR
from tests.lab.conftest import Lab, lab_fixture, reflector_pair, requires_netns

pytestmark = [pytest.mark.lab, requires_netns]

lab = lab_fixture("vtt", "full")

NATTED = ["saorsa-4", "saorsa-5", "saorsa-6", "saorsa-10"]
A, B = "saorsa-7", "saorsa-8"
P1, P2 = 3479, 3480
EXPECTED_SEEN = {  # filtering -> (answer from another address arrives, from another port arrives)
    "endpoint-independent": (True, True),
    "address-dependent": (False, True),
    "address-and-port-dependent": (False, False),
}


@pytest.fixture(scope="module")
def reflectors(lab: Lab) -> Iterator[tuple[str, str]]:
    with reflector_pair(lab, A, B, (P1, P2)) as addresses:
        yield addresses


def classify(lab: Lab, node: str, servers: tuple[str, str], protocol: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "pytest_vpstest.lab.natcheck", "classify", "--protocol", protocol]
    argv += ["--server", servers[0], "--alt-server", servers[1], "--ports", f"{P1},{P2}"]
    proc = lab.in_ns(str(lab.node(node).ns), argv, timeout=30)
    assert proc.returncode == 0, f"{node} {protocol}: {proc.stdout}{proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.mark.parametrize("node", NATTED)
def test_tcp_mapping_and_filtering_follow_the_nat_type(
    lab: Lab, reflectors: tuple[str, str], node: str
) -> None:
    nat = lab.node(node).nat
    mapping, filtering = BEHAVIOUR[nat]  # type: ignore[index]
    result = classify(lab, node, reflectors, "tcp")
    wan = lab.node(node).public_ip
    seen = result["mapped"]
    assert {m.split(":")[0] for m in seen.values()} == {wan}, f"{node}: translated to the WAN address: {seen}"
    local_port = result["local"].split(":")[1]
    ports = {m.split(":")[1] for m in seen.values()}
    if mapping == "endpoint-independent":
        assert ports == {local_port}, f"{node} ({nat}): one mapping, the local port kept, for tcp: {seen}"
    else:
        assert len(ports) == 3, f"{node} ({nat}): a new mapping per remote address and port, for tcp: {seen}"
    got = (result["from_other_address"], result["from_other_port"])
    assert got == EXPECTED_SEEN[filtering], f"{node} ({nat}, {filtering}) tcp: unsolicited connections {got}"
    assert (result["mapping"], result["filtering"]) == (mapping, filtering)


@pytest.mark.parametrize("node", NATTED)
def test_udp_and_tcp_classify_alike(lab: Lab, reflectors: tuple[str, str], node: str) -> None:
    udp = classify(lab, node, reflectors, "udp")
    tcp = classify(lab, node, reflectors, "tcp")
    expected = BEHAVIOUR[lab.node(node).nat]  # type: ignore[index]
    assert (udp["mapping"], udp["filtering"]) == expected, udp
    assert (tcp["mapping"], tcp["filtering"]) == expected, tcp


def test_public_node_tcp_is_neither_translated_nor_filtered(lab: Lab, reflectors: tuple[str, str]) -> None:
    result = classify(lab, "saorsa-9", reflectors, "tcp")
    assert set(result["mapped"].values()) == {
        f"{lab.node('saorsa-9').data_ip}:{result['local'].split(':')[1]}"
    }
    assert result["from_other_address"] and result["from_other_port"]


# TCP hole punching by simultaneous open: each side learns its mapping from reflector A (over a
# connection from port X that stays open), listens on X too, gets the other's mapping on stdin, then
# connects from X to it while accepting on X. Success: a connection to or from the peer's address.
_PUNCHER = r"""
import json, select, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
def tcp(p):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("", p))
    return s
lst = tcp(0); lst.listen(4); lst.setblocking(False)
x = lst.getsockname()[1]
c = tcp(x); c.settimeout(5); c.connect((host, port))
c.sendall(json.dumps({"op": "probe", "id": "p"}).encode() + b"\n")
print(json.dumps({"mapped": json.loads(c.recv(2048).split(b"\n")[0])["mapped"]}), flush=True)
peer = sys.stdin.readline().strip()
phost, pport = peer.rsplit(":", 1)
deadline = time.monotonic() + 6
how = None
while how is None and time.monotonic() < deadline:
    d = tcp(x); d.setblocking(False)
    d.connect_ex((phost, int(pport)))
    end = min(deadline, time.monotonic() + 2)
    while how is None and time.monotonic() < end:
        r, w, _ = select.select([lst], [d], [], 0.1)
        if w and d.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            how = "connected"
        elif r:
            conn, src = lst.accept()
            if src[0] == phost:
                how = "accepted"
    if how is None:
        d.close()
print(json.dumps({"result": how}), flush=True)
"""

PUNCH_PAIRS = [("saorsa-4", "saorsa-5"), ("saorsa-4", "saorsa-6"), ("saorsa-5", "saorsa-6")]
PUNCH_PAIRS += [("saorsa-10", "saorsa-4"), ("saorsa-10", "saorsa-5"), ("saorsa-10", "saorsa-6")]


def punch_expected(a: str, b: str) -> bool:
    """NAT theory without port prediction: a punch fails when one side's mapping is per destination
    (symmetric) and the other side only admits the exact endpoint it sent to."""
    for one, other in ((a, b), (b, a)):
        if (
            BEHAVIOUR[one][0] == "address-and-port-dependent"
            and BEHAVIOUR[other][1] == "address-and-port-dependent"
        ):  # type: ignore[index]
            return False
    return True


@pytest.mark.parametrize(("left", "right"), PUNCH_PAIRS)
def test_tcp_hole_punch_follows_nat_theory(
    lab: Lab, reflectors: tuple[str, str], left: str, right: str
) -> None:
    a, _ = reflectors
    procs = {
        n: subprocess.Popen(
            ["ip", "netns", "exec", str(lab.node(n).ns), sys.executable, "-c", _PUNCHER, a, str(P1)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in (left, right)
    }
    try:
        mapped = {n: json.loads(p.stdout.readline())["mapped"] for n, p in procs.items()}  # type: ignore[union-attr]
        for n, other in ((left, right), (right, left)):
            procs[n].stdin.write(mapped[other] + "\n")  # type: ignore[union-attr]
            procs[n].stdin.flush()  # type: ignore[union-attr]
        results = {n: json.loads(p.communicate(timeout=30)[0])["result"] for n, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
            p.wait(timeout=5)
    nats = (lab.node(left).nat, lab.node(right).nat)
    expected = punch_expected(*nats)
    punched = all(r is not None for r in results.values())
    assert punched == expected, f"{left} ({nats[0]}) <-> {right} ({nats[1]}) over tcp: {results}"
