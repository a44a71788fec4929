"""Dashboard tier: a real dashboard server on loopback over a state directory written through the
real store and history, driven by a real headless Chromium (Debian's ``chromium``, via Playwright)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


@pytest.fixture
def dashboard(state_dir: Path) -> Iterator[Callable[..., Any]]:
    """Start a dashboard over ``state_dir`` (several may be started and stopped: restarts)."""
    try:
        from pytest_vpstest.dashboard.app import Settings
        from pytest_vpstest.dashboard.server import DashboardServer
    except ImportError as exc:
        pytest.skip(f"the dashboard extra is not installed ({exc.name}); scripts/setup installs it")
    servers: list[DashboardServer] = []

    def start(**kw: Any) -> DashboardServer:
        s = DashboardServer(Settings(state_dir=state_dir, token=TOKEN, **kw)).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()
        for t in s.app.state.actions.threads:
            t.join(timeout=30)
