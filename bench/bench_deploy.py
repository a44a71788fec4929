"""Deploy wall time: the reference agent to one lab node vs to every peer node of the full lab.

Target: deploying to the 9 peer nodes of the 10-node lab takes at most 1.5× one node. Baseline,
measured in the same run: the same 9-node deploy with ``deploy.parallelism: 8`` (the old default,
a second wave for the ninth node). Real SSH, the real agent zipapp, the plain-process service
manager, registration with the lab's registry — everything a loop's DEPLOY stage does.

    sudo .venv/bin/python bench/bench_deploy.py [--runs 3] [--prefix v9d]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from pytest_vpstest import lab
from pytest_vpstest.config import DeployConfig, ModuleConfig, ProjectConfig, load_inventory
from pytest_vpstest.fleet.deploy import deploy, target_nodes
from pytest_vpstest.fleet.remote import SessionPool
from pytest_vpstest.lab.agent import build
from pytest_vpstest.lab.netns import netns_available

START = "{bin} run --node {node} --bind {p2p_address} --registry {registry} --bootstrap {bootstrap}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prefix", default="vbdep")
    args = parser.parse_args()
    ok, why = netns_available()
    if not ok:
        print(f"bench_deploy: needs root and network namespaces ({why})", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vpstest-bench-deploy-") as tmp:
        where = Path(tmp)
        artifact = build.build_zipapp(Path(build.__file__).parent, where / "dist" / "agent.pyz")
        record = lab.up("full", "netns", args.prefix, where / "lab")
        try:
            inventory = load_inventory(where / "lab" / "inventory.yaml")
            config = ProjectConfig(
                path=None,
                project="bench-deploy",
                workspace=where,
                modules=(("agent", ModuleConfig(binary="agent.pyz")),),
                deploy=DeployConfig(start_command=START, service_prefix="vbdep"),
            )
            everyone = target_nodes(inventory, config, None)
            one = [everyone[-1]]
            ways = {
                "1 node": (config, one),
                f"{len(everyone)} nodes, all at once (default)": (config, everyone),
                f"{len(everyone)} nodes, parallelism 8 (old default)": (
                    replace(config, deploy=replace(config.deploy, parallelism=8)),
                    everyone,
                ),
            }
            times: dict[str, list[float]] = {k: [] for k in ways}
            with SessionPool(inventory) as pool:
                for _ in range(max(1, args.runs)):
                    for key, (cfg, nodes) in ways.items():
                        t0 = time.perf_counter()
                        report = deploy(pool, inventory, cfg, artifact, nodes=nodes)
                        times[key].append(time.perf_counter() - t0)
                        assert report.succeeded == len(nodes), report.failure_lines()
        finally:
            lab.down(args.prefix, where / "lab")
    base = statistics.median(times["1 node"])
    nodes = len(record.nodes)
    print(f"deploy of the agent zipapp over real SSH, {nodes}-node lab, median of {args.runs} (s)")
    print(f"{'':42}{'seconds':>9}{'vs 1 node':>11}")
    for key, values in times.items():
        median = statistics.median(values)
        print(f"{key:42}{median:9.2f}{median / base:10.2f}x")
    print("target: all nodes <= 1.5x one node")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
