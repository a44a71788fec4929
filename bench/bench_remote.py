"""100 remote commands on one node: one cached SSH session versus one ``ssh`` process per command.

Starts its own loopback OpenSSH server (tests/support/sshd.py), runs ``true`` N times through
``SessionPool`` (one connection, one channel per command) and N times as ``ssh host true`` (a new
process, TCP connection, key exchange and authentication per command, as shell scripts looping over nodes do),
and prints both wall times and the ratio. Target: the cached session at least 10x faster.

    .venv/bin/python bench/bench_remote.py [--commands 100] [--parallel 8]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_vpstest.fleet.remote import NodeSession, SessionPool
from tests.support.sshd import sshd_unavailable_reason, start_sshd


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=8, help="channels in flight for the fan-out figure")
    args = parser.parse_args()
    reason = sshd_unavailable_reason()
    if reason:
        print(f"bench_remote: skipped: {reason}")
        return 0
    n = args.commands
    with tempfile.TemporaryDirectory(prefix="vpstest-bench-") as tmp:
        sshd = start_sshd(Path(tmp))
        try:
            # Baseline: one ssh process per command (a script's `ssh root@node '...'`).
            started = time.perf_counter()
            for _ in range(n):
                subprocess.run(sshd.ssh_command("true"), check=True, stdout=subprocess.DEVNULL)
            per_process = time.perf_counter() - started
            logins_before = sshd.accepted_logins()

            with SessionPool(sshd.inventory()) as pool:
                session = pool.session("node-1")
                assert isinstance(session, NodeSession)
                started = time.perf_counter()
                for _ in range(n):
                    pool.run("node-1", "true", check=True)
                cached = time.perf_counter() - started
                connects = session.connects

                # The same commands with several channels in flight on the one connection.
                started = time.perf_counter()
                with_channels = _concurrent(pool, n, args.parallel)
                concurrent = time.perf_counter() - started
            logins = sshd.accepted_logins() - logins_before
        finally:
            sshd.stop()
    print(f"{n} x 'true' on one loopback node")
    print(f"  one ssh process per command : {per_process:7.2f} s  ({per_process / n * 1000:6.1f} ms/command)")
    print(
        f"  cached session, sequential  : {cached:7.2f} s  ({cached / n * 1000:6.1f} ms/command, "
        f"{connects} connection(s), {logins} login(s))"
    )
    print(f"  cached session, {args.parallel} channels  : {concurrent:7.2f} s  ({with_channels} commands)")
    print(f"  speed-up sequential: {per_process / cached:5.1f}x  (target >= 10x)")
    print(f"  speed-up {args.parallel} channels: {per_process / concurrent:5.1f}x")
    return 0


def _concurrent(pool: SessionPool, n: int, parallel: int) -> int:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=parallel) as ex:
        results = list(ex.map(lambda _i: pool.run("node-1", "true", check=True), range(n)))
    return len(results)


if __name__ == "__main__":
    raise SystemExit(main())
