"""The local build: real shell commands printing compiler-like output.

Proves: output lines reach the log callback while the build still runs; cargo/rustc, generic
``file:line:col`` and Python-traceback diagnostics are parsed with their locations; cargo's
summary lines are not counted; a non-zero exit fails; a timeout kills the whole process group;
the artifact is resolved from ``build.artifact`` or ``target_dir/binary`` and a missing one after
exit 0 is a failed build; ``BuildFailure`` carries the parsed errors.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_vpstest.config import BuildConfig, ModuleConfig, ProjectConfig
from pytest_vpstest.errors import BuildError
from pytest_vpstest.fleet.build import BuildFailure, Diagnostic, parse_diagnostics, run_build

CARGO_FAILURE = r"""   Compiling demo v0.1.0 (/ws)
warning: unused variable: `x`
 --> src/lib.rs:3:9
  |
3 |     let x = 5;
  |         ^ help: if this is intentional, prefix it with an underscore: `_x`
  |
  = note: `#[warn(unused_variables)]` on by default

error[E0308]: mismatched types
  --> src/main.rs:10:5
   |
10 |     "text"
   |     ^^^^^^ expected `u32`, found `&str`

error: linker `cc` not found
  |
  = note: No such file or directory (os error 2)

warning: `demo` (bin "demo") generated 1 warning
error: could not compile `demo` (bin "demo") due to 2 previous errors
"""


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return f"./{name}"


def test_cargo_output_is_parsed_into_errors_and_warnings(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_text(CARGO_FAILURE)
    cmd = script(tmp_path, "build.sh", "cat out.txt >&2\nexit 101\n")
    result = run_build(BuildConfig(command=cmd), tmp_path)
    assert not result.ok and result.exit_code == 101 and result.artifact is None
    assert result.errors == (
        Diagnostic("error", "mismatched types", "src/main.rs", 10, 5, "E0308"),
        Diagnostic("error", "linker `cc` not found"),
    )
    assert result.warnings == (Diagnostic("warning", "unused variable: `x`", "src/lib.rs", 3, 9),)
    assert str(result.errors[0]) == "src/main.rs:10:5: error[E0308]: mismatched types"
    assert (
        result.error == "build failed (exit 101): src/main.rs:10:5: error[E0308]: mismatched types (+1 more)"
    )
    with pytest.raises(BuildFailure) as info:
        result.raise_for_failure()
    assert isinstance(info.value, BuildError)
    assert info.value.errors == result.errors
    assert "src/main.rs:10:5" in info.value.details()
    assert "could not compile" in result.output_tail


def test_generic_and_python_diagnostics() -> None:
    output = "\n".join(
        [
            "src/net.c:42:7: error: 'sock' undeclared (first use in this function)",
            "src/net.c:50: warning: unused parameter 'flags'",
            "pkg/app.py:12: error: Incompatible return value type  [return-value]",
            "Traceback (most recent call last):",
            '  File "/ws/setup.py", line 3, in <module>',
            "    main()",
            '  File "/ws/build_tool.py", line 27, in main',
            "    raise ValueError('bad version string: 1.x')",
            "ValueError: bad version string: 1.x",
            "done",
        ]
    )
    errors, warnings = parse_diagnostics(output)
    assert errors == (
        Diagnostic("error", "'sock' undeclared (first use in this function)", "src/net.c", 42, 7),
        Diagnostic("error", "Incompatible return value type  [return-value]", "pkg/app.py", 12),
        Diagnostic("error", "ValueError: bad version string: 1.x", "/ws/build_tool.py", 27),
    )
    assert warnings == (Diagnostic("warning", "unused parameter 'flags'", "src/net.c", 50),)


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=400))
def test_parser_never_crashes_on_arbitrary_output(text: str) -> None:
    errors, warnings = parse_diagnostics(text)
    assert all(d.severity == "error" for d in errors)
    assert all(d.severity == "warning" for d in warnings)


def test_lines_stream_to_the_log_while_the_build_runs(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    cmd = script(
        tmp_path,
        "slow.sh",
        f"echo first\nwhile [ ! -e {gate} ]; do sleep 0.05; done\necho second >&2\n",
    )
    seen: list[tuple[str, bool]] = []

    def log(line: str) -> None:
        seen.append((line, gate.exists()))
        if line == "first":
            gate.touch()  # the build can only finish because it already streamed "first"

    result = run_build(BuildConfig(command=cmd, timeout_seconds=20), tmp_path, log=log)
    assert result.ok
    assert seen == [("first", False), ("second", True)]


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    cmd = script(tmp_path, "hang.sh", f"sleep 300 &\necho $! > {pid_file}\nwait\n")
    started = time.monotonic()
    result = run_build(BuildConfig(command=cmd, timeout_seconds=1), tmp_path)
    assert time.monotonic() - started < 20
    assert not result.ok and result.timed_out and result.exit_code is None
    assert "timed out after 1 s" in str(result.errors[-1])
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and _state(child) != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or _state(child) == "Z"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_artifact_from_config_and_from_target_dir(tmp_path: Path) -> None:
    cmd = script(
        tmp_path,
        "ok.sh",
        "mkdir -p dist target/release\necho x > dist/agent.pyz\necho y > target/release/demo\n",
    )
    direct = run_build(BuildConfig(command=cmd, artifact="dist/agent.pyz"), tmp_path)
    assert direct.ok and direct.artifact == (tmp_path / "dist/agent.pyz").resolve()
    project = ProjectConfig(
        path=None,
        project="demo",
        workspace=tmp_path,
        modules=(("quic-test", ModuleConfig(binary="demo")),),
        build=BuildConfig(command=cmd, target_dir="target/release"),
    )
    via_module = run_build(project)
    assert via_module.ok and via_module.artifact == (tmp_path / "target/release/demo").resolve()


def test_missing_artifact_after_exit_zero_is_a_failure(tmp_path: Path) -> None:
    result = run_build(BuildConfig(command="true", artifact="dist/missing.bin"), tmp_path)
    assert not result.ok and result.exit_code == 0 and result.artifact is None
    assert "left no artifact at" in str(result.errors[0])
    assert "dist/missing.bin" in (result.error or "")


def test_no_artifact_expected_is_fine_and_bad_inputs_raise(tmp_path: Path) -> None:
    assert run_build(BuildConfig(command="echo built"), tmp_path).ok
    with pytest.raises(BuildError, match="not a directory"):
        run_build(BuildConfig(command="true"), tmp_path / "nope")
    with pytest.raises(BuildError, match="no build section"):
        run_build(ProjectConfig(path=None, project="p", workspace=tmp_path))


def test_build_runs_in_the_workspace_with_the_shell(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_build(BuildConfig(command="pwd && echo a | tr a b"), tmp_path, log=lines.append)
    assert result.ok and lines == [str(tmp_path), "b"]
    assert threading.active_count() >= 1 and os.getcwd() != str(tmp_path)
