"""Every public module of the package declares its public names in ``__all__``, and this file pins
each list (as httpx pins its own in ``tests/test_exported_members.py``): adding, renaming or removing
a public name is a deliberate change, made here as well.

Public modules are all of ``pytest_vpstest`` whose dotted name has no part starting with ``_``
(``_files``, ``lab.agent.__main__`` and the like are private); the suites, installed as
``pytest_vpstest.suites``, are pytest test modules and are not checked.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import pytest_vpstest

EXPECTED: dict[str, list[str]] = {
    "pytest_vpstest": [
        "BuildError", "ConfigError", "CriteriaError", "DeployError", "LabError", "LeaseHeldError",
        "NodeError", "ProbeError", "StaleLeaseError", "StateError", "UnreachableNodeError", "VpsTestError",
        "__version__",
    ],
    "pytest_vpstest.cli": [
        "build_parser", "default_state_dir", "launch", "load_config", "load_inventory", "main",
        "run_foreground", "start_background",
    ],
    "pytest_vpstest.commands": [],
    "pytest_vpstest.commands.contract": ["peer_for", "register"],
    "pytest_vpstest.commands.dashboard": ["register"],
    "pytest_vpstest.commands.loading": [
        "add_fleet_options", "add_state_dir_option", "config_path", "default_state_dir", "iso_now",
        "load_config", "load_inventory", "resolve_inventory_path", "state_dir_of",
    ],
    "pytest_vpstest.commands.loops": ["node_health", "project_status", "register"],
    "pytest_vpstest.commands.nodes": ["check_reachability", "register"],
    "pytest_vpstest.config_operations": [
        "NODE_TESTS", "ChannelConfig", "ChannelKind", "DashboardConfig", "FixConfig", "HealthConfig",
        "NodeTests", "NotifyConfig", "parse_dashboard", "parse_fix", "parse_health", "parse_notify",
    ],
    "pytest_vpstest.config": [
        "CRITERIA", "FOCUSES", "INVENTORY_KEYS", "NAT_TYPES", "NODE_KEYS", "NODE_TESTS",
        "PROBE_PLACEHOLDERS", "PROJECT_KEYS", "PROOFS", "ROLES", "SAFE_NAME_PATTERN", "SERVICE_MANAGERS",
        "START_COMMAND_PLACEHOLDERS", "BootstrapConfig", "BuildConfig", "ChannelConfig", "ChannelKind",
        "Criteria", "DashboardConfig", "DeployConfig", "FixConfig", "Focus", "HealthConfig", "Inventory",
        "ModuleConfig", "NatType", "Node", "NodeTests", "NotifyConfig", "ProbeTemplates", "ProjectConfig",
        "Proof", "RegistryAccess", "Role",
        "ServiceManagerKind", "SoakConfig", "SuiteConfig", "is_safe_name", "load_inventory",
        "load_project_config", "parse_inventory", "parse_project_config",
    ],
    "pytest_vpstest.criteria": [
        "DEFAULT_TARGETS", "Check", "CriteriaSpec", "Op", "Verdict", "all_pass", "custom", "flatten_metrics",
        "improvement", "judge", "metric_key", "nat_default_checks", "rate", "threshold", "wilson_interval",
    ],
    "pytest_vpstest.dashboard": ["DEFAULT_PORT"],
    "pytest_vpstest.dashboard.actions": ["ActionRunner", "suites_dir"],
    "pytest_vpstest.dashboard.app": ["CSP", "Settings", "create_app"],
    "pytest_vpstest.dashboard.files": [
        "append_rollback", "latest_test_run", "new_test_run_dir", "nodes_with_test_runs", "read_json_object",
        "rollbacks", "write_json_atomic",
    ],
    "pytest_vpstest.dashboard.hub": ["Hub"],
    "pytest_vpstest.dashboard.markdown": ["render_markdown"],
    "pytest_vpstest.dashboard.model": [
        "NodeTestFacts", "TestsColour", "ago", "history_series", "matrix_cells", "node_tests_colour",
        "node_tests_tooltip", "theory_expects", "wilson",
    ],
    "pytest_vpstest.dashboard.reader": ["ProjectFiles", "StateReader", "parse_time"],
    "pytest_vpstest.dashboard.server": ["DashboardServer", "serve"],
    "pytest_vpstest.dashboard.token": ["read_token", "token_path", "use_token"],
    "pytest_vpstest.demo": [
        "DEMO_PREFIX", "DEMO_PROJECT", "create_workspace", "plant_defect", "register", "run_demo",
    ],
    "pytest_vpstest.errors": [
        "BuildError", "ConfigError", "CriteriaError", "DeployError", "InvalidEvent", "LabError",
        "LeaseHeldError", "NodeError", "ProbeError", "StaleLeaseError", "StateError", "UnreachableNodeError",
        "VpsTestError",
    ],
    "pytest_vpstest.expressions": [
        "Arith", "BoolLit", "BoolOp", "Compare", "Name", "Neg", "Node", "Not", "Num", "Token", "as_bool",
        "check_expression", "compare", "evaluate", "parse", "render", "tokenize",
    ],
    "pytest_vpstest.fleet": [],
    "pytest_vpstest.fleet.batch": ["REQUESTS", "BatchLane", "Stream", "batch_request"],
    "pytest_vpstest.fleet.build": [
        "BuildFailure", "BuildResult", "Diagnostic", "DiagnosticParser", "parse_diagnostics",
        "resolve_artifact", "run_build",
    ],
    "pytest_vpstest.fleet.contract": [
        "ACTIONS", "COMMON_PLACEHOLDERS", "ActionSpec", "action_spec", "check_schema", "schema",
        "schema_path", "validate",
    ],
    "pytest_vpstest.fleet.contract_check": [
        "CheckRow", "Status", "check_contract", "contract_passed", "judge", "render_table",
    ],
    "pytest_vpstest.fleet.deploy": [
        "DeployReport", "NodeDeploy", "Stage", "deploy", "owner_of", "registered_names", "rollback",
        "start_command", "target_nodes",
    ],
    "pytest_vpstest.fleet.judging": [
        "PATHS", "PUNCHED_PATHS", "ConnectVerdict", "Outcome", "attempt_lines", "connected", "judge_connect",
        "path_of", "stderr_tail",
    ],
    "pytest_vpstest.fleet.artifact": [
        "ARCHIVE_SUFFIXES", "BUNDLE_CURRENT", "BUNDLE_PREVIOUS", "BUNDLE_RELEASES", "install_script",
        "is_bundle", "pack_bundle", "rollback_script",
    ],
    "pytest_vpstest.fleet.iperf": ["iperf3_ceiling"],
    "pytest_vpstest.fleet.node": [
        "NodePlan", "binary_name", "install_path", "is_bundle_deploy", "plan_node", "service_name",
    ],
    "pytest_vpstest.fleet.probes": [
        "ACTIONS", "REQUIRED_KEYS", "CommandOutcome", "NodeSlots", "ProbeResult", "ProbeRunner", "Transport",
        "parse_output",
    ],
    "pytest_vpstest.fleet.remote": [
        "CommandResult", "NodeSession", "Pool", "Session", "SessionFactory", "SessionPool",
        "known_hosts_path", "query_registry", "quote_command",
    ],
    "pytest_vpstest.fleet.services": [
        "ProcessManager", "ServiceManager", "ServiceStatus", "SystemdManager", "service_manager",
    ],
    "pytest_vpstest.fleet.stream": ["ChannelStream"],
    "pytest_vpstest.interview": [
        "QUESTIONS", "Cancelled", "InterviewIO", "Option", "Plan", "Question", "console_io", "plan_summary",
        "prefill_from", "run_interview",
    ],
    "pytest_vpstest.inventory": [
        "INVENTORY_KEYS", "NAT_TYPES", "NODE_KEYS", "ROLES", "SERVICE_MANAGERS", "Inventory", "NatType",
        "Node", "RegistryAccess", "Role", "ServiceManagerKind", "load_inventory", "parse_inventory",
    ],
    "pytest_vpstest.lab.agent.batch": [
        "DEFAULT_CONCURRENCY", "DEFAULT_DEADLINE_S", "GRACE_S", "MAX_CONCURRENCY", "PARAMETERS",
        "BadRequest", "Handler", "parse_request", "run_batch", "serve_batch",
    ],
    "pytest_vpstest.lab.theory": ["expected_matrix", "peer_names"],
    "pytest_vpstest.lab.sut_status": ["SutState", "SutStatus", "ask_nodes", "judge"],
    "pytest_vpstest.nat_theory": [
        "EXPECTED_RATES", "METHODS", "Outcome", "expected_failure", "expected_outcome", "group_target",
        "groups", "may_fail", "punch_possible", "split_group",
    ],
    "pytest_vpstest.modes": ["CRITERIA", "PROOFS", "Criteria", "Proof"],
    "pytest_vpstest.nat_types": ["NAT_TYPES", "NatInfo", "NatType", "nat_info", "nat_rank"],
    "pytest_vpstest.node_skips": [
        "SKIP_FILE", "SKIP_NODES_OPTION", "UNHEALTHY_PREFIX", "nodes_to_skip", "read_skip_file",
        "tests_mode_reason", "unhealthy_reason", "unhealthy_why",
    ],
    "pytest_vpstest.lab": [
        "FLAVOURS", "Flavour", "LabRecord", "NodeStatus", "Topology", "choose_flavour", "down",
        "inventory_path", "lab_dir", "load_topology", "status", "up",
    ],
    "pytest_vpstest.lab.agent": ["__version__"],
    "pytest_vpstest.lab.agent.bootstrap": ["NODE_TTL_SECONDS", "BootstrapState", "Outbox", "serve"],
    "pytest_vpstest.lab.agent.build": ["INTERPRETER", "PACKAGE_NAME", "build_zipapp", "main"],
    "pytest_vpstest.lab.agent.cli": ["build_parser", "main"],
    "pytest_vpstest.lab.agent.control": [
        "MAX_REQUEST", "AgentNotRunning", "AlreadyRunning", "Handler", "request", "start_server",
    ],
    "pytest_vpstest.lab.agent.contract": ["CONTRACT_KEYS", "METHODS", "failure"],
    "pytest_vpstest.lab.agent.crdt": ["GCounter"],
    "pytest_vpstest.lab.agent.gossip": ["GossipLog", "Receipt"],
    "pytest_vpstest.lab.agent.node": [
        "ACK_EVERY", "ANTI_ENTROPY_INTERVAL", "GSO_BATCH", "HELLO_INTERVAL", "LINK_FRESH_SECONDS",
        "PEER_CACHE_SECONDS", "PEER_STALE_SECONDS", "PING_INTERVAL", "PUNCH_INTERVAL",
        "REGISTER_INTERVAL", "SOL_UDP", "TX_WINDOW", "UDP_SEGMENT", "ConnectFailed", "Link", "Node",
        "Punch", "Route", "RouteKind", "RxSession", "TxSession", "answer_budget", "run_node",
    ],
    "pytest_vpstest.lab.agent.paths": ["HOME_ENV", "MAX_SOCKET_PATH", "control_socket", "default_home"],
    "pytest_vpstest.lab.agent.probe": [
        "CONTRACT_KEYS", "METHODS", "add_probe_parser", "build_request", "failure", "run_probe",
    ],
    "pytest_vpstest.lab.agent.registry": [
        "MAX_ADDRESSES", "MAX_BODY", "MAX_EVENTS", "NAT_LABELS", "SCHEMA_VERSION", "BadRequest",
        "RegistryState", "make_server", "serve", "validate_registration",
    ],
    "pytest_vpstest.lab.agent.registry_client": ["RegistryError", "call", "deregister", "peers", "register"],
    "pytest_vpstest.lab.agent.udp": ["BUFFER_BYTES", "DRAIN_BATCH", "SOL_UDP", "UDP_GRO", "UdpEndpoint"],
    "pytest_vpstest.lab.agent.wire": [
        "DATA_HEADER", "KIND_ACK", "KIND_DATA", "KIND_FORWARD", "KIND_JSON", "KIND_RELAY", "MAX_UNFRAGMENTED",
        "NAME_RE", "Addr", "Message", "data_ack", "data_header", "decode", "encode", "format_addr", "forward",
        "parse_ack", "parse_addr", "parse_data", "parse_forward", "parse_relay", "relay", "relay_overhead",
        "valid_name",
    ],
    "pytest_vpstest.lab.cli": ["register"],
    "pytest_vpstest.lab.inventory": [
        "INVENTORY_NAME", "InventoryNode", "inventory_document", "inventory_path", "lab_dir",
        "render_inventory", "write_yaml_atomic",
    ],
    "pytest_vpstest.lab.loopback": [
        "SSH_PORT_BASE", "START_TIMEOUT_S", "loopback_net", "node_address", "teardown", "up",
    ],
    "pytest_vpstest.lab.nat": [
        "BEHAVIOUR", "LOSS_TABLE", "MAPPING_TIMEOUT_S", "NAT_TABLE", "PROTOCOLS", "ROUTER_SYSCTLS",
        "TCP_MAPPING_TIMEOUT_S", "Filtering", "Mapping", "RouterOptions", "combined_nat",
        "host_guard_ruleset", "host_table_name", "link_loss_ruleset", "node_mgmt_ruleset", "router_ruleset",
    ],
    "pytest_vpstest.lab.natcheck": [
        "ANSWER_TIMEOUT_S", "ATTEMPTS", "DEFAULT_PORTS", "MAX_LIFETIME_S", "Classification", "Protocol",
        "classify", "main", "serve",
    ],
    "pytest_vpstest.lab.netlab": [
        "SERVICE_START_TIMEOUT_S", "SSHD_START_TIMEOUT_S", "TBF_LATENCY", "WORKERS", "build_network",
        "ensure_mount_points", "field_conditions", "mgmt_router_ruleset", "pick_mgmt_octet",
        "prepare_node_fs", "taken_networks", "teardown", "up", "wait_for",
    ],
    "pytest_vpstest.lab.netns": [
        "NETNS_DIR", "cmdline", "ip_batch", "is_lab_process", "kill_all", "lab_processes", "listening",
        "namespaces", "netns_available", "netns_inode", "nft_load", "pids_in", "processes_matching",
        "read_pid", "root_links", "run", "wait_for_orphaned_batches",
    ],
    "pytest_vpstest.lab.plan": [
        "AGENT_PORT", "BOOTSTRAP_PORT", "DATA_PREFIXLEN", "DATA_SUBNET", "DEFAULT_PREFIX",
        "HARNESS_HOST", "MAC_KINDS", "MGMT_OCTETS", "MGMT_ROUTER_HOST", "PREFIX_RE", "REGISTRY_PORT",
        "RESERVED_NODE_NAMES", "SSH_PORT", "LabPlan", "NodePlan", "check_prefix", "choose_mgmt_octet",
        "mac", "make_plan", "preferred_mgmt_octet",
    ],
    "pytest_vpstest.lab.record": [
        "INVENTORY_NAME", "RECORD_NAME", "LabRecord", "NodeRecord", "NodeStatus", "ServiceRecord",
        "load_record", "node_status", "prepare_lab_dir", "tcp_open", "udp_bound_on",
    ],
    "pytest_vpstest.lab.services": [
        "AGENT_MODULE", "Service", "ServiceKind", "service_argv", "start_service",
    ],
    "pytest_vpstest.lab.sshd": [
        "NODE_MOUNTS", "SSHD", "SshdNode", "keygen", "loopback_sshd_argv", "netns_sshd_argv", "prepare_keys",
        "render_config", "spawn_detached", "write_config",
    ],
    "pytest_vpstest.lab.topology": [
        "BUILTIN_TOPOLOGIES", "MAX_MAPPING_TIMEOUT_S", "MAX_NODES", "MIN_SCALE_NODES", "SCALE_CYCLE",
        "SCALE_PREFIX", "LabNode", "MappingTimeout", "Shaping", "Topology", "load_topology",
        "parse_scale_spec", "parse_topology", "scale_topology", "topology_source",
    ],
    "pytest_vpstest.loop": [],
    "pytest_vpstest.loop.fixer": [
        "Commit", "FixOutcome", "Signature", "cluster_signatures", "collect_logs", "git_head",
        "is_error_line", "next_brief_dir", "normalise", "obtain_fix", "run_fix", "run_interruptible",
        "write_brief",
    ],
    "pytest_vpstest.loop.event_text": ["event_reason", "failure_event"],
    "pytest_vpstest.loop.health": [
        "OBSERVERS", "PEER_OBSERVERS", "NodeCheck", "NodeHealth", "health_label", "infrastructure_only",
        "peers_seen_of",
    ],
    "pytest_vpstest.loop.health_keeper": ["HEALTH_EVENTS_KEPT", "HealthKeeper", "NodeChecker"],
    "pytest_vpstest.loop.liveness": [
        "BecameLive", "BecameSuspect", "Event", "Evicted", "Failed", "Live", "LivenessMachine", "Never",
        "NodeEvicted", "NodeFailed", "NodeState", "Observation", "OnFailure", "Provisioning",
        "PublishLeaseRevocation", "QuorumConfig", "Replication", "Respawn", "RespawnFailed", "Respawning",
        "RestartPolicy", "Suspect", "WarmStandby",
    ],
    "pytest_vpstest.loop.machine": [
        "ALLOWED_TRANSITIONS", "NOTIFY_KINDS", "TERMINAL", "WAIT_STATES", "BuildFinished", "Commit",
        "Counters", "DeployFinished", "Effect", "Event", "Fatal", "Finish", "FixFinished", "InvalidEvent",
        "MachineConfig", "NodesHealth", "Notify", "Phase", "Restart", "RestartDone", "RunBuild", "RunDeploy",
        "RunFix",
        "RunSetup", "RunState", "RunTest", "SetupFinished", "Start", "StartWait", "State", "Stop",
        "TestFinished", "UserStop", "WaitElapsed", "initial_state", "resume_effects", "step", "wait_is_over",
    ],
    "pytest_vpstest.loop.notify": [
        "EVENT_KINDS", "Channel", "CommandChannel", "DeliveryError", "LogChannel", "Notifier", "Outbox",
        "OutboxEvent", "VoiceChannel", "WebhookChannel", "build_channels",
    ],
    "pytest_vpstest.loop.project_files": [
        "finished_marker", "nothing_to_resume", "project_dir", "read_stop_request", "reap_orphans",
        "request_stop", "write_finished_marker",
    ],
    "pytest_vpstest.loop.run_state": [
        "TERMINAL", "WAIT_STATES", "Commit", "Counters", "RunState", "State", "count_interrupted_stage",
    ],
    "pytest_vpstest.loop.runner": [
        "CHILD_MARKER", "LOG_LIMIT", "NodeChecker", "Runner", "StageContext", "Stages", "TestOutcome",
        "child_env", "machine_config", "nothing_to_resume", "project_dir", "read_stop_request",
        "reap_orphans", "request_stop", "utcnow",
    ],
    "pytest_vpstest.loop.stage_context": [
        "CHILD_MARKER", "StageContext", "Stages", "TestOutcome", "child_env", "iso", "machine_config",
        "utcnow",
    ],
    "pytest_vpstest.loop.stages": ["PLUGINS_OFF", "FleetStages", "suites_directory"],
    "pytest_vpstest.plugin": [],
    "pytest_vpstest.plugin.agent_watch": ["AGENT_DOWN_AFTER", "AgentWatch", "agent_down"],
    "pytest_vpstest.plugin.aggregate": [
        "AGGREGATORS", "MEASUREMENT_KEY", "NODES_KEY", "Collector", "RecordedTest", "aggregate",
        "build_test_results", "encode", "failure_cause", "metric_rows", "metrics_of", "node_rows",
        "pair_rows", "percentile",
    ],
    "pytest_vpstest.plugin.engine": ["Engine", "FleetSteps", "PhaseProgress", "ProbeSpec", "StepRunner"],
    "pytest_vpstest.plugin.entry": [
        "VpsPlugin", "build_artifact", "current_run", "deployment", "fleet", "matrix_cell", "matrix_parts",
        "node", "node_pool", "probe", "vps_config", "vps_matrix", "vps_record", "vps_run"
    ],
    "pytest_vpstest.plugin.fixtures": [
        "DEFAULT_NODE_CONCURRENCY", "NOT_CONFIGURED", "RUN_KEY", "Recorder", "RunContext",
        "build_artifact", "default_build", "default_deploy", "default_fetch_logs", "deployment",
        "failed_nodes", "fleet", "mark_unhealthy", "nat_skip_reason", "node", "node_pool", "once",
        "parametrize", "probe", "run_of", "skip_if_not_deployed", "skip_if_unreachable", "skipped_nodes",
        "vps_config", "vps_record", "vps_run"
    ],
    "pytest_vpstest.plugin.hookspecs": [
        "pytest_vpstest_build", "pytest_vpstest_deploy", "pytest_vpstest_fetch_logs",
        "pytest_vpstest_make_pool", "pytest_vpstest_results",
    ],
    "pytest_vpstest.plugin.matrix": [
        "Matrix", "MatrixError", "matrix_cell", "matrix_parts", "part_key", "plan_cells", "vps_matrix"
    ],
    "pytest_vpstest.plugin.pairs": [
        "Pair", "connectivity_pairs", "gossip_publishers", "group_by_nat", "nat_group_key",
        "nat_traversal_pairs", "peer_nodes", "throughput_pairs",
    ],
    "pytest_vpstest.plugin.progress": [
        "ProgressPrinter", "ProgressView", "progress_line", "read_progress", "status_text"
    ],
    "pytest_vpstest.plugin.report": ["html_extras", "html_summary"],
    "pytest_vpstest.plugin.results": ["SCHEMA_VERSION", "RunOutcome", "finish_run"],
    "pytest_vpstest.plugin.schedule": ["Cell", "Scheduler", "Task"],
    "pytest_vpstest.plugin.selection": [
        "ONLY_NODES_OPTION", "item_nodes", "parse_node_selection", "split_by_nodes",
    ],
    "pytest_vpstest.plugin.spec": ["MIN_TIMEOUT", "Bind", "Flow", "ProbeSpec"],
    "pytest_vpstest.records": [],
    "pytest_vpstest.records.history": [
        "SCHEMA_VERSION", "History", "HostRun", "HostStatus", "MetricRow", "RunRecord",
    ],
    "pytest_vpstest.records.proof": [
        "MatrixCell", "ProofInput", "collect_logs", "dumps", "fix_commits_of", "format_duration",
        "matrix_grid", "prometheus_text", "render_matrix", "render_matrix_html", "render_nat_table",
        "render_proof",
        "write_connection_report", "write_metrics", "write_proof",
    ],
    "pytest_vpstest.records.state_doc": ["PHASES", "Phase", "iso_time", "new_state_document"],
    "pytest_vpstest.records.store": [
        "SCHEMA_VERSION", "Lease", "LeaseInfo", "LoadResult", "StateStore", "is_safe_identifier", "iso_utc",
    ],
    "pytest_vpstest.redact": ["redact_text", "redact_url"],
    "pytest_vpstest.suite": [
        "CATEGORIES", "CATEGORY_OF", "CONNECTIVITY", "FOCUSES", "FULL_SUITE", "GOSSIP", "MARKER", "METHODS",
        "NAT_TRAVERSAL", "SUITES", "THROUGHPUT", "Category", "ConnectivityMeasurement", "Focus",
        "GossipCrdtMeasurement", "GossipDeliveryMeasurement", "Measurement", "Method",
        "NatTraversalMeasurement", "Suite", "SuiteName", "ThroughputMeasurement", "find_suite", "suite_key",
        "suites_directory", "suites_of_focus",
    ],
}


def public_modules() -> list[str]:
    found = ["pytest_vpstest"]
    for info in pkgutil.walk_packages(pytest_vpstest.__path__, "pytest_vpstest."):
        parts = info.name.split(".")
        if any(part.startswith("_") for part in parts) or parts[1] == "suites":
            continue
        found.append(info.name)
    return sorted(found)


def test_every_public_module_is_pinned_here() -> None:
    assert public_modules() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_all_is_the_pinned_list(name: str) -> None:
    module = importlib.import_module(name)
    assert getattr(module, "__all__", None) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_exported_name_exists(name: str) -> None:
    module = importlib.import_module(name)
    assert [n for n in EXPECTED[name] if not hasattr(module, n)] == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_public_functions_and_classes_defined_in_a_module_are_exported(name: str) -> None:
    # pytest calls hook implementations by name (pytest_addoption, ...); they are not imported.
    module = importlib.import_module(name)
    defined = [
        n
        for n, value in vars(module).items()
        if not n.startswith(("_", "pytest_"))
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == name
    ]
    assert [n for n in defined if n not in EXPECTED[name]] == []
