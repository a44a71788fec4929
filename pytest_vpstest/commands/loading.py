"""What every ``vpstest`` command loads: the project config, the inventory, the state directory."""

from __future__ import annotations

import argparse
import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path

from pytest_vpstest.config import ProjectConfig, load_project_config
from pytest_vpstest.errors import ConfigError, VpsTestError
from pytest_vpstest.inventory import Inventory
from pytest_vpstest.inventory import load_inventory as read_inventory

__all__ = [
    "add_fleet_options",
    "add_state_dir_option",
    "config_path",
    "default_state_dir",
    "iso_now",
    "load_config",
    "load_inventory",
    "resolve_inventory_path",
    "state_dir_of",
]


def default_state_dir() -> Path:
    """``$VPSTEST_STATE_DIR``, else ``$XDG_STATE_HOME/vpstest``, else ``~/.local/state/vpstest``."""
    if os.environ.get("VPSTEST_STATE_DIR"):
        return Path(os.environ["VPSTEST_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "vpstest"


def config_path(arg: str | None) -> Path:
    """The config file: ``arg``, else ``$VPSTEST_CONFIG``, else ``./vpstest.yaml``; it must exist."""
    spec = arg or os.environ.get("VPSTEST_CONFIG") or "vpstest.yaml"
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.exists():
        raise ConfigError("config file not found; pass --config FILE (or set VPSTEST_CONFIG)", path=path)
    return path


def load_config(arg: str | None) -> ProjectConfig:
    return load_project_config(config_path(arg))


def resolve_inventory_path(spec: str, base: Path) -> Path:
    """``lab`` / ``lab:<prefix>`` → the lab's inventory; otherwise a path relative to ``base``."""
    if spec == "lab" or spec.startswith("lab:"):
        from pytest_vpstest import lab

        prefix = spec[4:] if ":" in spec else "vps"
        path = Path(lab.inventory_path(prefix))
        if not path.exists():
            raise ConfigError(f"no lab inventory at {path}: start the lab with 'vpstest lab up'")
        return path
    path = Path(spec).expanduser()
    return path if path.is_absolute() else base / path


def load_inventory(nodes: str | None, config: ProjectConfig | None) -> Inventory:
    """The inventory ``--nodes`` names, else the one the config names."""
    if nodes:
        path = resolve_inventory_path(nodes, Path.cwd())
    elif config is not None and config.inventory:
        base = config.path.parent if config.path is not None else Path.cwd()
        path = resolve_inventory_path(config.inventory, base)
    else:
        raise ConfigError("no inventory: pass --nodes FILE|lab or set 'inventory' in the config")
    return read_inventory(path)


def state_dir_of(args: argparse.Namespace, config: ProjectConfig | None = None) -> Path:
    """``--state-dir``, else the config's ``state_dir``, else :func:`default_state_dir`."""
    if getattr(args, "state_dir", None):
        return Path(args.state_dir).expanduser().resolve()
    if config is not None and config.state_dir is not None:
        return Path(config.state_dir)
    if getattr(args, "config", None):
        with contextlib.suppress(VpsTestError):
            cfg = load_config(args.config)
            if cfg.state_dir is not None:
                return Path(cfg.state_dir)
    return default_state_dir()


def iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def add_state_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", metavar="DIR",
                   help="state directory (default: $VPSTEST_STATE_DIR, else ~/.local/state/vpstest)")


def add_fleet_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="project config (default: ./vpstest.yaml)")
    p.add_argument("--nodes", metavar="FILE|lab", help="node inventory, or 'lab' for the embedded lab")
