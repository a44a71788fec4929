"""Dashboard tier: a real dashboard server on loopback over a state directory written through the
real store and history, driven by a real headless Chromium (Debian's ``chromium``, via Playwright)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("VPSTEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "test-token-0123456789abcdef"


def _browser_missing() -> str | None:
    if shutil.which(CHROMIUM) is None:
        return f"no Chromium at {CHROMIUM} (scripts/setup installs Debian's chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (scripts/setup installs the browser-tests extra)"
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    p = context.new_page()
    p.set_default_timeout(10_000)
    yield p
    context.close()


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
