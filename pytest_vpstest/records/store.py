"""The project's persistent state: state file, transitions log and single-writer lease.

Files, per project, under ``<state_dir>/<project>/`` (see docs/internals.md and docs/state-store.md):

``state.json``
    The state document (docs/how-it-works.md) plus ``schema_version``, ``fencing_token`` and ``last_seq``.
    Always replaced atomically (temp file in the same directory, fsync, rename, directory fsync),
    so a reader sees the old or the new document, never a mix.
``transitions.jsonl``
    Append-only, one JSON object per line: ``id`` (uuid4 hex), ``seq`` (1, 2, 3, ... without gaps),
    ``time``, ``project``, ``token``, the transition's fields and ``snapshot`` (the full state document
    as written to state.json). Each line is written by one ``os.write`` and fsynced: the appended
    line is the commit point of a transition.
``lease.json`` + ``lease.lock``
    The single-writer lease. Every read-modify-write of ``lease.json``, and every commit, happens
    under ``flock`` on ``lease.lock``; so a commit's fencing check and its writes are one step.
``corrupt/``
    State files that could not be read are moved here, never deleted.

A writer ``acquire()``s the lease and passes it to ``commit()``/``update()``; a write carrying a lease
that is no longer the current one (expired, taken over, released) is refused with ``StaleLeaseError``.
Fencing tokens only grow, also across releases and a lost ``lease.json``.

Crash safety: a crash mid-append leaves a torn final line, which was never committed; it is skipped by
readers and cut off by the next writer. A crash between the append and the state write leaves
state.json one transition behind; ``load()`` then returns the log's snapshot.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pytest_vpstest._files import fsync_dir, write_bytes_atomic
from pytest_vpstest._proc import pid_alive
from pytest_vpstest.errors import LeaseHeldError, StaleLeaseError, StateError
from pytest_vpstest.records.state_doc import new_state_document

__all__ = [
    "SCHEMA_VERSION",
    "Lease",
    "LeaseInfo",
    "LoadResult",
    "StateStore",
    "is_safe_identifier",
    "iso_utc",
]

SCHEMA_VERSION = 1
_LEASE_SCHEMA_VERSION = 1
_META_KEYS = ("schema_version", "fencing_token", "last_seq")
_SAFE_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CHUNK = 64 * 1024

_log = logging.getLogger(__name__)

# Test seam: called with a label where a crash does the most harm ("after-append" and "before-replace"
# of a commit, "before-update-replace" of an update). The crash test's writer process sets it to sleep
# there, widening the window in which a SIGKILL lands mid-commit. Unset in normal use.
_pause_hook: Callable[[str], None] | None = None


def is_safe_identifier(name: str) -> bool:
    """True for names usable as one path component: ``[A-Za-z0-9][A-Za-z0-9._-]*`` without ``..``."""
    return bool(_SAFE_IDENTIFIER.fullmatch(name)) and ".." not in name


def iso_utc(epoch: float) -> str:
    """``2025-01-10T10:00:00.123Z`` for a POSIX timestamp."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class LeaseInfo:
    """The lease as recorded in lease.json: who holds it, since when, until when."""

    project: str
    token: int
    pid: int
    host: str
    acquired_at: float
    expires_at: float
    pid_start: str | None = None

    @property
    def since(self) -> str:
        return iso_utc(self.acquired_at)

    def expired(self, now: float) -> bool:
        return now > self.expires_at


@dataclass(frozen=True)
class Lease:
    """A writer's handle on the lease; pass it to every write. ``token`` is the fencing token."""

    project: str
    token: int
    pid: int
    host: str
    acquired_at: float
    expires_at: float

    def valid_at(self, now: float) -> bool:
        """Whether this handle's holder may still believe it holds the lease at ``now``."""
        return now <= self.expires_at


