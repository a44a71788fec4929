"""A writer process for the store's crash test (tests/unit/test_store_crash.py); not a test itself.

    python _crash_writer.py STATE_DIR PROJECT --host HOST --ttl SECONDS [--commits N] [--pad BYTES]

Takes the project's lease (waiting for a dead or expired holder's lease to become free), prints
``ready <token>``, then loops: load nothing new, bump ``counter``, commit a transition whose snapshot
has ``counter == seq``, now and then an ``update()`` without a transition, renewing the lease as it
goes. With ``--commits N`` it stops after N commits, releases the lease and prints ``done``; without,
it runs until killed. ``VPSTEST_CRASH_PAUSE=<seconds>`` sleeps at the store's crash-sensitive points
(after the log append, before the state file's rename) so a kill lands inside those windows;
``VPSTEST_CRASH_STOP_AT=<after-append|before-replace>:<n>`` prints ``at <label>`` at the n-th such
point and waits there to be killed; ``VPSTEST_CRASH_FREEZE_AT=<n>`` prints ``frozen`` and stops itself
(SIGSTOP) before its n-th commit, outside the store's lock, until the test sends SIGCONT.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_vpstest.errors import LeaseHeldError, StaleLeaseError
from pytest_vpstest.records import store as store_module
from pytest_vpstest.records.store import Lease, StateStore


def _acquire(store: StateStore, deadline: float) -> Lease:
    while True:
        try:
            return store.acquire()
        except LeaseHeldError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _crash_hook(pause: float, stop_at: str | None) -> Callable[[str], None] | None:
    """Sleep ``pause`` at every crash-sensitive point; at the n-th ``stop_at`` ("label:n"), announce
    it on stdout and wait there to be killed."""
    label, _, nth = (stop_at or "").partition(":")
    remaining = [int(nth or 1)]

    def hook(where: str) -> None:
        if where == label:
            remaining[0] -= 1
            if remaining[0] == 0:
                print(f"at {where}", flush=True)
                time.sleep(60)
                sys.exit(4)  # never killed: the test will see this exit status
        if pause > 0:
            time.sleep(pause)

    return hook if pause > 0 or label else None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("project")
    parser.add_argument("--host", required=True)
    parser.add_argument("--ttl", type=float, required=True)
    parser.add_argument("--commits", type=int, default=0)
    parser.add_argument("--pad", type=int, default=4096)
    args = parser.parse_args()

    store_module._pause_hook = _crash_hook(
        float(os.environ.get("VPSTEST_CRASH_PAUSE") or 0), os.environ.get("VPSTEST_CRASH_STOP_AT") or None
    )

    store = StateStore(args.state_dir, args.project, host=args.host, lease_ttl=args.ttl)
    lease = _acquire(store, time.monotonic() + 10 * args.ttl + 5)
    print(f"ready {lease.token}", flush=True)

    document: dict[str, Any] = store.load() or {"project": args.project, "state": "IDLE", "counter": 0}
    done = 0
    freeze_at = int(os.environ.get("VPSTEST_CRASH_FREEZE_AT") or 0)
    while args.commits == 0 or done < args.commits:
        if done + 1 == freeze_at:
            # Stop ourselves between writes, outside the store's lock, as a paused process would be.
            print("frozen", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        counter = int(document.get("counter", 0)) + 1
        previous = document.get("state", "IDLE")
        proposed = {
            **document,
            "state": f"S{counter % 7}",
            "counter": counter,
            "writer": os.getpid(),
            "logs": [{"message": "x" * 64, "n": i} for i in range(args.pad // 80)],
        }
        transition = {"from": previous, "to": proposed["state"], "event": f"tick-{counter}"}
        try:
            if lease.expires_at - time.time() < args.ttl / 2:
                lease = store.renew(lease)
            seq = store.commit(lease, proposed, transition)
        except StaleLeaseError:
            # Paused past the lease (a busy machine, SIGSTOP): take it again and continue from what is
            # committed, after whoever wrote meanwhile.
            print(f"stale {lease.token}", flush=True)
            lease = _acquire(store, time.monotonic() + 10 * args.ttl + 5)
            document = store.load() or document
            continue
        if seq != counter:
            print(f"seq {seq} != counter {counter}", file=sys.stderr, flush=True)
            return 2
        document = proposed
        if counter % 5 == 0:
            document = {**document, "heartbeat": time.time()}
            try:
                store.update(lease, document)
            except StaleLeaseError:
                print(f"stale {lease.token}", flush=True)
                lease = _acquire(store, time.monotonic() + 10 * args.ttl + 5)
                document = store.load() or document
        done += 1
    store.release(lease)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
