"""The SQLite history on real database files.

Proves: the file is created on first use with the ``hosts`` and ``test_runs`` tables and index, WAL mode
and ``user_version``; a run, its host rows and metrics are recorded in one transaction (a failure
leaves nothing) and re-recording replaces; ``previous_run`` finds the latest finished run of the
same project and focus before a given run; ``metrics_of`` and ``host_status`` read back what was
written; a newer schema is refused; two processes writing at once lose nothing.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pytest_vpstest.errors import StateError
from pytest_vpstest.records.history import SCHEMA_VERSION, History, HostRun, RunRecord

T0 = datetime(2026, 1, 10, 14, 30, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def run(run_id: str, minutes: float, *, focus: str | None = "connectivity", passed: bool = True) -> RunRecord:
    return RunRecord(
        id=run_id,
        project="ant-quic",
        focus=focus,
        criteria="threshold",
        started_at=at(minutes),
        finished_at=at(minutes + 5),
        passed=passed,
        verdict={"passed": passed, "failures": []},
        loop_state="TEST",
        checkpoint="initial",
    )


def test_created_on_first_use_with_the_documented_schema(tmp_path: Path) -> None:
    path = tmp_path / "state" / "history.sqlite"
    history = History(path)
    assert not path.exists()
    assert history.runs("ant-quic") == []
    assert path.exists() and history.schema_version == SCHEMA_VERSION
    raw = sqlite3.connect(path)
    columns = [r[1] for r in raw.execute("PRAGMA table_info(test_runs)")]
    assert columns == [
        "id",
        "host_id",
        "started_at",
        "finished_at",
        "exit_code",
        "passed",
        "failed",
        "output",
    ]
    index = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'idx_test_runs_host'").fetchone()[0]
    assert "test_runs(host_id, started_at DESC)" in index
    fks = raw.execute("PRAGMA foreign_key_list(test_runs)").fetchall()
    assert [(r[2], r[3], r[4]) for r in fks] == [("hosts", "host_id", "id")]
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {r[1] for r in raw.execute("PRAGMA table_info(runs)")} >= {
        "id",
        "project",
        "focus",
        "criteria",
        "started_at",
        "finished_at",
        "passed",
        "verdict_json",
        "loop_state",
        "checkpoint",
    }
    raw.close()
    history.close()


def test_record_and_read_back(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as history:
        hosts = [
            HostRun("saorsa-4", at(0), at(5), 0, 8, 0, "ok"),
            HostRun("saorsa-10", at(0), at(5), 1, 7, 1, "1 failed"),
        ]
        metrics = {
            "connectivity": {
                "direct": {"attempts": 90, "success": 89, "rate": 98.9},
                "nat_traversed": {"rate": 87.5, "note": "text is not a metric"},
            },
            "throughput": {"all": {"avg_mbps": 412.0}},
        }
        history.record_run(run("r1", 0), hosts, metrics)
        assert history.run("r1") == RunRecord(
            id="r1",
            project="ant-quic",
            focus="connectivity",
            criteria="threshold",
            started_at="2026-01-10T14:30:00.000000Z",
            finished_at="2026-01-10T14:35:00.000000Z",
            passed=True,
            verdict={"failures": [], "passed": True},
            loop_state="TEST",
            checkpoint="initial",
        )
        assert history.metrics_of("r1") == {
            "connectivity": {
                "direct": {"attempts": 90.0, "rate": 98.9, "success": 89.0},
                "nat_traversed": {"rate": 87.5},
            },
            "throughput": {"all": {"avg_mbps": 412.0}},
        }
        assert [h.host_id for h in history.host_runs("r1")] == ["saorsa-10", "saorsa-4"]
        bad = history.host_status("saorsa-10")
        assert bad is not None and (bad.state, bad.passed, bad.failed, bad.test_run_id) == (
            "failed",
            7,
            1,
            "r1:saorsa-10",
        )
        good = history.host_status("saorsa-4")
        assert good is not None and good.state == "passed"
        assert history.host_status("saorsa-9") is None

        # Re-recording the same run (a resumed loop) replaces it instead of adding to it.
        history.record_run(run("r1", 0, passed=False), hosts[:1], [("connectivity", "direct", "rate", 50.0)])
        assert history.metrics_of("r1") == {"connectivity": {"direct": {"rate": 50.0}}}
        assert [h.host_id for h in history.host_runs("r1")] == ["saorsa-4"]
        assert history.run("r1").passed is False  # type: ignore[union-attr]

        # A later run that is still going shows as running for its host.
        history.record_run(
            RunRecord("r2", "ant-quic", at(60), focus="connectivity"),
            [HostRun("saorsa-4", at(60))],
        )
        running = history.host_status("saorsa-4")
        assert running is not None and running.state == "running" and running.test_run_id == "r2:saorsa-4"


def test_a_failed_record_leaves_nothing(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as history:
        duplicate_hosts = [HostRun("n1", at(0), at(1)), HostRun("n1", at(0), at(1))]
        with pytest.raises(sqlite3.IntegrityError):
            history.record_run(run("r1", 0), duplicate_hosts, {"s": {"c": {"m": 1.0}}})
        assert history.run("r1") is None
        assert history.metrics_of("r1") == {}
        assert history.host_status("n1") is None


def test_previous_run_by_project_focus_and_time(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as history:
        history.record_run(run("a", 0))
        history.record_run(run("b", 60, passed=False))
        history.record_run(run("g", 90, focus="gossip"))
        history.record_run(run("none", 95, focus=None))
        history.record_run(RunRecord("c", "ant-quic", at(120), focus="connectivity"))  # unfinished
        history.record_run(RunRecord("other", "saorsa-gossip", at(130), at(131), True, focus="connectivity"))
        history.record_run(run("d", 180))
        prev = history.previous_run("ant-quic", "connectivity")
        assert prev is not None and prev.id == "d"
        assert history.previous_run("ant-quic", "connectivity", before="d").id == "b"  # type: ignore[union-attr]
        assert history.previous_run("ant-quic", "connectivity", before="b").id == "a"  # type: ignore[union-attr]
        assert history.previous_run("ant-quic", "connectivity", before="a") is None
        assert history.previous_run("ant-quic", "gossip").id == "g"  # type: ignore[union-attr]
        assert history.previous_run("ant-quic", None).id == "none"  # type: ignore[union-attr]
        before = (T0 + timedelta(minutes=61)).isoformat()
        assert history.previous_run("ant-quic", "connectivity", before=before).id == "b"  # type: ignore[union-attr]
        assert [r.id for r in history.runs("ant-quic", limit=3)] == ["d", "c", "none"]
        # The current run asks before recording itself: its unknown id only excludes itself.
        assert history.previous_run("ant-quic", "connectivity", before="20260110-1800-new").id == "d"  # type: ignore[union-attr]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StateError, match="schema version 2; this pytest-vpstest reads up to 1"):
        History(path).runs("p")


WRITER = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime, timedelta
    from pytest_vpstest.records.history import History, HostRun, RunRecord

    path, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    history = History(path)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(count):
        start = t0 + timedelta(seconds=i)
        history.record_run(
            RunRecord(f"{tag}-{i}", "proj-" + tag, start, start, True, focus="connectivity"),
            [HostRun(f"node-{j}", start, start, 0, 1, 0, "x" * 200) for j in range(3)],
            {"connectivity": {"direct": {"rate": float(i)}}},
        )
    print("done")
    """
)


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), tag, "60"], stdout=subprocess.PIPE, text=True
        )
        for tag in ("a", "b")
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs == ["done\n", "done\n"]
    with History(path) as history:
        for tag in ("a", "b"):
            runs = history.runs("proj-" + tag, limit=1000)
            assert len(runs) == 60
            assert history.metrics_of(f"{tag}-59") == {"connectivity": {"direct": {"rate": 59.0}}}
            assert len(history.host_runs(f"{tag}-7")) == 3
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT count(*) FROM test_runs").fetchone()[0] == 360
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()


