"""pytest entry point (pytest11): ``--vps-*`` options, ``vps_*`` ini keys, markers, fixtures, hooks.

Inert without ``--vps-config`` (or the ``vps_config`` ini key): no header, no files, no extra hook
calls per test; the fixtures skip with a reason. With a config, a :class:`VpsPlugin` is registered
that feeds test reports to a results collector (on the xdist controller only) and, at session end,
judges the verdict and records it (``results.finish_run``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_vpstest.modes import CRITERIA, PROOFS
from pytest_vpstest.plugin import hookspecs
from pytest_vpstest.plugin.fixtures import (
    DEFAULT_NODE_CONCURRENCY,
    RUN_KEY,
    RunContext,
    build_artifact,
    deployment,
    fleet,
    nat_skip_reason,
    node,
    node_pool,
    probe,
    run_of,
    vps_config,
    vps_record,
    vps_run,
)
from pytest_vpstest.plugin.matrix import matrix_cell, matrix_parts, vps_matrix
from pytest_vpstest.suite import FOCUSES, FULL_SUITE, MARKER, SUITES, find_suite, suites_of_focus

if TYPE_CHECKING:
    from pytest_vpstest.config import Inventory, ProjectConfig
    from pytest_vpstest.fleet.remote import Pool

__all__ = [
    "VpsPlugin",
    "build_artifact",
    "current_run",
    "deployment",
    "fleet",
    "matrix_cell",
    "matrix_parts",
    "node",
    "node_pool",
    "probe",
    "vps_config",
    "vps_matrix",
    "vps_record",
    "vps_run",
]

_OPTIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("config", "project config file (enables the plugin)", {}),
    ("nodes", "inventory file, or 'lab' / 'lab:<prefix>' for the running lab's inventory", {}),
    ("project", "project name (default: the config's project)", {}),
    ("focus", f"suites to run: {' | '.join(FOCUSES)}", {"choices": FOCUSES}),
    ("criteria", f"verdict: {' | '.join(CRITERIA)}", {"choices": CRITERIA}),
    ("criteria-expr", "expression for --vps-criteria=custom, e.g. 'connectivity.relay.rate >= 99'", {}),
    ("proof", f"evidence to collect: {' | '.join(PROOFS)}", {"choices": PROOFS}),
    ("state-dir", "state directory (default: $VPSTEST_STATE_DIR or ~/.local/state/vpstest)", {}),
    ("attempts", "attempts per pair (default: tests.<suite>.attempts)", {"type": int}),
    ("results-json", "write the run's results.json here instead of the run directory", {}),
    ("node-concurrency", "probes touching one node at a time, across workers (default 8)", {"type": int}),
    ("skip-nodes", "JSON file {node: reason} of nodes not to test (their tests skip with that reason)", {}),
    ("only-nodes", "node names, comma-separated: only the suite tests of pairs with an end among them", {}),
)
_FLAGS = (
    ("skip-build", "do not build; use the artifact already deployed"),
    ("skip-deploy", "do not deploy; the nodes already run the software"),
)

MARKERS = (
    f"{MARKER}(name): a pytest-vpstest suite test ({', '.join(s.name for s in SUITES)})",
    "soak: rerun at soak checkpoints (select with -m soak)",
    "needs_nat: needs nodes behind NATs; skipped on loopback labs and NAT-less fleets",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vpstest", "pytest-vpstest: test P2P software across a node fleet")
    for name, text, extra in _OPTIONS:
        group.addoption(
            f"--vps-{name}", dest=f"vps_{name.replace('-', '_')}", default=None, help=text, **extra
        )
        parser.addini(f"vps_{name.replace('-', '_')}", text, default=None)
    for name, text in _FLAGS:
        group.addoption(
            f"--vps-{name}",
            dest=f"vps_{name.replace('-', '_')}",
            action="store_true",
            default=False,
            help=text,
        )
        parser.addini(f"vps_{name.replace('-', '_')}", text, type="bool", default=False)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def _setting(config: pytest.Config, name: str) -> Any:
    """Command-line option first, then the ini key."""
    value = config.getoption(f"vps_{name}")
    if value not in (None, False):
        return value
    ini = config.getini(f"vps_{name}")
    return ini if ini not in ("", None) else value


def _ini_dir(config: pytest.Config) -> Path:
    return config.inipath.parent if config.inipath is not None else config.rootpath


def _path_setting(config: pytest.Config, name: str) -> Path | None:
    """A path option (relative to where pytest was invoked) or ini key (relative to the ini file)."""
    value = config.getoption(f"vps_{name}")
    base = Path(config.invocation_params.dir)
    if not value:
        value, base = config.getini(f"vps_{name}"), _ini_dir(config)
    if not value:
        return None
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else base / path


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    config_file = _path_setting(config, "config")
    if config_file is None:
        return
    from pytest_vpstest.errors import VpsTestError

    try:
        run = _make_run(config, config_file)
    except VpsTestError as exc:
        raise pytest.UsageError(f"pytest-vpstest: {exc}") from None
    config.stash[RUN_KEY] = run
    config.pluginmanager.register(VpsPlugin(config, run), "vpstest-run")
    if config.pluginmanager.hasplugin("xdist") and not run.is_worker:
        config.pluginmanager.register(_XdistController(run), "vpstest-xdist")


def _make_run(config: pytest.Config, config_path: Path) -> RunContext:
    from pytest_vpstest import config as loaders
    from pytest_vpstest.commands.loading import default_state_dir, resolve_inventory_path
    from pytest_vpstest.errors import ConfigError
    from pytest_vpstest.node_skips import read_skip_file
    from pytest_vpstest.plugin.selection import parse_node_selection

    project_config = loaders.load_project_config(config_path)
    nodes_opt = config.getoption("vps_nodes")
    if nodes_opt:
        spec, base = str(nodes_opt), Path(config.invocation_params.dir)
    elif config.getini("vps_nodes"):
        spec, base = str(config.getini("vps_nodes")), _ini_dir(config)
    else:
        spec, base = project_config.inventory or "", config_path.parent
    if not spec:
        raise ConfigError(
            "no inventory: pass --vps-nodes FILE|lab or set 'inventory' in the config", path=config_path
        )
    inventory_path = resolve_inventory_path(spec, base)
    inventory = loaders.load_inventory(inventory_path)

    worker = getattr(config, "workerinput", None)
    run_id = worker.get("vpstest_run_id") if worker else None
    run_id = run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(3).hex()
    state_dir = _path_setting(config, "state_dir") or project_config.state_dir or default_state_dir()
    results_json = _path_setting(config, "results_json")
    criteria = str(_setting(config, "criteria") or project_config.criteria or "threshold")
    if criteria not in CRITERIA:
        raise ConfigError(f"unknown criteria {criteria!r}", key="vps_criteria", allowed=CRITERIA)
    focus = str(_setting(config, "focus") or project_config.focus or FULL_SUITE)
    if focus not in FOCUSES:
        raise ConfigError(f"unknown focus {focus!r}", key="vps_focus", allowed=FOCUSES)
    expr = _setting(config, "criteria_expr") or project_config.criteria_expr
    if criteria == "custom":
        from pytest_vpstest.expressions import parse

        if not expr:
            raise ConfigError("--vps-criteria=custom needs --vps-criteria-expr (or config criteria_expr)")
        parse(str(expr))
    attempts = _setting(config, "attempts")
    concurrency = _setting(config, "node_concurrency")
    skip_file = _path_setting(config, "skip_nodes")
    only = _setting(config, "only_nodes")
    return RunContext(
        config_path=config_path,
        project_config=project_config,
        inventory=inventory,
        inventory_path=inventory_path,
        run_id=str(run_id),
        state_dir=state_dir if state_dir.is_absolute() else config_path.parent / state_dir,
        project=str(_setting(config, "project") or project_config.project),
        focus=focus,
        criteria=criteria,
        criteria_expr=str(expr) if expr else None,
        proof=str(_setting(config, "proof") or project_config.proof or "") or None,
        attempts=int(attempts) if attempts not in (None, "") else None,
        skip_build=bool(_setting(config, "skip_build")),
        skip_deploy=bool(_setting(config, "skip_deploy")),
        results_json=results_json,
        node_concurrency=int(concurrency) if concurrency not in (None, "") else DEFAULT_NODE_CONCURRENCY,
        skip_nodes=read_skip_file(skip_file) if skip_file is not None else {},
        only_nodes=parse_node_selection(str(only), inventory.names, inventory_path) if only else None,
        is_worker=worker is not None,
    )


class _XdistController:
    """Hands the controller's run id to every xdist worker, so they share one run directory."""

    def __init__(self, run: RunContext) -> None:
        self.run = run

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["vpstest_run_id"] = self.run.run_id


