"""The lab's addressing and naming plan, its nftables rulesets and its inventory, as pure data:
addresses stay in 198.18.0.0/15 and are unique, interface names fit IFNAMSIZ, management subnets
avoid routes in use, each NAT type gets the rules that give its RFC 4787 behaviour, and the
inventory has the documented shape."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_vpstest.errors import ConfigError
from pytest_vpstest.lab import inventory as inv
from pytest_vpstest.lab.nat import BEHAVIOUR, host_guard_ruleset, node_mgmt_ruleset, router_ruleset
from pytest_vpstest.lab.plan import (
    MAC_KINDS,
    MGMT_OCTETS,
    check_prefix,
    choose_mgmt_octet,
    mac,
    make_plan,
    preferred_mgmt_octet,
)
from pytest_vpstest.lab.record import LabRecord, NodeRecord, ServiceRecord
from pytest_vpstest.lab.topology import LabNode, Topology, load_topology

LAB_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
IFNAMSIZ = 15


def test_full_plan_addresses() -> None:
    plan = make_plan(load_topology("full"), "vps", 200)
    assert plan.harness_ip == "198.19.200.254" and plan.mgmt_subnet == "198.19.200.0/24"
    reg = plan.node("saorsa-1")
    assert (reg.ns, reg.data_ip, reg.mgmt_ip, reg.mgmt_port) == (
        "vps-saorsa-1",
        "198.18.0.1",
        "198.19.200.1",
        "n1",
    )
    assert (plan.mgmt_ns, plan.mgmt_root_if, plan.mgmt_router_ip) == ("vps-mgmt", "vps-m0", "198.19.200.253")
    cone = plan.node("saorsa-4")
    assert (cone.router_ns, cone.wan_ip, cone.lan_router_ip, cone.data_ip, cone.public_ip) == (
        "vps-r-saorsa-4",
        "198.18.0.4",
        "198.19.4.1",
        "198.19.4.2",
        "198.18.0.4",
    )
    assert plan.registry.name == "saorsa-1"
    assert [b.name for b in plan.bootstraps] == ["saorsa-2", "saorsa-3"]
    assert len(plan.namespaces) == 2 + 10 + 4


@given(
    prefix=st.from_regex(r"[a-z][a-z0-9]{0,4}", fullmatch=True),
    nats=st.lists(st.sampled_from(["none", "full-cone", "symmetric"]), min_size=1, max_size=120),
    octet=st.sampled_from(list(MGMT_OCTETS)),
)
def test_any_plan_is_unique_in_range_and_fits_ifnamsiz(prefix: str, nats: list[str], octet: int) -> None:
    nodes = [LabNode(name="reg", role="registry")]
    nodes += [
        LabNode(name=f"n{i}", role="nat" if nat != "none" else "test", nat=nat) for i, nat in enumerate(nats)
    ]  # type: ignore[arg-type]
    plan = make_plan(Topology(name="t", nodes=tuple(nodes[:120])), prefix, octet)
    public = [n.public_ip for n in plan.nodes]
    mgmt = [n.mgmt_ip for n in plan.nodes] + [plan.harness_ip, plan.mgmt_router_ip]
    data = [n.data_ip for n in plan.nodes]
    for addr in public + mgmt + data:
        assert ipaddress.IPv4Address(addr) in LAB_RANGE
    assert len(set(public)) == len(public) and len(set(mgmt)) == len(mgmt) and len(set(data)) == len(data)
    assert not set(mgmt) & set(data + public)
    assert all(len(name) <= IFNAMSIZ for name in [plan.mgmt_root_if, *(n.mgmt_port for n in plan.nodes)])
    assert len(set(plan.namespaces)) == len(plan.namespaces)
    assert all(ns.startswith(f"{prefix}-") for ns in plan.namespaces)


@pytest.mark.parametrize("bad", ["", "VPS", "vps-1", "toolong", "1abc", "vps_"])
def test_prefix_must_fit_interface_names(bad: str) -> None:
    with pytest.raises(ConfigError, match="key 'prefix'"):
        check_prefix(bad)


def test_management_subnet_avoids_routes_in_use() -> None:
    start = preferred_mgmt_octet("vps")
    assert start == 200
    taken = [ipaddress.IPv4Network("198.19.200.0/24"), ipaddress.IPv4Network("198.19.201.0/25")]
    assert choose_mgmt_octet("vps", taken) == 202
    assert choose_mgmt_octet("vps", [ipaddress.IPv4Network("10.0.0.0/8")]) == 200
    everything = [ipaddress.IPv4Network("198.19.0.0/16")]
    with pytest.raises(ConfigError, match="no free management subnet"):
        choose_mgmt_octet("vps", everything)
    assert preferred_mgmt_octet("vpst1") != preferred_mgmt_octet("vpst2")


def test_management_subnet_wraps_around() -> None:
    taken = [ipaddress.IPv4Network(f"198.19.{o}.0/24") for o in range(200, 254)]
    assert choose_mgmt_octet("vps", taken) == MGMT_OCTETS.start


def _rules(ruleset: str) -> list[str]:
    return [line.strip() for line in ruleset.splitlines()]


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_full_cone_admits_any_sender_to_a_live_mapping(proto: str) -> None:
    rules = _rules(router_ruleset("full-cone", "198.19.4.0/24", "198.19.4.2"))
    assert 'oifname "wan" ip saddr 198.19.4.0/24 masquerade' in rules
    assert f'oifname "wan" meta l4proto {proto} update @eif_{proto} {{ {proto} sport }}' in rules
    assert f'iifname "wan" {proto} dport @eif_{proto} dnat to 198.19.4.2' in rules
    assert not any("@adf" in r for r in rules)


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_address_restricted_admits_contacted_addresses_only(proto: str) -> None:
    rules = _rules(router_ruleset("address-restricted", "198.19.5.0/24", "198.19.5.2"))
    assert f'oifname "wan" meta l4proto {proto} update @adf_{proto} {{ ip daddr . {proto} sport }}' in rules
    assert f'iifname "wan" ip saddr . {proto} dport @adf_{proto} dnat to 198.19.5.2' in rules
    assert not any("@eif" in r for r in rules)


def test_mapping_lifetimes_default_to_the_rfcs() -> None:
    ruleset = router_ruleset("full-cone", "198.19.4.0/24", "198.19.4.2")
    assert "set eif_udp {\n    type inet_service; flags dynamic,timeout; timeout 120s;" in ruleset
    assert "set eif_tcp {\n    type inet_service; flags dynamic,timeout; timeout 7440s;" in ruleset
    assert "ct timeout" not in ruleset, "conntrack keeps the kernel's timeouts unless told otherwise"


@pytest.mark.parametrize("nat", ["port-restricted", "symmetric"])
def test_port_dependent_filtering_relies_on_conntrack_alone(nat: str) -> None:
    rules = _rules(router_ruleset(nat, "198.19.6.0/24", "198.19.6.2"))  # type: ignore[arg-type]
    assert not any("dnat to" in r for r in rules)
    assert 'iifname "wan" oifname "lan" ct status dnat accept' in rules
    assert 'iifname "wan" drop' in rules, "unsolicited packets to the router are dropped unconfirmed"
    masquerade = next(r for r in rules if "masquerade" in r)
    assert masquerade.endswith("fully-random") == (nat == "symmetric")


def test_behaviour_table_is_rfc_4787() -> None:
    assert BEHAVIOUR == {
        "full-cone": ("endpoint-independent", "endpoint-independent"),
        "address-restricted": ("endpoint-independent", "address-dependent"),
        "port-restricted": ("endpoint-independent", "address-and-port-dependent"),
        "symmetric": ("address-and-port-dependent", "address-and-port-dependent"),
    }
    with pytest.raises(ValueError, match="none"):
        router_ruleset("none", "198.19.1.0/24", "198.19.1.2")


def test_management_firewalls() -> None:
    node = _rules(node_mgmt_ruleset("198.19.200.254"))
    assert 'iifname "mgmt" ip saddr 198.19.200.254 tcp dport 22 accept' in node
    assert 'oifname "mgmt" ip daddr 198.19.200.254 tcp sport 22 accept' in node
    assert node.count('iifname "mgmt" drop') == 1 and node.count('oifname "mgmt" drop') == 1
    host = _rules(host_guard_ruleset("vps"))
    assert host[0] == "table inet vps_lab {"
    assert 'iifname "vps-m*" drop' in host and 'oifname "vps-m*" drop' in host


def test_lab_dir_rules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VPSTEST_LAB_DIR", str(tmp_path / "forced"))
    assert inv.lab_dir("abc") == tmp_path / "forced"
    assert inv.inventory_path("abc") == tmp_path / "forced" / "inventory.yaml"
    monkeypatch.delenv("VPSTEST_LAB_DIR")
    monkeypatch.setattr(inv.os, "geteuid", lambda: 0)
    assert inv.lab_dir() == Path("/var/lib/vpstest/lab/vps")
    monkeypatch.setattr(inv.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert inv.inventory_path("vps") == tmp_path / "state" / "vpstest" / "lab" / "vps" / "inventory.yaml"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert inv.lab_dir("x1") == tmp_path / "home" / ".local" / "state" / "vpstest" / "lab" / "x1"


def test_inventory_document_matches_the_contract() -> None:
    record = LabRecord(
        prefix="vps",
        flavour="netns",
        topology="small",
        lab_dir="/tmp/lab",
        nodes=(
            NodeRecord("saorsa-1", "registry", "none", "198.18.0.1", "198.18.0.1", "198.19.200.1", 22),
            NodeRecord("saorsa-6", "nat", "port-restricted", "198.19.2.2", "198.18.0.2", "198.19.200.2", 22),
        ),
        services=(
            ServiceRecord("registry", "saorsa-1", "198.18.0.1:8080", "vps-saorsa-1"),
            ServiceRecord("bootstrap", "saorsa-1", "198.18.0.1:3478", "vps-saorsa-1"),
        ),
    )
    doc = inv.inventory_document(record)
    assert {k: doc[k] for k in ("schema_version", "known_hosts", "identity_file", "lab")} == {
        "schema_version": 1,
        "known_hosts": "known_hosts",
        "identity_file": "id_ed25519",
        "lab": "netns",
    }
    assert doc["registry"] == {"url": "http://198.18.0.1:8080", "via_node": "saorsa-1"}
    assert doc["bootstrap"] == ["198.18.0.1:3478"]
    nat_node = doc["nodes"][1]
    assert nat_node == {
        "name": "saorsa-6",
        "host": "198.19.200.2",
        "fallback_ip": None,
        "user": "root",
        "port": 22,
        "role": "nat",
        "nat": "port-restricted",
        "tags": ["lab"],
        "provider": "lab",
        "region": "lab",
        "service_manager": "process",
        "install_path": "/opt/vpstest/",
        "log_dir": "/var/log/vpstest",
        "p2p_address": "198.19.2.2",
        "public_address": "198.18.0.2",  # its NAT's WAN address: {peer_public_address}
    }


def test_every_link_end_has_its_own_fixed_mac() -> None:
    plan = make_plan(load_topology("scale:120"), "vps", 200)
    macs = [mac(kind, n.number) for kind in MAC_KINDS for n in plan.nodes]
    assert len(set(macs)) == len(macs)
    assert all(m.startswith("02:76:") and len(m) == 17 for m in macs)
    assert mac("data", 300) == "02:76:01:00:01:2c"


@pytest.mark.parametrize("name", ["inet", "mgmt"])
def test_node_names_of_the_labs_own_namespaces_are_refused(name: str) -> None:
    topo = Topology(name="t", nodes=(LabNode(name="reg", role="registry"), LabNode(name=name)))
    with pytest.raises(ConfigError, match=f"node name '{name}' is reserved"):
        make_plan(topo, "vps", 200)
