"""The netns flavour: build and remove a lab of network namespaces, veths, a bridge and nftables.

:func:`build` turns a :class:`~pytest_vpstest.lab.plan.LabPlan` into kernel objects and processes;
:func:`teardown` removes everything carrying the prefix, whether a record of it exists or not (a
``lab up`` killed midway leaves no record), so it is also the first step of every build.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from pytest_vpstest.errors import LabError
from pytest_vpstest.lab import nat, netns, services, sshd
from pytest_vpstest.lab.inventory import INVENTORY_NAME, inventory_document, write_yaml_atomic
from pytest_vpstest.lab.plan import (
    BOOTSTRAP_PORT,
    REGISTRY_PORT,
    SSH_PORT,
    LabPlan,
    NodePlan,
    choose_mgmt_octet,
    mac,
    make_plan,
)
from pytest_vpstest.lab.record import LabRecord, NodeRecord, ServiceRecord, prepare_lab_dir, tcp_open
from pytest_vpstest.lab.topology import Shaping, Topology

__all__ = [
    "SERVICE_START_TIMEOUT_S",
    "SSHD_START_TIMEOUT_S",
    "TBF_LATENCY",
    "WORKERS",
    "build_network",
    "ensure_mount_points",
    "field_conditions",
    "mgmt_router_ruleset",
    "pick_mgmt_octet",
    "prepare_node_fs",
    "taken_networks",
    "teardown",
    "up",
    "wait_for",
]

TBF_LATENCY = "50ms"
WORKERS = 4


def taken_networks(prefix: str) -> list[ipaddress.IPv4Network]:
    """IPv4 networks in use in the root namespace (routes and addresses), except lab ``prefix``'s."""
    own = f"{prefix}-m"
    nets: list[ipaddress.IPv4Network] = []
    routes = json.loads(netns.run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]")
    for r in routes:
        dst = str(r.get("dst", ""))
        if dst in ("", "default") or str(r.get("dev", "")).startswith(own):
            continue
        try:
            nets.append(ipaddress.IPv4Network(dst, strict=False))
        except ValueError:
            continue
    addrs = json.loads(netns.run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]")
    for link in addrs:
        if str(link.get("ifname", "")).startswith(own):
            continue
        for a in link.get("addr_info", []):
            nets.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return nets


def pick_mgmt_octet(prefix: str) -> int:
    return choose_mgmt_octet(prefix, taken_networks(prefix))


# --- building ------------------------------------------------------------------------------------


def _root_link_commands(plan: LabPlan) -> list[str]:
    """Every link, each end created in its namespace with its fixed MAC address (plan.mac)."""
    inet, mgmt = plan.inet_ns, plan.mgmt_ns
    root_if = plan.mgmt_root_if
    cmds = [
        f"link add {root_if} address {mac('mgmt-root')} type veth "
        f"peer name harness address {mac('mgmt-up')} netns {mgmt}",
        f"link set {root_if} addrgenmode none",
        f"addr add {plan.harness_ip}/32 peer {plan.mgmt_router_ip}/32 dev {root_if}",
        f"link set {root_if} up",
        f"route add {plan.mgmt_subnet} via {plan.mgmt_router_ip} dev {root_if}",
        f"neigh replace {plan.mgmt_router_ip} lladdr {mac('mgmt-up')} dev {root_if} nud permanent",
    ]
    for n in plan.nodes:
        station = f"address {mac('data', n.number)}"
        if n.carrier_ns:
            cmds.append(
                f"link add d{n.number} netns {inet} type veth peer name wan {station} netns {n.carrier_ns}"
            )
            cmds.append(
                f"link add lan netns {n.carrier_ns} address {mac('carrier-lan', n.number)} type veth "
                f"peer name wan address {mac('router-wan', n.number)} netns {n.router_ns}"
            )
        elif n.router_ns:
            cmds.append(
                f"link add d{n.number} netns {inet} type veth peer name wan {station} netns {n.router_ns}"
            )
        if n.router_ns:
            cmds.append(
                f"link add lan netns {n.router_ns} address {mac('lan-router', n.number)} type veth "
                f"peer name eth0 address {mac('lan-node', n.number)} netns {n.ns}"
            )
        else:
            cmds.append(f"link add d{n.number} netns {inet} type veth peer name eth0 {station} netns {n.ns}")
        cmds.append(
            f"link add {n.mgmt_port} netns {mgmt} address {mac('mgmt-port', n.number)} type veth "
            f"peer name mgmt address {mac('mgmt-node', n.number)} netns {n.ns}"
        )
    return cmds


