"""Burn-in: the real loop on the lab, bounded in time, with the faults an operator meets.

Loops of the real runner (``vpstest start --foreground``, the reference agent on a small netns lab)
run one after another until ``--loops`` loops ended or ``--minutes`` passed. Meanwhile, at random:

* the runner is killed with SIGKILL and started again with ``--resume`` (``--kill-rate`` of the
  starts are killed after a random time);
* node faults: an agent killed with SIGKILL, a node's sshd frozen (SIGSTOP; SIGCONT 10 s later), a
  node's links set down (up again 10 s later);
* the webhook and dashboard receiver goes away for 10-30 s and comes back.

At the end the receiver is up and the outbox is flushed; then the report:

* lock-timeout rate: "still locked" errors per committed transition;
* failed-notification rate: notifications never delivered at the end, per notification emitted
  (delivery attempts that failed while the receiver was away are shown, not counted: they are retried);
* state corruptions: a state.json that did not parse when read between kills, or files moved to corrupt/;
* duplicate transitions: a seq twice, a gap, or a transition whose "from" is not the previous "to";
* lost notifications: transitions in the log that the dashboard never received;
* runner CPU while waiting: CPU time of the runner process over the wall time it spent in WAIT_*,
  beside the same figure for the whole run.

Each figure is rated Green / Yellow / Red. Not a test: it prints, it asserts nothing.

    sudo .venv/bin/python bench/burnin.py [--minutes 10] [--loops 3] [--prefix v10b] [--seed N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_vpstest import lab  # noqa: E402
from pytest_vpstest.demo import BROKEN_LINE, GOOD_LINE, create_workspace  # noqa: E402
from pytest_vpstest.records.store import StateStore  # noqa: E402

SERVICE = "vdemo-agent"
TICK = os.sysconf("SC_CLK_TCK")


class Receiver:
    """A webhook/dashboard endpoint on loopback that can go away and come back on the same port."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []  # each event with "_path": /hook or /dash
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        received, lock = self.received, self._lock

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    received.append({**json.loads(body), "_path": self.path})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.allow_reuse_address = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def up(self) -> bool:
        return self._server is not None


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


class Faults:
    """Node faults on the lab, each undone after ``hold`` seconds."""

    def __init__(self, record: Any, lab_dir: Path, rng: random.Random, say: Any) -> None:
        self.record, self.dir, self.rng, self.say = record, lab_dir, rng, say
        self.peers = [n for n in record.nodes if n.role != "registry"]
        self.undo: list[tuple[float, Any]] = []
        self.counts = {"agent killed": 0, "sshd frozen": 0, "links down": 0}

    def _ns(self, node: Any, *argv: str) -> None:
        subprocess.run(["ip", "netns", "exec", node.ns, *argv], capture_output=True, timeout=20)

    def inject(self) -> None:
        node = self.rng.choice(self.peers)
        kind = self.rng.choice(list(self.counts))
        self.counts[kind] += 1
        self.say(f"fault: {kind} on {node.name}")
        if kind == "agent killed":
            pid_file = f"/opt/vpstest/run/{SERVICE}.pid"
            self._ssh(node, f"p=$(cat {pid_file} 2>/dev/null) && kill -9 -$p; true")
        elif kind == "sshd frozen":
            pid = int((self.dir / "run" / f"sshd-{node.name}.pid").read_text().strip())
            os.kill(pid, signal.SIGSTOP)
            self.undo.append((time.monotonic() + 10, lambda: os.kill(pid, signal.SIGCONT)))
        else:
            links = subprocess.run(["ip", "-n", node.ns, "-o", "link", "show"], capture_output=True,
                                   text=True, timeout=20).stdout
            names = [ln.split(":")[1].strip().split("@")[0] for ln in links.splitlines()
                     if ln.split(":")[1].strip() != "lo"]
            for dev in names:
                self._ns(node, "ip", "link", "set", dev, "down")
            def links_up() -> None:
                for d in names:
                    self._ns(node, "ip", "link", "set", d, "up")

            self.undo.append((time.monotonic() + 10, links_up))

    def _ssh(self, node: Any, command: str) -> None:
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o",
                f"UserKnownHostsFile={self.dir / 'known_hosts'}", "-o", "ConnectTimeout=5", "-i",
                str(self.dir / "id_ed25519"), "-p", str(node.port), f"root@{node.host}", command]
        subprocess.run(argv, capture_output=True, timeout=30)

    def settle(self, *, everything: bool = False) -> None:
        now = time.monotonic()
        keep = []
        for when, action in self.undo:
            if everything or when <= now:
                action()
            else:
                keep.append((when, action))
        self.undo = keep


