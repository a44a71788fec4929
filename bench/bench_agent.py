"""The reference agent's probe cost: single-probe start-up, and batch probes against single ones.

A registry, a bootstrap and two agents run on loopback (127.0.99.x), each a real process started
from the zipapp by the system ``python3`` (as on a lab node). Figures, each beside its baseline
from the same run:

1. **start-up**: ``agent.pyz probe status`` against the running agent — the zipapp as built now
   (bytecode inside) vs the same sources packed without bytecode (how it was built before);
   median wall time and CPU per probe.
2. **throughput**: N ``connect --method direct`` probes from one agent to the other — one batch
   (``probe batch``, one process, served by the daemon) vs one process per probe, one after
   another (what a suite did) and 8 at a time.

    .venv/bin/python bench/bench_agent.py [--runs 30] [--probes 200] [--python /usr/bin/python3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pytest_vpstest.lab.agent import build, control
from pytest_vpstest.lab.agent.paths import control_socket

HOST = "127.0.99"


def _free_port(host: str, kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Cluster:
    def __init__(self, python: str, pyz: Path, root: Path) -> None:
        self.python, self.pyz, self.root = python, pyz, root
        self.procs: list[subprocess.Popen[bytes]] = []
        reg = f"{HOST}.1:{_free_port(f'{HOST}.1', socket.SOCK_STREAM)}"
        boot = f"{HOST}.2:{_free_port(f'{HOST}.2', socket.SOCK_DGRAM)}"
        self._spawn("registry", "registry", "--bind", reg)
        self._spawn("bootstrap", "bootstrap", "--bind", boot)
        time.sleep(0.5)
        self.homes = {}
        for i, name in enumerate(("a", "b"), start=10):
            home = root / name
            home.mkdir()
            self.homes[name] = home
            bind = f"{HOST}.{i}:{_free_port(f'{HOST}.{i}', socket.SOCK_DGRAM)}"
            self._spawn(
                name, "run", "--node", name, "--bind", bind, "--registry", f"http://{reg}",
                "--bootstrap", boot, "--home", str(home),
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                sockets = [control_socket(h) for h in self.homes.values()]
                seen = [control.request(path, {"action": "status"}, 5) for path in sockets]
                if all(len(s.get("peers") or ()) == 1 for s in seen):
                    return
            except (OSError, ValueError, control.AgentNotRunning):
                pass
            time.sleep(0.2)
        raise SystemExit(f"bench_agent: agents did not find each other (logs in {root})")

    def _spawn(self, name: str, *args: str) -> None:
        with open(self.root / f"{name}.log", "wb") as log:
            self.procs.append(
                subprocess.Popen([self.python, str(self.pyz), *args], stdout=log, stderr=log)
            )

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _probe(python: str, pyz: Path, home: Path, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [python, str(pyz), "probe", *args, "--home", str(home)], capture_output=True, text=True, check=True
    )
    answer = json.loads(done.stdout)
    assert isinstance(answer, dict)
    return answer


FLOOR = "python3 -c pass (floor)"


def _startup(python: str, pyzs: dict[str, Path], home: Path, runs: int) -> dict[str, tuple[float, float]]:
    """Median wall and CPU seconds of ``probe status`` per zipapp, and of the bare interpreter's
    start, runs interleaved."""
    wall: dict[str, list[float]] = {k: [] for k in [*pyzs, FLOOR]}
    cpu: dict[str, list[float]] = {k: [] for k in [*pyzs, FLOOR]}
    for _ in range(runs):
        for key in wall:
            c0, t0 = _children_cpu(), time.perf_counter()
            if key == FLOOR:
                subprocess.run([python, "-c", "pass"], check=True)
            else:
                answer = _probe(python, pyzs[key], home, "status")
                assert answer.get("ok") is True, answer
            wall[key].append(time.perf_counter() - t0)
            cpu[key].append(_children_cpu() - c0)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in wall}


def _throughput(python: str, pyz: Path, home: Path, probes: int) -> dict[str, tuple[float, int]]:
    """Seconds and successes for ``probes`` direct connects a -> b, three ways."""
    args = ("connect", "--peer", "b", "--method", "direct", "--timeout", "5")
    out: dict[str, tuple[float, int]] = {}

    t0 = time.perf_counter()
    ok = sum(_probe(python, pyz, home, *args).get("ok") is True for _ in range(probes))
    out["single, one at a time"] = (time.perf_counter() - t0, ok)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _probe(python, pyz, home, *args), range(probes)))
    out["single, 8 at a time"] = (time.perf_counter() - t0, sum(a.get("ok") is True for a in answers))

    lines = "".join(
        json.dumps({"ref": i, "action": "connect", "peer": "b", "method": "direct", "timeout": 5}) + "\n"
        for i in range(probes)
    )
    t0 = time.perf_counter()
    done = subprocess.run(
        [python, str(pyz), "probe", "batch", "--home", str(home)],
        input=lines,
        capture_output=True,
        text=True,
        check=True,
    )
    results = [json.loads(line) for line in done.stdout.splitlines()]
    out["one batch"] = (time.perf_counter() - t0, sum(r.get("ok") is True for r in results))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=30, help="start-up samples per zipapp")
    parser.add_argument("--probes", type=int, default=200, help="connect probes per way")
    parser.add_argument("--python", default=shutil.which("python3", path="/usr/bin:/bin") or sys.executable)
    args = parser.parse_args()
    source = Path(build.__file__).parent
    with tempfile.TemporaryDirectory(prefix="vba", dir="/tmp") as tmp:
        root = Path(tmp)
        pyzs = {
            "bytecode inside": build.build_zipapp(source, root / "new" / "agent.pyz"),
            "sources only": build.build_zipapp(source, root / "old" / "agent.pyz", bytecode=False),
        }
        cluster = Cluster(args.python, pyzs["bytecode inside"], root)
        try:
            home = cluster.homes["a"]
            version = subprocess.run([args.python, "--version"], capture_output=True, text=True).stdout
            version = version.strip()
            print(f"agent probes with {args.python} ({version}), load {os.getloadavg()[0]:.1f}")
            print(f"\nsingle probe start-up: 'probe status' to a running agent, median of {args.runs}")
            print(f"{'zipapp':26}{'wall ms':>10}{'cpu ms':>10}")
            for key, (wall, cpu) in _startup(args.python, pyzs, home, args.runs).items():
                print(f"{key:26}{wall * 1000:10.1f}{cpu * 1000:10.1f}")
            print(f"\n{args.probes} direct connects a -> b (loopback)")
            print(f"{'way':26}{'seconds':>10}{'probes/s':>10}{'ok':>6}{'vs one at a time':>18}")
            figures = _throughput(args.python, pyzs["bytecode inside"], home, args.probes)
            base = figures["single, one at a time"][0]
            for key, (seconds, ok) in figures.items():
                print(f"{key:26}{seconds:10.2f}{args.probes / seconds:10.0f}{ok:6d}{base / seconds:17.1f}x")
            print(f"load at the end {os.getloadavg()[0]:.1f}")
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