def _inet_commands(plan: LabPlan) -> list[str]:
    cmds = ["link set lo up", "link add br0 type bridge", "link set br0 up"]
    for n in plan.nodes:
        cmds += [f"link set d{n.number} master br0", f"link set d{n.number} up"]
    return cmds


def _mgmt_commands(plan: LabPlan) -> list[str]:
    """The management router: the harness on ``harness``, node N on ``n<N>``, all neighbours static."""
    router = plan.mgmt_router_ip
    cmds = [
        "link set lo up",
        f"addr add {router}/32 peer {plan.harness_ip}/32 dev harness",
        "link set harness up",
        f"neigh replace {plan.harness_ip} lladdr {mac('mgmt-root')} dev harness nud permanent",
    ]
    for n in plan.nodes:
        cmds += [
            f"addr add {router}/32 peer {n.mgmt_ip}/32 dev {n.mgmt_port}",
            f"link set {n.mgmt_port} up",
            f"neigh replace {n.mgmt_ip} lladdr {mac('mgmt-node', n.number)} dev {n.mgmt_port} nud permanent",
        ]
    return cmds


def _data_neighbours(plan: LabPlan, n: NodePlan, dev: str) -> list[str]:
    """Static entries for every other station on the data bridge (public nodes and outermost NAT
    routers: a node's public address is always its station's)."""
    return [
        f"neigh replace {other.public_ip} lladdr {mac('data', other.number)} dev {dev} nud permanent"
        for other in plan.nodes
        if other.number != n.number
    ]


def _node_commands(plan: LabPlan, n: NodePlan) -> list[str]:
    cmds = ["link set lo up", f"addr add {n.data_ip}/24 dev eth0", "link set eth0 up"]
    if n.router_ns:
        cmds += [
            f"route add 198.18.0.0/24 via {n.lan_router_ip}",
            f"neigh replace {n.lan_router_ip} lladdr {mac('lan-router', n.number)} dev eth0 nud permanent",
        ]
    else:
        cmds += _data_neighbours(plan, n, "eth0")
    cmds += [
        f"addr add {n.mgmt_ip}/32 peer {plan.mgmt_router_ip}/32 dev mgmt",
        "link set mgmt up",
        f"route add {plan.harness_ip}/32 via {plan.mgmt_router_ip} dev mgmt",
        f"neigh replace {plan.mgmt_router_ip} lladdr {mac('mgmt-port', n.number)} dev mgmt nud permanent",
    ]
    return cmds


def _router_commands(plan: LabPlan, n: NodePlan) -> list[str]:
    cmds = [
        "link set lo up",
        f"addr add {n.router_wan_ip or n.wan_ip}/24 dev wan",
        "link set wan up",
        f"addr add {n.lan_router_ip}/24 dev lan",
        "link set lan up",
        f"neigh replace {n.data_ip} lladdr {mac('lan-node', n.number)} dev lan nud permanent",
    ]
    if n.carrier_ns:
        # Behind a carrier NAT the router's wan sees only the carrier's lan, its way to the bridge.
        cmds += [
            f"neigh replace {n.carrier_lan_ip} lladdr {mac('carrier-lan', n.number)} dev wan nud permanent",
            f"route add 198.18.0.0/24 via {n.carrier_lan_ip}",
        ]
    else:
        cmds += _data_neighbours(plan, n, "wan")
    return cmds


