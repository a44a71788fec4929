"""The FIX stage: error lines cluster into signatures, the brief names what failed, and a new commit
in a real git repository is detected (fixer command or commit wait); a fixer that fails, makes no
commit, or whose verification fails yields an error, and a stop interrupts the wait promptly."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pytest_vpstest.config import FixConfig, Node
from pytest_vpstest.loop.fixer import (
    cluster_signatures,
    collect_logs,
    git_head,
    normalise,
    obtain_fix,
    run_fix,
    write_brief,
)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "ws"
    r.mkdir()
    _git(r, "init", "-q", "-b", "main")
    _git(r, "config", "user.email", "t@example.invalid")
    _git(r, "config", "user.name", "t")
    (r / "a.txt").write_text("broken\n")
    _git(r, "add", "a.txt")
    _git(r, "commit", "-q", "-m", "initial")
    return r


def test_normalise_replaces_variable_parts() -> None:
    a = normalise("2025-01-10T10:00:00Z ERROR peer 198.18.0.4:9000 timed out after 1500 ms (conn 0x7fa3)")
    b = normalise("2025-01-10T11:00:00Z ERROR peer 198.19.5.2:41000 timed out after 20 ms (conn 0xbeef)")
    assert a == b == "ERROR peer <addr> timed out after <n> ms (conn <hex>)"
    assert normalise("msg 5f0c2e1a-1111-2222-3333-444455556666 dup") == "msg <uuid> dup"
    assert normalise("peer 3f2a9c1e88aa11bb left") == "peer <id> left"
    # Python logging's default time format (comma before the milliseconds).
    assert normalise("2026-11-26 01:31:55,466 ERROR node: x") == "ERROR node: x"


def test_signatures_count_and_track_first_last_seen() -> None:
    logs = {
        "n2": ["2025-01-10T10:00:05Z ERROR relay drop for 198.18.0.7:9000",
               "2025-01-10T10:00:01Z info all good",
               "2025-01-10T10:00:09Z ERROR relay drop for 198.18.0.8:9000"],
        "n1": ["2025-01-10T09:59:00Z ERROR relay drop for 198.18.0.2:9000",
               "2025-01-10T10:01:00Z panic: gossip dedup table full (size 4096)"],
    }
    sigs = cluster_signatures(logs)
    assert [s.count for s in sigs] == [3, 1]
    top = sigs[0]
    assert top.pattern == "ERROR relay drop for <addr>"
    assert top.first_seen == "2025-01-10T09:59:00Z"
    assert top.last_seen == "2025-01-10T10:00:09Z"
    assert top.nodes == {"n1": 1, "n2": 2}
    assert top.example.startswith("n1: ERROR relay drop")
    assert sigs[1].pattern == "panic: gossip dedup table full (size <n>)"


def test_collect_logs_in_parallel_and_survive_a_failing_node(tmp_path: Path) -> None:
    nodes = [Node(name=f"n{i}", host="127.0.0.1") for i in range(4)]
    # Three healthy fetches must all be in flight at once to pass the barrier: proof of parallelism.
    together = threading.Barrier(3, timeout=30)

    def fetch(node: Node) -> str:
        if node.name == "n2":
            raise OSError("connection refused")
        together.wait()
        return f"line of {node.name}\nERROR x\n"

    logs = collect_logs(nodes, fetch, tmp_path / "logs")
    assert sorted(logs) == ["n0", "n1", "n2", "n3"]
    assert (tmp_path / "logs" / "n0.log").read_text() == "line of n0\nERROR x\n"
    assert "could not collect logs from n2: connection refused" in (tmp_path / "logs" / "n2.log").read_text()
    assert not together.broken


def test_brief_names_failures_targets_and_signatures(tmp_path: Path) -> None:
    results = {
        "passed": False, "focus": "connectivity",
        "verdict": {"passed": False, "criteria": "threshold",
                    "failures": [{"metric": "connectivity.relay.rate", "target": 100, "measured": 0.0}]},
        "test_results": {"suites": {"connectivity": {"relay": {"attempts": 4, "success": 0, "rate": 0.0}}}},
        "pairs": [{"id": "n1->n2[relay]", "passed": False}, {"id": "n1->n2[direct]", "passed": True}],
    }
    sigs = cluster_signatures({"n1": ["ERROR relay refused 1", "ERROR relay refused 2"]})
    path = write_brief(tmp_path / "fix" / "1" / "brief.md", project="demo", reason="tests failed",
                       results=results, signatures=sigs, logs={"n1": ["ERROR relay refused 2"]})
    text = path.read_text()
    assert "| connectivity.relay.rate | 0.0 | 100 |" in text
    assert "- n1->n2[relay]" in text and "n1->n2[direct]" not in text
    assert "`ERROR relay refused <n>`" in text
    assert "### n1" in text


def test_fixer_command_commit_is_detected(repo: Path, tmp_path: Path) -> None:
    fixer = tmp_path / "fix.sh"
    fixer.write_text('#!/bin/sh\nset -e\ntest -f "$1"\necho fixed > a.txt\ngit commit -qam "fix: repair a"\n')
    fixer.chmod(0o755)
    brief = tmp_path / "brief.md"
    brief.write_text("b")
    out: list[str] = []
    res = obtain_fix(FixConfig(command=str(fixer), verify_command="grep -q fixed a.txt"), repo, brief,
                     stop=threading.Event(), output=out.append)
    assert res.error is None and res.commit is not None
    head = git_head(repo)
    assert head is not None and res.commit.sha == head.sha
    assert res.commit.message == "fix: repair a"
    assert res.commit.time.endswith("Z")


def test_failing_fixer_and_fixer_without_commit_are_errors(repo: Path, tmp_path: Path) -> None:
    brief = tmp_path / "brief.md"
    brief.write_text("b")
    stop = threading.Event()
    res = obtain_fix(FixConfig(command=f"{sys.executable} -c 'import sys; print(\"boom\"); sys.exit(3)'"),
                     repo, brief, stop=stop)
    assert res.commit is None and res.error is not None and "exited 3" in res.error and "boom" in res.error
    res = obtain_fix(FixConfig(command="true"), repo, brief, stop=stop)
    assert res.commit is None and res.error == "fixer command made no new commit"
    res = obtain_fix(FixConfig(command="/nonexistent/fixer"), repo, brief, stop=stop)
    assert res.commit is None and res.error is not None and "could not start" in res.error


def test_failed_verification_is_an_error(repo: Path, tmp_path: Path) -> None:
    brief = tmp_path / "brief.md"
    brief.write_text("b")
    fixer = tmp_path / "fix.sh"
    fixer.write_text('#!/bin/sh\necho still broken > a.txt\ngit commit -qam "fix: try"\n')
    fixer.chmod(0o755)
    res = obtain_fix(FixConfig(command=str(fixer), verify_command="grep -q fixed a.txt"), repo, brief,
                     stop=threading.Event())
    assert res.commit is None and res.error is not None and res.error.startswith("verification failed")


def test_waits_for_a_commit_made_by_someone_else(repo: Path, tmp_path: Path) -> None:
    brief = tmp_path / "brief.md"
    brief.write_text("b")

    def commit_later() -> None:
        time.sleep(0.3)
        (repo / "a.txt").write_text("fixed\n")
        _git(repo, "commit", "-qam", "fix: by hand")

    t = threading.Thread(target=commit_later)
    t.start()
    res = obtain_fix(FixConfig(command=None, commit_wait_seconds=20), repo, brief, stop=threading.Event(),
                     poll_seconds=0.1)
    t.join()
    assert res.commit is not None and res.commit.message == "fix: by hand"


def test_commit_wait_is_bounded_and_stop_interrupts_it(repo: Path, tmp_path: Path) -> None:
    brief = tmp_path / "brief.md"
    brief.write_text("b")
    res = obtain_fix(FixConfig(command=None, commit_wait_seconds=0.3), repo, brief, stop=threading.Event(),
                     poll_seconds=0.1)
    assert res.commit is None and res.error == "no new commit within 0.3s"
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    res = obtain_fix(FixConfig(command=None, commit_wait_seconds=600), repo, brief, stop=stop, poll_seconds=5)
    assert time.monotonic() - t0 < 60  # far less than the 600 s it would otherwise wait
    assert res.error == "stopped while waiting for a commit"


def test_stop_interrupts_a_running_fixer(repo: Path, tmp_path: Path) -> None:
    brief = tmp_path / "brief.md"
    brief.write_text("b")
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    res = obtain_fix(FixConfig(command=f"{sys.executable} -c 'import time; time.sleep(600)'"), repo, brief,
                     stop=stop)
    assert time.monotonic() - t0 < 60  # the 600 s fixer was ended, not waited for
    assert res.error == "fixer command stopped"


def test_run_fix_writes_numbered_briefs(repo: Path, tmp_path: Path) -> None:
    project_dir = tmp_path / "state" / "demo"
    nodes = [Node(name="n1", host="127.0.0.1")]
    for n in (1, 2):
        res = run_fix(project="demo", project_dir=project_dir, workspace=repo,
                      config=FixConfig(command="true"),
                      nodes=nodes, fetch=lambda node: "ERROR boom 7\n", reason="tests failed", results=None,
                      stop=threading.Event())
        assert res.brief == project_dir / "fix" / str(n) / "brief.md"
        assert "`ERROR boom <n>`" in res.brief.read_text()
    assert (project_dir / "logs" / "n1.log").read_text() == "ERROR boom 7\n"
