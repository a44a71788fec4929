"""The NAT types have one home: names, rank, labels and expected rates agree wherever they are used."""

from __future__ import annotations

import typing

from pytest_vpstest.config import NAT_TYPES as CONFIG_NAT_TYPES
from pytest_vpstest.lab.agent.registry import NAT_LABELS
from pytest_vpstest.nat_types import NAT_TYPES, NatType, nat_info, nat_rank
from pytest_vpstest.plugin.pairs import nat_group_key


def test_the_literal_and_the_tuple_name_the_same_types_and_config_re_exports_them() -> None:
    assert set(typing.get_args(NatType)) == set(NAT_TYPES)
    assert CONFIG_NAT_TYPES is NAT_TYPES


def test_rank_is_easiest_first_and_unknown_sorts_last() -> None:
    assert [nat_rank(n) for n in NAT_TYPES] == list(range(len(NAT_TYPES)))
    assert nat_rank("full-cone") < nat_rank("symmetric")
    assert nat_rank("carrier-grade?") == len(NAT_TYPES)


def test_expected_punch_rates_fall_as_types_get_harder() -> None:
    rates = [nat_info(n).expected_punch_rate for n in NAT_TYPES if n != "none"]
    assert nat_info("none").expected_punch_rate is None
    assert rates == sorted(rates, reverse=True)
    assert nat_info("full-cone").expected_punch_rate == 95.0
    assert nat_info("symmetric").expected_punch_rate == 70.0


def test_pair_groups_name_the_easier_type_first() -> None:
    assert nat_group_key("symmetric", "none") == "none~symmetric"
    assert nat_group_key("port-restricted", "full-cone") == "full-cone~port-restricted"


def test_the_agent_may_report_every_type_the_harness_names() -> None:
    assert set(NAT_TYPES) <= set(NAT_LABELS)