def _carrier_commands(plan: LabPlan, n: NodePlan) -> list[str]:
    """The carrier router: a station on the data bridge (wan) in front of the node's router (lan)."""
    return [
        "link set lo up",
        f"addr add {n.wan_ip}/24 dev wan",
        "link set wan up",
        f"addr add {n.carrier_lan_ip}/24 dev lan",
        "link set lan up",
        f"neigh replace {n.router_wan_ip} lladdr {mac('router-wan', n.number)} dev lan nud permanent",
        *_data_neighbours(plan, n, "wan"),
    ]


def _router_options(n: NodePlan, wan_ip: str) -> nat.RouterOptions:
    t = n.node.mapping_timeout
    return nat.RouterOptions(
        udp_timeout_s=t.udp_s if t else None,
        tcp_timeout_s=t.tcp_s if t else None,
        hairpin=n.node.hairpin,
        wan_ip=wan_ip,
    )


def _router_jobs(plan: LabPlan, n: NodePlan, forward: dict[str, str]) -> list[Callable[[], None]]:
    """Addresses and NAT rulesets of the node's router, and of its carrier router for a double NAT."""
    assert n.router_ns is not None and n.wan_ip is not None
    home_wan = n.router_wan_ip or n.wan_ip
    home = nat.router_ruleset(
        n.node.nat, f"198.19.{n.number}.0/24", n.data_ip, _router_options(n, home_wan)
    )
    jobs: list[Callable[[], None]] = [
        partial(netns.ip_batch, _router_commands(plan, n), netns=n.router_ns),
        partial(_ns_setup, n.router_ns, forward, home),
    ]
    if n.carrier_ns and n.node.carrier_nat and n.router_wan_ip:
        carrier = nat.router_ruleset(
            n.node.carrier_nat, f"198.18.{n.number}.0/24", n.router_wan_ip, _router_options(n, n.wan_ip)
        )
        jobs.append(partial(netns.ip_batch, _carrier_commands(plan, n), netns=n.carrier_ns))
        jobs.append(partial(_ns_setup, n.carrier_ns, forward, carrier))
    return jobs


def _tbf(shaping: Shaping, dev: str) -> str:
    return (
        f"qdisc replace dev {dev} root tbf rate {shaping.rate_mbit:g}mbit "
        f"burst {shaping.burst_kbit:g}kbit latency {TBF_LATENCY}"
    )


def _shaping_jobs(plan: LabPlan) -> list[tuple[str, list[str]]]:
    """tc batches per namespace: shape both directions of each constrained node's data link."""
    inet_cmds: list[str] = []
    jobs: list[tuple[str, list[str]]] = []
    for n in plan.nodes:
        if n.node.shaping is None:
            continue
        inet_cmds.append(_tbf(n.node.shaping, f"d{n.number}"))
        if n.router_ns:
            jobs.append((n.router_ns, [_tbf(n.node.shaping, "wan")]))
        else:
            jobs.append((n.ns, [_tbf(n.node.shaping, "eth0")]))
    if inet_cmds:
        jobs.append((plan.inet_ns, inet_cmds))
    return jobs


def _ns_setup(ns: str, sysctls: dict[str, str], ruleset: str | None) -> None:
    # Rules first: loading a NAT ruleset loads conntrack, whose sysctls (tcp_loose) exist only then;
    # and a router forwards only once its rules are in place.
    script = ["nft -f -"] if ruleset is not None else []
    script += [f"sysctl -qw {k}={v}" for k, v in sysctls.items()]
    netns.run(["ip", "netns", "exec", ns, "sh", "-ec", "; ".join(script)], input_text=ruleset)


def _node_ruleset(plan: LabPlan, n: NodePlan | None = None) -> str:
    ruleset = nat.node_mgmt_ruleset(plan.harness_ip, SSH_PORT)
    if n is not None and n.node.loss_percent > 0:
        ruleset += nat.link_loss_ruleset("eth0", n.node.loss_percent)
    return ruleset


def _far_end_loss_devices(plan: LabPlan) -> list[tuple[str, str, float]]:
    """Where each lossy node's data link arrives (bridge port or router LAN): (namespace, device, %)."""
    return [
        (n.router_ns, "lan", n.node.loss_percent)
        if n.router_ns
        else (plan.inet_ns, f"d{n.number}", n.node.loss_percent)
        for n in plan.nodes
        if n.node.loss_percent > 0
    ]


