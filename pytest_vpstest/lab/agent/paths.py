"""Where an agent keeps its runtime files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["HOME_ENV", "MAX_SOCKET_PATH", "control_socket", "default_home"]

HOME_ENV = "VPSTEST_AGENT_HOME"
# sun_path in struct sockaddr_un holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


def default_home() -> Path:
    """``$VPSTEST_AGENT_HOME``, else the directory holding the running zipapp or entry file.

    Run as ``python3 -m ...`` from a source tree (the entry file is inside this package),
    the current directory is used instead, so nothing is written into the source.
    """
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env)
    entry = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if entry is not None and entry.is_file():
        import zipfile  # only here: a probe given --home never pays for it

        entry = entry.resolve()
        package_dir = Path(__file__).resolve().parent
        if zipfile.is_zipfile(entry) or package_dir not in entry.parents:
            return entry.parent
    return Path.cwd()


def control_socket(home: Path) -> Path:
    """The agent's control socket: ``<home>/run/agent.sock``."""
    return home / "run" / "agent.sock"
