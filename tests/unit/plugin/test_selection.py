"""``--vps-only-nodes``: exact node names, not substrings; unknown names named in one line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_vpstest.errors import ConfigError
from pytest_vpstest.plugin.pairs import Pair
from pytest_vpstest.plugin.selection import item_nodes, parse_node_selection, split_by_nodes


@dataclass
class CallSpec:
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Item:
    name: str
    callspec: CallSpec | None = None
    suite: bool = True


def test_a_pair_selects_by_its_exact_ends() -> None:
    items = [
        Item("a", CallSpec({"pair": Pair("n1", "p1")})),
        Item("b", CallSpec({"pair": Pair("n10", "p1")})),
        Item("c", CallSpec({"pair": Pair("p1", "n1", "relay")})),
        Item("d", CallSpec({"publisher": "n1"})),
        Item("e", CallSpec({"publisher": "n11"})),
        Item("crdt"),  # a fleet-wide suite test names no node
        Item("other", suite=False),  # not a suite test: untouched
    ]
    keep, drop = split_by_nodes(items, {"n1"}, lambda i: i.suite)
    assert [i.name for i in keep] == ["a", "c", "d", "other"]
    assert [i.name for i in drop] == ["b", "e", "crdt"]
    assert item_nodes({"pair": Pair("x", "y"), "other": 3}) == {"x", "y"}


def test_names_are_checked_against_the_inventory() -> None:
    assert parse_node_selection(" n1, n10 ,", ("n1", "n10", "p1")) == {"n1", "n10"}
    with pytest.raises(ConfigError) as err:
        parse_node_selection("n1,n3,zz,n3", ("n1", "n10"))
    message = str(err.value)
    assert "unknown node(s) n3, zz" in message and "\n" not in message
    with pytest.raises(ConfigError, match="no node named"):
        parse_node_selection(" , ", ("n1",))
