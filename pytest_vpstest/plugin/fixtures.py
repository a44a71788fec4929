"""Fixtures of the plugin and the run they share.

``RunContext`` is everything a run knows once its config is loaded (built by ``plugin.py`` in
``pytest_configure``, the same on the controller and every xdist worker). Build and deploy run
**once per run**, even under xdist: the first process to take an ``fcntl`` lock in the run
directory does the work and leaves a JSON marker with the result; the others read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_vpstest._files import write_json_atomic
from pytest_vpstest.node_skips import unhealthy_reason
from pytest_vpstest.suite import FULL_SUITE

if TYPE_CHECKING:  # config (YAML) and the SSH stack load only once the plugin is configured
    from pytest_vpstest.config import Inventory, ProjectConfig, SuiteConfig
    from pytest_vpstest.fleet.node import NodePlan
    from pytest_vpstest.fleet.probes import ProbeRunner
    from pytest_vpstest.fleet.remote import Pool, Session
    from pytest_vpstest.suite import Measurement

__all__ = [
    "DEFAULT_NODE_CONCURRENCY",
    "NOT_CONFIGURED",
    "RUN_KEY",
    "Recorder",
    "RunContext",
    "build_artifact",
    "default_build",
    "default_deploy",
    "default_fetch_logs",
    "deployment",
    "failed_nodes",
    "fleet",
    "mark_unhealthy",
    "nat_skip_reason",
    "node",
    "node_pool",
    "once",
    "parametrize",
    "probe",
    "run_of",
    "skip_if_not_deployed",
    "skip_if_unreachable",
    "skipped_nodes",
    "vps_config",
    "vps_record",
    "vps_run",
]

RUN_KEY = pytest.StashKey["RunContext"]()
# Probes touching one node at a time. A pair that must fail holds K slots on both its nodes for a whole
# timeout, and so does the reverse pair: with K = 3 both directions wait together (6 slots) and the
# node's other probes still run.
DEFAULT_NODE_CONCURRENCY = 8
NOT_CONFIGURED = "pytest-vpstest is not configured: pass --vps-config (or set vps_config in the ini file)"


@dataclass
class RunContext:
    """One pytest run of the suites against one fleet."""

    config_path: Path
    project_config: ProjectConfig
    inventory: Inventory
    inventory_path: Path | None
    run_id: str
    state_dir: Path
    project: str
    focus: str = FULL_SUITE
    criteria: str = "threshold"
    criteria_expr: str | None = None
    proof: str | None = None
    attempts: int | None = None
    skip_build: bool = False
    skip_deploy: bool = False
    results_json: Path | None = None
    node_concurrency: int = DEFAULT_NODE_CONCURRENCY
    # Nodes not to test, handed over by the loop (``--vps-skip-nodes``): {node: skip reason}.
    skip_nodes: dict[str, str] = field(default_factory=dict)
    # ``--vps-only-nodes``: only the suite tests naming one of these nodes run (None: all).
    only_nodes: frozenset[str] | None = None
    started_at: float = field(default_factory=time.time)
    is_worker: bool = False
    # Filled lazily per process.
    deployment_info: dict[str, Any] | None = None

    @property
    def project_dir(self) -> Path:
        return self.state_dir / self.project

    @property
    def run_dir(self) -> Path:
        return self.project_dir / "runs" / self.run_id

    def suite(self, name: str) -> SuiteConfig:
        """The ``tests.<name>`` settings (a suite's name or its focus spelling)."""
        return self.project_config.suite(name)

    def suite_extra(self, name: str, key: str, default: Any) -> Any:
        return dict(self.suite(name).extra).get(key, default)

    def attempts_for(self, suite: str) -> int:
        return max(1, self.attempts if self.attempts is not None else self.suite(suite).attempts)

    def reproduce(self) -> str:
        parts = ["pytest", "--pyargs", "pytest_vpstest.suites", f"--vps-config={self.config_path}"]
        if self.inventory_path is not None:
            parts.append(f"--vps-nodes={self.inventory_path}")
        parts += [f"--vps-project={self.project}", f"--vps-focus={self.focus}"]
        parts.append(f"--vps-criteria={self.criteria}")
        if self.criteria_expr:
            parts.append(f"--vps-criteria-expr={json.dumps(self.criteria_expr)}")
        if self.attempts is not None:
            parts.append(f"--vps-attempts={self.attempts}")
        if self.only_nodes is not None:
            parts.append(f"--vps-only-nodes={','.join(sorted(self.only_nodes))}")
        return " ".join(parts)


def run_of(config: pytest.Config) -> RunContext | None:
    return config.stash.get(RUN_KEY, None)


def _require_run(request: pytest.FixtureRequest) -> RunContext:
    run = run_of(request.config)
    if run is None:
        pytest.skip(NOT_CONFIGURED)
    return run


# --------------------------------------------------------------------------------------------
# Once per run, across processes


def once(run_dir: Path, name: str, produce: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``produce`` in exactly one process of the run; every caller gets its JSON result.

    A ``produce`` that raises is recorded as ``{"ok": False, "error": ...}`` so no other worker
    retries it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / f"{name}.json"
    with open(run_dir / f"{name}.lock", "ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if marker.exists():
                loaded: dict[str, Any] = json.loads(marker.read_text(encoding="utf-8"))
                return loaded
            try:
                result = produce()
            except Exception as exc:  # recorded for every worker, shown in the failing setup
                result = {
                    "ok": False,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(limit=5),
                }
            result.setdefault("pid", os.getpid())
            write_json_atomic(marker, result)
            return result
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def vps_run(request: pytest.FixtureRequest) -> RunContext:
    """The run: config, inventory, run id, directories (skips when the plugin is not configured)."""
    return _require_run(request)


@pytest.fixture(scope="session")
def vps_config(vps_run: RunContext) -> ProjectConfig:
    """The validated project config."""
    return vps_run.project_config


@pytest.fixture(scope="session")
def fleet(vps_run: RunContext) -> Inventory:
    """The validated inventory of nodes."""
    return vps_run.inventory


@pytest.fixture(scope="session")
def node_pool(request: pytest.FixtureRequest, vps_run: RunContext) -> Iterator[Pool]:
    """One cached SSH session per node for this process; all closed at session end."""
    pool: Pool = request.config.hook.pytest_vpstest_make_pool(
        inventory=vps_run.inventory, project_config=vps_run.project_config
    )
    try:
        yield pool
    finally:
        pool.close_all()


@pytest.fixture(scope="session")
def node(node_pool: Pool) -> Callable[[str], Session]:
    """``node("saorsa-4")`` → that node's cached session (``run``, ``put``, ``get``)."""
    return lambda name: node_pool.session(name)


def _format_diagnostics(result: Mapping[str, Any]) -> str:
    lines = [str(d) for d in result.get("errors", [])][:20]
    if result.get("error"):
        lines.insert(0, str(result["error"]))
    return "\n".join(lines) or "no diagnostics"


@pytest.fixture(scope="session")
def build_artifact(request: pytest.FixtureRequest, vps_run: RunContext) -> str | None:
    """The local build's artifact path, built once per run; None with ``--vps-skip-build``.

    A failed build fails session setup with the parsed errors.
    """
    if vps_run.skip_build or vps_run.project_config.build is None:
        return None
    result = once(vps_run.run_dir, "build", lambda: request.config.hook.pytest_vpstest_build(run=vps_run))
    if not result.get("ok"):
        pytest.fail(f"build failed ({vps_run.config_path}):\n{_format_diagnostics(result)}", pytrace=False)
    artifact = result.get("artifact")
    return str(artifact) if artifact else None


@pytest.fixture(scope="session")
def deployment(
    request: pytest.FixtureRequest, vps_run: RunContext, build_artifact: str | None, node_pool: Pool
) -> dict[str, Any]:
    """Deploy once per run: ``{"deployed": {node: {"bin"}}, "failed": {node: reason}}``.

    With ``--vps-skip-deploy`` every node is taken as already running the software. Fewer than
    half the nodes deployed fails session setup.
    """
    if vps_run.skip_deploy:
        result: dict[str, Any] = {"ok": True, "skipped": True, "deployed": {}, "failed": {}}
    else:
        result = once(
            vps_run.run_dir,
            "deploy",
            lambda: request.config.hook.pytest_vpstest_deploy(
                run=vps_run, pool=node_pool, artifact=build_artifact
            ),
        )
        if not result.get("ok"):
            failed = result.get("failed") or {}
            details = str(result.get("error") or "") or (
                "; ".join(f"{n}: {why}" for n, why in failed.items()) or _format_diagnostics(result)
            )
            pytest.fail(f"deployment failed: {details}", pytrace=False)
    vps_run.deployment_info = result
    return result


def failed_nodes(run: RunContext) -> dict[str, str]:
    """Nodes whose deployment failed in this run (tests touching them skip)."""
    info = run.deployment_info or {}
    return {str(k): str(v) for k, v in (info.get("failed") or {}).items()}


def _deployed_plan(run: RunContext, name: str, artifact: str | None, reported: Mapping[str, Any]) -> NodePlan:
    """Node ``name``'s plan, with the paths a deploy hook reported for it (``bin``, ``install_path``,
    ``log_dir``) taking precedence: a custom ``pytest_vpstest_deploy`` may install elsewhere."""
    from pytest_vpstest.fleet.node import plan_node

    plan = plan_node(run.inventory.node(name), run.project_config, artifact)
    return replace(
        plan,
        binary=str(reported.get("bin") or plan.binary),
        install_path=str(reported.get("install_path") or plan.install_path),
        log_dir=str(reported.get("log_dir") or plan.log_dir),
    )


@pytest.fixture(scope="session")
def probe(
    vps_run: RunContext, build_artifact: str | None, deployment: dict[str, Any], node_pool: Pool
) -> ProbeRunner:
    """A :class:`pytest_vpstest.fleet.probes.ProbeRunner` for the deployed nodes."""
    from pytest_vpstest.fleet.probes import NodeSlots, ProbeRunner

    deployed = deployment.get("deployed") or {}
    plans = {
        n.name: _deployed_plan(vps_run, n.name, build_artifact, deployed.get(n.name) or {})
        for n in vps_run.inventory.nodes
    }
    runner = ProbeRunner(
        transport=node_pool,
        inventory=vps_run.inventory,
        templates=vps_run.project_config.probes,
        plan_for=plans.__getitem__,
        slots=NodeSlots(vps_run.node_concurrency, vps_run.run_dir / "locks"),
        default_timeout=vps_run.suite("connectivity").timeout_seconds,
    )
    _check_status(vps_run, runner)
    return runner


def _check_status(run: RunContext, runner: ProbeRunner) -> None:
    """The ``status`` probe on every deployed peer node, once per run, before any suite test.

    No valid ``ok`` answer anywhere fails session setup with one line (the template is broken,
    not the network); nodes that alone fail are skipped like nodes whose deploy failed. Nodes not to
    test (unhealthy, tests disabled or manual) are not asked; a node that cannot be reached over SSH,
    or whose answer says its agent is not running (``plugin.agent_watch``), becomes unhealthy, and
    nodes that could not be reached are no evidence against the template.
    """
    from pytest_vpstest.plugin.agent_watch import agent_down
    from pytest_vpstest.plugin.pairs import peer_nodes

    already = failed_nodes(run) | skipped_nodes(run)
    names = [n.name for n in peer_nodes(run.inventory) if n.name not in already]
    if not names:
        return

    def status_all() -> dict[str, Any]:
        answers = {}
        for name in names:
            r = runner.status(name)
            answers[name] = {
                "ok": r.ok,
                "reason": r.reason,
                "command": r.command,
                "stderr": r.stderr[-500:],
                "peer_id": r.get("peer_id"),
                "transport_error": r.transport_error,
                "agent_down": agent_down(r),
            }
        reached = [a for a in answers.values() if not a["transport_error"]]
        return {"ok": not reached or any(a["ok"] for a in reached), "answers": answers}

    result = once(run.run_dir, "status", status_all)
    answers: dict[str, dict[str, Any]] = result.get("answers") or {}
    if not result.get("ok"):
        nothing = {"reason": str(result.get("error")), "command": "", "stderr": ""}
        first = next(iter(answers.values()), nothing)
        tail = [line for line in str(first.get("stderr") or "").splitlines() if line.strip()][-1:]
        pytest.fail(
            f"status probe failed on every node ({len(answers)}): {first['reason']}; "
            f"command: {first['command']}{'; stderr: ' + tail[0] if tail else ''} "
            "(run `vpstest contract check` for the whole contract)",
            pytrace=False,
        )
    runner.identities.update(
        {name: str(a["peer_id"]) for name, a in answers.items() if a.get("ok") and a.get("peer_id")}
    )
    info = run.deployment_info if run.deployment_info is not None else {}
    failed = info.setdefault("failed", {})
    for name, answer in answers.items():
        if answer.get("transport_error"):
            mark_unhealthy(run, name, f"unreachable during the run: {answer.get('reason')}")
        elif answer.get("agent_down"):
            # SSH works, the node's agent does not answer: the node's fault, not the software's.
            mark_unhealthy(run, name, f"agent not answering on {name}: status said {answer['agent_down']!r}")
        elif not answer.get("ok"):
            failed[name] = f"status probe: {answer.get('reason')}"
    run.deployment_info = info


@dataclass
class Recorder:
    """Records a suite test's measurement as user properties of its report.

    They travel from xdist workers to the controller with the report, and JUnit XML writes them as
    test-case properties (with ``junit_family=xunit1`` or ``legacy``; xunit2 has no per-test
    properties, so the run's metrics are also written as suite properties at session end).
    Appending to ``user_properties`` directly, rather than through ``record_property``, avoids
    that fixture's warning under xunit2.
    """

    item: pytest.Item

    def __call__(
        self, measurement: Measurement, nodes: tuple[str, ...] = (), **flat: float | str | None
    ) -> None:
        from pytest_vpstest.plugin.aggregate import MEASUREMENT_KEY, NODES_KEY, encode

        props = self.item.user_properties
        props.append((MEASUREMENT_KEY, encode(measurement)))
        if nodes:
            props.append((NODES_KEY, ",".join(nodes)))
        props.extend((key, value) for key, value in flat.items() if value is not None)


@pytest.fixture
def vps_record(request: pytest.FixtureRequest) -> Recorder:
    """``vps_record(measurement, nodes=(...), rate=..)``: attach a measurement to this test's report."""
    return Recorder(request.node)


def nat_skip_reason(inventory: Inventory) -> str | None:
    """Why tests that need NATs cannot run on this inventory, or None when they can."""
    if inventory.lab == "loopback":
        return "needs NAT: the loopback lab has no NAT routers (use the netns lab)"
    if not any(n.nat != "none" for n in inventory.nodes):
        return "needs NAT: no node of the inventory is behind a NAT"
    return None


def skipped_nodes(run: RunContext) -> dict[str, str]:
    """{node: skip reason} of the nodes not to test: those the loop handed over (not Live, tests
    disabled or manual for the node), and those found unreachable during this run (one file per node
    in ``<run dir>/unhealthy/``, shared by every xdist worker)."""
    found = dict(run.skip_nodes)
    with contextlib.suppress(OSError):
        for path in sorted((run.run_dir / "unhealthy").iterdir()):
            if not path.name.startswith("."):
                why = path.read_text(encoding="utf-8").strip() or "unreachable"
                found.setdefault(path.name, unhealthy_reason(path.name, why))
    return found


def mark_unhealthy(run: RunContext, node: str, reason: str) -> None:
    """Record that ``node`` went bad during this run: its remaining pairs skip as unhealthy."""
    from pytest_vpstest._files import write_text_atomic

    where = run.run_dir / "unhealthy"
    where.mkdir(parents=True, exist_ok=True)
    write_text_atomic(where / node, reason.splitlines()[0][:300] + "\n")


def skip_if_not_deployed(run: RunContext, *nodes: str) -> None:
    """Skip a test touching a node not to test (first, with its reason) or whose deployment failed."""
    left_out = skipped_nodes(run)
    reasons = [left_out[n] for n in dict.fromkeys(nodes) if n in left_out]
    if reasons:
        pytest.skip("; ".join(reasons))
    bad = {n: why for n, why in failed_nodes(run).items() if n in nodes}
    if bad:
        pytest.skip("not deployed: " + "; ".join(f"{n} ({why})" for n, why in bad.items()))


def skip_if_unreachable(run: RunContext, results: Any) -> None:
    """When every attempt failed because the node could not be reached over SSH, the node is at
    fault, not the software: mark it unhealthy for the rest of the run and skip this test."""
    attempts = list(results)
    if attempts and all(getattr(r, "transport_error", False) for r in attempts):
        node, reason = attempts[0].node, attempts[-1].reason
        mark_unhealthy(run, node, f"unreachable during the run: {reason}")
        pytest.skip(unhealthy_reason(node, f"unreachable during the run: {reason}"))


def parametrize(
    metafunc: pytest.Metafunc,
    argname: str,
    make: Callable[[RunContext], list[Any]],
    id_of: Callable[[Any], str],
) -> None:
    """Parametrize ``argname`` from the run's inventory; one skipped case when there is nothing to run."""
    if argname not in metafunc.fixturenames:
        return
    run = run_of(metafunc.config)
    if run is None:
        values = [pytest.param(None, marks=pytest.mark.skip(reason=NOT_CONFIGURED), id="not-configured")]
    else:
        items = make(run)
        values = [pytest.param(v, id=id_of(v)) for v in items] or [
            pytest.param(
                None,
                marks=pytest.mark.skip(reason="no node pairs for this suite in the inventory"),
                id="no-pairs",
            )
        ]
    metafunc.parametrize(argname, values)


# --------------------------------------------------------------------------------------------
# Default build / deploy / logs (the plugin's trylast hook implementations call these)


def default_build(run: RunContext) -> dict[str, Any]:
    """Run the configured local build (``build.run_build``; never on a node), its output streamed
    to the ``pytest_vpstest.fleet.build`` logger, and summarise it as JSON for every worker."""
    from pytest_vpstest.fleet.build import run_build

    log = logging.getLogger("pytest_vpstest.fleet.build")
    result = run_build(run.project_config, log=log.info)
    errors = [str(d) for d in result.errors]
    if not result.ok and not errors:
        errors = [result.error or "build failed", *result.output_tail.splitlines()[-20:]]
    return {
        "ok": result.ok,
        "artifact": str(result.artifact) if result.artifact else None,
        "errors": errors,
        "warnings": len(result.warnings),
        "duration": round(result.duration, 3),
        "command": result.command,
    }


def default_deploy(run: RunContext, pool: Pool, artifact: str | None) -> dict[str, Any]:
    """Deploy with ``deploy.deploy`` and summarise per node; fewer than half deployed is not ok."""
    from pytest_vpstest.errors import DeployError
    from pytest_vpstest.fleet import deploy as deploy_mod
    from pytest_vpstest.fleet.node import plan_node

    cfg = run.project_config
    if artifact is None and cfg.build is not None and cfg.build.artifact:
        artifact = str(cfg.workspace / cfg.build.artifact)
    if artifact is None:
        return {
            "ok": False,
            "error": "nothing to deploy: no artifact (configure build.artifact or pass --vps-skip-deploy)",
            "deployed": {},
            "failed": {},
        }
    lines: list[str] = []
    report: deploy_mod.DeployReport | None
    error = ""
    try:
        report = deploy_mod.deploy(pool, run.inventory, cfg, Path(artifact), log=lines.append)
    except DeployError as exc:
        report, error = getattr(exc, "report", None), str(exc)
    if report is None:
        return {"ok": False, "error": error, "deployed": {}, "failed": {}, "log": lines}
    deployed: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for name, d in report.per_node.items():
        if d.ok:
            plan = plan_node(run.inventory.node(name), cfg, artifact)
            deployed[name] = {"bin": plan.binary, "install_path": plan.install_path, "log_dir": plan.log_dir}
        else:
            failed[name] = f"{d.stage_failed}: {d.error}"
    return {"ok": not error, "error": error, "deployed": deployed, "failed": failed, "log": lines[-50:]}


def default_fetch_logs(run: RunContext, pool: Pool, node: str) -> str:
    """The last lines of the node's service log, through its service manager (the paths deploy used)."""
    from pytest_vpstest.fleet.node import plan_node
    from pytest_vpstest.fleet.services import service_manager

    plan = plan_node(run.inventory.node(node), run.project_config)
    manager = service_manager(pool.session(node), install_path=plan.install_path, log_dir=plan.log_dir)
    return manager.logs(plan.service, 500)
