"""The dashboard's two actions on a node: run its tests, roll it back to the previous build.

Both run in a background thread and leave their record in files (``dashboard.files``), so the page
shows them through the same reader as everything else, and after a restart.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_vpstest.config import Inventory, ProjectConfig
from pytest_vpstest.dashboard import files
from pytest_vpstest.errors import VpsTestError
from pytest_vpstest.node_skips import SKIP_FILE, SKIP_NODES_OPTION, nodes_to_skip
from pytest_vpstest.plugin.selection import ONLY_NODES_OPTION
from pytest_vpstest.suite import suites_directory as suites_dir

__all__ = ["ActionRunner", "suites_dir"]


def _count(results: dict[str, Any], key: str) -> int:
    counts = results.get("counts") or results.get("tests") or {}
    value = counts.get(key) if isinstance(counts, dict) else None
    return int(value) if isinstance(value, int) else 0


class ActionRunner:
    """Starts node test runs and rollbacks; ``changed(project)`` is called whenever a record changes."""

    def __init__(self, state_dir: Path, changed: Callable[[str], None]) -> None:
        self.state_dir = Path(state_dir)
        self._changed = changed
        self._busy: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def _claim(self, project: str, node: str) -> None:
        with self._lock:
            if (project, node) in self._busy:
                raise VpsTestError(f"{project}/{node}: an action is already running on this node")
            self._busy.add((project, node))

    def _release(self, project: str, node: str) -> None:
        with self._lock:
            self._busy.discard((project, node))

    def _start(self, name: str, target: Callable[[], None], project: str, node: str) -> None:
        def run() -> None:
            try:
                target()
            finally:
                self._release(project, node)
                self._changed(project)

        t = threading.Thread(target=run, name=name, daemon=True)
        self.threads.append(t)
        t.start()

    # -- run tests ---------------------------------------------------------------------------
    def run_tests(self, config: ProjectConfig, inventory: Inventory, node: str) -> Path:
        """Start the suites' tests of the pairs with ``node`` at one end (``--vps-only-nodes node``: exact,
        where ``-k n1`` would take n10's too); returns the run's directory. Pairs with a node whose
        tests are disabled skip, as in the loop (``--vps-skip-nodes``)."""
        if config.dashboard.tests_mode(node) == "disabled":
            raise VpsTestError(f"{config.project}/{node}: tests are disabled for this node in the config")
        if node not in inventory.names:
            raise VpsTestError(f"{config.project}: no node {node!r} in the inventory")
        if config.path is None or inventory.path is None:
            raise VpsTestError(f"{config.project}: config and inventory files are needed to run tests")
        self._claim(config.project, node)
        try:
            run_dir = files.new_test_run_dir(self.state_dir / config.project, node)
        except BaseException:
            self._release(config.project, node)
            raise
        suites = suites_dir()
        results_path = run_dir / "results.json"
        argv = [
            sys.executable,
            "-m",
            "pytest",
            str(suites),
            "-p",
            "no:cacheprovider",
            "-v",
            "-rs",  # why tests skipped (a node unhealthy, disabled, not deployed), in the output shown
            "-o",
            "addopts=",
            "--rootdir",
            str(suites),
            ONLY_NODES_OPTION,
            node,
            "--vps-config",
            str(config.path),
            "--vps-nodes",
            str(inventory.path),
            "--vps-project",
            config.project,
            "--vps-state-dir",
            str(self.state_dir),
            "--vps-results-json",
            str(results_path),
            "--vps-skip-build",
            "--vps-skip-deploy",
        ]
        # Nodes never to test, as in the loop; Run tests is itself the manual run of manual nodes.
        mode = config.dashboard.tests_mode
        disabled = nodes_to_skip(inventory.names, {}, lambda n: "disabled" if mode(n) == "disabled" else "")
        if disabled:
            files.write_json_atomic(run_dir / SKIP_FILE, disabled)
            argv += [SKIP_NODES_OPTION, str(run_dir / SKIP_FILE)]
        timeout = config.dashboard.test_timeout_seconds
        status: dict[str, Any] = {
            "node": node,
            "state": "running",
            "started": time.time(),
            "pid": os.getpid(),
            "timeout_seconds": timeout,
            "results": str(results_path),
        }
        files.write_json_atomic(run_dir / "status.json", status)
        self._changed(config.project)

        def work() -> None:
            env = {
                k: v for k, v in os.environ.items() if k not in ("VPSTEST_LOOP_STATE", "VPSTEST_RUNNER_TOKEN")
            }
            with (run_dir / "output.log").open("wb") as out:
                try:
                    proc = subprocess.Popen(
                        argv,
                        cwd=config.workspace,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                except OSError as exc:
                    status.update(state="error", error=str(exc), finished=time.time())
                    files.write_json_atomic(run_dir / "status.json", status)
                    return
                try:
                    rc = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    out.write(f"\n[dashboard] stopped after the {timeout:g} s test timeout\n".encode())
                    status.update(state="timeout", finished=time.time(), exit_code=None)
                    files.write_json_atomic(run_dir / "status.json", status)
                    return
            results = files.read_json_object(results_path)
            passed = _count(results, "passed")
            failed = _count(results, "failed")
            ok = rc == 0 and bool(results.get("passed", True))
            status.update(
                state="passed" if ok else "failed",
                finished=time.time(),
                exit_code=rc,
                passed=passed,
                failed=failed if failed or ok else max(failed, 1),
            )
            files.write_json_atomic(run_dir / "status.json", status)

        self._start(f"tests-{node}", work, config.project, node)
        return run_dir

    # -- rollback ----------------------------------------------------------------------------
    def rollback(
        self, config: ProjectConfig, inventory: Inventory, node: str, after: Callable[[], None] | None = None
    ) -> None:
        """Restore the node's previous build (deploy keeps it) and restart it, in the background.

        ``after`` runs once the rollback succeeded (the auto test run of ``auto`` nodes).
        """
        if node not in inventory.names:
            raise VpsTestError(f"{config.project}: no node {node!r} in the inventory")
        self._claim(config.project, node)
        pdir = self.state_dir / config.project

        def work() -> None:
            from pytest_vpstest.fleet.deploy import rollback
            from pytest_vpstest.fleet.remote import SessionPool

            pool = SessionPool(inventory)
            lines: list[str] = []
            try:
                report = rollback(pool, inventory, config, [node], log=lines.append)
                d = report.per_node.get(node)
                ok, error = (bool(d.ok), d.error) if d is not None else (False, "no report")
            except VpsTestError as exc:
                ok, error = False, str(exc)
            finally:
                pool.close_all()
            files.append_rollback(
                pdir, {"node": node, "time": time.time(), "ok": ok, "error": error, "log": lines[-20:]}
            )
            if ok and after is not None:
                self._changed(config.project)
                self._release(config.project, node)
                after()

        self._start(f"rollback-{node}", work, config.project, node)