def _far_end_loss_jobs(plan: LabPlan) -> list[Callable[[], None]]:
    """Loss on the way out of a lossy node: drops at the far end of its data link."""
    return [
        partial(_ns_setup, ns, {}, nat.link_loss_ruleset(dev, pct, table=f"{nat.LOSS_TABLE}_{dev}"))
        for ns, dev, pct in _far_end_loss_devices(plan)
    ]


def mgmt_router_ruleset(plan: LabPlan) -> str:
    """The management router forwards only SSH between the harness and a node: never node to node,
    and it answers nothing itself."""
    harness = plan.harness_ip
    return "\n".join(
        [
            "table inet vpslab_mgmt {",
            "  chain forward {",
            "    type filter hook forward priority filter; policy drop;",
            f'    iifname "harness" oifname "n*" ip saddr {harness} tcp dport {SSH_PORT} accept',
            f'    iifname "n*" oifname "harness" ip daddr {harness} tcp sport {SSH_PORT} accept',
            "  }",
            "  chain input {",
            "    type filter hook input priority filter; policy drop;",
            "  }",
            "}",
            "",
        ]
    )


def build_network(plan: LabPlan) -> None:
    """Namespaces, links, addresses, routes, shaping and nftables of ``plan`` (no processes)."""
    netns.ip_batch(f"netns add {ns}" for ns in plan.namespaces)
    netns.ip_batch(_root_link_commands(plan))
    netns.nft_load(nat.host_guard_ruleset(plan.prefix))
    node_forward = {"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.disable_ipv6": "1"}
    router_forward = nat.ROUTER_SYSCTLS
    # The management router forwards but is no NAT router: it has no "lan" and loads no conntrack.
    mgmt_forward = {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.disable_ipv6": "1"}
    jobs: list[Callable[[], None]] = [
        partial(netns.ip_batch, _inet_commands(plan), netns=plan.inet_ns),
        partial(_ns_setup, plan.inet_ns, node_forward, None),
        partial(netns.ip_batch, _mgmt_commands(plan), netns=plan.mgmt_ns),
        partial(_ns_setup, plan.mgmt_ns, mgmt_forward, mgmt_router_ruleset(plan)),
    ]
    for n in plan.nodes:
        jobs.append(partial(netns.ip_batch, _node_commands(plan, n), netns=n.ns))
        jobs.append(partial(_ns_setup, n.ns, node_forward, _node_ruleset(plan, n)))
        if n.router_ns:
            jobs += _router_jobs(plan, n, router_forward)
    _parallel(jobs)
    _parallel([partial(_tc_batch, ns, cmds) for ns, cmds in _shaping_jobs(plan)])
    _parallel(_far_end_loss_jobs(plan))


def _tc_batch(ns: str, cmds: list[str]) -> None:
    netns.run(["tc", "-n", ns, "-batch", "-"], input_text="\n".join(cmds) + "\n")


def _parallel(jobs: list[Callable[[], None]]) -> None:
    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for fut in [pool.submit(job) for job in jobs]:
            fut.result()


def prepare_node_fs(node_dir: Path) -> Path:
    """A fresh filesystem view for a node: ``fs/opt``, ``fs/log``, ``fs/run`` (bind-mounted)."""
    fs = node_dir / "fs"
    if fs.exists():
        shutil.rmtree(fs)
    for sub, _ in sshd.NODE_MOUNTS:
        (fs / sub).mkdir(parents=True, exist_ok=True)
    return fs


def ensure_mount_points() -> None:
    """The host directories the node views are mounted over (empty on the host itself)."""
    for _, dst in sshd.NODE_MOUNTS:
        Path(dst).mkdir(parents=True, exist_ok=True)
    # sshd's privilege separation directory (normally made by the init script).
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)


# --- removing ------------------------------------------------------------------------------------


