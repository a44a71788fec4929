"""Field conditions of the lab as data: topology options are validated in one line each, and turn
into the NAT routers' nft rules (mapping timeouts, hairpinning), the loss rules of a node's link and
a carrier-grade NAT in front of a node's router, labelled with what the pair does from outside."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_vpstest.errors import ConfigError
from pytest_vpstest.lab.nat import (
    BEHAVIOUR,
    RouterOptions,
    combined_nat,
    link_loss_ruleset,
    router_ruleset,
)
from pytest_vpstest.lab.netlab import _far_end_loss_devices, _node_ruleset
from pytest_vpstest.lab.plan import make_plan
from pytest_vpstest.lab.topology import MappingTimeout, parse_topology

BASE = """\
schema_version: 1
nodes:
  - {name: reg, role: registry}
"""


def _topo(node: str) -> str:
    return BASE + "  - " + node + "\n"


def test_conditions_parse() -> None:
    topo = parse_topology(
        _topo(
            "{name: n, role: nat, nat: full-cone, loss_percent: 2.5, hairpin: true,"
            " mapping_timeout: {udp_s: 30, tcp_s: 600}, carrier_nat: port-restricted}"
        )
    )
    n = topo.node("n")
    assert (n.loss_percent, n.hairpin, n.carrier_nat) == (2.5, True, "port-restricted")
    assert n.mapping_timeout == MappingTimeout(udp_s=30, tcp_s=600)
    plain = parse_topology(_topo("{name: p, loss_percent: 10}")).node("p")
    assert (plain.loss_percent, plain.hairpin, plain.carrier_nat, plain.mapping_timeout) == (
        10.0,
        False,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (
            "{name: p, loss_percent: 100}",
            "key 'loss_percent': node p: loss_percent must be a number from 0",
        ),
        ("{name: p, loss_percent: lots}", "key 'loss_percent'"),
        ("{name: p, hairpin: true}", "key 'hairpin': node p: hairpin applies only to a NATed node"),
        ("{name: n, role: nat, nat: symmetric, hairpin: 1}", "hairpin must be true or false"),
        (
            "{name: n, role: nat, nat: symmetric, carrier_nat: cgn}",
            "unknown carrier NAT type 'cgn' (allowed: full-cone",
        ),
        ("{name: n, role: nat, nat: symmetric, carrier_nat: none}", "unknown carrier NAT type 'none'"),
        ("{name: n, role: nat, nat: symmetric, mapping_timeout: 30}", "mapping_timeout is a mapping like"),
        (
            "{name: n, role: nat, nat: symmetric, mapping_timeout: {udp_s: 0}}",
            "key 'udp_s': node n: mapping_timeout.udp_s must be whole seconds",
        ),
        ("{name: n, role: nat, nat: symmetric, mapping_timeout: {udp_s: 1.5}}", "key 'udp_s'"),
        ("{name: n, role: nat, nat: symmetric, mapping_timeout: {icmp_s: 3}}", "key 'icmp_s': unknown key"),
        ("{name: n, role: nat, nat: symmetric, mapping_timeout: {}}", "mapping_timeout needs udp_s or tcp_s"),
        ("{name: n, role: nat, nat: symmetric, packet_loss: 3}", "key 'packet_loss': unknown key"),
    ],
)
def test_bad_conditions_are_one_line_errors(node: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_topology(_topo(node), path=Path("mine.yaml"))
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("mine.yaml:4, key ")
    assert message in text


def test_mapping_timeouts_shorten_sets_and_conntrack_entries() -> None:
    ruleset = router_ruleset(
        "address-restricted", "198.19.5.0/24", "198.19.5.2", RouterOptions(udp_timeout_s=3, tcp_timeout_s=40)
    )
    assert "policy = { unreplied : 3, replied : 3 };" in ruleset
    assert "policy = { established : 40 };" in ruleset
    assert 'meta l4proto udp ct timeout set "udp_mapping"' in ruleset
    assert 'meta l4proto tcp ct timeout set "tcp_mapping"' in ruleset
    assert "set adf_udp {\n    type ipv4_addr . inet_service; flags dynamic,timeout; timeout 3s;" in ruleset
    assert "set adf_tcp {\n    type ipv4_addr . inet_service; flags dynamic,timeout; timeout 40s;" in ruleset


@pytest.mark.parametrize("nat", list(BEHAVIOUR))
def test_hairpin_rules(nat: str) -> None:
    off = router_ruleset(nat, "198.19.4.0/24", "198.19.4.2")  # type: ignore[arg-type]
    on = router_ruleset(nat, "198.19.4.0/24", "198.19.4.2", RouterOptions(hairpin=True, wan_ip="198.18.0.4"))  # type: ignore[arg-type]
    assert 'iifname "lan" oifname "lan"' not in off
    assert 'iifname "lan" oifname "lan" ct status dnat accept' in on
    for proto in ("udp", "tcp"):
        assert f'iifname "lan" ip daddr 198.18.0.4 {proto} dport @hairpin_{proto} dnat to 198.19.4.2' in on
    snat = next(line.strip() for line in on.splitlines() if "snat to 198.18.0.4" in line)
    assert snat.endswith("fully-random") == (nat == "symmetric"), (
        "a hairpinned flow gets a mapping of its own kind"
    )
    with pytest.raises(ValueError, match="WAN address"):
        RouterOptions(hairpin=True)


def test_loss_rules_drop_ipv4_at_a_links_ingress_silently() -> None:
    rules = link_loss_ruleset("eth0", 12.5)
    assert rules.startswith("table netdev vpsloss {")
    assert 'type filter hook ingress device "eth0" priority filter; policy accept;' in rules
    assert "meta protocol ip numgen random mod 10000 < 1250 drop" in rules
    assert "output" not in rules, "no drop on the sender's own output path (it would see EPERM)"
    assert link_loss_ruleset("d4", 1, table="vpsloss_d4").startswith("table netdev vpsloss_d4 {")
    for bad in (0, 100, -1):
        with pytest.raises(ValueError, match="loss"):
            link_loss_ruleset("eth0", bad)


def test_plan_puts_loss_at_both_ends_of_a_lossy_link() -> None:
    topo = parse_topology(
        _topo("{name: p, loss_percent: 5}") + "  - {name: n, role: nat, nat: symmetric, loss_percent: 7}\n"
    )
    plan = make_plan(topo, "vps", 200)
    assert 'device "eth0"' in _node_ruleset(plan, plan.node("p"))
    assert "vpsloss" not in _node_ruleset(plan, plan.node("reg"))
    assert set(_far_end_loss_devices(plan)) == {("vps-inet", "d2", 5.0), ("vps-r-n", "lan", 7.0)}


def test_double_nat_plan() -> None:
    topo = parse_topology(_topo("{name: n, role: nat, nat: full-cone, carrier_nat: symmetric}"))
    n = make_plan(topo, "vps", 200).node("n")
    assert (n.carrier_ns, n.carrier_lan_ip, n.router_wan_ip) == ("vps-c-n", "198.18.2.1", "198.18.2.2")
    assert (n.wan_ip, n.public_ip, n.data_ip, n.router_ns) == (
        "198.18.0.2",
        "198.18.0.2",
        "198.19.2.2",
        "vps-r-n",
    )
    assert "vps-c-n" in make_plan(topo, "vps", 200).namespaces
    single = make_plan(parse_topology(_topo("{name: n, role: nat, nat: full-cone}")), "vps", 200).node("n")
    assert (single.carrier_ns, single.router_wan_ip) == (None, None)


_NATS = list(BEHAVIOUR)
_ORDER = ["endpoint-independent", "address-dependent", "address-and-port-dependent"]


@given(home=st.sampled_from(_NATS), carrier=st.sampled_from(_NATS))
def test_double_nat_shows_the_stricter_of_each_behaviour(home: str, carrier: str) -> None:
    (m1, f1), (m2, f2) = BEHAVIOUR[home], BEHAVIOUR[carrier]  # type: ignore[index]
    mapping, filtering = BEHAVIOUR[combined_nat(home, carrier)]  # type: ignore[arg-type]
    assert mapping == max(m1, m2, key=_ORDER.index)
    assert filtering == max(f1, f2, key=_ORDER.index)
    assert combined_nat(home, "none") == home  # type: ignore[arg-type]


def test_record_lists_conditions_as_data() -> None:
    from pytest_vpstest.lab.netlab import field_conditions

    topo = parse_topology(
        _topo("{name: p, loss_percent: 5}")
        + "  - {name: n, role: nat, nat: full-cone, carrier_nat: symmetric, mapping_timeout: {udp_s: 9}}\n"
        + "  - {name: q, role: nat, nat: symmetric}\n"
    )
    assert field_conditions(make_plan(topo, "vps", 200)) == {
        "p": {"loss_percent": 5.0},
        "n": {"mapping_timeout": {"udp_s": 9}, "carrier_nat": "symmetric", "home_nat": "full-cone"},
    }


@pytest.mark.parametrize("router", ["r-n", "c-n"])
def test_a_node_named_like_a_router_namespace_is_refused(router: str) -> None:
    topo = parse_topology(
        _topo("{name: n, role: nat, nat: full-cone, carrier_nat: symmetric}") + f"  - {{name: {router}}}\n"
    )
    with pytest.raises(ConfigError, match=f"namespace vps-{router} would be both"):
        make_plan(topo, "vps", 200)
