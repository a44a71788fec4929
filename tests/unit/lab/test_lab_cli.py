"""``vpstest lab`` parses its options (prefix validated before anything runs), chooses the flavour
as documented, and reports a missing lab as a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_vpstest import lab
from pytest_vpstest.cli import build_parser, main
from pytest_vpstest.errors import LabError


def test_up_options() -> None:
    args = build_parser().parse_args(
        [
            "lab",
            "up",
            "--topology",
            "small",
            "--flavour",
            "loopback",
            "--prefix",
            "ab1",
            "--lab-dir",
            "/tmp/x",
        ]
    )
    assert (args.topology, args.flavour, args.prefix, args.lab_dir) == (
        "small",
        "loopback",
        "ab1",
        Path("/tmp/x"),
    )
    defaults = build_parser().parse_args(["lab", "up"])
    assert (defaults.topology, defaults.flavour, defaults.prefix, defaults.lab_dir) == (
        "full",
        None,
        "vps",
        None,
    )


@pytest.mark.parametrize("bad", ["toolong", "Vps", "a-b"])
def test_bad_prefix_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["lab", "down", "--prefix", bad])
    assert info.value.code == 2
    assert "must be 1-5 lowercase letters or digits" in capsys.readouterr().err


def test_status_without_a_lab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "status", "--prefix", "zz9", "--lab-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"vpstest: error: no lab 'zz9' in {tmp_path}; start one with 'vpstest lab up --prefix zz9'"


def test_flavour_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_vpstest.lab import netns

    monkeypatch.setattr(netns, "netns_available", lambda: (False, "not running as root"))
    assert lab.choose_flavour(None) == "loopback"
    assert lab.choose_flavour("loopback") == "loopback"
    with pytest.raises(LabError, match=r"not running as root.*--flavour loopback"):
        lab.choose_flavour("netns")
    monkeypatch.setattr(netns, "netns_available", lambda: (True, ""))
    assert lab.choose_flavour(None) == "netns"
    assert lab.choose_flavour("loopback") == "loopback"
