"""The single-writer lease under Hypothesis: several simulated processes (own pid and host, one shared
fake clock, one real state directory) acquire, renew, release, pause, die and restart in random order,
and write with whatever lease they hold. Proves: never two processes that both believe they hold an
unexpired lease at the same instant; a write is accepted exactly when its lease is the current one;
fencing tokens strictly increase; transition seqs run 1, 2, 3, ... without gap or duplicate."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pytest_vpstest.errors import LeaseHeldError, StaleLeaseError
from pytest_vpstest.records.store import Lease, StateStore

TTL = 10.0
HOSTS = ("alpha", "alpha", "beta", "gamma")  # two processes share a host: dead-holder takeover applies
PROCS = st.integers(min_value=0, max_value=len(HOSTS) - 1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Process:
    host: str
    pid: int
    store: StateStore
    alive: bool = True
    lease: Lease | None = None


@dataclass
class ModelLease:
    """What lease.json should say, kept independently of the store."""

    token: int
    host: str
    pid: int
    expires_at: float


def _scratch_dir() -> Path:
    # tmpfs when there is one: the invariants are about ordering, not the disk, and fsync there is free.
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="vpstest-lease-", dir=shm if shm.is_dir() else None))


class LeaseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = _scratch_dir()
        self.clock = FakeClock()
        self.dead: set[tuple[str, int]] = set()
        self.next_pid = 100
        self.procs = [self._spawn(host) for host in HOSTS]
        self.holder: ModelLease | None = None
        self.issued: list[int] = []
        self.last_seq = 0
        self.last_document: dict[str, object] | None = None

    def _spawn(self, host: str) -> Process:
        self.next_pid += 1
        pid = self.next_pid
        store = StateStore(
            self.directory,
            "proj",
            clock=self.clock,
            host=host,
            pid=pid,
            lease_ttl=TTL,
            pid_alive=lambda p, h=host: (h, p) not in self.dead,  # type: ignore[misc]
        )
        return Process(host=host, pid=pid, store=store)

    # ---------------------------------------------------------------- model

    def _free_for(self, proc: Process) -> bool:
        held = self.holder
        if held is None or self.clock.now > held.expires_at:
            return True
        return held.host == proc.host and (held.host, held.pid) in self.dead

    def _current(self, lease: Lease) -> bool:
        held = self.holder
        return (
            held is not None
            and (held.token, held.host, held.pid) == (lease.token, lease.host, lease.pid)
            and self.clock.now <= held.expires_at
        )

    # ---------------------------------------------------------------- rules

    @initialize()
    def first_writer(self) -> None:
        """Every run starts with a holder that has written once, so short runs still test fencing."""
        self.acquire(0)
        self.write_with(0, with_transition=True)

    @rule(i=PROCS)
    def acquire(self, i: int) -> None:
        proc = self.procs[i]
        if not proc.alive:
            return
        expected_free = self._free_for(proc)
        try:
            lease = proc.store.acquire()
        except LeaseHeldError:
            assert not expected_free, "acquire refused although the lease was free"
            event("acquire refused")
            return
        event("acquire granted" if self.holder is None else "acquire took over")
        assert expected_free, f"acquire granted while {self.holder} was live"
        assert lease.token == max(self.issued, default=0) + 1, (lease.token, self.issued)
        self.issued.append(lease.token)
        self.holder = ModelLease(lease.token, proc.host, proc.pid, lease.expires_at)
        proc.lease = lease

    def _with_lease(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p.alive and p.lease is not None]

    @precondition(lambda self: self._with_lease())
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        proc = self.procs[data.draw(st.sampled_from(self._with_lease()), label="process")]
        assert proc.lease is not None
        expected = self._current(proc.lease)
        try:
            lease = proc.store.renew(proc.lease)
        except StaleLeaseError:
            assert not expected, "renewal of the current lease refused"
            proc.lease = None
            return
        assert expected, f"stale lease {proc.lease} renewed"
        assert self.holder is not None
        self.holder.expires_at = lease.expires_at
        proc.lease = lease

    @precondition(lambda self: self._with_lease())
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        proc = self.procs[data.draw(st.sampled_from(self._with_lease()), label="process")]
        assert proc.lease is not None
        held = self.holder
        expected = held is not None and (held.token, held.pid) == (proc.lease.token, proc.lease.pid)
        assert proc.store.release(proc.lease) == expected
        if expected:
            self.holder = None
        proc.lease = None

    @precondition(lambda self: self._with_lease())
    @rule(data=st.data(), with_transition=st.booleans())
    def write(self, data: st.DataObject, with_transition: bool) -> None:
        """Write with whatever lease the process holds, current or long stale (a paused process)."""
        self.write_with(data.draw(st.sampled_from(self._with_lease()), label="process"), with_transition)

    def write_with(self, i: int, with_transition: bool) -> None:
        proc = self.procs[i]
        assert proc.lease is not None
        expected = self._current(proc.lease)
        document: dict[str, object] = {
            "project": "proj",
            "state": "BUILD",
            "by": proc.pid,
            "n": len(self.issued),
        }
        transition = {"from": "SETUP", "to": "BUILD", "event": "step"} if with_transition else None
        try:
            seq = proc.store.commit(proc.lease, document, transition)
        except StaleLeaseError:
            assert not expected, "write with the current lease refused"
            held = self.holder
            event(
                "stale write refused" + (" after takeover" if held and held.token != proc.lease.token else "")
            )
            return
        event("write accepted")
        assert expected, f"write with stale lease {proc.lease} accepted (current {self.holder})"
        assert proc.lease.token == max(self.issued)
        assert seq == self.last_seq + (1 if with_transition else 0), (seq, self.last_seq)
        self.last_seq = seq
        self.last_document = document

    @rule(i=PROCS)
    def die(self, i: int) -> None:
        proc = self.procs[i]
        if proc.alive:
            proc.alive = False
            proc.lease = None
            self.dead.add((proc.host, proc.pid))

    @rule(i=PROCS)
    def restart(self, i: int) -> None:
        if not self.procs[i].alive:
            self.procs[i] = self._spawn(self.procs[i].host)

    @rule(seconds=st.one_of(st.floats(min_value=0, max_value=2.5 * TTL), st.sampled_from([TTL, TTL / 2])))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(i=PROCS, margin=st.sampled_from([0.0, 0.001, 1.0]))
    def expire_and_take_over(self, i: int, margin: float) -> None:
        """Let the current lease run out (to its last instant, or just past it), then try to take it:
        the situation fencing exists for, made common rather than left to chance."""
        if self.holder is not None:
            self.clock.now = max(self.clock.now, self.holder.expires_at + margin)
        self.acquire(i)

    # ----------------------------------------------------------- invariants

    @invariant()
    def at_most_one_believer(self) -> None:
        believers = [
            (p.host, p.pid, p.lease.token)
            for p in self.procs
            if p.alive and p.lease is not None and p.lease.valid_at(self.clock.now)
        ]
        assert len(believers) <= 1, f"two processes believe they hold the lease: {believers}"

    @invariant()
    def tokens_strictly_increase(self) -> None:
        assert all(a < b for a, b in zip(self.issued, self.issued[1:], strict=False))

    @invariant()
    def readers_see_exactly_the_accepted_writes(self) -> None:
        loaded = self.procs[0].store.load()
        if self.last_document is None:
            assert loaded is None
        else:
            assert loaded is not None and loaded["last_seq"] == self.last_seq
            assert {k: loaded[k] for k in self.last_document} == self.last_document

    def teardown(self) -> None:
        try:
            store = self.procs[0].store
            entries = store.transitions()
            assert [e["seq"] for e in entries] == list(range(1, self.last_seq + 1))
            assert len({e["id"] for e in entries}) == len(entries)
            tokens = [e["token"] for e in entries]
            assert tokens == sorted(tokens)
            loaded = store.load()
            if self.last_document is None:
                assert loaded is None
            else:
                assert loaded is not None
                assert {k: loaded[k] for k in self.last_document} == self.last_document
                assert loaded["last_seq"] == self.last_seq
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


LeaseMachine.TestCase.settings = settings(LeaseMachine.TestCase.settings, stateful_step_count=60)
TestLease = LeaseMachine.TestCase