class VpsPlugin:
    """Per-run hooks, registered only when the plugin is configured."""

    def __init__(self, config: pytest.Config, run: RunContext) -> None:
        from pytest_vpstest.plugin.aggregate import Collector

        self.config = config
        self.run = run
        self.collector = Collector()
        self.outcome: Any = None
        self.failure = ""
        self.progress: Any = None

    # -- reporting ------------------------------------------------------------------------
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        run = self.run
        return [
            f"vpstest: config {run.config_path}, inventory {run.inventory_path} "
            f"({len(run.inventory.nodes)} nodes), project {run.project}, run {run.run_id}",
            f"vpstest: focus {run.focus}, criteria {run.criteria}, state {run.run_dir}",
            f"vpstest: reproduce with: {run.reproduce()}",
        ]

    # -- collection -----------------------------------------------------------------------
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        wanted = suites_of_focus(self.run.focus)
        keep, drop = [], []
        for item in items:
            marker = item.get_closest_marker(MARKER)
            suite = find_suite(str(marker.args[0])) if marker is not None and marker.args else None
            if marker is not None and marker.args and (suite is None or suite.name not in wanted):
                drop.append(item)
            else:
                keep.append(item)
        if self.run.only_nodes is not None:
            from pytest_vpstest.plugin.selection import split_by_nodes

            keep, off = split_by_nodes(keep, self.run.only_nodes, _is_suite_test)
            drop += off
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if item.get_closest_marker("needs_nat") is None:
            return
        reason = nat_skip_reason(self.run.inventory)
        if reason:
            pytest.skip(reason)

    # -- results (controller) -------------------------------------------------------------
    def _collect(self, report: pytest.TestReport) -> None:
        """Keep a test report for the run's results (the controller's, or the serial process's)."""
        if self.run.is_worker:
            return
        message = ""
        if report.failed or report.skipped:
            message = str(report.longrepr)
            if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
                message = str(report.longrepr[2])
            message = message.strip().splitlines()[-1] if message.strip() else ""
        outcome: str = report.outcome
        if hasattr(report, "wasxfail"):  # an expected failure, or a pass where failure was expected
            outcome = "xfailed" if report.skipped else "xpassed"
            message = message or str(report.wasxfail).splitlines()[0]
        self.collector.add(
            report.nodeid, report.when, outcome, report.duration, report.user_properties, message[:300]
        )

    # -- the matrix engine's progress (it may run in another process under xdist) -------------
    def _progress_view(self) -> Any:
        if self.progress is None and not self.run.is_worker:
            tr = self.config.pluginmanager.get_plugin("terminalreporter")
            if tr is not None:
                from pytest_vpstest.plugin.progress import ProgressView

                self.progress = ProgressView(tr, self.run.run_dir, self.config.get_verbosity())
        return self.progress

    # Wrappers around the terminal reporter's own hooks: progress goes between its writes.
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> Any:
        view = self._progress_view()
        if view is not None:
            view.before_test(nodeid)
        return (yield)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> Any:
        self._collect(report)
        view = self._progress_view()
        if view is not None:
            view.before_output()
        try:
            return (yield)
        finally:
            if view is not None:
                view.after_report(report)

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Any:
        try:
            return (yield)
        finally:  # inside the terminal reporter's wrapper: before it ends the dot line
            if self.progress is not None:
                self.progress.before_output()

    # tryfirst: before the JUnit XML writer, so the run's metrics become its suite properties.
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.run.is_worker or not self.collector.vps_tests:
            return
        from pytest_vpstest.plugin.results import finish_run

        try:
            self.outcome = finish_run(self.config, self.run, self.collector,
                                      interrupted=_interrupted(session, exitstatus))
        except Exception as exc:  # a run whose results could not be recorded must not look passed
            self.failure = f"pytest-vpstest: results not recorded: {type(exc).__name__}: {exc}"
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return
        _junit_suite_properties(self.config, self.outcome.results["metrics"])
        if not self.outcome.verdict.passed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        view = self._progress_view()
        if view is not None:
            view.summary()  # final lines a suite's last report came too early for
        if self.failure:
            tr.section("pytest-vpstest", sep="=", bold=True)
            tr.write_line(self.failure, red=True)
        if self.outcome is None:
            return
        tr.section("pytest-vpstest", sep="=", bold=True)
        for line in self.outcome.verdict.summary_lines():
            tr.write_line(line, red="FAIL" in line, green=line.endswith("PASSED"))
        for line in self.outcome.lines:
            tr.write_line(line)

    # -- pytest-html ----------------------------------------------------------------------
    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str]) -> None:
        from pytest_vpstest.plugin.report import html_summary

        prefix.extend(html_summary(self.collector, self.run))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        if call.when == "call" and self.config.pluginmanager.hasplugin("html"):
            from pytest_vpstest.plugin.report import html_extras

            report.extras = [*getattr(report, "extras", []), *html_extras(item.user_properties)]
        return report


