"""The dashboard's action token: from the config, or made at start-up and kept in the state directory.

The runner reads the same file to authenticate its POSTs, so a dashboard started after a runner is
still accepted. The file is ``<state_dir>/.dashboard/token`` (mode 0600); the leading dot keeps it
out of the project names (which start with a letter or digit).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from pytest_vpstest import _files

__all__ = ["read_token", "token_path", "use_token"]


def token_path(state_dir: Path) -> Path:
    return Path(state_dir) / ".dashboard" / "token"


def read_token(state_dir: Path) -> str | None:
    """The token a running (or the last) dashboard of ``state_dir`` accepts, or None."""
    try:
        text = token_path(state_dir).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text or None


def use_token(state_dir: Path, configured: str | None) -> str:
    """The token to require: ``configured`` when set, else the kept one, else a new random one.

    Whatever is chosen is written to the token file so the runner's POSTs carry it.
    """
    token = configured or read_token(state_dir) or secrets.token_urlsafe(24)
    path = token_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    _files.write_text_atomic(path, token + "\n", mode=0o600)
    return token
