"""The config sections that steer what happens around the tests: fix, health, notify, dashboard.

Their frozen types and their parsers; ``config.parse_project_config`` calls the parsers, and
``pytest_vpstest.config`` re-exports the types.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Literal, cast

import yaml

from pytest_vpstest._yaml_reader import Reader

__all__ = [
    "NODE_TESTS",
    "ChannelConfig",
    "ChannelKind",
    "DashboardConfig",
    "FixConfig",
    "HealthConfig",
    "NodeTests",
    "NotifyConfig",
    "parse_dashboard",
    "parse_fix",
    "parse_health",
    "parse_notify",
]


@dataclass(frozen=True)
class FixConfig:
    # Program run with the failure brief's path appended; None: wait for a new commit.
    command: str | None = None
    verify_command: str | None = None
    commit_wait_seconds: float = 3600.0
    # Fix attempts in one run before the loop stops (STOPPED, with the reason).
    max_attempts: int = 5


@dataclass(frozen=True)
class HealthConfig:
    """Node liveness during the loop (the ``health`` block; docs/loop.md "Node health").

    Nodes are checked every ``check_seconds`` while the loop waits, and before each TEST. A node
    without a good check for ``suspect_after_seconds`` is Suspect, ``evict_after_seconds`` later
    Evicted and respawned (its service restarted; redeployed when the binary is gone), at most
    ``respawn_attempts`` times; then Failed. Fewer than ``min_live_fraction`` Live nodes stop the run.
    When the software reports whom each node hears (``peers_seen``), a node must also have been heard
    by a peer within ``peer_seen_within_seconds``.
    """

    check_seconds: float = 60.0
    suspect_after_seconds: float = 60.0
    evict_after_seconds: float = 60.0
    respawn_attempts: int = 3
    min_live_fraction: float = 0.5
    # A peer's sighting of a node no older than this counts as seeing it now (peers hear each other
    # at the software's own pace, which may be slower than the checks).
    peer_seen_within_seconds: float = 60.0


ChannelKind = Literal["log", "webhook", "command", "voice"]


@dataclass(frozen=True)
class ChannelConfig:
    kind: ChannelKind
    url: str | None = None
    command: str | None = None
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class NotifyConfig:
    channels: tuple[ChannelConfig, ...] = ()
    dashboard_url: str | None = None


NodeTests = Literal["auto", "manual", "disabled"]
NODE_TESTS: tuple[NodeTests, ...] = ("auto", "manual", "disabled")


@dataclass(frozen=True)
class DashboardConfig:
    """``vpstest dashboard`` settings: the action token, the test timeout, per-node test modes.

    ``node_tests`` maps a node name to ``auto`` (tests run after each deploy or rollback; the
    default), ``manual`` (only from the Run tests button) or ``disabled`` (shown gray, never run).
    """

    token: str | None = None
    test_timeout_seconds: float = 60.0
    node_tests: tuple[tuple[str, NodeTests], ...] = ()

    def tests_mode(self, node: str) -> NodeTests:
        for name, mode in self.node_tests:
            if name == node:
                return mode
        return "auto"


def parse_fix(r: Reader, node: yaml.Node) -> FixConfig:
    m = r.mapping(node, "fix", ("command", "verify_command", "commit_wait_seconds", "max_attempts"))
    d = FixConfig()
    return FixConfig(
        command=r.opt_string(m["command"], "fix.command") if "command" in m else None,
        verify_command=r.opt_string(m["verify_command"], "fix.verify_command")
        if "verify_command" in m
        else None,
        commit_wait_seconds=r.number(m["commit_wait_seconds"], "fix.commit_wait_seconds", positive=True)
        if "commit_wait_seconds" in m
        else d.commit_wait_seconds,
        max_attempts=r.integer(m["max_attempts"], "fix.max_attempts", 1)
        if "max_attempts" in m
        else d.max_attempts,
    )


def parse_health(r: Reader, node: yaml.Node) -> HealthConfig:
    names = tuple(f.name for f in dataclass_fields(HealthConfig))
    m = r.mapping(node, "health", names)
    d = HealthConfig()

    def seconds(key: str) -> float:
        value: float = getattr(d, key)
        return r.number(m[key], f"health.{key}", positive=True) if key in m else value

    live = d.min_live_fraction
    if "min_live_fraction" in m:
        live = r.number(m["min_live_fraction"], "health.min_live_fraction", non_negative=True)
        if live > 1:
            key = "health.min_live_fraction"
            raise r.fail(m["min_live_fraction"], key, f"must be between 0 and 1, got {live:g}")
    return HealthConfig(
        check_seconds=seconds("check_seconds"),
        suspect_after_seconds=seconds("suspect_after_seconds"),
        evict_after_seconds=seconds("evict_after_seconds"),
        respawn_attempts=r.integer(m["respawn_attempts"], "health.respawn_attempts", 0)
        if "respawn_attempts" in m
        else d.respawn_attempts,
        min_live_fraction=live,
        peer_seen_within_seconds=seconds("peer_seen_within_seconds"),
    )


_CHANNEL_KINDS: tuple[ChannelKind, ...] = ("log", "webhook", "command", "voice")


def parse_notify(r: Reader, node: yaml.Node) -> NotifyConfig:
    m = r.mapping(node, "notify", ("channels", "dashboard_url"))
    channels = []
    for i, item in enumerate(r.sequence(m["channels"], "notify.channels") if "channels" in m else []):
        key = f"notify.channels[{i}]"
        c = r.mapping(item, key, ("kind", "url", "command", "timeout_seconds"), required=("kind",))
        kind = cast(ChannelKind, r.choice(c["kind"], f"{key}.kind", _CHANNEL_KINDS))
        url = r.url(c["url"], f"{key}.url") if "url" in c else None
        command = r.string(c["command"], f"{key}.command") if "command" in c else None
        if kind == "webhook" and url is None:
            raise r.fail(item, f"{key}.url", "a webhook channel needs 'url'")
        if kind == "command" and command is None:
            raise r.fail(item, f"{key}.command", "a command channel needs 'command'")
        timeout = (
            r.number(c["timeout_seconds"], f"{key}.timeout_seconds", positive=True)
            if "timeout_seconds" in c
            else ChannelConfig(kind="log").timeout_seconds
        )
        channels.append(ChannelConfig(kind=kind, url=url, command=command, timeout_seconds=timeout))
    return NotifyConfig(
        channels=tuple(channels),
        dashboard_url=r.opt(m, "dashboard_url", lambda n: r.url(n, "notify.dashboard_url")),
    )


def parse_dashboard(r: Reader, node: yaml.Node) -> DashboardConfig:
    m = r.mapping(node, "dashboard", ("token", "test_timeout_seconds", "node_tests"))
    token = r.opt(m, "token", lambda n: r.string(n, "dashboard.token"))
    if token is not None and (len(token) < 16 or any(c.isspace() for c in token)):
        raise r.fail(m["token"], "dashboard.token", "must be at least 16 characters without spaces")
    modes = (
        tuple(
            (
                r.safe_name(k, f"dashboard.node_tests.{k.value}", is_key=True),
                cast(NodeTests, r.choice(v, f"dashboard.node_tests.{k.value}", NODE_TESTS)),
            )
            for k, v in r.entries(m["node_tests"], "dashboard.node_tests")
        )
        if "node_tests" in m
        else ()
    )
    return DashboardConfig(
        token=token,
        test_timeout_seconds=r.number(m["test_timeout_seconds"], "dashboard.test_timeout_seconds",
                                      positive=True)
        if "test_timeout_seconds" in m
        else DashboardConfig().test_timeout_seconds,
        node_tests=modes,
    )
