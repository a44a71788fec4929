"""Without --vps-config the plugin is inert: a project's own tests see no header, no new files, no
failures; options, ini keys and markers are registered (--strict-markers clean); the suites,
if collected anyway, skip with a reason."""

from __future__ import annotations

import pytest


def test_plain_project_sees_no_change(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_one():\n    assert True\n")

    def files() -> set[str]:
        return {str(p) for p in pytester.path.rglob("*") if "__pycache__" not in p.parts}

    before = files()
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "vpstest:" not in result.stdout.str()
    assert files() == before


def test_plugin_is_registered_and_hooks_are_prefixed(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("def pytest_vpstest_results(run, results):\n    pass\n")
    pytester.makepyfile(test_plain="def test_one(): pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-config")
    result.assert_outcomes(passed=1)


def test_options_and_ini_keys_in_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    out = result.stdout.str()
    for option in (
        "--vps-config",
        "--vps-nodes",
        "--vps-project",
        "--vps-focus",
        "--vps-criteria",
        "--vps-criteria-expr",
        "--vps-proof",
        "--vps-state-dir",
        "--vps-attempts",
        "--vps-skip-build",
        "--vps-skip-deploy",
        "--vps-results-json",
    ):
        assert option in out, option
    for key in ("vps_config", "vps_nodes", "vps_focus", "vps_criteria", "vps_skip_build"):
        assert key in out, key


def test_markers_registered_for_strict_markers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_marked="""
        import pytest

        @pytest.mark.vps_suite("connectivity")
        @pytest.mark.soak
        @pytest.mark.needs_nat
        def test_marked():
            pass
        """
    )
    result = pytester.runpytest("--strict-markers", "-p", "no:cacheprovider", "-m", "soak")
    result.assert_outcomes(passed=1)
    markers = pytester.runpytest("--markers").stdout.str()
    assert "vps_suite(name)" in markers and "soak:" in markers and "needs_nat:" in markers


def test_fixtures_skip_with_a_reason_when_not_configured(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_uses="def test_uses(fleet, probe):\n    raise AssertionError\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*pytest-vpstest is not configured: pass --vps-config*"])


def test_suites_skip_when_not_configured(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(
        "--pyargs", "pytest_vpstest.suites", "-p", "no:cacheprovider", "--strict-markers"
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("skipped", 0) >= 4 and "failed" not in outcomes and "error" not in outcomes
    assert not (pytester.path / "state").exists()


def test_bad_config_path_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--vps-config", "missing.yaml", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pytest-vpstest:*missing.yaml*"])
