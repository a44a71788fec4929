"""The state store, one behaviour per test: the lease and its fencing tokens, commits and the
transitions log, atomic state writes, loading a base-format state file as-is, and recovery from a torn
log tail, a corrupt or missing state file and a state file left behind the log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_vpstest.errors import LeaseHeldError, StaleLeaseError, StateError
from pytest_vpstest.records.store import SCHEMA_VERSION, Lease, StateStore, is_safe_identifier

# A state file in the base format (no schema_version, fencing token or machine notes), as the
# shipped example docs/examples/example-state.json has it.
BASE_STATE = """\
{
  "project": "ant-quic",
  "state": "WAIT_1HR",
  "phase": "soak",

  "timestamps": {
    "started_at": "2025-01-10T10:00:00Z",
    "last_state_change": "2025-01-10T14:30:00Z",
    "last_test_at": "2025-01-10T14:30:00Z",
    "wait_until": "2025-01-10T15:30:00Z"
  },

  "counters": {
    "fix_attempts": 3,
    "build_count": 4,
    "deploy_count": 4,
    "test_count": 5
  },

  "commits": [
    {"sha": "abc123", "message": "fix: timeout", "time": "2025-01-10T10:15:00Z"},
    {"sha": "def456", "message": "fix: buffer", "time": "2025-01-10T11:30:00Z"}
  ],

  "test_results": {
    "last_run": "2025-01-10T14:30:00Z",
    "passed": true,
    "suites": {
      "connectivity": {
        "direct": {"attempts": 72, "success": 71, "rate": 98.6},
        "nat_traversed": {"attempts": 72, "success": 63, "rate": 87.5},
        "relay": {"attempts": 72, "success": 72, "rate": 100.0}
      },
      "throughput": {
        "avg_mbps": 45.3,
        "min_mbps": 12.1,
        "max_mbps": 89.7
      }
    }
  },

  "nodes": {
    "saorsa-2": {"status": "online", "last_check": "2025-01-10T14:30:00Z"},
    "saorsa-3": {"status": "online", "last_check": "2025-01-10T14:30:00Z"},
    "saorsa-4": {"status": "degraded", "last_check": "2025-01-10T14:30:00Z", "error": "high latency"}
  },

  "logs": [
    {"time": "2025-01-10T10:00:00Z", "state": "SETUP", "message": "Loading config"},
    {"time": "2025-01-10T10:00:05Z", "state": "SETUP", "message": "Verified 9/10 nodes"},
    {"time": "2025-01-10T10:00:30Z", "state": "BUILD", "message": "Starting build"},
    {"time": "2025-01-10T10:02:15Z", "state": "BUILD", "message": "Build complete (1m 45s)"}
  ]
}
"""

T0 = 1_767_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_store(
    tmp_path: Path,
    clock: FakeClock,
    *,
    project: str = "ant-quic",
    host: str = "host-a",
    pid: int = 1001,
    alive: bool = True,
) -> StateStore:
    return StateStore(
        tmp_path, project, clock=clock, host=host, pid=pid, lease_ttl=60.0, pid_alive=lambda _pid: alive
    )


def doc(state: str, **extra: Any) -> dict[str, Any]:
    return {"project": "ant-quic", "state": state, "counters": {"build_count": 1}, **extra}


def step(frm: str, to: str) -> dict[str, str]:
    return {"from": frm, "to": to, "event": f"{frm.lower()}_done", "reason": "test"}


def log_lines(store: StateStore) -> list[bytes]:
    return store.log_path.read_bytes().splitlines(keepends=True)


# ------------------------------------------------------------------ names


@pytest.mark.parametrize("name", ["", "../etc", "a/b", ".hidden", "a..b", "a b", "a;rm", "-x", "ä"])
def test_unsafe_project_names_are_refused(tmp_path: Path, name: str) -> None:
    assert not is_safe_identifier(name)
    with pytest.raises(StateError, match="safe identifier"):
        StateStore(tmp_path, name)


def test_safe_project_names_are_accepted(tmp_path: Path) -> None:
    for name in ("ant-quic", "saorsa_4", "p2p.v2", "X"):
        assert StateStore(tmp_path, name).directory == tmp_path / name


# ------------------------------------------------------------------ lease


def test_second_writer_is_refused_naming_the_holder(tmp_path: Path, clock: FakeClock) -> None:
    first = make_store(tmp_path, clock, host="alpha", pid=4242)
    second = make_store(tmp_path, clock, host="beta", pid=7)
    first.acquire()
    with pytest.raises(LeaseHeldError) as caught:
        second.acquire()
    message = str(caught.value)
    assert "pid 4242" in message and "alpha" in message and "2025-12-29T09:20:00.000Z" in message
    assert (caught.value.pid, caught.value.host) == (4242, "alpha")


def test_same_process_cannot_acquire_twice(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    store.acquire()
    with pytest.raises(LeaseHeldError):
        store.acquire()


def test_expired_lease_is_taken_over_with_the_next_token(tmp_path: Path, clock: FakeClock) -> None:
    first = make_store(tmp_path, clock, host="alpha")
    second = make_store(tmp_path, clock, host="beta")
    old = first.acquire()
    clock.now += 60.0
    with pytest.raises(LeaseHeldError):  # expires_at itself still belongs to the holder
        second.acquire()
    clock.now += 0.001
    new = second.acquire()
    assert new.token == old.token + 1
    holder = second.holder()
    assert holder is not None and (holder.host, holder.token) == ("beta", new.token)


def test_dead_holder_on_same_host_is_taken_over_before_expiry(tmp_path: Path, clock: FakeClock) -> None:
    make_store(tmp_path, clock, host="alpha", pid=1).acquire()
    successor = make_store(tmp_path, clock, host="alpha", pid=2, alive=False)
    assert successor.acquire().token == 2


def test_holder_on_another_host_is_not_judged_by_local_pids(tmp_path: Path, clock: FakeClock) -> None:
    make_store(tmp_path, clock, host="alpha", pid=1).acquire()
    other_host = make_store(tmp_path, clock, host="beta", pid=2, alive=False)
    with pytest.raises(LeaseHeldError):
        other_host.acquire()


def test_real_exited_process_lease_is_taken_over(tmp_path: Path, clock: FakeClock) -> None:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(child.stdout)
    StateStore(tmp_path, "ant-quic", clock=clock, host="alpha", pid=dead_pid).acquire()
    lease = StateStore(tmp_path, "ant-quic", clock=clock, host="alpha").acquire()
    assert lease.token == 2


def test_real_live_process_lease_is_respected(tmp_path: Path, clock: FakeClock) -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as child:
        try:
            StateStore(tmp_path, "ant-quic", clock=clock, host="alpha", pid=child.pid).acquire()
            with pytest.raises(LeaseHeldError, match=f"pid {child.pid}"):
                StateStore(tmp_path, "ant-quic", clock=clock, host="alpha").acquire()
        finally:
            child.kill()


def test_tokens_are_never_reused_after_release(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    tokens = []
    for _ in range(3):
        lease = store.acquire()
        tokens.append(lease.token)
        assert store.release(lease)
        assert store.holder() is None
    assert tokens == [1, 2, 3]


def test_tokens_stay_above_used_ones_when_lease_file_is_lost(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    for _ in range(3):
        lease = store.acquire()
        store.commit(lease, doc("SETUP"), step("IDLE", "SETUP"))
        store.release(lease)
    store.lease_path.unlink()
    assert store.acquire().token == 4


def test_corrupt_lease_file_is_moved_aside_and_tokens_continue(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    store.commit(lease, doc("SETUP"), step("IDLE", "SETUP"))
    store.lease_path.write_text("{not json")
    assert store.acquire().token == 2
    kept = list(store.corrupt_dir.glob("lease-*.json"))
    assert [p.read_text() for p in kept] == ["{not json"]


def test_renew_extends_and_stale_renew_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    clock.now += 50
    renewed = store.renew(lease)
    assert renewed.token == lease.token and renewed.expires_at == clock.now + 60
    clock.now += 61
    with pytest.raises(StaleLeaseError, match="expired"):
        store.renew(renewed)


def test_renew_after_takeover_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    first = make_store(tmp_path, clock, host="alpha")
    old = first.acquire()
    clock.now += 61
    make_store(tmp_path, clock, host="beta").acquire()
    with pytest.raises(StaleLeaseError, match="token 1 refused"):
        first.renew(old)


def test_release_of_a_stale_lease_leaves_the_new_holder_alone(tmp_path: Path, clock: FakeClock) -> None:
    first = make_store(tmp_path, clock, host="alpha")
    old = first.acquire()
    clock.now += 61
    second = make_store(tmp_path, clock, host="beta")
    new = second.acquire()
    assert not first.release(old)
    second.commit(new, doc("SETUP"), step("IDLE", "SETUP"))
    holder = first.holder()
    assert holder is not None and holder.token == new.token


def test_holder_is_none_when_free_or_expired(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    assert store.holder() is None
    store.acquire()
    assert store.holder() is not None
    clock.now += 61
    assert store.holder() is None


# ------------------------------------------------------------------ commits


def test_commit_appends_one_line_and_writes_state(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    assert store.commit(lease, doc("SETUP"), step("IDLE", "SETUP")) == 1
    clock.now += 1.5
    assert store.commit(lease, doc("BUILD"), step("SETUP", "BUILD")) == 2
    lines = log_lines(store)
    assert len(lines) == 2 and all(line.endswith(b"\n") for line in lines)
    entries = [json.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == [1, 2]
    assert len({e["id"] for e in entries}) == 2 and all(len(e["id"]) == 32 for e in entries)
    last = entries[-1]
    assert [last[k] for k in ("from", "to", "event", "reason")] == ["SETUP", "BUILD", "setup_done", "test"]
    assert (last["project"], last["token"], last["time"]) == ("ant-quic", 1, "2025-12-29T09:20:01.500Z")
    state = json.loads(store.state_path.read_text())
    assert state == last["snapshot"]
    assert state["state"] == "BUILD"
    assert (state["schema_version"], state["fencing_token"], state["last_seq"]) == (SCHEMA_VERSION, 1, 2)
    assert not [p for p in store.directory.iterdir() if p.name.endswith(".tmp")]


def test_commit_replaces_caller_supplied_metadata(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    store.commit(lease, doc("SETUP", fencing_token=99, last_seq=42, schema_version=1), step("IDLE", "SETUP"))
    state = store.load()
    assert state is not None and (state["fencing_token"], state["last_seq"]) == (1, 1)


def test_commit_with_stale_token_writes_nothing(tmp_path: Path, clock: FakeClock) -> None:
    first = make_store(tmp_path, clock, host="alpha")
    old = first.acquire()
    first.commit(old, doc("SETUP"), step("IDLE", "SETUP"))
    clock.now += 61
    second = make_store(tmp_path, clock, host="beta")
    new = second.acquire()
    before = (first.state_path.read_bytes(), first.log_path.read_bytes())
    with pytest.raises(StaleLeaseError, match="fencing token 1 refused"):
        first.commit(old, doc("BUILD"), step("SETUP", "BUILD"))
    with pytest.raises(StaleLeaseError):
        first.update(old, doc("BUILD"))
    assert (first.state_path.read_bytes(), first.log_path.read_bytes()) == before
    assert second.commit(new, doc("BUILD"), step("SETUP", "BUILD")) == 2


def test_commit_with_expired_lease_is_refused_even_without_successor(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    clock.now += 61
    with pytest.raises(StaleLeaseError, match="expired"):
        store.commit(lease, doc("SETUP"), step("IDLE", "SETUP"))
    assert not store.log_path.exists() or store.log_path.read_bytes() == b""


def test_forged_lease_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    real = store.acquire()
    forged = Lease("ant-quic", real.token, real.pid + 1, real.host, real.acquired_at, real.expires_at)
    with pytest.raises(StaleLeaseError):
        store.commit(forged, doc("SETUP"), step("IDLE", "SETUP"))


def test_commit_cuts_a_torn_tail_without_newline(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    store.commit(lease, doc("SETUP"), step("IDLE", "SETUP"))
    with store.log_path.open("ab") as log:
        log.write(b'{"id": "abc", "seq": 2, "snap')
    assert store.commit(lease, doc("BUILD"), step("SETUP", "BUILD")) == 2
    assert [json.loads(line)["seq"] for line in log_lines(store)] == [1, 2]
    assert any("torn" in note for note in store.recovered)


def test_commit_cuts_an_unreadable_terminated_final_line(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    store.commit(lease, doc("SETUP"), step("IDLE", "SETUP"))
    with store.log_path.open("ab") as log:
        log.write(b"\x00" * 40 + b"\n")
    assert store.commit(lease, doc("BUILD"), step("SETUP", "BUILD")) == 2
    assert [json.loads(line)["seq"] for line in log_lines(store)] == [1, 2]


def test_commit_refuses_a_log_with_a_corrupt_middle_line(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    store.commit(lease, doc("SETUP"), step("IDLE", "SETUP"))
    with store.log_path.open("ab") as log:
        log.write(b"garbage\n")
    store.commit(lease, doc("BUILD"), step("SETUP", "BUILD"))  # the garbage line was the final one: cut
    with store.log_path.open("ab") as log:
        log.write(b"garbage\npartial")
    with pytest.raises(StateError, match="not the final line"):
        store.commit(lease, doc("DEPLOY"), step("BUILD", "DEPLOY"))


def test_a_damaged_middle_line_stops_new_appends(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    for i, (a, b) in enumerate([("IDLE", "SETUP"), ("SETUP", "BUILD"), ("BUILD", "DEPLOY")]):
        store.commit(lease, doc(b), step(a, b))
        assert i + 1 == len(log_lines(store))
    lines = store.log_path.read_bytes().split(b"\n")
    lines[1] = b"x" * len(lines[1])  # damaged in place: same length, the last line still whole
    store.log_path.write_bytes(b"\n".join(lines))
    before = store.log_path.read_bytes()
    with pytest.raises(StateError, match=r"transitions.jsonl:2: not a valid transition entry"):
        store.commit(lease, doc("TEST"), step("DEPLOY", "TEST"))
    # A new writer (a restarted runner) is refused too; nothing was appended.
    other = make_store(tmp_path, clock)
    with pytest.raises(StateError, match=r":2: not a valid"):
        other.commit(lease, doc("TEST"), step("DEPLOY", "TEST"))
    assert store.log_path.read_bytes() == before


def test_a_failed_append_leaves_no_partial_line(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    store.commit(lease, doc("SETUP"), step("IDLE", "SETUP"))
    before = store.log_path.read_bytes()
    # A real short write: a file-size limit half-way into the next line (as a full disk would do).
    script = f"""
