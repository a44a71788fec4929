"""One author for the state document: the store creates a project's first document from
``state_doc.new_state_document``, the same shape the loop's machine starts from."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pytest_vpstest.errors import StaleLeaseError
from pytest_vpstest.loop import machine as m
from pytest_vpstest.records.state_doc import iso_time, new_state_document
from pytest_vpstest.records.store import StateStore

T0 = datetime(2026, 12, 1, 10, 0, 0, 250_000, tzinfo=UTC)
RESULTS = {"last_run": "2026-12-01T10:05:00Z", "passed": True, "suites": {"gossip": {"delivery_rate": 100.0}}}


def _shape(value: Any) -> Any:
    """Keys (recursively) of a JSON document, leaves reduced to their type's name."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    return type(value).__name__


def _loop_initial_document(project: str, now: datetime) -> dict[str, Any]:
    """What the loop's runner writes for a new run before its first transition."""
    kept_by_runner = {"test_results": {}, "nodes": {}, "logs": [], "runner": {}}
    return {**kept_by_runner, **m.initial_state(project, now).to_document()}


def test_the_machine_starts_from_the_new_document() -> None:
    assert _loop_initial_document("ant-quic", T0) == new_state_document("ant-quic", T0)
    state = m.initial_state("ant-quic", T0)
    assert (state.state, state.phase, state.started_at) == (m.State.IDLE, "initial", T0)


def test_plugin_written_state_of_a_fresh_project_is_the_loops_initial_shape(tmp_path: Path) -> None:
    clock = T0.timestamp()
    store = StateStore(tmp_path, "ant-quic", clock=lambda: clock)
    lease = store.acquire()
    written = store.merge_test_results(lease, RESULTS)
    store.release(lease)

    on_disk = json.loads(store.state_path.read_text())
    for key in ("schema_version", "fencing_token", "last_seq"):
        assert key in on_disk and key not in written
        on_disk.pop(key)
    assert on_disk == written
    expected = _loop_initial_document("ant-quic", T0)
    assert on_disk["phase"] == "initial" and on_disk["state"] == "IDLE"
    assert set(on_disk) == set(expected)
    for key in ("timestamps", "counters", "machine"):
        assert _shape(on_disk[key]).keys() == _shape(expected[key]).keys(), key
    assert on_disk["test_results"] == RESULTS
    assert on_disk["timestamps"]["last_test_at"] == RESULTS["last_run"]
    # The loop can take the project over from here.
    state = m.RunState.from_document(on_disk)
    assert state.state is m.State.IDLE and state.last_test_at == datetime(2026, 12, 1, 10, 5, tzinfo=UTC)


def test_merge_keeps_the_rest_of_an_existing_document(tmp_path: Path) -> None:
    store = StateStore(tmp_path, "ant-quic")
    lease = store.acquire()
    fresh = m.initial_state("ant-quic", T0)
    running = replace(fresh, state=m.State.WAIT_1HR, wait_until=T0, soak_checkpoint=1)
    store.commit(lease, {**new_state_document("ant-quic", T0), **running.to_document()}, {"event": "x"})
    store.merge_test_results(lease, RESULTS)
    loaded = store.load()
    assert loaded is not None
    assert loaded["state"] == "WAIT_1HR" and loaded["machine"]["soak_checkpoint"] == 1
    assert loaded["test_results"] == RESULTS and loaded["last_seq"] == 1
    assert loaded["timestamps"]["wait_until"] == iso_time(T0)


def test_merge_needs_the_current_lease(tmp_path: Path) -> None:
    store = StateStore(tmp_path, "ant-quic")
    lease = store.acquire()
    store.release(lease)
    with pytest.raises(StaleLeaseError):
        store.merge_test_results(lease, RESULTS)
    assert not store.state_path.exists()


def test_timestamps_refuse_naive_times() -> None:
    with pytest.raises(ValueError, match="naive"):
        new_state_document("p", datetime(2026, 1, 1))