@dataclass
class LoadResult:
    """What ``StateStore.load_result()`` found.

    ``source`` says where ``document`` came from; ``recovered`` holds one line per repair or fallback
    (a corrupt state file moved aside, a state file behind the log, a torn log tail skipped),
    worded for the user.
    """

    document: dict[str, Any] | None
    source: Literal["state", "log", "none"]
    recovered: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Tail:
    """The end of the transitions log: where committed data ends and the last committed entry."""

    committed_end: int
    size: int
    last: dict[str, Any] | None

    @property
    def torn(self) -> bool:
        return self.committed_end < self.size


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after it are plain.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _write_atomic(path: Path, data: bytes, pause: str | None = None) -> None:
    """Replace ``path`` with ``data`` through the package's one atomic writer (``_files``)."""

    def before_replace() -> None:
        if pause is not None and _pause_hook is not None:
            _pause_hook(pause)

    write_bytes_atomic(path, data, before_replace=before_replace)


def _line_start(fd: int, end: int) -> int:
    """Offset just after the last newline strictly before ``end``, or 0."""
    pos = end
    while pos > 0:
        step = min(_CHUNK, pos)
        chunk = os.pread(fd, step, pos - step)
        found = chunk.rfind(b"\n")
        if found >= 0:
            return pos - step + found + 1
        pos -= step
    return 0


def _parse_entry(raw: bytes) -> dict[str, Any] | None:
    """A log line's object if it is a well-formed entry, else None."""
    try:
        entry = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(entry, dict):
        return None
    seq = entry.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return None
    if not isinstance(entry.get("snapshot"), dict):
        return None
    return entry


def _int_field(document: Mapping[str, Any], key: str, default: int) -> int:
    value = document.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        return default
    return value