def teardown(prefix: str, lab_dir: Path | None) -> list[str]:
    """Remove every process, namespace, link and nft table of lab ``prefix``; return what was removed.

    Finds things by name, so it also cleans up after a crashed or killed ``lab up``. Idempotent.
    """
    removed: list[str] = []
    netns.wait_for_orphaned_batches()
    names = netns.namespaces(prefix)
    inodes = {ino for ino in (netns.netns_inode(n) for n in names) if ino is not None}
    pids = netns.pids_in(inodes) if inodes else []
    if lab_dir is not None:
        pids += _recorded_pids(lab_dir)
    if pids:
        netns.kill_all(pids)
        removed.append(f"{len(set(pids))} processes")
    links = netns.root_links(prefix)
    if links:
        # Deleting one end removes the peer; namespaces are reclaimed asynchronously otherwise.
        netns.ip_batch(f"link del {link}" for link in links)
        removed.append(f"{len(links)} management links")
    if names:
        netns.ip_batch(f"netns del {ns}" for ns in names)
        removed.append(f"{len(names)} namespaces")
    table = nat.host_table_name(prefix)
    if netns.run(["nft", "list", "table", "inet", table], check=False).returncode == 0:
        netns.run(["nft", "delete", "table", "inet", table])
        removed.append(f"nft table inet {table}")
    if lab_dir is not None:
        removed += _unmount_under(lab_dir)
    return removed


def _recorded_pids(lab_dir: Path) -> list[int]:
    run_dir = lab_dir / "run"
    pids = []
    if run_dir.is_dir():
        for f in run_dir.glob("*.pid"):
            pid = netns.read_pid(f)
            if pid is not None and netns.pid_alive(pid) and netns.is_lab_process(pid, lab_dir):
                pids.append(pid)
            f.unlink(missing_ok=True)
    return pids


def _unmount_under(lab_dir: Path) -> list[str]:
    """Unmount anything mounted from or onto the lab directory in the root mount namespace."""
    root = str(lab_dir.resolve())
    targets = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                mount_root, mount_point = line.split()[3:5]
                if mount_point.startswith(root + "/") or mount_root.startswith(root + "/"):
                    targets.append(mount_point)
    except OSError:
        return []
    for t in sorted(targets, reverse=True):
        netns.run(["umount", "-l", t], check=False)
    return [f"mount {t}" for t in targets]