def test_threads_share_one_history(tmp_path: Path) -> None:
    import threading

    history = History(tmp_path / "h.sqlite")
    errors: list[BaseException] = []

    def write(tag: str) -> None:
        try:
            for i in range(20):
                history.record_run(RunRecord(f"{tag}{i}", "p", at(i), at(i), True))
            history.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in "xyz"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(history.runs("p", limit=100)) == 60
    history.close()


def test_a_runs_host_rows_are_found_through_the_primary_key_not_a_table_scan(tmp_path: Path) -> None:
    """``host_runs`` and re-recording a run reach its rows by an index range: with 10,000s of runs a
    scan of ``test_runs`` per run made the dashboard's first read take many seconds."""
    with History(tmp_path / "h.sqlite") as history:
        for i in range(3):
            history.record_run(run(f"r{i}", i), [HostRun("a", at(i)), HostRun("b", at(i))])
        conn = history._conn()
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        try:
            assert [h.host_id for h in history.host_runs("r1")] == ["a", "b"]
            history.record_run(run("r1", 1), [HostRun("c", at(1))])
        finally:
            conn.set_trace_callback(None)
        reads = ("SELECT", "DELETE")
        touching = [s for s in statements if "test_runs" in s and s.lstrip().upper().startswith(reads)]
        assert len(touching) == 2, statements
        for statement in touching:
            plan = " | ".join(str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + statement))
            assert "SCAN test_runs" not in plan, (statement, plan)
            assert "sqlite_autoindex_test_runs_1" in plan, (statement, plan)
        assert [h.host_id for h in history.host_runs("r1")] == ["c"]
        assert [h.host_id for h in history.host_runs("r2")] == ["a", "b"]


def test_host_rows_of_runs_whose_ids_share_a_prefix_or_hold_like_wildcards_stay_apart(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as history:
        history.record_run(run("r_1", 0), [HostRun("a", at(0))])
        history.record_run(run("rx1", 1), [HostRun("b", at(1))])
        history.record_run(run("r%", 2), [HostRun("c", at(2))])
        history.record_run(run("r", 3), [HostRun("d", at(3))])
        history.record_run(run("r:x", 4), [HostRun("e", at(4))])  # its rows' ids start with "r:"
        assert [h.host_id for h in history.host_runs("r_1")] == ["a"]
        assert [h.host_id for h in history.host_runs("r%")] == ["c"]
        assert [h.host_id for h in history.host_runs("r")] == ["d"]
        history.record_run(run("r", 3), [])  # re-recording "r" leaves "r:x" alone
        assert [h.host_id for h in history.host_runs("r:x")] == ["e"]
        assert history.host_runs("r") == []