def write_workspace(tmp: Path, prefix: str, lab_dir: Path, hook_url: str) -> Path:
    ws = tmp / "ws"
    config = create_workspace(ws, prefix=prefix, project="burnin")
    node = ws / "agent" / "node.py"
    node.write_text(node.read_text().replace(BROKEN_LINE, GOOD_LINE))
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b.invalid"]
    subprocess.run([*git, "commit", "-qam", "no defect"], cwd=ws, check=True)
    text = config.read_text()
    text = text.replace(f'inventory: "lab:{prefix}"', f"inventory: {lab_dir / 'inventory.yaml'}")
    text = text.replace("    attempts: 2\n", "    attempts: 1\n")
    text = text.replace("  wait_1hr_seconds: 5\n  wait_6hr_seconds: 10\n",
                        "  wait_1hr_seconds: 20\n  wait_6hr_seconds: 20\n")
    hook = f"    - kind: webhook\n      url: {hook_url}/hook\n      timeout_seconds: 2\n"
    text = text.replace("    - kind: voice\n", hook + f"  dashboard_url: {hook_url}/dash\n")
    text += ("\nhealth:\n  check_seconds: 5\n  suspect_after_seconds: 5\n  evict_after_seconds: 5\n"
             "  respawn_attempts: 3\n")
    config.write_text(text)
    return config


