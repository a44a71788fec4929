"""``vpstest dashboard``: serve the live fleet page over a state directory (docs/dashboard.md)."""

from __future__ import annotations

import argparse
import os

from pytest_vpstest.commands.loading import add_state_dir_option, load_config, state_dir_of
from pytest_vpstest.errors import ConfigError, VpsTestError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dashboard`` to the ``vpstest`` parser."""
    p = sub.add_parser("dashboard", help="serve the live fleet dashboard (needs the 'dashboard' extra)",
                       description="A web page over the state directory and the history: every project's "
                                   "loop, the fleet's compartments, the matrix, the history, the log.")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8099, help="port (default 8099; 0 picks a free one)")
    p.add_argument("--config", metavar="FILE", action="append", default=[],
                   help="a project config (repeatable): its state_dir, token and node test settings")
    add_state_dir_option(p)
    p.set_defaults(handler=_dashboard)


def _dashboard(args: argparse.Namespace) -> int:
    try:
        from pytest_vpstest.dashboard.app import Settings
        from pytest_vpstest.dashboard.server import serve
        from pytest_vpstest.dashboard.token import use_token
    except ImportError as exc:
        raise VpsTestError(
            f"the dashboard needs its extra: pip install 'pytest-vpstest[dashboard]' ({exc.name} is missing)"
        ) from None
    configs = [load_config(c) for c in args.config]
    state_dir = state_dir_of(args, configs[0] if configs else None)
    tokens = {c.dashboard.token for c in configs if c.dashboard.token}
    if len(tokens) > 1:
        raise ConfigError("the configs set different dashboard.token values; a dashboard has one token")
    token = use_token(state_dir, next(iter(tokens), None) or os.environ.get("VPSTEST_DASHBOARD_TOKEN"))
    settings = Settings(state_dir=state_dir, token=token, bind=args.bind,
                        configs={c.project: c for c in configs})
    print(f"dashboard: state directory {state_dir}")
    try:
        serve(settings, args.port)
    except OSError as exc:
        where = f"{args.bind}:{args.port}"
        raise VpsTestError(f"dashboard: cannot listen on {where}: {exc.strerror or exc}") from exc
    return 0
