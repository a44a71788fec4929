"""Field conditions of the lab have their effect, shown with real UDP and TCP between namespaces.

One lab with: a lossy public node and a clean one; two full-cone NATs, one with 2-3 s mapping
timeouts; two port-restricted NATs, one hairpinning; and two double NATs (a full-cone home router
behind a symmetric, and behind an address-restricted, carrier-grade NAT). Reflectors run on two
public nodes. Every loop is bounded in count and time; traffic stays inside the lab's namespaces.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_vpstest import lab as lab_api
from pytest_vpstest.lab import netns
from pytest_vpstest.lab.nat import BEHAVIOUR
from pytest_vpstest.lab.topology import parse_topology
from tests.lab.conftest import Lab, netns_skip_reason, reflector_pair, requires_netns, worker_prefix

pytestmark = [pytest.mark.lab, requires_netns]

TOPOLOGY = """\
schema_version: 1
name: field
nodes:
  - {name: reg, role: registry}
  - {name: pa, role: test}
  - {name: pb, role: test}
  - {name: lossy, role: test, loss_percent: 30}
  - {name: clean, role: test}
  - {name: shortmap, role: nat, nat: full-cone, mapping_timeout: {udp_s: 2, tcp_s: 3}}
  - {name: longmap, role: nat, nat: full-cone}
  - {name: hairpin, role: nat, nat: port-restricted, hairpin: true}
  - {name: nohairpin, role: nat, nat: port-restricted}
  - {name: cgn-sym, role: nat, nat: full-cone, carrier_nat: symmetric}
  - {name: cgn-adr, role: nat, nat: full-cone, carrier_nat: address-restricted}
"""
P1, P2, P_OTHER, P_SINK = 3479, 3480, 3490, 3500
DATAGRAMS = 400
LOSS = 0.30


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if reason := netns_skip_reason():
        pytest.skip(reason)
    prefix = worker_prefix("vtf")
    where = tmp_path_factory.mktemp(f"lab-{prefix}")
    record = lab_api.up(parse_topology(TOPOLOGY), "netns", prefix, where)
    try:
        yield Lab(record=record, dir=where)
    finally:
        lab_api.down(prefix, where)


@pytest.fixture(scope="module")
def reflectors(lab: Lab) -> Iterator[tuple[str, str]]:
    with reflector_pair(lab, "pa", "pb", (P1, P2)) as addresses:
        yield addresses


# --- loss ----------------------------------------------------------------------------------------

_SINK = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: hold the whole burst
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
s.settimeout(1.5)
got = 0
try:
    while True:
        s.recv(2048)
        got += 1
except TimeoutError:
    pass
print(json.dumps({"received": got}), flush=True)
"""

_BURST = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    s.sendto(b"x" * 64, (sys.argv[1], int(sys.argv[2])))
"""


def _delivered(lab: Lab, sender: str, sink: str) -> int:
    """How many of ``DATAGRAMS`` datagrams from ``sender`` reach a socket on ``sink``."""
    ip = lab.node(sink).data_ip
    argv = ["ip", "netns", "exec", str(lab.node(sink).ns), sys.executable, "-c", _SINK, ip, str(P_SINK)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        sent = lab.python_in(str(lab.node(sender).ns), _BURST, ip, str(P_SINK), str(DATAGRAMS))
        assert sent.returncode == 0, sent.stderr
        received = int(json.loads(proc.stdout.readline())["received"])
    finally:
        proc.kill()
        proc.wait(timeout=5)
        proc.stdout.close()
    return received


def test_loss_drops_a_share_of_packets_on_the_lossy_link_only(lab: Lab) -> None:
    clean = _delivered(lab, "clean", "pa")
    lossy = _delivered(lab, "lossy", "pa")
    assert clean == DATAGRAMS, f"a clean link delivers everything: {clean}/{DATAGRAMS}"
    # 30 % per direction, one direction crossed: about 280 of 400 (binomial sd 9; +-6 sd allowed).
    low, high = DATAGRAMS * (1 - LOSS) - 55, DATAGRAMS * (1 - LOSS) + 55
    assert low <= lossy <= high, f"lossy link delivered {lossy}/{DATAGRAMS}, expected about 70 %"
    # And the other way round, into the lossy node.
    inbound = _delivered(lab, "clean", "lossy")
    assert low <= inbound <= high, f"into the lossy node: {inbound}/{DATAGRAMS}, expected about 70 %"


# --- mapping timeouts ----------------------------------------------------------------------------

# One socket: learn its mapping from the reflector, then on each stdin line report what arrived
# since the previous line.
_HOLDER = r"""
import json, select, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", 0))
mapped = None
for attempt in range(10):
    s.sendto(json.dumps({"op": "probe", "id": "m"}).encode(), (host, port))
    if select.select([s], [], [], 0.4)[0]:
        answer = json.loads(s.recv(2048))
        mapped = answer.get("mapped")
        break
