"""Config and inventory loading: the shipped examples load unchanged, and every kind of mistake is one
ConfigError line naming the file, the line, the key and (for closed sets) the allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_vpstest.config import (
    FOCUSES,
    NAT_TYPES,
    Inventory,
    ProjectConfig,
    is_safe_name,
    load_inventory,
    load_project_config,
    parse_inventory,
    parse_project_config,
)
from pytest_vpstest.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
NODE = "  - name: n1\n    host: 198.18.0.1\n"


def project_error(text: str, path: str = "/srv/demo/vps.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_project_config(text, path)
    return info.value


def inventory_error(text: str, path: str = "/srv/demo/nodes.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_inventory(text, path)
    return info.value


def assert_error(err: ConfigError, path: str, line: int | None, key: str | None, fragment: str) -> None:
    text = str(err)
    assert "\n" not in text
    assert err.path == path and err.line == line and err.key == key, text
    where = path if line is None else f"{path}:{line}"
    assert text.startswith(f"{where}, key '{key}': " if key else f"{where}: "), text
    assert fragment in text, text


# ----------------------------------------------------------------- the examples


def test_the_base_schema_example_config_loads_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/dev")
    cfg = load_project_config(EXAMPLES / "example-config.yaml")
    assert isinstance(cfg, ProjectConfig)
    assert cfg.workspace == Path("/home/dev/Desktop/Devel/projects/saorsa-testnet")
    assert cfg.project == "examples"  # the config file's directory name
    assert [name for name, _ in cfg.modules] == ["quic-test", "gossip-test", "core-test", "node-test"]
    assert dict(cfg.modules)["quic-test"].binary == "saorsa-quic-test"
    assert dict(cfg.modules)["node-test"].tests == ("health", "sync", "storage", "retrieval")
    assert cfg.build is not None and cfg.build.command.startswith("cargo zig build")
    assert cfg.build.target_dir == "target/x86_64-unknown-linux-gnu/release"
    assert cfg.deploy.install_path == "/opt/saorsa-test/" and cfg.deploy.nodes == "all"
    assert cfg.bootstrap.nodes == ("saorsa-2.saorsalabs.com:9000", "saorsa-3.saorsalabs.com:9000")
    assert cfg.suite("connectivity").target("nat_traversed") == 85
    assert cfg.suite("connectivity").nat_cooloff_seconds == 30
    assert cfg.soak.wait_1hr and cfg.soak.wait_6hr and cfg.soak.regression_tolerance == 0
    assert cfg.soak.wait_1hr_seconds == 3600 and cfg.soak.wait_6hr_seconds == 21600


def test_the_ten_node_example_fleet_is_expressible_as_an_inventory() -> None:
    inv = load_inventory(EXAMPLES / "example-fleet.yaml")
    assert isinstance(inv, Inventory)
    assert inv.names == tuple(f"saorsa-{i}" for i in range(1, 11))
    assert {n.name: n.nat for n in inv.nodes if n.role == "nat"} == {
        "saorsa-4": "full-cone",
        "saorsa-5": "address-restricted",
        "saorsa-6": "port-restricted",
        "saorsa-10": "symmetric",
    }
    s10 = inv.node("saorsa-10")
    assert s10.host == "saorsa-10.saorsalabs.com" and s10.fallback_ip == "77.42.39.239"
    assert inv.node("saorsa-8").notes is not None and "high latency" in inv.node("saorsa-8").notes
    assert inv.node("saorsa-1").role == "registry"
    assert [n.name for n in inv.nodes if n.role == "bootstrap"] == ["saorsa-2", "saorsa-3"]
    assert {n.service_manager for n in inv.nodes} == {"systemd"}
    assert inv.known_hosts == EXAMPLES / "known_hosts"
    assert inv.registry is not None and inv.registry.url == "https://saorsa-1.saorsalabs.com"
    assert "EXAMPLE DATA ONLY" in (EXAMPLES / "example-fleet.yaml").read_text()


def test_the_lab_config_example_loads() -> None:
    cfg = load_project_config(EXAMPLES / "lab-config.yaml")
    assert cfg.project == "vps-agent" and cfg.inventory == "lab"
    assert cfg.workspace == EXAMPLES and cfg.state_dir == EXAMPLES / ".vpstest"
    assert cfg.build is not None and cfg.build.artifact == "dist/vps-agent.pyz"
    assert cfg.deploy.start_command == (
        "{bin} run --node {node} --bind {p2p_address} --registry {registry} --bootstrap {bootstrap}"
    )
    conn = cfg.suite("connectivity")
    assert (conn.target("direct"), conn.target("nat_traversed"), conn.target("relay")) == (99, 85, 100)
    assert cfg.soak.wait_1hr_seconds == 5 and cfg.soak.wait_6hr_seconds == 10
    assert cfg.probes.batch == "{bin} probe batch" and conn.timeout_seconds == 3


# ----------------------------------------------------------------- defaults and paths


def test_project_defaults_to_the_config_directory_name(tmp_path: Path) -> None:
    path = tmp_path / "ant-quic" / "config.yaml"
    path.parent.mkdir()
    path.write_text("workspace: .\n")
    cfg = load_project_config(path)
    assert cfg.project == "ant-quic" and cfg.workspace == path.parent


def test_an_unsafe_directory_name_asks_for_an_explicit_project(tmp_path: Path) -> None:
    path = tmp_path / "my project" / "config.yaml"
    path.parent.mkdir()
    path.write_text("workspace: .\n")
    with pytest.raises(ConfigError) as info:
        load_project_config(path)
    text = str(info.value)
    assert info.value.key == "project" and "'my project'" in text and "set 'project:'" in text
    path.write_text("project: my-project\nworkspace: .\n")
    assert load_project_config(path).project == "my-project"


def test_workspace_tilde_expands_and_relative_paths_follow_the_config_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOME", "/home/dev")
    cfg = parse_project_config("workspace: ~/src/p2p\nstate_dir: ../state\n", "/etc/vps/p/config.yaml")
    assert cfg.workspace == Path("/home/dev/src/p2p")
    assert cfg.state_dir == Path("/etc/vps/state")
    cfg = parse_project_config("workspace: sub/dir\n", "/etc/vps/p/config.yaml")
    assert cfg.workspace == Path("/etc/vps/p/sub/dir")


def test_our_additions_are_optional_and_read_when_present() -> None:
    text = """
