"""The lab cannot reach outside itself: no namespace has a default route, a node cannot reach the
host's uplink address (no route) nor the host over its management link, the management links carry
SSH from the harness only, and the root namespace never forwards between management links."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator

import pytest

from pytest_vpstest.lab import netns
from tests.lab.conftest import Lab, lab_fixture, requires_netns

pytestmark = [pytest.mark.lab, requires_netns]

lab = lab_fixture("vtd", "small")

_TRY = r"""
import socket, sys, json
host, port = sys.argv[1], int(sys.argv[2])
out = {}
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b"x", (host, port)); out["udp"] = "sent"
except OSError as e:
    out["udp"] = e.strerror
t = socket.socket(); t.settimeout(0.5)
try:
    t.connect((host, port)); out["tcp"] = "connected"
except OSError as e:
    out["tcp"] = e.strerror or type(e).__name__
print(json.dumps(out))
"""


def _uplink_address() -> str:
    """The host's address on its default-route interface (TEST-NET-1 when the host has none)."""
    routes = json.loads(
        subprocess.run(
            ["ip", "-j", "-4", "route", "show", "default"], capture_output=True, text=True, check=True
        ).stdout
        or "[]"
    )
    if routes:
        dev = routes[0]["dev"]
        addrs = json.loads(
            subprocess.run(
                ["ip", "-j", "-4", "addr", "show", "dev", dev], capture_output=True, text=True, check=True
            ).stdout
        )
        for link in addrs:
            for a in link.get("addr_info", []):
                return str(a["local"])
    return "192.0.2.1"


def _all_namespaces(lab: Lab) -> list[str]:
    return netns.namespaces(lab.record.prefix)


def test_no_namespace_has_a_default_route(lab: Lab) -> None:
    for ns in _all_namespaces(lab):
        routes = lab.in_ns(ns, ["ip", "-j", "-4", "route", "show", "default"]).stdout
        assert json.loads(routes or "[]") == [], f"{ns} has a default route: {routes}"


def test_nodes_cannot_reach_the_hosts_uplink(lab: Lab) -> None:
    uplink = _uplink_address()
    for n in lab.record.nodes:
        route = lab.in_ns(str(n.ns), ["ip", "route", "get", uplink])
        assert route.returncode != 0, f"{n.name} has a route to {uplink}: {route.stdout}"
        tried = json.loads(lab.python_in(str(n.ns), _TRY, uplink, "22").stdout)
        assert tried == {"udp": "Network is unreachable", "tcp": "Network is unreachable"}, (n.name, tried)


@pytest.fixture
def host_listener(lab: Lab) -> Iterator[tuple[str, int]]:
    """A TCP listener of the host on the harness's management address."""
    with socket.socket() as s:
        s.bind((str(lab.record.harness_ip), 0))
        s.listen()
        yield s.getsockname()


def test_nodes_cannot_open_connections_to_the_host_over_management(
    lab: Lab, host_listener: tuple[str, int]
) -> None:
    host, port = host_listener
    for n in lab.record.nodes:
        tried = json.loads(lab.python_in(str(n.ns), _TRY, host, str(port)).stdout)
        assert tried["tcp"] != "connected", f"{n.name} reached the host at {host}:{port}"


def test_management_links_carry_ssh_only(lab: Lab) -> None:
    node = lab.node("saorsa-7")
    # A service inside the node listening on every address: the data side answers, management not.
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            str(node.ns),
            "python3",
            "-c",
            "import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            "s.bind(('', 8081)); s.listen(); print('ok', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ok"
        with socket.socket() as s:
            s.settimeout(1.0)
            with pytest.raises(OSError):
                s.connect((node.host, 8081))
        other = lab.node("saorsa-1")
        tried = json.loads(lab.python_in(str(other.ns), _TRY, node.data_ip, "8081").stdout)
        assert tried["tcp"] == "connected", "control: the service is reachable on the data network"
        assert socket.create_connection((node.host, 22), timeout=2).close() is None
    finally:
        server.kill()
        server.wait(timeout=5)
        if server.stdout:
            server.stdout.close()


def test_a_node_cannot_reach_another_nodes_management_address(lab: Lab) -> None:
    a, b = lab.node("saorsa-7"), lab.node("saorsa-2")
    tried = json.loads(lab.python_in(str(a.ns), _TRY, b.host, "22").stdout)
    assert tried["tcp"] != "connected" and tried["udp"] == "Network is unreachable", tried


def test_root_namespace_never_forwards_between_management_links(lab: Lab) -> None:
    table = subprocess.run(
        ["nft", "-j", "list", "table", "inet", f"{lab.record.prefix}_lab"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rules = [item["rule"] for item in json.loads(table)["nftables"] if "rule" in item]
    chains = {
        item["chain"]["name"]: item["chain"] for item in json.loads(table)["nftables"] if "chain" in item
    }
    assert chains["forward"]["hook"] == "forward"
    forward = [r for r in rules if r["chain"] == "forward"]
    text = json.dumps(forward)
    assert f'"{lab.record.prefix}-m*"' in text and '"drop"' in text
    matched = {(e["match"]["left"]["meta"]["key"]) for r in forward for e in r["expr"] if "match" in e}
    assert matched == {"iifname", "oifname"}
    # and the kernel agrees: every management link of the lab is covered by the wildcard
    for link in netns.root_links(lab.record.prefix):
        assert link.startswith(f"{lab.record.prefix}-m")


def test_management_router_drops_traffic_sent_between_nodes(lab: Lab) -> None:
    """Even a node that lifts its own firewall and routes a peer's management address through the
    management router does not get through: that router forwards SSH between the harness and a
    node only, never from node to node."""
    from pytest_vpstest.lab.nat import NAT_TABLE, node_mgmt_ruleset

    a, b = lab.node("saorsa-7"), lab.node("saorsa-2")
    ns = str(a.ns)
    router = str(lab.record.harness_ip).rsplit(".", 1)[0] + ".253"
    assert lab.in_ns(ns, ["nft", "delete", "table", "inet", NAT_TABLE]).returncode == 0
    route = ["ip", "route", "add", f"{b.host}/32", "via", router, "dev", "mgmt", "onlink"]
    assert lab.in_ns(ns, route).returncode == 0
    try:
        tried = json.loads(lab.python_in(ns, _TRY, b.host, "22").stdout)
        assert tried["tcp"] != "connected", f"{a.name} reached {b.name}'s sshd across management links"
    finally:
        lab.in_ns(ns, ["ip", "route", "del", f"{b.host}/32"])
        netns.nft_load(node_mgmt_ruleset(str(lab.record.harness_ip)), netns=ns)
