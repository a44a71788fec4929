"""Throughput of the reference agent beside iperf3, on the same link in the same run.

Two network namespaces of its own (``vpsab-a``, ``vpsab-b``) joined by a veth pair with addresses
from 198.18.0.0/15, nothing routed anywhere else. For an unshaped link and for the link shaped to
100 Mbit/s with tbf (both directions), it measures iperf3 TCP, iperf3 UDP (unlimited rate,
receiver goodput) and ``agent probe throughput`` (receiver goodput), then prints the figures and
the agent's ratio to iperf3. Targets: ≥ 50 % unshaped, ≥ 90 % shaped. Needs root, iproute2 and
iperf3. Every measurement is bounded by ``--seconds``; everything created is removed at exit.

    sudo .venv/bin/python bench/bench_throughput.py [--seconds 5] [--rate-mbit 100]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

NS_A, NS_B = "vpsab-a", "vpsab-b"
VETH_A, VETH_B = "vpsab-va", "vpsab-vb"
IP_A, IP_B = "198.18.254.1", "198.18.254.2"
AGENT = [sys.executable, "-m", "pytest_vpstest.lab.agent"]


def sh(*argv: str, ns: str | None = None, check: bool = True, timeout: float = 60) -> str:
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    done = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed: {done.stderr.strip()}")
    return done.stdout


def teardown() -> None:
    for ns in (NS_A, NS_B):
        sh("ip", "netns", "del", ns, check=False)
    sh("ip", "link", "del", VETH_A, check=False)


@contextlib.contextmanager
def link() -> Iterator[None]:
    teardown()
    try:
        for ns in (NS_A, NS_B):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "link", "add", VETH_A, "type", "veth", "peer", "name", VETH_B)
        for dev, ns, ip in ((VETH_A, NS_A, IP_A), (VETH_B, NS_B, IP_B)):
            sh("ip", "link", "set", dev, "netns", ns)
            sh("ip", "addr", "add", f"{ip}/30", "dev", dev, ns=ns)
            sh("ip", "link", "set", dev, "up", ns=ns)
        yield
    finally:
        teardown()


def shape(rate_mbit: float | None) -> None:
    for dev, ns in ((VETH_A, NS_A), (VETH_B, NS_B)):
        sh("tc", "qdisc", "del", "dev", dev, "root", ns=ns, check=False)
        if rate_mbit:
            sh(
                "tc",
                "qdisc",
                "add",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                f"{rate_mbit}mbit",
                "burst",
                "256kbit",
                "latency",
                "50ms",
                ns=ns,
            )


def iperf3(seconds: float, udp: bool) -> float:
    """Receiver goodput in Mbit/s."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", NS_B, "iperf3", "-s", "-1", "-B", IP_B, "-J"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        time.sleep(0.3)
        argv = ["iperf3", "-c", IP_B, "-t", str(seconds), "-J"]
        if udp:
            argv += ["-u", "-b", "0", "-l", "1472"]
        out = json.loads(sh(*argv, ns=NS_A, timeout=seconds + 30))
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(10)
        if server.poll() is None:
            server.kill()
    # sum_received is what the receiving side got: for UDP that is goodput after loss.
    return float(out["end"]["sum_received"]["bits_per_second"]) / 1e6


@contextlib.contextmanager
def agents(workdir: Path) -> Iterator[Path]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(ns: str, *args: str, log: str) -> None:
        with open(workdir / log, "wb") as fh:
            procs.append(subprocess.Popen(["ip", "netns", "exec", ns, *AGENT, *args], stdout=fh, stderr=fh))

    try:
        start(NS_A, "registry", "--bind", f"{IP_A}:8080", log="registry.log")
        start(NS_A, "bootstrap", "--bind", f"{IP_A}:3478", log="bootstrap.log")
        for ns, ip, name in ((NS_A, IP_A, "a"), (NS_B, IP_B, "b")):
            (workdir / name).mkdir()
            start(
                ns,
                "run",
                "--node",
                name,
                "--bind",
                ip,
                "--registry",
                f"http://{IP_A}:8080",
                "--bootstrap",
                f"{IP_A}:3478",
                "--home",
                str(workdir / name),
                log=f"{name}.log",
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = probe(workdir, "status")
            if "b" in (status.get("peers") or []):
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"agents did not find each other; logs in {workdir}")
        yield workdir
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def probe(workdir: Path, *args: str) -> dict[str, object]:
    out = sh(*AGENT, "probe", *args, "--json", "--home", str(workdir / "a"), ns=NS_A, timeout=120)
    answer = json.loads(out)
    assert isinstance(answer, dict)
    return answer


def agent_mbps(workdir: Path, seconds: float) -> float:
    answer = probe(workdir, "throughput", "--peer", "b", "--seconds", str(seconds))
    if not answer.get("ok"):
        raise RuntimeError(f"agent throughput failed: {answer}")
    return float(answer["mbps"])  # type: ignore[arg-type]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement (max 60)")
    parser.add_argument("--rate-mbit", type=float, default=100.0, help="tbf rate of the shaped run")
    args = parser.parse_args()
    seconds = min(max(args.seconds, 1.0), 60.0)
    if shutil.which("iperf3") is None:
        print("bench_throughput: iperf3 is not installed (apt-get install iperf3)", file=sys.stderr)
        return 2
    rows = []
    with link(), tempfile.TemporaryDirectory(prefix="vpab") as tmp, agents(Path(tmp)) as workdir:
        for label, rate in (("unshaped veth", None), (f"tbf {args.rate_mbit:g} Mbit/s", args.rate_mbit)):
            shape(rate)
            tcp = iperf3(seconds, udp=False)
            udp = iperf3(seconds, udp=True)
            agent = agent_mbps(workdir, seconds)
            rows.append((label, tcp, udp, agent, 0.5 if rate is None else 0.9))
    header = ("link", "iperf3 TCP", "iperf3 UDP", "agent", "vs TCP", "vs UDP", "target")
    print("{:<18}{:>12}{:>12}{:>10}{:>9}{:>9}{:>9}".format(*header))
    for label, tcp, udp, agent, target in rows:
        best = max(tcp, udp)
        verdict = "ok" if agent >= target * best else "below"
        print(
            f"{label:<18}{tcp:>12.1f}{udp:>12.1f}{agent:>10.1f}{agent / tcp:>9.0%}{agent / udp:>9.0%}"
            f"{f'>= {target:.0%}':>9}  {verdict} (vs the better iperf3 figure)"
        )
    print(
        f"(Mbit/s, receiver goodput, {seconds:g} s each, {IP_A} -> {IP_B}; the agent sends UDP datagrams of "
        "1472 bytes with at most 1024 in flight)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