project: ant-quic
inventory: lab:vdemo
focus: nat-traversal
criteria: custom
criteria_expr: "connectivity.nat_traversed.rate >= 85"
proof: logs
probes: {status: "{bin} status --json", throughput: "{bin} tp {peer_address} {seconds} {{literal}}"}
fix: {command: ./fixer.sh, commit_wait_seconds: 60}
notify:
  channels: [{kind: webhook, url: "http://127.0.0.1:8099/hook"}, {kind: command, command: notify-send}]
  dashboard_url: http://127.0.0.1:8099/api/events
tests:
  throughput: {seconds: 2, pairs: ring, attempts: 1}
"""
    cfg = parse_project_config(text, "/x/config.yaml")
    assert cfg.inventory == "lab:vdemo" and cfg.focus == "nat-traversal" and cfg.criteria == "custom"
    assert cfg.probes.status == "{bin} status --json"
    assert cfg.probes.connect.startswith("{bin} probe connect")  # untouched default
    assert cfg.fix.command == "./fixer.sh" and cfg.fix.commit_wait_seconds == 60
    assert [c.kind for c in cfg.notify.channels] == ["webhook", "command"]
    assert dict(cfg.suite("throughput").extra) == {"seconds": 2, "pairs": "ring"}
    bare = parse_project_config("workspace: .\n", "/x/p/config.yaml")
    assert bare.inventory is None and bare.focus is None and bare.build is None


def test_yaml_anchors_and_merge_keys_work() -> None:
    text = """
project: p
tests:
  connectivity: &base {attempts: 5, timeout_seconds: 3}
  nat_traversal:
    <<: *base
    attempts: 7
