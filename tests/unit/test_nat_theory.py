from __future__ import annotations

import pytest

from pytest_vpstest.nat_theory import (
    EXPECTED_RATES,
    expected_failure,
    group_target,
    groups,
    may_fail,
    split_group,
)
from pytest_vpstest.plugin.pairs import nat_group_key


@pytest.mark.parametrize(
    ("a", "b"),
    [("symmetric", "symmetric"), ("symmetric", "port-restricted"), ("port-restricted", "symmetric")],
)
def test_punch_through_symmetric_and_port_filtering_is_expected_to_fail(a: str, b: str) -> None:
    reason = expected_failure(a, b, "holepunch")
    assert reason is not None and "symmetric" in reason


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("symmetric", "full-cone"),
        ("address-restricted", "symmetric"),
        ("none", "symmetric"),
        ("port-restricted", "port-restricted"),
        ("full-cone", "full-cone"),
    ],
)
def test_other_punches_are_expected_to_work(a: str, b: str) -> None:
    assert expected_failure(a, b, "holepunch") is None


def test_relays_never_and_direct_dials_into_filtering_nats_are_expected_to_fail() -> None:
    assert expected_failure("symmetric", "symmetric", "relay") is None
    assert expected_failure("none", "full-cone", "direct") is None
    assert expected_failure("symmetric", "none", "direct") is None
    assert "symmetric" in (expected_failure("none", "symmetric", "direct") or "")
    for nat in ("address-restricted", "port-restricted"):
        assert expected_failure("none", nat, "direct") is None
        assert nat in (may_fail("none", nat, "direct") or "")
    assert may_fail("none", "symmetric", "direct") is None and may_fail("none", "full-cone", "direct") is None


def test_group_targets_use_the_harder_side() -> None:
    assert group_target("full-cone~symmetric") == 70.0
    assert group_target("none~full-cone") == 95.0
    assert group_target("address-restricted~port-restricted") == 85.0
    assert group_target("symmetric~symmetric") is None
    assert group_target("full-cone~carrier-grade") is None


def test_groups_are_spelled_as_the_pairs_module_spells_them() -> None:
    for g in groups():
        a, b = split_group(g)
        assert nat_group_key(b, a) == g
    assert len(groups()) == len(EXPECTED_RATES) * (len(EXPECTED_RATES) + 1) // 2 - 1


def test_a_group_without_a_tilde_is_refused() -> None:
    with pytest.raises(ValueError, match="joined by"):
        split_group("full-cone")