def rate(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


def rating(value: float, green: float, red: float) -> str:
    return "Green" if value < green else ("Red" if value > red else "Yellow")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="time budget (default 10)")
    ap.add_argument("--loops", type=int, default=3, help="loops to run at most (default 3)")
    ap.add_argument("--prefix", default="v10b", help="lab prefix (default v10b)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--kill-rate", type=float, default=0.5, help="share of runner starts killed")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    rng = random.Random(seed)
    t0 = time.monotonic()
    deadline = t0 + args.minutes * 60

    def say(line: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {line}", flush=True)

    say(f"burn-in: seed {seed}, up to {args.loops} loops in {args.minutes:g} min, lab {args.prefix}")
    tmp = Path(tempfile.mkdtemp(prefix="vpstest-burnin-"))
    lab_dir = tmp / "lab"
    record = lab.up("small", "netns", args.prefix, lab_dir)
    receiver = Receiver()
    receiver.start()
    faults = Faults(record, lab_dir, rng, say)
    stats: dict[str, Any] = {"kill_rate": args.kill_rate, "starts": 0, "kills": 0, "unparsable_reads": 0,
                             "loops": [], "wait_wall": 0.0, "wait_cpu": 0.0, "run_wall": 0.0, "run_cpu": 0.0,
                             "receiver_outages": 0}
    try:
        config = write_workspace(tmp, args.prefix, lab_dir, f"http://127.0.0.1:{receiver.port}")
        state_dir = tmp / "ws" / ".vpstest"
        project_dir = state_dir / "burnin"
        state_dir.mkdir(parents=True, exist_ok=True)
        for loop in range(args.loops):
            if time.monotonic() > deadline:
                break
            final = run_one_loop(config, project_dir, rng, faults, receiver, stats, deadline, say)
            stats["loops"].append(final)
            say(f"loop {loop + 1}: {final}")
        faults.settle(everything=True)
        if not receiver.up:
            receiver.start()
        report(tmp, state_dir, receiver, stats, faults, time.monotonic() - t0)
    finally:
        faults.settle(everything=True)
        receiver.stop()
        lab.down(args.prefix, lab_dir)
    return 0


def run_one_loop(config: Path, project_dir: Path, rng: random.Random, faults: Faults, receiver: Receiver,
                 stats: dict[str, Any], deadline: float, say: Any) -> str:
    resume = False
    next_fault = time.monotonic() + rng.uniform(10, 40)
    next_outage = time.monotonic() + rng.uniform(15, 60)
    outage_until = 0.0
    while True:
        argv = [sys.executable, "-m", "pytest_vpstest.cli", "start", "--yes", "--foreground", "--config",
                str(config), *(["--resume"] if resume else [])]
        out = open(project_dir.parent / f"runner-{stats['starts']}.out", "w")  # noqa: SIM115
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        stats["starts"] += 1
        killed = rng.random() < stats["kill_rate"]
        kill_at = time.monotonic() + rng.uniform(3, 90) if killed else None
        last, last_cpu = time.monotonic(), cpu_seconds(proc.pid) or 0.0
        while proc.poll() is None:
            time.sleep(0.5)
            now = time.monotonic()
            cpu = cpu_seconds(proc.pid)
            state = _state(project_dir, stats)
            if cpu is not None:
                stats["run_wall"] += now - last
                stats["run_cpu"] += cpu - last_cpu
                if state in ("WAIT_1HR", "WAIT_6HR"):
                    stats["wait_wall"] += now - last
                    stats["wait_cpu"] += cpu - last_cpu
                last, last_cpu = now, cpu
            faults.settle()
            if now >= next_fault:
                faults.inject()
                next_fault = now + rng.uniform(20, 60)
            if receiver.up and now >= next_outage:
                receiver.stop()
                stats["receiver_outages"] += 1
                outage_until = now + rng.uniform(10, 30)
                say("receiver: gone")
            elif not receiver.up and now >= outage_until:
                receiver.start()
                next_outage = now + rng.uniform(30, 90)
                say("receiver: back")
            if (kill_at is not None and now >= kill_at) or now > deadline:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                stats["kills"] += 1
                say(f"runner pid {proc.pid} killed in {state}")
                break
        out.close()
        faults.settle(everything=True)
        state = _state(project_dir, stats)
        if time.monotonic() > deadline:
            return f"time budget reached in {state}"
        if proc.returncode is not None and proc.returncode >= 0 and state in ("COMPLETE", "STOPPED"):
            doc = StateStore(project_dir.parent, "burnin").load() or {}
            return f"{state} ({(doc.get('machine') or {}).get('stop_reason') or 'no stop reason'})"
        resume = state not in (None, "COMPLETE", "STOPPED", "IDLE")


def _state(project_dir: Path, stats: dict[str, Any]) -> str | None:
    try:
        return str(json.loads((project_dir / "state.json").read_text())["state"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError):
        stats["unparsable_reads"] += 1
        return None


def report(tmp: Path, state_dir: Path, receiver: Receiver, stats: dict[str, Any], faults: Faults,
           seconds: float) -> None:
    from pytest_vpstest.config import load_project_config
    from pytest_vpstest.loop.notify import Notifier, build_channels

    project_dir = state_dir / "burnin"
    cfg = load_project_config(tmp / "ws" / "vpstest.yaml")
    Notifier(project_dir / "outbox", "burnin", build_channels(cfg.notify, lambda _l: None)).flush()
    time.sleep(1)
    entries = StateStore(state_dir, "burnin").transitions()
    seqs = [e["seq"] for e in entries]
    duplicates = len(seqs) - len(set(seqs)) + sum(1 for a, b in itertools.pairwise(seqs) if b != a + 1)
    ended = ("COMPLETE", "STOPPED")
    duplicates += sum(1 for a, b in itertools.pairwise(entries)
                      if a["to"] != b["from"] and not (a["to"] in ended and b["from"] == "IDLE"))
    logs = "\n".join(p.read_text(errors="replace") for p in [*state_dir.glob("runner-*.out"),
                                                               project_dir / "runner.log"] if p.exists())
    lock_timeouts = logs.count("still locked after")
    failed_deliveries = sum(1 for line in logs.splitlines() if "notify: channel" in line and "failed" in line)
    corrupt = len(list((project_dir / "corrupt").glob("*"))) if (project_dir / "corrupt").exists() else 0
    corruptions = corrupt + stats["unparsable_reads"]
    dash = {e.get("data", {}).get("seq") for e in receiver.received if e.get("kind") == "transition"}
    lost = [s for s in seqs if s not in dash]
    emitted = _emitted_notifications(project_dir)
    # Both the webhook and the dashboard get every notification: the worse of the two counts.
    undelivered = max(
        max(0, emitted - len({e.get("id") for e in receiver.received
                              if e.get("kind") != "transition" and e["_path"] == path}))
        for path in ("/hook", "/dash")
    )
    wait_cpu = rate(stats["wait_cpu"], stats["wait_wall"])
    run_cpu = rate(stats["run_cpu"], stats["run_wall"])
    ltr = rate(lock_timeouts, len(entries))
    fnr = rate(undelivered, emitted)
    print()
    print(f"# Burn-in report ({seconds / 60:.1f} min, {len(stats['loops'])} loop(s))")
    print(f"loops: {'; '.join(stats['loops']) or '-'}")
    print(f"runner starts {stats['starts']}, SIGKILLs {stats['kills']}; node faults "
          + ", ".join(f"{k} {v}" for k, v in faults.counts.items())
          + f"; receiver outages {stats['receiver_outages']} "
          f"({failed_deliveries} failed delivery attempts, retried)")
    rows = [
        ("lock-timeout rate", f"{ltr:.2f} % ({lock_timeouts} of {len(entries)} transitions)",
         rating(ltr, 1, 5)),
        ("failed-notification rate", f"{fnr:.2f} % ({undelivered} of {emitted} never delivered)",
         rating(fnr, 0.1, 1)),
        ("state corruptions", str(corruptions), "Green" if corruptions == 0 else "Red"),
        ("duplicate transitions", str(duplicates), "Green" if duplicates == 0 else "Red"),
        ("lost notifications", f"{len(lost)} transitions never reached the dashboard",
         "Green" if not lost else "Red"),
        ("runner CPU while waiting", f"{wait_cpu:.2f} % over {stats['wait_wall']:.0f} s of WAIT "
         f"(baseline: {run_cpu:.2f} % over the whole run, {stats['run_wall']:.0f} s)",
         rating(wait_cpu, 2, 5)),
    ]
    for name, value, verdict in rows:
        print(f"  {name:<26} {value:<75} {verdict}")
    overall = "Red" if any(r[2] == "Red" for r in rows) else ("Yellow" if any(r[2] == "Yellow" for r in rows)
                                                              else "Green")
    print(f"overall: {overall}")


def _emitted_notifications(project_dir: Path) -> int:
    """Notifications (not transitions) the runner emitted: the outbox's sequence minus the transitions."""
    log = project_dir / "runner.log"
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if "notify[" in line and "notify[transition]" not in line)


if __name__ == "__main__":
    raise SystemExit(main())