def _is_suite_test(item: pytest.Item) -> bool:
    return item.get_closest_marker(MARKER) is not None


def _interrupted(session: pytest.Session, exitstatus: int) -> str | None:
    """Why this run is only a part of one (then it is recorded as interrupted), or None.

    Interrupted (Ctrl-C), or left behind by a loop runner that died (``VPSTEST_RUNNER_PID``): the
    runner resumed after a crash runs the TEST again, so this partial run must not count.
    """
    from pytest_vpstest._proc import pid_alive

    if exitstatus == pytest.ExitCode.INTERRUPTED or session.shouldstop:
        return "interrupted before the end of the run"
    runner = os.environ.get("VPSTEST_RUNNER_PID", "")
    if runner.isdigit() and not pid_alive(int(runner)):
        return f"the loop runner (pid {runner}) that started this run is gone"
    return None


def _junit_suite_properties(config: pytest.Config, metrics: dict[str, float]) -> None:
    from _pytest.junitxml import xml_key

    xml = config.stash.get(xml_key, None)
    if xml is not None:
        for name, value in sorted(metrics.items()):
            xml.add_global_property(f"vpstest.{name}", value)


# Default implementations of the plugin's own hooks (a conftest or plugin may override them).


@pytest.hookimpl(trylast=True)
def pytest_vpstest_make_pool(inventory: Inventory, project_config: ProjectConfig) -> Pool:
    from pytest_vpstest.fleet.remote import SessionPool

    return SessionPool(inventory)


@pytest.hookimpl(trylast=True)
def pytest_vpstest_build(run: RunContext) -> dict[str, Any] | None:
    from pytest_vpstest.plugin.fixtures import default_build

    return default_build(run)


@pytest.hookimpl(trylast=True)
def pytest_vpstest_deploy(run: RunContext, pool: Pool, artifact: str | None) -> dict[str, Any] | None:
    from pytest_vpstest.plugin.fixtures import default_deploy

    return default_deploy(run, pool, artifact)


@pytest.hookimpl(trylast=True)
def pytest_vpstest_fetch_logs(run: RunContext, pool: Pool, node: str) -> str | None:
    from pytest_vpstest.plugin.fixtures import default_fetch_logs

    return default_fetch_logs(run, pool, node)


def current_run(config: pytest.Config) -> RunContext | None:
    """The run of a configured session, else None (for suites and user conftests)."""
    return run_of(config)