class StateStore:
    """State file, transitions log and lease of one project in a state directory.

    ``clock`` is the store's only source of time (lease expiry, timestamps); ``host`` and ``pid``
    identify this writer (default: this machine and process). ``pid_alive`` decides whether a holder
    on the same host is still running; a lease whose holder is dead is taken over without waiting
    for it to expire. ``lock_timeout`` bounds the wait for lease.lock (``StateError`` after it).
    """

    def __init__(
        self,
        state_dir: Path,
        project: str,
        *,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
        pid: int | None = None,
        lease_ttl: float = 60.0,
        pid_alive: Callable[[int], bool] = pid_alive,
        lock_timeout: float = 30.0,
    ) -> None:
        if not isinstance(project, str) or not is_safe_identifier(project):
            raise StateError(
                f"project name {project!r} is not a safe identifier "
                "(letters, digits, '.', '_', '-', starting with a letter or digit, no '..')"
            )
        if lease_ttl <= 0:
            raise StateError(f"lease_ttl must be positive, got {lease_ttl}")
        self.state_dir = Path(state_dir)
        self.project = project
        self.directory = self.state_dir / project
        self.state_path = self.directory / "state.json"
        self.log_path = self.directory / "transitions.jsonl"
        self.lease_path = self.directory / "lease.json"
        self.lock_path = self.directory / "lease.lock"
        self.corrupt_dir = self.directory / "corrupt"
        self.clock = clock
        self.host = host if host is not None else socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self.lease_ttl = float(lease_ttl)
        self.lock_timeout = float(lock_timeout)
        self._pid_alive = pid_alive
        # One line per repair done by the last load() / transitions(), for the CLI to print.
        self.recovered: list[str] = []
        # How much of the log has been read and found whole: (byte offset, lines, the file's mtime
        # then), so a commit checks only what was appended since, unless the file was changed
        # otherwise (then all of it again): a damaged middle line refuses the next append.
        self._intact: tuple[int, int, int] = (0, 0, -1)

    # ----------------------------------------------------------------- lease

    def acquire(self) -> Lease:
        """Take the project's lease, or raise ``LeaseHeldError`` naming the live holder.

        A lease that expired, or whose holder ran on this host and has exited, is taken over.
        The new token is one above every token this project has used.
        """
        with self._locked():
            now = self.clock()
            holder, last_token = self._read_lease()
            if holder is not None and not self._holder_gone(holder, now):
                raise LeaseHeldError(self.project, holder.pid, holder.host, holder.since)
            if holder is not None:
                _log.warning(
                    "%s: taking over the lease of pid %d on %s (token %d, %s)",
                    self.project,
                    holder.pid,
                    holder.host,
                    holder.token,
                    "expired" if holder.expired(now) else "holder exited",
                )
            token = max(last_token, self._token_floor()) + 1
            self._remove_orphaned_temp_files()
            info = LeaseInfo(
                project=self.project,
                token=token,
                pid=self.pid,
                host=self.host,
                acquired_at=now,
                expires_at=now + self.lease_ttl,
                pid_start=_process_start(self.pid) if self.pid == os.getpid() else None,
            )
            self._write_lease(info, token)
            return self._handle(info)

    def renew(self, lease: Lease) -> Lease:
        """Extend a current lease by ``lease_ttl`` from now; ``StaleLeaseError`` if it is not current."""
        with self._locked():
            now = self.clock()
            info = self._check_current(lease, now)
            renewed = LeaseInfo(
                project=info.project,
                token=info.token,
                pid=info.pid,
                host=info.host,
                acquired_at=info.acquired_at,
                expires_at=now + self.lease_ttl,
                pid_start=info.pid_start,
            )
            self._write_lease(renewed, info.token)
            return self._handle(renewed)

    def release(self, lease: Lease) -> bool:
        """Give the lease up. Returns False (and changes nothing) if ``lease`` was no longer current."""
        with self._locked():
            holder, last_token = self._read_lease()
            if holder is None or not self._same_lease(holder, lease):
                return False
            self._write_lease(None, last_token)
            return True

    def holder(self) -> LeaseInfo | None:
        """The current holder, or None when the lease is free or has expired / its holder exited."""
        with self._locked():
            holder, _ = self._read_lease()
        if holder is None or self._holder_gone(holder, self.clock()):
            return None
        return holder

    # ---------------------------------------------------------------- writes

    def commit(self, lease: Lease, document: Mapping[str, Any], transition: Mapping[str, Any] | None) -> int:
        """Write ``document`` as the new state, after logging ``transition`` (if given); return its seq.

        Refused with ``StaleLeaseError`` unless ``lease`` is current. With a transition, the log line
        (carrying the full document as ``snapshot``) is the commit point; state.json follows. Without
        one, only state.json is replaced and the current last seq is returned.
        """
        with self._locked():
            now = self.clock()
            self._check_current(lease, now)
            fd = os.open(self.log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                tail = self._tail(fd)
                if tail.torn:
                    self._note(
                        f"{self.log_path}: cut a torn final line ({tail.size - tail.committed_end} bytes) "
                        "left by an interrupted write; it was never committed"
                    )
                    os.ftruncate(fd, tail.committed_end)
                    os.fsync(fd)
                last_seq = self._last_seq(tail)
                if transition is None:
                    state = self._state_document(document, lease.token, last_seq)
                    _write_atomic(self.state_path, self._encode_state(state), "before-update-replace")
                    return last_seq
                self._check_intact(fd, tail.committed_end)
                seq = last_seq + 1
                state = self._state_document(document, lease.token, seq)
                line = self._encode_line(transition, state, seq, lease.token, now)
                self._append(fd, line, tail.committed_end)
                self._intact = (tail.committed_end + len(line), self._intact[1] + 1, os.fstat(fd).st_mtime_ns)
            finally:
                os.close(fd)
            if _pause_hook is not None:
                _pause_hook("after-append")
            _write_atomic(self.state_path, self._encode_state(state), "before-replace")
            return seq

    def _check_intact(self, fd: int, committed_end: int) -> None:
        """Refuse to append after a damaged line anywhere in the log (appending would hide the damage)."""
        offset, lines, mtime = self._intact
        if offset > committed_end or os.fstat(fd).st_mtime_ns != mtime:
            offset, lines = 0, 0  # changed by someone else since our last look: read it all again
        data = os.pread(fd, committed_end - offset, offset) if committed_end > offset else b""
        for raw in data.split(b"\n")[:-1]:
            lines += 1
            if _parse_entry(raw) is None:
                raise StateError(
                    f"{self.log_path}:{lines}: not a valid transition entry; no transition is appended "
                    "until the log is repaired (see docs/state-store.md, 'Other damage')"
                )
        self._intact = (committed_end, lines, os.fstat(fd).st_mtime_ns)

    def _append(self, fd: int, line: bytes, committed_end: int) -> None:
        """Append one whole line and fsync it; on any failure, cut the log back so no part of it stays."""
        try:
            written = os.write(fd, line)
            if written != len(line):
                # A short write to a regular file: the disk is full (or a fatal signal is pending).
                raise OSError(errno.ENOSPC, f"short write, {written} of {len(line)} bytes")
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, committed_end)
                os.fsync(fd)
            raise StateError(f"{self.log_path}: cannot append the transition: {exc.strerror or exc}") from exc

    def update(self, lease: Lease, document: Mapping[str, Any]) -> None:
        """Replace state.json with ``document`` without a transition (result merges, node status, logs)."""
        self.commit(lease, document, None)

    def merge_test_results(self, lease: Lease, test_results: Mapping[str, Any]) -> dict[str, Any]:
        """Record a finished test run's ``test_results`` (and ``timestamps.last_test_at``, from its
        ``last_run``) in the project's document, creating the project's first document with
        ``state_doc.new_state_document`` when there is none. Returns the document written, without
        the store's own keys. Refused like any write unless ``lease`` is current.
        """
        document = self.load() or new_state_document(self.project, datetime.fromtimestamp(self.clock(), UTC))
        document = {key: value for key, value in document.items() if key not in _META_KEYS}
        document["test_results"] = dict(test_results)
        timestamps = dict(document.get("timestamps") or {})
        timestamps["last_test_at"] = test_results.get("last_run")
        document["timestamps"] = timestamps
        self.update(lease, document)
        return document

    # ----------------------------------------------------------------- reads

    def load(self) -> dict[str, Any] | None:
        """The last committed state document, or None for a project that has never written one.

        Repairs and fallbacks are listed in ``self.recovered`` (and logged); see ``load_result``.
        """
        return self.load_result().document

    def load_result(self) -> LoadResult:
        """Load the last committed state and say where it came from.

        state.json is used when it is readable and not behind the log. A corrupt state.json is moved
        to ``corrupt/`` and the state rebuilt from the log's last snapshot; a missing one is rebuilt
        the same way; when the log holds a later seq than state.json (a crash between the two
        writes), the log wins. A state file with no ``schema_version`` (the base format) is schema 1.
        """
        self.recovered = []
        state, problem = self._read_state()
        if problem is not None:
            moved = self._move_aside_if_still_corrupt(problem)
            if moved is not None:
                self._note(f"{self.state_path}: {problem}; moved it to {moved}")
            else:
                # Replaced by a writer between our read and the move: read the new one.
                state, problem = self._read_state()
                if problem is not None:
                    raise StateError(f"{self.state_path}: {problem}")
        entry = self._last_log_entry()
        if state is not None:
            if entry is not None and entry["seq"] > _int_field(state, "last_seq", 0):
                self._note(
                    f"{self.state_path}: behind the transitions log (last_seq "
                    f"{_int_field(state, 'last_seq', 0)} < {entry['seq']}); using the log's snapshot",
                    expected_while_writing=True,
                )
                return LoadResult(self._from_entry(entry), "log", list(self.recovered))
            return LoadResult(state, "state", list(self.recovered))
        if entry is not None:
            if problem is None:
                self._note(f"{self.state_path}: missing; rebuilt from transitions log seq {entry['seq']}")
            else:
                self._note(f"rebuilt the state from transitions log seq {entry['seq']}")
            return LoadResult(self._from_entry(entry), "log", list(self.recovered))
        if problem is not None:
            self._note("no transitions log to rebuild from; starting without a state")
        return LoadResult(None, "none", list(self.recovered))

    def transitions(self) -> list[dict[str, Any]]:
        """Every committed transition, oldest first.

        A torn final line (an interrupted append) is skipped and noted in ``self.recovered``; any
        other unreadable line is a ``StateError`` naming its line number.
        """
        self.recovered = []
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        # After the final newline comes either nothing or an unterminated (torn) fragment.
        fragment = lines.pop()
        entries: list[dict[str, Any]] = []
        for number, raw in enumerate(lines, start=1):
            entry = _parse_entry(raw)
            if entry is None:
                if number == len(lines) and not fragment:
                    self._note(f"{self.log_path}:{number}: skipped a torn final line")
                    break
                raise StateError(f"{self.log_path}:{number}: not a valid transition entry")
            entries.append(entry)
        if fragment:
            self._note(
                f"{self.log_path}:{len(lines) + 1}: skipped a torn final line (no newline)",
                expected_while_writing=True,
            )
        return entries

    # -------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold ``flock`` on lease.lock. Critical sections are milliseconds long; a lock held longer
        means a process stopped or hung inside one, which must not be broken (it may still write),
        so after ``lock_timeout`` seconds we give up with an error instead of waiting forever."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(
                f"{self.lock_path}: cannot open the project's lock file: {exc.strerror}"
            ) from exc
        try:
            deadline = time.monotonic() + self.lock_timeout
            delay = 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StateError(
                            f"{self.lock_path}: still locked after {self.lock_timeout:g}s "
                            f"({self._describe_lease_unlocked()}); a writer may be stopped or hung "
                            "in the middle of a write"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
            yield
        finally:
            os.close(fd)

    def _describe_lease_unlocked(self) -> str:
        """Best-effort description of the holder, read without the lock (lease.json is replaced whole)."""
        try:
            held = json.loads(self.lease_path.read_bytes()).get("holder")
            return f"lease held by pid {held['pid']} on {held['host']}" if held else "lease free"
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            return "lease holder unknown"

    def _remove_orphaned_temp_files(self) -> None:
        """Delete temp files of writes a crashed writer never renamed into place. Call under the lock."""
        for leftover in self.directory.glob(".*.json.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()

    def _note(self, message: str, *, expected_while_writing: bool = False) -> None:
        """Record a repair or fallback. Some are what any reader sees while a writer is mid-commit
        (state.json one step behind the log, a line being appended): those are logged quietly."""
        self.recovered.append(message)
        _log.log(logging.DEBUG if expected_while_writing else logging.WARNING, "%s", message)

    def _handle(self, info: LeaseInfo) -> Lease:
        return Lease(
            project=info.project,
            token=info.token,
            pid=info.pid,
            host=info.host,
            acquired_at=info.acquired_at,
            expires_at=info.expires_at,
        )

    @staticmethod
    def _same_lease(info: LeaseInfo, lease: Lease) -> bool:
        return (info.project, info.token, info.pid, info.host) == (
            lease.project,
            lease.token,
            lease.pid,
            lease.host,
        )

    def _check_current(self, lease: Lease, now: float) -> LeaseInfo:
        holder, last_token = self._read_lease()
        if holder is None or not self._same_lease(holder, lease):
            current = f"token {holder.token} (pid {holder.pid} on {holder.host})" if holder else "no holder"
            raise StaleLeaseError(
                f"project '{self.project}': write with fencing token {lease.token} refused; "
                f"the lease is now {current}, last token {last_token}"
            )
        if holder.expired(now):
            raise StaleLeaseError(
                f"project '{self.project}': write with fencing token {lease.token} refused; "
                f"the lease expired at {iso_utc(holder.expires_at)}"
            )
        return holder

    def _holder_gone(self, holder: LeaseInfo, now: float) -> bool:
        if holder.expired(now):
            return True
        if holder.host != self.host:
            return False
        if not self._pid_alive(holder.pid):
            return True
        # Same pid alive but started at another time: the pid was reused, the holder is gone.
        if holder.pid_start is not None:
            start = _process_start(holder.pid)
            return start is not None and start != holder.pid_start
        return False

    def _read_lease(self) -> tuple[LeaseInfo | None, int]:
        """(current holder or None, the highest token issued so far). Call under the lock."""
        try:
            raw = self.lease_path.read_bytes()
        except FileNotFoundError:
            return None, 0
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            last_token = data["last_token"]
            if not isinstance(last_token, int) or isinstance(last_token, bool):
                raise ValueError("last_token is not an integer")
            held = data.get("holder")
            if held is None:
                return None, last_token
            info = LeaseInfo(
                project=str(held["project"]),
                token=int(held["token"]),
                pid=int(held["pid"]),
                host=str(held["host"]),
                acquired_at=float(held["acquired_at"]),
                expires_at=float(held["expires_at"]),
                pid_start=None if held.get("pid_start") is None else str(held["pid_start"]),
            )
            return info, max(last_token, info.token)
        except (ValueError, KeyError, TypeError) as exc:
            # lease.json is only ever replaced atomically, so this is outside damage. Keep the file
            # and treat the lease as free; _token_floor() keeps the next token above all used ones.
            moved = self._move_aside(self.lease_path, "lease")
            self._note(f"{self.lease_path}: unreadable ({exc}); moved it to {moved}, lease treated as free")
            return None, 0

    def _write_lease(self, holder: LeaseInfo | None, last_token: int) -> None:
        data: dict[str, Any] = {
            "schema_version": _LEASE_SCHEMA_VERSION,
            "project": self.project,
            "last_token": last_token,
            "holder": None,
        }
        if holder is not None:
            data["holder"] = {
                "project": holder.project,
                "token": holder.token,
                "pid": holder.pid,
                "host": holder.host,
                "pid_start": holder.pid_start,
                "acquired_at": holder.acquired_at,
                "expires_at": holder.expires_at,
                "since": iso_utc(holder.acquired_at),
                "until": iso_utc(holder.expires_at),
            }
        _write_atomic(self.lease_path, (json.dumps(data, indent=2) + "\n").encode())

    def _token_floor(self) -> int:
        """The highest token seen in the state file or the log, should lease.json have been lost."""
        floor = 0
        state, _ = self._read_state()
        if state is not None:
            floor = _int_field(state, "fencing_token", 0)
        with contextlib.suppress(StateError):
            entry = self._last_log_entry(quiet=True)
            if entry is not None:
                floor = max(floor, _int_field(entry, "token", 0))
        return floor

    def _tail(self, fd: int) -> _Tail:
        """Locate the committed end of the log and its last entry (reads only the end of the file)."""
        size = os.fstat(fd).st_size
        if size == 0:
            return _Tail(0, 0, None)
        end = size if os.pread(fd, 1, size - 1) == b"\n" else _line_start(fd, size)
        final_line_seen = end < size  # an unterminated fragment is the final line
        while end > 0:
            start = _line_start(fd, end - 1)
            entry = _parse_entry(os.pread(fd, end - 1 - start, start))
            if entry is not None:
                return _Tail(end, size, entry)
            if final_line_seen:
                raise StateError(
                    f"{self.log_path}: the line at byte {start} is not a valid transition entry "
                    "and is not the final line; the log needs repair"
                )
            # A complete but unreadable final line (e.g. zeroes after a power loss): treat as torn.
            final_line_seen = True
            end = start
        return _Tail(0, size, None)

    def _last_log_entry(self, *, quiet: bool = False) -> dict[str, Any] | None:
        try:
            fd = os.open(self.log_path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                tail = self._tail(fd)
            except StateError as exc:
                if quiet:
                    raise
                entry = self._scan_for_last_good(fd)
                self._note(f"{exc}; using the last readable entry (seq {entry['seq'] if entry else '-'})")
                return entry
        finally:
            os.close(fd)
        if tail.torn and not quiet:
            self._note(
                f"{self.log_path}: ignored an incomplete final line (an interrupted or ongoing write)",
                expected_while_writing=True,
            )
        return tail.last

    def _scan_for_last_good(self, fd: int) -> dict[str, Any] | None:
        size = os.fstat(fd).st_size
        best: dict[str, Any] | None = None
        for raw in os.pread(fd, size, 0).split(b"\n"):
            entry = _parse_entry(raw)
            if entry is not None and (best is None or entry["seq"] > best["seq"]):
                best = entry
        return best

    def _last_seq(self, tail: _Tail) -> int:
        if tail.last is not None:
            return int(tail.last["seq"])
        # An empty log beside an existing state (the log was lost or never written): continue after it.
        state, _ = self._read_state()
        return _int_field(state, "last_seq", 0) if state is not None else 0

    def _read_state(self) -> tuple[dict[str, Any] | None, str | None]:
        """(document, None), (None, None) when missing, or (None, what is wrong with it)."""
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return None, None
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return None, f"not valid JSON ({exc})"
        if not isinstance(document, dict):
            return None, f"not a JSON object (a {type(document).__name__})"
        version = document.get("schema_version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            return None, f"invalid schema_version {version!r}"
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.state_path}: schema_version {version} is newer than this version of "
                f"pytest-vpstest understands ({SCHEMA_VERSION}); upgrade pytest-vpstest"
            )
        for key in ("fencing_token", "last_seq"):
            value = document.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                return None, f"invalid {key} {value!r}"
        project = document.get("project", self.project)
        if project != self.project:
            return None, f"belongs to project {project!r}, not {self.project!r}"
        return document, None

    def _move_aside_if_still_corrupt(self, problem: str) -> Path | None:
        """Move a corrupt state.json into corrupt/ under the lock, unless a writer replaced it meanwhile."""
        with self._locked():
            _, again = self._read_state()
            if again is None:
                return None
            return self._move_aside(self.state_path, "state")

    def _move_aside(self, path: Path, kind: str) -> Path:
        self.corrupt_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        target = self.corrupt_dir / f"{kind}-{stamp}.json"
        counter = 1
        while target.exists():
            target = self.corrupt_dir / f"{kind}-{stamp}-{counter}.json"
            counter += 1
        try:
            os.replace(path, target)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return target
            raise StateError(f"{path}: cannot move the unreadable file to {target}: {exc}") from exc
        fsync_dir(path.parent)
        return target

    def _state_document(self, document: Mapping[str, Any], token: int, seq: int) -> dict[str, Any]:
        project = document.get("project", self.project)
        if project != self.project:
            raise StateError(f"state document for project {project!r} written to project '{self.project}'")
        state = {key: value for key, value in document.items() if key not in _META_KEYS}
        state["schema_version"] = SCHEMA_VERSION
        state["fencing_token"] = token
        state["last_seq"] = seq
        return state

    def _encode_state(self, state: dict[str, Any]) -> bytes:
        try:
            return (json.dumps(state, indent=2, allow_nan=False) + "\n").encode()
        except (TypeError, ValueError) as exc:
            raise StateError(
                f"project '{self.project}': state document is not JSON-serialisable: {exc}"
            ) from exc

    def _encode_line(
        self, transition: Mapping[str, Any], state: dict[str, Any], seq: int, token: int, now: float
    ) -> bytes:
        entry: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "seq": seq,
            "time": iso_utc(now),
            "project": self.project,
            "token": token,
        }
        for key, value in transition.items():
            if key in entry or key == "snapshot":
                raise StateError(f"transition field {key!r} is reserved by the transitions log")
            entry[key] = value
        entry["snapshot"] = state
        try:
            text = json.dumps(entry, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StateError(f"project '{self.project}': transition is not JSON-serialisable: {exc}") from exc
        return (text + "\n").encode()

    @staticmethod
    def _from_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
        snapshot = dict(entry["snapshot"])
        snapshot.setdefault("schema_version", SCHEMA_VERSION)
        snapshot["fencing_token"] = _int_field(entry, "token", _int_field(snapshot, "fencing_token", 0))
        snapshot["last_seq"] = entry["seq"]
        return snapshot
