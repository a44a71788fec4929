"""Shared helpers for the lab tier: one real lab per test module, real ssh, commands in namespaces."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_vpstest import lab
from pytest_vpstest.lab.netns import netns_available
from pytest_vpstest.lab.plan import check_prefix
from pytest_vpstest.lab.record import LabRecord, NodeRecord

NETNS_SKIP = "needs root and network namespaces: run as root, or use `vpstest lab up --flavour loopback`"


def netns_skip_reason() -> str | None:
    ok, why = netns_available()
    return None if ok else f"{NETNS_SKIP} ({why})"


requires_netns = pytest.mark.skipif(netns_skip_reason() is not None, reason=netns_skip_reason() or "")


@dataclass
class Lab:
    """A running lab and ways to act inside it."""

    record: LabRecord
    dir: Path

    def node(self, name: str) -> NodeRecord:
        return next(n for n in self.record.nodes if n.name == name)

    def ssh_argv(self, name: str, command: str, *, known_hosts: Path | None = None) -> list[str]:
        n = self.node(name)
        user = "root" if self.record.flavour == "netns" else _current_user()
        return [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts or self.dir / 'known_hosts'}",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
            str(self.dir / "id_ed25519"),
            "-p",
            str(n.port),
            f"{user}@{n.host}",
            command,
        ]

    def ssh(
        self, name: str, command: str, *, check: bool = True, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.ssh_argv(name, command, **kw), capture_output=True, text=True, timeout=30)
        if check and proc.returncode != 0:
            raise AssertionError(f"ssh {name} {command!r} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def in_ns(self, ns: str, argv: list[str], *, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
        )

    def python_in(
        self, ns: str, code: str, *args: str, timeout: float = 20
    ) -> subprocess.CompletedProcess[str]:
        return self.in_ns(ns, [sys.executable, "-c", code, *args], timeout=timeout)


def _current_user() -> str:
    import getpass

    return getpass.getuser()


def worker_prefix(base: str) -> str:
    """``base`` plus the xdist worker number, so labs of parallel workers never collide. Bases of up to
    three characters stay readable (``vta`` -> ``vta0``); longer ones, or any with a session tag, become
    ``v`` + a 4-digit hash."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw")[2:]
    name = f"{base}{worker}"
    # VPSTEST_TEST_LAB_TAG separates the labs of test sessions that run at the same time on one machine.
    tag = os.environ.get("VPSTEST_TEST_LAB_TAG", "")
    if tag or len(name) > 5:
        name = f"{tag}{name}"
        name = f"v{zlib.crc32(name.encode()) & 0xFFFF:04x}"
    return check_prefix(name)


def lab_fixture(
    base: str, topology: str = "full", flavour: lab.Flavour = "netns"
) -> Callable[..., Iterator[Lab]]:
    """A module-scoped fixture that brings up one lab (prefix ``base`` + xdist worker number) and
    removes it afterwards. Under xdist each worker running tests of the module gets its own lab."""

    @pytest.fixture(scope="module")
    def _lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
        if flavour == "netns" and (reason := netns_skip_reason()):
            pytest.skip(reason)
        prefix = worker_prefix(base)
        where = tmp_path_factory.mktemp(f"lab-{prefix}")
        record = lab.up(topology, flavour, prefix, where)
        try:
            yield Lab(record=record, dir=where)
        finally:
            lab.down(prefix, where)

    return _lab


@contextlib.contextmanager
def reflector_pair(lab_: Lab, first: str, second: str, ports: tuple[int, int]) -> Iterator[tuple[str, str]]:
    """RFC 5780-style reflectors (``lab.natcheck serve``) on two public nodes, each naming the other
    as its alternate address; yields their data addresses and stops both afterwards."""
    a, b = lab_.node(first), lab_.node(second)
    procs = []
    for me, alt in ((a, b), (b, a)):
        argv = ["ip", "netns", "exec", str(me.ns), sys.executable, "-m", "pytest_vpstest.lab.natcheck",
                "serve",
                "--bind", me.data_ip, "--alt", alt.data_ip, "--ports", f"{ports[0]},{ports[1]}",
                "--lifetime", "300"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        for p in procs:
            assert p.stdout is not None
            assert "reflector" in p.stdout.readline()
        yield a.data_ip, b.data_ip
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=5)
            if p.stdout:
                p.stdout.close()
