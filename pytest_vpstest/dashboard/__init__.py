"""``vpstest dashboard``: a live web page over the state directories and the SQLite history.

Optional: needs the ``dashboard`` extra (Starlette, uvicorn, markdown-it-py). See docs/dashboard.md.
"""

from __future__ import annotations

__all__ = ["DEFAULT_PORT"]

DEFAULT_PORT = 8099