print(json.dumps({"mapped": mapped}), flush=True)
for line in sys.stdin:
    got = []
    while select.select([s], [], [], 0.3)[0]:
        data, src = s.recvfrom(2048)
        got.append("%s:%d" % src)
    print(json.dumps({"received": got}), flush=True)
"""

_SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
host, port = sys.argv[3].rsplit(":", 1)
for _ in range(3):
    s.sendto(b"unsolicited", (host, int(port)))
"""


class Holder:
    """A socket on a NATed node holding one mapping, and a public node poking at it."""

    def __init__(self, lab: Lab, node: str, reflector: str) -> None:
        self.lab = lab
        argv = [
            "ip",
            "netns",
            "exec",
            str(lab.node(node).ns),
            sys.executable,
            "-c",
            _HOLDER,
            reflector,
            str(P1),
        ]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.mapped = json.loads(self.proc.stdout.readline())["mapped"]
        assert self.mapped, f"{node}: no answer from the reflector"

    def poke_from(self, node: str) -> bool:
        """Send unsolicited datagrams from ``node`` to the mapping; whether any arrived."""
        src = f"{self.lab.node(node).data_ip}:{P_OTHER}"
        sent = self.lab.python_in(str(self.lab.node(node).ns), _SEND, *src.split(":"), self.mapped)
        assert sent.returncode == 0, sent.stderr
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("report\n")
        self.proc.stdin.flush()
        return src in json.loads(self.proc.stdout.readline())["received"]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


IDLE_S = 3.5  # longer than shortmap's 2 s UDP timeout, far shorter than the default 120 s


def test_udp_mapping_expires_after_its_timeout(lab: Lab, reflectors: tuple[str, str]) -> None:
    a, _ = reflectors
    holders = {node: Holder(lab, node, a) for node in ("shortmap", "longmap")}
    try:
        fresh = {node: h.poke_from("pb") for node, h in holders.items()}
        assert fresh == {"shortmap": True, "longmap": True}, "full cone: anyone reaches a live mapping"
        time.sleep(IDLE_S)  # the condition under test: an idle mapping
        idle = {node: h.poke_from("pb") for node, h in holders.items()}
    finally:
        for h in holders.values():
            h.close()
    assert idle == {"shortmap": False, "longmap": True}, f"after {IDLE_S} s idle: {idle}"


_TCP_IDLE = r"""
import json, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.sendall(json.dumps({"op": "probe", "id": "t"}).encode() + b"\n")
first = s.recv(2048)
time.sleep(float(sys.argv[3]))
# The reflector answers this second probe on the same connection if the mapping still exists.
s.sendall(json.dumps({"op": "probe", "id": "u"}).encode() + b"\n")
s.settimeout(3)
try:
    second = s.recv(2048)
except (TimeoutError, OSError) as exc:
    second = b""
print(json.dumps({"first": bool(first), "second": b'"u"' in second}), flush=True)
"""


def test_tcp_mapping_expires_after_its_timeout(lab: Lab, reflectors: tuple[str, str]) -> None:
    a, _ = reflectors
    results: dict[str, Any] = {}
    procs = {
        node: subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                str(lab.node(node).ns),
                sys.executable,
                "-c",
                _TCP_IDLE,
                a,
                str(P1),
                "4.5",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for node in ("shortmap", "longmap")
    }
    for node, proc in procs.items():
        out, _ = proc.communicate(timeout=30)
        results[node] = json.loads(out)
    assert results["longmap"] == {"first": True, "second": True}, results
    # shortmap's established TCP entry lives 3 s: after 4.5 s idle the connection is gone at the NAT.
    assert results["shortmap"] == {"first": True, "second": False}, results


# --- hairpinning ---------------------------------------------------------------------------------

