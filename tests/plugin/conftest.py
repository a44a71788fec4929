"""Plugin-tier helpers: a fake fleet (local commands behind the SessionPool seam) for pytester runs."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent

INVENTORY = """\
schema_version: 1
connect_timeout: 5
nodes:
  - {name: reg, host: 127.0.0.1, role: registry, service_manager: process}
  - {name: p1, host: 127.0.0.1, role: test, service_manager: process, p2p_address: 198.18.0.11}
  - {name: p2, host: 127.0.0.1, role: test, service_manager: process, p2p_address: 198.18.0.12}
  - {name: n1, host: 127.0.0.1, role: nat, nat: port-restricted, service_manager: process,
     p2p_address: 198.19.1.2}
  - {name: n2, host: 127.0.0.1, role: nat, nat: symmetric, service_manager: process, p2p_address: 198.19.2.2}
"""


def config_text(agent: Path, state_dir: Path, extra: str = "") -> str:
    a = str(agent)
    return (
        textwrap.dedent(f"""\
        project: demo
        workspace: .
        inventory: inventory.yaml
        state_dir: {state_dir}
        build: {{command: "true", artifact: agent.bin}}
        probes:
          status: "sh {a} status {{node}}"
          connect: "sh {a} connect {{node}} {{peer}} {{method}}"
          gossip_publish: "sh {a} publish {{node}} {{topic}}"
          gossip_received: "sh {a} received {{node}} {{message_id}}"
          throughput: "sh {a} throughput {{node}} {{peer}} {{seconds}}"
          crdt: "sh {a} crdt {{node}} {{amount}}"
        tests:
          connectivity:
            success_criteria: {{direct: 40, nat_traversed: 40, relay: 100}}
            timeout_seconds: 5
            direct_to_nat: true   # direct dials into a NAT: measured, expected to fail by NAT theory
          nat_traversal:
            nat_cooloff_seconds: 0
            timeout_seconds: 5
          gossip:
            timeout_seconds: 3
          throughput:
            seconds: 1
            timeout_seconds: 5
        """)
        + extra
    )


@dataclass
class FakeFleet:
    pytester: pytest.Pytester
    dir: Path
    config: Path
    state_dir: Path

    def run(self, *args: str) -> pytest.RunResult:
        # xdist workers take the controller's sys.path as it was when xdist was first imported,
        # so runs with -n go through a subprocess that finds fakefleet_plugin via PYTHONPATH.
        run = self.pytester.runpytest_subprocess if "-n" in args else self.pytester.runpytest
        return run(
            "-p",
            "fakefleet_plugin",
            "--pyargs",
            "pytest_vpstest.suites",
            f"--vps-config={self.config}",
            "-p",
            "no:cacheprovider",
            *args,
        )

    def calls(self, name: str) -> int:
        f = self.dir / f"{name}.calls"
        return len(f.read_text().splitlines()) if f.exists() else 0

    def results(self) -> dict[str, Any]:
        found = sorted(self.state_dir.glob("demo/runs/*/results.json"))
        assert len(found) == 1, found
        data: dict[str, Any] = json.loads(found[0].read_text())
        return data

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state_dir / "demo" / "state.json").read_text())
        return data


@pytest.fixture
def fake_fleet(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeFleet]:
    def make(extra_config: str = "", inventory_extra: str = "") -> FakeFleet:
        d = pytester.path
        shutil.copy(HERE / "fakefleet_plugin.py", d / "fakefleet_plugin.py")
        shutil.copy(HERE / "fakeagent.sh", d / "fakeagent.sh")
        shutil.copy(HERE / "fakebatch.py", d / "fakebatch.py")
        (d / "inventory.yaml").write_text(inventory_extra + INVENTORY)
        state = d / "state"
        cfg = d / "vps.yaml"
        cfg.write_text(config_text(d / "fakeagent.sh", state, extra_config))
        pytester.syspathinsert(d)
        monkeypatch.setenv(
            "PYTHONPATH", os.pathsep.join(p for p in (str(d), os.environ.get("PYTHONPATH")) if p)
        )
        monkeypatch.setenv("FAKE_FLEET_DIR", str(d))
        monkeypatch.delenv("VPSTEST_RUNNER_TOKEN", raising=False)
        return FakeFleet(pytester, d, cfg, state)

    return make