import resource, signal
from pytest_vpstest.errors import StateError
from pytest_vpstest.records.store import Lease, StateStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = {len(before) + 200}
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
store = StateStore({str(tmp_path)!r}, "ant-quic", clock=lambda: {clock.now}, host="host-a", pid=1001,
                   lease_ttl=60.0, pid_alive=lambda _pid: True)
lease = Lease("ant-quic", {lease.token}, 1001, "host-a", {lease.acquired_at}, {lease.expires_at})
try:
    store.commit(lease, {{"project": "ant-quic", "logs": ["x" * 1000]}}, {{"from": "SETUP", "to": "BUILD"}})
except StateError as exc:
    print(exc)
"""
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "cannot append the transition" in child.stdout, child.stderr
    assert store.log_path.read_bytes() == before
    assert store.commit(lease, doc("BUILD"), step("SETUP", "BUILD")) == 2
    assert [t["seq"] for t in store.transitions()] == [1, 2]


def test_update_writes_state_without_a_transition(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    store.commit(lease, doc("TEST"), step("DEPLOY", "TEST"))
    store.update(lease, doc("TEST", test_results={"passed": True}))
    assert len(log_lines(store)) == 1
    state = store.load()
    assert state is not None and state["test_results"] == {"passed": True} and state["last_seq"] == 1
    assert store.commit(lease, doc("FIX"), step("TEST", "FIX")) == 2


def test_update_before_any_transition(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    store.update(lease, doc("IDLE"))
    state = store.load()
    assert state is not None and state["last_seq"] == 0 and state["state"] == "IDLE"
    assert store.transitions() == []


@pytest.mark.parametrize(
    ("document", "transition"),
    [
        ({"state": "X", "when": object()}, step("IDLE", "SETUP")),
        ({"state": "X", "rate": float("nan")}, step("IDLE", "SETUP")),
        ({"state": "X"}, {"seq": 5, "from": "IDLE"}),
        ({"state": "X"}, {"snapshot": {}}),
        ({"project": "other", "state": "X"}, step("IDLE", "SETUP")),
    ],
)
def test_unwritable_documents_are_refused_before_any_write(
    tmp_path: Path, clock: FakeClock, document: dict[str, Any], transition: dict[str, Any]
) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    with pytest.raises(StateError):
        store.commit(lease, document, transition)
    assert not store.state_path.exists()
    assert not store.log_path.exists() or store.log_path.read_bytes() == b""


# ------------------------------------------------------------------ loading


def test_load_of_a_new_project_is_none(tmp_path: Path, clock: FakeClock) -> None:
    result = make_store(tmp_path, clock).load_result()
    assert (result.document, result.source, result.recovered) == (None, "none", [])


def test_base_format_state_file_loads_as_is(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    store.directory.mkdir()
    store.state_path.write_text(BASE_STATE)
    result = store.load_result()
    assert result.document == json.loads(BASE_STATE)
    assert (result.source, result.recovered) == ("state", [])


def test_shipped_example_is_the_base_format_state_file_and_loads(tmp_path: Path, clock: FakeClock) -> None:
    example = Path(__file__).parents[3] / "docs" / "examples" / "example-state.json"
    assert example.read_text() == BASE_STATE
    store = make_store(tmp_path, clock)
    store.directory.mkdir()
    store.state_path.write_bytes(example.read_bytes())
    assert store.load() == json.loads(BASE_STATE)


def test_base_format_state_file_continues_under_a_lease(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    store.directory.mkdir()
    store.state_path.write_text(BASE_STATE)
    lease = store.acquire()
    loaded = store.load()
    assert loaded is not None
    store.commit(lease, {**loaded, "state": "TEST"}, step("WAIT_1HR", "TEST"))
    state = store.load()
    assert state is not None and state["state"] == "TEST" and state["schema_version"] == SCHEMA_VERSION
    assert state["counters"] == json.loads(BASE_STATE)["counters"]


def test_missing_state_is_rebuilt_from_the_log(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    store.commit(lease, doc("SETUP"), step("IDLE", "SETUP"))
    store.commit(lease, doc("BUILD"), step("SETUP", "BUILD"))
    expected = store.load()
    store.state_path.unlink()
    result = store.load_result()
    assert result.document == expected and result.source == "log"
    assert any("missing" in note for note in result.recovered)


@pytest.mark.parametrize(
    "garbage",
    [
        b'{"project": "ant-quic", "state": "BU',
        b"[1, 2, 3]",
        b'{"project": "ant-quic", "schema_version": "one"}',
        b'{"project": "ant-quic", "fencing_token": -3}',
        b'{"project": "someone-else", "state": "IDLE"}',
        b"\xff\xfe\x00",
    ],
)
def test_corrupt_state_is_kept_aside_and_rebuilt_from_the_log(
    tmp_path: Path, clock: FakeClock, garbage: bytes
) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    store.commit(lease, doc("SETUP"), step("IDLE", "SETUP"))
    store.commit(lease, doc("BUILD"), step("SETUP", "BUILD"))
    expected = store.load()
    store.state_path.write_bytes(garbage)
    result = store.load_result()
    assert result.document == expected and result.source == "log"
    kept = list(store.corrupt_dir.glob("state-*.json"))
    assert len(kept) == 1 and kept[0].read_bytes() == garbage
    assert any(str(kept[0]) in note for note in result.recovered)
    assert store.recovered == result.recovered
    assert not store.state_path.exists()  # load never writes state; the next commit does


def test_corrupt_state_without_log_is_kept_and_reported(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    store.directory.mkdir()
    store.state_path.write_text("{")
    assert store.load() is None
    assert len(list(store.corrupt_dir.iterdir())) == 1
    assert any("moved it to" in note for note in store.recovered)


def test_newer_schema_is_an_error_not_corruption(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    store.directory.mkdir()
    store.state_path.write_text(json.dumps({"project": "ant-quic", "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(StateError, match="newer"):
        store.load()
    assert store.state_path.exists() and not store.corrupt_dir.exists()


def test_log_wins_when_state_is_behind(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    store.commit(lease, doc("SETUP"), step("IDLE", "SETUP"))
    behind = store.state_path.read_bytes()
    store.commit(lease, doc("BUILD"), step("SETUP", "BUILD"))
    store.state_path.write_bytes(behind)  # as if the crash came between log append and state write
    result = store.load_result()
    assert result.source == "log" and result.document is not None
    assert result.document == store.transitions()[-1]["snapshot"]
    assert any("behind" in note for note in result.recovered)


def test_torn_tail_is_ignored_by_load(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    store.commit(lease, doc("SETUP"), step("IDLE", "SETUP"))
    expected = store.load()
    with store.log_path.open("ab") as log:
        log.write(b'{"id": "x", "seq": 2, "snapshot": {"state": "NEVER"')
    assert store.load() == expected


def test_load_falls_back_past_a_corrupt_log_line(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    store.commit(lease, doc("SETUP"), step("IDLE", "SETUP"))
    store.commit(lease, doc("BUILD"), step("SETUP", "BUILD"))
    expected = store.transitions()[-1]["snapshot"]
    store.state_path.unlink()
    with store.log_path.open("ab") as log:
        log.write(b"garbage\nmore garbage\n")
    assert store.load() == expected
    assert any("last readable entry" in note for note in store.recovered)


# ------------------------------------------------------------------ transitions()


def test_transitions_skip_and_report_a_torn_final_line(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    for frm, to in [("IDLE", "SETUP"), ("SETUP", "BUILD")]:
        store.commit(lease, doc(to), step(frm, to))
    with store.log_path.open("ab") as log:
        log.write(b'{"seq": 3')
    assert [t["to"] for t in store.transitions()] == ["SETUP", "BUILD"]
    assert store.recovered and ":3:" in store.recovered[0]


def test_transitions_name_the_corrupt_line(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    lease = store.acquire()
    store.commit(lease, doc("SETUP"), step("IDLE", "SETUP"))
    lines = log_lines(store)
    store.log_path.write_bytes(lines[0] + b"{broken\n" + lines[0])
    with pytest.raises(StateError, match=r"transitions\.jsonl:2: not a valid transition entry"):
        store.transitions()


# ------------------------------------------------------------------ projects


def test_projects_in_one_state_dir_are_independent(tmp_path: Path, clock: FakeClock) -> None:
    quic = make_store(tmp_path, clock, project="ant-quic", host="alpha", pid=1)
    gossip = make_store(tmp_path, clock, project="saorsa-gossip", host="beta", pid=2)
    quic_lease = quic.acquire()
    gossip_lease = gossip.acquire()  # another project's lease does not block this one
    assert quic_lease.token == gossip_lease.token == 1
    assert quic.commit(quic_lease, doc("SETUP"), step("IDLE", "SETUP")) == 1
    assert (
        gossip.commit(gossip_lease, {"project": "saorsa-gossip", "state": "SETUP"}, step("IDLE", "SETUP"))
        == 1
    )
    assert quic.commit(quic_lease, doc("BUILD"), step("SETUP", "BUILD")) == 2
    # A lease of one project is no lease for the other, even with the same token number.
    with pytest.raises(StaleLeaseError):
        gossip.commit(quic_lease, {"project": "saorsa-gossip"}, step("SETUP", "BUILD"))
    quic_state, gossip_state = quic.load(), gossip.load()
    assert quic_state is not None and gossip_state is not None
    assert (quic_state["state"], quic_state["last_seq"]) == ("BUILD", 2)
    assert (gossip_state["state"], gossip_state["last_seq"]) == ("SETUP", 1)
    clock.now += 61
    assert quic.holder() is None
    quic.state_path.write_text("{")
    quic.load()
    assert gossip.load() == gossip_state and not gossip.corrupt_dir.exists()
