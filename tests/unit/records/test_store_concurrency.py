"""Several real writer processes against one project (``_crash_writer.py``): started together they take
turns through the lease and every transition is logged once, in order; a writer frozen with SIGSTOP
past its lease is fenced off when it wakes — its next write is refused and nothing it tried to write
lands after its successor's — and a second project in the same state directory is never blocked."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_vpstest.errors import StateError
from pytest_vpstest.records.store import StateStore
from tests.unit.records.test_store_crash import check_consistent, read_line, start_writer

PROJECT = "crashy"  # the writer's project, as in the crash test


def finish(proc: Any, timeout: float = 60) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"writer failed with {proc.returncode}: {err.decode()}"
    return str(out.decode())


def lease_record(state_dir: Path) -> dict[str, Any]:
    """The holder as lease.json records it, read directly (holder() would hide an expired one)."""
    holder: dict[str, Any] = json.loads((state_dir / PROJECT / "lease.json").read_text())["holder"]
    return holder


def test_writers_started_together_take_turns(tmp_path: Path) -> None:
    # A long TTL: turns pass by release, and a busy machine must not make a writer lose its lease.
    writers = [start_writer(tmp_path, "host-a", commits=15, ttl=30) for _ in range(4)]
    outputs = [finish(w) for w in writers]
    assert all(out.splitlines()[-1] == "done" for out in outputs)
    entries = check_consistent(tmp_path)
    assert len(entries) == 60
    tokens = [e["token"] for e in entries]
    assert tokens == sorted(tokens), "a lower token wrote after a higher one"
    # Each writer's transitions form one unbroken run under its own token(s).
    writers_in_order = [e["snapshot"]["writer"] for e in entries]
    runs = [w for i, w in enumerate(writers_in_order) if i == 0 or w != writers_in_order[i - 1]]
    assert sorted(runs) == sorted({w.pid for w in writers}), runs


def test_frozen_writer_is_fenced_off_when_it_wakes(tmp_path: Path) -> None:
    frozen = start_writer(tmp_path, "host-a", env={"VPSTEST_CRASH_FREEZE_AT": "10"}, ttl=1.0)
    successor = None
    try:
        first_token = int(read_line(frozen, 15).split()[1])
        assert read_line(frozen, 15) == "frozen"
        # Same host, but the holder's pid is alive (stopped): the successor has to wait for expiry.
        frozen_lease = lease_record(tmp_path)
        assert frozen_lease["token"] == first_token
        successor = start_writer(tmp_path, "host-a")
        second_token = int(read_line(successor, 15).split()[1])
        taken = lease_record(tmp_path)
        assert taken["token"] == second_token > first_token
        assert taken["acquired_at"] > frozen_lease["expires_at"], "taken over before the frozen lease expired"
        time.sleep(0.2)
        frozen.send_signal(signal.SIGCONT)
        assert read_line(frozen, 15) == f"stale {first_token}"
        time.sleep(0.2)
    finally:
        for proc in (frozen, successor):
            if proc is not None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.communicate(timeout=10)
    entries = check_consistent(tmp_path)  # counter == seq throughout: no write was lost or stale
    tokens = [e["token"] for e in entries]
    assert tokens == sorted(tokens)
    assert tokens.count(first_token) == 9, "the frozen writer's nine commits before it froze"
    successor_start = tokens.index(second_token)
    assert first_token not in tokens[successor_start:], "the frozen writer wrote after its successor"


def test_a_writer_stopped_inside_the_lock_gives_a_clear_error(tmp_path: Path) -> None:
    store = StateStore(tmp_path, PROJECT, host="host-a", pid=os.getpid(), lock_timeout=0.2)
    store.directory.mkdir()
    # flock conflicts between two open files even in one process: stands in for a stopped writer.
    with store.lock_path.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(StateError, match=r"lease\.lock: still locked after 0\.2s"):
            store.acquire()
        assert time.monotonic() - started < 5
    assert store.acquire().token == 1


def test_another_project_is_not_blocked(tmp_path: Path) -> None:
    # The first project's writer holds its lease and is stopped after two commits.
    busy = start_writer(tmp_path, "host-a", env={"VPSTEST_CRASH_FREEZE_AT": "3"}, ttl=30)
    try:
        read_line(busy, 15)
        assert read_line(busy, 15) == "frozen"
        first = StateStore(tmp_path, PROJECT, host="checker", pid=1)
        assert first.holder() is not None and len(first.transitions()) == 2
        other = StateStore(tmp_path, "other-project", host="host-a", pid=os.getpid(), lock_timeout=5)
        lease = other.acquire()
        assert lease.token == 1
        assert other.commit(lease, {"project": "other-project", "state": "SETUP"}, {"to": "SETUP"}) == 1
        assert other.release(lease)
        assert first.holder() is not None and len(first.transitions()) == 2
    finally:
        busy.send_signal(signal.SIGCONT)
        busy.kill()
        busy.communicate(timeout=10)


def test_readers_see_only_committed_states_while_a_writer_runs(tmp_path: Path) -> None:
    writer = start_writer(tmp_path, "host-a")
    seen: list[int] = []
    try:
        read_line(writer, 15)
        reader = StateStore(tmp_path, PROJECT, host="reader", pid=os.getpid())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (len(seen) >= 200 and seen[-1] > seen[0]):
            document = reader.load()
            if document is None:
                continue
            # Every state a reader sees is a committed one: its counter is its seq, never half-written.
            assert document["counter"] == document["last_seq"]
            seen.append(document["last_seq"])
            assert not reader.corrupt_dir.exists()
    finally:
        writer.kill()
        writer.communicate(timeout=10)
    assert len(seen) > 10 and seen == sorted(seen), "a reader went back in time"
    assert seen[-1] > seen[0], "the writer made progress while being read"
