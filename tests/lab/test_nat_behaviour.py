"""The lab's NAT routers behave as their RFC 4787 type says, shown with real UDP.

Reflectors in two public node namespaces report the source endpoint they observe. From each NATed
node: the mapped endpoint is the same for two addresses and two ports (endpoint-independent mapping)
or differs per destination (symmetric); unsolicited datagrams from another address, or from another
port of a contacted address, arrive or not as the filtering type allows. An RFC 5780-style
classifier run from every NATed node reports the claimed (mapping, filtering) pair.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from pytest_vpstest.lab.nat import BEHAVIOUR
from tests.lab.conftest import Lab, lab_fixture, reflector_pair, requires_netns

pytestmark = [pytest.mark.lab, requires_netns]

lab = lab_fixture("vte", "full")

NATTED = ["saorsa-4", "saorsa-5", "saorsa-6", "saorsa-10"]
A, B = "saorsa-7", "saorsa-8"  # public nodes hosting the reflectors
P1, P2, P_OTHER = 3479, 3480, 3490

# One socket: learn the mapping at A:P1, B:P1, B:P2, print it, then report every datagram received
# until a line arrives on stdin.
_MAPPER = r"""
import json, select, socket, sys
dests = [(h, int(p)) for h, p in (d.split(":") for d in sys.argv[1].split(","))]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", 0))
mapped = {}
for i, d in enumerate(dests):
    for attempt in range(5):
        s.sendto(json.dumps({"op": "probe", "id": str(i)}).encode(), d)
        if select.select([s], [], [], 0.4)[0]:
            answer = json.loads(s.recv(2048))
            if answer.get("id") == str(i):
                mapped["%s:%d" % d] = answer["mapped"]
                break
print(json.dumps({"local": s.getsockname()[1], "mapped": mapped}), flush=True)
received = []
while True:
    ready = select.select([s, sys.stdin], [], [], 10)[0]
    if not ready or sys.stdin in ready:
        break
    data, src = s.recvfrom(2048)
    received.append(["%s:%d" % src, data.decode(errors="replace")])
print(json.dumps({"received": received}), flush=True)
"""

_SENDER = r"""
import socket, sys, time
src, dst = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((src.split(":")[0], int(src.split(":")[1])))
for _ in range(3):
    s.sendto(("unsolicited from " + src).encode(), (dst.split(":")[0], int(dst.split(":")[1])))
    time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def reflectors(lab: Lab) -> Iterator[tuple[str, str]]:
    with reflector_pair(lab, A, B, (P1, P2)) as addresses:
        yield addresses


def _observe(
    lab: Lab, node: str, dests: list[str], senders: list[tuple[str, str]]
) -> tuple[dict[str, str], int, set[str]]:
    """From one socket on ``node``: the mapped endpoint each reflector in ``dests`` observed, the local
    port, and which of ``senders`` ((namespace node, source endpoint) sending unsolicited datagrams
    to the mapping seen by ``dests[0]``) got through."""
    argv = ["ip", "netns", "exec", str(lab.node(node).ns), sys.executable, "-c", _MAPPER, ",".join(dests)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        first = json.loads(proc.stdout.readline())
        mapped: dict[str, str] = first["mapped"]
        assert len(mapped) == len(dests), f"no answer from some reflector: {first}"
        for sender_node, source in senders:
            lab.python_in(str(lab.node(sender_node).ns), _SENDER, source, mapped[dests[0]])
        time.sleep(0.3)
        proc.stdin.write("done\n")
        proc.stdin.flush()
        received = {src for src, _ in json.loads(proc.stdout.readline())["received"]}
    finally:
        proc.kill()
        proc.wait(timeout=5)
        proc.stdin.close()
        proc.stdout.close()
    return mapped, int(first["local"]), received


@pytest.mark.parametrize("node", NATTED)
def test_mapping_behaviour(lab: Lab, reflectors: tuple[str, str], node: str) -> None:
    a, b = reflectors
    mapped, local_port, _ = _observe(lab, node, [f"{a}:{P1}", f"{b}:{P1}", f"{b}:{P2}"], [])
    wan = lab.node(node).public_ip
    assert all(m.split(":")[0] == wan for m in mapped.values()), mapped
    ports = {m.split(":")[1] for m in mapped.values()}
    mapping, _ = BEHAVIOUR[lab.node(node).nat]  # type: ignore[index]
    if mapping == "endpoint-independent":
        assert ports == {str(local_port)}, f"{node}: one mapping, the local port preserved: {mapped}"
    else:
        assert len(ports) == 3, f"{node}: a new mapping per destination address and port: {mapped}"


@pytest.mark.parametrize("node", NATTED)
def test_filtering_behaviour(lab: Lab, reflectors: tuple[str, str], node: str) -> None:
    a, b = reflectors
    # This socket contacts A:P1 only; B is "another address", A:P_OTHER "another port".
    senders = [(B, f"{b}:{P_OTHER}"), (A, f"{a}:{P_OTHER}")]
    _, _, received = _observe(lab, node, [f"{a}:{P1}"], senders)
    from_other_address = f"{b}:{P_OTHER}" in received
    from_other_port = f"{a}:{P_OTHER}" in received
    _, filtering = BEHAVIOUR[lab.node(node).nat]  # type: ignore[index]
    expected = {
        "endpoint-independent": (True, True),
        "address-dependent": (False, True),
        "address-and-port-dependent": (False, False),
    }[filtering]
    assert (from_other_address, from_other_port) == expected, f"{node} ({filtering}): got {sorted(received)}"


def test_public_node_is_not_translated(lab: Lab, reflectors: tuple[str, str]) -> None:
    a, b = reflectors
    senders = [(B, f"{b}:{P_OTHER}"), (A, f"{a}:{P_OTHER}")]
    mapped, local_port, received = _observe(lab, "saorsa-9", [f"{a}:{P1}", f"{b}:{P1}", f"{b}:{P2}"], senders)
    own = lab.node("saorsa-9").data_ip
    assert set(mapped.values()) == {f"{own}:{local_port}"}
    assert {f"{a}:{P_OTHER}", f"{b}:{P_OTHER}"} <= received


@pytest.mark.parametrize("node", [*NATTED, "saorsa-9"])
def test_classifier_reports_the_claimed_type(lab: Lab, reflectors: tuple[str, str], node: str) -> None:
    a, b = reflectors
    argv = [
        sys.executable,
        "-m",
        "pytest_vpstest.lab.natcheck",
        "classify",
        "--server",
        a,
        "--alt-server",
        b,
        "--ports",
        f"{P1},{P2}",
    ]
    proc = lab.in_ns(str(lab.node(node).ns), argv)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    nat = lab.node(node).nat
    expected = BEHAVIOUR[nat] if nat != "none" else ("endpoint-independent", "endpoint-independent")  # type: ignore[index]
    assert (result["mapping"], result["filtering"]) == expected, result