"""
    cfg = parse_project_config(text, "/x/config.yaml")
    assert cfg.suite("connectivity").attempts == 5
    assert cfg.suite("nat_traversal").attempts == 7 and cfg.suite("nat_traversal").timeout_seconds == 3


def test_inventory_paths_and_defaults() -> None:
    text = f"known_hosts: kh\nidentity_file: ~/.ssh/id\nnodes:\n{NODE}"
    inv = parse_inventory(text, "/lab/inventory.yaml")
    assert inv.known_hosts == Path("/lab/kh")
    assert inv.identity_file == Path("~/.ssh/id").expanduser()
    n = inv.node("n1")
    assert (n.user, n.port, n.role, n.nat, n.service_manager) == ("root", 22, "test", "none", "systemd")


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("saorsa-10", True),
        ("a.b_c-d", True),
        ("9lives", True),
        ("../etc", False),
        ("a/b", False),
        ("a..b", False),
        (".hidden", False),
        ("-rf", False),
        ("a b", False),
        ("a;b", False),
        ("$(id)", False),
        ("a`b`", False),
        ("a|b", False),
        ("", False),
        ("tab\there", False),
        ("new\nline", False),
    ],
)
def test_safe_names(name: str, safe: bool) -> None:
    assert is_safe_name(name) is safe


# ----------------------------------------------------------------- errors

PATH = "/srv/demo/vps.yaml"
INV = "/srv/demo/nodes.yaml"


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        (
            "project: p\nbiuld: {command: make}\n",
            2,
            "biuld",
            "unknown key (allowed: schema_version, project,",
        ),
        (
            "project: p\nbuild:\n  command: make\n  comand: x\n",
            4,
            "build.comand",
            "allowed: command, target_dir",
        ),
        (
            "project: p\nsoak:\n  wait_1hr: sometimes\n",
            3,
            "soak.wait_1hr",
            "expected true or false, got a string",
        ),
        ("project: p\nmodules: [a, b]\n", 2, "modules", "expected a mapping, got a list"),
        ("project: p\nbuild:\n  command: [make]\n", 3, "build.command", "expected a string, got a list"),
        (
            "project: p\ndeploy: {parallelism: 2.5}\n",
            2,
            "deploy.parallelism",
            "expected an integer, got a number",
        ),
        ("project: p\nbuild:\n  target_dir: t\n", 3, "build.command", "missing required key"),
        ("project: p\nmodules:\n  m:\n    crate: c\n", 4, "modules.m.binary", "missing required key"),
        ("project: p\nfocus: everything\n", 2, "focus", f"allowed: {', '.join(FOCUSES)}"),
        ("project: p\ncriteria: most\n", 2, "criteria", "allowed: all-pass, threshold, improvement, custom"),
        (
            "project: p\nnotify:\n  channels:\n    - kind: pager\n",
            4,
            "notify.channels[0].kind",
            "allowed: log,",
        ),
        (
            "project: p\nnotify:\n  channels:\n    - kind: webhook\n",
            4,
            "notify.channels[0].url",
            "needs 'url'",
        ),
        ("project: ../p\n", 1, "project", "not a safe name"),
        ("project: 'a b'\n", 1, "project", "not a safe name"),
        ("project: p\nmodules:\n  'x;y': {binary: b}\n", 3, "modules.x;y", "not a safe name"),
        ("project: p\nmodules:\n  m: {binary: ../b}\n", 3, "modules.m.binary", "not a safe name"),
        ("project: p\ndeploy: {service_prefix: 'a/b'}\n", 2, "deploy.service_prefix", "not a safe name"),
        ("project: p\ndeploy: {nodes: [ok, 'x y']}\n", 2, "deploy.nodes[1]", "not a safe name"),
        ("project: p\ndeploy: {nodes: some}\n", 2, "deploy.nodes", "expected 'all' or a list"),
        ("project: p\ndeploy: {install_path: opt/x}\n", 2, "deploy.install_path", "absolute path"),
        ("project: p\ntests:\n  gossip: {attempts: 0}\n", 3, "tests.gossip.attempts", "at least 1, got 0"),
        ("project: p\ntests:\n  gossip: {attempts: -2}\n", 3, "tests.gossip.attempts", "at least 1, got -2"),
        (
            "project: p\ntests:\n  gossip: {timeout_seconds: 0}\n",
            3,
            "tests.gossip.timeout_seconds",
            "greater than 0",
        ),
        (
            "project: p\ntests:\n  gossip: {timeout_seconds: -1.5}\n",
            3,
            "tests.gossip.timeout_seconds",
            "greater than 0",
        ),
        (
            "project: p\ntests:\n  gossip: {nat_cooloff_seconds: -1}\n",
            3,
            "tests.gossip.nat_cooloff_seconds",
            "negative",
        ),
        (
            "project: p\ntests:\n  gossip:\n    success_criteria: {direct: -5}\n",
            4,
            "tests.gossip.success_criteria.direct",
            "negative",
        ),
        ("project: p\ntests:\n  gossip: {pairs: {a: 1}}\n", 3, "tests.gossip.pairs", "expected a plain"),
        (
            "project: p\nbuild: {command: make, timeout_seconds: 0}\n",
            2,
            "build.timeout_seconds",
            "greater than 0",
        ),
        (
            "project: p\nbuild: {command: make, max_consecutive_failures: 0}\n",
            2,
            "build.max_consecutive_failures",
            "at least 1",
        ),
        ("project: p\ndeploy: {parallelism: 0}\n", 2, "deploy.parallelism", "at least 1"),
        (
            "project: p\ndeploy: {registration_timeout_seconds: 0}\n",
            2,
            "deploy.registration_timeout_seconds",
            "greater than 0",
        ),
        ("project: p\nfix: {commit_wait_seconds: -1}\n", 2, "fix.commit_wait_seconds", "greater than 0"),
        ("project: p\nsoak: {wait_1hr_seconds: -1}\n", 2, "soak.wait_1hr_seconds", "negative"),
        ("project: p\nsoak: {wait_6hr_seconds: .nan}\n", 2, "soak.wait_6hr_seconds", "finite"),
        ("project: p\nbootstrap: {registry: ftp://x}\n", 2, "bootstrap.registry", "http:// or https:// URL"),
        ("project: p\nproject: q\n", 2, "project", "duplicate key (first at line 1)"),
        (
            "project: p\ndeploy:\n  start_command: '{bin} run --name {nodename}'\n",
            3,
            "deploy.start_command",
            "unknown placeholder {nodename} (allowed: bin, node,",
        ),
        (
            "project: p\ndeploy: {start_command: '{bin} {peer}'}\n",
            2,
            "deploy.start_command",
            "unknown placeholder {peer}",
        ),
        (
            "project: p\ndeploy: {start_command: '{bin!r} run'}\n",
            2,
            "deploy.start_command",
            "unknown placeholder {bin!r}",
        ),
        ("project: p\nprobes: {status: '{bin} status {'}\n", 2, "probes.status", "malformed template"),
        (
            "project: p\nprobes: {connect: '{bin} {peer.name}'}\n",
            2,
            "probes.connect",
            "unknown placeholder {peer.name}",
        ),
        (
            "project: p\nprobes: {batch: '{bin} probe batch --peer {peer}'}\n",
            2,
            "probes.batch",
            "unknown placeholder {peer}",
        ),
        (
            "project: p\nprobes: {ping: '{bin} ping'}\n",
            2,
            "probes.ping",
            "unknown key (allowed: status, connect,",
        ),
        ("project: p\n7: x\n", 2, None, "keys must be strings"),
        ("project: p\nschema_version: 2\n", 2, "schema_version", "at most 1"),
        ("project: p\nbuild: {command: '   '}\n", 2, "build.command", "must not be empty"),
        (
            "project: p\nbuild: {command: !shell make}\n",
            2,
            "build.command",
            "expected a string, got a value tagged !shell",
        ),
    ],
)
def test_project_config_errors_name_file_line_and_key(
    text: str, line: int, key: str | None, fragment: str
) -> None:
    assert_error(project_error(text, PATH), PATH, line, key, fragment)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("project: p\nbuild: [make\n", 3, "YAML syntax error"),
        ("project: p\n  bad: indent\n", 2, "YAML syntax error"),
        ("project: p\nbuild:\n\t- x\n", 3, "YAML syntax error"),
        ("project: 'unclosed\n", 2, "YAML syntax error"),
        ("project: p\nbuild: *nowhere\n", 2, "YAML syntax error"),
        ("", 1, "empty"),
        ("# only a comment\n", 1, "empty"),
        ("- a\n- b\n", 1, "expected a mapping, got a list"),
    ],
)
def test_yaml_syntax_errors_and_wrong_documents_name_the_line(text: str, line: int, fragment: str) -> None:
    err = project_error(text, PATH)
    assert err.line == line and fragment in str(err) and str(err).startswith(f"{PATH}:{line}"), str(err)


def test_deep_nesting_and_control_characters_are_config_errors() -> None:
    assert "nesting is too deep" in str(project_error("build: " + "[" * 3000, PATH))
    err = project_error('project: p\nbuild: {command: "a\x07"}\n', PATH)
    assert err.line == 2 and "character #x0007 is not allowed" in str(err)


def test_keys_with_line_breaks_are_escaped_so_the_message_stays_one_line() -> None:
    err = project_error('project: p\n"a\\nb\\u2028c": 1\n', PATH)
    assert err.line == 2 and err.key == "a\\nb\\u2028c"
    assert len(str(err).splitlines()) == 1 and "unknown key" in str(err)


def test_alias_bombs_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    err = project_error("\n".join(lines) + "\n", PATH)
    assert "more than" in str(err) and "aliases" in str(err)


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        (
            "nodes:\n  - name: n1\n    host: h\n    nat: cgnat\n",
            4,
            "nodes[0].nat",
            f"allowed: {', '.join(NAT_TYPES)}",
        ),
        (
            "nodes:\n  - name: n1\n    host: h\n    role: leader\n",
            4,
            "nodes[0].role",
            "allowed: registry, bootstrap",
        ),
        (
            "nodes:\n  - name: n1\n    host: h\n    service_manager: init\n",
            4,
            "nodes[0].service_manager",
            "systemd",
        ),
        (
            "nodes:\n  - name: n1\n    host: h\n    hostname: h\n",
            4,
            "nodes[0].hostname",
            "unknown key (allowed: name, host",
        ),
        ("nodes:\n  - name: n1\n", 2, "nodes[0].host", "missing required key"),
        ("nodes:\n  - host: h\n", 2, "nodes[0].name", "missing required key"),
        ("connect_timeout: 5\n", 1, "nodes", "missing required key"),
        ("nodes: []\n", 1, "nodes", "lists no nodes"),
        ("nodes: {n1: {host: h}}\n", 1, "nodes", "expected a list, got a mapping"),
        (
            f"nodes:\n{NODE}  - name: n1\n    host: h2\n",
            4,
            "nodes[1].name",
            "duplicate node name 'n1' (first defined at line 2)",
        ),
        ("nodes:\n  - name: ../n1\n    host: h\n", 2, "nodes[0].name", "not a safe name"),
        ("nodes:\n  - name: n/1\n    host: h\n", 2, "nodes[0].name", "not a safe name"),
        ("nodes:\n  - name: 'n1; reboot'\n    host: h\n", 2, "nodes[0].name", "not a safe name"),
        ("nodes:\n  - name: 'n 1'\n    host: h\n", 2, "nodes[0].name", "not a safe name"),
        ("nodes:\n  - name: n1\n    host: 'h; rm -rf /'\n", 3, "nodes[0].host", "not a host name"),
        ("nodes:\n  - name: n1\n    host: h\n    user: 'r t'\n", 4, "nodes[0].user", "not a user name"),
        ("nodes:\n  - name: n1\n    host: h\n    port: 0\n", 4, "nodes[0].port", "at least 1"),
        ("nodes:\n  - name: n1\n    host: h\n    port: 70000\n", 4, "nodes[0].port", "at most 65535"),
        (
            "nodes:\n  - name: n1\n    host: h\n    port: '22'\n",
            4,
            "nodes[0].port",
            "expected an integer, got a string",
        ),
        (
            "nodes:\n  - name: n1\n    host: h\n    fallback_ip: 1.2.3\n",
            4,
            "nodes[0].fallback_ip",
            "not an IP",
        ),
        (
            "nodes:\n  - name: n1\n    host: h\n    tags: [ok, 'no way']\n",
            4,
            "nodes[0].tags[1]",
            "not a safe name",
        ),
        (
            "nodes:\n  - name: n1\n    host: h\n    install_path: rel\n",
            4,
            "nodes[0].install_path",
            "absolute",
        ),
        (f"connect_timeout: 0\nnodes:\n{NODE}", 1, "connect_timeout", "greater than 0"),
        (f"lab: docker\nnodes:\n{NODE}", 1, "lab", "allowed: netns, loopback"),
        (
            f"registry: {{url: 'http://r', via_node: ghost}}\nnodes:\n{NODE}",
            1,
            "registry.via_node",
            "no node named 'ghost'",
        ),
        (f"registry: {{via_node: n1}}\nnodes:\n{NODE}", 1, "registry.url", "missing required key"),
        (f"schema_version: 3\nnodes:\n{NODE}", 1, "schema_version", "at most 1"),
        (f"bootstrap: 198.18.0.2:3478\nnodes:\n{NODE}", 1, "bootstrap", "expected a list, got a string"),
    ],
)
def test_inventory_errors_name_file_line_and_key(text: str, line: int, key: str, fragment: str) -> None:
    assert_error(inventory_error(text, INV), INV, line, key, fragment)


def test_missing_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_project_config(tmp_path / "absent.yaml")
    bad = tmp_path / "nodes.yaml"
    bad.write_bytes(b"nodes:\n  - name: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_inventory(bad)


def test_a_config_without_a_file_needs_a_project() -> None:
    with pytest.raises(ConfigError, match="key 'project': missing required key"):
        parse_project_config("workspace: .\n")
    assert parse_project_config("project: p\n").project == "p"


def test_per_role_start_commands_readiness_and_optional_probes() -> None:
    text = (
        "deploy:\n"
        "  readiness: status\n"
        "  start_command: '{bin} run --as {role}'\n"
        "  start_commands:\n"
        "    bootstrap: '{bin} relay --listen {p2p_address}'\n"
        "probes:\n"
        "  crdt: null\n"
        "  subscribe: '{bin} sub {topic}'\n"
        "  connect: '{bin} dial {peer_id} {peer_public_address}'\n"
    )
    cfg = parse_project_config(text, "/x/p/config.yaml")
    assert cfg.deploy.readiness == "status"
    assert cfg.deploy.start_command_for("bootstrap") == "{bin} relay --listen {p2p_address}"
    assert cfg.deploy.start_command_for("nat") == "{bin} run --as {role}"
    assert cfg.probes.crdt is None and cfg.probes.subscribe == "{bin} sub {topic}"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("deploy:\n  readiness: sometimes\n", "deploy.readiness"),
        ("deploy:\n  start_commands:\n    relay: x\n", "deploy.start_commands.relay"),
        ("probes:\n  status: null\n", "probes.status"),
    ],
)
def test_bad_readiness_roles_and_required_null_probes_are_refused(text: str, where: str) -> None:
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        parse_project_config(text, "/x/p/config.yaml")


def test_a_huge_config_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "vps.yaml"
    with path.open("wb") as f:
        f.truncate(200 * 1024 * 1024)  # sparse: 200 MB without writing them
    with pytest.raises(ConfigError, match=r"file is 200\.0 MiB; config and inventory files are limited to"):
        load_project_config(path)
    with pytest.raises(ConfigError, match=r"limited to 1 MiB"):
        load_inventory(path)


def test_a_misspelt_suite_key_is_an_error_naming_the_suites() -> None:
    err = project_error("project: demo\ntests:\n  conectivity:\n    attempts: 2\n")
    assert_error(err, "/srv/demo/vps.yaml", 3, "tests.conectivity", "unknown suite 'conectivity'")
    assert "connectivity" in str(err) and "nat_traversal" in str(err)


def test_a_broken_criteria_expression_is_an_error_at_load() -> None:
    err = project_error("project: demo\ncriteria: custom\ncriteria_expr: 'connectivity.relay.rate >= '\n")
    assert_error(err, "/srv/demo/vps.yaml", 3, "criteria_expr", "")
    ok = parse_project_config("project: d\ncriteria_expr: 'connectivity.relay.rate >= 99'\n", "/srv/d/v.yaml")
    assert ok.criteria_expr == "connectivity.relay.rate >= 99"


def test_health_peer_seen_within_seconds() -> None:
    cfg = parse_project_config("workspace: .\nhealth: {peer_seen_within_seconds: 15}\n", "/x/config.yaml")
    assert cfg.health.peer_seen_within_seconds == 15
    assert parse_project_config("workspace: .\n", "/x/config.yaml").health.peer_seen_within_seconds == 60
    with pytest.raises(ConfigError, match=r"health\.peer_seen_within_seconds"):
        parse_project_config("workspace: .\nhealth: {peer_seen_within_seconds: 0}\n", "/x/config.yaml")
