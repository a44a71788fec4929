"""A project's state directory written through the real store and history, for dashboard tests.

No loop runs: ``FakeProject`` commits state documents and transitions with ``StateStore``, records
runs with ``History`` and writes results.json files as the runner and the plugin do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pytest_vpstest.records.history import History, HostRun, RunRecord
from pytest_vpstest.records.store import StateStore

NATS = ("none", "full-cone", "port-restricted", "symmetric")


def iso(epoch: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )


class FakeProject:
    """One project: config + inventory files, state via the store, runs via the history."""

    def __init__(
        self,
        state_dir: Path,
        project: str,
        nodes: Sequence[str],
        *,
        node_tests: Mapping[str, str] | None = None,
        token: str | None = None,
        test_timeout: float | None = None,
        lease_ttl: float = 60.0,
    ) -> None:
        self.state_dir = state_dir
        self.project = project
        self.nodes = list(nodes)
        self.dir = state_dir / project
        self.dir.mkdir(parents=True, exist_ok=True)
        self.files = state_dir.parent / f"files-{project}"
        self.files.mkdir(parents=True, exist_ok=True)
        inv = ["schema_version: 1", "known_hosts: known_hosts", "nodes:"]
        for i, n in enumerate(self.nodes):
            inv += [
                f"  - name: {n}",
                f"    host: 127.0.0.{10 + i % 200}",
                f"    nat: {NATS[i % len(NATS)]}",
                "    service_manager: process",
            ]
        (self.files / "known_hosts").write_text("")
        self.inventory_path = self.files / "inventory.yaml"
        self.inventory_path.write_text("\n".join(inv) + "\n")
        cfg = [
            f"project: {project}",
            "inventory: inventory.yaml",
            f"state_dir: {state_dir}",
            "build: {command: 'true', artifact: dist/agent.pyz}",
        ]
        if node_tests or token or test_timeout:
            cfg.append("dashboard:")
            if test_timeout:
                cfg.append(f"  test_timeout_seconds: {test_timeout}")
            if token:
                cfg.append(f"  token: {token}")
            if node_tests:
                cfg.append("  node_tests:")
                cfg += [f"    {k}: {v}" for k, v in node_tests.items()]
        self.config_path = self.files / "vpstest.yaml"
        self.config_path.write_text("\n".join(cfg) + "\n")
        self.store = StateStore(state_dir, project, lease_ttl=lease_ttl)
        self.lease = self.store.acquire()
        self.state = "IDLE"
        self.doc: dict[str, Any] = {
            "project": project,
            "state": "IDLE",
            "phase": None,
            "timestamps": {"started_at": iso(), "last_state_change": iso()},
            "counters": {"fix_attempts": 0, "build_count": 0, "deploy_count": 0, "test_count": 0},
            "commits": [],
            "test_results": {},
            "nodes": {},
            "logs": [],
            "runner": {"config": str(self.config_path), "inventory": str(self.inventory_path)},
        }
        self._commit(None)

    def _commit(self, transition: dict[str, Any] | None) -> None:
        # Renewed at every write, as a runner's heartbeat would (pass a long lease_ttl for slow setups).
        self.lease = self.store.renew(self.lease)
        self.store.commit(self.lease, self.doc, transition)

    def move(self, to: str, reason: str = "") -> None:
        before, self.state = self.state, to
        self.doc["state"] = to
        self.doc["timestamps"]["last_state_change"] = iso()
        self._commit({"from": before, "to": to, "event": "Test", "reason": reason})

    def set_nodes(self, **fields: Any) -> None:
        for n in self.nodes:
            self.doc["nodes"].setdefault(n, {}).update(fields)
        self._commit(None)

    def set_node(self, node: str, **fields: Any) -> None:
        self.doc["nodes"].setdefault(node, {}).update(fields)
        self._commit(None)

    def record_test(
        self,
        run_id: str,
        per_node: Mapping[str, tuple[int, int, str]],
        pairs: Sequence[Mapping[str, Any]] = (),
        metrics: Mapping[str, Any] | None = None,
        passed: bool = True,
        started: float | None = None,
    ) -> Path:
        """A finished test run: history rows, results.json, the runner's ``last_results``."""
        start = started if started is not None else time.time() - 1
        with History(self.state_dir / "history.sqlite") as h:
            h.record_run(
                RunRecord(
                    id=run_id,
                    project=self.project,
                    started_at=iso(start),
                    finished_at=iso(start + 1),
                    passed=passed,
                    focus="full-suite",
                    criteria="threshold",
                    verdict={"passed": passed, "metrics": {}},
                ),
                [
                    HostRun(
                        host_id=n,
                        started_at=iso(start),
                        finished_at=iso(start + 1),
                        exit_code=int(f > 0),
                        passed=p,
                        failed=f,
                        output=out,
                    )
                    for n, (p, f, out) in per_node.items()
                ],
                metrics or {},
            )
        run_dir = self.dir / "runs" / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        results = {
            "run_id": run_id,
            "passed": passed,
            "pairs": list(pairs),
            "verdict": {
                "passed": passed,
                "criteria": "threshold",
                "checks": [
                    {
                        "metric": "connectivity.direct.rate",
                        "op": ">=",
                        "target": 99,
                        "measured": 97.5,
                        "passed": passed,
                    }
                ],
            },
        }
        path = run_dir / "results.json"
        path.write_text(json.dumps(results))
        self.doc["runner"]["last_results"] = str(path)
        self.doc["test_results"] = {"passed": passed, "last_run": iso()}
        self._commit(None)
        return path
