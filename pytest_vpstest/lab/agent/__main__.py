"""``python3 -m pytest_vpstest.lab.agent`` (and the zipapp's entry point)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