_HAIRPIN = r"""
import json, select, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
out = {}
# UDP: s1 holds a mapping; s2 sends to it through the router's public address.
s1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s1.bind(("", 0))
mapped = None
for attempt in range(10):
    s1.sendto(json.dumps({"op": "probe", "id": "h"}).encode(), (host, port))
    if select.select([s1], [], [], 0.4)[0]:
        mapped = json.loads(s1.recv(2048))["mapped"]
        break
mhost, mport = mapped.rsplit(":", 1)
s2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s2.bind(("", 0))
for _ in range(3):
    s2.sendto(b"hairpin", (mhost, int(mport)))
got = select.select([s1], [], [], 1.0)[0]
out["udp"] = "%s:%d" % s1.recvfrom(2048)[1] if got else None
# TCP: a listener shares the port of a connection to the reflector; connect to its mapping.
def tcp_socket(p):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("", p))
    return s
lst = tcp_socket(0); lst.listen(4)
c = tcp_socket(lst.getsockname()[1]); c.settimeout(3); c.connect((host, port))
c.sendall(json.dumps({"op": "probe", "id": "t"}).encode() + b"\n")
tmapped = json.loads(c.recv(2048).split(b"\n")[0])["mapped"]
thost, tport = tmapped.rsplit(":", 1)
d = socket.socket(socket.AF_INET, socket.SOCK_STREAM); d.settimeout(1.5)
try:
    d.connect((thost, int(tport)))
    lst.settimeout(1.5)
    conn, src = lst.accept()
    out["tcp"] = "%s:%d" % src
except OSError as exc:
    out["tcp"] = None
out["mapped"] = mapped
print(json.dumps(out), flush=True)
"""


@pytest.mark.parametrize(("node", "hairpins"), [("hairpin", True), ("nohairpin", False)])
def test_hairpinning_reaches_own_mapping_only_when_on(
    lab: Lab, reflectors: tuple[str, str], node: str, hairpins: bool
) -> None:
    a, _ = reflectors
    proc = lab.python_in(str(lab.node(node).ns), _HAIRPIN, a, str(P1), timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    wan = lab.node(node).public_ip
    assert out["mapped"].startswith(wan + ":")
    if hairpins:
        # The hairpinned flow arrives from the router's public address (RFC 4787 REQ-9), both protocols.
        assert out["udp"] is not None and out["udp"].startswith(wan + ":"), out
        assert out["tcp"] is not None and out["tcp"].startswith(wan + ":"), out
    else:
        assert (out["udp"], out["tcp"]) == (None, None), out


# --- double NAT ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("node", "label"), [("cgn-sym", "symmetric"), ("cgn-adr", "address-restricted")])
@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_double_nat_behaves_as_its_label(
    lab: Lab, reflectors: tuple[str, str], node: str, label: str, protocol: str
) -> None:
    assert lab.node(node).nat == label, "the inventory labels a double NAT by what it does"
    a, b = reflectors
    argv = [sys.executable, "-m", "pytest_vpstest.lab.natcheck", "classify", "--protocol", protocol]
    argv += ["--server", a, "--alt-server", b, "--ports", f"{P1},{P2}"]
    proc = lab.in_ns(str(lab.node(node).ns), argv, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    public = lab.node(node).public_ip
    assert {m.split(":")[0] for m in result["mapped"].values()} == {public}, result
    assert (result["mapping"], result["filtering"]) == BEHAVIOUR[label], result  # type: ignore[index]


def test_record_says_what_the_nat_labels_cover(lab: Lab) -> None:
    record = lab_api.status(lab.record.prefix, lab.dir)[0]
    assert record.extra["nat_protocols"] == ["udp", "tcp"]
    assert record.extra["conditions"]["cgn-sym"] == {"carrier_nat": "symmetric", "home_nat": "full-cone"}
    assert record.extra["conditions"]["lossy"] == {"loss_percent": 30.0}


def test_carrier_and_home_routers_learn_no_neighbour_entries(lab: Lab) -> None:
    """Every link end of a double NAT (carrier wan and lan, home router wan) has static neighbours too:
    traffic from each node to each other node's public address and to its own router learns none."""
    send = (
        "import socket,sys,time; s=socket.socket(2,2); "
        "[s.sendto(b'x',(a,9)) for a in sys.argv[1:]]; time.sleep(0.3)"
    )
    for a in lab.record.nodes:
        others = [b.public_ip for b in lab.record.nodes if b is not a]
        sent = lab.python_in(str(a.ns), send, *others)
        assert sent.returncode == 0, (a.name, sent.stderr)
    carriers = [ns for ns in netns.namespaces(lab.record.prefix) if ns.startswith(f"{lab.record.prefix}-c-")]
    assert len(carriers) == 2, carriers
    for ns in netns.namespaces(lab.record.prefix):
        entries = json.loads(lab.in_ns(ns, ["ip", "-j", "-4", "neigh", "show"]).stdout or "[]")
        learnt = [e for e in entries if e.get("state") != ["PERMANENT"]]
        assert learnt == [], f"{ns} learnt neighbour entries: {learnt}"
