"""Loopback labs of different prefixes get different 127.A.B networks."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from pytest_vpstest.errors import ConfigError
from pytest_vpstest.lab.loopback import loopback_net, node_address


def test_node_addresses_are_loopback_addresses_of_the_labs_network() -> None:
    for prefix in ("vps", "vtf", "v9cbf", "vth", "a1"):
        net = loopback_net(prefix)
        for n in (1, 4, 120):
            address = ipaddress.ip_address(node_address(prefix, n))
            assert address.is_loopback and str(address) == f"{net}.{n}"


def test_prefixes_that_shared_a_network_before_no_longer_do() -> None:
    # 'v9cbf' (a tagged test lab) and 'vth' both had 127.168.0.x: their sshds collided on one port.
    assert loopback_net("v9cbf") != loopback_net("vth")


def test_few_of_many_prefixes_share_a_network() -> None:
    prefixes = ["".join(p) for p in itertools.product("vwx", "abcdefghij", "0123456789")][:300]
    nets = {loopback_net(p) for p in prefixes}
    assert len(nets) >= 295  # 300 prefixes in 32,768 networks: a handful of shared ones at most


def test_a_bad_prefix_is_refused() -> None:
    with pytest.raises(ConfigError):
        loopback_net("Bad Prefix")