def wait_for(check: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise LabError(f"{what} did not come up within {timeout_s:.0f} s")
        time.sleep(0.02)


# --- the whole lab -------------------------------------------------------------------------------

SSHD_START_TIMEOUT_S = 15.0
SERVICE_START_TIMEOUT_S = 15.0


def up(topology: Topology, prefix: str, lab_dir: Path) -> LabRecord:
    """Build the netns lab for ``topology`` (removing any previous lab of ``prefix`` first)."""
    started = time.monotonic()
    teardown(prefix, lab_dir)
    prepare_lab_dir(lab_dir)
    plan = make_plan(topology, prefix, pick_mgmt_octet(prefix))
    ssh_nodes = [
        sshd.SshdNode(name=n.name, listen=n.mgmt_ip, port=SSH_PORT, node_dir=lab_dir / "nodes" / n.name)
        for n in plan.nodes
    ]
    ensure_mount_points()
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            keys = pool.submit(sshd.prepare_keys, lab_dir, ssh_nodes, prefix)
            build_network(plan)
            keys.result()
        fs = {n.name: prepare_node_fs(s.node_dir) for n, s in zip(plan.nodes, ssh_nodes, strict=True)}
        for s in ssh_nodes:
            sshd.write_config(s, lab_dir, loopback=False)
        _parallel(
            [
                partial(
                    sshd.spawn_detached,
                    sshd.netns_sshd_argv(s, n.ns, fs[n.name]),
                    pid_file=None,
                    log_file=lab_dir / "log" / f"sshd-{n.name}.log",
                )
                for n, s in zip(plan.nodes, ssh_nodes, strict=True)
            ]
        )
        service_list = _services(plan)
        for svc in service_list:
            services.start_service(svc, lab_dir)
        for n in plan.nodes:
            wait_for(
                partial(_sshd_ready, lab_dir, n.name, n.mgmt_ip),
                f"sshd of {n.name} ({n.mgmt_ip}:22, log {lab_dir / 'log' / f'sshd-{n.name}.log'})",
                SSHD_START_TIMEOUT_S,
            )
        for svc in service_list:
            wait_for(
                partial(_service_ready, lab_dir, svc),
                f"{svc.kind} on {svc.node} ({svc.bind}, log {svc.log_file(lab_dir)})",
                SERVICE_START_TIMEOUT_S,
            )
    except BaseException:
        teardown(prefix, lab_dir)
        raise
    record = _record(plan, lab_dir, service_list, time.monotonic() - started)
    write_yaml_atomic(lab_dir / INVENTORY_NAME, inventory_document(record))
    record.save()
    return record


def _services(plan: LabPlan) -> list[services.Service]:
    reg = plan.registry
    svcs = [services.Service("registry", reg.name, f"{reg.data_ip}:{REGISTRY_PORT}", reg.ns)]
    svcs += [
        services.Service("bootstrap", b.name, f"{b.data_ip}:{BOOTSTRAP_PORT}", b.ns) for b in plan.bootstraps
    ]
    return svcs


def _sshd_ready(lab_dir: Path, name: str, host: str) -> bool:
    pid = netns.read_pid(lab_dir / "run" / f"sshd-{name}.pid")
    return pid is not None and tcp_open(host, SSH_PORT, timeout=0.2)


def _service_ready(lab_dir: Path, svc: services.Service) -> bool:
    pid = netns.read_pid(svc.pid_file(lab_dir))
    if pid is None or not netns.pid_alive(pid):
        raise LabError(f"{svc.kind} on {svc.node} exited at start; see {svc.log_file(lab_dir)}")
    return netns.listening(pid, svc.port, svc.proto)


def _record(
    plan: LabPlan, lab_dir: Path, svcs: list[services.Service], seconds: float
) -> LabRecord:
    nodes = tuple(
        NodeRecord(
            name=n.name,
            role=n.node.role,
            # A double NAT is labelled with what it does, seen from outside.
            nat=nat.combined_nat(n.node.nat, n.node.carrier_nat) if n.node.carrier_nat else n.node.nat,
            data_ip=n.data_ip,
            public_ip=n.public_ip,
            host=n.mgmt_ip,
            port=SSH_PORT,
            ns=n.ns,
            router_ns=n.router_ns,
        )
        for n in plan.nodes
    )
    return LabRecord(
        prefix=plan.prefix,
        flavour="netns",
        topology=plan.topology.name,
        lab_dir=str(lab_dir),
        nodes=nodes,
        services=tuple(ServiceRecord(s.kind, s.node, s.bind, s.netns) for s in svcs),
        mgmt_subnet=plan.mgmt_subnet,
        harness_ip=plan.harness_ip,
        build_seconds=round(seconds, 3),
        # What the NAT labels cover, and each node's field conditions, for status and reports.
        extra={"nat_protocols": list(nat.PROTOCOLS), "conditions": field_conditions(plan)},
    )


def field_conditions(plan: LabPlan) -> dict[str, dict[str, object]]:
    """The field conditions of every node that has any (topology keys, as data)."""
    out: dict[str, dict[str, object]] = {}
    for n in plan.nodes:
        c: dict[str, object] = {}
        if n.node.loss_percent > 0:
            c["loss_percent"] = n.node.loss_percent
        if n.node.mapping_timeout is not None:
            t = n.node.mapping_timeout
            timeouts = (("udp_s", t.udp_s), ("tcp_s", t.tcp_s))
            c["mapping_timeout"] = {k: v for k, v in timeouts if v is not None}
        if n.node.hairpin:
            c["hairpin"] = True
        if n.node.carrier_nat is not None:
            c["carrier_nat"] = n.node.carrier_nat
            c["home_nat"] = n.node.nat
        if c:
            out[n.name] = c
    return out
