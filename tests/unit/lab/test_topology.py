"""Lab topologies load from YAML into validated data: the builtin ``full`` is the ten-node fleet,
``small`` still covers direct, hole-punched and relayed connections, and every mistake in a user's
file is one line naming the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_vpstest.errors import ConfigError
from pytest_vpstest.lab.topology import Shaping, load_topology, parse_topology


def test_full_is_the_ten_node_fleet() -> None:
    topo = load_topology("full")
    assert [(n.name, n.role, n.nat) for n in topo.nodes] == [
        ("saorsa-1", "registry", "none"),
        ("saorsa-2", "bootstrap", "none"),
        ("saorsa-3", "bootstrap", "none"),
        ("saorsa-4", "nat", "full-cone"),
        ("saorsa-5", "nat", "address-restricted"),
        ("saorsa-6", "nat", "port-restricted"),
        ("saorsa-7", "test", "none"),
        ("saorsa-8", "test", "none"),
        ("saorsa-9", "test", "none"),
        ("saorsa-10", "nat", "symmetric"),
    ]
    assert topo.node("saorsa-8").shaping == Shaping(rate_mbit=50, burst_kbit=512)
    assert topo.node("saorsa-7").shaping is None
    assert topo.number("saorsa-10") == 10


def test_small_covers_every_connection_method() -> None:
    topo = load_topology("small")
    roles = [n.role for n in topo.nodes]
    assert roles.count("registry") == 1 and roles.count("bootstrap") == 1
    public_peers = [n for n in topo.nodes if n.nat == "none" and n.role != "registry"]
    natted = [n for n in topo.nodes if n.natted]
    # direct needs two public peers; a hole punch needs a cone-type NAT (symmetric would only relay).
    assert len(public_peers) >= 2
    assert [n.nat for n in natted] == ["port-restricted"]


def test_user_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "nodes:\n"
        "  - {name: reg, role: registry}\n"
        "  - {name: a, role: nat, nat: symmetric, shaping: {rate_mbit: 10}}\n"
        "  - {name: b, notes: plain}\n"
    )
    topo = load_topology(str(path))
    assert topo.name == "mine" and topo.path == path
    assert topo.node("a").shaping == Shaping(rate_mbit=10.0)
    assert topo.node("b").role == "test" and topo.node("b").notes == "plain"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("nodes: []\n", "key 'nodes': 'nodes' must be a non-empty list"),
        ("nodes:\n  - {name: r, role: registry}\n  - {name: x, role: boss}\n",
         ":3, key 'role': node x: unknown role 'boss' (allowed: registry, bootstrap, nat, test)"),
        ("nodes:\n  - {name: r, role: registry}\n  - {name: x, role: nat, nat: cone}\n",
         ":3, key 'nat': node x: unknown NAT type 'cone'"),
        ("nodes:\n  - {name: r, role: registry}\n  - {name: x, role: nat}\n",
         "key 'nat': node x: role 'nat' and a NAT type other than 'none' go together"),
        ("nodes:\n  - {name: r, role: registry, colour: red}\n", ":2, key 'colour': unknown key"),
        ("nodes:\n  - {name: r, role: registry}\n  - {name: r}\n", "duplicate node name 'r'"),
        ("nodes:\n  - {name: a}\n", "exactly one node must have role 'registry'"),
        ("nodes:\n  - {name: r, role: registry}\n  - {name: '../x'}\n", "is not a safe identifier"),
        ("nodes:\n  - {name: r, role: registry}\n  - {name: x, shaping: {rate_mbit: -1}}\n",
         "key 'rate_mbit': node x: rate_mbit must be a positive number"),
        ("nodes:\n  - {name: r, role: registry}\n  - {name: x, shaping: {burst_kbit: 5}}\n",
         "shaping needs rate_mbit"),
        ("nodes:\n  - {name: r, role: registry, nat: symmetric}\n", "role 'nat' and a NAT type"),
        ("schema_version: 2\nnodes:\n  - {name: r, role: registry}\n", "unsupported schema_version 2"),
        ("nodes: [\n", "mine.yaml:2:"),
        ("- a\n- b\n", "a topology is a mapping"),
    ],
)  # fmt: skip
def test_invalid_topologies_name_file_line_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_topology(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert fragment in message


def test_missing_topology_file() -> None:
    allowed = r"\(allowed: full, small, scale:N, PATH\)"
    with pytest.raises(ConfigError, match=r"no topology file 'nope.yaml' " + allowed):
        load_topology("nope.yaml")


def test_parse_without_a_path_uses_a_default_name() -> None:
    topo = parse_topology("nodes:\n  - {name: r, role: registry}\n")
    assert topo.name == "custom" and topo.path is None
